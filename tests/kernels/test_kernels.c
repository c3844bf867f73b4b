/*
 * test_kernels.c: every CPU op against the naive double-accumulating reference
 * (kernels/ref/), on random inputs and awkward shapes: one row, odd row counts, token
 * counts on both sides of the matmul's gemv/tiled switch, every weight storage type.
 *
 * Tolerance: the CPU kernels accumulate in f32, so the error bound of a dot product of
 * length K is about K * eps_f32 * sum|w_i x_i|; we allow 4e-6 * sum|w_i x_i| (plus 1e-6
 * absolute), which is far below the quantization step of any storage type.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_weights.h" /* randn, rand_vec, make_weight */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/quant.h"
#include "kernels/kernels.h"
#include "optim/optim.h" /* finch_adamw_scalars_at */
#include "test_util.h"   /* test_backend, test_require_isa */

static const finch_backend *be; /* the backend under test (test_backend) */

/* max over elements of |y - ref| / (4e-6 * bound + 1e-6), where bound = sum |w||x|. */
static void check_matmul(finch_dtype t, int64_t rows, int64_t cols, int64_t T, finch_rng *r) {
    finch_weight w;
    void *data = make_weight(r, t, rows, cols, &w);
    float *x = rand_vec(r, T * cols, 1.0f);
    float *y = malloc((size_t)(T * rows) * sizeof *y),
          *yr = malloc((size_t)(T * rows) * sizeof *yr);
    float *wf = malloc((size_t)cols * sizeof *wf);
    finch_workspace ws;
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(cols, 1), 2,
                                          finch_workspace_act_need(T, cols), &err),
                     FINCH_OK);
    be->matmul(y, x, &w, T, &ws);
    finch_ref_matmul(yr, x, &w, T);
    for (int64_t i = 0; i < rows; i++) {
        finch_dtype_info[t].dequant(wf, (const uint8_t *)data + i * w.row_bytes, cols);
        for (int64_t k = 0; k < T; k++) {
            double bound = 0;
            for (int64_t c = 0; c < cols; c++) bound += fabs((double)wf[c] * x[k * cols + c]);
            double e = fabs((double)y[k * rows + i] - yr[k * rows + i]);
            if (e > 4e-6 * bound + 1e-6)
                fail_msg("matmul %s %lldx%lld T=%lld: y[%lld,%lld] = %.9g, reference %.9g",
                         finch_dtype_info[t].name, (long long)rows, (long long)cols, (long long)T,
                         (long long)k, (long long)i, y[k * rows + i], yr[k * rows + i]);
        }
    }
    finch_workspace_free(&ws);
    free(wf);
    free(y);
    free(yr);
    free(x);
    free(data);
}

static void test_matmul_all_types(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 1);
    const finch_dtype types[] = {FINCH_DTYPE_F32,  FINCH_DTYPE_F16,  FINCH_DTYPE_BF16,
                                 FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q4_1, FINCH_DTYPE_Q5_0,
                                 FINCH_DTYPE_Q5_1, FINCH_DTYPE_Q8_0};
    const int64_t shapes[][2] = {{1, 32}, {7, 64}, {65, 96}, {130, 160}};
    const int64_t Ts[] = {1, 2, 3, 4, 16, 17}; /* gemv, few-token rows, tiles */
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++)
                check_matmul(types[i], shapes[s][0], shapes[s][1], Ts[k], &r);
}

/* NF4 (blocks of 64) on both paths: the fused dot (1-3 tokens) and the AVX-512 tiles, whose
 * values must be the scalar dequantizer's exactly; and llamacpp numerics, which have no
 * integer kernel for NF4 and fall back to the exact matmul bit for bit. */
static void test_matmul_nf4(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 5);
    const int64_t shapes[][2] = {{1, 64}, {7, 128}, {65, 192}, {130, 576}, {17, 1536}};
    const int64_t Ts[] = {1, 2, 3, 4, 17, 70};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++)
            check_matmul(FINCH_DTYPE_NF4, shapes[s][0], shapes[s][1], Ts[k], &r);
    /* a tile's values equal finch_dequant_nf4's: an identity activation reads them out */
    finch_weight w;
    const int64_t R = 70, K = 128;
    void *data = make_weight(&r, FINCH_DTYPE_NF4, R, K, &w);
    float *eye = calloc((size_t)(K * K), sizeof(float)),
          *y = malloc((size_t)(K * R) * sizeof(float));
    float *y2 = malloc((size_t)(K * R) * sizeof(float)), *wf = malloc((size_t)K * sizeof(float));
    for (int64_t k = 0; k < K; k++) eye[k * K + k] = 1.0f;
    finch_workspace ws;
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2,
                                          finch_workspace_act_need(K, K), &err),
                     FINCH_OK);
    be->matmul(y, eye, &w, K, &ws);
    for (int64_t i = 0; i < R; i++) {
        finch_dequant_nf4(wf, (const uint8_t *)data + i * w.row_bytes, K);
        for (int64_t k = 0; k < K; k++)
            if (y[k * R + i] != wf[k])
                fail_msg("nf4 tile: row %lld col %lld = %.9g, dequantized %.9g", (long long)i,
                         (long long)k, y[k * R + i], wf[k]);
    }
    be->matmul_q8(y2, eye, &w, K, &ws);
    assert_memory_equal(y, y2, (size_t)(K * R) * sizeof(float));
    for (int64_t T = 1; T <= 9; T += 8) { /* the same bits on 1 and 2 threads */
        finch_threads_set(1);
        be->matmul(y, eye, &w, T, &ws);
        finch_threads_set(2);
        be->matmul(y2, eye, &w, T, &ws);
        assert_memory_equal(y, y2, (size_t)(T * R) * sizeof(float));
    }
    finch_workspace_free(&ws);
    free(eye);
    free(y);
    free(y2);
    free(wf);
    free(data);
}

/* The activation quantization of matmul_q8, written from its specification: per block of
 * 32, scale 127/max|x|, round half to even; d and d*sum(q) stored as fp16. Returns the
 * dequantized activations d*q and, per block, |s| (for the rounding bound of s). */
static void quantize_act_spec(float *xhat, float *s_abs, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = finch_f16_to_f32(finch_f32_to_f16(amax / 127.0f));
        float id = amax ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            float q = nearbyintf(x[b * 32 + j] * id);
            xhat[b * 32 + j] = d * q;
            sum += (int)q;
        }
        s_abs[b] = fabsf(amax / 127.0f * (float)sum);
    }
}

static void check_matmul_q8(finch_dtype t, int64_t rows, int64_t cols, int64_t T, finch_rng *r) {
    finch_weight w;
    void *data = make_weight(r, t, rows, cols, &w);
    float *x = rand_vec(r, T * cols, 1.0f), *xhat = malloc((size_t)(T * cols) * sizeof(float));
    float *s_abs = malloc((size_t)(T * cols / 32) * sizeof(float));
    float *y = malloc((size_t)(T * rows) * sizeof *y),
          *yr = malloc((size_t)(T * rows) * sizeof *yr);
    float *wf = malloc((size_t)cols * sizeof *wf);
    finch_workspace ws;
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(cols, 1), 2,
                                          finch_workspace_act_need(T, cols), &err),
                     FINCH_OK);
    for (int64_t k = 0; k < T; k++)
        quantize_act_spec(xhat + k * cols, s_abs + k * cols / 32, x + k * cols, cols);
    be->matmul_q8(y, x, &w, T, &ws);
    finch_ref_matmul(yr, xhat, &w, T);
    for (int64_t i = 0; i < rows; i++) {
        finch_dtype_info[t].dequant(wf, (const uint8_t *)data + i * w.row_bytes, cols);
        for (int64_t k = 0; k < T; k++) {
            double bound = 1e-6;
            for (int64_t b = 0; b < cols / 32; b++) {
                double wmax = 0, wx = 0;
                for (int j = 0; j < 32; j++) {
                    wmax = fmax(wmax, fabs(wf[b * 32 + j]));
                    wx += fabs((double)wf[b * 32 + j] * xhat[k * cols + b * 32 + j]);
                }
                bound += 4e-6 * wx + wmax * s_abs[k * cols / 32 + b] / 1024.0;
            }
            double e = fabs((double)y[k * rows + i] - yr[k * rows + i]);
            if (e > bound)
                fail_msg("matmul_q8 %s %lldx%lld T=%lld: y[%lld,%lld] = %.9g, reference %.9g",
                         finch_dtype_info[t].name, (long long)rows, (long long)cols, (long long)T,
                         (long long)k, (long long)i, y[k * rows + i], yr[k * rows + i]);
        }
    }
    finch_workspace_free(&ws);
    free(wf);
    free(y);
    free(yr);
    free(x);
    free(xhat);
    free(s_abs);
    free(data);
}

