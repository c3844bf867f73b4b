/*
 * gemm_bf16.c: C (M, N) = A (M, K) . B (K, N) with bf16 operands and f32 sums, for the
 * frozen base's products under --bf16 (mixed precision: the base and the activations it
 * meets rounded to bf16, every sum in f32, parameters and optimizer state in f32).
 *
 * Operands are packed once per use:
 *   A  bf16, row-major, rows padded with zeros to a multiple of 32 and columns to a
 *      multiple of 32 (finch_bf16_pack_a; lda = the padded width);
 *   B  "VNNI" panels (finch_bf16_pack_b_*): for each block of 32 columns and each pair of
 *      rows k, k+1, the 32 columns' (B[k][n], B[k+1][n]) pairs, K padded to 32 with zeros.
 * With AMX (Sapphire Rapids on) each 32 x 32 block of C is four 16 x 16 f32 tiles fed by
 * two A and two B tiles per 32 values of K; without it the same rounded operands are
 * multiplied in f32 (exact: a product of two bf16 values fits in f32) and summed by the
 * f32 kernel, so the fallback differs from AMX only in the order of the f32 sums.
 */
#define _GNU_SOURCE /* syscall */
#include "kernels/cpu/cpu.h"

#include <stdlib.h> /* getenv */
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* ---- packing ---------------------------------------------------------------------- */

#if defined(__x86_64__)
#define VEC_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
/* 32 floats to 32 bf16 (round to nearest even; the instruction takes denormals as 0). */
VEC_TARGET static inline void cvt32(uint16_t *d, const float *s) {
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s));
    _mm512_storeu_si512(d, (__m512i)v);
}
/* Whether the vector packers run: the CPUs with AMX have them. */
static bool amx_usable(void);
#endif

#if defined(__x86_64__)
/* Rows i0 .. i0+31 of the transposed A, columns k0 .. k0+31 (both within M and K): 32
 * rows of src converted where they are contiguous, then transposed as 16-bit values. */
VEC_TARGET static void pack_t32(uint16_t *dst, int64_t Kp, const float *src, int64_t lds,
                                int64_t i0, int64_t k0) {
    uint16_t t[32][32];
    for (int kk = 0; kk < 32; kk++) cvt32(t[kk], src + (k0 + kk) * lds + i0);
    for (int ii = 0; ii < 32; ii++)
        for (int kk = 0; kk < 32; kk++) dst[(i0 + ii) * Kp + k0 + kk] = t[kk][ii];
}
#endif

