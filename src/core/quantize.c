/*
 * quantize.c: the reference quantizers, f32 rows to each writable storage type. They
 * reproduce llama.cpp's quantize_row_*_ref (and the PyPI gguf package's quants.py, which
 * matches it bit for bit): one scale per block from the block's extreme values, then a
 * rounding rule per type (FORMATS.md section 2). The K-quants (Q4_K, Q5_K, Q6_K), which
 * have no closed-form reference, come last: finch's own scale search (see there). Nothing
 * here uses an importance matrix.
 *
 * Exactness: every step is one IEEE f32 operation in the order ggml performs it, so the
 * output bytes equal ggml's. A fused multiply-add would change the last bit of x*id + 8.5
 * and with it a quantized value near a rounding boundary, so contraction is switched off
 * (GCC does not contract in ISO C mode; clang needs the pragma).
 *
 * NF4 follows bitsandbytes instead (FORMATS.md 2.2): its reference quantizer (the torch
 * implementation of quantize_4bit and quantize_blockwise in bitsandbytes/backends/default,
 * which is the CUDA kernels' rule): x * (1 / absmax) in f32, clamped to [-1, 1], then the
 * nearest code by comparison with the f32 midpoints of neighbouring codes, a value on a
 * midpoint going to the lower code. (bitsandbytes' native CPU library quantizes the 8-bit
 * step through a 65536-entry lookup table instead, which picks a neighbour of the nearest
 * code for about 1 value in 500; finch follows the exact rule.)
 *
 * Inputs are expected finite. NaN or infinity produce some valid block (never undefined
 * behaviour: every float is clamped before it is converted to an integer), not ggml's.
 */
#include "core/quant.h"

#include <float.h>
#include <math.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* Truncates v toward zero and clamps it to 0..hi; NaN gives 0. ggml writes
 * MIN(hi, (int8_t)v) for v >= 0, which is the same for every finite v it produces. */
static inline uint8_t trunc_clamp(float v, int hi) {
    if (!(v >= 0.0f)) return 0;
    if (v >= (float)hi) return (uint8_t)hi;
    return (uint8_t)v;
}

/* roundf(v) clamped to -127..127 (the range max|x| / 127 scaling yields); NaN gives 0. */
static inline int8_t round_clamp_i8(float v) {
    if (!(v > -127.0f)) return v <= -127.0f ? -127 : 0;
    if (v >= 127.0f) return 127;
    return (int8_t)roundf(v);
}

/* The element with the largest magnitude, sign kept; the first one on ties, as ggml. */
static float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void min_max(const float *x, int n, float *min, float *max) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *min = lo;
    *max = hi;
}

/* The 5th bits of a Q5 block as the little-endian u32 the format stores. */
static void store_qh(uint8_t qh[4], uint32_t bits) {
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(bits >> (8 * k));
}

void finch_quantize_f32(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0);
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void finch_quantize_f16(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0);
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) y[i] = finch_f32_to_f16(src[i]);
}

void finch_quantize_bf16(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0);
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) y[i] = finch_f32_to_bf16(src[i]);
}

/*
 * Q4_0: d = max / -8 where max is the signed extreme, so the extreme maps to q = 0 and
 * the range -8..7 is used on both sides; q = min(15, trunc(x/d + 8.5)).
 */
