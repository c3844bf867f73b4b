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

const float finch_nf4_code[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* The f32 values bitsandbytes 0.50.2's create_dynamic_map() returns (FORMATS.md 2.2b: from
 * fp32 linspaces, so not reproducible from the formula in double precision); the test of
 * tests/format/test_nf4.c compares them with the map bitsandbytes saved in its fixture. */
const float finch_nf4_dynamic_map[256] = {
    -0x1.fc6666p-1f,  -0x1.f53334p-1f,  -0x1.eep-1f,      -0x1.e6ccccp-1f,  -0x1.df999ap-1f,
    -0x1.d86666p-1f,  -0x1.d13334p-1f,  -0x1.cap-1f,      -0x1.c2ccccp-1f,  -0x1.bb999ap-1f,
    -0x1.b46666p-1f,  -0x1.ad3334p-1f,  -0x1.a6p-1f,      -0x1.9eccccp-1f,  -0x1.97999ap-1f,
    -0x1.906666p-1f,  -0x1.893334p-1f,  -0x1.82p-1f,      -0x1.7accccp-1f,  -0x1.73999ap-1f,
    -0x1.6c6668p-1f,  -0x1.653334p-1f,  -0x1.5ep-1f,      -0x1.56ccccp-1f,  -0x1.4f999ap-1f,
    -0x1.486668p-1f,  -0x1.413334p-1f,  -0x1.3ap-1f,      -0x1.32ccccp-1f,  -0x1.2b999ap-1f,
    -0x1.246668p-1f,  -0x1.1d3334p-1f,  -0x1.16p-1f,      -0x1.0eccccp-1f,  -0x1.079998p-1f,
    -0x1.006666p-1f,  -0x1.f26664p-2f,  -0x1.e4p-2f,      -0x1.d59998p-2f,  -0x1.c73334p-2f,
    -0x1.b8ccccp-2f,  -0x1.aa6666p-2f,  -0x1.9cp-2f,      -0x1.8d9998p-2f,  -0x1.7f3334p-2f,
    -0x1.70ccccp-2f,  -0x1.626666p-2f,  -0x1.54p-2f,      -0x1.459998p-2f,  -0x1.373334p-2f,
    -0x1.28ccccp-2f,  -0x1.1a6668p-2f,  -0x1.0cp-2f,      -0x1.fb3332p-3f,  -0x1.de6666p-3f,
    -0x1.c1999ap-3f,  -0x1.a4ccccp-3f,  -0x1.88p-3f,      -0x1.6b3334p-3f,  -0x1.4e6666p-3f,
    -0x1.31999ap-3f,  -0x1.14ccccp-3f,  -0x1.fp-4f,       -0x1.b66668p-4f,  -0x1.93d70ap-4f,
    -0x1.8851eep-4f,  -0x1.7ccccep-4f,  -0x1.7147aep-4f,  -0x1.65c29p-4f,   -0x1.5a3d7p-4f,
    -0x1.4eb854p-4f,  -0x1.433334p-4f,  -0x1.37ae14p-4f,  -0x1.2c28f6p-4f,  -0x1.20a3d6p-4f,
    -0x1.151ebap-4f,  -0x1.09999ap-4f,  -0x1.fc28f6p-5f,  -0x1.e51ebap-5f,  -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f,  -0x1.ap-5f,       -0x1.88f5c2p-5f,  -0x1.71eb86p-5f,  -0x1.5ae146p-5f,
    -0x1.43d70ap-5f,  -0x1.2ccccep-5f,  -0x1.15c29p-5f,   -0x1.fd70a4p-6f,  -0x1.cf5c2ap-6f,
    -0x1.a147aep-6f,  -0x1.733334p-6f,  -0x1.451ebap-6f,  -0x1.170a3ep-6f,  -0x1.d1eb86p-7f,
    -0x1.75c29p-7f,   -0x1.3e76c8p-7f,  -0x1.2c083p-7f,   -0x1.19999ap-7f,  -0x1.072b02p-7f,
    -0x1.e978d4p-8f,  -0x1.c49ba6p-8f,  -0x1.9fbe76p-8f,  -0x1.7ae148p-8f,  -0x1.56041ap-8f,
    -0x1.3126e8p-8f,  -0x1.0c49bap-8f,  -0x1.ced914p-9f,  -0x1.851eb8p-9f,  -0x1.3b645ap-9f,
    -0x1.e353f8p-10f, -0x1.4fdf3ap-10f, -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f,
    -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f,
    -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0p+0f,          0x1.27476ep-21f,  0x1.b43528p-19f,
    0x1.040bfep-17f,  0x1.64840cp-16f,  0x1.6f0068p-15f,  0x1.15df66p-14f,  0x1.743e96p-14f,
    0x1.47ae16p-13f,  0x1.19ce0ap-12f,  0x1.8fc506p-12f,  0x1.02de02p-11f,  0x1.3dd982p-11f,
    0x1.78d5p-11f,    0x1.b3d07cp-11f,  0x1.eecbfep-11f,  0x1.4fdf3ap-10f,  0x1.e353f8p-10f,
    0x1.3b645ap-9f,   0x1.851eb8p-9f,   0x1.ced914p-9f,   0x1.0c49bap-8f,   0x1.3126e8p-8f,
    0x1.56041ap-8f,   0x1.7ae148p-8f,   0x1.9fbe76p-8f,   0x1.c49ba6p-8f,   0x1.e978d4p-8f,
    0x1.072b02p-7f,   0x1.19999ap-7f,   0x1.2c083p-7f,    0x1.3e76c8p-7f,   0x1.75c29p-7f,
    0x1.d1eb86p-7f,   0x1.170a3ep-6f,   0x1.451ebap-6f,   0x1.733334p-6f,   0x1.a147aep-6f,
    0x1.cf5c2ap-6f,   0x1.fd70a4p-6f,   0x1.15c29p-5f,    0x1.2ccccep-5f,   0x1.43d70ap-5f,
    0x1.5ae146p-5f,   0x1.71eb86p-5f,   0x1.88f5c2p-5f,   0x1.ap-5f,        0x1.b70a3ep-5f,
    0x1.ce147ap-5f,   0x1.e51ebap-5f,   0x1.fc28f6p-5f,   0x1.09999ap-4f,   0x1.151ebap-4f,
    0x1.20a3d6p-4f,   0x1.2c28f6p-4f,   0x1.37ae14p-4f,   0x1.433334p-4f,   0x1.4eb854p-4f,
    0x1.5a3d7p-4f,    0x1.65c29p-4f,    0x1.7147aep-4f,   0x1.7ccccep-4f,   0x1.8851eep-4f,
    0x1.93d70ap-4f,   0x1.b66668p-4f,   0x1.fp-4f,        0x1.14ccccp-3f,   0x1.31999ap-3f,
    0x1.4e6666p-3f,   0x1.6b3334p-3f,   0x1.88p-3f,       0x1.a4ccccp-3f,   0x1.c1999ap-3f,
    0x1.de6666p-3f,   0x1.fb3332p-3f,   0x1.0cp-2f,       0x1.1a6668p-2f,   0x1.28ccccp-2f,
    0x1.373334p-2f,   0x1.459998p-2f,   0x1.54p-2f,       0x1.626666p-2f,   0x1.70ccccp-2f,
    0x1.7f3334p-2f,   0x1.8d9998p-2f,   0x1.9cp-2f,       0x1.aa6666p-2f,   0x1.b8ccccp-2f,
    0x1.c73334p-2f,   0x1.d59998p-2f,   0x1.e4p-2f,       0x1.f26664p-2f,   0x1.006666p-1f,
    0x1.079998p-1f,   0x1.0eccccp-1f,   0x1.16p-1f,       0x1.1d3334p-1f,   0x1.246668p-1f,
    0x1.2b999ap-1f,   0x1.32ccccp-1f,   0x1.3ap-1f,       0x1.413334p-1f,   0x1.486668p-1f,
    0x1.4f999ap-1f,   0x1.56ccccp-1f,   0x1.5ep-1f,       0x1.653334p-1f,   0x1.6c6668p-1f,
    0x1.73999ap-1f,   0x1.7accccp-1f,   0x1.82p-1f,       0x1.893334p-1f,   0x1.906666p-1f,
    0x1.97999ap-1f,   0x1.9eccccp-1f,   0x1.a6p-1f,       0x1.ad3334p-1f,   0x1.b46666p-1f,
    0x1.bb999ap-1f,   0x1.c2ccccp-1f,   0x1.cap-1f,       0x1.d13334p-1f,   0x1.d86666p-1f,
    0x1.df999ap-1f,   0x1.e6ccccp-1f,   0x1.eep-1f,       0x1.f53334p-1f,   0x1.fc6666p-1f,
    0x1p+0f,
};

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

