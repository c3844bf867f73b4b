/*
 * matmul.c: y (T, rows) = x (T, cols) . W^T with W in its storage type.
 *
 * Two paths, chosen by T:
 *  - few tokens (generation): a fused dot product per (row, token) that expands each
 *    quantized block in registers and multiplies it with x in f32 (quant_rows.c); W is
 *    read once per call, rows are split across threads;
 *  - many tokens (prompt, training): each thread dequantizes a tile of TILE_ROWS rows
 *    (quant_rows.c's row dequantizers) into its workspace slice and multiplies it with all of x
 * through the single-threaded finch_cpu_sgemm_nn (gemm.c), so the base never exists in f32 beyond
 * one tile per thread. Each output element is computed by one thread in a fixed order, so results
 * do not depend on the thread count.
 *
 * Block layouts: core/quant.h (FORMATS.md 2).
 */
#include "kernels/cpu/cpu.h"

#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* GROUP rows of a tile are expanded into staging rows together, then written out
 * column-interleaved (each store run fills one cache line of the tile) */
enum {
    TILE_ROWS = FINCH_CPU_TILE_ROWS,
    TILE_PAD = FINCH_CPU_TILE_PAD,
    GEMV_MAX_T = 3,
    ROWS_MAX_T = 16,
    GROUP = FINCH_CPU_STAGE_ROWS,
    COL_BLOCK = 128, /* dx columns per pass of backward_input */
    MASK_CHUNK = 512 /* rows of W per pass of matmul_backward_masked (264 KB transposed) */
};

static void matmul_gemv(float *y, const float *x, const finch_weight *w, int64_t T) {
    const finch_cpu_dot_fn dot = finch_cpu_row_dot(w->type);
    const int64_t R = w->rows, K = w->cols;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
        finch_cpu_prefetch_row(row, w->row_bytes);
        for (int64_t t = 0; t < T; t++)
            y[t * R + r] =
                dot ? dot(row, x + t * K, K) : finch_cpu_row_dot_blocks(w->type, row, x + t * K, K);
    }
}

#if defined(__AVX512F__)
#include <immintrin.h>
_Static_assert(FINCH_CPU_STAGE_ROWS == 16, "transpose16 writes 16 rows");

static inline __m512 unpacklo_pd(__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
static inline __m512 unpackhi_pd(__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

/* dst[c * ld + i] = src[i][k + c] for i, c < 16: a 16 x 16 block transposed in registers
 * (pairs of rows interleaved, then pairs of pairs, then 128-bit lanes gathered). */
static inline void transpose16(float *dst, int64_t ld, const float *const src[16], int64_t k) {
    __m512 a[16], b[16];
    for (int j = 0; j < 8; j++) {
        const __m512 x = _mm512_loadu_ps(src[2 * j] + k), y = _mm512_loadu_ps(src[2 * j + 1] + k);
        a[2 * j] = _mm512_unpacklo_ps(x, y);
        a[2 * j + 1] = _mm512_unpackhi_ps(x, y);
    }
    /* b[4q + m], 128-bit lane L: rows 4q .. 4q + 3 of column 4L + m */
    for (int q = 0; q < 4; q++) {
        b[4 * q] = unpacklo_pd(a[4 * q], a[4 * q + 2]);
        b[4 * q + 1] = unpackhi_pd(a[4 * q], a[4 * q + 2]);
        b[4 * q + 2] = unpacklo_pd(a[4 * q + 1], a[4 * q + 3]);
        b[4 * q + 3] = unpackhi_pd(a[4 * q + 1], a[4 * q + 3]);
    }
    for (int m = 0; m < 4; m++) {
        const __m512 c1 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0x88);
        const __m512 c2 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0xdd);
        const __m512 d1 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0x88);
        const __m512 d2 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0xdd);
        _mm512_storeu_ps(dst + m * ld, _mm512_shuffle_f32x4(c1, d1, 0x88));
        _mm512_storeu_ps(dst + (4 + m) * ld, _mm512_shuffle_f32x4(c2, d2, 0x88));
        _mm512_storeu_ps(dst + (8 + m) * ld, _mm512_shuffle_f32x4(c1, d1, 0xdd));
        _mm512_storeu_ps(dst + (12 + m) * ld, _mm512_shuffle_f32x4(c2, d2, 0xdd));
    }
}
#endif

/* Rows r0 .. r0 + ng (ng <= GROUP) of W, n columns from byte offset off of each, written
 * transposed into columns c .. c + ng of the tile wt: wt[k * ld + c + g] = W[r0 + g][k]. f32
 * rows are read in place, other types dequantized into stage (rows ls floats apart); a whole
 * group is transposed 16 x 16 in registers where the set has AVX-512. */
static void tile_columns(float *wt, int64_t ld, int64_t c, float *stage, int64_t ls,
                         const finch_weight *w, finch_dequant_fn dequant, int64_t r0, int64_t ng,
                         size_t off, int64_t n) {
    const float *src[GROUP];
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)(r0 + g) * w->row_bytes + off;
        src[g] = (const float *)row;
        if (w->type != FINCH_DTYPE_F32) {
            dequant(stage + g * ls, row, n);
            src[g] = stage + g * ls;
        }
    }
    int64_t k = 0;
#if defined(__AVX512F__)
    if (ng == GROUP)
        for (; k + 16 <= n; k += 16) transpose16(wt + k * ld + c, ld, src, k);
#endif
    for (; k < n; k++)
        for (int64_t g = 0; g < ng; g++) wt[k * ld + c + g] = src[g][k];
}

