/*
 * test_weights.h: random test data for the kernel tests: normal deviates, random vectors,
 * and weights of any storage type (quantized from random floats where a quantizer exists,
 * random blocks with small finite scales for the K-quants). Include after cmocka.h.
 */
#ifndef FINCH_TEST_WEIGHTS_H
#define FINCH_TEST_WEIGHTS_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/quant.h"
#include "kernels/kernels.h"

/* A standard normal deviate (Box-Muller). */
static inline float randn(finch_rng *r) {
    float u1 = finch_rng_float(r) + 1e-7f, u2 = finch_rng_float(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* n normal deviates times scale, malloc'd. */
static inline float *rand_vec(finch_rng *r, int64_t n, float scale) {
    float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (int64_t i = 0; i < n; i++) v[i] = scale * randn(r);
    return v;
}

/* A weight of the given type with random content: quantized from random floats where a
 * quantizer exists; random blocks with small finite scales for the K-quants. */
static inline void *make_weight(finch_rng *r, finch_dtype t, int64_t rows, int64_t cols, finch_weight *w) {
    const finch_dtype_traits *tr = &finch_dtype_info[t];
    size_t rb;
    assert_true(finch_dtype_row_bytes(t, cols, &rb));
    uint8_t *data = malloc(rb * (size_t)rows);
    assert_non_null(data);
    if (tr->quant) {
        float *f = rand_vec(r, cols, 0.5f);
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t c = 0; c < cols; c++) f[c] = 0.5f * randn(r);
            tr->quant(data + i * rb, f, cols);
        }
        free(f);
    } else {
        for (size_t i = 0; i < rb * (size_t)rows; i++) data[i] = (uint8_t)finch_rng_u64(r);
        for (int64_t b = 0; b < (int64_t)(rb * (size_t)rows) / tr->block_bytes; b++) {
            uint8_t *blk = data + b * tr->block_bytes;
            uint16_t d = finch_f32_to_f16(0.001f + 0.01f * finch_rng_float(r));
            uint16_t m = finch_f32_to_f16(0.001f + 0.01f * finch_rng_float(r));
            switch (t) {
            case FINCH_DTYPE_Q4_K:
            case FINCH_DTYPE_Q5_K:
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &m, 2);
                break;
            case FINCH_DTYPE_Q2_K:
                memcpy(blk + 80, &d, 2);
                memcpy(blk + 82, &m, 2);
                break;
            case FINCH_DTYPE_Q3_K:
                memcpy(blk + 108, &d, 2);
                break;
            case FINCH_DTYPE_Q6_K:
                memcpy(blk + 208, &d, 2);
                break;
            default:
                fail_msg("no K-quant layout for %s", tr->name);
            }
        }
    }
    *w = (finch_weight){.type = t, .rows = rows, .cols = cols, .row_bytes = rb, .data = data};
    return data;
}

#endif /* FINCH_TEST_WEIGHTS_H */