void finch_quantize_q4_0(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK == 0);
    finch_block_q4_0 *y = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *x = src + b * QK;
        const float d = signed_absmax(x, QK) / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = finch_f32_to_f16(d);
        for (int j = 0; j < QK / 2; j++) {
            const float v0 = x[j] * id;
            const float v1 = x[j + QK / 2] * id;
            const uint8_t q0 = trunc_clamp(v0 + 8.5f, 15);
            const uint8_t q1 = trunc_clamp(v1 + 8.5f, 15);
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Q4_1: m = min(x), d = (max - min) / 15, q = min(15, trunc((x - m)/d + 0.5)). */
void finch_quantize_q4_1(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK == 0);
    finch_block_q4_1 *y = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *x = src + b * QK;
        float min, max;
        min_max(x, QK, &min, &max);
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = finch_f32_to_f16(d);
        y[b].m = finch_f32_to_f16(min);
        for (int j = 0; j < QK / 2; j++) {
            const float v0 = (x[j] - min) * id;
            const float v1 = (x[j + QK / 2] - min) * id;
            const uint8_t q0 = trunc_clamp(v0 + 0.5f, 15);
            const uint8_t q1 = trunc_clamp(v1 + 0.5f, 15);
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Q5_0: as Q4_0 with 5 bits: d = max / -16, q = min(31, trunc(x/d + 16.5)). */
void finch_quantize_q5_0(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK == 0);
    finch_block_q5_0 *y = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *x = src + b * QK;
        const float d = signed_absmax(x, QK) / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint32_t qh = 0;
        y[b].d = finch_f32_to_f16(d);
        for (int j = 0; j < QK / 2; j++) {
            const float v0 = x[j] * id;
            const float v1 = x[j + QK / 2] * id;
            const uint8_t q0 = trunc_clamp(v0 + 16.5f, 31);
            const uint8_t q1 = trunc_clamp(v1 + 16.5f, 31);
            y[b].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + QK / 2);
        }
        store_qh(y[b].qh, qh);
    }
}

/* Q5_1: as Q4_1 with 5 bits: d = (max - min) / 31, q = min(31, trunc((x - m)/d + 0.5)). */
void finch_quantize_q5_1(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK == 0);
    finch_block_q5_1 *y = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *x = src + b * QK;
        float min, max;
        min_max(x, QK, &min, &max);
        const float d = (max - min) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint32_t qh = 0;
        y[b].d = finch_f32_to_f16(d);
        y[b].m = finch_f32_to_f16(min);
        for (int j = 0; j < QK / 2; j++) {
            const float v0 = (x[j] - min) * id;
            const float v1 = (x[j + QK / 2] - min) * id;
            const uint8_t q0 = trunc_clamp(v0 + 0.5f, 31);
            const uint8_t q1 = trunc_clamp(v1 + 0.5f, 31);
            y[b].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + QK / 2);
        }
        store_qh(y[b].qh, qh);
    }
}

/* Q8_0: d = max|x| / 127, q = roundf(x/d) (halves away from zero). */
void finch_quantize_q8_0(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK == 0);
    finch_block_q8_0 *y = dst;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *x = src + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = finch_f32_to_f16(d);
        for (int j = 0; j < QK; j++) y[b].qs[j] = round_clamp_i8(x[j] * id);
    }
}

/* ---- NF4 (bitsandbytes) ------------------------------------------------------------- */

/* The index of the nearest of n sorted codes to s: the number of midpoints
 * (code[i] + code[i+1]) / 2 (f32) strictly below s (torch.bucketize, right=False). */
