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
