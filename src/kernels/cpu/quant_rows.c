/*
 * quant_rows.c: the stored rows of every weight type, vectorised, for matmul.c:
 *  - a fused dot product of one stored row with one f32 vector (the few-token path of
 *    generation): blocks are expanded in registers, never written out; a type without
 *    one is dequantized a block at a time and multiplied in f32 (finch_cpu_row_dot_blocks);
 *  - row dequantizers for the tiles of the many-token path, whose values are the scalar
 *    dequantizers' of core/quant.c bit for bit (the same f32 operations per element, no
 *    fused multiply-add), so a tile holds exactly what the reference reads; types without
 *    one use core's.
 * A dot's sum runs in its own order (8 or 16 lanes, summed at the end); it is fixed for a
 * given instruction set, so results do not depend on the thread count.
 *
 * Block layouts: core/quant.h (FORMATS.md 2).
 */
#include "kernels/cpu/cpu.h"
#include "core/quant.h" /* block structs, finch_dtype_info dequantizers */

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- fused dot products: one stored row with one f32 vector ------------------------ */

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#if defined(__AVX512F__)
/* 16 lanes in two running sums, the tail masked */
static float dot_f32(const void *row, const float *x, int64_t n) {
    const float *w = row;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, x + i), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
#else
static float dot_f32(const void *row, const float *x, int64_t n) {
    const float *w = row;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = finch_cpu_hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}
#endif

/* 8 f16 or bf16 values -> 8 floats (exact) */
static inline __m256 f16x8_ps(const uint16_t *w) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w));
}
static inline __m256 bf16x8_ps(const uint16_t *w) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

static float dot_f16(const void *row, const float *x, int64_t n) {
    const uint16_t *w = row;
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) a = _mm256_fmadd_ps(f16x8_ps(w + i), _mm256_loadu_ps(x + i), a);
    float s = finch_cpu_hsum8(a);
    for (; i < n; i++) s += finch_f16_to_f32(w[i]) * x[i];
    return s;
}

static float dot_bf16(const void *row, const float *x, int64_t n) {
    const uint16_t *w = row;
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) a = _mm256_fmadd_ps(bf16x8_ps(w + i), _mm256_loadu_ps(x + i), a);
    float s = finch_cpu_hsum8(a);
    for (; i < n; i++) s += finch_bf16_to_f32(w[i]) * x[i];
    return s;
}

/* f16 and bf16 rows widened to f32 for the tiles: exact conversions, core/quant.c's values
 * (its portable f16 conversion is bit manipulation, a tenth of the tiled products' time on
 * an f16 head) */
static void dequant_f16(float *dst, const void *src, int64_t n) {
    const uint16_t *w = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, f16x8_ps(w + i));
    for (; i < n; i++) dst[i] = finch_f16_to_f32(w[i]);
}

static void dequant_bf16(float *dst, const void *src, int64_t n) {
    const uint16_t *w = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, bf16x8_ps(w + i));
    for (; i < n; i++) dst[i] = finch_bf16_to_f32(w[i]);
}

/* 8 signed bytes -> 8 floats */
static inline __m256 i8x8_ps(__m128i b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

/* 16 signed bytes (element j at byte j) times x[0 .. 15], as 8 lanes */
static inline __m256 i8x16_dot(__m128i q, const float *x) {
    __m256 a = _mm256_mul_ps(i8x8_ps(q), _mm256_loadu_ps(x));
    return _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), a);
}

/* 32 signed bytes times x[0 .. 31], as 8 lanes (two independent chains) */
static inline __m256 i8x32_dot(__m256i q, const float *x) {
    return _mm256_add_ps(i8x16_dot(_mm256_castsi256_si128(q), x),
                         i8x16_dot(_mm256_extracti128_si256(q, 1), x + 16));
}

/* the same, also returning the sum of x[0 .. 31] in *xs */
static inline __m256 i8x32_dot_sum(__m256i q, const float *x, __m256 *xs) {
    *xs = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                        _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
    return i8x32_dot(q, x);
}

