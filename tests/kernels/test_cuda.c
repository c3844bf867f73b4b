/*
 * test_cuda.c: the CUDA backend against the CPU backend, op by op, on random inputs and
 * awkward shapes (one row, odd counts, widths that are not a multiple of 32), with the
 * inputs copied to the device through the backend's own alloc and copy_in and the results
 * read back with copy_out. Skips (exit 77) when finch was built without CUDA or no device
 * is present.
 *
 * Tolerances, by what differs between the two:
 *   - exact (the same f32 operations in the same order): the dequantized values of every
 *     storage type (embed), AdamW, the column sums (RMSNorm's and LayerNorm's parameter
 *     gradients, col_dot, the embedding gradient: one thread per column adding rows in
 *     order, as the host does), add, scale, scale_cols, dropout, f16 rounding;
 *   - products (cuBLAS against finch's GEMM, both f32 sums in another order):
 *     |d| <= 8e-6 sum_k |a_k b_k| + 1e-6, twice test_kernels.c's bound of one f32 sum;
 *   - RMSNorm, LayerNorm, RoPE: the row sums are double on both sides, the angles the same
 *     doubles, so only the last bit of a float may move: 2e-6 relative + 1e-6 absolute;
 *   - SwiGLU, GeGLU, GELU, the softmax: the device's expf is within 2 ulp of the host's, 4e-6
 *     relative + 1e-6 absolute (the loss: 1e-6 relative);
 *   - attention: an online softmax and other summation orders: 1e-4 relative + 1e-5 of the
 *     largest value (out, dq, dk, dv; the statistics 2e-5 relative).
 * Determinism: the matmul and the attention backward run twice give the same bits.
 *
 * FINCH_CUDA_TEST_ON_HOST=1 runs the same checks with the CPU's baseline table in the
 * device's place (a dry run of the test itself on a machine without a GPU).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_weights.h" /* randn, rand_vec, make_weight */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/quant.h"
#include "kernels/kernels.h"
#include "test_util.h" /* test_backend */

static const finch_backend *cpu, *gpu;

/* ---- device buffers ---- */

static void *dev_new(size_t bytes) {
    finch_err err = {0};
    void *p = gpu->alloc(bytes, "a test buffer", &err);
    if (!p) fail_msg("%s", err.msg);
    return p;
}

/* A device copy of n bytes of host memory. */
static void *dev_of(const void *host, size_t bytes) {
    finch_err err = {0};
    void *p = dev_new(bytes);
    if (gpu->copy_in(p, host, bytes, &err) != FINCH_OK) fail_msg("%s", err.msg);
    return p;
}

/* A malloc'd host copy of n bytes of device memory, after every op issued has finished. */
static void *host_of(const void *dev, size_t bytes) {
    finch_err err = {0};
    void *h = malloc(bytes ? bytes : 1);
    assert_non_null(h);
    if (gpu->sync(&err) != FINCH_OK) fail_msg("%s", err.msg);
    if (gpu->copy_out(h, dev, bytes, &err) != FINCH_OK) fail_msg("%s", err.msg);
    return h;
}

static float *dev_f(const float *h, int64_t n) {
    return dev_of(h, (size_t)n * sizeof(float));
}
static float *host_f(const float *d, int64_t n) {
    return host_of(d, (size_t)n * sizeof(float));
}

/* A device copy of w's data in a view of the same shape. */
static finch_weight dev_weight(const finch_weight *w) {
    finch_weight d = *w;
    d.data = dev_of(w->data, (size_t)w->rows * w->row_bytes);
    return d;
}

/* ---- comparisons ---- */

static void expect_same(const float *got, const float *want, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)))
            fail_msg("%s: [%lld] = %.9g on the device, %.9g on the CPU (expected the same bits)",
                     what, (long long)i, got[i], want[i]);
}

/* |got - want| <= rel |want| + abs_of_max max|want| + abs, elementwise. */
static void expect_close(const float *got, const float *want, int64_t n, double rel,
                         double abs_of_max, double abs, const char *what) {
    double mx = 0;
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)want[i]));
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= rel * fabs((double)want[i]) + abs_of_max * mx + abs))
            fail_msg("%s: [%lld] = %.9g on the device, %.9g on the CPU (|d| %.3g)", what,
                     (long long)i, got[i], want[i], e);
    }
}

/* |got - want| <= 8e-6 bound + 1e-6 with bound (n) the sums of |products| of each element. */
static void expect_product(const float *got, const float *want, const double *bound, int64_t n,
                           const char *what) {
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= 8e-6 * bound[i] + 1e-6))
            fail_msg("%s: [%lld] = %.9g on the device, %.9g on the CPU (|d| %.3g, bound %.3g)",
                     what, (long long)i, got[i], want[i], e, bound[i]);
    }
}

static finch_workspace cpu_ws(int64_t cols, int64_t n_ctx) {
    finch_workspace ws;
    finch_err err = {0};
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(cols, n_ctx), 2, 0, &err),
                     FINCH_OK);
    return ws;
}

static const finch_dtype all_types[] = {
    FINCH_DTYPE_F32,  FINCH_DTYPE_F16,  FINCH_DTYPE_BF16, FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q4_1,
    FINCH_DTYPE_Q5_0, FINCH_DTYPE_Q5_1, FINCH_DTYPE_Q8_0, FINCH_DTYPE_Q2_K, FINCH_DTYPE_Q3_K,
    FINCH_DTYPE_Q4_K, FINCH_DTYPE_Q5_K, FINCH_DTYPE_Q6_K, FINCH_DTYPE_NF4};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

/* ---- the device part ---- */

