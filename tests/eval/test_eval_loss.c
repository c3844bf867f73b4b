/*
 * test_eval_loss.c: validation loss over a dataset. On the tiny model (its 97-token
 * byte-level vocabulary) the loss equals a cross-entropy computed here by hand, in double,
 * from the session's logits of the concatenated prompt, completion and end-of-sequence
 * ids; the masking (prompt excluded, train_on_prompt included) and max_examples are
 * checked the same way. Then `finch eval` on bad input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "finch.h"
#include "test_util.h" /* run_capture */

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"
#define TINY_EOS 2 /* its tokenizer.ggml.eos_token_id (tests/reference/make_tiny_model.py) */

static char dir[] = "/tmp/finch_eval_XXXXXX";
static char data_path[256];
static finch_model *model;

/* Cross-entropy of the ids[from..n) predictions, by hand. */
static double hand_loss(const int32_t *ids, int n, int from, int64_t *count) {
    finch_session *s;
    finch_err err;
    finch_model_config cfg;
    finch_model_config_get(model, &cfg);
    float *l = malloc((size_t)n * cfg.n_vocab * sizeof *l);
    assert_int_equal(finch_session_new(model, n, FINCH_NUMERICS_EXACT, &s, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(s, ids, n - 1, l, NULL, &err), FINCH_OK);
    double sum = 0;
    for (int k = from - 1; k < n - 1; k++) {
        const float *r = l + (size_t)k * cfg.n_vocab;
        double mx = r[0], z = 0;
        for (int v = 1; v < cfg.n_vocab; v++) mx = fmax(mx, r[v]);
        for (int v = 0; v < cfg.n_vocab; v++) z += exp(r[v] - mx);
        sum += mx + log(z) - r[ids[k + 1]];
        (*count)++;
    }
    finch_session_free(s);
    free(l);
    return sum;
}

static void tok(const char *text, int flags, int32_t *ids, int *n) {
    int32_t *t;
    int64_t m;
    finch_err err;
    assert_int_equal(finch_tokenize(finch_model_tokenizer(model), text, strlen(text), flags, &t, &m, &err), FINCH_OK);
    memcpy(ids + *n, t, (size_t)m * sizeof *t);
    *n += (int)m;
    free(t);
}

static void test_loss_by_hand(void **state) {
    (void)state;
    const char *ex[][2] = {{"ab c", " def"}, {"xyz", " q r"}, {"hello", " world"}};
    double want = 0, want_all = 0;
    int64_t count = 0, count_all = 0;
    for (int i = 0; i < 2; i++) { /* max_examples = 2 */
        int32_t ids[64];
        int n = 0;
        tok(ex[i][0], FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, ids, &n);
        int np = n;
        tok(ex[i][1], 0, ids, &n);
        ids[n++] = TINY_EOS;
        want += hand_loss(ids, n, np, &count);
        want_all += hand_loss(ids, n, 1, &count_all);
    }
    finch_data_spec spec = {.path = data_path, .max_seq_len = 64, .max_examples = 2};
    finch_loss_report r;
    finch_err err;
    assert_int_equal(finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &r, &err), FINCH_OK);
    assert_int_equal(r.n_examples, 2);
    assert_int_equal(r.n_targets, count);
    assert_true(fabs(r.loss - want / (double)count) < 1e-6);
    assert_true(fabs(r.perplexity - exp(r.loss)) < 1e-9 * r.perplexity);
    spec.train_on_prompt = 1;
    assert_int_equal(finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &r, &err), FINCH_OK);
    assert_int_equal(r.n_targets, count_all);
    assert_true(fabs(r.loss - want_all / (double)count_all) < 1e-6);
    /* limits */
    spec.max_seq_len = 1;
    assert_int_equal(finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &r, &err), FINCH_E_USAGE);
    spec.max_seq_len = 64;
    spec.format = "sharegpt";
    assert_int_equal(finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &r, &err), FINCH_E_USAGE);
}

static int run(const char *args, char *out, size_t cap) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s eval -m %s %s", FINCH_CLI, TINY, args);
    return run_capture(dir, cmd, NULL, out, cap);
}

static void test_cli(void **state) {
    (void)state;
    char out[4096], args[1024], bad[300];
    snprintf(args, sizeof args, "--data %s --max-examples 2 --max-seq-len 64", data_path);
    assert_int_equal(run(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "perplexity:"));
    assert_int_equal(run("", out, sizeof out), 2);
    assert_non_null(strstr(out, "no dataset"));
    snprintf(args, sizeof args, "--data %s --task summarize", data_path);
    assert_int_equal(run(args, out, sizeof out), 2);
    snprintf(args, sizeof args, "--data %s --max-seq-len 1", data_path);
    assert_int_equal(run(args, out, sizeof out), 2);
    assert_int_equal(run("--data /nonexistent.jsonl", out, sizeof out), 1);
    assert_non_null(strstr(out, "/nonexistent.jsonl: cannot open"));
    snprintf(bad, sizeof bad, "%s/bad.jsonl", dir);
    FILE *f = fopen(bad, "w");
    fputs("{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n", f);
    fclose(f);
    snprintf(args, sizeof args, "--data %s", bad);
    assert_int_equal(run(args, out, sizeof out), 1);
    assert_non_null(strstr(out, "bad.jsonl: line 2: field \"completion\" is missing"));
    snprintf(args, sizeof args, "--data %s --skip-bad", bad);
    assert_int_equal(run(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "1 malformed lines skipped"));
    snprintf(args, sizeof args, "--data %s --chat", data_path);
    assert_int_equal(run(args, out, sizeof out), 1);
    assert_non_null(strstr(out, "chat template"));
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(data_path, sizeof data_path, "%s/data.jsonl", dir);
    FILE *f = fopen(data_path, "w");
    fputs("{\"prompt\": \"ab c\", \"completion\": \" def\"}\n"
          "{\"prompt\": \"xyz\", \"completion\": \" q r\"}\n"
          "{\"prompt\": \"hello\", \"completion\": \" world\"}\n", f);
    fclose(f);
    finch_threads_set(2);
    finch_err err;
    return finch_model_load(TINY, &model, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_loss_by_hand), cmocka_unit_test(test_cli)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
