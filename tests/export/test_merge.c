/*
 * test_merge.c: merging adapters into the base. On the tiny model with an adapter of
 * random A and non-zero B (trained a few steps, then saved and reloaded), the merged f32
 * model's logits equal base + adapter's to f32 rounding (1e-4: the product is reassociated
 * from (x A^T) B^T to x (B A)^T), two weighted adapters merge to the sum of their weighted
 * deltas, untouched tensors are copied byte for byte, and bad requests are refused. Merges
 * into f16, q8_0, q5_1, q5_0, q4_1 and q4_0 hold the reference quantization of the f32
 * merge, and their logits stay within a tolerance derived per type (test_merge_quantized).
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
#include "io/io.h" /* finch_gguf_open, finch_gguf_tensor_at; core's finch_dtype_info */

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

/* Merging into each quantized type. Every merged tensor holds exactly the reference
 * quantization (finch_dtype_info[t].quant, equal to the gguf package's in tests/format) of
 * the f32 merge's rows (itself base + adapter to 4e-6 above), every other tensor the
 * base's bytes, and general.file_type names the type. Then the numbers:
 *
 * - weights: rounding to a grid of step d moves an element by at most d/2, and by up to d
 *   where a symmetric type clamps the largest value of the block's other sign; d is the
 *   block's amax times 1/127 (q8_0), 1/16 (q5_0), 1/8 (q4_0), or its range (at most
 *   2 amax) times 1/31 (q5_1), 1/15 (q4_1). So no element may move by more than
 *   step(t) x amax, step = 1/127, 1/16, 1/8, 2/31, 2/15, amax the largest |w| of the
 *   merged tensors.
 * - logits: to first order a logit moves linearly in the weights' rounding errors, so its
 *   error is S x (the rms of those errors), with S the model's sensitivity on these tokens.
 *   S is measured on the f16 merge (a rounding of the same kind, 100x smaller, where
 *   second-order effects vanish): S = (largest logit error) / (rms weight error). The
 *   types' rounding errors meet the sensitive directions differently (seen here: 0.7x to
 *   3x of f16's S), so the tolerance is 5 S rms_w(t), with rms_w(t) itself bounded above.
 *   Measured on the tiny model: q8_0 0.25, q5_1 0.39, q5_0 0.82, q4_0 3.1, q4_1 3.4 (its
 *   logits span about 10; the adapter moves them by 3.9). */