static void test_device_part(void **state) {
    (void)state;
    assert_false(cpu->device);
    assert_true(finch_backend_supports(cpu, FINCH_FEATURE_ATTN_PREFIX, 0));
    for (int i = 0; i < N_TYPES; i++)
        assert_true(finch_backend_supports(gpu, FINCH_FEATURE_WEIGHT_TYPE, all_types[i]));
    if (gpu->device) { /* (not in the dry run on the host) */
        assert_false(finch_backend_supports(gpu, FINCH_FEATURE_WEIGHT_TYPE, FINCH_DTYPE_Q8_K));
        assert_false(finch_backend_supports(gpu, FINCH_FEATURE_ATTN_PREFIX, 0));
        assert_null(gpu->matmul_q8);
        assert_null(gpu->attention_forward_f16);
        assert_null(gpu->rmsnorm_llamacpp);
        assert_null(gpu->swiglu_llamacpp);
    }
    /* a round trip of bytes, and an allocation far too large reported, not fatal */
    uint8_t h[1000];
    for (int i = 0; i < 1000; i++) h[i] = (uint8_t)(i * 7);
    void *d = dev_of(h, sizeof h);
    uint8_t *back = host_of(d, sizeof h);
    assert_memory_equal(back, h, sizeof h);
    free(back);
    gpu->free(d);
    gpu->free(NULL);
    finch_err err = {0};
    if (gpu->device) { /* (AddressSanitizer aborts on such a request on the host) */
        assert_null(gpu->alloc((size_t)1 << 50, "a petabyte", &err));
        assert_int_equal(err.code, FINCH_E_NOMEM);
        assert_non_null(strstr(err.msg, "a petabyte"));
    }
    assert_int_equal(gpu->sync(&err), FINCH_OK);
}

/* ---- products with stored weights ---- */

/* Every type's dequantized rows through embed: the host's values bit for bit. */
static void test_embed_all_types(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 21);
    for (int i = 0; i < N_TYPES; i++) {
        const int64_t V = 37, C = 512, T = 53;
        finch_weight w;
        void *data = make_weight(&r, all_types[i], V, C, &w);
        int32_t ids[53];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)(finch_rng_u64(&r) % V);
        float *want = malloc(sizeof(float) * T * C);
        cpu->embed(want, ids, T, &w);
        finch_weight dw = dev_weight(&w);
        int32_t *dids = dev_of(ids, sizeof ids);
        float *dx = dev_new(sizeof(float) * T * C);
        gpu->embed(dx, dids, T, &dw);
        float *got = host_f(dx, T * C);
        char what[64];
        snprintf(what, sizeof what, "embed %s", finch_dtype_info[all_types[i]].name);
        expect_same(got, want, T * C, what);
        free(got);
        free(want);
        gpu->free(dx);
        gpu->free(dids);
        gpu->free((void *)dw.data);
        free(data);
    }
}

/* y = x W^T, dx = dy W, on both backends, for one type and shape. */
static void check_matmul(finch_dtype t, int64_t rows, int64_t cols, int64_t T, finch_rng *r) {
    finch_weight w;
    void *data = make_weight(r, t, rows, cols, &w);
    float *x = rand_vec(r, T * cols, 1.0f), *dy = rand_vec(r, T * rows, 1.0f);
    float *wf = malloc(sizeof(float) * rows * cols);
    finch_weight_rows_f32(&w, 0, rows, wf);
    double *by = calloc((size_t)(T * rows), sizeof(double)),
           *bx = calloc((size_t)(T * cols), sizeof(double));
    for (int64_t k = 0; k < T; k++)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t c = 0; c < cols; c++) {
                by[k * rows + i] += fabs((double)wf[i * cols + c] * x[k * cols + c]);
                bx[k * cols + c] += fabs((double)wf[i * cols + c] * dy[k * rows + i]);
            }
    float *y = malloc(sizeof(float) * T * rows), *dx = malloc(sizeof(float) * T * cols);
    finch_workspace ws = cpu_ws(cols, 1);
    cpu->matmul(y, x, &w, T, &ws);
    cpu->matmul_backward_input(dx, dy, &w, T, &ws);
    finch_weight gw = dev_weight(&w);
    float *gx = dev_f(x, T * cols), *gdy = dev_f(dy, T * rows);
    float *gy = dev_new(sizeof(float) * T * rows), *gdx = dev_new(sizeof(float) * T * cols);
    gpu->matmul(gy, gx, &gw, T, &ws);
    gpu->matmul_backward_input(gdx, gdy, &gw, T, &ws);
    float *y1 = host_f(gy, T * rows), *dx1 = host_f(gdx, T * cols);
    char what[96];
    snprintf(what, sizeof what, "matmul %s %lldx%lld T=%lld", finch_dtype_info[t].name,
             (long long)rows, (long long)cols, (long long)T);
    expect_product(y1, y, by, T * rows, what);
    snprintf(what, sizeof what, "matmul_backward_input %s %lldx%lld T=%lld",
             finch_dtype_info[t].name, (long long)rows, (long long)cols, (long long)T);
    expect_product(dx1, dx, bx, T * cols, what);
    /* the same bits again */
    gpu->matmul(gy, gx, &gw, T, &ws);
    float *y2 = host_f(gy, T * rows);
    expect_same(y2, y1, T * rows, "matmul run twice");
    finch_workspace_free(&ws);
    free(y2), free(y1), free(dx1), free(y), free(dx), free(by), free(bx), free(wf);
    free(x), free(dy), free(data);
    gpu->free(gx), gpu->free(gdy), gpu->free(gy), gpu->free(gdx), gpu->free((void *)gw.data);
}

static void test_matmul_all_types(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 22);
    const int64_t shapes[][3] = {{1, 256, 1}, {7, 256, 3}, {65, 512, 17}, {130, 256, 64}};
    for (int i = 0; i < N_TYPES; i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            check_matmul(all_types[i], shapes[s][0], shapes[s][1], shapes[s][2], &r);
}