/* Rows r0 .. r0 + nr of W expanded into the tile wt, transposed: wt[k * ld + r] is W[r0 + r][k].
 * Rows go GROUP at a time through staging rows at stage when grouped (the workspace holds
 * GROUP of them), else one at a time through one. */
static void build_tile(float *wt, float *stage, const finch_weight *w, finch_dequant_fn dequant,
                       int64_t r0, int64_t nr, int64_t ld, bool grouped) {
    const int64_t step = grouped ? GROUP : 1;
    for (int64_t r = 0; r < nr; r += step) {
        const int64_t ng = nr - r < step ? nr - r : step;
        tile_columns(wt, ld, r, stage, w->cols, w, dequant, r0 + r, ng, 0, w->cols);
    }
}

/* The first row of thread tid's band of nth: equal bands, in multiples of 16 rows. */
static int64_t band_start(int64_t R, int tid, int nth) {
    const int64_t r = (R + 15) / 16 * tid / nth * 16;
    return r < R ? r : R;
}

/* The masked products (DoRA's dropout) below: with AVX-512, 16 lanes and fused
 * multiply-adds (the products of one dropped element then take a quarter of the
 * instructions: Xeon, DoRA on SmolLM2, 12 % of a step before); elsewhere finch_v8 values
 * without fused multiply-adds. */
/* Token t's dropped elements are idx[off[t] .. off[t + 1]), in increasing order, with x's
 * values beside them in xv (lists_make). */
typedef struct elem_lists {
    int64_t *off;
    int32_t *idx;
    float *xv;
} elem_lists;

#if defined(__AVX512F__)
#define MASKED_AVX512 1
/* sum_i a[i] b[i] in 64 running sums (element i in sum i % 64: four vectors of fused
 * multiply-adds; a last partial run is masked), added pairwise at the end. */
static inline float dot_masked(const float *a, const float *b, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), a3);
    }
    __m512 *acc[4] = {&a0, &a1, &a2, &a3};
    for (int q = 0; i < n; i += 16, q++) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        *acc[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i),
                                  *acc[q]);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3)));
}

/* dot_masked(a, b, n) and dot_masked(a, c, n) together, each the same sums in the same
 * order, a read once for both. */
static inline void dot_masked2(const float *a, const float *b, const float *c, int64_t n, float *sb,
                               float *sc) {
    __m512 b0 = _mm512_setzero_ps(), b1 = b0, b2 = b0, b3 = b0, c0 = b0, c1 = b0, c2 = b0, c3 = b0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512 x0 = _mm512_loadu_ps(a + i), x1 = _mm512_loadu_ps(a + i + 16);
        const __m512 x2 = _mm512_loadu_ps(a + i + 32), x3 = _mm512_loadu_ps(a + i + 48);
        b0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(b + i), b0);
        c0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(c + i), c0);
        b1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(b + i + 16), b1);
        c1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(c + i + 16), c1);
        b2 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(b + i + 32), b2);
        c2 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(c + i + 32), c2);
        b3 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(b + i + 48), b3);
        c3 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(c + i + 48), c3);
    }
    __m512 *bacc[4] = {&b0, &b1, &b2, &b3}, *cacc[4] = {&c0, &c1, &c2, &c3};
    for (int q = 0; i < n; i += 16, q++) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(m, a + i);
        *bacc[q] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, b + i), *bacc[q]);
        *cacc[q] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, c + i), *cacc[q]);
    }
    *sb = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b2), _mm512_add_ps(b1, b3)));
    *sc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c2), _mm512_add_ps(c1, c3)));
}
#else
/* sum_i a[i] b[i] in 32 running sums (element i in sum i % 32: four vectors, so the adds do
 * not wait on each other; a last partial run of 32 is zero-padded), added pairwise at the end. */
static inline float dot_masked(const float *a, const float *b, int64_t n) {
    finch_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 += finch_load8(a + i) * finch_load8(b + i);
        a1 += finch_load8(a + i + 8) * finch_load8(b + i + 8);
        a2 += finch_load8(a + i + 16) * finch_load8(b + i + 16);
        a3 += finch_load8(a + i + 24) * finch_load8(b + i + 24);
    }
    if (i < n) {
        float ta[32] = {0}, tb[32] = {0};
        memcpy(ta, a + i, (size_t)(n - i) * sizeof *ta);
        memcpy(tb, b + i, (size_t)(n - i) * sizeof *tb);
        a0 += finch_load8(ta) * finch_load8(tb);
        a1 += finch_load8(ta + 8) * finch_load8(tb + 8);
        a2 += finch_load8(ta + 16) * finch_load8(tb + 16);
        a3 += finch_load8(ta + 24) * finch_load8(tb + 24);
    }
    const finch_v8 s = (a0 + a2) + (a1 + a3);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
#endif

#ifdef MASKED_AVX512
/* mask words whose set bits are listed at a time: a row's (4096 elements), a column block's */
enum { IDX_WORDS = 64, COL_WORDS = 8, NV = TILE_ROWS / 16 };

/* The positions of the set bits of the nw words bt, in increasing order, into idx as
 * k0 + 64 i + bit, and with xt not NULL the values xt[64 i + bit] into xv; returns how many
 * (idx and xv hold 64 nw + 16). Without branches on the bits (a compress per 16 of them), so
 * the loops over the list run ahead without mispredictions and their loads from the tile
 * overlap. */
