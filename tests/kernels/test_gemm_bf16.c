/*
 * test_gemm_bf16.c: the bf16 products (--bf16). Each result is checked against a double
 * sum of the same operands rounded to bf16 (round to nearest even), within f32 summation
 * error: |y - ref| <= 4e-6 sum |a||b| + 1e-6. A product that skipped the rounding, or
 * rounded another way, misses by about 2^-9 of the terms and fails.
 *
 * CTest runs this program twice: as is (AMX where the CPU has it) and with FINCH_NO_AMX=1
 * (the f32 fallback over the same rounded operands); it prints which path ran.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "kernels/cpu/cpu.h"
#include "test_util.h" /* test_backend, test_require_isa */
#include "test_weights.h" /* randn, rand_vec, make_weight */

static double rb(float f) {
    return (double)finch_bf16_to_f32(finch_f32_to_bf16(f));
}

/* y (M, N) against A . B over bf16-rounded values; A (M, K) row-major, B(k, n) = b[k*sb_k +
 * n*sb_n]. */
static void check(const char *what, const float *y, int64_t ldy, const float *A, const float *b,
                  int64_t sb_k, int64_t sb_n, int64_t M, int64_t N, int64_t K, const float *c0) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t n = 0; n < N; n++) {
            double ref = c0 ? c0[i * ldy + n] : 0, bound = c0 ? fabs((double)c0[i * ldy + n]) : 0;
            for (int64_t k = 0; k < K; k++) {
                double p = rb(A[i * K + k]) * rb(b[k * sb_k + n * sb_n]);
                ref += p;
                bound += fabs(p);
            }
            if (fabs(y[i * ldy + n] - ref) > 4e-6 * bound + 1e-6)
                fail_msg("%s (%lld x %lld x %lld): [%lld, %lld] = %.9g, reference %.9g", what,
                         (long long)M, (long long)N, (long long)K, (long long)i, (long long)n,
                         (double)y[i * ldy + n], ref);
        }
}

/* gemm_bf16 with every dimension off the 32 grid, written and accumulated. */
static void test_gemm(void **state) {
    (void)state;
    printf("  bf16 products: %s\n", finch_bf16_amx() ? "AMX" : "f32 fallback");
    finch_rng r;
    finch_rng_seed(&r, 5);
    const int64_t M = 45, N = 70, K = 100;
    float *A = rand_vec(&r, M * K, 1.0f), *B = rand_vec(&r, K * N, 1.0f);
    float *C = malloc(sizeof(float) * M * N), *C0 = rand_vec(&r, M * N, 1.0f);
    uint16_t *a16 = malloc(sizeof(uint16_t) * (size_t)(finch_bf16_pad(M) * finch_bf16_pad(K)));
    uint16_t *b16 = malloc(sizeof(uint16_t) * finch_bf16_b_size(K, N));
    finch_bf16_pack_a(a16, A, M, K, K, false);
    /* every padding value the kernel reads must be written by the packing: NaNs elsewhere */
    memset(b16, 0xff, sizeof(uint16_t) * finch_bf16_b_size(K, N));
    finch_bf16_pack_b_nn(b16, B, K, N, N);
    finch_cpu_gemm_bf16(M, N, K, a16, finch_bf16_pad(K), b16, C, N, false);
    check("gemm_bf16", C, N, A, B, N, 1, M, N, K, NULL);
    memcpy(C, C0, sizeof(float) * M * N);
    finch_cpu_gemm_bf16(M, N, K, a16, finch_bf16_pad(K), b16, C, N, true);
    check("gemm_bf16 +=", C, N, A, B, N, 1, M, N, K, C0);
    /* A given transposed: the same product */
    float *At = malloc(sizeof(float) * M * K);
    for (int64_t i = 0; i < M; i++)
        for (int64_t k = 0; k < K; k++) At[k * M + i] = A[i * K + k];
    finch_bf16_pack_a(a16, At, M, K, M, true);
    finch_cpu_gemm_bf16(M, N, K, a16, finch_bf16_pad(K), b16, C, N, false);
    check("gemm_bf16 (A transposed)", C, N, A, B, N, 1, M, N, K, NULL);
    free(A), free(B), free(C), free(C0), free(a16), free(b16), free(At);
}