/* A weight larger than the scratch buffer: several bands, the input gradient's summed. */
static void test_matmul_bands(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 23);
    check_matmul(FINCH_DTYPE_Q4_1, 33000, 576, 5, &r);
}

static void test_matmul_backward_weight(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 24);
    const int64_t shapes[][3] = {{1, 1, 1}, {16, 576, 37}, {577, 64, 130}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t R = shapes[s][0], K = shapes[s][1], T = shapes[s][2];
        float *dy = rand_vec(&r, T * R, 1.0f), *x = rand_vec(&r, T * K, 1.0f),
              *dw = rand_vec(&r, R * K, 1.0f);
        double *b = malloc(sizeof(double) * R * K);
        for (int64_t i = 0; i < R; i++)
            for (int64_t c = 0; c < K; c++) {
                b[i * K + c] = fabs((double)dw[i * K + c]);
                for (int64_t t = 0; t < T; t++)
                    b[i * K + c] += fabs((double)dy[t * R + i] * x[t * K + c]);
            }
        float *gdw = dev_f(dw, R * K), *gdy = dev_f(dy, T * R), *gx = dev_f(x, T * K);
        cpu->matmul_backward_weight(dw, dy, x, T, R, K, NULL);
        gpu->matmul_backward_weight(gdw, gdy, gx, T, R, K, NULL);
        float *got = host_f(gdw, R * K);
        expect_product(got, dw, b, R * K, "matmul_backward_weight");
        free(got), free(dy), free(x), free(dw), free(b);
        gpu->free(gdw), gpu->free(gdy), gpu->free(gx);
    }
}

static void test_gemm(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 25);
    const int64_t M = 19, N = 33, K = 70;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* padded strides: each matrix 3 columns wider than it needs */
            int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 3, ldc = N + 3;
            float *A = rand_vec(&r, (ta ? K : M) * lda, 1.0f);
            float *B = rand_vec(&r, (tb ? N : K) * ldb, 1.0f);
            float *C = rand_vec(&r, M * ldc, 1.0f);
            float *gA = dev_f(A, (ta ? K : M) * lda), *gB = dev_f(B, (tb ? N : K) * ldb),
                  *gC = dev_f(C, M * ldc);
            double *b = malloc(sizeof(double) * M * ldc);
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < ldc; j++) {
                    b[i * ldc + j] = 0.5 * fabs((double)C[i * ldc + j]);
                    if (j < N)
                        for (int64_t k = 0; k < K; k++)
                            b[i * ldc + j] +=
                                1.5 * fabs((double)(ta ? A[k * lda + i] : A[i * lda + k]) *
                                           (tb ? B[j * ldb + k] : B[k * ldb + j]));
                }
            cpu->gemm(ta, tb, M, N, K, 1.5f, A, lda, B, ldb, 0.5f, C, ldc);
            gpu->gemm(ta, tb, M, N, K, 1.5f, gA, lda, gB, ldb, 0.5f, gC, ldc);
            float *got = host_f(gC, M * ldc);
            expect_product(got, C, b, M * ldc,
                           ta ? (tb ? "gemm TT" : "gemm TN") : (tb ? "gemm NT" : "gemm NN"));
            free(got), free(A), free(B), free(C), free(b);
            gpu->free(gA), gpu->free(gB), gpu->free(gC);
        }
}

/* ---- per-row ops ---- */

static void test_rmsnorm(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 26);
    const int64_t shapes[][2] = {{1, 1}, {3, 576}, {37, 2049}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0], C = shapes[s][1];
        float *x = rand_vec(&r, T * C, 1.0f), *w = rand_vec(&r, C, 1.0f),
              *dy = rand_vec(&r, T * C, 1.0f), *dw = rand_vec(&r, C, 1.0f);
        float *y = malloc(sizeof(float) * T * C), *rs = malloc(sizeof(float) * T),
              *dx = malloc(sizeof(float) * T * C);
        float *gx = dev_f(x, T * C), *gw = dev_f(w, C), *gdy = dev_f(dy, T * C),
              *gdw = dev_f(dw, C), *grs = dev_new(sizeof(float) * T),
              *gy = dev_new(sizeof(float) * T * C), *gdx = dev_new(sizeof(float) * T * C);
        cpu->rmsnorm_forward(y, rs, x, w, T, C, 1e-5f);
        gpu->rmsnorm_forward(gy, grs, gx, gw, T, C, 1e-5f);
        float *y1 = host_f(gy, T * C), *rs1 = host_f(grs, T);
        expect_close(y1, y, T * C, 2e-6, 0, 1e-6, "rmsnorm_forward y");
        expect_close(rs1, rs, T, 2e-6, 0, 0, "rmsnorm_forward rstd");
        /* backward from the CPU's rstd on both, so the weight gradient is the same bits */
        gpu->copy_in(grs, rs, sizeof(float) * T, NULL);
        cpu->rmsnorm_backward(dx, dw, dy, rs, x, w, T, C);
        gpu->rmsnorm_backward(gdx, gdw, gdy, grs, gx, gw, T, C);
        float *dx1 = host_f(gdx, T * C), *dw1 = host_f(gdw, C);
        expect_same(dw1, dw, C, "rmsnorm_backward dw");
        expect_close(dx1, dx, T * C, 2e-6, 2e-6, 1e-6, "rmsnorm_backward dx");
        /* dx aliasing dy, no weight gradient */
        gpu->rmsnorm_backward(gdy, NULL, gdy, grs, gx, gw, T, C);
        float *dx2 = host_f(gdy, T * C);
        expect_same(dx2, dx1, T * C, "rmsnorm_backward in place");
        free(x), free(w), free(dy), free(dw), free(y), free(rs), free(dx);
        free(y1), free(rs1), free(dx1), free(dw1), free(dx2);
        gpu->free(gx), gpu->free(gw), gpu->free(gdy), gpu->free(gdw), gpu->free(grs);
        gpu->free(gy), gpu->free(gdx);
    }
}