static void test_merge_quantized(void **state) {
    (void)state;
    finch_model *m, *merged;
    finch_adapter *a;
    finch_err err;
    assert_int_equal(finch_model_load(TINY, &m, &err), FINCH_OK);
    assert_int_equal(finch_adapter_load(m, adapter_dir, &a, &err), FINCH_OK);
    const int32_t ids[] = {5, 17, 33, 42, 8, 90, 61, 3};
    enum { n = 8, V = 97 };
    static float with[n * V], got[n * V];
    assert_int_equal(finch_adapter_attach(m, a, 1.0f, &err), FINCH_OK);
    logits_of(m, ids, n, with);
    finch_adapter_detach(m, a);
    char f32_path[400], path[400];
    snprintf(f32_path, sizeof f32_path, "%s/merged-f32.gguf", dir);
    assert_int_equal(finch_merge(m, &a, NULL, 1, "f32", f32_path, &err), FINCH_OK);
    finch_gguf *g32, *gq, *gb;
    assert_int_equal(finch_gguf_open(f32_path, &g32, &err), FINCH_OK);
    assert_int_equal(finch_gguf_open(TINY, &gb, &err), FINCH_OK);
    static const struct {
        const char *name;
        finch_dtype type;
        uint32_t file_type;
        double step; /* largest rounding move relative to amax (see above) */
    } types[] = {
        {"f16", FINCH_DTYPE_F16, 1, 0x1p-11},    {"q8_0", FINCH_DTYPE_Q8_0, 7, 1.0 / 127},
        {"q5_1", FINCH_DTYPE_Q5_1, 9, 2.0 / 31}, {"q5_0", FINCH_DTYPE_Q5_0, 8, 1.0 / 16},
        {"q4_1", FINCH_DTYPE_Q4_1, 3, 2.0 / 15}, {"q4_0", FINCH_DTYPE_Q4_0, 2, 1.0 / 8},
    };
    double S = 0;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        snprintf(path, sizeof path, "%s/merged-%s.gguf", dir, types[t].name);
        assert_int_equal(finch_merge(m, &a, NULL, 1, types[t].name, path, &err), FINCH_OK);
        assert_int_equal(finch_gguf_open(path, &gq, &err), FINCH_OK);
        uint32_t ft = 99;
        assert_int_equal(finch_gguf_get_u32(gq, "general.file_type", true, &ft, &err), FINCH_OK);
        assert_int_equal(ft, types[t].file_type);
        int n_quantized = 0;
        double sq = 0, amax = 0, moved = 0;
        int64_t nw = 0;
        for (int64_t i = 0; i < finch_gguf_n_tensors(g32); i++) {
            const finch_gguf_tensor *t32 = finch_gguf_tensor_at(g32, i);
            const finch_gguf_tensor *tq = finch_gguf_find_tensor(gq, t32->name);
            const finch_gguf_tensor *tb = finch_gguf_find_tensor(gb, t32->name);
            assert_non_null(tq);
            assert_non_null(tb);
            if (tq->type != types[t].type) { /* untouched: the base's bytes */
                assert_int_equal(tq->nbytes, tb->nbytes);
                assert_memory_equal(tq->data, tb->data, tb->nbytes);
                continue;
            }
            const int64_t cols = t32->ne[0], rows = t32->ne[1], ne = cols * rows;
            const float *w = (const float *)t32->data;
            uint8_t *want = malloc(tq->nbytes);
            float *dq = malloc(sizeof(float) * (size_t)ne);
            const size_t rb = tq->nbytes / (size_t)rows;
            for (int64_t r = 0; r < rows; r++)
                finch_dtype_info[types[t].type].quant(want + (size_t)r * rb, w + r * cols, cols);
            if (memcmp(want, tq->data, tq->nbytes))
                fail_msg("%s: %s is not the reference quantization of the f32 merge",
                         types[t].name, t32->name);
            finch_dtype_info[types[t].type].dequant(dq, tq->data, ne);
            for (int64_t k = 0; k < ne; k++) {
                double e = (double)dq[k] - (double)w[k];
                sq += e * e;
                moved = fmax(moved, fabs(e));
                amax = fmax(amax, fabs(w[k]));
            }
            nw += ne;
            free(want);
            free(dq);
            n_quantized++;
        }
        finch_gguf_close(gq);
        assert_true(n_quantized > 0);
        const double rms_w = sqrt(sq / (double)nw);
        /* the weights: no element moved beyond the grid's bound */
        assert_true(moved <= types[t].step * amax);
        assert_true(rms_w > 0);
        /* the logits */
        assert_int_equal(finch_model_load(path, &merged, &err), FINCH_OK);
        logits_of(merged, ids, n, got);
        finch_model_free(merged);
        double worst = 0;
        for (int i = 0; i < n * V; i++) worst = fmax(worst, fabs(got[i] - with[i]));
        if (types[t].type == FINCH_DTYPE_F16) {
            S = worst / rms_w;
            printf("  f16: weights moved %.3g at most (bound %.3g), rms %.3g; logits %.3g: "
                   "S = %.3g\n",
                   moved, types[t].step * amax, rms_w, worst, S);
            assert_true(S > 0);
            continue;
        }
        const double tol = 5 * S * rms_w;
        printf("  %s: weights moved %.3g at most (bound %.3g), rms %.3g; merged vs base + adapter "
               "%.3g (tolerance 5 S rms = %.3g)\n",
               types[t].name, moved, types[t].step * amax, rms_w, worst, tol);
        assert_true(worst < tol);
    }
    finch_gguf_close(g32);
    finch_gguf_close(gb);
    finch_adapter_free(a);
    finch_model_free(m);
}