/* matmul, matmul_backward_input and matmul_backward_weight with a bf16 workspace, over
 * Q4_1 and f32 weights, against the rounded reference, and the same bits for 1 and 2
 * threads. */
static void check_matmul(finch_dtype t, int64_t rows, int64_t cols, int64_t T) {
    finch_rng r;
    finch_rng_seed(&r, 9 + (uint64_t)T);
    finch_weight w;
    void *data = make_weight(&r, t, rows, cols, &w);
    float *W = malloc(sizeof(float) * rows * cols);
    for (int64_t i = 0; i < rows; i++) finch_weight_rows_f32(&w, i, 1, W + i * cols);
    float *x = rand_vec(&r, T * cols, 1.0f), *dy = rand_vec(&r, T * rows, 1.0f);
    float *y1 = malloc(sizeof(float) * T * rows), *y2 = malloc(sizeof(float) * T * rows);
    float *d1 = malloc(sizeof(float) * T * cols), *d2 = malloc(sizeof(float) * T * cols);
    float *g0 = rand_vec(&r, rows * cols, 1.0f), *g1 = malloc(sizeof(float) * rows * cols);
    float *g2 = malloc(sizeof(float) * rows * cols);
    memcpy(g1, g0, sizeof(float) * rows * cols);
    memcpy(g2, g0, sizeof(float) * rows * cols);
    finch_workspace ws;
    finch_err err;
    int64_t dim = rows > cols ? rows : cols;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(cols, 1), 2, 0, &err), FINCH_OK);
    assert_int_equal(finch_workspace_bf16(&ws, T, dim, dim, &err), FINCH_OK);
    char what[96];
    finch_threads_set(1);
    finch_cpu_matmul(y1, x, &w, T, &ws);
    finch_cpu_matmul_backward_input(d1, dy, &w, T, &ws);
    finch_cpu_matmul_backward_weight(g1, dy, x, T, rows, cols, &ws);
    finch_threads_set(2);
    finch_cpu_matmul(y2, x, &w, T, &ws);
    finch_cpu_matmul_backward_input(d2, dy, &w, T, &ws);
    finch_cpu_matmul_backward_weight(g2, dy, x, T, rows, cols, &ws);
    assert_memory_equal(g1, g2, sizeof(float) * rows * cols);
    /* dW (rows, cols) = g0 + dy^T x: A = dy^T (rows, T), B(k, n) = x[k][n] */
    float *dyt = malloc(sizeof(float) * rows * T);
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < rows; i++) dyt[i * T + t] = dy[t * rows + i];
    check("matmul_backward_weight", g2, cols, dyt, x, cols, 1, rows, cols, T, g0);
    free(dyt), free(g0), free(g1), free(g2);
    assert_memory_equal(y1, y2, sizeof(float) * T * rows);
    assert_memory_equal(d1, d2, sizeof(float) * T * cols);
    snprintf(what, sizeof what, "matmul %s", finch_dtype_info[t].name);
    check(what, y2, rows, x, W, 1, cols, T, rows, cols, NULL); /* B(k, n) = W[n][k] */
    snprintf(what, sizeof what, "matmul_backward_input %s", finch_dtype_info[t].name);
    check(what, d2, cols, dy, W, cols, 1, T, cols, rows, NULL); /* B(k, n) = W[k][n] */
    finch_workspace_free(&ws);
    free(data), free(W), free(x), free(dy), free(y1), free(y2), free(d1), free(d2);
}

static void test_matmul(void **state) {
    (void)state;
    check_matmul(FINCH_DTYPE_Q4_1, 200, 96, 37); /* rows and T off the grid */
    check_matmul(FINCH_DTYPE_Q4_1, 64, 320, 64);
    check_matmul(FINCH_DTYPE_F32, 77, 40, 19); /* f32 rows read in place, odd widths */
    check_matmul(FINCH_DTYPE_Q4_K, 48, 512, 33);
}

int main(void) {
    test_require_isa(FINCH_ISA_STR(FINCH_ISA));
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_gemm), cmocka_unit_test(test_matmul)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