static void test_rope(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 27);
    const int64_t T = 41;
    const int nh = 3, D = 64;
    int32_t pos[41];
    for (int t = 0; t < T; t++) pos[t] = (int32_t)(finch_rng_u64(&r) % 8192);
    float *x = rand_vec(&r, T * nh * D, 1.0f);
    float *gx = dev_f(x, T * nh * D);
    int32_t *gpos = dev_of(pos, sizeof pos);
    cpu->rope_forward(x, pos, T, nh, D, 10000.0f);
    gpu->rope_forward(gx, gpos, T, nh, D, 10000.0f);
    float *got = host_f(gx, T * nh * D);
    expect_close(got, x, T * nh * D, 2e-6, 0, 1e-6, "rope_forward");
    cpu->rope_backward(x, pos, T, nh, D, 10000.0f);
    gpu->rope_backward(gx, gpos, T, nh, D, 10000.0f);
    free(got);
    got = host_f(gx, T * nh * D);
    expect_close(got, x, T * nh * D, 2e-6, 0, 1e-6, "rope_backward");
    free(got), free(x);
    gpu->free(gx), gpu->free(gpos);
}

static void test_swiglu(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 28);
    const int64_t n = 100003;
    float *g = rand_vec(&r, n, 3.0f), *u = rand_vec(&r, n, 1.0f), *dh = rand_vec(&r, n, 1.0f);
    float *h = malloc(sizeof(float) * n), *dg = malloc(sizeof(float) * n),
          *du = malloc(sizeof(float) * n);
    float *gg = dev_f(g, n), *gu = dev_f(u, n), *gdh = dev_f(dh, n),
          *gh = dev_new(sizeof(float) * n), *gdu = dev_new(sizeof(float) * n);
    cpu->swiglu_forward(h, g, u, n);
    cpu->swiglu_backward(dg, du, dh, g, u, n);
    gpu->swiglu_forward(gh, gg, gu, n);
    gpu->swiglu_backward(gdh, gdu, gdh, gg, gu, n); /* dgate aliasing dh */
    float *h1 = host_f(gh, n), *dg1 = host_f(gdh, n), *du1 = host_f(gdu, n);
    expect_close(h1, h, n, 4e-6, 0, 1e-6, "swiglu_forward");
    expect_close(dg1, dg, n, 4e-6, 0, 1e-6, "swiglu_backward dgate");
    expect_close(du1, du, n, 4e-6, 0, 1e-6, "swiglu_backward dup");
    free(g), free(u), free(dh), free(h), free(dg), free(du), free(h1), free(dg1), free(du1);
    gpu->free(gg), gpu->free(gu), gpu->free(gdh), gpu->free(gh), gpu->free(gdu);
}

static void test_softmax_xent(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 29);
    const int64_t N = 37, V = 49152 + 5;
    float *l = rand_vec(&r, N * V, 4.0f), *dl = malloc(sizeof(float) * N * V);
    int32_t tg[37];
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 3 ? -1 : (int32_t)(finch_rng_u64(&r) % V);
    float *gl = dev_f(l, N * V), *gdl = dev_new(sizeof(float) * N * V);
    int32_t *gtg = dev_of(tg, sizeof tg);
    const float scales[] = {0.0f, 0.25f};
    for (int s = 0; s < 2; s++) {
        double want = cpu->softmax_xent(dl, l, tg, N, V, scales[s]);
        double got = gpu->softmax_xent(gdl, gl, gtg, N, V, scales[s]);
        if (!(fabs(got - want) <= 1e-6 * fabs(want)))
            fail_msg("softmax_xent: loss %.12g on the device, %.12g on the CPU", got, want);
        float *dl1 = host_f(gdl, N * V);
        expect_close(dl1, dl, N * V, 4e-6, 0, 1e-8, "softmax_xent dlogits");
        free(dl1);
        assert_true(fabs(gpu->softmax_xent(NULL, gl, gtg, N, V, scales[s]) - want) <=
                    1e-6 * fabs(want));
    }
    /* in place: dlogits = logits */
    double want = cpu->softmax_xent(l, l, tg, N, V, 0.0f);
    double got = gpu->softmax_xent(gl, gl, gtg, N, V, 0.0f);
    assert_true(fabs(got - want) <= 1e-6 * fabs(want));
    float *dl1 = host_f(gl, N * V);
    expect_close(dl1, l, N * V, 4e-6, 0, 1e-8, "softmax_xent in place");
    /* every row masked */
    int32_t none[37];
    for (int i = 0; i < N; i++) none[i] = -1;
    gpu->copy_in(gtg, none, sizeof none, NULL);
    assert_true(gpu->softmax_xent(gdl, gl, gtg, N, V, 0.0f) == 0.0);
    free(dl1), free(l), free(dl);
    gpu->free(gl), gpu->free(gdl), gpu->free(gtg);
}