/* byte j = v where bit j of the 32-bit mask is set, else 0 */
static inline __m256i bits32(uint32_t mask, char v) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                            2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)mask), spread);
    b = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
    return _mm256_and_si256(b, _mm256_set1_epi8(v));
}

/* byte j = v where byte j of h has any bit of m, else 0 */
static inline __m256i bytes_with(__m256i h, uint8_t m, char v) {
    __m256i mm = _mm256_set1_epi8((char)m);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, mm), mm), _mm256_set1_epi8(v));
}

/* a Q5_0 / Q5_1 block's 32 values 0 .. 31 */
static inline __m256i q5_values(const uint8_t *qs, const uint8_t *qh) {
    uint32_t h;
    memcpy(&h, qh, sizeof h);
    return _mm256_or_si256(finch_cpu_nibbles32(qs), bits32(h, 16));
}

/* Sums in the set's widest lanes: vsum is 16 floats with AVX-512, else 8. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
typedef __m512 vsum;
#define vsum_zero _mm512_setzero_ps
#define vsum_set1 _mm512_set1_ps
#define vsum_add _mm512_add_ps
#define vsum_fmadd _mm512_fmadd_ps
#define vsum_fnmadd _mm512_fnmadd_ps
#define vsum_total _mm512_reduce_add_ps
#else
typedef __m256 vsum;
#define vsum_zero _mm256_setzero_ps
#define vsum_set1 _mm256_set1_ps
#define vsum_add _mm256_add_ps
#define vsum_fmadd _mm256_fmadd_ps
#define vsum_fnmadd _mm256_fnmadd_ps
#define vsum_total finch_cpu_hsum8
#endif

/* Blocks of 32 (block: one block added, scaled, into a running total) alternate between
 * two running totals, even and odd, so consecutive blocks do not wait on each other's
 * multiply-add. The totals are named variables: as an array indexed by i & 1, GCC keeps
 * them in memory and every block waits on a store. */
static inline __attribute__((always_inline)) float
two_totals(vsum (*block)(const void *, int64_t, const float *, vsum), const void *row,
           const float *x, int64_t n) {
    const int64_t nb = n / QK;
    vsum even = vsum_zero(), odd = vsum_zero();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        even = block(row, i, x + QK * i, even);
        odd = block(row, i + 1, x + QK * (i + 1), odd);
    }
    if (i < nb) even = block(row, i, x + QK * i, even);
    return vsum_total(vsum_add(even, odd));
}

/* Blocks of 32: 16 lanes where the set has AVX-512, else 8. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
/* 16 signed bytes as 16 floats */
static inline __m512 i8x16_ps(__m128i b) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

/* sum of q_j x_j over a block of 32 (q: elements 0 .. 15 and 16 .. 31, signed bytes) */
static inline __m512 blk32_dot(__m128i q0, __m128i q1, const float *x) {
    __m512 a = _mm512_mul_ps(i8x16_ps(q0), _mm512_loadu_ps(x));
    return _mm512_fmadd_ps(i8x16_ps(q1), _mm512_loadu_ps(x + 16), a);
}

/* the two nibble halves of a block's 16 packed bytes: elements 0 .. 15 (low), 16 .. 31 */
static inline void nibbles16(const uint8_t *qs, __m128i *lo, __m128i *hi) {
    __m128i b = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0f);
    *lo = _mm_and_si128(b, m);
    *hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
}

/* A Q5_0 block's values minus 16 as two halves of 16 signed bytes: the nibble where the
 * block's fifth bit is set, the nibble - 16 where it is clear (bit j of qh: element j). */
static inline void q5_0_halves(const finch_block_q5_0 *b, __m128i *lo, __m128i *hi) {
    uint32_t h;
    memcpy(&h, b->qh, sizeof h);
    nibbles16(b->qs, lo, hi);
    const __m128i sixteen = _mm_set1_epi8(16);
    *lo = _mm_mask_sub_epi8(*lo, (__mmask16)~h, *lo, sixteen);
    *hi = _mm_mask_sub_epi8(*hi, (__mmask16)(~h >> 16), *hi, sixteen);
}