static inline int nearest_code(const float *code, int n, float s) {
    int lo = 0, hi = n - 1; /* the answer is in [lo, hi] */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        float bound = (code[mid] + code[mid + 1]) / 2.0f;
        if (bound < s)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* x * (1 / max(absmax, 1e-38)) clamped to [-1, 1]: bitsandbytes' normalisation of whole
 * blocks (torch clamps the ratio, so NaN-free inputs stay in range). */
static inline float nf4_scale(float x, float inv) {
    float s = x * inv;
    return s < -1.0f ? -1.0f : s > 1.0f ? 1.0f : s;
}

void finch_quantize_nf4(void *dst, const float *src, int64_t n) {
    finch_block_nf4 *b = dst;
    for (int64_t i = 0; i < n / QK_NF4; i++, src += QK_NF4) {
        float amax = 0.0f;
        for (int j = 0; j < QK_NF4; j++) amax = fmaxf(amax, fabsf(src[j]));
        const float inv = 1.0f / fmaxf(amax, 1e-38f);
        b[i].d = amax;
        for (int j = 0; j < QK_NF4 / 2; j++) {
            int hi = nearest_code(finch_nf4_code, 16, nf4_scale(src[2 * j], inv));
            int lo = nearest_code(finch_nf4_code, 16, nf4_scale(src[2 * j + 1], inv));
            b[i].qs[j] = (uint8_t)(hi << 4 | lo);
        }
    }
}

/* The f32 sum of the n blocks' d in the order torch's CPU sum kernel uses for a contiguous float
 * tensor of at most 32768 elements (aten/src/ATen/native/cpu/SumKernel.cpp: cascade_sum,
 * row_sum and multi_row_sum): lanes of W = 8 floats (W = 1 below 8 elements), four
 * interleaved accumulator rows, a 4-level cascade over steps of 2^max(4, ceil(log2(rows))/4)
 * rows, then the rows, the scalar tail and the lanes added in order. Checked against torch
 * on every length to 300 and longer ones (tests/reference/make_nf4_fixtures.py; the offset
 * of each fixture). Larger tensors torch splits across its threads, so its mean then
 * depends on the thread count; finch keeps this order. */
static float torch_sum_f32(const finch_block_nf4 *b, int64_t n) {
#define x(i) b[i].d
    enum { ILP = 4, LEVELS = 4, WMAX = 8 };
    const int W = n >= WMAX ? WMAX : 1;
    const int64_t n_vec = n / W, rows = n_vec / ILP;
    int64_t ceil_log2 = 0;
    while (((int64_t)1 << ceil_log2) < rows) ceil_log2++;
    const int64_t power = ceil_log2 / LEVELS > 4 ? ceil_log2 / LEVELS : 4;
    const int64_t step = (int64_t)1 << power, mask = step - 1;
    float acc[LEVELS][ILP][WMAX] = {{{0}}};
    int64_t i = 0;
    while (i + step <= rows) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < ILP; k++)
                for (int l = 0; l < W; l++) acc[0][k][l] += x((i * ILP + k) * W + l);
        for (int j = 1; j < LEVELS; j++) {
            for (int k = 0; k < ILP; k++)
                for (int l = 0; l < W; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if (i & (mask << (j * power))) break;
        }
    }
    for (; i < rows; i++)
        for (int k = 0; k < ILP; k++)
            for (int l = 0; l < W; l++) acc[0][k][l] += x((i * ILP + k) * W + l);
    for (int j = 1; j < LEVELS; j++)
        for (int k = 0; k < ILP; k++)
            for (int l = 0; l < W; l++) acc[0][k][l] += acc[j][k][l];
    for (int64_t v = rows * ILP; v < n_vec; v++) /* vectors past the last whole row */
        for (int l = 0; l < W; l++) acc[0][0][l] += x(v * W + l);
    for (int k = 1; k < ILP; k++)
        for (int l = 0; l < W; l++) acc[0][0][l] += acc[0][k][l];
    float total = 0.0f;
    for (int64_t k = n_vec * W; k < n; k++) total += x(k);
    for (int l = 0; l < W; l++) total += acc[0][0][l];
    return total;
#undef x
}

