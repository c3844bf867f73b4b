/*
 * gemm.c: the single-threaded f32 product behind the tiled matmuls, C (M, N) = or +=
 * A (M, K) . B (K, N), all row-major with row strides.
 *
 * With AVX-512 it is finch's own register-blocked kernel: each 8 x 32 block of C lives in
 * 16 zmm accumulators while k runs over a block of KC, one broadcast of A and two loads of
 * B per step. B is read in place (its rows are the tiles the matmuls dequantize), so there
 * is no packing. It runs near the core's FMA peak whichever core type OpenBLAS picked for
 * the machine (its DYNAMIC_ARCH, or OPENBLAS_CORETYPE, may select AVX2 kernels on AVX-512
 * CPUs it does not know, at half the speed). Without AVX-512 the same blocking runs on
 * GCC vector extensions at the target's width (AVX2 with FMA, SSE2, NEON) in 6 x 16
 * blocks, with k blocks of 256 (B's panel, 16 KB, stays in L1) and A taken in row bands
 * that stay in L2 while every panel passes over them; B's last partial panel is copied
 * into a padded one. Zen 3, one core, 512 x 64 x 576: 49 GFLOP/s before the bands, the
 * broadcast loads and the padded tiles (matmul.c), 84-92 after; OpenBLAS's Zen kernels 45.
 * Each C element is summed over k in a fixed order, so results are the same run to run
 * and a row's bits do not depend on the others.
 *
 * The backend's general product (finch_cpu_gemm, the LoRA products) runs on the same
 * kernel where it wins, split across the kernel threads; the rest goes to OpenBLAS.
 */
#include "kernels/cpu/cpu.h"

#include <cblas.h>
#include <strings.h> /* strcasecmp */
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>

enum { MR = 8, NR = 32, KC = 1024 };

/* C[0..mr) x [0..32) (masked to m0/m1 columns) = or += A[0..mr) x [0..kc) . B[0..kc) x
 * [0..32). mr and wide (false: only the first 16 columns, m1 is empty) are constants in
 * every inlined copy, so the accumulators stay in registers and a narrow panel (N <= 16,
 * the rank of an adapter) runs no FMAs on empty lanes. */
static inline __attribute__((always_inline)) void block(int mr, bool wide, int64_t kc,
                                                        const float *A, int64_t lda, const float *B,
                                                        int64_t ldb, float *C, int64_t ldc,
                                                        __mmask16 m0, __mmask16 m1, bool acc) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < mr) {
            c0[i] = c1[i] = _mm512_setzero_ps();
            /* C is read back after the k loop: start its lines on the way now (with a short
             * K, the loop is too brief to hide the misses otherwise) */
            if (acc) _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
            if (acc && wide) _mm_prefetch((const char *)(C + i * ldc + 16), _MM_HINT_T0);
        }
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_maskz_loadu_ps(m0, B + k * ldb);
        __m512 b1 = wide ? _mm512_maskz_loadu_ps(m1, B + k * ldb + 16) : b0;
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
            if (i < mr) {
                __m512 a = _mm512_set1_ps(A[i * lda + k]);
                c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
                if (wide) c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
            }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++)
        if (i < mr) {
            float *c = C + i * ldc;
            if (acc) {
                c0[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), c0[i]);
                if (wide) c1[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), c1[i]);
            }
            _mm512_mask_storeu_ps(c, m0, c0[i]);
            if (wide) _mm512_mask_storeu_ps(c + 16, m1, c1[i]);
        }
}

/* One column panel (up to 32 wide, or 16 when not wide) over all rows of A for one k
 * block. */
