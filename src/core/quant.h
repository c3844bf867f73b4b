/*
 * quant.h: block layouts of the quantized storage types and their row converters
 * (dequantize: quant.c; reference quantizers: quantize.c). Used through the
 * finch_dtype_info table; kernels may also call the block structs directly.
 *
 * Facts: ../shared/FORMATS.md section 2. Dequantization computes d*q (d*q + m,
 * d1*q - m1) in f32 in llama.cpp's order, so results are bit-identical to ggml's.
 */
#ifndef FINCH_QUANT_H
#define FINCH_QUANT_H

#include "core/core.h"

#define QK 32             /* elements per block of the 32-element types */
#define QK_K 256          /* elements per super-block of the K-quants */
#define QK_NF4 64         /* elements per NF4 block (bitsandbytes' blocksize 64) */
#define QK_NF4_NESTED 256 /* NF4 blocks per group of the double quantization */

/* Q4_0: 18 bytes.  | d fp16 | qs[16]: byte j = weight j (low nibble), weight j+16 (high) | */
typedef struct {
    uint16_t d;
    uint8_t qs[QK / 2];
} finch_block_q4_0;
_Static_assert(sizeof(finch_block_q4_0) == 18, "q4_0 block");

/* Q4_1: 20 bytes.  | d fp16 | m fp16 | qs[16] as Q4_0 |   w = q*d + m */
typedef struct {
    uint16_t d, m;
    uint8_t qs[QK / 2];
} finch_block_q4_1;
_Static_assert(sizeof(finch_block_q4_1) == 20, "q4_1 block");

/* Q5_0: 22 bytes.  | d fp16 | qh u32 (bit j = 5th bit of weight j) | qs[16] |  w = (q-16)*d */
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
} finch_block_q5_0;
_Static_assert(sizeof(finch_block_q5_0) == 22, "q5_0 block");

/* Q5_1: 24 bytes.  | d fp16 | m fp16 | qh u32 | qs[16] |   w = q*d + m */
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK / 2];
} finch_block_q5_1;
_Static_assert(sizeof(finch_block_q5_1) == 24, "q5_1 block");

/* Q8_0: 34 bytes.  | d fp16 | qs[32] int8 |   w = q*d */
typedef struct {
    uint16_t d;
    int8_t qs[QK];
} finch_block_q8_0;
_Static_assert(sizeof(finch_block_q8_0) == 34, "q8_0 block");

/* Q2_K: 84 bytes.  | scales[16] (lo nibble scale, hi nibble min) | qs[64] | d | dmin | */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    uint16_t d, dmin;
} finch_block_q2_k;
_Static_assert(sizeof(finch_block_q2_k) == 84, "q2_k block");

/* Q3_K: 110 bytes. | hmask[32] | qs[64] | scales[12] (16 x 6-bit, bias 32) | d | */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
} finch_block_q3_k;
_Static_assert(sizeof(finch_block_q3_k) == 110, "q3_k block");

/* Q4_K: 144 bytes. | d | dmin | scales[12] (8 x 6-bit scale, 8 x 6-bit min) | qs[128] | */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[QK_K / 2];
} finch_block_q4_k;
_Static_assert(sizeof(finch_block_q4_k) == 144, "q4_k block");

/* The 6-bit scale and min of sub-block j (0 .. 7) of a Q4_K / Q5_K block's 12 packed
 * scale bytes (FORMATS.md 2.5). */
static inline void finch_k_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q5_K: 176 bytes. | d | dmin | scales[12] | qh[32] | qs[128] | */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} finch_block_q5_k;
_Static_assert(sizeof(finch_block_q5_k) == 176, "q5_k block");

/* Q6_K: 210 bytes. | ql[128] low 4 bits | qh[64] high 2 bits | scales[16] int8 | d | */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
} finch_block_q6_k;
_Static_assert(sizeof(finch_block_q6_k) == 210, "q6_k block");

/* Q8_K: 292 bytes. | d f32 | qs[256] int8 | bsums[16] int16 | (intermediate type) */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} finch_block_q8_k;
_Static_assert(sizeof(finch_block_q8_k) == 292, "q8_k block");