static void test_matmul_q8(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 8);
    const finch_dtype types[] = {FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q4_1, FINCH_DTYPE_Q5_0,
                                 FINCH_DTYPE_Q5_1, FINCH_DTYPE_Q8_0};
    const int64_t shapes[][2] = {{1, 32}, {7, 64}, {65, 576}};
    const int64_t Ts[] = {1, 2, 17};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++)
                check_matmul_q8(types[i], shapes[s][0], shapes[s][1], Ts[k], &r);
}

/* matmul_q8 gives each token the same bits whether it comes alone or in a batch (the
 * batched path unpacks weights once, the single path reads them in place). */
static void test_matmul_q8_batch_invariant(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 9);
    const finch_dtype types[] = {FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q4_1, FINCH_DTYPE_Q8_0};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const int64_t R = 70, K = 96, T = 9;
        finch_weight w;
        void *data = make_weight(&r, types[i], R, K, &w);
        float *x = rand_vec(&r, T * K, 1.0f), yb[9 * 70], y1[70];
        finch_workspace ws;
        finch_err err;
        assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2,
                                              finch_workspace_act_need(T, K), &err),
                         FINCH_OK);
        be->matmul_q8(yb, x, &w, T, &ws);
        for (int64_t t = 0; t < T; t++) {
            be->matmul_q8(y1, x + t * K, &w, 1, &ws);
            assert_memory_equal(y1, yb + t * R, sizeof y1);
        }
        finch_workspace_free(&ws);
        free(x);
        free(data);
    }
}

static void test_matmul_kquants(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 2);
    const finch_dtype types[] = {FINCH_DTYPE_Q2_K, FINCH_DTYPE_Q3_K, FINCH_DTYPE_Q4_K,
                                 FINCH_DTYPE_Q5_K, FINCH_DTYPE_Q6_K};
    const int64_t shapes[][2] = {{3, 256}, {67, 512}, {17, 768}};
    const int64_t Ts[] = {1, 2, 3, 5};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++)
                check_matmul(types[i], shapes[s][0], shapes[s][1], Ts[k], &r);
}

/* The tiles of the many-token path hold exactly core/quant.c's dequantized values (the
 * vectorised row dequantizers do the same f32 operations; f16 and bf16 also with a row
 * that is not a whole number of vectors, K 515): an identity activation reads them out. */
static void check_tile_values(const finch_dtype *types, size_t n_types, int64_t K, finch_rng *r) {
    const int64_t R = 70;
    float *eye = calloc((size_t)(K * K), sizeof(float)),
          *y = malloc((size_t)(K * R) * sizeof(float));
    float *wf = malloc((size_t)K * sizeof(float));
    for (int64_t k = 0; k < K; k++) eye[k * K + k] = 1.0f;
    finch_workspace ws;
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2, 0, &err), FINCH_OK);
    for (size_t t = 0; t < n_types; t++) {
        finch_weight w;
        void *data = make_weight(r, types[t], R, K, &w);
        be->matmul(y, eye, &w, K, &ws);
        for (int64_t i = 0; i < R; i++) {
            finch_dtype_info[types[t]].dequant(wf, (const uint8_t *)data + i * w.row_bytes, K);
            for (int64_t k = 0; k < K; k++)
                if (y[k * R + i] != wf[k]) /* (a zero's sign does not survive the product) */
                    fail_msg("%s tile: row %lld col %lld = %.9g, dequantized %.9g",
                             finch_dtype_info[types[t]].name, (long long)i, (long long)k,
                             y[k * R + i], wf[k]);
        }
        free(data);
    }
    finch_workspace_free(&ws);
    free(eye);
    free(y);
    free(wf);
}

static void test_matmul_tile_values(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 6);
    const finch_dtype types[] = {FINCH_DTYPE_F16,  FINCH_DTYPE_BF16, FINCH_DTYPE_Q4_0,
                                 FINCH_DTYPE_Q4_1, FINCH_DTYPE_Q5_0, FINCH_DTYPE_Q5_1,
                                 FINCH_DTYPE_Q8_0, FINCH_DTYPE_Q2_K, FINCH_DTYPE_Q3_K,
                                 FINCH_DTYPE_Q4_K, FINCH_DTYPE_Q5_K, FINCH_DTYPE_Q6_K};
    check_tile_values(types, sizeof types / sizeof types[0], 512, &r);
    check_tile_values(types, 2, 515, &r);
}

/* The same bits whatever the thread count (reductions have a fixed order). */
static void test_matmul_thread_invariant(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 3);
    finch_weight w;
    void *data = make_weight(&r, FINCH_DTYPE_Q4_1, 200, 576, &w);
    float *x = rand_vec(&r, 9 * 576, 1.0f);
    float *y1 = malloc(9 * 200 * sizeof(float)), *y2 = malloc(9 * 200 * sizeof(float));
    finch_workspace ws;
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(576, 1), 2, 0, &err), FINCH_OK);
    for (int64_t T = 1; T <= 9; T += 8) {
        finch_threads_set(1);
        be->matmul(y1, x, &w, T, &ws);
        finch_threads_set(2);
        be->matmul(y2, x, &w, T, &ws);
        assert_memory_equal(y1, y2, (size_t)T * 200 * sizeof(float));
    }
    finch_workspace_free(&ws);
    free(y1);
    free(y2);
    free(x);
    free(data);
}

/* |a - b| <= rel * (|b| + floor): floor is the scale below which an output is the result
 * of cancellation (attention outputs are weighted sums of O(1) values: floor 1). */
static void assert_close(const float *a, const float *b, int64_t n, double rel, double floor,
                         const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)a[i] - b[i]) > rel * (fabs((double)b[i]) + floor))
            fail_msg("%s: element %lld = %.9g, reference %.9g", what, (long long)i, a[i], b[i]);
}

static void test_rmsnorm(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 4);
    const int64_t T = 5, C = 77;
    float *x = rand_vec(&r, T * C, 3.0f), *w = rand_vec(&r, C, 1.0f);
    float y[5 * 77], yr[5 * 77], rs[5], rsr[5];
    be->rmsnorm_forward(y, rs, x, w, T, C, 1e-5f);
    finch_ref_rmsnorm_forward(yr, rsr, x, w, T, C, 1e-5f);
    assert_close(y, yr, T * C, 1e-6, 1e-3, "rmsnorm y");
    assert_close(rs, rsr, T, 1e-6, 1e-3, "rmsnorm rstd");
    free(x);
    free(w);
}

static void test_rope(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 5);
    const int64_t T = 6;
    const int nh = 3, D = 16;
    float *x = rand_vec(&r, T * nh * D, 1.0f);
    float *xr = malloc(T * nh * D * sizeof(float));
    memcpy(xr, x, T * nh * D * sizeof(float));
    int32_t pos[6] = {0, 1, 2, 100, 4095, 8191};
    be->rope_forward(x, pos, T, nh, D, 100000.0f);
    finch_ref_rope_forward(xr, pos, T, nh, D, 100000.0f);
    assert_close(x, xr, T * nh * D, 1e-5, 1e-3, "rope");
    /* position 0 leaves the vector unchanged; rotation preserves each pair's norm */
    float *z = rand_vec(&r, nh * D, 1.0f), z0[48];
    memcpy(z0, z, sizeof z0);
    int32_t p0 = 0, p1 = 37;
    be->rope_forward(z, &p0, 1, nh, D, 10000.0f);
    assert_memory_equal(z, z0, sizeof z0);
    be->rope_forward(z, &p1, 1, nh, D, 10000.0f);
    for (int i = 0; i < nh * D; i += 2) {
        double n0 = hypot(z0[i], z0[i + 1]), n1 = hypot(z[i], z[i + 1]);
        assert_true(fabs(n0 - n1) < 1e-5 * (n0 + 1));
    }
    free(z);
    free(x);
    free(xr);
}