void finch_bf16_pack_a(uint16_t *dst, const float *src, int64_t M, int64_t K, int64_t lds,
                       bool trans) {
    const int64_t Mp = finch_bf16_pad(M), Kp = finch_bf16_pad(K);
#if defined(__x86_64__)
    if (trans && amx_usable()) {
        /* whole 32 x 32 blocks first, then the rest of each row below */
        const int64_t M32 = M / 32 * 32, K32 = K / 32 * 32;
#pragma omp parallel for schedule(static) if (M * K > 65536)
        for (int64_t i0 = 0; i0 < M32; i0 += 32)
            for (int64_t k0 = 0; k0 < K32; k0 += 32) pack_t32(dst, Kp, src, lds, i0, k0);
#pragma omp parallel for schedule(static) if (M * K > 65536)
        for (int64_t i = 0; i < Mp; i++) {
            uint16_t *d = dst + i * Kp;
            int64_t k = i < M32 ? K32 : 0;
            for (; i < M && k < K; k++) d[k] = finch_f32_to_bf16(src[k * lds + i]);
            for (; k < Kp; k++) d[k] = 0;
        }
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (M * K > 65536)
    for (int64_t i = 0; i < Mp; i++) {
        uint16_t *d = dst + i * Kp;
        int64_t k = 0;
        if (i < M && trans) {
            for (; k < K; k++) d[k] = finch_f32_to_bf16(src[k * lds + i]);
        } else if (i < M) {
#if defined(__x86_64__)
            if (amx_usable())
                for (; k + 32 <= K; k += 32) cvt32(d + k, src + i * lds + k);
#endif
            for (; k < K; k++) d[k] = finch_f32_to_bf16(src[i * lds + k]);
        }
        for (; k < Kp; k++) d[k] = 0;
    }
}

/* The packed panel's element for (k, n): panel n / 32, pair k / 2, column n % 32, half
 * k % 2. */
static inline size_t b_index(int64_t Kp, int64_t k, int64_t n) {
    return (size_t)(n / 32) * (size_t)Kp * 32 + (size_t)(k / 2) * 64 + (size_t)(n % 32) * 2 +
           (size_t)(k % 2);
}

#if defined(__x86_64__)
/* Rows k, k + 1 (the second may be absent: zeros) of B from column n0, 32 columns, into
 * their pair row: each column's two values side by side. */
VEC_TARGET static void pack_pair32(uint16_t *d, const float *b0, const float *b1) {
    static const uint16_t lo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                    8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    __m512i x = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(b0 + 16), _mm512_loadu_ps(b0));
    __m512i y = b1 ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(b1 + 16), _mm512_loadu_ps(b1))
                   : _mm512_setzero_si512();
    __m512i idx = _mm512_loadu_si512(lo);
    __m512i hi = _mm512_add_epi16(idx, _mm512_set1_epi16(16));
    _mm512_storeu_si512(d, _mm512_permutex2var_epi16(x, idx, y));
    _mm512_storeu_si512(d + 32, _mm512_permutex2var_epi16(x, hi, y));
}
#endif

void finch_bf16_pack_b_nn(uint16_t *dst, const float *B, int64_t K, int64_t N, int64_t ldb) {
    const int64_t Kp = finch_bf16_pad(K), Np = finch_bf16_pad(N);
    int64_t n1 = 0;
#if defined(__x86_64__)
    if (amx_usable()) {
        n1 = N / 32 * 32;
        /* whole panels: only the pair rows past K are zeroed (an odd K's last pair gets its
         * zero from pack_pair32) */
        const int64_t kp = (K + 1) / 2;
        for (int64_t n = 0; n < n1 && kp < Kp / 2; n += 32)
            memset(dst + b_index(Kp, 2 * kp, n), 0, (size_t)(Kp / 2 - kp) * 64 * sizeof *dst);
    }
#endif
    /* the rest, zeroed whole then filled */
    memset(dst + (size_t)(n1 / 32) * (size_t)Kp * 32, 0,
           (size_t)Kp * (size_t)(Np - n1) * sizeof *dst);
#if defined(__x86_64__)
    if (amx_usable()) {
        for (int64_t k = 0; k < K; k += 2)
            for (int64_t n = 0; n < n1; n += 32)
                pack_pair32(dst + b_index(Kp, k, n), B + k * ldb + n,
                            k + 1 < K ? B + (k + 1) * ldb + n : NULL);
    }
#endif
    for (int64_t k = 0; k < K; k++)
        for (int64_t n = n1; n < N; n++) dst[b_index(Kp, k, n)] = finch_f32_to_bf16(B[k * ldb + n]);
}

#if defined(__x86_64__)
/* The 16 x 16 transpose of 32-bit elements: out[j] holds element j of every r[i]. */
VEC_TARGET static void transpose16(__m512i out[16], const __m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) { /* t: pairs of rows interleaved within 128-bit lanes */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* u[i + c]: rows i .. i + 3 of columns c, c + 4, ... */
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int c = 0; c < 4; c++) { /* the 128-bit lanes of columns c, c + 4, c + 8, c + 12 */
        const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88),
                      v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd),
                      w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88),
                      w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        out[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        out[c + 8] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
        out[c + 4] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        out[c + 12] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
    }
}

/* 16 rows of W from k0 (k0 + 32 <= K) into the panel columns n0.. (n0 a multiple of 16):
 * each row's 16 pairs converted at once, then transposed as 32-bit pairs in registers. */
