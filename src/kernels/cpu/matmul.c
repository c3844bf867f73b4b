/*
 * matmul.c: y (T, rows) = x (T, cols) . W^T with W in its storage type.
 *
 * Two paths, chosen by T:
 *  - few tokens (generation): a fused dot product per (row, token) that expands each
 *    quantized block in registers and multiplies it with x in f32; W is read once per
 *    call, rows are split across threads;
 *  - many tokens (prompt, training): each thread dequantizes a tile of TILE_ROWS rows
 *    into its workspace slice and multiplies it with all of x through the single-threaded
 *    finch_cpu_sgemm_nn (gemm.c), so the base never exists in f32 beyond one tile per
 *    thread.
 * Each output element is computed by one thread in a fixed order, so results do not
 * depend on the thread count.
 *
 * Block layouts: core/quant.h (FORMATS.md 2).
 */
#include "kernels/cpu/cpu.h"
#include "core/quant.h" /* block structs, finch_dtype_info dequantizers */

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

/* GROUP rows of a tile are expanded into staging rows together, then written out
 * column-interleaved (each store run fills one cache line of the tile) */
enum { TILE_ROWS = FINCH_CPU_TILE_ROWS, GEMV_MAX_T = 3, GROUP = FINCH_CPU_STAGE_ROWS };

/* ---- fused dot products: one stored row with one f32 vector ------------------------ */

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float dot_f32(const void *row, const float *x, int64_t n) {
    const float *w = row;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_f16(const void *row, const float *x, int64_t n) {
    const uint16_t *w = row;
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wf = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i)));
        a = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + i), a);
    }
    float s = hsum(a);
    for (; i < n; i++) s += finch_f16_to_f32(w[i]) * x[i];
    return s;
}

static float dot_bf16(const void *row, const float *x, int64_t n) {
    const uint16_t *w = row;
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i)));
        __m256 wf = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        a = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + i), a);
    }
    float s = hsum(a);
    for (; i < n; i++) s += finch_bf16_to_f32(w[i]) * x[i];
    return s;
}

/* 8 unsigned bytes -> 8 floats */
static inline __m256 u8x8_ps(__m128i b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}
static inline __m256 i8x8_ps(__m128i b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

/* sum over the block of q_j * x_j, q from 16 packed nibble bytes (weight j low nibble of
 * byte j, weight j+16 high nibble); also returns sum of x over the block in *xs. */
static inline __m256 nib_dot(const uint8_t *qs, const float *x, __m256 *xs) {
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
    __m256 x2 = _mm256_loadu_ps(x + 16), x3 = _mm256_loadu_ps(x + 24);
    __m256 acc = _mm256_mul_ps(u8x8_ps(lo), x0);
    acc = _mm256_fmadd_ps(u8x8_ps(_mm_srli_si128(lo, 8)), x1, acc);
    acc = _mm256_fmadd_ps(u8x8_ps(hi), x2, acc);
    acc = _mm256_fmadd_ps(u8x8_ps(_mm_srli_si128(hi, 8)), x3, acc);
    *xs = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
    return acc;
}

static float dot_q4_0(const void *row, const float *x, int64_t n) {
    const finch_block_q4_0 *b = row;
    __m256 total = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        __m256 xs, qx = nib_dot(b[i].qs, x, &xs);
        /* sum (q - 8) x d = d (sum q x - 8 sum x) */
        __m256 v = _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), xs, qx);
        total = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].d)), v, total);
    }
    return hsum(total);
}

static float dot_q4_1(const void *row, const float *x, int64_t n) {
    const finch_block_q4_1 *b = row;
    __m256 total = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        __m256 xs, qx = nib_dot(b[i].qs, x, &xs);
        /* sum (q d + m) x = d sum q x + m sum x */
        total = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].d)), qx, total);
        total = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].m)), xs, total);
    }
    return hsum(total);
}

static float dot_q8_0(const void *row, const float *x, int64_t n) {
    const finch_block_q8_0 *b = row;
    __m256 total = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        __m128i q0 = _mm_loadu_si128((const __m128i *)b[i].qs);
        __m128i q1 = _mm_loadu_si128((const __m128i *)(b[i].qs + 16));
        __m256 acc = _mm256_mul_ps(i8x8_ps(q0), _mm256_loadu_ps(x));
        acc = _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(q0, 8)), _mm256_loadu_ps(x + 8), acc);
        acc = _mm256_fmadd_ps(i8x8_ps(q1), _mm256_loadu_ps(x + 16), acc);
        acc = _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(q1, 8)), _mm256_loadu_ps(x + 24), acc);
        total = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].d)), acc, total);
    }
    return hsum(total);
}
#else
static float dot_f32(const void *row, const float *x, int64_t n) {
    const float *w = row;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}
