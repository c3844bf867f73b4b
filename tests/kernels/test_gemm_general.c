/*
 * test_gemm_general.c: the general product C = alpha op(A) op(B) + beta C of the CPU
 * backend (finch_cpu_gemm, kernels/cpu/gemm.c) against a double-accumulating loop, for
 * every transpose pair, alpha 1 and not, beta 0 and 1, on shapes of the LoRA products
 * (one side the rank) that take each of its paths: operands copied transposed (direct),
 * the transposed product (swapped), short sums over a wide C and products too large for
 * its scratch (both OpenBLAS). Strides are wider than the rows; columns of C past N must
 * be left alone, and beta 0 must overwrite C whatever it held. On finch's own kernel,
 * results must not depend on the thread count (OpenBLAS's may).
 *
 * Tolerance as in test_gemm.c: 4e-6 * (sum |alpha a_k b_k| + |beta c|) (+1e-6).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_weights.h" /* rand_vec */

#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"
#include "test_util.h" /* test_backend, test_require_isa */

/* op(X)[i][k] for X stored row-major with stride ld, transposed when t */
static double at(const float *X, int64_t ld, bool t, int64_t i, int64_t k) {
    return t ? X[k * ld + i] : X[i * ld + k];
}

static void check(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta,
                  bool own, finch_rng *r) {
    /* stored shapes: A (M, K) or (K, M), B (K, N) or (N, K) */
    const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    const int64_t lda = ac + 3, ldb = bc + 5, ldc = N + 2;
    float *A = rand_vec(r, (ar ? ar : 1) * lda, 1.0f), *B = rand_vec(r, (br ? br : 1) * ldb, 1.0f);
    float *C = rand_vec(r, M * ldc, 1.0f), *C0 = malloc((size_t)(M * ldc) * sizeof *C0);
    float *C1 = malloc((size_t)(M * ldc) * sizeof *C1);
    assert_non_null(C0);
    assert_non_null(C1);
    if (beta == 0.0f) /* beta 0 must not read C: poison it */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) C[i * ldc + j] = NAN;
    for (int64_t i = 0; i < M * ldc; i++) C0[i] = C1[i] = C[i];
    finch_threads_set(2);
    finch_cpu_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    finch_threads_set(1);
    finch_cpu_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C1, ldc);
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double c = beta != 0.0f ? (double)beta * C0[i * ldc + j] : 0, s = 0, bound = fabs(c);
            for (int64_t k = 0; k < K; k++) {
                double p = at(A, lda, ta, i, k) * at(B, ldb, tb, k, j);
                s += p;
                bound += fabs(alpha * p);
            }
            s = alpha * s + c;
            double e = fabs(C[i * ldc + j] - s);
            if (!(e <= 4e-6 * bound + 1e-6))
                fail_msg("gemm ta=%d tb=%d %lldx%lldx%lld alpha %g beta %g: C[%lld,%lld] = %.9g, "
                         "reference %.9g",
                         ta, tb, (long long)M, (long long)N, (long long)K, alpha, beta,
                         (long long)i, (long long)j, C[i * ldc + j], s);
            if (own && memcmp(&C[i * ldc + j], &C1[i * ldc + j], sizeof(float)))
                fail_msg("gemm ta=%d tb=%d %lldx%lldx%lld: C[%lld,%lld] = %.9g on 2 threads, "
                         "%.9g on 1",
                         ta, tb, (long long)M, (long long)N, (long long)K, (long long)i,
                         (long long)j, C[i * ldc + j], C1[i * ldc + j]);
        }
        for (int64_t j = N; j < ldc; j++)
            if (memcmp(&C[i * ldc + j], &C0[i * ldc + j], sizeof(float)))
                fail_msg("gemm ta=%d tb=%d %lldx%lldx%lld wrote C[%lld,%lld] past N", ta, tb,
                         (long long)M, (long long)N, (long long)K, (long long)i, (long long)j);
    }
    free(A);
    free(B);
    free(C);
    free(C0);
    free(C1);
}

static void test_gemm_general(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 11);
    /* T tokens x rank x width, in the orders LoRA uses them, plus edges */
    /* M, N, K, and 1 where finch's own kernel runs them */
    const int64_t shapes[][4] = {
        {100, 16, 96, 1}, /* u = x A^T: rank-wide output, split by rows */
        {40, 70, 16, 1},  /* y += s u B^T on a small C: a short sum this kernel keeps */
        {130, 80, 16, 0}, /* the same on a wide C: OpenBLAS */
        {70, 16, 40, 1},  /* du = s dy B */
        {16, 100, 48, 1}, /* dA += du^T x: a rank-high C split by columns */
        {90, 16, 130, 1}, /* dB += s dy^T u */
        {3, 5, 7, 1},     {1, 1, 1, 1}, {9, 33, 0, 1}, /* tiny, and K = 0 */
        {300, 200, 8, 0}, /* too large for the scratch: OpenBLAS */
    };
    const float alphas[] = {1.0f, 0.75f}, betas[] = {0.0f, 1.0f};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int t = 0; t < 4; t++)
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 2; b++)
                    check(t & 1, t >> 1 & 1, shapes[s][0], shapes[s][1], shapes[s][2], alphas[a],
                          betas[b], shapes[s][3], &r);
}

int main(void) {
    test_require_isa(FINCH_ISA_STR(FINCH_ISA));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_general),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