void finch_nf4_double_quant(finch_block_nf4 *blocks, int64_t nb, uint8_t *q8, float *nested,
                            float *offset) {
    if (nb <= 0) return;
    /* offset = absmax.mean(): torch's f32 sum, divided by the count in f32 */
    const float off = torch_sum_f32(blocks, nb) / (float)nb;
    *offset = off;
    for (int64_t g0 = 0; g0 < nb; g0 += QK_NF4_NESTED) {
        const int64_t n = nb - g0 < QK_NF4_NESTED ? nb - g0 : QK_NF4_NESTED;
        float x[QK_NF4_NESTED], amax = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            x[j] = blocks[g0 + j].d - off;
            amax = fmaxf(amax, fabsf(x[j]));
        }
        /* whole groups multiply by the reciprocal and store the absmax as it is; the last,
         * partial group divides by the absmax clamped to 1e-38 and stores that (as
         * bitsandbytes' quantize_blockwise does) */
        const bool whole = n == QK_NF4_NESTED;
        const float am = whole ? amax : fmaxf(amax, 1e-38f), inv = 1.0f / fmaxf(amax, 1e-38f);
        for (int64_t j = 0; j < n; j++) {
            float s = whole ? x[j] * inv : x[j] / am;
            s = s < -1.0f ? -1.0f : s > 1.0f ? 1.0f : s;
            uint8_t q = (uint8_t)nearest_code(finch_nf4_dynamic_map, 256, s);
            if (q8) q8[g0 + j] = q;
            float v = finch_nf4_dynamic_map[q] * am;
            blocks[g0 + j].d = v + off;
        }
        if (nested) nested[g0 / QK_NF4_NESTED] = am;
    }
}

/* ---- K-quants: searched scales ---------------------------------------------------------- */
/*
 * Q4_K, Q5_K and Q6_K have no closed-form reference: llama.cpp's quantizers search, and so
 * does finch, with its own search written from the block formats (FORMATS.md 2.5-2.7).
 * The bytes are not llama.cpp's; the dequantized values are what the search optimises:
 * the squared error sum (x - dequant(q))^2 over each block, unweighted.
 *
 * Two levels. Each sub-block (32 weights in Q4_K/Q5_K, 16 in Q6_K) gets a real-valued
 * scale (and, with a min, an offset) from a search over candidate scales: for each
 * candidate the codes are rounded, then the scale (and offset) that minimise the squared
 * error for those codes are solved in closed form (least squares), and the best pair is
 * refined by alternating "round the codes" and "refit" until it stops improving. The
 * super-block then stores those scales as 6-bit (Q4_K/Q5_K) or 8-bit (Q6_K) multiples of
 * one fp16 super-scale; each sub-block tries its nearest stored code and the neighbours on
 * either side (codes of scale and min both, for Q4_K/Q5_K), re-rounding its weights for
 * each, and keeps the pair with the least error. The plain scales (from the sub-block's
 * extremes) are coded the same way and win where they are better, so no block is worse
 * than the extremes' quantizer in the same format. The errors of candidates come from the
 * least-squares sums (one pass over the weights per candidate).
 */

#define KQ_STEPS 24 /* candidate scales per sub-block, spread over +-1.2 code steps */

/* The nearest integer, clamped to +-2^20 (NaN gives 0) so the conversion is defined. */
static inline int nearest_int(float v) {
    if (!(v > -1048576.0f)) return v <= -1048576.0f ? -1048576 : 0;
    if (v > 1048576.0f) return 1048576;
    /* halves away from zero, by truncation (floorf is a libm call at the baseline ISA) */
    return v >= 0.0f ? (int)(v + 0.5f) : -(int)(0.5f - v);
}

static inline int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* Codes q in 0..nmax for x ~ s*q + b, b <= 0 (the formats store a subtracted min). */
static void round_affine(const float *x, int n, int nmax, float s, float b, uint8_t *q) {
    const float is = s > 0.0f ? 1.0f / s : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (uint8_t)clampi(nearest_int((x[i] - b) * is), 0, nmax);
}

static double affine_err(const float *x, int n, const uint8_t *q, float s, float b) {
    double e = 0.0;
    for (int i = 0; i < n; i++) {
        const double r = (double)s * q[i] + b - x[i];
        e += r * r;
    }
    return e;
}

/* Least squares for x ~ s*q + b over fixed codes, with b <= 0 and s >= 0 imposed:
 * [n Sq; Sq Sqq] [b; s] = [Sx; Sxq]. Returns the squared error of the (f32) result from the
 * same sums, sum (s q + b - x)^2 = Sxx + s^2 Sqq + n b^2 + 2 s b Sq - 2 s Sxq - 2 b Sx, so
 * the search needs no third pass over the weights (sxx = Sxx, given). */
