/*
 * test_peft_made.c: an adapter written by Hugging Face peft itself, applied by finch.
 *
 * tests/fixtures/peft/peft_tiny/ is peft's save_pretrained output (LoRA r 8, alpha 16, all
 * seven projections, random non-zero A and B) for tests/fixtures/model/tiny_llama.gguf, and
 * peft_tiny_s{7,16}.f32 are the logits of transformers + peft on that model in float64
 * (tests/reference/make_peft_fixtures.py). Loaded and attached through the public API,
 * finch's logits must equal them; the adapter moves the logits by ~4 (peft_tiny.json), so
 * a wrong key, scale or Q/K row order fails by far more than the tolerance.
 *
 * tests/fixtures/methods/peft_made/{dora,ia3}/ are the same for DoRA (r 4, all seven
 * projections, random A, B and magnitudes) and (IA)^3 (k, v, down with random vectors),
 * with peft's float64 logits in <method>_logits.json
 * (tests/reference/make_methods_reference.py): they move the logits by 2.9 and 1.2. Prompt
 * tuning (3 virtual embeddings) and prefix tuning (3 keys and values per layer, key heads
 * in rotate-half order in the file) move them by 2.9 and 2.7. Every method's logits are
 * checked decoding the ids at once and again in two pieces after a rewind (the virtual
 * tokens enter the cache once and stay). Bottleneck adapters saved by AdapterHub's
 * `adapters` package (houlsby, sequential, parallel; random weights) move them by 3.7,
 * 2.7 and 3.9 (tests/reference/make_adapter_reference.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "finch.h"
#include "test_util.h"

#define MODEL FINCH_FIXTURES "/model/tiny_llama.gguf"
#define ADAPTER FINCH_FIXTURES "/peft/peft_tiny"
#define N_VOCAB 97
/* finch computes in f32 and the reference in f64 on logits of magnitude ~3: measured
 * 4.6e-6. */
#define TOL 2e-5f

typedef struct {
    const char *file;
    int32_t ids[16];
    int n;
} sequence;

static const sequence seqs[] = {
    {"peft_tiny_s7.f32", {1, 17, 96, 0, 53, 53, 8}, 7},
    {"peft_tiny_s16.f32", {5, 88, 23, 61, 2, 40, 77, 13, 96, 31, 9, 70, 44, 44, 19, 64}, 16},
};