static inline int64_t list_bits(int32_t *idx, float *xv, const uint64_t *bt, int64_t nw, int64_t k0,
                                const float *xt) {
    const __m512i step = _mm512_set1_epi32(16);
    __m512i k =
        _mm512_add_epi32(_mm512_set1_epi32((int)k0),
                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    int64_t n = 0;
    for (int64_t i = 0; i < nw; i++) {
        const uint64_t b = bt[i];
        for (int q = 0; q < 4; q++, k = _mm512_add_epi32(k, step)) {
            const __mmask16 m = (__mmask16)(b >> (16 * q));
            _mm512_storeu_si512(idx + n, _mm512_maskz_compress_epi32(m, k));
            if (xt)
                _mm512_storeu_ps(xv + n, _mm512_maskz_compress_ps(
                                             m, _mm512_maskz_loadu_ps(m, xt + 64 * i + 16 * q)));
            n += __builtin_popcount(m);
        }
    }
    return n;
}

/* The lanes of a tile nr rows wide, in NV vectors. */
static inline void row_masks(__mmask16 lm[NV], int64_t nr) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) {
        const int64_t left = nr - 16 * j;
        lm[j] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
}

/* acc += xv[e] * the tile's row idx[e] for the n listed elements: a tile's 64 sums in four
 * registers, each one chain of fused multiply-adds in list order whatever the tile's width
 * (a narrower tile's vectors masked by lm). */
static inline __attribute__((always_inline)) void masked_acc(__m512 acc[NV], const int32_t *idx,
                                                             const float *xv, int64_t n,
                                                             const float *wt, int64_t ld,
                                                             const __mmask16 lm[NV]) {
    for (int64_t e = 0; e < n; e++) {
        const __m512 av = _mm512_set1_ps(xv[e]);
        const float *wk = wt + (int64_t)idx[e] * ld;
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            acc[j] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(lm[j], wk + 16 * j), acc[j]);
    }
}

/* yt (the tile's width) = it + alpha * acc; it may be yt. */
static inline void masked_store(float *yt, const float *it, const __m512 acc[NV], float alpha,
                                const __mmask16 lm[NV]) {
    const __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
        _mm512_mask_storeu_ps(
            yt + 16 * j, lm[j],
            _mm512_fmadd_ps(al, acc[j], _mm512_maskz_loadu_ps(lm[j], it + 16 * j)));
}

/* masked_row in 16 lanes, the row's elements listed from its bits for this tile alone. */
static void masked_row16(float *yt, const float *xt, const uint64_t *bt, int64_t nw,
                         const float *wt, int64_t ld, int64_t nr, float alpha) {
    __mmask16 lm[NV];
    row_masks(lm, nr);
    __m512 acc[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) acc[j] = _mm512_setzero_ps();
    int32_t idx[IDX_WORDS * 64 + 16];
    float xv[IDX_WORDS * 64 + 16];
    for (int64_t w0 = 0; w0 < nw; w0 += IDX_WORDS) {
        const int64_t n = list_bits(idx, xv, bt + w0, nw - w0 < IDX_WORDS ? nw - w0 : IDX_WORDS,
                                    w0 * 64, xt + w0 * 64);
        masked_acc(acc, idx, xv, n, wt, ld, lm);
    }
    masked_store(yt, yt, acc, alpha, lm);
}

/* Every token's dropped elements listed once for all tiles (rather than from the bits again
 * for each tile, which cost as much as the products at 5 % dropout). */
static void lists_free(elem_lists *L) {
    free(L->off);
    free(L->idx);
    L->off = NULL, L->idx = NULL, L->xv = NULL;
}

/* Lists of the T rows' set bits and (x not NULL) their x values; false (nothing held) when
 * memory is short, and the caller reads the bits itself. */
static bool lists_make(elem_lists *L, const float *x, const uint64_t *bits, int64_t T, int64_t K,
                       int64_t nw) {
    L->idx = NULL;
    L->off = finch_mem_alloc((size_t)(T + 1) * sizeof *L->off);
    if (!L->off) return false;
    L->off[0] = 0;
    for (int64_t t = 0; t < T; t++) {
        int64_t n = 0;
        for (int64_t i = 0; i < nw; i++) n += __builtin_popcountll(bits[t * nw + i]);
        L->off[t + 1] = L->off[t] + n;
    }
    const size_t total = (size_t)L->off[T];
    L->idx = finch_mem_alloc((total + 1) * (sizeof *L->idx + sizeof *L->xv));
    if (!L->idx) {
        lists_free(L);
        return false;
    }
    L->xv = (float *)(L->idx + total + 1);
#pragma omp parallel for schedule(static) if (T * K >= 65536)
    for (int64_t t = 0; t < T; t++) {
        /* listed on the stack, then copied: list_bits writes past its list, where the next
         * token's list is another thread's */
        int32_t idx[IDX_WORDS * 64 + 16];
        float xv[IDX_WORDS * 64 + 16];
        int64_t at = L->off[t];
        for (int64_t w0 = 0; w0 < nw; w0 += IDX_WORDS) {
            const int64_t n =
                list_bits(idx, xv, bits + t * nw + w0, nw - w0 < IDX_WORDS ? nw - w0 : IDX_WORDS,
                          w0 * 64, x ? x + t * K + w0 * 64 : NULL);
            memcpy(L->idx + at, idx, (size_t)n * sizeof *idx);
            if (x) memcpy(L->xv + at, xv, (size_t)n * sizeof *xv);
            at += n;
        }
    }
    return true;
}

/* masked_row16 for every token from its list: y[t * R ..] (nr) = yin[t * R ..] + alpha * the
 * sums (yin may be y). */
