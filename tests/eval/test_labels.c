/*
 * test_labels.c: classification by label likelihood and the generation-evaluation pieces.
 * On the tiny model, finch_label_logprobs equals a float64 PyTorch forward of prompt +
 * label (tests/fixtures/labels, made by tests/reference/make_label_fixtures.py) to 1e-4,
 * with the same token ids as llama.cpp's. finch_eval_classify's scores equal
 * finch_label_logprobs of the prompts it promises to build (space moved onto the label,
 * shots before the prompt, never the example itself), and its bad inputs fail clearly.
 * finch_scores_compute equals the score-set path on the same pairs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finch.h"

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"
#define LABELS FINCH_FIXTURES "/labels/tiny_labels.json"

static char dir[] = "/tmp/finch_labels_XXXXXX";
static finch_model *model;

static const char *write_file(const char *name, const char *text) {
    static char path[8][256];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static void assert_ids(const char *text, int flags, json_t *want) {
    int32_t *ids;
    int64_t n;
    finch_err err;
    assert_int_equal(
        finch_tokenize(finch_model_tokenizer(model), text, strlen(text), flags, &ids, &n, &err),
        FINCH_OK);
    assert_int_equal(n, (int64_t)json_array_size(want));
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(ids[i], json_integer_value(json_array_get(want, (size_t)i)));
    free(ids);
}

static void test_reference(void **state) {
    (void)state;
    json_error_t je;
    json_t *doc = json_load_file(LABELS, 0, &je);
    assert_non_null(doc);
    json_t *cases = json_object_get(doc, "cases");
    assert_true(json_array_size(cases) >= 4);
    double worst = 0;
    int count = 0;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c), *ls = json_object_get(cs, "labels");
        const char *prompt = json_string_value(json_object_get(cs, "prompt"));
        assert_ids(prompt, FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL,
                   json_object_get(cs, "prompt_ids"));
        const char *labels[8];
        double want[8], got[8];
        int n = (int)json_array_size(ls);
        assert_true(n <= 8);
        for (int j = 0; j < n; j++) {
            json_t *l = json_array_get(ls, (size_t)j);
            labels[j] = json_string_value(json_object_get(l, "label"));
            want[j] = json_real_value(json_object_get(l, "logprob"));
            assert_ids(labels[j], 0, json_object_get(l, "ids"));
        }
        finch_err err;
        assert_int_equal(
            finch_label_logprobs(model, FINCH_NUMERICS_EXACT, prompt, labels, n, got, &err),
            FINCH_OK);
        for (int j = 0; j < n; j++) {
            double d = fabs(got[j] - want[j]);
            if (d > worst) worst = d;
            if (d > 1e-4)
                fail_msg("case %zu label '%s': %.8f, reference %.8f", c, labels[j], got[j],
                         want[j]);
            count++;
        }
        /* one label alone scores the same as among others (the shared cache is rewound) */
        double one;
        assert_int_equal(finch_label_logprobs(model, FINCH_NUMERICS_EXACT, prompt, &labels[n - 1],
                                              1, &one, &err),
                         FINCH_OK);
        assert_true(fabs(one - got[n - 1]) < 1e-9);
    }
    print_message("%d label log-likelihoods, largest difference from float64 PyTorch %.2e\n", count,
                  worst);
    const char *bad[] = {"ok", "\xc3\xa9"}; /* é has no token in the tiny vocabulary */
    double out[2];
    finch_err err;
    assert_int_equal(finch_label_logprobs(model, FINCH_NUMERICS_EXACT, "the", bad, 2, out, &err),
                     FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "tokenizes to nothing"));
    json_decref(doc);
}

/* log p(label | prompt) through the low-level call, for comparison. */
static double lp(const char *prompt, const char *label) {
    double r;
    finch_err err;
    assert_int_equal(finch_label_logprobs(model, FINCH_NUMERICS_EXACT, prompt, &label, 1, &r, &err),
                     FINCH_OK);
    return r;
}

static const char data[] = "{\"prompt\": \"the cat is \", \"completion\": \"on\"}\n"
                           "{\"prompt\": \"the dog is\", \"completion\": \" singing \"}\n"
                           "{\"prompt\": \"is it on? \", \"completion\": \"on\"}\n";

