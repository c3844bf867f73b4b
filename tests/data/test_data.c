/*
 * test_data.c: instruction datasets: shape detection, templates, file:line errors for
 * every kind of bad line, --skip-bad counting, splits; tokenization with the loss mask,
 * truncation and dropping; padded and packed batches (targets, positions, segments);
 * preference pairs (strings and chat messages, their bad lines, pairs kept together).
 * Tokenizers: the tiny smollm-style vocabulary fixture, and the real model's for chat.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "data/data.h"

static finch_tokenizer *tiny_tok;
static finch_gguf *tiny_g;

static finch_dataset *parse(const char *text, const finch_data_options *opt, finch_status want,
                            const char *fragment) {
    finch_dataset *d = NULL;
    finch_err err = {0};
    finch_status st = finch_dataset_parse(text, strlen(text), "train.jsonl", opt, &d, &err);
    if (st != want || (fragment && !strstr(err.msg, fragment)))
        fail_msg("status %d (want %d), message '%s' (want '%s')", st, want, err.msg,
                 fragment ? fragment : "");
    return d;
}

static void test_shapes(void **state) {
    (void)state;
    finch_data_options opt = {0};
    finch_dataset *d = parse("{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n\n"
                             "{\"prompt\": \"3+3=\", \"completion\": \"6\"}\n",
                             &opt, FINCH_OK, NULL);
    assert_int_equal(d->shape, FINCH_SHAPE_COMPLETION);
    assert_int_equal(d->n, 2);
    assert_string_equal(d->ex[1].prompt, "3+3=");
    assert_string_equal(d->ex[1].completion, "6");
    assert_int_equal(d->ex[1].line, 3);
    finch_dataset_free(d);

    d = parse("{\"instruction\": \"Add.\", \"input\": \"2 2\", \"output\": \"4\"}\n"
              "{\"instruction\": \"Greet.\", \"output\": \"Hi\"}\n",
              &opt, FINCH_OK, NULL);
    assert_int_equal(d->shape, FINCH_SHAPE_ALPACA);
    assert_non_null(strstr(d->ex[0].prompt, "### Input:\n2 2\n\n### Response:\n"));
    assert_null(strstr(d->ex[1].prompt, "### Input"));
    assert_string_equal(d->ex[1].completion, "Hi");
    finch_dataset_free(d);

    d = parse("{\"instruction\": \"Q\", \"context\": \"C\", \"response\": \"R\"}\n", &opt, FINCH_OK, NULL);
    assert_int_equal(d->shape, FINCH_SHAPE_DOLLY);
    assert_non_null(strstr(d->ex[0].prompt, "### Context:\nC\n"));
    finch_dataset_free(d);
}

static void test_templates(void **state) {
    (void)state;
    const char *tmpls[] = {"Q: {question}\nA:", "Question {{literal}}: {question} ->"};
    finch_data_options opt = {.shape = FINCH_SHAPE_COMPLETION, .templates = {tmpls, 2, false}, .seed = 3};
    const char *text = "{\"question\": \"why?\", \"prompt\": \"x\", \"completion\": \"because\"}\n";
    int seen[2] = {0, 0};
    for (uint64_t seed = 0; seed < 16; seed++) {
        opt.seed = seed;
        finch_dataset *d = parse(text, &opt, FINCH_OK, NULL);
        if (!strcmp(d->ex[0].prompt, "Q: why?\nA:")) seen[0]++;
        else if (!strcmp(d->ex[0].prompt, "Question {literal}: why? ->")) seen[1]++;
        else fail_msg("unexpected rendering '%s'", d->ex[0].prompt);
        finch_dataset_free(d);
    }
    assert_true(seen[0] > 0 && seen[1] > 0); /* both templates get drawn */
    const char *missing[] = {"{nope}"};
    opt.templates = (finch_templates){missing, 1, false};
    parse(text, &opt, FINCH_E_FORMAT, "line 1: the template's field {nope} is missing");
}