static void test_attention(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 6);
    const int H = 6, KVH = 2, D = 8;
    /* (T, pos0, sliding window: 0 none) */
    /* from 8 new tokens on the CPU backend runs its tiled kernels, the cache as a prefix */
    const int64_t cases[][3] = {{1, 0, 0},  {5, 0, 0},   {1, 9, 0},   {4, 3, 0},
                                {6, 7, 4},  {1, 9, 3},   {8, 0, 0},   {70, 0, 0},
                                {40, 9, 0}, {100, 37, 0}, {70, 50, 30}, {9, 70, 16}};
    finch_workspace ws;
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(1, 64), 2, 0, &err), FINCH_OK);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t T = cases[c][0], pos0 = cases[c][1], window = cases[c][2], n = pos0 + T;
        float *q = rand_vec(&r, T * H * D, 1.0f), *k = rand_vec(&r, n * KVH * D, 1.0f);
        float *v = rand_vec(&r, n * KVH * D, 1.0f);
        float *o = malloc(T * H * D * sizeof(float)), *orf = malloc(T * H * D * sizeof(float));
        be->attention_forward(o, q, k, v, T, pos0, H, KVH, D, window, &ws);
        finch_ref_attention_forward(orf, q, k, v, T, pos0, H, KVH, D, window);
        assert_close(o, orf, T * H * D, 1e-5, 1.0, "attention");
        free(q);
        free(k);
        free(v);
        free(o);
        free(orf);
    }
    finch_workspace_free(&ws);
}

/* GPT-2's LayerNorm and GELU against the reference (f32 against double: 1e-6 relative),
 * and LayerNorm's passes give the same bits on 1 and 2 threads (wide enough for several
 * column blocks and tokens per thread). */
static void test_layernorm_gelu(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 31);
    const int64_t T = 37, C = 200;
    float *x = rand_vec(&r, T * C, 2.0f), *w = rand_vec(&r, C, 1.0f), *b = rand_vec(&r, C, 1.0f);
    float *dy = rand_vec(&r, T * C, 1.0f);
    float *y = malloc(T * C * sizeof(float)), *yr = malloc(T * C * sizeof(float));
    float st[2 * 37], str[2 * 37];
    be->layernorm_forward(y, st, x, w, b, T, C, 1e-5f);
    finch_ref_layernorm_forward(yr, str, x, w, b, T, C, 1e-5f);
    /* y = (x - mu) r w + b adds terms of size ~1 to 4 whose f32 rounding stays in y when
     * they cancel: the floor is their scale, not y's */
    assert_close(y, yr, T * C, 1e-6, 4.0, "layernorm y");
    float *dx[2], *dw[2], *db[2];
    for (int k = 0; k < 2; k++) {
        finch_threads_set(k + 1);
        dx[k] = calloc((size_t)(T * C), sizeof(float));
        dw[k] = calloc((size_t)C, sizeof(float));
        db[k] = calloc((size_t)C, sizeof(float));
        be->layernorm_backward(dx[k], dw[k], db[k], dy, st, x, w, T, C);
    }
    assert_memory_equal(dx[0], dx[1], (size_t)(T * C) * sizeof(float));
    assert_memory_equal(dw[0], dw[1], (size_t)C * sizeof(float));
    assert_memory_equal(db[0], db[1], (size_t)C * sizeof(float));
    be->gelu_forward(y, x, T * C);
    finch_ref_gelu_forward(yr, x, T * C);
    assert_close(y, yr, T * C, 1e-6, 1e-3, "gelu");
    for (int k = 0; k < 2; k++) free(dx[k]), free(dw[k]), free(db[k]);
    free(x), free(w), free(b), free(dy), free(y), free(yr);
}

typedef void (*gated_forward)(float *h, const float *g, const float *u, int64_t n);
typedef void (*gated_backward)(float *dg, float *du, const float *d, const float *g, const float *u,
                               int64_t n);

/* A gated activation (f, b) against the reference (rf, rb) over n elements, its outputs
 * left in h, dg, du; then each element's bits the same alone as in the vector. dgate's
 * floor is 1: its formula sums terms of size ~1 that cancel for negative gates, and their
 * f32 roundings stay where they cancel. */
static void check_gated(const char *name, gated_forward f, gated_backward b, gated_forward rf,
                        gated_backward rb, const float *g, const float *u, const float *d, int n,
                        float *h, float *dg, float *du) {
    float *hr = malloc((size_t)n * sizeof *hr), *dgr = malloc((size_t)n * sizeof *dgr),
          *dur = malloc((size_t)n * sizeof *dur);
    char what[64];
    f(h, g, u, n);
    rf(hr, g, u, n);
    assert_close(h, hr, n, 1e-6, 1e-3, name);
    b(dg, du, d, g, u, n);
    rb(dgr, dur, d, g, u, n);
    snprintf(what, sizeof what, "%s_backward dgate", name);
    assert_close(dg, dgr, n, 1e-6, 1.0, what);
    snprintf(what, sizeof what, "%s_backward dup", name);
    assert_close(du, dur, n, 1e-6, 1e-3, what);
    for (int i = 0; i < n; i++) { /* one at a time: every element through the tail */
        float h1, dg1, du1;
        f(&h1, g + i, u + i, 1);
        b(&dg1, &du1, d + i, g + i, u + i, 1);
        assert_true(memcmp(&h1, h + i, 4) == 0 && memcmp(&dg1, dg + i, 4) == 0 &&
                    memcmp(&du1, du + i, 4) == 0);
    }
    free(hr), free(dgr), free(dur);
}

/* GeGLU and GPT-2's GELU, forward and backward, against the reference, gates out to +-60
 * included (e^(-2u) past float's range one way, to 0 the other); each element's bits the
 * same in a vector as alone. */
static void test_geglu(void **state) {
    (void)state;
    enum { N = 1000 };
    finch_rng r;
    finch_rng_seed(&r, 8);
    float *g = rand_vec(&r, N, 4.0f), *u = rand_vec(&r, N, 1.0f), *d = rand_vec(&r, N, 1.0f);
    g[3] = 60.0f, g[4] = -60.0f, g[5] = 10.0f, g[6] = -10.0f;
    float h[N], hr[N], dg[N], du[N], dgr[N], y[N], dx[N];
    check_gated("geglu", be->geglu_forward, be->geglu_backward, finch_ref_geglu_forward,
                finch_ref_geglu_backward, g, u, d, N, h, dg, du);
    be->gelu_forward(y, g, N);
    finch_ref_gelu_forward(hr, g, N);
    assert_close(y, hr, N, 1e-6, 1e-3, "gelu");
    be->gelu_backward(dx, d, g, N);
    finch_ref_gelu_backward(dgr, d, g, N);
    assert_close(dx, dgr, N, 1e-6, 1.0, "gelu_backward"); /* the same cancelling terms */
    for (int i = 0; i < N; i++) { /* one at a time: every element through the tail */
        float a[2];
        be->gelu_forward(a, g + i, 1);
        be->gelu_backward(a + 1, d + i, g + i, 1);
        assert_true(memcmp(a, y + i, 4) == 0 && memcmp(a + 1, dx + i, 4) == 0);
    }
    free(g);
    free(u);
    free(d);
}

/* SwiGLU forward and backward against the reference, gates out to +-100 included (e^-g
 * past float's range one way, to 0 the other); each element's bits the same in a vector
 * as alone; a NaN gate stays NaN. */
static void test_swiglu(void **state) {
    (void)state;
    enum { N = 1000 };
    finch_rng r;
    finch_rng_seed(&r, 7);
    float *g = rand_vec(&r, N, 4.0f), *u = rand_vec(&r, N, 1.0f), *d = rand_vec(&r, N, 1.0f);
    g[3] = 100.0f, g[4] = -100.0f, g[5] = 88.5f, g[6] = -88.5f, g[7] = 87.4f, g[8] = -87.4f;
    float h[N], dg[N], du[N];
    check_gated("swiglu", be->swiglu_forward, be->swiglu_backward, finch_ref_swiglu_forward,
                finch_ref_swiglu_backward, g, u, d, N, h, dg, du);
    g[9] = NAN;
    be->swiglu_forward(h, g, u, 17);
    assert_true(isnan(h[9]) && !isnan(h[8]) && !isnan(h[10]));
    free(g);
    free(u);
    free(d);
}