/* One block of 32 added, scaled, into a running total. */
static inline __m512 block_q4_0(const void *row, int64_t i, const float *x, __m512 tot) {
    const finch_block_q4_0 *b = (const finch_block_q4_0 *)row + i;
    const __m128i off = _mm_set1_epi8(8);
    __m128i lo, hi;
    nibbles16(b->qs, &lo, &hi);
    __m512 v = blk32_dot(_mm_sub_epi8(lo, off), _mm_sub_epi8(hi, off), x);
    return _mm512_fmadd_ps(_mm512_set1_ps(finch_f16_to_f32(b->d)), v, tot);
}

static inline __m512 block_q4_1(const void *row, int64_t i, const float *x, __m512 tot) {
    const finch_block_q4_1 *b = (const finch_block_q4_1 *)row + i;
    __m128i lo, hi;
    nibbles16(b->qs, &lo, &hi);
    __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    __m512 qx = _mm512_fmadd_ps(i8x16_ps(hi), x1, _mm512_mul_ps(i8x16_ps(lo), x0));
    /* sum (q d + m) x = d sum q x + m sum x */
    __m512 t = _mm512_fmadd_ps(_mm512_set1_ps(finch_f16_to_f32(b->d)), qx, tot);
    return _mm512_fmadd_ps(_mm512_set1_ps(finch_f16_to_f32(b->m)), _mm512_add_ps(x0, x1), t);
}

static inline __m512 block_q5_0(const void *row, int64_t i, const float *x, __m512 tot) {
    const finch_block_q5_0 *b = (const finch_block_q5_0 *)row + i;
    __m128i lo, hi;
    q5_0_halves(b, &lo, &hi);
    return _mm512_fmadd_ps(_mm512_set1_ps(finch_f16_to_f32(b->d)), blk32_dot(lo, hi, x), tot);
}

static inline __m512 block_q8_0(const void *row, int64_t i, const float *x, __m512 tot) {
    const finch_block_q8_0 *b = (const finch_block_q8_0 *)row + i;
    __m512 v = blk32_dot(_mm_loadu_si128((const __m128i *)b->qs),
                         _mm_loadu_si128((const __m128i *)(b->qs + 16)), x);
    return _mm512_fmadd_ps(_mm512_set1_ps(finch_f16_to_f32(b->d)), v, tot);
}

static float dot_q4_1(const void *row, const float *x, int64_t n) {
    return two_totals(block_q4_1, row, x, n);
}
#else
/* 8 unsigned bytes -> 8 floats */
static inline __m256 u8x8_ps(__m128i b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
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

static inline __m256 block_q4_0(const void *row, int64_t i, const float *x, __m256 tot) {
    const finch_block_q4_0 *b = (const finch_block_q4_0 *)row + i;
    __m256 xs, qx = nib_dot(b->qs, x, &xs);
    /* sum (q - 8) x d = d (sum q x - 8 sum x) */
    __m256 v = _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), xs, qx);
    return _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b->d)), v, tot);
}

static inline __m256 block_q8_0(const void *row, int64_t i, const float *x, __m256 tot) {
    const finch_block_q8_0 *b = (const finch_block_q8_0 *)row + i;
    __m128i q0 = _mm_loadu_si128((const __m128i *)b->qs);
    __m128i q1 = _mm_loadu_si128((const __m128i *)(b->qs + 16));
    __m256 acc = _mm256_mul_ps(i8x8_ps(q0), _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(q0, 8)), _mm256_loadu_ps(x + 8), acc);
    acc = _mm256_fmadd_ps(i8x8_ps(q1), _mm256_loadu_ps(x + 16), acc);
    acc = _mm256_fmadd_ps(i8x8_ps(_mm_srli_si128(q1, 8)), _mm256_loadu_ps(x + 24), acc);
    return _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b->d)), acc, tot);
}

static inline __m256 block_q5_0(const void *row, int64_t i, const float *x, __m256 tot) {
    const finch_block_q5_0 *b = (const finch_block_q5_0 *)row + i;
    __m256i q = _mm256_sub_epi8(q5_values(b->qs, b->qh), _mm256_set1_epi8(16));
    return _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b->d)), i8x32_dot(q, x), tot);
}