static void test_bad_lines(void **state) {
    (void)state;
    finch_data_options opt = {0};
    const char *ok = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
    char buf[512];
    const struct {
        const char *line, *fragment;
    } cases[] = {
        {"{\"prompt\": \"a\", \"completion\": 3}", "line 2: field \"completion\" is not a string"},
        {"{\"prompt\": \"a\"}", "line 2: field \"completion\" is missing"},
        {"[1, 2]", "line 2: expected a JSON object"},
        {"{\"prompt\": \"a\", ", "line 2: column"},
        {"not json", "not valid JSON"},
        {"{\"prompt\": 7, \"completion\": \"b\"}", "line 2: the template's field {prompt} is not a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(buf, sizeof buf, "%s%s\n%s", ok, cases[i].line, ok);
        parse(buf, &opt, FINCH_E_FORMAT, cases[i].fragment);
        /* skipped and counted with skip_bad */
        finch_data_options skip = {.skip_bad = true};
        finch_dataset *d = parse(buf, &skip, FINCH_OK, NULL);
        assert_int_equal(d->n, 2);
        assert_int_equal(d->n_skipped, 1);
        finch_dataset_free(d);
    }
    parse("", &opt, FINCH_E_FORMAT, "train.jsonl: no examples");
    parse("\n  \n", &opt, FINCH_E_FORMAT, "no examples");
    finch_data_options skip = {.skip_bad = true};
    parse("garbage\n", &skip, FINCH_E_FORMAT, "every line was malformed");
    parse("{\"foo\": 1}\n", &opt, FINCH_E_FORMAT, "cannot tell the dataset format");
    parse("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", &opt, FINCH_E_FORMAT,
          "at least 2 messages");
    finch_shape s;
    finch_err err;
    assert_int_equal(finch_shape_parse("sharegpt", &s, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "alpaca"));
    assert_int_equal(finch_shape_parse("dolly", &s, &err), FINCH_OK);
    assert_int_equal(s, FINCH_SHAPE_DOLLY);
}

/* Preference pairs: strings, file:line errors for every kind of bad line, and pairs
 * tokenized as chosen then rejected, dropped together, identical ones counted. */
static void test_preference(void **state) {
    (void)state;
    finch_data_options opt = {0};
    finch_dataset *d = parse("{\"prompt\": \"2+2=\", \"chosen\": \" 4\", \"rejected\": \" 5\"}\n"
                             "{\"prompt\": \"3+3=\", \"chosen\": [{\"role\": \"assistant\", \"content\": \" 6\"}], "
                             "\"rejected\": {\"role\": \"assistant\", \"content\": \" 6\"}}\n",
                             &opt, FINCH_OK, NULL);
    assert_int_equal(d->shape, FINCH_SHAPE_PREFERENCE);
    assert_int_equal(d->n, 2);
    assert_string_equal(d->ex[0].prompt, "2+2=");
    assert_string_equal(d->ex[0].completion, " 4");
    assert_string_equal(d->ex[0].rejected, " 5");
    assert_string_equal(d->ex[1].completion, " 6");
    finch_token_set s;
    finch_err err;
    assert_int_equal(finch_tokenize_dataset(tiny_tok, d, 64, false, &s, &err), FINCH_OK);
    assert_true(s.pairs);
    assert_int_equal(s.n, 4);
    assert_int_equal(s.n_identical, 1); /* the second pair: " 6" both sides */
    /* chosen then rejected, the same prompt ids before a different completion */
    assert_int_equal(s.ex[0].n, s.ex[1].n);
    assert_memory_equal(s.ex[0].ids, s.ex[1].ids, (size_t)(s.ex[0].n - 2) * sizeof(int32_t));
    assert_int_not_equal(s.ex[0].ids[s.ex[0].n - 2], s.ex[1].ids[s.ex[1].n - 2]);
    finch_token_set_release(&s);
    /* a cut that leaves one side without a completion token drops the pair */
    finch_dataset_free(d);
    d = parse("{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n"
              "{\"prompt\": \"a long prompt of many words\", \"chosen\": \" b\", \"rejected\": \" c\"}\n",
              &opt, FINCH_OK, NULL);
    assert_int_equal(finch_tokenize_dataset(tiny_tok, d, 6, false, &s, &err), FINCH_OK);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.n_dropped, 1);
    finch_token_set_release(&s);
    finch_dataset_free(d);

    const char *ok = "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n";
    char buf[512];
    const struct {
        const char *line, *fragment;
    } cases[] = {
        {"{\"prompt\": \"a\", \"chosen\": \"b\"}", "line 2: field \"rejected\" is missing"},
        {"{\"prompt\": \"a\", \"chosen\": 3, \"rejected\": \"c\"}",
         "line 2: field \"chosen\" is of the wrong type, expected a string or an assistant message"},
        {"{\"prompt\": \"a\", \"chosen\": \"\", \"rejected\": \"c\"}", "line 2: field \"chosen\" is empty"},
        {"{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"\"}", "line 2: field \"rejected\" is empty"},
        {"{\"chosen\": \"b\", \"rejected\": \"c\"}", "line 2: field \"prompt\" is missing"},
        {"{\"prompt\": 4, \"chosen\": \"b\", \"rejected\": \"c\"}", "line 2: field \"prompt\" is of the wrong type"},
        {"{\"prompt\": \"a\", \"chosen\": {\"role\": \"user\", \"content\": \"b\"}, \"rejected\": \"c\"}",
         "line 2: the \"chosen\" message is from 'user'; it must be the assistant's"},
        {"{\"prompt\": \"a\", \"chosen\": [], \"rejected\": \"c\"}", "line 2: \"chosen\" is a list of 0 messages"},
        {"{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": {\"role\": \"assistant\"}}",
         "line 2: the \"rejected\" message needs string \"role\" and \"content\""},
        {"{\"prompt\": [], \"chosen\": \"b\", \"rejected\": \"c\"}", "line 2: \"prompt\" is an empty list"},
        {"{\"prompt\": [{\"role\": 1}], \"chosen\": \"b\", \"rejected\": \"c\"}",
         "line 2: prompt message 1 needs string \"role\" and \"content\""},
        {"{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], \"chosen\": \"b\", \"rejected\": \"c\"}",
         "line 2: chat formatting needs a model with a chat template"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(buf, sizeof buf, "%s%s\n%s", ok, cases[i].line, ok);
        finch_data_options o = {.tok = tiny_tok}; /* no chat template */
        parse(buf, &o, i + 1 == sizeof cases / sizeof cases[0] ? FINCH_E_UNSUPPORTED : FINCH_E_FORMAT,
              cases[i].fragment);
    }
    finch_shape sh;
    assert_int_equal(finch_shape_parse("preference", &sh, &err), FINCH_OK);
    assert_int_equal(sh, FINCH_SHAPE_PREFERENCE);
}

static void test_split(void **state) {
    (void)state;
    char text[8192] = "";
    for (int i = 0; i < 20; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text),
                 "{\"prompt\": \"p%d\", \"completion\": \"c%d\"}\n", i, i);
    finch_data_options opt = {0};
    finch_dataset *d = parse(text, &opt, FINCH_OK, NULL), *v;
    finch_err err;
    assert_int_equal(finch_dataset_split(d, 0.25, 1, &v, &err), FINCH_OK);
    assert_int_equal(d->n, 15);
    assert_int_equal(v->n, 5);
    int seen[20] = {0};
    for (int64_t i = 0; i < d->n; i++) seen[atoi(d->ex[i].prompt + 1)]++;
    for (int64_t i = 0; i < v->n; i++) seen[atoi(v->ex[i].prompt + 1)]++;
    for (int i = 0; i < 20; i++) assert_int_equal(seen[i], 1); /* a partition */
    assert_int_equal(finch_dataset_split(v, 0.01, 1, &d, &err), FINCH_E_RANGE);
    assert_int_equal(finch_dataset_split(v, 1.5, 1, &d, &err), FINCH_E_USAGE);
    finch_dataset_free(v);
    finch_dataset_free(d);
}

/* ids and mask: prompt masked, completion and EOS targets; truncation; dropping. */
static void test_tokenize(void **state) {
    (void)state;
    finch_data_options opt = {0};
    finch_dataset *d = parse("{\"prompt\": \"hello\", \"completion\": \" world\"}\n"
                             "{\"prompt\": \"hello hello hello hello hello hello\", \"completion\": \"x\"}\n",
                             &opt, FINCH_OK, NULL);
    int32_t *p, *c;
    int64_t np, nc;
    finch_err err;
    assert_int_equal(finch_tokenize(tiny_tok, "hello", 5, FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, &p, &np, &err), FINCH_OK);
    assert_int_equal(finch_tokenize(tiny_tok, " world", 6, 0, &c, &nc, &err), FINCH_OK);
    finch_token_set s;
    assert_int_equal(finch_tokenize_dataset(tiny_tok, d, 64, false, &s, &err), FINCH_OK);
    assert_int_equal(s.n, 2);
    const finch_token_example *e = &s.ex[0];
    assert_int_equal(e->n, np + nc + 1);
    for (int64_t i = 0; i < np; i++) assert_int_equal(e->ids[i], p[i]), assert_int_equal(e->mask[i], 0);
    for (int64_t i = 0; i < nc; i++) assert_int_equal(e->ids[np + i], c[i]), assert_int_equal(e->mask[np + i], 1);
    assert_int_equal(e->ids[e->n - 1], finch_tokenizer_eos(tiny_tok));
    assert_int_equal(e->mask[e->n - 1], 1);
    finch_token_set_release(&s);
    /* train_on_prompt: everything but nothing before the first id */
    assert_int_equal(finch_tokenize_dataset(tiny_tok, d, 64, true, &s, &err), FINCH_OK);
    for (int32_t i = 0; i < s.ex[0].n; i++) assert_int_equal(s.ex[0].mask[i], 1);
    finch_token_set_release(&s);
    /* max_len cutting the second example's completion away: dropped and counted; the
     * first keeps its first max_len ids */
    int32_t cut = (int32_t)(np + 1);
    assert_int_equal(finch_tokenize_dataset(tiny_tok, d, cut, false, &s, &err), FINCH_OK);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.n_dropped, 1);
    assert_int_equal(s.n_truncated, 1);
    assert_int_equal(s.ex[0].n, cut);
    finch_token_set_release(&s);
    finch_dataset *longp = parse("{\"prompt\": \"hello hello hello hello hello hello\", \"completion\": \"x\"}\n",
                                 &opt, FINCH_OK, NULL);
    assert_int_equal(finch_tokenize_dataset(tiny_tok, longp, 2, false, &s, &err), FINCH_E_RANGE);
    assert_non_null(strstr(err.msg, "raise the maximum sequence length"));
    finch_dataset_free(longp);
    free(p);
    free(c);
    finch_dataset_free(d);
}