static double fit_affine(const float *x, int n, const uint8_t *q, double sxx, float *s, float *b) {
    int64_t sq = 0, sqq = 0;
    double sx = 0, sxq = 0;
    for (int i = 0; i < n; i++) {
        sq += q[i];
        sqq += (int64_t)q[i] * q[i];
        sx += x[i];
        sxq += (double)x[i] * q[i];
    }
    const double det = (double)n * (double)sqq - (double)sq * (double)sq;
    double ss = 0, bb = 0;
    if (det > 0) {
        ss = ((double)n * sxq - (double)sq * sx) / det;
        bb = ((double)sqq * sx - (double)sq * sxq) / det;
    }
    if (det <= 0 || bb > 0) { /* offset pinned at 0: s = Sxq / Sqq */
        bb = 0;
        ss = sqq > 0 ? sxq / (double)sqq : 0;
    }
    if (ss < 0 || sqq == 0) { /* no slope fits: the constant offset alone (clamped to <= 0) */
        ss = 0;
        bb = fmin(sx / n, 0.0);
    }
    *s = (float)ss;
    *b = (float)bb;
    const double S = *s, B = *b;
    const double e =
        sxx + S * S * (double)sqq + n * B * B + 2 * S * B * (double)sq - 2 * S * sxq - 2 * B * sx;
    return e > 0 ? e : 0;
}

static double sum_sq(const float *x, int n) {
    double e = 0;
    for (int i = 0; i < n; i++) e += (double)x[i] * x[i];
    return e;
}

/* The searched (s, b) of one sub-block for codes 0..nmax. */
static void search_affine(const float *x, int n, int nmax, float *s_out, float *b_out) {
    float lo = 0.0f, hi = 0.0f; /* the range always holds 0: b <= 0 */
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    *s_out = 0.0f;
    *b_out = lo;
    if (!(hi > lo)) return; /* all zero (or not finite) */
    uint8_t q[QK], bq[QK];
    const double sxx = sum_sq(x, n);
    /* the plain min/max fit is the first candidate */
    float bs = (hi - lo) / (float)nmax, bb = lo;
    round_affine(x, n, nmax, bs, bb, bq);
    double best = affine_err(x, n, bq, bs, bb);
    for (int k = 0; k <= KQ_STEPS; k++) {
        const float steps = (float)nmax + 1.2f * (2.0f * (float)k / KQ_STEPS - 1.0f);
        if (steps <= 0.5f) continue;
        float s = (hi - lo) / steps, b = lo;
        round_affine(x, n, nmax, s, b, q);
        const double e = fit_affine(x, n, q, sxx, &s, &b);
        if (e < best) {
            best = e;
            bs = s;
            bb = b;
            memcpy(bq, q, (size_t)n);
        }
    }
    /* alternate rounding and refitting while the error falls */
    for (int it = 0; it < 8 && bs > 0.0f; it++) {
        float s, b;
        round_affine(x, n, nmax, bs, bb, q);
        const double e = fit_affine(x, n, q, sxx, &s, &b);
        if (!(e < best)) break;
        best = e;
        bs = s;
        bb = b;
    }
    *s_out = bs;
    *b_out = bb;
}

/* Error of a sub-block stored as scale code sc and min code m (s = d*sc, b = -dmin*m), its
 * codes re-rounded into q. */
static double coded_affine(const float *x, int n, int nmax, float d, float dmin, int sc, int m,
                           uint8_t *q) {
    const float s = d * (float)sc, b = -(dmin * (float)m);
    round_affine(x, n, nmax, s, b, q);
    return affine_err(x, n, q, s, b);
}

/* The 6-bit code nearest v / d (0 when d is 0). */
static int code6(float v, float d) {
    return d > 0.0f ? clampi(nearest_int(v / d), 0, 63) : 0;
}