static void test_classify(void **state) {
    (void)state;
    const char *path = write_file("cls.jsonl", data);
    finch_data_spec spec = {.path = path};
    finch_classify_options opt = {0};
    finch_classify_results r;
    finch_err err;
    assert_int_equal(
        finch_eval_classify(model, &spec, &opt, FINCH_NUMERICS_EXACT, NULL, NULL, &r, &err),
        FINCH_OK);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.n_labels, 2);
    assert_string_equal(r.labels[0], "on");
    assert_string_equal(r.labels[1], "singing");
    assert_int_equal(r.gold[0], 0);
    assert_int_equal(r.gold[1], 1);
    /* the prompt's end space moves onto the label; a completion's leading space stays */
    const double want[3][2] = {{lp("the cat is", " on"), lp("the cat is", " singing")},
                               {lp("the dog is", "on"), lp("the dog is", " singing")},
                               {lp("is it on?", " on"), lp("is it on?", " singing")}};
    int correct = 0;
    for (int i = 0; i < 3; i++) {
        double z = 0;
        for (int j = 0; j < 2; j++) {
            assert_true(fabs(r.logprob[i * 2 + j] - want[i][j]) < 1e-9);
            z += exp(want[i][j]);
        }
        for (int j = 0; j < 2; j++)
            assert_true(fabs(r.prob[i * 2 + j] - exp(want[i][j]) / z) < 1e-12);
        int best = want[i][1] > want[i][0];
        assert_int_equal(r.pred[i], best);
        correct += best == r.gold[i];
    }
    assert_true(fabs(r.accuracy - correct / 3.0) < 1e-15);
    finch_classify_results_release(&r);

    /* given labels, a template ending in {label}, max_examples */
    const char *labels[] = {"singing", "on", "a"};
    const char *tmpl[] = {"Q: {prompt}{label}"};
    spec = (finch_data_spec){.path = path, .templates = tmpl, .n_templates = 1, .max_examples = 2};
    opt = (finch_classify_options){.labels = labels, .n_labels = 3};
    assert_int_equal(
        finch_eval_classify(model, &spec, &opt, FINCH_NUMERICS_EXACT, NULL, NULL, &r, &err),
        FINCH_OK);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.gold[0], 1);
    assert_true(fabs(r.logprob[2] - lp("Q: the cat is", " a")) < 1e-9);
    assert_true(fabs(r.logprob[3] - lp("Q: the dog is", "singing")) < 1e-9);
    finch_classify_results_release(&r);

    /* one shot drawn from the same file: never the example itself; with two examples the
     * other one is the only choice */
    const char *two = write_file("two.jsonl", "{\"prompt\": \"ab:\", \"completion\": \" on\"}\n"
                                              "{\"prompt\": \"cd:\", \"completion\": \" off\"}\n");
    spec = (finch_data_spec){.path = two, .seed = 7};
    opt = (finch_classify_options){.k_shot = 1, .shots_path = two};
    assert_int_equal(
        finch_eval_classify(model, &spec, &opt, FINCH_NUMERICS_EXACT, NULL, NULL, &r, &err),
        FINCH_OK);
    assert_true(fabs(r.logprob[0] - lp("cd: off\n\nab:", " on")) < 1e-9);
    assert_true(fabs(r.logprob[3] - lp("ab: on\n\ncd:", " off")) < 1e-9);
    finch_classify_results_release(&r);
}

#define BAD(spec_, opt_, code, fragment)                                                           \
    do {                                                                                           \
        finch_data_spec s_ = spec_;                                                                \
        finch_classify_options o_ = opt_;                                                          \
        finch_classify_results r_;                                                                 \
        finch_err e_;                                                                              \
        finch_status st_ =                                                                         \
            finch_eval_classify(model, &s_, &o_, FINCH_NUMERICS_EXACT, NULL, NULL, &r_, &e_);      \
        if (st_ != (code) || !strstr(e_.msg, fragment))                                            \
            fail_msg("status %d (want %d): %s (want '%s')", st_, code, st_ ? e_.msg : "",          \
                     fragment);                                                                    \
    } while (0)

static void test_classify_bad(void **state) {
    (void)state;
    const char *path = write_file("cls2.jsonl", data);
    const char *one[] = {"on"}, *dup[] = {"on", " on "}, *none[] = {"on", "\xc3\xa9"};
    const char *tail[] = {"{prompt} {label} then"};
    BAD(((finch_data_spec){.path = path}), ((finch_classify_options){.labels = one, .n_labels = 1}),
        FINCH_E_USAGE, "at least two");
    BAD(((finch_data_spec){.path = path}), ((finch_classify_options){.labels = dup, .n_labels = 2}),
        FINCH_E_USAGE, "label 'on' is given twice");
    BAD(((finch_data_spec){.path = path}),
        ((finch_classify_options){.labels = none, .n_labels = 2}), FINCH_E_USAGE,
        "tokenizes to nothing");
    BAD(((finch_data_spec){.path = path}), ((finch_classify_options){.k_shot = 2}), FINCH_E_USAGE,
        "--shots-from");
    BAD(((finch_data_spec){.path = path, .templates = tail, .n_templates = 1}),
        ((finch_classify_options){0}), FINCH_E_USAGE, "{label} must end the template");
    const char *dup2[] = {"singing", "off"};
    BAD(((finch_data_spec){.path = path}),
        ((finch_classify_options){.labels = dup2, .n_labels = 2}), FINCH_E_FORMAT,
        "line 1: the completion 'on' is not one of the labels (singing, off)");
    const char *same =
        write_file("same.jsonl", "{\"prompt\": \"a\", \"completion\": \"x\"}\n{\"prompt\": \"b\", "
                                 "\"completion\": \" x\"}\n");
    BAD(((finch_data_spec){.path = same}), ((finch_classify_options){0}), FINCH_E_USAGE,
        "completions are all the same");
    const char *empty = write_file("empty.jsonl", "\n\n");
    BAD(((finch_data_spec){.path = empty}), ((finch_classify_options){0}), FINCH_E_FORMAT,
        "empty.jsonl");
    const char *two = write_file("one.jsonl", "{\"prompt\": \"a\", \"completion\": \"x\"}\n");
    BAD(((finch_data_spec){.path = path}),
        ((finch_classify_options){.k_shot = 2, .shots_path = two}), FINCH_E_USAGE,
        "not enough for 2 shots");
}

