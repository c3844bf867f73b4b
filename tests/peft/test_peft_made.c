/*
 * test_peft_made.c: an adapter written by Hugging Face peft itself, applied by finch.
 *
 * tests/fixtures/peft/peft_tiny/ is peft's save_pretrained output (LoRA r 8, alpha 16, all
 * seven projections, random non-zero A and B) for tests/fixtures/model/tiny_llama.gguf, and
 * peft_tiny_s{7,16}.f32 are the logits of transformers + peft on that model in float64
 * (tests/reference/make_peft_fixtures.py). Loaded and attached through the public API,
 * finch's logits must equal them; the adapter moves the logits by ~4 (peft_tiny.json), so
 * a wrong key, scale or Q/K row order fails by far more than the tolerance.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peft_made_adapter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
