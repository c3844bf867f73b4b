/*
 * gemm.c: the single-threaded f32 product behind the tiled matmuls, C (M, N) = or +=
 * A (M, K) . B (K, N), all row-major with row strides.
 *
 * With AVX-512 it is finch's own register-blocked kernel: each 8 x 32 block of C lives in
 * 16 zmm accumulators while k runs over a block of KC, one broadcast of A and two loads of
 * B per step. B is read in place (its rows are the tiles the matmuls dequantize), so there
 * is no packing. It runs near the core's FMA peak whichever core type OpenBLAS picked for
 * the machine (its DYNAMIC_ARCH, or OPENBLAS_CORETYPE, may select AVX2 kernels on AVX-512
 * CPUs it does not know, at half the speed). Each C element is summed over k in a fixed
 * order, so results are the same run to run. Without AVX-512 it is OpenBLAS's sgemm.
 */
#include "kernels/cpu/cpu.h"

#if defined(__AVX512F__)
#include <immintrin.h>

enum { MR = 8, NR = 32, KC = 1024 };

/* C[0..mr) x [0..32) (masked to m0/m1 columns) = or += A[0..mr) x [0..kc) . B[0..kc) x
 * [0..32). mr is a constant in every inlined copy, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void block(int mr, int64_t kc, const float *A,
                                                        int64_t lda, const float *B, int64_t ldb,
                                                        float *C, int64_t ldc, __mmask16 m0,
                                                        __mmask16 m1, bool acc) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < mr) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_maskz_loadu_ps(m0, B + k * ldb);
        __m512 b1 = _mm512_maskz_loadu_ps(m1, B + k * ldb + 16);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
            if (i < mr) {
                __m512 a = _mm512_set1_ps(A[i * lda + k]);
                c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
            }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < mr) {
            float *c = C + i * ldc;
            if (acc) {
                c0[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), c0[i]);
                c1[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), c1[i]);
            }
            _mm512_mask_storeu_ps(c, m0, c0[i]);
            _mm512_mask_storeu_ps(c + 16, m1, c1[i]);
        }
}

/* One column panel (up to 32 wide) over all rows of A for one k block. */
static void panel(int64_t M, int64_t kc, const float *A, int64_t lda, const float *B, int64_t ldb,
                  float *C, int64_t ldc, __mmask16 m0, __mmask16 m1, bool acc) {
    int64_t i = 0;
    for (; i + MR <= M; i += MR) block(MR, kc, A + i * lda, lda, B, ldb, C + i * ldc, ldc, m0, m1, acc);
    A += i * lda, C += i * ldc;
    switch (M - i) { /* the last M % 8 rows, each count its own unrolled copy */
    case 7: block(7, kc, A, lda, B, ldb, C, ldc, m0, m1, acc); break;
    case 6: block(6, kc, A, lda, B, ldb, C, ldc, m0, m1, acc); break;
    case 5: block(5, kc, A, lda, B, ldb, C, ldc, m0, m1, acc); break;
    case 4: block(4, kc, A, lda, B, ldb, C, ldc, m0, m1, acc); break;
    case 3: block(3, kc, A, lda, B, ldb, C, ldc, m0, m1, acc); break;
    case 2: block(2, kc, A, lda, B, ldb, C, ldc, m0, m1, acc); break;
    case 1: block(1, kc, A, lda, B, ldb, C, ldc, m0, m1, acc); break;
    default: break;
    }
}

void finch_cpu_sgemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate) {
    if (M <= 0 || N <= 0) return;
    /* K blocks of KC keep a 32-column panel of B (KC x 128 bytes) in L2 while it is reused
     * by every row block of A; later blocks add into C. */
    for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += KC) {
        int64_t kc = K - k0 < KC ? K - k0 : KC;
        bool acc = accumulate || k0 > 0;
        for (int64_t j = 0; j < N; j += NR) {
            int64_t n = N - j < NR ? N - j : NR;
            __mmask16 m0 = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
            __mmask16 m1 = n >= 32 ? 0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
            panel(M, kc, A + k0, lda, B + k0 * ldb + j, ldb, C + j, ldc, m0, m1, acc);
        }
    }
}

#else
#include <cblas.h>

void finch_cpu_sgemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A,
                (int)lda, B, (int)ldb, accumulate ? 1.0f : 0.0f, C, (int)ldc);
}
#endif