/* llama.cpp's SwiGLU (swiglu_llamacpp): gate, up and llama.cpp's output for 16 elements of
 * SmolLM2's feed-forward layers, read from llama-cpp-python (AVX-512 build) by its eval
 * callback (tests/reference/dump_llamacpp_tensors.py); at each of them libm's expf gives
 * other bits. A row of 16 takes all from ggml's exp approximation; in a row of 20 the
 * last 4 use libm's expf. Every instruction set gives the same bits. */
static void test_swiglu_llamacpp(void **state) {
    (void)state;
    static const float ref[16][3] = {
        {-0x1.04ec44p-1, 0x1.145f3p-2, -0x1.a6d978p-5},
        {0x1.72cc5p-3, 0x1.336498p-2, 0x1.e56ef4p-6},
        {0x1.93048p-3, 0x1.5252eep-1, 0x1.246da8p-4},
        {0x1.aa60eep-1, 0x1.4e31d2p-1, 0x1.83ed74p-2},
        {-0x1.18507p-2, -0x1.1a81ap-2, 0x1.0b42bep-5},
        {-0x1.331258p-2, 0x1.6302p-6, -0x1.6a752p-9},
        {-0x1.91f252p-2, 0x1.8e7d1p-3, -0x1.f86ceep-6},
        {-0x1.8259d8p-1, -0x1.0820bcp-3, 0x1.fdf224p-6},
        {-0x1.61dadp-4, -0x1.688da2p-2, 0x1.dcdbeap-7},
        {-0x1.00be6cp-3, 0x1.baf91p-3, -0x1.a07314p-7},
        {-0x1.60d824p-3, -0x1.e02ecp-4, 0x1.2e7b36p-7},
        {-0x1.b88ae8p-2, 0x1.0b3eap-3, -0x1.6a76d6p-6},
        {0x1.82be48p+1, -0x1.2f9facp-1, -0x1.b56016p+0},
        {-0x1.9770aep+1, 0x1.934bc4p-2, -0x1.98cd3cp-5},
        {-0x1.78da3p+1, -0x1.468e14p+0, 0x1.80aca4p-3},
        {-0x1.4d0644p+1, 0x1.acd44p-3, -0x1.340cbep-5},
    };
    float g[2 * 20], u[2 * 20], h[2 * 20];
    for (int i = 0; i < 16; i++) {
        g[i] = ref[i][0];
        u[i] = ref[i][1];
    }
    be->swiglu_llamacpp(h, g, u, 1, 16);
    for (int i = 0; i < 16; i++)
        if (memcmp(&h[i], &ref[i][2], sizeof(float)))
            fail_msg("swiglu_llamacpp(%a, %a) = %a, llama.cpp %a", ref[i][0], ref[i][1], h[i],
                     ref[i][2]);
    /* two rows of 20: per row, 16 as above and 4 with libm's expf */
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 20; i++) {
            g[t * 20 + i] = ref[(i + t) % 16][0];
            u[t * 20 + i] = ref[(i + t) % 16][1];
        }
    be->swiglu_llamacpp(h, g, u, 2, 20);
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 20; i++) {
            float gi = g[t * 20 + i], want = gi / (1.0f + expf(-gi)) * u[t * 20 + i];
            if (i < 16) want = ref[(i + t) % 16][2];
            if (memcmp(&h[t * 20 + i], &want, sizeof(float)))
                fail_msg("swiglu_llamacpp row %d element %d = %a, want %a", t, i, h[t * 20 + i],
                         want);
        }
}

/* matmul_q8 on K-quant weights (Q4_K, Q6_K) against ggml's formula written plainly: each
 * row of x quantized to Q8_K (per 256 values: max = the first value of largest magnitude,
 * q = min(127, round-half-even(-127 x / max)), d = 1 / (-127 / max)), then the dot product of
 * the dequantized weights with d q in double. The kernel sums exact integer products and
 * rounds only where it scales and accumulates blocks: within 1e-5 of the sum of |w x|. The
 * Q6_K products of a token are the same alone or in a batch. */
static void quantize_k_spec(float *xhat, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / 256; b++, x += 256, xhat += 256) {
        float max = 0, amax = 0;
        for (int j = 0; j < 256; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
        float iscale = amax ? -127.0f / max : 0.0f, d = amax ? 1 / iscale : 0.0f;
        for (int j = 0; j < 256; j++) {
            float q = nearbyintf(iscale * x[j]);
            xhat[j] = d * (q < 127 ? q : 127);
        }
    }
}

static void test_matmul_q8_kquants(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 12);
    const finch_dtype types[] = {FINCH_DTYPE_Q4_K, FINCH_DTYPE_Q6_K};
    const int64_t shapes[][3] = {{3, 256, 1}, {9, 512, 5}, {16, 768, 8}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            const int64_t R = shapes[k][0], K = shapes[k][1], T = shapes[k][2];
            finch_weight w;
            void *data = make_weight(&r, types[i], R, K, &w);
            float *x = rand_vec(&r, T * K, 2.0f), *xhat = malloc((size_t)(T * K) * sizeof *xhat);
            float *y = malloc((size_t)(T * R) * sizeof *y), *wf = malloc((size_t)K * sizeof *wf);
            float y1[16];
            finch_workspace ws;
            finch_err err;
            assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2,
                                                  finch_workspace_act_need(T, K), &err),
                             FINCH_OK);
            for (int64_t t = 0; t < T; t++) quantize_k_spec(xhat + t * K, x + t * K, K);
            be->matmul_q8(y, x, &w, T, &ws);
            for (int64_t o = 0; o < R; o++) {
                finch_dtype_info[types[i]].dequant(wf, (const uint8_t *)data + o * w.row_bytes, K);
                for (int64_t t = 0; t < T; t++) {
                    double ref = 0, mag = 0;
                    for (int64_t j = 0; j < K; j++) {
                        ref += (double)wf[j] * xhat[t * K + j];
                        mag += fabs((double)wf[j] * xhat[t * K + j]);
                    }
                    if (fabs(y[t * R + o] - ref) > 1e-5 * mag + 1e-6)
                        fail_msg("matmul_q8 %s %lldx%lld T=%lld: y[%lld,%lld] = %.9g, ggml's "
                                 "formula %.9g",
                                 finch_dtype_info[types[i]].name, (long long)R, (long long)K,
                                 (long long)T, (long long)t, (long long)o, y[t * R + o], ref);
                }
            }
            if (types[i] == FINCH_DTYPE_Q6_K)
                for (int64_t t = 0; t < T; t++) {
                    be->matmul_q8(y1, x + t * K, &w, 1, &ws);
                    assert_memory_equal(y1, y + t * R, (size_t)R * sizeof *y1);
                }
            finch_workspace_free(&ws);
            free(x);
            free(xhat);
            free(y);
            free(wf);
            free(data);
        }
}

/* ggml's GELU as llama.cpp's CPU build runs it, from tests/fixtures/model/ggml_gelu.json
 * (tests/reference/make_gelu_llamacpp_fixture.py ran ggml's own gelu and geglu ops): on all
 * 65,536 f16 inputs gelu_llamacpp's outputs hash to ggml's, on every instruction set; on the
 * extra inputs (beyond the table's +-10, between f16 values) gelu_llamacpp and
 * geglu_llamacpp give ggml's bits. */
static char *fixture_text(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/model/%s", FINCH_FIXTURES, name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("%s: cannot open", path);
    static char text[1 << 14];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    return text;
}

/* The hex floats of the JSON array after "key": up to max of them. */
static int fixture_floats(const char *text, const char *key, float *v, int max) {
    const char *p = strstr(text, key);
    assert_non_null(p);
    p = strchr(p, '[');
    int n = 0;
    while (p && *p != ']' && n < max) {
        p = strchr(p, '"');
        if (!p) break;
        v[n++] = strtof(p + 1, NULL);
        p = strchr(p + 1, '"') + 1;
        while (*p == ' ' || *p == ',' || *p == '\n') p++;
    }
    return n;
}