static void masked_rows_listed(float *y, const float *yin, int64_t R, const elem_lists *L,
                               const float *wt, int64_t ld, int64_t nr, float alpha, int64_t T) {
    __mmask16 lm[NV];
    row_masks(lm, nr);
    for (int64_t t = 0; t < T; t++) {
        __m512 acc[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) acc[j] = _mm512_setzero_ps();
        masked_acc(acc, L->idx + L->off[t], L->xv + L->off[t], L->off[t + 1] - L->off[t], wt, ld,
                   lm);
        masked_store(y + t * R, yin + t * R, acc, alpha, lm);
    }
}
#endif

/* yt (nr) += alpha * the sum over the elements k that row bits bt selects of
 * xt[k] * wt[k * ld ..], summed in increasing k: a whole tile's 64 sums in registers, a
 * narrower tile's (a band's last) in cache. */
static void masked_row(float *yt, const float *xt, const uint64_t *bt, int64_t nw, const float *wt,
                       int64_t ld, int64_t nr, float alpha) {
#ifdef MASKED_AVX512
    masked_row16(yt, xt, bt, nw, wt, ld, nr, alpha);
#else
    finch_v8 acc[TILE_ROWS / 8] = {{0}};
    const finch_v8 al = {alpha, alpha, alpha, alpha, alpha, alpha, alpha, alpha};
    if (nr == TILE_ROWS) {
        for (int64_t i = 0; i < nw; i++)
            for (uint64_t b = bt[i]; b; b &= b - 1) {
                const int64_t k = i * 64 + __builtin_ctzll(b);
                const float a = xt[k], *wk = wt + k * ld;
                const finch_v8 av = {a, a, a, a, a, a, a, a};
#pragma GCC unroll 8
                for (int j = 0; j < TILE_ROWS / 8; j++) acc[j] += av * finch_load8(wk + 8 * j);
            }
#pragma GCC unroll 8
        for (int j = 0; j < TILE_ROWS / 8; j++)
            finch_store8(yt + 8 * j, finch_load8(yt + 8 * j) + al * acc[j]);
        return;
    }
    float tail[8] = {0}; /* rows past the last multiple of 8 */
    const int64_t nv = nr / 8;
    for (int64_t i = 0; i < nw; i++)
        for (uint64_t b = bt[i]; b; b &= b - 1) {
            const int64_t k = i * 64 + __builtin_ctzll(b);
            const float a = xt[k], *wk = wt + k * ld;
            const finch_v8 av = {a, a, a, a, a, a, a, a};
            for (int64_t j = 0; j < nv; j++) acc[j] += av * finch_load8(wk + 8 * j);
            for (int64_t r = nv * 8; r < nr; r++) tail[r - nv * 8] += a * wk[r];
        }
    for (int64_t j = 0; j < nv; j++)
        finch_store8(yt + 8 * j, finch_load8(yt + 8 * j) + al * acc[j]);
    for (int64_t r = nv * 8; r < nr; r++) yt[r] += alpha * tail[r - nv * 8];
#endif
}

/* Each thread takes an equal band of rows (in multiples of 16, so the kernel's column
 * panels stay full) and walks it in tiles of TILE_ROWS: equal bands rather than whole tiles
 * per thread keep both busy when R is not a multiple of n_threads * TILE_ROWS (R 576 is
 * 9 tiles, R 192 is 3). The tile is stored transposed, (K, nr): column r holds row r0 + r
 * of W, so the product y[:, r0 : r0 + nr] = x . tile reads the tile's rows contiguously
 * (finch_cpu_sgemm_nn). Rows are expanded GROUP at a time into K-float staging rows, in
 * cache, then written into their columns a k at a time, so each run of GROUP stores fills
 * one cache line of the tile (a single staging row, one row at a time, when the workspace
 * is sized for no more). An element's sum does not depend on the band or tile
 * holding its row, so results do not depend on the thread count.
 * With bits NULL, y = x . W^T (matmul); else with ym NULL y += alpha times the product with
 * the elements of x that bits selects (matmul_masked, masked_row), and with ym both from the
 * same tiles: y = x . W^T, ym = y + alpha times that product (matmul_split). With np > 0,
 * p (np, R) = a . W^T from the same tiles too. */
static void over_tiles(float *y, float *ym, const float *x, const uint64_t *bits,
                       const elem_lists *lists, float alpha, const float *a, float *p, int64_t np,
                       const finch_weight *w, int64_t T, finch_workspace *ws) {
    (void)lists; /* read where the AVX-512 lists are built */
    const finch_dequant_fn dequant = finch_cpu_row_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, nw = finch_mask_words(K);
    FINCH_ASSERT(ws && ws->per_thread >= (size_t)((TILE_ROWS + 1) * K));
    const bool grouped = ws->per_thread >= (size_t)((TILE_ROWS + TILE_PAD + GROUP) * K);
    const int64_t pad = grouped ? TILE_PAD : 0;
#pragma omp parallel num_threads(ws->n_threads)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        float *wt = ws->buf + (size_t)tid * ws->per_thread, *stage = wt + (TILE_ROWS + pad) * K;
        const int64_t end = band_start(R, tid + 1, nth);
        for (int64_t r0 = band_start(R, tid, nth); r0 < end; r0 += TILE_ROWS) {
            const int64_t nr = end - r0 < TILE_ROWS ? end - r0 : TILE_ROWS, ld = nr + pad;
            build_tile(wt, stage, w, dequant, r0, nr, ld, grouped);
            if (np > 0) finch_cpu_sgemm_nn(np, nr, K, a, K, wt, ld, p + r0, R, false);
            if (!bits || ym) finch_cpu_sgemm_nn(T, nr, K, x, K, wt, ld, y + r0, R, false);
            if (!bits) continue;
            float *out = ym ? ym : y; /* the masked product's sums go to out, from y */
#ifdef MASKED_AVX512
            if (lists) {
                masked_rows_listed(out + r0, y + r0, R, lists, wt, ld, nr, alpha, T);
                continue;
            }
#endif
            for (int64_t t = 0; t < T; t++) {
                if (ym) memcpy(ym + t * R + r0, y + t * R + r0, (size_t)nr * sizeof *ym);
                masked_row(out + t * R + r0, x + t * K, bits + t * nw, nw, wt, ld, nr, alpha);
            }
        }
    }
}