VEC_TARGET static void pack_rows16(uint16_t *dst, int64_t Kp, int64_t n0, const float *W,
                                   int64_t ldw, int64_t k0) {
    __m512i pairs[16], cols[16];
    for (int r = 0; r < 16; r++)
        pairs[r] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(W + r * ldw + k0 + 16),
                                                _mm512_loadu_ps(W + r * ldw + k0));
    transpose16(cols, pairs);
    uint16_t *out = dst + b_index(Kp, k0, n0);
    for (int j = 0; j < 16; j++) /* pair row k0 / 2 + j: 32 columns of pairs, 128 bytes */
        _mm512_storeu_si512(out + j * 64, cols[j]);
}
#endif

void finch_bf16_pack_b_rows(uint16_t *dst, int64_t Kp, int64_t n0, const float *W, int64_t n,
                            int64_t K, int64_t ldw) {
    int64_t r0 = 0;
#if defined(__x86_64__)
    if (amx_usable() && n0 % 16 == 0)
        for (; r0 + 16 <= n; r0 += 16) {
            int64_t k = 0;
            for (; k + 32 <= K; k += 32) pack_rows16(dst, Kp, n0 + r0, W + r0 * ldw, ldw, k);
            for (int64_t r = r0; r < r0 + 16; r++) {
                for (int64_t kk = k; kk < K; kk++)
                    dst[b_index(Kp, kk, n0 + r)] = finch_f32_to_bf16(W[r * ldw + kk]);
                for (int64_t kk = K; kk < Kp; kk++) dst[b_index(Kp, kk, n0 + r)] = 0;
            }
        }
#endif
    for (int64_t r = r0; r < n; r++) {
        const float *w = W + r * ldw;
        for (int64_t k = 0; k < K; k++) dst[b_index(Kp, k, n0 + r)] = finch_f32_to_bf16(w[k]);
        for (int64_t k = K; k < Kp; k++) dst[b_index(Kp, k, n0 + r)] = 0;
    }
}

/* ---- AMX ---------------------------------------------------------------------------- */

#if defined(__x86_64__)
enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };

/* 1: AMX-BF16 present and the kernel lets this process use its tile registers. */
static int amx_state = -1;

static bool amx_usable(void) {
    int s = __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE);
    if (s < 0) {
        unsigned a, b, c, d;
        bool has = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1);
        if (has && getenv("FINCH_NO_AMX")) has = false;
        s = has && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
        __atomic_store_n(&amx_state, s, __ATOMIC_RELEASE);
    }
    return s == 1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

__attribute__((target("amx-tile,amx-bf16"))) static void amx_configure(void) {
    tile_config cfg = {.palette = 1};
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    /* gcc 12's _tile_loadconfig tells the compiler it reads 8 bytes, so without this the
     * stores above past the palette may be dropped as dead (and the tiles stay unconfigured) */
    __asm__ volatile("" : : "m"(cfg));
    _tile_loadconfig(&cfg);
}

/* One 32 x 32 block of C (rows i0.., columns j0.. of the panel p) into out (32 x 32,
 * row stride ldo floats): tiles 0..3 C, 4..5 A, 6..7 B. */