static void test_gelu_llamacpp(void **state) {
    (void)state;
    const char *text = fixture_text("ggml_gelu.json");
    const char *h = strstr(text, "\"gelu_f16_hash\": \"");
    assert_non_null(h);
    unsigned long long want = strtoull(h + strlen("\"gelu_f16_hash\": \""), NULL, 16);
    float *x = malloc(65536 * sizeof *x), *y = malloc(65536 * sizeof *y);
    for (int i = 0; i < 65536; i++) x[i] = finch_f16_to_f32((uint16_t)i);
    for (int isa = -1; isa < finch_cpu_isa_count(); isa++) {
        if (isa >= 0 && !finch_cpu_isa_supported(isa)) continue;
        const finch_backend *b = isa < 0 ? be : finch_cpu_isa_backend(isa);
        b->gelu_llamacpp(y, x, 65536);
        for (int i = 0; i < 65536; i++)
            if (y[i] != y[i]) y[i] = NAN; /* NaN payloads are not compared */
        uint64_t got = 0xcbf29ce484222325ull;
        const unsigned char *bytes = (const unsigned char *)y;
        for (size_t i = 0; i < 65536 * sizeof(float); i++)
            got = (got ^ bytes[i]) * 0x100000001b3ull;
        if (got != want)
            fail_msg("gelu_llamacpp (%s) over every f16 input: hash %016llx, ggml's %016llx",
                     b->name, (unsigned long long)got, want);
    }
    float ex[32], eg[32], eh[32], up[32], g[32], gh[32];
    int n = fixture_floats(text, "\"extra_x\"", ex, 32);
    assert_int_equal(fixture_floats(text, "\"extra_gelu\"", eg, 32), n);
    assert_int_equal(fixture_floats(text, "\"extra_geglu\"", eh, 32), n);
    for (int i = 0; i < n; i++) up[i] = 1.5f;
    be->gelu_llamacpp(g, ex, n);
    be->geglu_llamacpp(gh, ex, up, n);
    for (int i = 0; i < n; i++)
        if (memcmp(&g[i], &eg[i], 4) || memcmp(&gh[i], &eh[i], 4))
            fail_msg("x = %a: gelu %a, geglu %a; ggml %a, %a", ex[i], g[i], gh[i], eg[i], eh[i]);
    free(x);
    free(y);
}

/* llama.cpp's RMSNorm (rmsnorm_llamacpp) is RMSNorm to f32 rounding, y may alias x, and the
 * llamacpp ops (with matmul_q8) give the bits of the generic set on every instruction set. */
static void test_llamacpp_ops_bits(void **state) {
    (void)state;
    const finch_backend *gen = finch_cpu_isa_backend(0);
    finch_rng r;
    finch_rng_seed(&r, 11);
    const int64_t T = 6, C = 576, F = 1536 + 7;
    float *x = rand_vec(&r, T * C, 3.0f), *w = rand_vec(&r, C, 1.0f);
    float *y = malloc((size_t)(T * C) * sizeof *y), *yg = malloc((size_t)(T * C) * sizeof *yg);
    float *yr = malloc((size_t)(T * C) * sizeof *yr), rs[6];
    be->rmsnorm_llamacpp(y, x, w, T, C, 1e-5f);
    gen->rmsnorm_llamacpp(yg, x, w, T, C, 1e-5f);
    finch_ref_rmsnorm_forward(yr, rs, x, w, T, C, 1e-5f);
    assert_close(y, yr, T * C, 1e-6, 1e-3, "rmsnorm_llamacpp");
    assert_memory_equal(y, yg, (size_t)(T * C) * sizeof *y);
    memcpy(yg, x, (size_t)(T * C) * sizeof *x);
    be->rmsnorm_llamacpp(yg, yg, w, T, C, 1e-5f);
    assert_memory_equal(y, yg, (size_t)(T * C) * sizeof *y);

    float *gate = rand_vec(&r, 2 * F, 6.0f), *up = rand_vec(&r, 2 * F, 1.0f);
    float *h = malloc((size_t)(2 * F) * sizeof *h), *hg = malloc((size_t)(2 * F) * sizeof *hg);
    float *hr = malloc((size_t)(2 * F) * sizeof *hr);
    gate[0] = 200.0f;  /* e^-200: 0 (|n| > 192), h = g u */
    gate[1] = -100.0f; /* e^100 overflows to infinity, h = -0 */
    be->swiglu_llamacpp(h, gate, up, 2, F);
    gen->swiglu_llamacpp(hg, gate, up, 2, F);
    finch_ref_swiglu_forward(hr, gate, up, 2 * F);
    assert_close(h, hr, 2 * F, 1e-6, 1e-3, "swiglu_llamacpp");
    assert_memory_equal(h, hg, (size_t)(2 * F) * sizeof *h);

    const finch_dtype types[] = {FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q4_1, FINCH_DTYPE_Q5_0,
                                 FINCH_DTYPE_Q8_0, FINCH_DTYPE_Q4_K, FINCH_DTYPE_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (int64_t Tq = 1; Tq <= 5; Tq += 4) { /* one row at a time, and the batched path */
            const int64_t R = 70, K = 512;
            finch_weight wt;
            void *data = make_weight(&r, types[i], R, K, &wt);
            float yq[5 * 70], yqg[5 * 70];
            finch_workspace ws;
            finch_err err;
            assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2,
                                                  finch_workspace_act_need(Tq, K), &err),
                             FINCH_OK);
            be->matmul_q8(yq, x, &wt, Tq, &ws);
            gen->matmul_q8(yqg, x, &wt, Tq, &ws);
            if (memcmp(yq, yqg, (size_t)(Tq * R) * sizeof *yq))
                fail_msg("matmul_q8 %s T=%lld: not the generic set's bits",
                         finch_dtype_info[types[i]].name, (long long)Tq);
            finch_workspace_free(&ws);
            free(data);
        }
    free(x);
    free(w);
    free(y);
    free(yg);
    free(yr);
    free(gate);
    free(up);
    free(h);
    free(hg);
    free(hr);
}

/* The site ops: column scaling and column dot products against the double reference and
 * bit-identical for 1 and 2 threads; dropout's AVX-512 path (where built) gives the bits
 * of the scalar definition, forward and backward, and drops at the rate asked. */