/* over_tiles with bf16 products: x rounded once into ws->a16, then each thread packs
 * its tiles of W (GROUP rows at a time through f32) into bf16 panels after the staging
 * rows in its slice. */
static void matmul_tiled_bf16(float *y, const float *x, const finch_weight *w, int64_t T,
                              finch_workspace *ws) {
    const finch_dequant_fn dequant = finch_cpu_row_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, Kp = finch_bf16_pad(K);
    FINCH_ASSERT(ws->a16_elems >= (size_t)(finch_bf16_pad(T) * Kp));
    FINCH_ASSERT(ws->per_thread * sizeof(float) >=
                 (size_t)(GROUP * K) * sizeof(float) + finch_bf16_b_size(K, TILE_ROWS) * 2);
    finch_bf16_pack_a(ws->a16, x, T, K, K, false);
#pragma omp parallel num_threads(ws->n_threads)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        float *stage = ws->buf + (size_t)tid * ws->per_thread;
        uint16_t *panel = (uint16_t *)(stage + GROUP * K);
        const int64_t end = band_start(R, tid + 1, nth);
        for (int64_t r0 = band_start(R, tid, nth); r0 < end; r0 += TILE_ROWS) {
            int64_t nr = end - r0 < TILE_ROWS ? end - r0 : TILE_ROWS;
            for (int64_t g0 = 0; g0 < nr; g0 += GROUP) {
                int64_t ng = nr - g0 < GROUP ? nr - g0 : GROUP;
                const uint8_t *rows = (const uint8_t *)w->data + (size_t)(r0 + g0) * w->row_bytes;
                if (w->type == FINCH_DTYPE_F32) { /* packed from the weight's own rows */
                    finch_bf16_pack_b_rows(panel, Kp, g0, (const float *)rows, ng, K,
                                           (int64_t)(w->row_bytes / sizeof(float)));
                    continue;
                }
                for (int64_t g = 0; g < ng; g++)
                    dequant(stage + g * K, rows + (size_t)g * w->row_bytes, K);
                finch_bf16_pack_b_rows(panel, Kp, g0, stage, ng, K, K);
            }
            /* the panel's columns past nr hold an earlier tile's values: they only meet
             * columns of C that gemm_bf16 does not write */
            finch_cpu_gemm_bf16(T, nr, K, ws->a16, Kp, panel, y + r0, R, false);
        }
    }
}

/* A few tokens (up to ROWS_MAX_T; DoRA's A W^T has r of them): each row of W dequantized
 * once into the thread's workspace, then its dot product with every token. Building a
 * transposed tile costs more than a tile's products at so few tokens (Xeon, DoRA on
 * SmolLM2: the tiles of A W^T took 2 % of a step). */
static void matmul_rows(float *y, const float *x, const finch_weight *w, int64_t T,
                        finch_workspace *ws) {
    const finch_dequant_fn dequant = finch_cpu_row_dequant(w->type);
    const finch_cpu_dot_fn dot = finch_cpu_row_dot(FINCH_DTYPE_F32);
    const int64_t R = w->rows, K = w->cols;
    FINCH_ASSERT(dot && ws->per_thread >= (size_t)K);
#pragma omp parallel for schedule(static) num_threads(ws->n_threads)
    for (int64_t r = 0; r < R; r++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
        const float *wr = (const float *)row;
        if (w->type != FINCH_DTYPE_F32) {
            float *buf = ws->buf + (size_t)tid * ws->per_thread;
            dequant(buf, row, K);
            wr = buf;
        }
        for (int64_t t = 0; t < T; t++) y[t * R + r] = dot(wr, x + t * K, K);
    }
}

void finch_cpu_matmul(float *y, const float *x, const finch_weight *w, int64_t T,
                      finch_workspace *ws) {
    FINCH_ASSERT(finch_dtype_info[w->type].dequant);
    if (T <= GEMV_MAX_T || !ws)
        matmul_gemv(y, x, w, T);
    else if (ws->bf16)
        matmul_tiled_bf16(y, x, w, T, ws);
    else if (T <= ROWS_MAX_T)
        matmul_rows(y, x, w, T, ws);
    else
        over_tiles(y, NULL, x, NULL, NULL, 1.0f, NULL, NULL, 0, w, T, ws);
}

/* Thread tid's band of nth of the nb storage blocks of a row: its first column c0 and its
 * width cw (whole blocks, so each band dequantizes on its own). */
static void col_band(const finch_dtype_traits *tr, int64_t nb, int tid, int nth, int64_t *c0,
                     int64_t *cw) {
    const int64_t b0 = nb * tid / nth, b1 = nb * (tid + 1) / nth;
    *c0 = b0 * tr->block_elems;
    *cw = (b1 - b0) * tr->block_elems;
}