static void test_batches(void **state) {
    (void)state;
    /* three hand-made examples of lengths 3, 2, 4 */
    int32_t i0[] = {10, 11, 12}, i1[] = {20, 21}, i2[] = {30, 31, 32, 33};
    uint8_t m0[] = {0, 1, 1}, m1[] = {0, 1}, m2[] = {0, 0, 1, 1};
    finch_token_example ex[] = {{i0, m0, 3, false}, {i1, m1, 2, false}, {i2, m2, 4, false}};
    finch_token_set s = {.ex = ex, .n = 3};
    int64_t order[] = {0, 1, 2}, next = 0, epoch = 0;
    finch_batch b;
    finch_err err;
    assert_int_equal(finch_batch_init(&b, 2, 6, &err), FINCH_OK);
    /* packed: row 0 = ex0 + ex1 (5 ids, 1 pad), row 1 = ex2 (does not fit after them) */
    finch_batch_fill(&b, &s, order, &next, &epoch, true, 0);
    int32_t want_ids[] = {10, 11, 12, 20, 21, 0, 30, 31, 32, 33, 0, 0};
    int32_t want_tg[] = {11, 12, -1, 21, -1, -1, -1, 32, 33, -1, -1, -1};
    int32_t want_pos[] = {0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 0};
    int32_t want_seg[] = {1, 1, 1, 2, 2, 0, 1, 1, 1, 1, 0, 0};
    assert_memory_equal(b.ids, want_ids, sizeof want_ids);
    assert_memory_equal(b.targets, want_tg, sizeof want_tg);
    assert_memory_equal(b.pos, want_pos, sizeof want_pos);
    assert_memory_equal(b.seg, want_seg, sizeof want_seg);
    assert_int_equal(b.n_targets, 5);
    assert_int_equal(next, 0);
    assert_int_equal(epoch, 1);
    /* padded: one example a row, continuing in order */
    finch_batch_fill(&b, &s, order, &next, &epoch, false, 7);
    int32_t want_ids2[] = {10, 11, 12, 7, 7, 7, 20, 21, 7, 7, 7, 7};
    assert_memory_equal(b.ids, want_ids2, sizeof want_ids2);
    assert_int_equal(next, 2);
    finch_batch_release(&b);
    assert_int_equal(finch_batch_init(&b, 0, 6, &err), FINCH_E_USAGE);
}