#define dot_f16 NULL
#define dot_bf16 NULL
#define dot_q4_0 NULL
#define dot_q4_1 NULL
#define dot_q8_0 NULL
#endif

/* ---- NF4: the 16-entry code table lives in one AVX-512 register ----------------------- */

#if defined(__AVX512F__)
/* Element k of each 16-lane half of a block's 32 packed bytes, as code indices: byte j holds
 * element 2j (high nibble) and 2j+1 (low), so lanes interleave the bytes' high and low
 * nibbles: {hi0, lo0, hi1, lo1, ...}. */
static inline void nf4_codes16(const uint8_t *qs, __m512i *c0, __m512i *c1) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    const __m512i hi = _mm512_srli_epi32(v, 4), lo = _mm512_and_si512(v, _mm512_set1_epi32(15));
    const __m512i i0 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i i1 =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    *c0 = _mm512_permutex2var_epi32(hi, i0, lo);
    *c1 = _mm512_permutex2var_epi32(hi, i1, lo);
}

/* The rows' values code[q] * d: the same single f32 product as finch_dequant_nf4, so the
 * tiles hold exactly the reference's values. */
static void dequant_nf4(float *dst, const void *src, int64_t n) {
    const finch_block_nf4 *b = src;
    const __m512 lut = _mm512_loadu_ps(finch_nf4_code);
    for (int64_t i = 0; i < n / QK_NF4; i++, dst += QK_NF4) {
        const __m512 d = _mm512_set1_ps(b[i].d);
        for (int h = 0; h < 2; h++) {
            __m512i c0, c1;
            nf4_codes16(b[i].qs + 16 * h, &c0, &c1);
            _mm512_storeu_ps(dst + 32 * h, _mm512_mul_ps(_mm512_permutexvar_ps(c0, lut), d));
            _mm512_storeu_ps(dst + 32 * h + 16, _mm512_mul_ps(_mm512_permutexvar_ps(c1, lut), d));
        }
    }
}

/* sum over blocks of d * sum_j code[q_j] x_j */
static float dot_nf4(const void *row, const float *x, int64_t n) {
    const finch_block_nf4 *b = row;
    const __m512 lut = _mm512_loadu_ps(finch_nf4_code);
    __m512 total = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / QK_NF4; i++, x += QK_NF4) {
        __m512i c[4];
        nf4_codes16(b[i].qs, &c[0], &c[1]);
        nf4_codes16(b[i].qs + 16, &c[2], &c[3]);
        __m512 acc = _mm512_mul_ps(_mm512_permutexvar_ps(c[0], lut), _mm512_loadu_ps(x));
        for (int k = 1; k < 4; k++)
            acc =
                _mm512_fmadd_ps(_mm512_permutexvar_ps(c[k], lut), _mm512_loadu_ps(x + 16 * k), acc);
        total = _mm512_fmadd_ps(_mm512_set1_ps(b[i].d), acc, total);
    }
    return _mm512_reduce_add_ps(total);
}
#else
#define dequant_nf4 NULL
#define dot_nf4 NULL
#endif

typedef float (*dot_fn)(const void *row, const float *x, int64_t n);

/* Types without a fused dot use dot_generic: dequantize one block, then dot in f32. */
static const dot_fn dot_table[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_F32] = dot_f32,   [FINCH_DTYPE_F16] = dot_f16,   [FINCH_DTYPE_BF16] = dot_bf16,
    [FINCH_DTYPE_Q4_0] = dot_q4_0, [FINCH_DTYPE_Q4_1] = dot_q4_1, [FINCH_DTYPE_Q8_0] = dot_q8_0,
    [FINCH_DTYPE_NF4] = dot_nf4,
};

/* Vectorised row dequantizers for the tiles, bit-identical to the scalar ones in core/
 * (which every other type uses). */
static const finch_dequant_fn tile_dequant_table[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_NF4] = dequant_nf4,
};

static finch_dequant_fn tile_dequant(finch_dtype t) {
    return tile_dequant_table[t] ? tile_dequant_table[t] : finch_dtype_info[t].dequant;
}