/* dx (T, K) = dy (T, R) . W. The sum runs over rows of W, so splitting rows across threads
 * would make them add into the same dx; the threads split the columns instead, in whole
 * blocks of the storage type, so each owns a band of dx. A thread takes its band
 * COL_BLOCK columns at a time (that slice of dx stays in L2 while it is summed; a whole
 * band of 1536 columns over 512 tokens is 3 MB and went to memory once per chunk), walks
 * down W in chunks of as many rows as its workspace slice holds for one column block,
 * dequantizes the chunk's columns (blocks are self-contained, so a row can be expanded
 * from any block on) and adds dy[:, chunk] . chunk into dx with one finch_cpu_sgemm_nn.
 * Each dx element is summed by one thread in an order that depends on neither the thread
 * count nor the band, and W is dequantized once per call. An f32 W is read in place: one
 * product per band. */
/* matmul_backward_input with bf16 products: dy rounded once into ws->a16; each thread
 * packs the rows of its band chunk by chunk (a multiple of 32 rows, through f32) into a
 * bf16 panel after the staging rows in its slice. */
static void backward_input_bf16(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                finch_workspace *ws) {
    const finch_dtype_traits *tr = &finch_dtype_info[w->type];
    const finch_dequant_fn dequant = finch_cpu_row_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, nb = K / tr->block_elems, Rp = finch_bf16_pad(R);
    FINCH_ASSERT(ws->a16_elems >= (size_t)(finch_bf16_pad(T) * Rp));
    finch_bf16_pack_a(ws->a16, dy, T, R, R, false);
#pragma omp parallel num_threads(ws->n_threads)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        int64_t c0, cw;
        col_band(tr, nb, tid, nth, &c0, &cw);
        /* per row of a chunk: cw floats staged, pad(cw) bf16 packed */
        const int64_t per_row = cw * 4 + finch_bf16_pad(cw) * 2;
        int64_t chunk = cw > 0 ? (int64_t)(ws->per_thread * sizeof(float)) / per_row / 32 * 32 : 0;
        if (chunk > Rp) chunk = Rp;
        FINCH_ASSERT(cw == 0 || chunk >= 32);
        float *stage = ws->buf + (size_t)tid * ws->per_thread;
        uint16_t *panel = (uint16_t *)(stage + chunk * cw);
        const size_t off = (size_t)(c0 / tr->block_elems) * tr->block_bytes;
        for (int64_t r0 = 0; cw > 0 && r0 < R; r0 += chunk) {
            int64_t nr = R - r0 < chunk ? R - r0 : chunk;
            const uint8_t *rows = (const uint8_t *)w->data + (size_t)r0 * w->row_bytes + off;
            if (w->type == FINCH_DTYPE_F32) { /* packed from the weight's own rows */
                finch_bf16_pack_b_nn(panel, (const float *)rows, nr, cw,
                                     (int64_t)(w->row_bytes / sizeof(float)));
            } else {
                for (int64_t r = 0; r < nr; r++)
                    dequant(stage + r * cw, rows + (size_t)r * w->row_bytes, cw);
                finch_bf16_pack_b_nn(panel, stage, nr, cw, cw);
            }
            /* A's columns r0.. of the rounded dy; past nr they meet the panel's zero rows */
            finch_cpu_gemm_bf16(T, cw, nr, ws->a16 + r0, Rp, panel, dx + c0, K, r0 > 0);
        }
    }
}

void finch_cpu_matmul_backward_input(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                     finch_workspace *ws) {
    if (ws && ws->bf16 && T > GEMV_MAX_T) {
        backward_input_bf16(dx, dy, w, T, ws);
        return;
    }
    const finch_dtype_traits *tr = &finch_dtype_info[w->type];
    const finch_dequant_fn dequant = finch_cpu_row_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, nb = K / tr->block_elems;
    FINCH_ASSERT(tr->dequant && ws && ws->per_thread >= (size_t)(TILE_ROWS * K));
#pragma omp parallel num_threads(ws->n_threads)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        int64_t c0, cw;
        col_band(tr, nb, tid, nth, &c0, &cw);
        if (cw > 0 && w->type == FINCH_DTYPE_F32) {
            finch_cpu_sgemm_nn(T, cw, R, dy, R, (const float *)w->data + c0,
                               (int64_t)(w->row_bytes / sizeof(float)), dx + c0, K, false);
        } else if (cw > 0) {
            float *wt = ws->buf + (size_t)tid * ws->per_thread;
            /* column blocks of at least COL_BLOCK floats and one storage block */
            const int64_t cb = tr->block_elems > COL_BLOCK ? tr->block_elems : COL_BLOCK;
            const int64_t chunk = (int64_t)(ws->per_thread / (size_t)(cb + TILE_PAD));
            for (int64_t j0 = 0; j0 < cw; j0 += cb) {
                const int64_t n = cw - j0 < cb ? cw - j0 : cb;
                const int64_t ld = n + TILE_PAD; /* an odd number of cache lines: see TILE_PAD */
                const size_t off = (size_t)((c0 + j0) / tr->block_elems) * tr->block_bytes;
                for (int64_t r0 = 0; r0 < R; r0 += chunk) {
                    int64_t nr = R - r0 < chunk ? R - r0 : chunk;
                    for (int64_t r = 0; r < nr; r++)
                        dequant(wt + r * ld,
                                (const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes + off,
                                n);
                    finch_cpu_sgemm_nn(T, n, nr, dy + r0, R, wt, ld, dx + c0 + j0, K, r0 > 0);
                }
            }
        }
    }
}

/* dW (R, K) += dy^T (R, T) . x (T, K): tiles of TILE_ROWS rows of dW, one thread each.
 * With bf16 products dy^T and x are rounded and packed once (ws->a16, ws->b16) and each
 * tile is one gemm_bf16. */