static void test_scores(void **state) {
    (void)state;
    const char *preds[] = {"the cat sat on the mat", "a b c d e f", "Paris"};
    const char *refs[] = {"the cat is on the mat", "a b c x e f", "paris."};
    finch_scores a, b;
    finch_err err;
    assert_int_equal(finch_scores_compute(preds, refs, 3, 0, &a, &err), FINCH_OK);
    char text[1024] = "";
    for (int i = 0; i < 3; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text),
                 "{\"prediction\": \"%s\", \"reference\": \"%s\"}\n", preds[i], refs[i]);
    finch_score_set *set;
    assert_int_equal(finch_score_set_load_jsonl(write_file("s.jsonl", text), &set, &err), FINCH_OK);
    assert_int_equal(finch_score_set_compute(set, 0, &b, &err), FINCH_OK);
    finch_score_set_free(set);
    for (int k = 0; k < FINCH_ROUGE_COUNT; k++)
        assert_true(fabs(a.rouge[k].f1 - b.rouge[k].f1) < 1e-12);
    assert_true(fabs(a.bleu.score - b.bleu.score) < 1e-12);
    assert_true(fabs(a.exact_match - 1.0 / 3) < 1e-12);
    assert_true(fabs(a.token_f1 - b.token_f1) < 1e-12);
    assert_int_equal(finch_scores_compute(preds, refs, 0, 0, &a, &err), FINCH_E_USAGE);
}

static int collect(const char *piece, size_t len, void *user) {
    char *buf = user;
    strncat(buf, piece, len < 255 - strlen(buf) ? len : 255 - strlen(buf));
    return 0;
}

static void test_generate(void **state) {
    (void)state;
    const char *path =
        write_file("gen.jsonl", "{\"prompt\": \"the cat\", \"completion\": \" is on\"}\n"
                                "{\"prompt\": \"a dog\", \"completion\": \"singing \"}\n");
    finch_data_spec spec = {.path = path};
    finch_gen_options g = finch_gen_defaults();
    g.max_tokens = 5;
    finch_gen_results r;
    finch_err err;
    assert_int_equal(finch_eval_generate(model, &spec, &g, NULL, NULL, &r, &err), FINCH_OK);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.references[0], "is on");
    assert_string_equal(r.references[1], "singing");
    /* greedy: the same text finch_generate gives, without surrounding whitespace */
    for (int i = 0; i < 2; i++) {
        char got[256] = "";
        assert_int_equal(finch_generate(model, r.prompts[i], &g, collect, got, &err), FINCH_OK);
        size_t a = 0, b = strlen(got);
        while (got[a] == ' ' || got[a] == '\n') a++;
        while (b > a && (got[b - 1] == ' ' || got[b - 1] == '\n')) b--;
        got[b] = 0;
        assert_string_equal(r.outputs[i], got + a);
        assert_string_equal(r.prompts[i], i ? "a dog" : "the cat");
    }
    assert_true(r.n_tokens > 0 && r.n_tokens <= 10);
    finch_gen_results_release(&r);
    /* sampling: each example's draws depend on the seed and its index only */
    g.temperature = 1.0f;
    g.seed = 5;
    finch_gen_results r2;
    assert_int_equal(finch_eval_generate(model, &spec, &g, NULL, NULL, &r, &err), FINCH_OK);
    spec.max_examples = 1;
    assert_int_equal(finch_eval_generate(model, &spec, &g, NULL, NULL, &r2, &err), FINCH_OK);
    assert_int_equal(r2.n, 1);
    assert_string_equal(r.outputs[0], r2.outputs[0]);
    finch_gen_results_release(&r);
    finch_gen_results_release(&r2);
    const char *empty_ref =
        write_file("genbad.jsonl", "{\"prompt\": \"the cat\", \"completion\": \"  \"}\n");
    spec.path = empty_ref;
    assert_int_equal(finch_eval_generate(model, &spec, &g, NULL, NULL, &r, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "genbad.jsonl: line 1: the reference (completion) is empty"));
}

static int setup(void **state) {
    (void)state;
    finch_err err;
    if (!mkdtemp(dir)) return -1;
    return finch_model_load(TINY, &model, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference),    cmocka_unit_test(test_classify),
        cmocka_unit_test(test_classify_bad), cmocka_unit_test(test_scores),
        cmocka_unit_test(test_generate),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