/* The chat shape renders through the real model's ChatML template. */
static void test_chat_real_model(void **state) {
    (void)state;
    char path[4096];
    finch_err err;
    const char *env = getenv("FINCH_MODEL");
    if (env) snprintf(path, sizeof path, "%s", env);
    else assert_int_equal(finch_default_model_path(path, sizeof path, &err), FINCH_OK);
    if (access(path, R_OK) != 0) {
        if (getenv("FINCH_ALLOW_NO_MODEL")) skip();
        fail_msg("the default model is missing at %s: run scripts/setup.sh", path);
    }
    finch_gguf *g;
    finch_tokenizer *tok;
    assert_int_equal(finch_gguf_open(path, &g, &err), FINCH_OK);
    assert_int_equal(finch_tokenizer_from_gguf(g, &tok, &err), FINCH_OK);
    finch_data_options opt = {.tok = tok};
    finch_dataset *d = parse("{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                             "{\"role\": \"user\", \"content\": \"Capital of France?\"}, "
                             "{\"role\": \"assistant\", \"content\": \"Paris.\"}]}\n",
                             &opt, FINCH_OK, NULL);
    assert_int_equal(d->shape, FINCH_SHAPE_CHAT);
    assert_string_equal(d->ex[0].prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                                         "Capital of France?<|im_end|>\n<|im_start|>assistant\n");
    assert_string_equal(d->ex[0].completion, "Paris.");
    finch_token_set s;
    assert_int_equal(finch_tokenize_dataset(tok, d, 128, false, &s, &err), FINCH_OK);
    assert_int_equal(s.ex[0].ids[s.ex[0].n - 1], 2); /* <|im_end|> ends the completion */
    assert_int_equal(s.ex[0].ids[0], 1);             /* <|im_start|> parsed as a token */
    finch_token_set_release(&s);
    finch_dataset_free(d);
    /* templates wrapped in the chat template (the default system prompt comes with it) */
    const char *tmpl[] = {"Define: {word}"};
    opt = (finch_data_options){.shape = FINCH_SHAPE_COMPLETION, .templates = {tmpl, 1, true}, .tok = tok};
    d = parse("{\"word\": \"finch\", \"prompt\": \"\", \"completion\": \"a small bird\"}\n", &opt, FINCH_OK, NULL);
    assert_non_null(strstr(d->ex[0].prompt, "<|im_start|>user\nDefine: finch<|im_end|>\n<|im_start|>assistant\n"));
    assert_non_null(strstr(d->ex[0].prompt, "named SmolLM"));
    finch_dataset_free(d);
    opt.shape = FINCH_SHAPE_AUTO;
    parse("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]}\n",
          &opt, FINCH_E_FORMAT, "the last message is from 'user'");
    /* no chat template */
    opt.tok = tiny_tok;
    parse("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n",
          &opt, FINCH_E_UNSUPPORTED, "needs a model with a chat template");
    /* preference pairs in chat form: the prompt's messages rendered, each side's content */
    opt = (finch_data_options){.tok = tok};
    d = parse("{\"prompt\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
              "\"content\": \"Capital of France?\"}], \"chosen\": [{\"role\": \"assistant\", \"content\": "
              "\"Paris.\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"Lyon.\"}]}\n",
              &opt, FINCH_OK, NULL);
    assert_int_equal(d->shape, FINCH_SHAPE_PREFERENCE);
    assert_string_equal(d->ex[0].prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                                         "Capital of France?<|im_end|>\n<|im_start|>assistant\n");
    assert_string_equal(d->ex[0].completion, "Paris.");
    assert_string_equal(d->ex[0].rejected, "Lyon.");
    finch_dataset_free(d);
    /* a string prompt with --chat is wrapped as a user turn */
    opt.templates.chat = true;
    d = parse("{\"prompt\": \"Capital of France?\", \"chosen\": \"Paris.\", \"rejected\": \"Lyon.\"}\n",
              &opt, FINCH_OK, NULL);
    assert_non_null(strstr(d->ex[0].prompt, "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"));
    assert_string_equal(d->ex[0].completion, "Paris.");
    assert_string_equal(d->ex[0].rejected, "Lyon.");
    finch_dataset_free(d);
    finch_tokenizer_free(tok);
    finch_gguf_close(g);
}

static int setup(void **state) {
    (void)state;
    finch_err err;
    if (finch_gguf_open(FINCH_FIXTURES "/tokenizer/tiny_smollm.gguf", &tiny_g, &err)) return -1;
    return finch_tokenizer_from_gguf(tiny_g, &tiny_tok, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_tokenizer_free(tiny_tok);
    finch_gguf_close(tiny_g);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),   cmocka_unit_test(test_templates),
        cmocka_unit_test(test_bad_lines), cmocka_unit_test(test_preference),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_tokenize), cmocka_unit_test(test_batches),
        cmocka_unit_test(test_chat_real_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