void finch_cpu_matmul_backward_weight(float *dw, const float *dy, const float *x, int64_t T,
                                      int64_t rows, int64_t cols, finch_workspace *ws) {
    if (ws && ws->bf16 && ws->b16 && T > GEMV_MAX_T) {
        const int64_t Tp = finch_bf16_pad(T);
        FINCH_ASSERT(ws->a16_elems >= (size_t)(finch_bf16_pad(rows) * Tp) &&
                     ws->b16_elems >= finch_bf16_b_size(T, cols));
        finch_bf16_pack_a(ws->a16, dy, rows, T, rows, true);
        finch_bf16_pack_b_nn(ws->b16, x, T, cols, cols);
        const int64_t n_tiles = (rows + TILE_ROWS - 1) / TILE_ROWS;
#pragma omp parallel for schedule(static) num_threads(ws->n_threads)
        for (int64_t tile = 0; tile < n_tiles; tile++) {
            int64_t r0 = tile * TILE_ROWS, nr = rows - r0 < TILE_ROWS ? rows - r0 : TILE_ROWS;
            finch_cpu_gemm_bf16(nr, cols, T, ws->a16 + r0 * Tp, Tp, ws->b16, dw + r0 * cols, cols,
                                true);
        }
        return;
    }
    /* each tile of rows: dy's columns r0.. transposed KT tokens at a time into at (nr, KT),
     * then at . x[t0..] added into dw's rows by the f32 GEMM */
    enum { KT = 128 };
    const int64_t n_tiles = (rows + TILE_ROWS - 1) / TILE_ROWS;
#pragma omp parallel for schedule(static) if (n_tiles > 1)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        int64_t r0 = tile * TILE_ROWS, nr = rows - r0 < TILE_ROWS ? rows - r0 : TILE_ROWS;
        float at[TILE_ROWS * KT];
        for (int64_t t0 = 0; t0 < T; t0 += KT) {
            int64_t kt = T - t0 < KT ? T - t0 : KT;
            for (int64_t t = 0; t < kt; t++) {
                const float *d = dy + (t0 + t) * rows + r0;
                for (int64_t i = 0; i < nr; i++) at[i * kt + t] = d[i];
            }
            finch_cpu_sgemm_nn(nr, cols, kt, at, kt, x + t0 * cols, cols, dw + r0 * cols, cols,
                               true);
        }
    }
}

/* ---- products over the elements a bitmask selects (DoRA's dropout corrections) ---- */

/* over_tiles with masked products (bits not NULL): every token's elements listed once
 * where memory allows, else the bits read per tile. */
static void masked_tiles(float *y, float *ym, const float *x, const uint64_t *bits, float alpha,
                         const float *a, float *p, int64_t np, const finch_weight *w, int64_t T,
                         finch_workspace *ws) {
#ifdef MASKED_AVX512
    elem_lists L;
    if (bits && lists_make(&L, x, bits, T, w->cols, finch_mask_words(w->cols))) {
        over_tiles(y, ym, x, bits, &L, alpha, a, p, np, w, T, ws);
        lists_free(&L);
        return;
    }
#endif
    over_tiles(y, ym, x, bits, NULL, alpha, a, p, np, w, T, ws);
}

/* Bands of rows and transposed tiles as matmul's (over_tiles); for each token the tile's rows
 * of the selected elements k are summed (one contiguous run of nr floats each), k in
 * increasing order, and alpha times the sums added into y[t, r0 ..]. An element's sum does
 * not depend on its tile, so neither on the threads. */
void finch_cpu_matmul_masked(float *y, const float *x, const uint64_t *bits, float alpha,
                             const finch_weight *w, int64_t T, finch_workspace *ws) {
    masked_tiles(y, NULL, x, bits, alpha, NULL, NULL, 0, w, T, ws);
}

void finch_cpu_matmul_split(float *y, const float *x, const finch_split *sp, const finch_weight *w,
                            int64_t T, finch_workspace *ws) {
    if (!ws || ws->bf16 || T <= ROWS_MAX_T) { /* matmul takes another path: the ops in turn */
        finch_cpu_matmul(y, x, w, T, ws);
        if (sp->bits) {
            memcpy(sp->ym, y, (size_t)(T * w->rows) * sizeof *sp->ym);
            finch_cpu_matmul_masked(sp->ym, x, sp->bits, sp->alpha, w, T, ws);
        }
        if (sp->np > 0) finch_cpu_matmul(sp->p, sp->a, w, sp->np, ws);
        return;
    }
    masked_tiles(y, sp->bits ? sp->ym : NULL, x, sp->bits, sp->alpha, sp->a, sp->p, sp->np, w, T,
                 ws);
}

#ifdef MASKED_AVX512
/* dxt[k] += alpha * dot(g, wt[(k - j0) * ld ..], nr) for the ne listed k, two at a time. */
static void masked_cols_listed(float *dxt, const float *g, const int32_t *idx, int64_t ne,
                               int64_t j0, const float *wt, int64_t ld, int64_t nr, float alpha) {
    int64_t e = 0;
    for (; e + 2 <= ne; e += 2) {
        const int64_t k = idx[e], l = idx[e + 1];
        float sk, sl;
        dot_masked2(g, wt + (k - j0) * ld, wt + (l - j0) * ld, nr, &sk, &sl);
        dxt[k] += alpha * sk;
        dxt[l] += alpha * sl;
    }
    if (e < ne) dxt[idx[e]] += alpha * dot_masked(g, wt + (idx[e] - j0) * ld, nr);
}
#endif

/* dxt[k] += alpha * dot(g, wt[(k - j0) * ld ..], nr) for the elements k in j0 .. j0 + n that
 * the row bits bt select. */