static void test_geglu_gelu(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 33);
    const int64_t n = 50021;
    float *g = rand_vec(&r, n, 3.0f), *u = rand_vec(&r, n, 1.0f), *dh = rand_vec(&r, n, 1.0f);
    float *h = malloc(sizeof(float) * n), *dg = malloc(sizeof(float) * n),
          *du = malloc(sizeof(float) * n);
    float *gg = dev_f(g, n), *gu = dev_f(u, n), *gdh = dev_f(dh, n),
          *gh = dev_new(sizeof(float) * n), *gdg = dev_new(sizeof(float) * n),
          *gdu = dev_new(sizeof(float) * n);
    cpu->geglu_forward(h, g, u, n);
    cpu->geglu_backward(dg, du, dh, g, u, n);
    gpu->geglu_forward(gh, gg, gu, n);
    gpu->geglu_backward(gdg, gdu, gdh, gg, gu, n);
    float *h1 = host_f(gh, n), *dg1 = host_f(gdg, n), *du1 = host_f(gdu, n);
    expect_close(h1, h, n, 4e-6, 0, 1e-6, "geglu_forward");
    expect_close(dg1, dg, n, 4e-6, 0, 1e-6, "geglu_backward dgate");
    expect_close(du1, du, n, 4e-6, 0, 1e-6, "geglu_backward dup");
    free(h1), free(dg1);
    cpu->gelu_forward(h, g, n);
    cpu->gelu_backward(dg, dh, g, n);
    gpu->gelu_forward(gh, gg, n);
    gpu->gelu_backward(gdh, gdh, gg, n); /* dx aliasing dy */
    h1 = host_f(gh, n), dg1 = host_f(gdh, n);
    expect_close(h1, h, n, 4e-6, 0, 1e-6, "gelu_forward");
    expect_close(dg1, dg, n, 4e-6, 0, 1e-6, "gelu_backward");
    free(g), free(u), free(dh), free(h), free(dg), free(du), free(h1), free(dg1), free(du1);
    gpu->free(gg), gpu->free(gu), gpu->free(gdh), gpu->free(gh), gpu->free(gdg), gpu->free(gdu);
}

static void test_layernorm(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 34);
    const int64_t T = 23, C = 771;
    float *x = rand_vec(&r, T * C, 2.0f), *w = rand_vec(&r, C, 1.0f), *b = rand_vec(&r, C, 1.0f),
          *dy = rand_vec(&r, T * C, 1.0f), *dw = rand_vec(&r, C, 1.0f), *db = rand_vec(&r, C, 1.0f);
    for (int64_t i = 0; i < T * C; i++) x[i] += 3.0f; /* a mean away from 0 */
    float *y = malloc(sizeof(float) * T * C), *st = malloc(sizeof(float) * T * 2),
          *dx = malloc(sizeof(float) * T * C);
    float *gx = dev_f(x, T * C), *gw = dev_f(w, C), *gb = dev_f(b, C), *gdy = dev_f(dy, T * C),
          *gdw = dev_f(dw, C), *gdb = dev_f(db, C), *gy = dev_new(sizeof(float) * T * C),
          *gst = dev_new(sizeof(float) * T * 2), *gdx = dev_new(sizeof(float) * T * C);
    cpu->layernorm_forward(y, st, x, w, b, T, C, 1e-5f);
    gpu->layernorm_forward(gy, gst, gx, gw, gb, T, C, 1e-5f);
    float *y1 = host_f(gy, T * C), *st1 = host_f(gst, T * 2);
    expect_close(y1, y, T * C, 2e-6, 0, 1e-6, "layernorm_forward y");
    expect_close(st1, st, T * 2, 2e-6, 0, 0, "layernorm_forward stats");
    gpu->copy_in(gst, st, sizeof(float) * T * 2, NULL); /* the CPU's statistics on both */
    cpu->layernorm_backward(dx, dw, db, dy, st, x, w, T, C);
    gpu->layernorm_backward(gdx, gdw, gdb, gdy, gst, gx, gw, T, C);
    float *dx1 = host_f(gdx, T * C), *dw1 = host_f(gdw, C), *db1 = host_f(gdb, C);
    expect_same(dw1, dw, C, "layernorm_backward dw");
    expect_same(db1, db, C, "layernorm_backward db");
    expect_close(dx1, dx, T * C, 2e-6, 2e-6, 1e-6, "layernorm_backward dx");
    free(x), free(w), free(b), free(dy), free(dw), free(db), free(y), free(st), free(dx);
    free(y1), free(st1), free(dx1), free(dw1), free(db1);
    gpu->free(gx), gpu->free(gw), gpu->free(gb), gpu->free(gdy), gpu->free(gdw), gpu->free(gdb);
    gpu->free(gy), gpu->free(gst), gpu->free(gdx);
}

/* Inference attention over a cache: T new queries after pos0 cached positions. */
static void test_attention_cache(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 35);
    const int64_t cases[][6] = {/* T, pos0, H, KVH, D, window */
                                {1, 0, 9, 3, 64, 0},
                                {1, 200, 9, 3, 64, 0},
                                {17, 40, 4, 2, 128, 0},
                                {5, 600, 4, 1, 256, 512},
                                {33, 0, 2, 2, 80, 7}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t T = cases[c][0], P = cases[c][1], W = cases[c][5];
        const int H = (int)cases[c][2], KVH = (int)cases[c][3], D = (int)cases[c][4];
        const int64_t nq = T * H * D, nkv = (P + T) * KVH * D;
        float *q = rand_vec(&r, nq, 1.0f), *k = rand_vec(&r, nkv, 1.0f),
              *v = rand_vec(&r, nkv, 1.0f);
        float *out = malloc(sizeof(float) * nq);
        finch_workspace ws = cpu_ws(D, P + T);
        cpu->attention_forward(out, q, k, v, T, P, H, KVH, D, W, &ws);
        float *gq = dev_f(q, nq), *gk = dev_f(k, nkv), *gv = dev_f(v, nkv),
              *gout = dev_new(sizeof(float) * nq);
        gpu->attention_forward(gout, gq, gk, gv, T, P, H, KVH, D, W, &ws);
        float *o1 = host_f(gout, nq);
        char what[96];
        snprintf(what, sizeof what, "attention_forward T=%lld pos0=%lld H=%d KVH=%d D=%d W=%lld",
                 (long long)T, (long long)P, H, KVH, D, (long long)W);
        expect_close(o1, out, nq, 1e-4, 1e-5, 0, what);
        finch_workspace_free(&ws);
        free(q), free(k), free(v), free(out), free(o1);
        gpu->free(gq), gpu->free(gk), gpu->free(gv), gpu->free(gout);
    }
}

