/*
 * test_gemm.c: the single-threaded product behind the tiled matmuls (finch_cpu_sgemm_nn,
 * kernels/cpu/gemm.c) against a double-accumulating loop, on shapes that hit every edge
 * of its blocking: row counts around its 8-row blocks, column counts around its 32-column
 * panels (masked tails), K across its 1024 block, row strides wider than the rows, and
 * both C = and C +=. Columns of C past N must be left alone.
 *
 * Tolerance as in test_kernels.c: 4e-6 * sum |a_k b_k| (+1e-6) per element, f32
 * accumulation of up to 1100 terms.
 *
 * Also finch_fmaf (cpu.h), the fused multiply-add of the llamacpp numerics, which this copy
 * compiles either to the instruction or to its emulation in double: libm's fmaf's bits.
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

static void check_ldb(int64_t M, int64_t N, int64_t K, int64_t ldb, bool acc, finch_rng *r) {
    const int64_t lda = K + 3, ldc = N + 2;
    float *A = rand_vec(r, M * lda, 1.0f), *B = rand_vec(r, (K ? K : 1) * ldb, 1.0f);
    float *C = rand_vec(r, M * ldc, 1.0f), *C0 = malloc((size_t)(M * ldc) * sizeof *C0);
    for (int64_t i = 0; i < M * ldc; i++) C0[i] = C[i];
    finch_cpu_sgemm_nn(M, N, K, A, lda, B, ldb, C, ldc, acc);
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double s = acc ? C0[i * ldc + j] : 0, bound = fabs(s);
            for (int64_t k = 0; k < K; k++) {
                s += (double)A[i * lda + k] * B[k * ldb + j];
                bound += fabs((double)A[i * lda + k] * B[k * ldb + j]);
            }
            double e = fabs(C[i * ldc + j] - s);
            if (e > 4e-6 * bound + 1e-6)
                fail_msg("sgemm %lldx%lldx%lld acc=%d: C[%lld,%lld] = %.9g, reference %.9g",
                         (long long)M, (long long)N, (long long)K, acc, (long long)i, (long long)j,
                         C[i * ldc + j], s);
        }
        for (int64_t j = N; j < ldc; j++)
            if (C[i * ldc + j] != C0[i * ldc + j])
                fail_msg("sgemm %lldx%lldx%lld wrote C[%lld,%lld] past N", (long long)M,
                         (long long)N, (long long)K, (long long)i, (long long)j);
    }
    free(A);
    free(B);
    free(C);
    free(C0);
}

static void check(int64_t M, int64_t N, int64_t K, bool acc, finch_rng *r) {
    check_ldb(M, N, K, N + 5, acc, r);
}

static void test_gemm_shapes(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 7);
    const int64_t Ms[] = {1, 7, 8, 9, 17}, Ns[] = {1, 15, 16, 17, 31, 32, 33, 70};
    const int64_t Ks[] = {0, 1, 5, 64};
    for (size_t a = 0; a < sizeof Ms / sizeof *Ms; a++)
        for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++)
            for (size_t c = 0; c < sizeof Ks / sizeof *Ks; c++)
                for (int acc = 0; acc < 2; acc++) check(Ms[a], Ns[b], Ks[c], acc, &r);
    /* K across k blocks (256 wide in vector extensions, 1024 in AVX-512), with and without
     * accumulation */
    check(9, 40, 1100, false, &r);
    check(9, 40, 1100, true, &r);
    /* many rows of A (several row bands) over B with rows a multiple of 64 floats apart
     * (its panels copied), K across k blocks */
    check_ldb(400, 40, 300, 64, false, &r);
    check_ldb(400, 70, 600, 128, true, &r);
}

/* The same inputs give the same bits, whatever the row blocking: the rows of a product
 * computed alone equal the same rows computed as part of a larger product. */
static void test_gemm_rows_independent(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 11);
    /* 21 rows read B in place; 400 rows span row bands, and with B's rows 64 floats apart
     * its panels are copied */
    const int64_t Ms[] = {21, 400}, N = 45, K = 300, ldbs[] = {45, 64};
    for (int c = 0; c < 2; c++) {
        const int64_t M = Ms[c], ldb = ldbs[c];
        float *A = rand_vec(&r, M * K, 1.0f), *B = rand_vec(&r, K * ldb, 1.0f);
        float *C = malloc((size_t)(M * N) * sizeof *C), *C1 = malloc((size_t)N * sizeof *C1);
        finch_cpu_sgemm_nn(M, N, K, A, K, B, ldb, C, N, false);
        for (int64_t i = 0; i < M; i++) {
            finch_cpu_sgemm_nn(1, N, K, A + i * K, K, B, ldb, C1, N, false);
            for (int64_t j = 0; j < N; j++) assert_true(C1[j] == C[i * N + j]);
        }
        free(A);
        free(B);
        free(C);
        free(C1);
    }
}

/* finch_fmaf equals fmaf bit for bit on random operands of any exponent, on integer
 * multipliers like matmul_q8's lane sums, and where c nearly cancels a b. */
static void test_fmaf(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 3);
    for (int i = 0; i < 3000000; i++) {
        float a = ldexpf(randn(&r), (int)(finch_rng_u64(&r) % 60) - 30);
        float b = i % 2 ? (float)((int)(finch_rng_u64(&r) % 131072) - 65536) : randn(&r);
        float c = i % 3 ? ldexpf(randn(&r), (int)(finch_rng_u64(&r) % 60) - 30)
                        : -a * b * (1.0f + (float)(finch_rng_u64(&r) % 16) * 0x1p-23f);
        float want = fmaf(a, b, c), got = finch_fmaf(a, b, c);
        if (memcmp(&want, &got, sizeof want))
            fail_msg("finch_fmaf(%a, %a, %a) = %a, fmaf %a", a, b, c, got, want);
    }
}

int main(void) {
    test_require_isa(FINCH_ISA_STR(FINCH_ISA));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_shapes),
        cmocka_unit_test(test_gemm_rows_independent),
        cmocka_unit_test(test_fmaf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