/* NF4 (finch's own type, FORMATS.md 2.2; bitsandbytes' 4-bit NormalFloat): 36 bytes per 64
 * consecutive elements of a row.
 *
 *   | d f32: the block's absmax | qs[32]: byte j = code of element 2j << 4 | code of 2j+1 |
 *                                          bits 7..4: element 2j   bits 3..0: element 2j+1
 *
 *   w = finch_nf4_code[code] * d          (f32, one rounding: bitsandbytes' dequantization)
 *
 * qs is bitsandbytes' packed byte stream of the block as it is (first element in the high
 * nibble). With double quantization bitsandbytes keeps each block's absmax as one byte
 * (absmax_b = dynamic[q8_b] * nested[b / 256] + offset, nested one f32 per 256 blocks,
 * offset one f32 per tensor); finch keeps the f32 that expression evaluates to, so every
 * block dequantizes on its own (any row, any column band) to bitsandbytes' exact values.
 * The price is memory: 4.5 bits per weight instead of bitsandbytes' 4.127 (issue 12). */
typedef struct {
    float d;
    uint8_t qs[QK_NF4 / 2];
} finch_block_nf4;
_Static_assert(sizeof(finch_block_nf4) == 36, "nf4 block");

/* The 16 NF4 values, by code (FORMATS.md 2.2a; bitsandbytes' table). */
extern const float finch_nf4_code[16];

/* bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)), 256 sorted
 * values from -0.99296875 to 1, index 127 = 0: the code of the double quantization. */
extern const float finch_nf4_dynamic_map[256];

/* Double quantization of the absmax values of nb NF4 blocks, in place, as bitsandbytes'
 * quantize_4bit(compress_statistics=True): offset = the mean of the absmax values, then
 * (absmax - offset) is quantized blockwise (groups of 256) to the nearest dynamic-map
 * entry with an f32 absmax per group, and each block's d becomes what bitsandbytes
 * dequantizes it to (dynamic[q8] * nested + offset). q8 (nb) and nested ((nb + 255) / 256)
 * receive the stored form when not NULL; *offset the offset. */
void finch_nf4_double_quant(finch_block_nf4 *blocks, int64_t nb, uint8_t *q8, float *nested,
                            float *offset);

/* bitsandbytes' dequantization of double-quantized absmax values: absmax[b] =
 * map[q8[b]] * nested[b / group] + offset in f32, for nb blocks. */
void finch_nf4_dequant_absmax(float *absmax, const uint8_t *q8, int64_t nb, const float *nested,
                              const float *map, int64_t group, float offset);

/* Row dequantizers: n elements (a multiple of the block size) from src to dst. */
void finch_dequant_f32(float *dst, const void *src, int64_t n);
void finch_dequant_f16(float *dst, const void *src, int64_t n);
void finch_dequant_bf16(float *dst, const void *src, int64_t n);
void finch_dequant_q4_0(float *dst, const void *src, int64_t n);
void finch_dequant_q4_1(float *dst, const void *src, int64_t n);
void finch_dequant_q5_0(float *dst, const void *src, int64_t n);
void finch_dequant_q5_1(float *dst, const void *src, int64_t n);
void finch_dequant_q8_0(float *dst, const void *src, int64_t n);
void finch_dequant_q2_k(float *dst, const void *src, int64_t n);
void finch_dequant_q3_k(float *dst, const void *src, int64_t n);
void finch_dequant_q4_k(float *dst, const void *src, int64_t n);
void finch_dequant_q5_k(float *dst, const void *src, int64_t n);
void finch_dequant_q6_k(float *dst, const void *src, int64_t n);
void finch_dequant_nf4(float *dst, const void *src, int64_t n);

/* Reference quantizers (llama.cpp's quantize_row_*_ref; NF4: bitsandbytes' quantize_4bit
 * without double quantization, d = the block's absmax): n elements from src to dst. */
void finch_quantize_f32(void *dst, const float *src, int64_t n);
void finch_quantize_f16(void *dst, const float *src, int64_t n);
void finch_quantize_bf16(void *dst, const float *src, int64_t n);
void finch_quantize_q4_0(void *dst, const float *src, int64_t n);
void finch_quantize_q4_1(void *dst, const float *src, int64_t n);
void finch_quantize_q5_0(void *dst, const float *src, int64_t n);
void finch_quantize_q5_1(void *dst, const float *src, int64_t n);
void finch_quantize_q8_0(void *dst, const float *src, int64_t n);
void finch_quantize_nf4(void *dst, const float *src, int64_t n);
/* K-quants (n a multiple of 256): finch's own search for the sub-block scales (and mins)
 * that minimise the squared error after dequantization; not byte-identical to llama.cpp's
 * quantizers, which search differently, but read by every K-quant reader. */
void finch_quantize_q4_k(void *dst, const float *src, int64_t n);
void finch_quantize_q5_k(void *dst, const float *src, int64_t n);
void finch_quantize_q6_k(void *dst, const float *src, int64_t n);

#endif /* FINCH_QUANT_H */