/* The coded form of sub-block scales s and mins mn (8 each): d = max s / 63 and
 * dmin = max mn / 63 as fp16, then per sub-block the nearest 6-bit codes and their
 * neighbours, each with its weights re-rounded, the pair with the least error kept.
 * Returns the super-block's squared error. */
typedef struct {
    uint16_t d16, dmin16;
    uint8_t sc[QK_K / 32], m[QK_K / 32], q[QK_K];
} affine_code;

static double code_affine(const float *x, int nmax, const float *s, const float *mn,
                          affine_code *out) {
    enum { SUB = 32, NSUB = QK_K / 32 };
    float smax = 0.0f, mmax = 0.0f;
    for (int j = 0; j < NSUB; j++) {
        smax = fmaxf(smax, s[j]);
        mmax = fmaxf(mmax, mn[j]);
    }
    out->d16 = finch_f32_to_f16(smax / 63.0f);
    out->dmin16 = finch_f32_to_f16(mmax / 63.0f);
    const float d = finch_f16_to_f32(out->d16), dmin = finch_f16_to_f32(out->dmin16);
    uint8_t tq[SUB];
    double total = 0.0;
    for (int j = 0; j < NSUB; j++) {
        const float *xj = x + SUB * j;
        const int c0 = code6(s[j], d), m0 = code6(mn[j], dmin);
        double best = -1.0;
        for (int dc = -1; dc <= 1; dc++)
            for (int dm = -1; dm <= 1; dm++) {
                const int c = c0 + dc, mm = m0 + dm;
                if (c < 0 || c > 63 || mm < 0 || mm > 63) continue;
                const double e = coded_affine(xj, SUB, nmax, d, dmin, c, mm, tq);
                if (best < 0 || e < best) {
                    best = e;
                    out->sc[j] = (uint8_t)c;
                    out->m[j] = (uint8_t)mm;
                    memcpy(out->q + SUB * j, tq, SUB);
                }
            }
        total += best;
    }
    return total;
}

/* One super-block of Q4_K (nmax 15) or Q5_K (nmax 31): d, dmin, the packed 6-bit scales and
 * mins, and the 256 codes in q. The searched scales are coded, and so are the plain ones
 * (max - min over nmax, min 0 or below): the better coding is kept, so a block is never
 * worse than the extremes' quantizer in the same format. */