/* ---- ops expected to give the host's bits ---- */

static void test_exact_ops(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 30);
    const int64_t T = 29, n = 333, V = 11, C = 70;
    float *a = rand_vec(&r, T * n, 1.0f), *b = rand_vec(&r, T * n, 1.0f),
          *s = rand_vec(&r, n, 1.0f), *ds = rand_vec(&r, n, 1.0f),
          *y = malloc(sizeof(float) * T * n);
    float *ga = dev_f(a, T * n), *gb = dev_f(b, T * n), *gs = dev_f(s, n), *gds = dev_f(ds, n),
          *gy = dev_new(sizeof(float) * T * n);
    cpu->scale_cols(y, a, s, T, n);
    gpu->scale_cols(gy, ga, gs, T, n);
    float *got = host_f(gy, T * n);
    expect_same(got, y, T * n, "scale_cols");
    free(got);
    cpu->col_dot(ds, a, b, T, n);
    gpu->col_dot(gds, ga, gb, T, n);
    cpu->col_dot(ds, a, NULL, T, n);
    gpu->col_dot(gds, ga, NULL, T, n);
    got = host_f(gds, n);
    expect_same(got, ds, n, "col_dot");
    free(got);
    cpu->add(a, b, T * n);
    gpu->add(ga, gb, T * n);
    cpu->scale(a, T * n, 0.37f);
    gpu->scale(ga, T * n, 0.37f);
    got = host_f(ga, T * n);
    expect_same(got, a, T * n, "add, scale");
    free(got);
    /* dropout: the same mask from the same hash; the gradient adds to what dx holds */
    finch_dropout d = finch_dropout_make(77, 5, 0.3f);
    cpu->dropout_forward(y, a, T * n, &d);
    gpu->dropout_forward(gy, ga, T * n, &d);
    got = host_f(gy, T * n);
    expect_same(got, y, T * n, "dropout_forward");
    free(got);
    cpu->dropout_backward(y, b, T * n, &d);
    gpu->dropout_backward(gy, gb, T * n, &d);
    got = host_f(gy, T * n);
    expect_same(got, y, T * n, "dropout_backward");
    free(got);
    /* f16 rounding (nearest even), large and tiny values included */
    uint16_t *h16 = malloc(sizeof(uint16_t) * T * n), *g16 = dev_new(sizeof(uint16_t) * T * n);
    for (int64_t i = 0; i < T * n; i += 7) a[i] *= i % 2 ? 1e5f : 1e-6f;
    gpu->copy_in(ga, a, sizeof(float) * T * n, NULL);
    cpu->to_f16(h16, a, T * n);
    gpu->to_f16(g16, ga, T * n);
    uint16_t *h16g = host_of(g16, sizeof(uint16_t) * T * n);
    assert_memory_equal(h16g, h16, sizeof(uint16_t) * T * n);
    free(h16), free(h16g);
    gpu->free(g16);
    /* the embedding gradient with repeated ids */
    int32_t ids[29];
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(finch_rng_u64(&r) % V);
    float *demb = rand_vec(&r, V * C, 1.0f), *dx = rand_vec(&r, T * C, 1.0f);
    float *gdemb = dev_f(demb, V * C), *gdx = dev_f(dx, T * C);
    int32_t *gids = dev_of(ids, sizeof ids);
    cpu->embed_backward(demb, dx, ids, T, C);
    gpu->embed_backward(gdemb, gdx, gids, T, C);
    got = host_f(gdemb, V * C);
    expect_same(got, demb, V * C, "embed_backward");
    free(got);
    free(a), free(b), free(s), free(ds), free(y), free(demb), free(dx);
    gpu->free(ga), gpu->free(gb), gpu->free(gs), gpu->free(gds), gpu->free(gy);
    gpu->free(gdemb), gpu->free(gdx), gpu->free(gids);
}

static void test_adamw(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 31);
    const int64_t n = 70001;
    float *p = rand_vec(&r, n, 1.0f), *m = rand_vec(&r, n, 0.1f), *g = rand_vec(&r, n, 1.0f);
    float *v = rand_vec(&r, n, 0.1f);
    for (int64_t i = 0; i < n; i++) v[i] *= v[i];
    float *gp = dev_f(p, n), *gm = dev_f(m, n), *gv = dev_f(v, n), *gg = dev_f(g, n);
    for (int step = 1; step <= 3; step++) {
        double lr = 1e-3, b1 = 0.9, b2 = 0.999;
        finch_adamw_scalars s = {
            .decay = step == 2 ? 1.0f : (float)(1.0 - lr * 0.01),
            .b1 = (float)b1,
            .one_b1 = (float)(1.0 - b1),
            .b2 = (float)b2,
            .one_b2 = (float)(1.0 - b2),
            .bc2_sqrt = (float)sqrt(1.0 - pow(b2, step)),
            .eps = 1e-8f,
            .neg_step_size = (float)(-(lr / (1.0 - pow(b1, step)))),
            .grad_scale = step == 3 ? 0.5f : 1.0f,
        };
        cpu->adamw_step(p, m, v, g, n, &s);
        gpu->adamw_step(gp, gm, gv, gg, n, &s);
    }
    float *p1 = host_f(gp, n), *m1 = host_f(gm, n), *v1 = host_f(gv, n);
    expect_same(p1, p, n, "adamw p");
    expect_same(m1, m, n, "adamw m");
    expect_same(v1, v, n, "adamw v");
    free(p), free(m), free(v), free(g), free(p1), free(m1), free(v1);
    gpu->free(gp), gpu->free(gm), gpu->free(gv), gpu->free(gg);
}