/* The largest |finch - reference| over a sequence's logits. */
static float max_diff(const finch_model *m, const sequence *s) {
    char path[512];
    snprintf(path, sizeof path, FINCH_FIXTURES "/peft/%s", s->file);
    size_t size;
    float *want = (float *)read_file(path, &size);
    assert_int_equal(size, sizeof(float) * (size_t)s->n * N_VOCAB);
    float *got = malloc(size);
    assert_non_null(got);

    finch_err err;
    finch_session *sess = NULL;
    assert_int_equal(finch_session_new(m, s->n, FINCH_NUMERICS_EXACT, &sess, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(sess, s->ids, s->n, got, NULL, &err), FINCH_OK);
    finch_session_free(sess);

    float worst = 0;
    for (size_t i = 0; i < (size_t)s->n * N_VOCAB; i++) {
        float d = fabsf(got[i] - want[i]);
        assert_false(isnan(d));
        if (d > worst) worst = d;
    }
    free(got);
    free(want);
    return worst;
}

static void test_peft_made_adapter(void **state) {
    (void)state;
    finch_err err;
    finch_model *m = NULL;
    assert_int_equal(finch_model_load(MODEL, &m, &err), FINCH_OK);
    assert_int_equal(finch_tokenizer_n_vocab(finch_model_tokenizer(m)), N_VOCAB);

    /* Without the adapter the reference is far off: the comparison below means something. */
    for (size_t i = 0; i < sizeof seqs / sizeof *seqs; i++)
        assert_true(max_diff(m, &seqs[i]) > 1.0f);

    finch_adapter *a = NULL;
    if (finch_adapter_load(m, ADAPTER, &a, &err)) fail_msg("%s", err.msg);
    if (finch_adapter_attach(m, a, 1.0f, &err)) fail_msg("%s", err.msg);
    for (size_t i = 0; i < sizeof seqs / sizeof *seqs; i++) {
        float d = max_diff(m, &seqs[i]);
        print_message("%s: max |finch - peft| = %.3g\n", seqs[i].file, (double)d);
        assert_true(d <= TOL);
    }
    finch_adapter_detach(m, a);
    finch_adapter_free(a);
    finch_model_free(m);
}

/* A peft-made adapter of another method: its logits against peft's, and far from the
 * base's. */
static void check_method(const char *method) {
    char path[512];
    snprintf(path, sizeof path, FINCH_FIXTURES "/methods/peft_made/%s_logits.json", method);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s", path, je.text);
    json_t *jids = json_object_get(j, "ids"), *jl = json_object_get(j, "logits");
    int n = (int)json_array_size(jids);
    int32_t ids[64];
    assert_true(n > 0 && n <= 64);
    for (int i = 0; i < n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(jids, (size_t)i));
    finch_err err;
    finch_model *m = NULL;
    assert_int_equal(finch_model_load(MODEL, &m, &err), FINCH_OK);
    float *got = malloc(sizeof(float) * (size_t)n * N_VOCAB), *base = malloc(sizeof(float) * (size_t)n * N_VOCAB);
    finch_session *sess = NULL;
    assert_int_equal(finch_session_new(m, n, FINCH_NUMERICS_EXACT, &sess, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(sess, ids, n, base, NULL, &err), FINCH_OK);
    finch_session_free(sess);
    snprintf(path, sizeof path, FINCH_FIXTURES "/methods/peft_made/%s", method);
    finch_adapter *a = NULL;
    if (finch_adapter_load(m, path, &a, &err)) fail_msg("%s", err.msg);
    if (finch_adapter_attach(m, a, 1.0f, &err)) fail_msg("%s", err.msg);
    assert_int_equal(finch_session_new(m, n, FINCH_NUMERICS_EXACT, &sess, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(sess, ids, n, got, NULL, &err), FINCH_OK);
    assert_int_equal(finch_session_pos(sess), n);
    /* again after a rewind, in two pieces: the same numbers */
    float *again = malloc(sizeof(float) * (size_t)n * N_VOCAB);
    finch_session_reset(sess);
    assert_int_equal(finch_session_decode(sess, ids, 3, again, NULL, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(sess, ids + 3, n - 3, again + 3 * N_VOCAB, NULL, &err),
                     FINCH_OK);
    finch_session_free(sess);
    float worst = 0, moved = 0;
    for (int t = 0; t < n; t++)
        for (int v = 0; v < N_VOCAB; v++) {
            float want = (float)json_real_value(json_array_get(json_array_get(jl, (size_t)t), (size_t)v));
            worst = fmaxf(worst, fabsf(got[t * N_VOCAB + v] - want));
            worst = fmaxf(worst, fabsf(again[t * N_VOCAB + v] - want));
            moved = fmaxf(moved, fabsf(base[t * N_VOCAB + v] - want));
        }
    print_message("%s: max |finch - peft| = %.3g (the adapter moves logits by %.3g)\n", method,
                  (double)worst, (double)moved);
    assert_true(moved > 0.5f);
    assert_true(worst <= TOL);
    finch_adapter_detach(m, a);
    finch_adapter_free(a);
    free(again);
    free(got);
    free(base);
    finch_model_free(m);
    json_decref(j);
}

static void test_peft_made_dora(void **state) {
    (void)state;
    check_method("dora");
}

static void test_peft_made_ia3(void **state) {
    (void)state;
    check_method("ia3");
}

static void test_peft_made_prompt(void **state) {
    (void)state;
    check_method("prompt");
}

static void test_peft_made_prefix(void **state) {
    (void)state;
    check_method("prefix");
}

/* Bottleneck adapters saved by AdapterHub's `adapters` (make_adapter_reference.py). */
static void test_adapterhub_made(void **state) {
    (void)state;
    check_method("adapter_houlsby");
    check_method("adapter_sequential");
    check_method("adapter_parallel");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peft_made_adapter),
        cmocka_unit_test(test_peft_made_dora),
        cmocka_unit_test(test_peft_made_ia3),
        cmocka_unit_test(test_peft_made_prompt),
        cmocka_unit_test(test_peft_made_prefix),
        cmocka_unit_test(test_adapterhub_made),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