static inline __attribute__((always_inline)) void
panel_rows(bool wide, int64_t M, int64_t kc, const float *A, int64_t lda, const float *B,
           int64_t ldb, float *C, int64_t ldc, __mmask16 m0, __mmask16 m1, bool acc) {
    int64_t i = 0;
    for (; i + MR <= M; i += MR)
        block(MR, wide, kc, A + i * lda, lda, B, ldb, C + i * ldc, ldc, m0, m1, acc);
    A += i * lda, C += i * ldc;
    switch (M - i) { /* the last M % 8 rows, each count its own unrolled copy */
    case 7:
        block(7, wide, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
        break;
    case 6:
        block(6, wide, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
        break;
    case 5:
        block(5, wide, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
        break;
    case 4:
        block(4, wide, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
        break;
    case 3:
        block(3, wide, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
        break;
    case 2:
        block(2, wide, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
        break;
    case 1:
        block(1, wide, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
        break;
    default:
        break;
    }
}

static void panel(int64_t M, int64_t kc, const float *A, int64_t lda, const float *B, int64_t ldb,
                  float *C, int64_t ldc, __mmask16 m0, __mmask16 m1, bool acc) {
    if (m1)
        panel_rows(true, M, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
    else
        panel_rows(false, M, kc, A, lda, B, ldb, C, ldc, m0, m1, acc);
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

#else /* no AVX-512 */
#include <string.h>
#if defined(__aarch64__)
#include <arm_neon.h>
#elif defined(__AVX__)
#include <immintrin.h>
#endif

#if defined(__AVX__)
enum { VL = 8 };
#else
enum { VL = 4 };
#endif
enum { MR = 6, NR = 2 * VL, KC = 256, MC_BYTES = 192 * 1024 };
typedef float vf __attribute__((vector_size(VL * sizeof(float))));

static inline vf vload(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vstore(float *p, vf v) {
    memcpy(p, &v, sizeof v);
}
/* *p in every lane, one broadcast load (a vector-extension splat would add 0.0f first,
 * as -0.0f + 0.0f is not -0.0f, and broadcast from a register after) */
static inline vf vsplat(const float *p) {
#if defined(__aarch64__)
    return vld1q_dup_f32(p);
#elif defined(__AVX__)
    return _mm256_broadcast_ss(p);
#else
    vf v;
    for (int l = 0; l < VL; l++) v[l] = *p;
    return v;
#endif
}
/* c + a b, fused where the target has FMA (results differ from the unfused path in the
 * last bits only) */
static inline vf vfma(vf a, vf b, vf c) {
#if defined(__aarch64__)
    return vfmaq_f32(c, a, b);
#elif defined(__FMA__) && defined(__AVX__)
    return _mm256_fmadd_ps(a, b, c);
#else
    return c + a * b;
#endif
}

/* C[0..mr) x [0..n) = or += A[0..mr) x [0..kc) . B[0..kc) x [0..NR), B with row stride ldb
 * and NR columns readable (n <= NR of them are C's). */
static inline __attribute__((always_inline)) void block(int mr, int64_t kc, const float *A,
                                                        int64_t lda, const float *B, int64_t ldb,
                                                        float *C, int64_t ldc, int64_t n,
                                                        bool acc) {
    vf c0[MR], c1[MR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        if (i < mr) c0[i] = c1[i] = (vf){0};
    for (int64_t k = 0; k < kc; k++) {
        vf b0 = vload(B + k * ldb), b1 = vload(B + k * ldb + VL);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++)
            if (i < mr) {
                vf a = vsplat(A + i * lda + k);
                c0[i] = vfma(a, b0, c0[i]);
                c1[i] = vfma(a, b1, c1[i]);
            }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        if (i < mr) {
            float *c = C + i * ldc;
            if (n == NR) {
                if (acc) c0[i] = vload(c) + c0[i], c1[i] = vload(c + VL) + c1[i];
                vstore(c, c0[i]);
                vstore(c + VL, c1[i]);
            } else {
                float t[NR];
                vstore(t, c0[i]);
                vstore(t + VL, c1[i]);
                for (int64_t j = 0; j < n; j++) c[j] = acc ? c[j] + t[j] : t[j];
            }
        }
}

static void panel(int64_t M, int64_t kc, const float *A, int64_t lda, const float *B, int64_t ldb,
                  float *C, int64_t ldc, int64_t n, bool acc) {
    int64_t i = 0;
    for (; i + MR <= M; i += MR) block(MR, kc, A + i * lda, lda, B, ldb, C + i * ldc, ldc, n, acc);
    A += i * lda, C += i * ldc;
    switch (M - i) { /* the last M % MR rows, each count its own unrolled copy */
    case 5:
        block(5, kc, A, lda, B, ldb, C, ldc, n, acc);
        break;
    case 4:
        block(4, kc, A, lda, B, ldb, C, ldc, n, acc);
        break;
    case 3:
        block(3, kc, A, lda, B, ldb, C, ldc, n, acc);
        break;
    case 2:
        block(2, kc, A, lda, B, ldb, C, ldc, n, acc);
        break;
    case 1:
        block(1, kc, A, lda, B, ldb, C, ldc, n, acc);
        break;
    default:
        break;
    }
}

void finch_cpu_sgemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate) {
    if (M <= 0 || N <= 0) return;
    float pad[KC * NR]; /* B's panel copied, NR wide, zeros past N */
    /* B's rows a multiple of 64 floats apart put a panel in a sixteenth of the L1 sets or
     * fewer (dW's x at 1536 columns: 2 of 64), so such a panel is copied into one line per
     * k when enough rows of A reuse it; the tiles matmul.c lays out are read in place */
    const bool pack = ldb % 64 == 0 && M > 2 * MR;
    for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += KC) {
        int64_t kc = K - k0 < KC ? K - k0 : KC;
        bool acc = accumulate || k0 > 0;
        /* rows of A in bands of about MC_BYTES, so the band stays in L2 while every column
         * panel of B passes over it (at 512 x 576, A is 1.2 MB: without bands it streamed
         * from L3 once per panel) */
        int64_t mc = MC_BYTES / ((int64_t)sizeof(float) * (kc > 0 ? kc : 1)) / MR * MR;
        if (mc < MR) mc = MR;
        for (int64_t i0 = 0; i0 < M; i0 += mc) {
            int64_t m = M - i0 < mc ? M - i0 : mc;
            for (int64_t j = 0; j < N; j += NR) {
                int64_t n = N - j < NR ? N - j : NR;
                const float *b = B + k0 * ldb + j;
                int64_t lb = ldb;
                if (n < NR || pack) {
                    for (int64_t k = 0; k < kc; k++) {
                        memcpy(pad + k * NR, b + k * ldb, (size_t)n * sizeof(float));
                        memset(pad + k * NR + n, 0, (size_t)(NR - n) * sizeof(float));
                    }
                    b = pad, lb = NR;
                }
                panel(m, kc, A + i0 * lda + k0, lda, b, lb, C + i0 * ldc + j, ldc, n, acc);
            }
        }
    }
}
#endif

/* ---- finch_cpu_gemm on the kernel above: the adapter products (rank r, T tokens) ------ */

/* Floats of stack scratch for transposed operands and results; larger products go to
 * OpenBLAS. An adapter of rank 16 on a 1536-wide layer over 512 tokens needs 32K. */
enum { GEMM_SCRATCH = 48 * 1024 };

/* dst (rows, cols) = alpha src^T, src (cols, rows) with row stride ld: src is read along
 * its rows. */
static void transpose(float *dst, const float *src, int64_t ld, int64_t rows, int64_t cols,
                      float alpha) {
    for (int64_t j = 0; j < cols; j++)
        for (int64_t i = 0; i < rows; i++) dst[i * cols + j] = alpha * src[j * ld + i];
}

/* C (M, N) = or += A (M, K) . B (K, N) on the kernel threads: N is split in multiples of 32
 * when wide, else M in multiples of 8. Each element is summed by one thread in the
 * kernel's fixed order, so the split (and the thread count) does not change results. */
static void sgemm_par(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                      int64_t ldb, float *C, int64_t ldc, bool acc) {
    const bool by_cols = N >= 64 && M < 64;
    const int64_t units = by_cols ? (N + 31) / 32 : (M + 7) / 8;
#pragma omp parallel if (M * N * K >= 65536)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        int64_t u0 = units * tid / nth, u1 = units * (tid + 1) / nth;
        if (by_cols) {
            int64_t j0 = u0 * 32, j1 = u1 * 32 < N ? u1 * 32 : N;
            finch_cpu_sgemm_nn(M, j1 - j0, K, A, lda, B + j0, ldb, C + j0, ldc, acc);
        } else {
            int64_t i0 = u0 * 8, i1 = u1 * 8 < M ? u1 * 8 : M;
            finch_cpu_sgemm_nn(i1 - i0, N, K, A + i0 * lda, lda, B, ldb, C + i0 * ldc, ldc, acc);
        }
    }
}

/* Whether OpenBLAS runs kernels for this copy's instruction set: its core type detection
 * does not know every CPU (OpenBLAS 0.3.21 takes a Sapphire Rapids for a generic x86-64
 * and runs SSE kernels there, unless OPENBLAS_CORETYPE says otherwise). */
static bool blas_matches(void) {
#if defined(__AVX512F__) || defined(__AVX2__)
    static const char *const cores[] = {
#if !defined(__AVX512F__)
        "haswell",
        "zen",
        "skylake",
#endif
        "skylakex",
        "cooperlake",
        "sapphirerapids"
    };
    const char *name = openblas_get_corename();
    for (size_t i = 0; name && i < sizeof cores / sizeof cores[0]; i++)
        if (!strcasecmp(name, cores[i])) return true;
    return false;
#else
    return true;
#endif
}

/* Two ways to reach the row-major (M, K) . (K, N) form the kernel takes:
 *  - direct: C = op(A) op(B), copying the operands that are transposed (alpha folded into
 *    one copy; with no copy and alpha != 1, C is scaled after, which needs beta 0);
 *  - swapped: C^T = op(B)^T op(A)^T into scratch, then C = alpha (C^T)^T + beta C.
 * The one copying fewer floats runs. For LoRA: u = x A^T copies A (r rows); dB += s dy^T u
 * and dA += du^T x copy u or du (r columns); du = s dy B copies nothing. Other betas,
 * products needing more scratch, and short sums over a wide C go to OpenBLAS (the latter
 * only when it runs kernels for this instruction set). */
void finch_cpu_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    const bool acc = beta == 1.0f;
    const int64_t big = INT64_MAX / 4;
    int64_t direct = (ta ? M * K : 0) + (tb ? K * N : 0);
    int64_t swapped = (tb ? 0 : K * N) + (ta ? 0 : M * K) + M * N;
    if (!ta && !tb && alpha != 1.0f && acc) direct = big;
    /* A short sum over a wide C (y += s u B^T, dx += du A: K = r) is bound by C's memory
     * traffic, which OpenBLAS streams faster than this kernel does when it runs its kernels
     * for this CPU (1.6x at 512 x 1536 x 16 on AVX-512); on its generic ones it is 2.3x
     * slower than this kernel. */
    const bool short_k = K < 64 && M * N > 64 * 64 && blas_matches();
    if ((beta != 0.0f && !acc) || short_k || (direct > GEMM_SCRATCH && swapped > GEMM_SCRATCH)) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
        return;
    }
    const bool swap = swapped < direct;
    float scratch[swap ? swapped : direct > 0 ? direct : 1];
    float *p = scratch;
    if (!swap) {
        /* op(A) (M, K), op(B) (K, N) */
        const float *a = A, *b = B;
        int64_t la = lda, lb = ldb;
        float fold = alpha; /* alpha goes into the first copy made */
        if (ta) {
            transpose(p, A, lda, M, K, fold);
            a = p, la = K, p += M * K, fold = 1.0f;
        }
        if (tb) {
            transpose(p, B, ldb, K, N, fold);
            b = p, lb = N, fold = 1.0f;
        }
        sgemm_par(M, N, K, a, la, b, lb, C, ldc, acc);
        if (fold != 1.0f) /* no copy took alpha: beta is 0 here */
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) C[i * ldc + j] *= fold;
        return;
    }
    /* op(B)^T (N, K), op(A)^T (K, M), C^T (N, M) */
    const float *bt = B, *at = A;
    int64_t lbt = ldb, lat = lda;
    if (!tb) {
        transpose(p, B, ldb, N, K, 1.0f);
        bt = p, lbt = K, p += N * K;
    }
    if (!ta) {
        transpose(p, A, lda, K, M, 1.0f);
        at = p, lat = M, p += K * M;
    }
    float *ct = p;
    sgemm_par(N, M, K, bt, lbt, at, lat, ct, M, false);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float v = alpha * ct[j * M + i];
            C[i * ldc + j] = acc ? C[i * ldc + j] + v : v;
        }
}