/* ---- attention ---- */

static void check_attention(int64_t B, int64_t T, int H, int KVH, int D, int64_t W, bool segs,
                            finch_rng *r) {
    const int64_t nq = B * T * H * D, nkv = B * T * KVH * D, ns = B * H * T;
    float *q = rand_vec(r, nq, 1.0f), *k = rand_vec(r, nkv, 1.0f), *v = rand_vec(r, nkv, 1.0f),
          *dout = rand_vec(r, nq, 1.0f);
    int32_t *seg = NULL;
    if (segs) { /* rows packed with segments of 1 to 12 tokens */
        seg = malloc(sizeof(int32_t) * B * T);
        for (int64_t b = 0; b < B; b++) {
            int32_t id = 0;
            for (int64_t t = 0; t < T; id++) {
                int64_t len = 1 + (int64_t)(finch_rng_u64(r) % 12);
                for (int64_t i = 0; i < len && t < T; i++, t++) seg[b * T + t] = id;
            }
        }
    }
    float *out = malloc(sizeof(float) * nq), *st = malloc(sizeof(float) * ns * 2),
          *sps = malloc(sizeof(float) * ns), *dq = malloc(sizeof(float) * nq),
          *dk = malloc(sizeof(float) * nkv), *dv = malloc(sizeof(float) * nkv);
    finch_workspace ws = cpu_ws(D, T);
    cpu->attention_forward_train(out, st, q, k, v, seg, NULL, B, T, H, KVH, D, W, &ws);
    cpu->attention_backward(dq, dk, dv, sps, dout, out, st, q, k, v, seg, NULL, B, T, H, KVH, D, W,
                            &ws);
    float *gq = dev_f(q, nq), *gk = dev_f(k, nkv), *gv = dev_f(v, nkv), *gdout = dev_f(dout, nq);
    int32_t *gseg = seg ? dev_of(seg, sizeof(int32_t) * B * T) : NULL;
    float *gout = dev_new(sizeof(float) * nq), *gst = dev_new(sizeof(float) * ns * 2),
          *gsps = dev_new(sizeof(float) * ns), *gdq = dev_new(sizeof(float) * nq),
          *gdk = dev_new(sizeof(float) * nkv), *gdv = dev_new(sizeof(float) * nkv);
    gpu->attention_forward_train(gout, gst, gq, gk, gv, gseg, NULL, B, T, H, KVH, D, W, &ws);
    gpu->attention_backward(gdq, gdk, gdv, gsps, gdout, gout, gst, gq, gk, gv, gseg, NULL, B, T, H,
                            KVH, D, W, &ws);
    char what[128];
#define WHAT(name)                                                                                 \
    (snprintf(what, sizeof what, "attention %s B=%lld T=%lld H=%d KVH=%d D=%d W=%lld%s", name,     \
              (long long)B, (long long)T, H, KVH, D, (long long)W, segs ? " segments" : ""),       \
     what)
    float *o1 = host_f(gout, nq), *st1 = host_f(gst, ns * 2), *dq1 = host_f(gdq, nq),
          *dk1 = host_f(gdk, nkv), *dv1 = host_f(gdv, nkv);
    expect_close(o1, out, nq, 1e-4, 1e-5, 0, WHAT("out"));
    expect_close(st1, st, ns * 2, 2e-5, 0, 1e-6, WHAT("stats"));
    expect_close(dq1, dq, nq, 1e-4, 1e-5, 0, WHAT("dq"));
    expect_close(dk1, dk, nkv, 1e-4, 1e-5, 0, WHAT("dk"));
    expect_close(dv1, dv, nkv, 1e-4, 1e-5, 0, WHAT("dv"));
    /* the backward again: the same bits */
    gpu->attention_backward(gdq, gdk, gdv, gsps, gdout, gout, gst, gq, gk, gv, gseg, NULL, B, T, H,
                            KVH, D, W, &ws);
    float *dk2 = host_f(gdk, nkv);
    expect_same(dk2, dk1, nkv, WHAT("dk run twice"));
#undef WHAT
    finch_workspace_free(&ws);
    free(q), free(k), free(v), free(dout), free(seg), free(out), free(st), free(sps), free(dq);
    free(dk), free(dv), free(o1), free(st1), free(dq1), free(dk1), free(dv1), free(dk2);
    gpu->free(gq), gpu->free(gk), gpu->free(gv), gpu->free(gdout), gpu->free(gseg);
    gpu->free(gout), gpu->free(gst), gpu->free(gsps), gpu->free(gdq), gpu->free(gdk);
    gpu->free(gdv);
}

static void test_attention(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 32);
    check_attention(1, 1, 1, 1, 64, 0, false, &r);
    check_attention(2, 37, 6, 2, 64, 0, false, &r); /* SmolLM2's group of 3 */
    check_attention(2, 37, 6, 2, 64, 0, true, &r);  /* packed rows */
    check_attention(2, 45, 4, 1, 64, 7, true, &r);  /* a sliding window within segments */
    check_attention(1, 130, 4, 4, 128, 16, false, &r);
    check_attention(1, 33, 2, 1, 32, 0, false, &r);
    check_attention(1, 33, 2, 2, 80, 5, false, &r);  /* D not a multiple of 32 */
    check_attention(1, 20, 2, 1, 256, 0, true, &r);  /* Gemma's widest heads */
    check_attention(1, 300, 9, 3, 64, 0, false, &r); /* a longer row */
}