static float dot_q4_1(const void *row, const float *x, int64_t n) {
    const finch_block_q4_1 *b = row;
    /* the scales' and the offsets' products in separate running totals: one chain of
     * two dependent multiply-adds per block was the loop's bound */
    __m256 td = _mm256_setzero_ps(), tm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        __m256 xs, qx = nib_dot(b[i].qs, x, &xs);
        /* sum (q d + m) x = d sum q x + m sum x */
        td = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].d)), qx, td);
        tm = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].m)), xs, tm);
    }
    return finch_cpu_hsum8(_mm256_add_ps(td, tm));
}

#endif

static float dot_q4_0(const void *row, const float *x, int64_t n) {
    return two_totals(block_q4_0, row, x, n);
}
static float dot_q5_0(const void *row, const float *x, int64_t n) {
    return two_totals(block_q5_0, row, x, n);
}
static float dot_q8_0(const void *row, const float *x, int64_t n) {
    return two_totals(block_q8_0, row, x, n);
}

static float dot_q5_1(const void *row, const float *x, int64_t n) {
    const finch_block_q5_1 *b = row;
    __m256 td = _mm256_setzero_ps(), tm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        __m256 xs, qx = i8x32_dot_sum(q5_values(b[i].qs, b[i].qh), x, &xs);
        td = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].d)), qx, td);
        tm = _mm256_fmadd_ps(_mm256_set1_ps(finch_f16_to_f32(b[i].m)), xs, tm);
    }
    return finch_cpu_hsum8(_mm256_add_ps(td, tm));
}

/* The K-quants' products of 16 and 32 bytes in vsum lanes. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
/* 16 signed bytes times x[0 .. 15] */
static inline vsum dot16(__m128i q, const float *x) {
    return _mm512_mul_ps(i8x16_ps(q), _mm512_loadu_ps(x));
}
/* 32 signed bytes times x[0 .. 31], and the sum of x[0 .. 31] in *xs */
static inline vsum dot32_sum(__m256i q, const float *x, vsum *xs) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    *xs = _mm512_add_ps(x0, x1);
    return _mm512_fmadd_ps(i8x16_ps(_mm256_extracti128_si256(q, 1)), x1,
                           _mm512_mul_ps(i8x16_ps(_mm256_castsi256_si128(q)), x0));
}
#else
#define dot16 i8x16_dot
#define dot32_sum i8x32_dot_sum
#endif

/* Four running totals, summed at the end: one chain of dependent multiply-adds per 64
 * values was the K-quant loops' bound. */
static inline float vsum_total4(const vsum t[4]) {
    return vsum_total(vsum_add(vsum_add(t[0], t[1]), vsum_add(t[2], t[3])));
}

/* Q4_K and Q5_K: per 64-value chunk c, sub-blocks 2c (low nibbles) and 2c + 1 (high),
 * each w = d sc q - dmin m, so the sum is d sc sum(q x) - dmin m sum(x) per sub-block;
 * the two sub-blocks' scaled sums and offsets go to totals t[0 .. 3]. */
static inline void k_sub_pair(vsum t[4], __m256i lo, __m256i hi, const float *x,
                              const uint8_t *scales, int c, float d, float dmin) {
    int sc0, m0, sc1, m1;
    finch_k_scale_min(2 * c, scales, &sc0, &m0);
    finch_k_scale_min(2 * c + 1, scales, &sc1, &m1);
    vsum xs0, xs1, p0 = dot32_sum(lo, x, &xs0), p1 = dot32_sum(hi, x + 32, &xs1);
    t[0] = vsum_fmadd(vsum_set1(d * (float)sc0), p0, t[0]);
    t[1] = vsum_fnmadd(vsum_set1(dmin * (float)m0), xs0, t[1]);
    t[2] = vsum_fmadd(vsum_set1(d * (float)sc1), p1, t[2]);
    t[3] = vsum_fnmadd(vsum_set1(dmin * (float)m1), xs1, t[3]);
}