/* finch_merge_all: every matrix in the type, the embeddings too (finch_merge leaves them as
 * they are). With weight 0 and q8_0, each 2-D tensor is the reference quantization of the
 * base's rows, the 1-D ones the base's bytes, and the logits those of the base with its
 * matrices rounded: close to the base's (q8_0's error), not equal to finch_merge's. */
static void test_merge_all(void **state) {
    (void)state;
    finch_model *m, *merged;
    finch_adapter *a;
    finch_err err;
    assert_int_equal(finch_model_load(TINY, &m, &err), FINCH_OK);
    assert_int_equal(finch_adapter_load(m, adapter_dir, &a, &err), FINCH_OK);
    char path[400];
    snprintf(path, sizeof path, "%s/merged-all.gguf", dir);
    const float zero = 0.0f;
    assert_int_equal(finch_merge_all(m, &a, &zero, 1, "q8_0", path, &err), FINCH_OK);
    finch_gguf *gq, *gb;
    assert_int_equal(finch_gguf_open(path, &gq, &err), FINCH_OK);
    assert_int_equal(finch_gguf_open(TINY, &gb, &err), FINCH_OK);
    int n_matrices = 0;
    bool embd = false;
    for (int64_t i = 0; i < finch_gguf_n_tensors(gb); i++) {
        const finch_gguf_tensor *tb = finch_gguf_tensor_at(gb, i);
        const finch_gguf_tensor *tq = finch_gguf_find_tensor(gq, tb->name);
        assert_non_null(tq);
        if (tb->n_dims == 1) {
            assert_int_equal(tq->type, tb->type);
            assert_memory_equal(tq->data, tb->data, tb->nbytes);
            continue;
        }
        assert_int_equal(tb->type, FINCH_DTYPE_F32); /* the tiny model is f32 */
        if (tq->type != FINCH_DTYPE_Q8_0) fail_msg("%s is not q8_0", tb->name);
        const int64_t cols = tb->ne[0], rows = tb->ne[1];
        uint8_t *want = malloc(tq->nbytes);
        const size_t rb = tq->nbytes / (size_t)rows;
        for (int64_t r = 0; r < rows; r++)
            finch_dtype_info[FINCH_DTYPE_Q8_0].quant(want + (size_t)r * rb,
                                                     (const float *)tb->data + r * cols, cols);
        if (memcmp(want, tq->data, tq->nbytes))
            fail_msg("%s is not the reference quantization of the base", tb->name);
        free(want);
        n_matrices++;
        embd |= strcmp(tb->name, "token_embd.weight") == 0;
    }
    assert_true(embd);
    assert_true(n_matrices > 7);
    finch_gguf_close(gq);
    finch_gguf_close(gb);
    const int32_t ids[] = {5, 17, 33, 42, 8, 90, 61, 3};
    enum { n = 8, V = 97 };
    static float base[n * V], got[n * V];
    logits_of(m, ids, n, base);
    assert_int_equal(finch_model_load(path, &merged, &err), FINCH_OK);
    logits_of(merged, ids, n, got);
    double worst = 0;
    for (int i = 0; i < n * V; i++) worst = fmax(worst, fabs(got[i] - base[i]));
    fprintf(stderr, "merge_all q8_0, weight 0: max |logit - base| %.3g\n", worst);
    assert_true(worst > 0 && worst < 0.25); /* q8_0's bound in test_merge_quantized */
    finch_model_free(merged);
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_merge_matches_adapter),
                                       cmocka_unit_test(test_merge_quantized),
                                       cmocka_unit_test(test_merge_all)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