static float dot_generic(const finch_dtype_traits *tr, const void *row, const float *x, int64_t n) {
    float blk[QK_K];
    const uint8_t *p = row;
    float s = 0;
    for (int64_t i = 0; i < n; i += tr->block_elems, p += tr->block_bytes) {
        tr->dequant(blk, p, tr->block_elems);
        s += dot_f32(blk, x + i, tr->block_elems);
    }
    return s;
}

static void matmul_gemv(float *y, const float *x, const finch_weight *w, int64_t T) {
    const finch_dtype_traits *tr = &finch_dtype_info[w->type];
    dot_fn dot = dot_table[w->type];
    const int64_t R = w->rows, K = w->cols;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
        for (int64_t t = 0; t < T; t++)
            y[t * R + r] = dot ? dot(row, x + t * K, K) : dot_generic(tr, row, x + t * K, K);
    }
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
 * holding its row, so results do not depend on the thread count. */
static void matmul_tiled(float *y, const float *x, const finch_weight *w, int64_t T,
                         finch_workspace *ws) {
    const finch_dequant_fn dequant = tile_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, n16 = (R + 15) / 16;
    FINCH_ASSERT(ws && ws->per_thread >= (size_t)((TILE_ROWS + 1) * K));
    const bool grouped = ws->per_thread >= (size_t)((TILE_ROWS + GROUP) * K);
#pragma omp parallel num_threads(ws->n_threads)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        float *wt = ws->buf + (size_t)tid * ws->per_thread, *stage = wt + TILE_ROWS * K;
        int64_t end = n16 * (tid + 1) / nth * 16;
        if (end > R) end = R;
        for (int64_t r0 = n16 * tid / nth * 16; r0 < end; r0 += TILE_ROWS) {
            int64_t nr = end - r0 < TILE_ROWS ? end - r0 : TILE_ROWS, r = 0;
            for (; grouped && r + GROUP <= nr; r += GROUP) {
                const float *src[GROUP];
                for (int g = 0; g < GROUP; g++) {
                    const uint8_t *row =
                        (const uint8_t *)w->data + (size_t)(r0 + r + g) * w->row_bytes;
                    src[g] = (const float *)row;
                    if (w->type != FINCH_DTYPE_F32) {
                        dequant(stage + g * K, row, K);
                        src[g] = stage + g * K;
                    }
                }
                for (int64_t k = 0; k < K; k++)
                    for (int g = 0; g < GROUP; g++) wt[k * nr + r + g] = src[g][k];
            }
            for (; r < nr; r++) { /* the rows past the last whole group, one at a time */
                const uint8_t *row = (const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes;
                const float *src = (const float *)row;
                if (w->type != FINCH_DTYPE_F32) {
                    dequant(stage, row, K);
                    src = stage;
                }
                for (int64_t k = 0; k < K; k++) wt[k * nr + r] = src[k];
            }
            finch_cpu_sgemm_nn(T, nr, K, x, K, wt, nr, y + r0, R, false);
        }
    }
}

/* matmul_tiled with bf16 products: x rounded once into ws->a16, then each thread packs
 * its tiles of W (GROUP rows at a time through f32) into bf16 panels after the staging
 * rows in its slice. */
static void matmul_tiled_bf16(float *y, const float *x, const finch_weight *w, int64_t T,
                              finch_workspace *ws) {
    const finch_dequant_fn dequant = tile_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, Kp = finch_bf16_pad(K), n16 = (R + 15) / 16;
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
        int64_t end = n16 * (tid + 1) / nth * 16;
        if (end > R) end = R;
        for (int64_t r0 = n16 * tid / nth * 16; r0 < end; r0 += TILE_ROWS) {
            int64_t nr = end - r0 < TILE_ROWS ? end - r0 : TILE_ROWS;
            for (int64_t g0 = 0; g0 < nr; g0 += GROUP) {
                int64_t ng = nr - g0 < GROUP ? nr - g0 : GROUP;
                for (int64_t g = 0; g < ng; g++) {
                    const uint8_t *row =
                        (const uint8_t *)w->data + (size_t)(r0 + g0 + g) * w->row_bytes;
                    if (w->type == FINCH_DTYPE_F32)
                        memcpy(stage + g * K, row, (size_t)K * sizeof(float));
                    else
                        dequant(stage + g * K, row, K);
                }
                finch_bf16_pack_b_rows(panel, Kp, g0, stage, ng, K, K);
            }
            /* the panel's columns past nr hold an earlier tile's values: they only meet
             * columns of C that gemm_bf16 does not write */
            finch_cpu_gemm_bf16(T, nr, K, ws->a16, Kp, panel, y + r0, R, false);
        }
    }
}