__attribute__((target("amx-tile,amx-bf16"))) static void amx_block(const uint16_t *A, int64_t lda,
                                                                   const uint16_t *panel,
                                                                   int64_t Kp, float *out,
                                                                   int64_t ldo, bool load) {
    if (load) {
        _tile_loadd(0, out, ldo * 4);
        _tile_loadd(1, out + 16, ldo * 4);
        _tile_loadd(2, out + 16 * ldo, ldo * 4);
        _tile_loadd(3, out + 16 * ldo + 16, ldo * 4);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t k = 0; k < Kp; k += 32) {
        _tile_loadd(4, A + k, lda * 2);
        _tile_loadd(5, A + 16 * lda + k, lda * 2);
        /* the panel's 16 pairs of rows from k: 16 rows of 64 bytes; columns 0..15 are the
         * first 32 bytes of each, 16..31 the next 32 */
        _tile_loadd(6, panel + (k / 2) * 64, 128);
        _tile_loadd(7, panel + (k / 2) * 64 + 32, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, out, ldo * 4);
    _tile_stored(1, out + 16, ldo * 4);
    _tile_stored(2, out + 16 * ldo, ldo * 4);
    _tile_stored(3, out + 16 * ldo + 16, ldo * 4);
}

__attribute__((target("amx-tile,amx-bf16"))) static void amx_release(void) {
    _tile_release();
}
#else
static bool amx_usable(void) {
    return false;
}
#endif

bool finch_bf16_amx(void) {
    return amx_usable();
}

/* ---- the product ------------------------------------------------------------------------ */

/* Without AMX: the rounded operands back in f32, in blocks of 32 rows by KC values of K,
 * through the f32 kernel. */
static void fallback(int64_t M, int64_t N, int64_t K, const uint16_t *A, int64_t lda,
                     const uint16_t *Bp, float *C, int64_t ldc, bool acc) {
    enum { KC = 32 }; /* the blocks of AMX's sums, so chunks of 32 rows give the same bits */
    const int64_t Kp = finch_bf16_pad(K);
    float a[32 * KC], b[KC * 32];
    for (int64_t j0 = 0; j0 < N; j0 += 32) {
        const int64_t nj = N - j0 < 32 ? N - j0 : 32;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            for (int64_t k = 0; k < kc; k++)
                for (int64_t j = 0; j < nj; j++)
                    b[k * nj + j] = finch_bf16_to_f32(Bp[b_index(Kp, k0 + k, j0 + j)]);
            for (int64_t i0 = 0; i0 < M; i0 += 32) {
                const int64_t ni = M - i0 < 32 ? M - i0 : 32;
                for (int64_t i = 0; i < ni; i++)
                    for (int64_t k = 0; k < kc; k++)
                        a[i * kc + k] = finch_bf16_to_f32(A[(i0 + i) * lda + k0 + k]);
                finch_cpu_sgemm_nn(ni, nj, kc, a, kc, b, nj, C + i0 * ldc + j0, ldc, acc || k0 > 0);
            }
        }
    }
}

void finch_cpu_gemm_bf16(int64_t M, int64_t N, int64_t K, const uint16_t *A, int64_t lda,
                         const uint16_t *Bp, float *C, int64_t ldc, bool acc) {
    if (M <= 0 || N <= 0) return;
    if (!amx_usable()) {
        fallback(M, N, K, A, lda, Bp, C, ldc, acc);
        return;
    }
#if defined(__x86_64__)
    const int64_t Kp = finch_bf16_pad(K);
    float edge[32 * 32];
    amx_configure();
    for (int64_t j0 = 0; j0 < N; j0 += 32) {
        const uint16_t *panel = Bp + (size_t)(j0 / 32) * (size_t)Kp * 32;
        const int64_t nj = N - j0 < 32 ? N - j0 : 32;
        for (int64_t i0 = 0; i0 < M; i0 += 32) {
            const int64_t ni = M - i0 < 32 ? M - i0 : 32;
            if (ni == 32 && nj == 32) {
                amx_block(A + i0 * lda, lda, panel, Kp, C + i0 * ldc + j0, ldc, acc);
                continue;
            }
            /* a partial block: through a 32 x 32 buffer (A's padding rows are zeros) */
            for (int64_t i = 0; i < 32; i++)
                for (int64_t j = 0; j < 32; j++)
                    edge[i * 32 + j] = acc && i < ni && j < nj ? C[(i0 + i) * ldc + j0 + j] : 0;
            amx_block(A + i0 * lda, lda, panel, Kp, edge, 32, true);
            for (int64_t i = 0; i < ni; i++)
                memcpy(C + (i0 + i) * ldc + j0, edge + i * 32, (size_t)nj * sizeof *C);
        }
    }
    amx_release();
#endif
}