void finch_dequant_q4_k(float *dst, const void *src, int64_t n) {
    const finch_block_q4_k *b = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        float d = H2F(b[i].d), dmin = H2F(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32) {
            int sc, m;
            finch_k_scale_min(2 * c, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            finch_k_scale_min(2 * c + 1, b[i].scales, &sc, &m);
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
            int sc, m;
            finch_k_scale_min(2 * c, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            finch_k_scale_min(2 * c + 1, b[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            uint8_t u1 = (uint8_t)(1u << (2 * c)), u2 = (uint8_t)(2u << (2 * c));
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)((q[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *dst++ = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

/* w = code * d in f32 (FORMATS.md 2.2a step 6); the first element is the high nibble. */
void finch_dequant_nf4(float *dst, const void *src, int64_t n) {
    const finch_block_nf4 *b = src;
    for (int64_t i = 0; i < n / QK_NF4; i++, dst += QK_NF4) {
        float d = b[i].d;
        for (int j = 0; j < QK_NF4 / 2; j++) {
            dst[2 * j] = finch_nf4_code[b[i].qs[j] >> 4] * d;
            dst[2 * j + 1] = finch_nf4_code[b[i].qs[j] & 0x0f] * d;
        }
    }
}

void finch_nf4_dequant_absmax(float *absmax, const uint8_t *q8, int64_t nb, const float *nested,
                              const float *map, int64_t group, float offset) {
    for (int64_t b = 0; b < nb; b++) {
        float v = map[q8[b]] * nested[b / group]; /* dequantize_blockwise, then += offset */
        absmax[b] = v + offset;
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