static void test_site_ops(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 11);
    const int64_t T = 37, n = 203;
    float *x = rand_vec(&r, T * n, 1.0f), *b = rand_vec(&r, T * n, 1.0f),
          *s = rand_vec(&r, n, 2.0f);
    float *y = malloc(sizeof(float) * (size_t)(T * n)),
          *yr = malloc(sizeof(float) * (size_t)(T * n));
    be->scale_cols(y, x, s, T, n);
    finch_ref_scale_cols(yr, x, s, T, n);
    assert_memory_equal(y, yr, sizeof(float) * (size_t)(T * n)); /* one product each: exact */
    float d1[203] = {0}, d2[203] = {0}, dr[203] = {0}, u[203] = {0};
    finch_threads_set(1);
    be->col_dot(d1, x, b, T, n);
    finch_threads_set(2);
    be->col_dot(d2, x, b, T, n);
    finch_ref_col_dot(dr, x, b, T, n);
    assert_memory_equal(d1, d2, sizeof d1);
    /* f32 sums of T products of O(1) terms: floor T */
    assert_close(d2, dr, n, 4e-6, (double)T, "col_dot");
    be->col_dot(u, x, NULL, T, n);
    memset(dr, 0, sizeof dr);
    finch_ref_col_dot(dr, x, NULL, T, n);
    assert_close(u, dr, n, 4e-6, (double)T, "col_dot (sums)");

    const int64_t N = 100003; /* not a multiple of 16: the tail lanes */
    float *in = rand_vec(&r, N, 1.0f), *o1 = malloc(sizeof(float) * N),
          *o2 = malloc(sizeof(float) * N);
    float *g1 = calloc(N, sizeof(float)), *g2 = calloc(N, sizeof(float));
    for (int k = 0; k < 3; k++) {
        float p = (float[]){0.05f, 0.5f, 0.9f}[k];
        finch_dropout d = finch_dropout_make(1234 + (uint64_t)k, 7, p);
        be->dropout_forward(o1, in, N, &d);
        finch_ref_dropout_forward(o2, in, N, &d);
        assert_memory_equal(o1, o2, sizeof(float) * N);
        be->dropout_backward(g1, in, N, &d);
        finch_ref_dropout_backward(g2, in, N, &d);
        assert_memory_equal(g1, g2, sizeof(float) * N);
        int64_t dropped = 0;
        for (int64_t i = 0; i < N; i++) dropped += o1[i] == 0.0f;
        double rate = (double)dropped / (double)N, sd = sqrt(p * (1 - p) / (double)N);
        printf("  dropout p %.2f: dropped %.4f (5 sd = %.4f)\n", (double)p, rate, 5 * sd);
        assert_true(fabs(rate - p) < 5 * sd);
        /* kept elements are scaled by 1 / (1 - p) */
        for (int64_t i = 0; i < N; i++)
            if (o1[i] != 0.0f) assert_true(o1[i] == in[i] * (1.0f / (1.0f - p)));
    }
    /* DoRA's combine, the low-rank term of rank 16 formed inside, against the double
     * reference; the same bits for 1 and 2 threads (rows whole on one thread) */
    const int64_t rk = 16;
    float *z1 = rand_vec(&r, T * n, 1.0f), *zr = malloc(sizeof(float) * (size_t)(T * n));
    float *y1 = rand_vec(&r, T * n, 1.0f), *uu = rand_vec(&r, T * rk, 1.0f),
          *bt = rand_vec(&r, rk * n, 0.5f);
    float *z2 = malloc(sizeof(float) * (size_t)(T * n)), *y2 = malloc(sizeof(float) * (size_t)(T * n));
    memcpy(zr, z1, sizeof(float) * (size_t)(T * n));
    memcpy(yr, y1, sizeof(float) * (size_t)(T * n));
    memcpy(z2, z1, sizeof(float) * (size_t)(T * n));
    memcpy(y2, y1, sizeof(float) * (size_t)(T * n));
    finch_threads_set(1);
    be->dora_combine(y1, z1, uu, bt, rk, 1.25f, s, T, n);
    finch_threads_set(2);
    be->dora_combine(y2, z2, uu, bt, rk, 1.25f, s, T, n);
    finch_ref_dora_combine(yr, zr, uu, bt, rk, 1.25f, s, T, n);
    assert_memory_equal(z1, z2, sizeof(float) * (size_t)(T * n));
    assert_memory_equal(y1, y2, sizeof(float) * (size_t)(T * n));
    /* f32 sums of 16 products of O(1) terms, then three more terms: floor 16 */
    assert_close(z1, zr, T * n, 4e-6, 16.0, "dora_combine zl");
    assert_close(y1, yr, T * n, 4e-6, 32.0, "dora_combine y");
    free(z2), free(y2), free(uu), free(bt);
    /* DoRA's backward: the scalings exact, the column sums as col_dot's, for 1 and 2 threads,
     * with h beside zl and in its place */
    for (int alias = 0; alias < 2; alias++) {
        float *s2 = rand_vec(&r, n, 2.0f), *zc = malloc(sizeof(float) * (size_t)(T * n));
        float *gs1 = malloc(sizeof(float) * (size_t)(T * n)), *gsr = malloc(sizeof(float) * (size_t)(T * n));
        float *h1 = malloc(sizeof(float) * (size_t)(T * n)), *hr = malloc(sizeof(float) * (size_t)(T * n));
        float m1[203] = {0}, m2[203] = {0}, mr[203] = {0};
        finch_ref_dora_backward(mr, gsr, hr, x, b, s, s2, T, n);
        for (int th = 1; th <= 2; th++) {
            finch_threads_set(th);
            memcpy(zc, b, sizeof(float) * (size_t)(T * n));
            be->dora_backward(th == 1 ? m1 : m2, gs1, alias ? zc : h1, x, zc, s, s2, T, n);
            assert_memory_equal(gs1, gsr, sizeof(float) * (size_t)(T * n));
            assert_memory_equal(alias ? zc : h1, hr, sizeof(float) * (size_t)(T * n));
        }
        assert_memory_equal(m1, m2, sizeof m1);
        assert_close(m2, mr, n, 4e-6, (double)T, "dora_backward");
        memset(m1, 0, sizeof m1);
        be->dora_backward(m1, gs1, NULL, x, b, s, s2, T, n);
        assert_memory_equal(m1, m2, sizeof m1);
        assert_memory_equal(gs1, gsr, sizeof(float) * (size_t)(T * n));
        free(s2), free(zc), free(gs1), free(gsr), free(h1), free(hr);
    }
    free(z1), free(zr), free(y1);
    free(x), free(b), free(s), free(y), free(yr), free(in), free(o1), free(o2), free(g1), free(g2);
}

/* LoRA's input side in backward against the double reference, with and without dropout and
 * dx, for ranks kept in registers (8, 16) and not (5, 33), row counts across the kernel's row
 * blocks and column counts with a tail past the last band of 16; the same bits for 1 and 2
 * threads; and, for dropout, the elements it drops unchanged in dx. */
static void test_lora_down_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 23);
    const int64_t shapes[][3] = {{37, 203, 16}, {16, 64, 8}, {5, 35, 5}, {70, 48, 33}, {1, 16, 16}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++)
        for (int drop = 0; drop < 2; drop++)
            for (int with_dx = 0; with_dx < 2; with_dx++) {
                const int64_t T = shapes[k][0], in = shapes[k][1], rk = shapes[k][2];
                const size_t nx = (size_t)(T * in), na = (size_t)(rk * in);
                float *x = rand_vec(&r, T * in, 1.0f), *A = rand_vec(&r, rk * in, 0.5f),
                      *du = rand_vec(&r, T * rk, 1.0f), *dA0 = rand_vec(&r, rk * in, 1.0f),
                      *dx0 = rand_vec(&r, T * in, 1.0f);
                float *dA[3], *dx[3];
                for (int v = 0; v < 3; v++) {
                    dA[v] = malloc(na * sizeof(float)), dx[v] = malloc(nx * sizeof(float));
                    memcpy(dA[v], dA0, na * sizeof(float));
                    memcpy(dx[v], dx0, nx * sizeof(float));
                }
                finch_dropout d = finch_dropout_make(5 + k, 3, 0.3f);
                const finch_dropout *dp = drop ? &d : NULL;
                for (int th = 1; th <= 2; th++) {
                    finch_threads_set(th);
                    be->lora_down_backward(dA[th - 1], with_dx ? dx[th - 1] : NULL, du, x, A, T,
                                           in, rk, dp);
                }
                finch_ref_lora_down_backward(dA[2], with_dx ? dx[2] : NULL, du, x, A, T, in, rk,
                                             dp);
                assert_memory_equal(dA[0], dA[1], na * sizeof(float));
                assert_memory_equal(dx[0], dx[1], nx * sizeof(float));
                /* f32 sums of T (dA) and r (dx) products of O(1) terms: floors T and r */
                assert_close(dA[0], dA[2], rk * in, 4e-6, (double)T, "lora_down_backward dA");
                assert_close(dx[0], dx[2], T * in, 4e-6, (double)rk, "lora_down_backward dx");
                int64_t dropped = 0;
                for (size_t i = 0; drop && i < nx; i++)
                    if (finch_mix64(d.base + i) < d.threshold) {
                        dropped++;
                        assert_memory_equal(&dx[0][i], &dx0[i], sizeof(float));
                    }
                if (drop && nx > 100) assert_true(dropped > 0);
                for (int v = 0; v < 3; v++) free(dA[v]), free(dx[v]);
                free(x), free(A), free(du), free(dA0), free(dx0);
            }
    finch_threads_set(2);
}

/* DoRA's dropout corrections: the dropped elements' bits, the product over them alone and
 * the input gradient at them, against the reference, for storage types with blocks of 32,
 * 256 and 1 element, row counts across tiles and column counts across words and column
 * blocks; the same bits with one thread and two. */