static void masked_cols(float *dxt, const float *g, const uint64_t *bt, int64_t j0, int64_t n,
                        const float *wt, int64_t ld, int64_t nr, float alpha) {
    const int64_t i0 = j0 / 64, i1 = (j0 + n + 63) / 64;
#ifdef MASKED_AVX512
    /* the columns' words, edges cleared, listed; then the dot products two at a time */
    uint64_t wb[COL_WORDS];
    int32_t idx[COL_WORDS * 64 + 16];
    FINCH_ASSERT(i1 - i0 <= COL_WORDS);
    for (int64_t i = i0; i < i1; i++) {
        uint64_t b = bt[i];
        if (i * 64 < j0) b &= ~0ull << (j0 - i * 64);
        if (i * 64 + 64 > j0 + n) b &= ~(~0ull << (j0 + n - i * 64));
        wb[i - i0] = b;
    }
    masked_cols_listed(dxt, g, idx, list_bits(idx, NULL, wb, i1 - i0, i0 * 64, NULL), j0, wt, ld,
                       nr, alpha);
#else
    for (int64_t i = i0; i < i1; i++) {
        uint64_t b = bt[i];
        if (i * 64 < j0) b &= ~0ull << (j0 - i * 64);
        if (i * 64 + 64 > j0 + n) b &= ~(~0ull << (j0 + n - i * 64));
        for (; b; b &= b - 1) {
            const int64_t k = i * 64 + __builtin_ctzll(b);
            dxt[k] += alpha * dot_masked(g, wt + (k - j0) * ld, nr);
        }
    }
#endif
}

/* Column bands in whole storage blocks, one per thread, as matmul_backward_input; each band
 * COL_BLOCK columns at a time, down W in chunks of rows expanded into a transposed tile
 * (column k's rows contiguous), so a selected element's part of a chunk is one dot product
 * with dy's run of the chunk's rows; chunks add into dx in row order. The chunk size depends
 * on the workspace alone, so results do not depend on the thread count. */
void finch_cpu_matmul_backward_masked(float *dx, const float *dy, const uint64_t *bits, float alpha,
                                      const finch_weight *w, int64_t T, finch_workspace *ws) {
    const finch_dtype_traits *tr = &finch_dtype_info[w->type];
    const finch_dequant_fn dequant = finch_cpu_row_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, nb = K / tr->block_elems, nw = finch_mask_words(K);
    const int64_t cb = tr->block_elems > COL_BLOCK ? tr->block_elems : COL_BLOCK;
    const int64_t cmax = cb < K ? cb : K; /* the widest column block */
    /* GROUP staging rows where the workspace has room for them and a chunk of 64 rows */
    const int64_t ns =
        (int64_t)(ws->per_thread / (size_t)cmax) >= TILE_PAD + GROUP + 64 ? GROUP : 1;
    int64_t chunk = (int64_t)(ws->per_thread / (size_t)cmax) - TILE_PAD - ns;
    if (chunk > MASK_CHUNK) chunk = MASK_CHUNK;
    FINCH_ASSERT(tr->dequant && ws && chunk >= 1);
    /* each token's elements listed once (else read from the bits per block and chunk), and
     * per thread where each token's run in the current column block begins and ends */
    elem_lists L = {0};
    int64_t *runs = NULL;
#ifdef MASKED_AVX512
    if (lists_make(&L, NULL, bits, T, K, nw) &&
        !(runs = finch_mem_alloc((size_t)(2 * T * ws->n_threads) * sizeof *runs)))
        lists_free(&L);
#endif
#pragma omp parallel num_threads(ws->n_threads)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        int64_t c0, cw;
        col_band(tr, nb, tid, nth, &c0, &cw);
        float *stage = ws->buf + (size_t)tid * ws->per_thread, *wt = stage + ns * cmax;
        int64_t *begin = runs ? runs + 2 * T * tid : NULL, *end = begin ? begin + T : NULL;
        for (int64_t t = 0; begin && t < T; t++) {
            int64_t e = L.off[t];
            while (e < L.off[t + 1] && L.idx[e] < c0) e++;
            begin[t] = e;
        }
        for (int64_t j0 = c0; j0 < c0 + cw; j0 += cb) {
            const int64_t n = c0 + cw - j0 < cb ? c0 + cw - j0 : cb;
            for (int64_t t = 0; begin && t < T; t++) {
                int64_t e = begin[t];
                while (e < L.off[t + 1] && L.idx[e] < j0 + n) e++;
                end[t] = e;
            }
            const size_t off = (size_t)(j0 / tr->block_elems) * tr->block_bytes;
            for (int64_t r0 = 0; r0 < R; r0 += chunk) {
                const int64_t nr = R - r0 < chunk ? R - r0 : chunk, ld = nr + TILE_PAD;
                for (int64_t r = 0; r < nr; r += ns) /* ns rows expanded, then transposed */
                    tile_columns(wt, ld, r, stage, cmax, w, dequant, r0 + r,
                                 nr - r < ns ? nr - r : ns, off, n);
#ifdef MASKED_AVX512
                if (begin) {
                    for (int64_t t = 0; t < T; t++)
                        masked_cols_listed(dx + t * K, dy + t * R + r0, L.idx + begin[t],
                                           end[t] - begin[t], j0, wt, ld, nr, alpha);
                    continue;
                }
#endif
                for (int64_t t = 0; t < T; t++)
                    masked_cols(dx + t * K, dy + t * R + r0, bits + t * nw, j0, n, wt, ld, nr,
                                alpha);
            }
            for (int64_t t = 0; begin && t < T; t++) begin[t] = end[t];
        }
    }
    free(runs);
    free(L.off);
    free(L.idx);
}