static void kquant_affine(const float *x, int nmax, uint16_t *d16, uint16_t *dmin16,
                          uint8_t scales[12], uint8_t q[QK_K]) {
    enum { SUB = 32, NSUB = QK_K / 32 };
    float s[NSUB], mn[NSUB], ps[NSUB], pm[NSUB];
    for (int j = 0; j < NSUB; j++) {
        float b, lo = 0.0f, hi = 0.0f;
        search_affine(x + SUB * j, SUB, nmax, &s[j], &b);
        mn[j] = -b;
        for (int i = 0; i < SUB; i++) {
            lo = fminf(lo, x[SUB * j + i]);
            hi = fmaxf(hi, x[SUB * j + i]);
        }
        ps[j] = (hi - lo) / (float)nmax;
        pm[j] = -lo;
    }
    affine_code a, p;
    const double ea = code_affine(x, nmax, s, mn, &a), ep = code_affine(x, nmax, ps, pm, &p);
    const affine_code *c = ep < ea ? &p : &a;
    const uint8_t *sc = c->sc, *m = c->m;
    *d16 = c->d16;
    *dmin16 = c->dmin16;
    memcpy(q, c->q, QK_K);
    /* pack: j < 4 in the low 6 bits of bytes j (scale) and j+4 (min); j >= 4 as nibbles of
     * byte j+4 with their top 2 bits in the high bits of bytes j-4 and j */
    for (int j = 0; j < 4; j++) {
        scales[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        scales[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        scales[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

/* Q4_K: 4-bit codes, chunk c of 64 weights in qs[32c..32c+31], low nibbles first. */
void finch_quantize_q4_k(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK_K == 0);
    finch_block_q4_k *y = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        uint8_t q[QK_K];
        kquant_affine(src + b * QK_K, 15, &y[b].d, &y[b].dmin, y[b].scales, q);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                y[b].qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
}

/* Q5_K: the low 4 bits as Q4_K, the 5th bit of chunk c in bits 2c (low half) and 2c+1
 * (high half) of qh[l]. */
void finch_quantize_q5_k(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK_K == 0);
    finch_block_q5_k *y = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        uint8_t q[QK_K];
        kquant_affine(src + b * QK_K, 31, &y[b].d, &y[b].dmin, y[b].scales, q);
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                const uint8_t lo = q[64 * c + l], hi = q[64 * c + 32 + l];
                y[b].qs[32 * c + l] = (uint8_t)((lo & 15) | ((hi & 15) << 4));
                y[b].qh[l] |= (uint8_t)(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
            }
    }
}

/* Codes q in -32..31 for x ~ s*q. */
static void round_sym(const float *x, int n, float s, int8_t *q) {
    const float is = s != 0.0f ? 1.0f / s : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (int8_t)clampi(nearest_int(x[i] * is), -32, 31);
}

static double sym_err(const float *x, int n, const int8_t *q, float s) {
    double e = 0.0;
    for (int i = 0; i < n; i++) {
        const double r = (double)s * q[i] - x[i];
        e += r * r;
    }
    return e;
}

/* s = Sxq / Sqq, the least-squares scale for fixed codes; returns the squared error of the
 * (f32) result from the sums, Sxx - 2 s Sxq + s^2 Sqq (sxx = Sxx, given). */
static double fit_sym(const float *x, int n, const int8_t *q, double sxx, float *s) {
    double sxq = 0;
    int64_t sqq = 0;
    for (int i = 0; i < n; i++) {
        sxq += (double)x[i] * q[i];
        sqq += (int64_t)q[i] * q[i];
    }
    *s = sqq > 0 ? (float)(sxq / (double)sqq) : 0.0f;
    const double S = *s, e = sxx - 2 * S * sxq + S * S * (double)sqq;
    return e > 0 ? e : 0;
}

/* The searched scale of a 16-weight Q6_K sub-block: candidates put the extreme at about
 * -32 or +31 code steps (either sign may use the longer side), refit, then refined. */
static float search_sym(const float *x, int n) {
    float ext = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(ext)) ext = x[i];
    if (!(ext != 0.0f) || !isfinite(ext)) return 0.0f;
    int8_t q[QK];
    const double sxx = sum_sq(x, n);
    float bs = -ext / 32.0f;
    round_sym(x, n, bs, q);
    double best = sym_err(x, n, q, bs);
    for (int side = 0; side < 2; side++)
        for (int k = 0; k <= KQ_STEPS; k++) {
            const float steps = (side ? 31.0f : 32.0f) + 1.2f * (2.0f * (float)k / KQ_STEPS - 1.0f);
            float s = (side ? ext : -ext) / steps;
            round_sym(x, n, s, q);
            const double e = fit_sym(x, n, q, sxx, &s);
            if (e < best) {
                best = e;
                bs = s;
            }
        }
    for (int it = 0; it < 8 && bs != 0.0f; it++) {
        round_sym(x, n, bs, q);
        float s;
        const double e = fit_sym(x, n, q, sxx, &s);
        if (!(e < best)) break;
        best = e;
        bs = s;
    }
    return bs;
}

/* The coded form of the 16 sub-block scales s of a Q6_K block with super-scale d (fp16,
 * either sign): per sub-block the nearest int8 code (-128..127) and its neighbours, weights
 * re-rounded for each, the least error kept. Returns the block's squared error. */
static double code_sym(const float *x, const float *s, uint16_t d16, int8_t scales[16],
                       int8_t q[QK_K]) {
    enum { SUB = 16, NSUB = QK_K / 16 };
    const float d = finch_f16_to_f32(d16);
    int8_t tq[SUB];
    double total = 0.0;
    for (int j = 0; j < NSUB; j++) {
        const float *xj = x + SUB * j;
        const int c0 = d != 0.0f && isfinite(d) ? clampi(nearest_int(s[j] / d), -128, 127) : 0;
        double best = -1.0;
        for (int dc = -1; dc <= 1; dc++) {
            const int c = c0 + dc;
            if (c < -128 || c > 127) continue;
            round_sym(xj, SUB, d * (float)c, tq);
            const double e = sym_err(xj, SUB, tq, d * (float)c);
            if (best < 0 || e < best) {
                best = e;
                scales[j] = (int8_t)c;
                memcpy(q + SUB * j, tq, SUB);
            }
        }
        total += best;
    }
    return total;
}

/* The super-scales worth coding s with: max |s| / 127 (codes -127..127), and the one that
 * puts the scale of largest magnitude at -128 (d = -that / 128, so d's sign may be
 * negative), which is how llama.cpp codes them: a Q6_K block's own scales come back
 * exactly. */
static void sym_supers(const float *s, uint16_t d16[2]) {
    float ext = 0.0f;
    for (int j = 0; j < QK_K / 16; j++)
        if (fabsf(s[j]) > fabsf(ext)) ext = s[j];
    d16[0] = finch_f32_to_f16(fabsf(ext) / 127.0f);
    d16[1] = finch_f32_to_f16(-ext / 128.0f);
}

/* Q6_K: 16 sub-blocks of 16 with int8 scales times an fp16 d (stored last); codes q+32 in
 * 0..63, their low 4 bits in ql and top 2 bits in qh, two halves of 128 weights. The
 * searched scales are coded, and so are the plain ones (max |x| / 32), each against two
 * super-scales (sym_supers): the best coding is kept. */
void finch_quantize_q6_k(void *dst, const float *src, int64_t n) {
    FINCH_ASSERT(n >= 0 && n % QK_K == 0);
    enum { SUB = 16, NSUB = QK_K / 16 };
    finch_block_q6_k *y = dst;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float *x = src + b * QK_K;
        float s[NSUB], ps[NSUB];
        for (int j = 0; j < NSUB; j++) {
            s[j] = search_sym(x + SUB * j, SUB);
            float am = 0.0f;
            for (int i = 0; i < SUB; i++) am = fmaxf(am, fabsf(x[SUB * j + i]));
            ps[j] = am / 32.0f;
        }
        /* every pair of scales (searched, plain) and super-scale; the least error wins */
        int8_t q[QK_K], tq[QK_K], tsc[NSUB];
        double best = -1.0;
        for (int k = 0; k < 2; k++) {
            const float *sk = k ? ps : s;
            uint16_t d16[2];
            sym_supers(sk, d16);
            for (int v = 0; v < 2; v++) {
                const double e = code_sym(x, sk, d16[v], tsc, tq);
                if (best < 0 || e < best) {
                    best = e;
                    y[b].d = d16[v];
                    memcpy(y[b].scales, tsc, sizeof tsc);
                    memcpy(q, tq, sizeof q);
                }
            }
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const int base = 128 * h + l;
                const uint8_t q0 = (uint8_t)(q[base] + 32), q1 = (uint8_t)(q[base + 32] + 32);
                const uint8_t q2 = (uint8_t)(q[base + 64] + 32), q3 = (uint8_t)(q[base + 96] + 32);
                y[b].ql[64 * h + l] = (uint8_t)((q0 & 15) | ((q2 & 15) << 4));
                y[b].ql[64 * h + l + 32] = (uint8_t)((q1 & 15) | ((q3 & 15) << 4));
                y[b].qh[32 * h + l] =
                    (uint8_t)((q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6));
            }
    }
}