/* ---- timings (FINCH_CUDA_BENCH=1; scripts/gpu_check.sh): SmolLM2's shapes ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Milliseconds per call of f(arg) on backend b (after one warm-up call), over reps calls. */
static double time_ms(const finch_backend *b, void (*f)(const finch_backend *, void *), void *arg,
                      int reps) {
    f(b, arg);
    b->sync(NULL);
    double t = now_s();
    for (int i = 0; i < reps; i++) f(b, arg);
    b->sync(NULL);
    return (now_s() - t) * 1e3 / reps;
}

typedef struct {
    finch_weight w;
    float *x, *y, *dx;
    int64_t T;
    finch_workspace *ws;
} mm_args;

static void run_matmul(const finch_backend *b, void *p) {
    mm_args *a = p;
    b->matmul(a->y, a->x, &a->w, a->T, a->ws);
    b->matmul_backward_input(a->dx, a->y, &a->w, a->T, a->ws);
}

typedef struct {
    float *q, *k, *v, *out, *st, *sps, *dq, *dk, *dv;
    finch_workspace *ws;
} at_args;
enum { AB = 4, AT = 512, AH = 9, AKVH = 3, AD = 64 };

static void run_attention(const finch_backend *b, void *p) {
    at_args *a = p;
    b->attention_forward_train(a->out, a->st, a->q, a->k, a->v, NULL, NULL, AB, AT, AH, AKVH, AD, 0,
                               a->ws);
    b->attention_backward(a->dq, a->dk, a->dv, a->sps, a->out, a->out, a->st, a->q, a->k, a->v,
                          NULL, NULL, AB, AT, AH, AKVH, AD, 0, a->ws);
}

static void test_bench(void **state) {
    (void)state;
    if (!getenv("FINCH_CUDA_BENCH")) {
        printf("bench: set FINCH_CUDA_BENCH=1 for timings\n");
        return;
    }
    finch_rng r;
    finch_rng_seed(&r, 40);
    const int64_t T = 512, shapes[][2] = {{1536, 576}, {576, 1536}, {49152, 576}};
    for (size_t s = 0; s < 3; s++) {
        int64_t R = shapes[s][0], K = shapes[s][1];
        mm_args c = {.T = T}, g = {.T = T};
        void *data = make_weight(&r, FINCH_DTYPE_Q4_1, R, K, &c.w);
        c.x = rand_vec(&r, T * K, 1.0f);
        c.y = malloc(sizeof(float) * T * R);
        c.dx = malloc(sizeof(float) * T * K);
        finch_workspace ws = cpu_ws(K, 1);
        c.ws = &ws;
        g.w = dev_weight(&c.w);
        g.ws = &ws;
        g.x = dev_f(c.x, T * K);
        g.y = dev_new(sizeof(float) * T * R);
        g.dx = dev_new(sizeof(float) * T * K);
        double tc = time_ms(cpu, run_matmul, &c, 2), tg = time_ms(gpu, run_matmul, &g, 20);
        printf("bench matmul + backward_input Q4_1 %lldx%lld T=%lld: cpu %.2f ms, cuda %.3f ms "
               "(%.1fx)\n",
               (long long)R, (long long)K, (long long)T, tc, tg, tc / tg);
        finch_workspace_free(&ws);
        free(data), free(c.x), free(c.y), free(c.dx);
        gpu->free((void *)g.w.data), gpu->free(g.x), gpu->free(g.y), gpu->free(g.dx);
    }
    const int64_t nq = (int64_t)AB * AT * AH * AD, nkv = (int64_t)AB * AT * AKVH * AD,
                  ns = (int64_t)AB * AH * AT;
    at_args c, g;
    float **cp[] = {&c.q, &c.k, &c.v, &c.out, &c.st, &c.sps, &c.dq, &c.dk, &c.dv};
    float **gp[] = {&g.q, &g.k, &g.v, &g.out, &g.st, &g.sps, &g.dq, &g.dk, &g.dv};
    const int64_t sz[] = {nq, nkv, nkv, nq, 2 * ns, ns, nq, nkv, nkv};
    for (int i = 0; i < 9; i++) {
        *cp[i] = rand_vec(&r, sz[i], 1.0f);
        *gp[i] = dev_f(*cp[i], sz[i]);
    }
    finch_workspace ws = cpu_ws(AD, AT);
    c.ws = &ws;
    g.ws = &ws;
    double tc = time_ms(cpu, run_attention, &c, 2), tg = time_ms(gpu, run_attention, &g, 10);
    printf("bench attention forward + backward B=%d T=%d H=%d KVH=%d D=%d: cpu %.2f ms, cuda %.3f "
           "ms (%.1fx)\n",
           AB, AT, AH, AKVH, AD, tc, tg, tc / tg);
    finch_workspace_free(&ws);
    for (int i = 0; i < 9; i++) free(*cp[i]), gpu->free(*gp[i]);
}

int main(void) {
    finch_err err = {0};
    cpu = test_backend();
    if (getenv("FINCH_CUDA_TEST_ON_HOST")) {
        /* a dry run of this test's own code where no GPU is: the baseline CPU table plays
         * the device against the widest one (other vector paths, the same tolerances) */
        gpu = finch_cpu_isa_backend(0);
    } else if (!(gpu = finch_cuda_backend(&err))) {
        printf("skipped: %s\n", err.msg);
        return 77;
    }
    finch_threads_set(2);
    printf("against %s\n", gpu->name);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_part),
        cmocka_unit_test(test_embed_all_types),
        cmocka_unit_test(test_matmul_all_types),
        cmocka_unit_test(test_matmul_bands),
        cmocka_unit_test(test_matmul_backward_weight),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_geglu_gelu),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_attention_cache),
        cmocka_unit_test(test_softmax_xent),
        cmocka_unit_test(test_exact_ops),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