static void check_masked(finch_dtype t, int64_t R, int64_t K, int64_t T, float p, finch_rng *r) {
    finch_weight w;
    void *data = make_weight(r, t, R, K, &w);
    const int64_t nw = finch_mask_words(K);
    float *x = rand_vec(r, T * K, 1.0f), *dy = rand_vec(r, T * R, 1.0f),
          *dx0 = rand_vec(r, T * K, 1.0f);
    float *ones = malloc(sizeof(float) * (size_t)(T * K)), *kept = malloc(sizeof(float) * (size_t)(T * K));
    for (int64_t i = 0; i < T * K; i++) ones[i] = 1.0f;
    uint64_t *bits = malloc(sizeof(uint64_t) * (size_t)(T * nw)), *bitsr = malloc(sizeof(uint64_t) * (size_t)(T * nw));
    float *y1 = malloc(sizeof(float) * (size_t)(T * R)), *y2 = malloc(sizeof(float) * (size_t)(T * R)),
          *yr = malloc(sizeof(float) * (size_t)(T * R));
    float *d1 = malloc(sizeof(float) * (size_t)(T * K)), *d2 = malloc(sizeof(float) * (size_t)(T * K)),
          *dr = malloc(sizeof(float) * (size_t)(T * K));
    float *wf = malloc(sizeof(float) * (size_t)(R * K));
    for (int64_t i = 0; i < R; i++)
        finch_dtype_info[t].dequant(wf + i * K, (const uint8_t *)data + i * w.row_bytes, K);
    finch_workspace ws, ws1; /* the ops run on the workspace's thread count */
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2, 0, &err), FINCH_OK);
    assert_int_equal(finch_workspace_init(&ws1, finch_workspace_need(K, 1), 1, 0, &err), FINCH_OK);
    finch_dropout d = finch_dropout_make(99, (uint64_t)(R + K), p);

    be->dropout_bits(bits, T, K, &d);
    finch_ref_dropout_bits(bitsr, T, K, &d);
    assert_memory_equal(bits, bitsr, sizeof(uint64_t) * (size_t)(T * nw));
    be->dropout_forward(kept, ones, T * K, &d); /* the bits are what dropout zeroes */
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t k = 0; k < K; k++)
            assert_int_equal((int)(bits[tt * nw + k / 64] >> (k % 64) & 1), kept[tt * K + k] == 0.0f);
    for (int64_t i = 0; i < T * nw; i++) /* and nothing past a row's end */
        if (K % 64 && i % nw == nw - 1) assert_int_equal(bits[i] >> (K % 64), 0);

    char what[96];
    snprintf(what, sizeof what, "%s %lldx%lld T=%lld p=%.2f", finch_dtype_info[t].name,
             (long long)R, (long long)K, (long long)T, (double)p);
    const float alpha = -1.25f; /* y and dx start random: both ops add */
    float *y0 = rand_vec(r, T * R, 1.0f);
    memcpy(y1, y0, sizeof(float) * (size_t)(T * R));
    memcpy(y2, y0, sizeof(float) * (size_t)(T * R));
    memcpy(yr, y0, sizeof(float) * (size_t)(T * R));
    finch_threads_set(1);
    be->matmul_masked(y1, x, bits, alpha, &w, T, &ws1);
    finch_threads_set(2);
    be->matmul_masked(y2, x, bits, alpha, &w, T, &ws);
    assert_memory_equal(y1, y2, sizeof(float) * (size_t)(T * R));
    finch_ref_matmul_masked(yr, x, bits, alpha, &w, T);
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t i = 0; i < R; i++) {
            double bound = 0;
            for (int64_t k = 0; k < K; k++)
                if (bits[tt * nw + k / 64] >> (k % 64) & 1) bound += fabs((double)wf[i * K + k] * x[tt * K + k]);
            bound = fabs((double)y0[tt * R + i]) + fabs((double)alpha) * bound;
            if (fabs((double)y2[tt * R + i] - yr[tt * R + i]) > 4e-6 * bound + 1e-6)
                fail_msg("matmul_masked %s: y[%lld,%lld] = %.9g, reference %.9g", what,
                         (long long)tt, (long long)i, y2[tt * R + i], yr[tt * R + i]);
        }
    /* memory for the element lists refused (their first or second allocation): the bits are
     * read per tile instead, the same sums */
    for (int n = 1; n <= 2; n++) {
        memcpy(y1, y0, sizeof(float) * (size_t)(T * R));
        finch_fault_alloc_set(n);
        be->matmul_masked(y1, x, bits, alpha, &w, T, &ws);
        finch_fault_alloc_set(0);
        assert_memory_equal(y1, y2, sizeof(float) * (size_t)(T * R));
    }
    /* matmul_split: y as matmul gives it and ym as matmul_masked adds to that y, bit for bit,
     * on 1 and 2 threads; p = a W^T for 16 rows a against the reference, with and without
     * the masked product */
    enum { NP = 16 };
    float *ys = malloc(sizeof(float) * (size_t)(T * R)), *yms = malloc(sizeof(float) * (size_t)(T * R)),
          *yd = malloc(sizeof(float) * (size_t)(T * R));
    float *pa = rand_vec(r, NP * K, 1.0f), *pp = malloc(sizeof(float) * (size_t)(NP * R)),
          *pr = malloc(sizeof(float) * (size_t)(NP * R));
    finch_ref_matmul(pr, pa, &w, NP);
    for (int th = 1; th <= 2; th++) {
        finch_workspace *wsx = th == 1 ? &ws1 : &ws;
        finch_threads_set(th);
        be->matmul(yd, x, &w, T, wsx);
        for (int with_bits = 0; with_bits < 2; with_bits++) {
            const finch_split sp = {.ym = yms, .bits = with_bits ? bits : NULL, .alpha = alpha,
                                    .p = pp, .a = pa, .np = NP};
            memset(pp, 0, sizeof(float) * (size_t)(NP * R));
            be->matmul_split(ys, x, &sp, &w, T, wsx);
            assert_memory_equal(ys, yd, sizeof(float) * (size_t)(T * R));
            for (int64_t i = 0; i < NP * R; i++) {
                double bound = 0;
                for (int64_t k = 0; k < K; k++) bound += fabs((double)pa[(i / R) * K + k] * wf[(i % R) * K + k]);
                if (fabs((double)pp[i] - pr[i]) > 4e-6 * bound + 1e-6)
                    fail_msg("matmul_split %s: p[%lld] = %.9g, reference %.9g", what, (long long)i, pp[i], pr[i]);
            }
        }
        be->matmul_masked(yd, x, bits, alpha, &w, T, wsx);
        assert_memory_equal(yms, yd, sizeof(float) * (size_t)(T * R));
    }
    free(ys), free(yms), free(yd), free(pa), free(pp), free(pr);

    memcpy(d1, dx0, sizeof(float) * (size_t)(T * K));
    memcpy(d2, dx0, sizeof(float) * (size_t)(T * K));
    memcpy(dr, dx0, sizeof(float) * (size_t)(T * K));
    finch_threads_set(1);
    be->matmul_backward_masked(d1, dy, bits, alpha, &w, T, &ws1);
    finch_threads_set(2);
    be->matmul_backward_masked(d2, dy, bits, alpha, &w, T, &ws);
    assert_memory_equal(d1, d2, sizeof(float) * (size_t)(T * K));
    for (int n = 1; n <= 3; n++) { /* lists or runs refused: the same sums from the bits */
        memcpy(d1, dx0, sizeof(float) * (size_t)(T * K));
        finch_fault_alloc_set(n);
        be->matmul_backward_masked(d1, dy, bits, alpha, &w, T, &ws);
        finch_fault_alloc_set(0);
        assert_memory_equal(d1, d2, sizeof(float) * (size_t)(T * K));
    }
    finch_ref_matmul_backward_masked(dr, dy, bits, alpha, &w, T);
    for (int64_t tt = 0; tt < T; tt++)
        for (int64_t k = 0; k < K; k++) {
            const int64_t i = tt * K + k;
            if (!(bits[tt * nw + k / 64] >> (k % 64) & 1)) { /* untouched */
                assert_true(d2[i] == dx0[i]);
                continue;
            }
            double bound = fabs((double)dx0[i]);
            for (int64_t j = 0; j < R; j++) bound += fabs((double)alpha * dy[tt * R + j] * wf[j * K + k]);
            if (fabs((double)d2[i] - dr[i]) > 4e-6 * bound + 1e-6)
                fail_msg("matmul_backward_masked %s: dx[%lld,%lld] = %.9g, reference %.9g", what,
                         (long long)tt, (long long)k, d2[i], dr[i]);
        }
    finch_workspace_free(&ws);
    finch_workspace_free(&ws1);
    free(data), free(x), free(dy), free(dx0), free(ones), free(kept), free(bits), free(bitsr), free(y0);
    free(y1), free(y2), free(yr), free(d1), free(d2), free(dr), free(wf);
}