static float dot_q4_k(const void *row, const float *x, int64_t n) {
    const finch_block_q4_k *b = row;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    vsum t[4] = {vsum_zero(), vsum_zero(), vsum_zero(), vsum_zero()};
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = finch_f16_to_f32(b[i].d), dmin = finch_f16_to_f32(b[i].dmin);
        for (int c = 0; c < 4; c++, x += 64) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
            __m256i lo = _mm256_and_si256(v, m4),
                    hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            k_sub_pair(t, lo, hi, x, b[i].scales, c, d, dmin);
        }
    }
    return vsum_total4(t);
}

static float dot_q5_k(const void *row, const float *x, int64_t n) {
    const finch_block_q5_k *b = row;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    vsum t[4] = {vsum_zero(), vsum_zero(), vsum_zero(), vsum_zero()};
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = finch_f16_to_f32(b[i].d), dmin = finch_f16_to_f32(b[i].dmin);
        const __m256i h = _mm256_loadu_si256((const __m256i *)b[i].qh);
        for (int c = 0; c < 4; c++, x += 64) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
            __m256i lo = _mm256_or_si256(_mm256_and_si256(v, m4), bytes_with(h, 1u << (2 * c), 16));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                         bytes_with(h, 2u << (2 * c), 16));
            k_sub_pair(t, lo, hi, x, b[i].scales, c, d, dmin);
        }
    }
    return vsum_total4(t);
}

/* Q6_K, per half of 128 values: four runs of 32 (6-bit values: 4 bits from ql, 2 from qh),
 * each two groups of 16 under one scale; w = d sc (q - 32). */
static inline void q6_k_half(__m256i q[4], const uint8_t *ql, const uint8_t *qh) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
    const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
    const __m256i lows[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                             _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
    for (int k = 0; k < 4; k++) {
        __m256i hb = _mm256_and_si256(_mm256_srli_epi16(h, 2 * k), m2);
        q[k] = _mm256_sub_epi8(_mm256_or_si256(lows[k], _mm256_slli_epi16(hb, 4)), off);
    }
}

/* one run of 32: its two groups of 16, each under its scale, into *ta and *tb */
static inline void q6_k_run(vsum *ta, vsum *tb, __m256i q, const float *x, float d,
                            const int8_t *sc) {
    *ta = vsum_fmadd(vsum_set1(d * (float)sc[0]), dot16(_mm256_castsi256_si128(q), x), *ta);
    *tb =
        vsum_fmadd(vsum_set1(d * (float)sc[1]), dot16(_mm256_extracti128_si256(q, 1), x + 16), *tb);
}

static float dot_q6_k(const void *row, const float *x, int64_t n) {
    const finch_block_q6_k *b = row;
    vsum t[4] = {vsum_zero(), vsum_zero(), vsum_zero(), vsum_zero()};
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = finch_f16_to_f32(b[i].d);
        for (int half = 0; half < 2; half++, x += 128) {
            const int8_t *sc = b[i].scales + 8 * half;
            __m256i q[4];
            q6_k_half(q, b[i].ql + 64 * half, b[i].qh + 32 * half);
            for (int k = 0; k < 4; k += 2) { /* runs 0, 2 into t[0 .. 1], 1, 3 into t[2 .. 3] */
                q6_k_run(&t[0], &t[1], q[k], x + 32 * k, d, sc + 2 * k);
                q6_k_run(&t[2], &t[3], q[k + 1], x + 32 * (k + 1), d, sc + 2 * k + 2);
            }
        }
    }
    return vsum_total4(t);
}

/* ---- tile dequantizers: core/quant.c's f32 operations, 8 elements at a time ----------- */

