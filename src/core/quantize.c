/*
 * quantize.c: the reference quantizers, f32 rows to each writable storage type. They
 * reproduce llama.cpp's quantize_row_*_ref (and the PyPI gguf package's quants.py, which
 * matches it bit for bit): one scale per block from the block's extreme values, then a
 * rounding rule per type (FORMATS.md section 2). Nothing here searches for better scales
 * or uses an importance matrix; those quantizers are not references and finch does not
 * write K-quants.
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