static void test_matmul_masked(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 21);
    const struct {
        finch_dtype t;
        int64_t R, K;
    } cases[] = {{FINCH_DTYPE_Q4_1, 1, 32},   {FINCH_DTYPE_Q4_1, 130, 96}, {FINCH_DTYPE_Q4_0, 70, 576},
                 {FINCH_DTYPE_Q8_0, 65, 160}, {FINCH_DTYPE_F32, 33, 200},  {FINCH_DTYPE_F16, 17, 130},
                 {FINCH_DTYPE_Q4_K, 40, 512}, {FINCH_DTYPE_Q8_0, 576, 64}};
    /* R 576: at 2 threads rows 256 .. 287 end a band in a narrower tile, at 1 in a whole one */
    const int64_t Ts[] = {1, 7, 33};
    const float ps[] = {0.05f, 0.5f};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++)
            for (size_t q = 0; q < sizeof ps / sizeof ps[0]; q++)
                check_masked(cases[c].t, cases[c].R, cases[c].K, Ts[k], ps[q], &r);
}

/* Dropout's masks as the methods draw them (one per step seed and site stream): the rate
 * of each p within 5 standard deviations of p over 2^20 elements pooled from 64 (seed,
 * stream) pairs, every single mask of 16384 within 5 of its own, and masks of neighbouring
 * streams and of consecutive seeds independent: both drop an element at rate p^2 (within
 * 5 sd). A rate off by 0.5 % at p = 0.5, or masks shared between sites, fail. */
static void test_dropout_statistics(void **state) {
    (void)state;
    enum { N = 16384, PAIRS = 64 };
    float *ones = malloc(sizeof(float) * N), *a = malloc(sizeof(float) * N),
          *b = malloc(sizeof(float) * N), *c = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) ones[i] = 1.0f;
    for (int k = 0; k < 4; k++) {
        const double p = (double[]){0.05, 0.1, 0.3, 0.5}[k];
        int64_t dropped = 0, both_stream = 0, both_seed = 0;
        for (int j = 0; j < PAIRS; j++) {
            const uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(j + 1),
                           stream = 3 + (uint64_t)j;
            finch_dropout d = finch_dropout_make(seed, stream, (float)p);
            finch_dropout ds = finch_dropout_make(seed, stream + 1, (float)p);
            finch_dropout dn = finch_dropout_make(seed + 1, stream, (float)p);
            be->dropout_forward(a, ones, N, &d);
            be->dropout_forward(b, ones, N, &ds);
            be->dropout_forward(c, ones, N, &dn);
            int64_t own = 0;
            for (int i = 0; i < N; i++) {
                own += a[i] == 0.0f;
                both_stream += a[i] == 0.0f && b[i] == 0.0f;
                both_seed += a[i] == 0.0f && c[i] == 0.0f;
            }
            double sd1 = sqrt(p * (1 - p) / N);
            if (fabs((double)own / N - p) > 5 * sd1)
                fail_msg("p %.2f, mask %d: dropped %.4f", p, j, (double)own / N);
            dropped += own;
        }
        const double M = (double)N * PAIRS, rate = (double)dropped / M;
        const double sd = sqrt(p * (1 - p) / M), sd2 = sqrt(p * p * (1 - p * p) / M);
        printf("  dropout p %.2f: rate %.5f (5 sd %.5f); both of two sites %.5f, of two steps "
               "%.5f (p^2 %.5f, 5 sd %.5f)\n",
               p, rate, 5 * sd, (double)both_stream / M, (double)both_seed / M, p * p, 5 * sd2);
        assert_true(fabs(rate - p) < 5 * sd);
        assert_true(fabs((double)both_stream / M - p * p) < 5 * sd2);
        assert_true(fabs((double)both_seed / M - p * p) < 5 * sd2);
    }
    /* p = 0 drops nothing */
    finch_dropout z = finch_dropout_make(5, 6, 0.0f);
    be->dropout_forward(a, ones, N, &z);
    assert_memory_equal(a, ones, sizeof(float) * N);
    free(ones), free(a), free(b), free(c);
}

/* The table's AdamW gives the bits of torch's float operations one element at a time (three
 * steps, with and without decay, one with clipping's scale; n leaves a tail past the vector lanes), and the device part
 * of a host backend is host memory. */
static void test_adamw_and_device_part(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 41);
    const int64_t n = 40003;
    float *p = rand_vec(&r, n, 1.0f), *m = rand_vec(&r, n, 0.1f), *v = rand_vec(&r, n, 0.1f),
          *g = rand_vec(&r, n, 1.0f);
    for (int64_t i = 0; i < n; i++) v[i] *= v[i];
    float *p2 = malloc(sizeof(float) * n), *m2 = malloc(sizeof(float) * n),
          *v2 = malloc(sizeof(float) * n);
    memcpy(p2, p, sizeof(float) * n), memcpy(m2, m, sizeof(float) * n);
    memcpy(v2, v, sizeof(float) * n);
    finch_adamw_config cfg = finch_adamw_config_default();
    const double lr = 2e-3;
    for (int64_t t = 1; t <= 3; t++) {
        bool decay = t != 2;
        finch_adamw_scalars s = finch_adamw_scalars_at(&cfg, lr, t, decay);
        s.grad_scale = t == 3 ? 0.75f : 1.0f; /* clipping's coefficient */
        for (int64_t i = 0; i < n; i++) {
            volatile float gi = g[i] * s.grad_scale; /* volatile: each operation rounded alone */
            volatile float pi = p2[i] * s.decay;
            volatile float mi = m2[i] * s.b1 + s.one_b1 * gi;
            volatile float vi = v2[i] * s.b2 + s.one_b2 * gi * gi;
            volatile float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
            p2[i] = pi + s.neg_step_size * mi / denom;
            m2[i] = mi;
            v2[i] = vi;
        }
        be->adamw_step(p, m, v, g, n, &s);
    }
    assert_memory_equal(p, p2, sizeof(float) * n);
    assert_memory_equal(m, m2, sizeof(float) * n);
    assert_memory_equal(v, v2, sizeof(float) * n);
    finch_err err = {0};
    assert_false(be->device);
    assert_true(finch_backend_supports(be, FINCH_FEATURE_WEIGHT_TYPE, FINCH_DTYPE_NF4));
    float *d = be->alloc(sizeof(float) * n, "a test buffer", &err);
    assert_non_null(d);
    assert_int_equal(be->copy_in(d, p, sizeof(float) * n, &err), FINCH_OK);
    assert_int_equal(be->copy_out(p2, d, sizeof(float) * n, &err), FINCH_OK);
    assert_int_equal(be->sync(&err), FINCH_OK);
    assert_memory_equal(p, p2, sizeof(float) * n);
    be->free(d);
    be->free(NULL);
    free(p), free(m), free(v), free(g), free(p2), free(m2), free(v2);
}

int main(void) {
    be = test_backend();
    finch_threads_set(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropout_statistics),
        cmocka_unit_test(test_matmul_all_types),
        cmocka_unit_test(test_matmul_kquants),
        cmocka_unit_test(test_matmul_tile_values),
        cmocka_unit_test(test_matmul_nf4),
        cmocka_unit_test(test_matmul_thread_invariant),
        cmocka_unit_test(test_matmul_q8),
        cmocka_unit_test(test_matmul_q8_batch_invariant),
        cmocka_unit_test(test_gelu_llamacpp),
        cmocka_unit_test(test_matmul_q8_kquants),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_swiglu_llamacpp),
        cmocka_unit_test(test_llamacpp_ops_bits),
        cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_layernorm_gelu),
        cmocka_unit_test(test_site_ops),
        cmocka_unit_test(test_lora_down_backward),
        cmocka_unit_test(test_matmul_masked),
        cmocka_unit_test(test_adamw_and_device_part),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