/* dst[j] = (float)q_j * d for 32 signed bytes */
static inline void store_scaled(float *dst, __m256i q, __m256 d) {
    __m128i h[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
    for (int k = 0; k < 2; k++) {
        _mm256_storeu_ps(dst + 16 * k, _mm256_mul_ps(i8x8_ps(h[k]), d));
        _mm256_storeu_ps(dst + 16 * k + 8, _mm256_mul_ps(i8x8_ps(_mm_srli_si128(h[k], 8)), d));
    }
}

/* dst[j] = (float)q_j * d + m, the product rounded before the sum */
static inline void store_affine(float *dst, __m256i q, __m256 d, __m256 m) {
    __m128i h[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
    for (int k = 0; k < 2; k++) {
        _mm256_storeu_ps(dst + 16 * k, _mm256_add_ps(_mm256_mul_ps(i8x8_ps(h[k]), d), m));
        _mm256_storeu_ps(dst + 16 * k + 8,
                         _mm256_add_ps(_mm256_mul_ps(i8x8_ps(_mm_srli_si128(h[k], 8)), d), m));
    }
}

static void dequant_q4_0(float *dst, const void *src, int64_t n) {
    const finch_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_scaled(dst, _mm256_sub_epi8(finch_cpu_nibbles32(b[i].qs), _mm256_set1_epi8(8)),
                     _mm256_set1_ps(finch_f16_to_f32(b[i].d)));
}

static void dequant_q4_1(float *dst, const void *src, int64_t n) {
    const finch_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_affine(dst, finch_cpu_nibbles32(b[i].qs), _mm256_set1_ps(finch_f16_to_f32(b[i].d)),
                     _mm256_set1_ps(finch_f16_to_f32(b[i].m)));
}

static void dequant_q5_0(float *dst, const void *src, int64_t n) {
    const finch_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_scaled(dst, _mm256_sub_epi8(q5_values(b[i].qs, b[i].qh), _mm256_set1_epi8(16)),
                     _mm256_set1_ps(finch_f16_to_f32(b[i].d)));
}

static void dequant_q5_1(float *dst, const void *src, int64_t n) {
    const finch_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_affine(dst, q5_values(b[i].qs, b[i].qh), _mm256_set1_ps(finch_f16_to_f32(b[i].d)),
                     _mm256_set1_ps(finch_f16_to_f32(b[i].m)));
}

static void dequant_q8_0(float *dst, const void *src, int64_t n) {
    const finch_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_scaled(dst, _mm256_loadu_si256((const __m256i *)b[i].qs),
                     _mm256_set1_ps(finch_f16_to_f32(b[i].d)));
}

/* d1 q - m1 with d1 = d sc, m1 = dmin m: stored as q d1 + (-m1), the same rounding */
static inline void k_store_pair(float *dst, __m256i lo, __m256i hi, const uint8_t *scales, int c,
                                float d, float dmin) {
    int sc, m;
    finch_k_scale_min(2 * c, scales, &sc, &m);
    store_affine(dst, lo, _mm256_set1_ps(d * (float)sc), _mm256_set1_ps(-(dmin * (float)m)));
    finch_k_scale_min(2 * c + 1, scales, &sc, &m);
    store_affine(dst + 32, hi, _mm256_set1_ps(d * (float)sc), _mm256_set1_ps(-(dmin * (float)m)));
}

static void dequant_q4_k(float *dst, const void *src, int64_t n) {
    const finch_block_q4_k *b = src;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = finch_f16_to_f32(b[i].d), dmin = finch_f16_to_f32(b[i].dmin);
        for (int c = 0; c < 4; c++, dst += 64) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
            k_store_pair(dst, _mm256_and_si256(v, m4),
                         _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), b[i].scales, c, d, dmin);
        }
    }
}

static void dequant_q5_k(float *dst, const void *src, int64_t n) {
    const finch_block_q5_k *b = src;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = finch_f16_to_f32(b[i].d), dmin = finch_f16_to_f32(b[i].dmin);
        const __m256i h = _mm256_loadu_si256((const __m256i *)b[i].qh);
        for (int c = 0; c < 4; c++, dst += 64) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
            __m256i lo = _mm256_or_si256(_mm256_and_si256(v, m4), bytes_with(h, 1u << (2 * c), 16));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                         bytes_with(h, 2u << (2 * c), 16));
            k_store_pair(dst, lo, hi, b[i].scales, c, d, dmin);
        }
    }
}