void finch_cpu_matmul(float *y, const float *x, const finch_weight *w, int64_t T,
                      finch_workspace *ws) {
    FINCH_ASSERT(finch_dtype_info[w->type].dequant);
    if (T <= GEMV_MAX_T || !ws)
        matmul_gemv(y, x, w, T);
    else if (ws->bf16)
        matmul_tiled_bf16(y, x, w, T, ws);
    else
        matmul_tiled(y, x, w, T, ws);
}

/* dx (T, K) = dy (T, R) . W. The sum runs over rows of W, so splitting rows across threads
 * would make them add into the same dx; the threads split the columns instead, in whole
 * blocks of the storage type, so each owns a band of dx. A thread walks down W in chunks
 * of as many rows as its workspace slice holds for its band, dequantizes the chunk's band
 * (blocks are self-contained, so a row can be expanded from any block on) and adds
 * dy[:, chunk] . chunk into its band with one finch_cpu_sgemm_nn. Each dx element is
 * summed by one thread in a fixed order, and W is dequantized once per call. An f32 W is
 * read in place: one product per band. */
/* matmul_backward_input with bf16 products: dy rounded once into ws->a16; each thread
 * packs the rows of its band chunk by chunk (a multiple of 32 rows, through f32) into a
 * bf16 panel after the staging rows in its slice. */
static void backward_input_bf16(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                finch_workspace *ws) {
    const finch_dtype_traits *tr = &finch_dtype_info[w->type];
    const finch_dequant_fn dequant = tile_dequant(w->type);
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
        const int64_t b0 = nb * tid / nth, b1 = nb * (tid + 1) / nth;
        const int64_t c0 = b0 * tr->block_elems, cw = (b1 - b0) * tr->block_elems;
        /* per row of a chunk: cw floats staged, pad(cw) bf16 packed */
        const int64_t per_row = cw * 4 + finch_bf16_pad(cw) * 2;
        int64_t chunk = cw > 0 ? (int64_t)(ws->per_thread * sizeof(float)) / per_row / 32 * 32 : 0;
        if (chunk > Rp) chunk = Rp;
        FINCH_ASSERT(cw == 0 || chunk >= 32);
        float *stage = ws->buf + (size_t)tid * ws->per_thread;
        uint16_t *panel = (uint16_t *)(stage + chunk * cw);
        const size_t off = (size_t)b0 * tr->block_bytes;
        for (int64_t r0 = 0; cw > 0 && r0 < R; r0 += chunk) {
            int64_t nr = R - r0 < chunk ? R - r0 : chunk;
            for (int64_t r = 0; r < nr; r++) {
                const uint8_t *row =
                    (const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes + off;
                if (w->type == FINCH_DTYPE_F32)
                    memcpy(stage + r * cw, row, (size_t)cw * sizeof(float));
                else
                    dequant(stage + r * cw, row, cw);
            }
            finch_bf16_pack_b_nn(panel, stage, nr, cw, cw);
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
    const finch_dequant_fn dequant = tile_dequant(w->type);
    const int64_t R = w->rows, K = w->cols, nb = K / tr->block_elems;
    FINCH_ASSERT(tr->dequant && ws && ws->per_thread >= (size_t)(TILE_ROWS * K));
#pragma omp parallel num_threads(ws->n_threads)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        const int64_t b0 = nb * tid / nth, b1 = nb * (tid + 1) / nth;
        const int64_t c0 = b0 * tr->block_elems, cw = (b1 - b0) * tr->block_elems;
        if (cw > 0 && w->type == FINCH_DTYPE_F32) {
            finch_cpu_sgemm_nn(T, cw, R, dy, R, (const float *)w->data + c0,
                               (int64_t)(w->row_bytes / sizeof(float)), dx + c0, K, false);
        } else if (cw > 0) {
            float *wt = ws->buf + (size_t)tid * ws->per_thread;
            const int64_t chunk = (int64_t)(ws->per_thread / (size_t)cw); /* >= TILE_ROWS */
            const size_t off = (size_t)b0 * tr->block_bytes;
            for (int64_t r0 = 0; r0 < R; r0 += chunk) {
                int64_t nr = R - r0 < chunk ? R - r0 : chunk;
                for (int64_t r = 0; r < nr; r++)
                    dequant(wt + r * cw,
                            (const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes + off, cw);
                finch_cpu_sgemm_nn(T, cw, nr, dy + r0, R, wt, cw, dx + c0, K, r0 > 0);
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
