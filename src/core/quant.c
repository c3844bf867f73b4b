/*
 * quant.c: row dequantizers of every storage type finch reads (FORMATS.md 2). Scalar,
 * obviously-correct code: the reference every fast path is tested against, and the
 * converter used where speed does not matter (export, tests, awkward shapes). The
 * matmul kernels have their own vectorised tile dequantizers.
 *
 * Each value is computed in f32 in llama.cpp's order (d*q, d*q + m, d1*q - m1) so the
 * results are bit-identical to ggml's.
 */
#include "core/quant.h"

#define H2F finch_f16_to_f32

void finch_dequant_f32(float *dst, const void *src, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void finch_dequant_f16(float *dst, const void *src, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = H2F(s[i]);
}

void finch_dequant_bf16(float *dst, const void *src, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = finch_bf16_to_f32(s[i]);
}

void finch_dequant_q4_0(float *dst, const void *src, int64_t n) {
    const finch_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        float d = H2F(b[i].d);
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = (float)((b[i].qs[j] & 0x0f) - 8) * d;
            dst[j + QK / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void finch_dequant_q4_1(float *dst, const void *src, int64_t n) {
    const finch_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        float d = H2F(b[i].d), m = H2F(b[i].m);
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = (float)(b[i].qs[j] & 0x0f) * d + m;
            dst[j + QK / 2] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

static inline uint32_t load_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void finch_dequant_q5_0(float *dst, const void *src, int64_t n) {
    const finch_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        float d = H2F(b[i].d);
        uint32_t qh = load_u32le(b[i].qh);
        for (int j = 0; j < QK / 2; j++) {
            int lo = (b[i].qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
            int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            dst[j] = (float)(lo - 16) * d;
            dst[j + QK / 2] = (float)(hi - 16) * d;
        }
    }
}

void finch_dequant_q5_1(float *dst, const void *src, int64_t n) {
    const finch_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        float d = H2F(b[i].d), m = H2F(b[i].m);
        uint32_t qh = load_u32le(b[i].qh);
        for (int j = 0; j < QK / 2; j++) {
            int lo = (b[i].qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
            int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            dst[j] = (float)lo * d + m;
            dst[j + QK / 2] = (float)hi * d + m;
        }
    }
}

void finch_dequant_q8_0(float *dst, const void *src, int64_t n) {
    const finch_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        float d = H2F(b[i].d);
        for (int j = 0; j < QK; j++) dst[j] = (float)b[i].qs[j] * d;
    }
}

void finch_dequant_q2_k(float *dst, const void *src, int64_t n) {
    const finch_block_q2_k *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        float d = H2F(b[i].d), dmin = H2F(b[i].dmin);
        const uint8_t *q = b[i].qs;
        int is = 0;
        /* two halves of 128; in each, four 2-bit planes over 32 bytes, 16 weights a scale */
        for (int h = 0; h < QK_K / 128; h++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int g = 0; g < 2; g++) {
                    uint8_t sc = b[i].scales[is++];
                    float dl = d * (float)(sc & 0x0f), ml = dmin * (float)(sc >> 4);
                    for (int l = 0; l < 16; l++)
                        *dst++ = dl * (float)((q[16 * g + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

void finch_dequant_q3_k(float *dst, const void *src, int64_t n) {
    const finch_block_q3_k *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        float d = H2F(b[i].d);
        const uint8_t *sb = b[i].scales;
        int8_t scales[16];
        for (int s = 0; s < 16; s++) {
            int lo = s < 8 ? (sb[s] & 0x0f) : (sb[s - 8] >> 4);
            int hi = (sb[8 + s % 4] >> (2 * (s / 4))) & 3;
            scales[s] = (int8_t)((lo | (hi << 4)) - 32);
        }
        const uint8_t *q = b[i].qs, *hm = b[i].hmask;
        int is = 0;
        for (int h = 0; h < QK_K / 128; h++, q += 32) {
            for (int j = 0; j < 4; j++) {
                int shift = 2 * j;
                uint8_t m = (uint8_t)(1u << (4 * h + j));
                for (int g = 0; g < 2; g++) {
                    float dl = d * (float)scales[is++];
                    for (int l = 0; l < 16; l++) {
                        int k = 16 * g + l;
                        int v = ((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
                        *dst++ = dl * (float)v;
                    }
                }
            }
        }
    }
}

/* 6-bit scale and min of sub-block j from the 12 packed bytes (FORMATS.md 2.5). */
static inline void k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void finch_dequant_q4_k(float *dst, const void *src, int64_t n) {
    const finch_block_q4_k *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        float d = H2F(b[i].d), dmin = H2F(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32) {
            uint8_t sc, m;
            k_scale_min(2 * c, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            k_scale_min(2 * c + 1, b[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *dst++ = d1 * (float)(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) *dst++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

void finch_dequant_q5_k(float *dst, const void *src, int64_t n) {
    const finch_block_q5_k *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        float d = H2F(b[i].d), dmin = H2F(b[i].dmin);
        const uint8_t *q = b[i].qs, *qh = b[i].qh;
        for (int c = 0; c < 4; c++, q += 32) {
            uint8_t sc, m;
            k_scale_min(2 * c, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            k_scale_min(2 * c + 1, b[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            uint8_t u1 = (uint8_t)(1u << (2 * c)), u2 = (uint8_t)(2u << (2 * c));
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)((q[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *dst++ = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

void finch_dequant_q6_k(float *dst, const void *src, int64_t n) {
    const finch_block_q6_k *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        float d = H2F(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, dst += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = (int)((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = (int)((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                dst[l] = d * (float)sc[is + 0] * (float)q1;
                dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}