/* (d sc) (q - 32), as core's d * (float)sc * (float)q */
static void dequant_q6_k(float *dst, const void *src, int64_t n) {
    const finch_block_q6_k *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = finch_f16_to_f32(b[i].d);
        for (int half = 0; half < 2; half++, dst += 128) {
            const int8_t *sc = b[i].scales + 8 * half;
            __m256i q[4];
            q6_k_half(q, b[i].ql + 64 * half, b[i].qh + 32 * half);
            for (int k = 0; k < 4; k++) {
                __m128i h[2] = {_mm256_castsi256_si128(q[k]), _mm256_extracti128_si256(q[k], 1)};
                for (int g = 0; g < 2; g++) {
                    __m256 s = _mm256_set1_ps(d * (float)sc[2 * k + g]);
                    float *o = dst + 32 * k + 16 * g;
                    _mm256_storeu_ps(o, _mm256_mul_ps(s, i8x8_ps(h[g])));
                    _mm256_storeu_ps(o + 8, _mm256_mul_ps(s, i8x8_ps(_mm_srli_si128(h[g], 8))));
                }
            }
        }
    }
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
#define dequant_f16 NULL
#define dequant_bf16 NULL
#define dot_q4_0 NULL
#define dot_q4_1 NULL
#define dot_q5_0 NULL
#define dot_q5_1 NULL
#define dot_q8_0 NULL
#define dot_q4_k NULL
#define dot_q5_k NULL
#define dot_q6_k NULL
#define dequant_q4_0 NULL
#define dequant_q4_1 NULL
#define dequant_q5_0 NULL
#define dequant_q5_1 NULL
#define dequant_q8_0 NULL
#define dequant_q4_k NULL
#define dequant_q5_k NULL
#define dequant_q6_k NULL
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

static const finch_cpu_dot_fn dot_table[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_F32] = dot_f32,   [FINCH_DTYPE_F16] = dot_f16,   [FINCH_DTYPE_BF16] = dot_bf16,
    [FINCH_DTYPE_Q4_0] = dot_q4_0, [FINCH_DTYPE_Q4_1] = dot_q4_1, [FINCH_DTYPE_Q5_0] = dot_q5_0,
    [FINCH_DTYPE_Q5_1] = dot_q5_1, [FINCH_DTYPE_Q8_0] = dot_q8_0, [FINCH_DTYPE_Q4_K] = dot_q4_k,
    [FINCH_DTYPE_Q5_K] = dot_q5_k, [FINCH_DTYPE_Q6_K] = dot_q6_k, [FINCH_DTYPE_NF4] = dot_nf4,
};

static const finch_dequant_fn tile_dequant_table[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_F16] = dequant_f16,   [FINCH_DTYPE_BF16] = dequant_bf16,
    [FINCH_DTYPE_Q4_0] = dequant_q4_0, [FINCH_DTYPE_Q4_1] = dequant_q4_1,
    [FINCH_DTYPE_Q5_0] = dequant_q5_0, [FINCH_DTYPE_Q5_1] = dequant_q5_1,
    [FINCH_DTYPE_Q8_0] = dequant_q8_0, [FINCH_DTYPE_Q4_K] = dequant_q4_k,
    [FINCH_DTYPE_Q5_K] = dequant_q5_k, [FINCH_DTYPE_Q6_K] = dequant_q6_k,
    [FINCH_DTYPE_NF4] = dequant_nf4,
};

finch_cpu_dot_fn finch_cpu_row_dot(finch_dtype t) {
    return dot_table[t];
}

float finch_cpu_row_dot_blocks(finch_dtype t, const void *row, const float *x, int64_t n) {
    const finch_dtype_traits *tr = &finch_dtype_info[t];
    float blk[QK_K];
    const uint8_t *p = row;
    float s = 0;
    for (int64_t i = 0; i < n; i += tr->block_elems, p += tr->block_bytes) {
        tr->dequant(blk, p, tr->block_elems);
        s += dot_f32(blk, x + i, tr->block_elems);
    }
    return s;
}

finch_dequant_fn finch_cpu_row_dequant(finch_dtype t) {
    return tile_dequant_table[t] ? tile_dequant_table[t] : finch_dtype_info[t].dequant;
}
