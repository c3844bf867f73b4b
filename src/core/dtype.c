/*
 * dtype.c: the table of storage types: name, block geometry, row dequantizer, reference
 * quantizer. Indexed by ggml type id (FORMATS.md 1.6), then finch's own types (NF4); a new
 * type is a new row.
 */
#include "core/quant.h"

const finch_dtype_traits finch_dtype_info[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_F32] = {"f32", 1, 4, finch_dequant_f32, finch_quantize_f32},
    [FINCH_DTYPE_F16] = {"f16", 1, 2, finch_dequant_f16, finch_quantize_f16},
    [FINCH_DTYPE_Q4_0] = {"q4_0", QK, 18, finch_dequant_q4_0, finch_quantize_q4_0},
    [FINCH_DTYPE_Q4_1] = {"q4_1", QK, 20, finch_dequant_q4_1, finch_quantize_q4_1},
    [FINCH_DTYPE_Q5_0] = {"q5_0", QK, 22, finch_dequant_q5_0, finch_quantize_q5_0},
    [FINCH_DTYPE_Q5_1] = {"q5_1", QK, 24, finch_dequant_q5_1, finch_quantize_q5_1},
    [FINCH_DTYPE_Q8_0] = {"q8_0", QK, 34, finch_dequant_q8_0, finch_quantize_q8_0},
    [FINCH_DTYPE_Q2_K] = {"q2_k", QK_K, 84, finch_dequant_q2_k, NULL},
    [FINCH_DTYPE_Q3_K] = {"q3_k", QK_K, 110, finch_dequant_q3_k, NULL},
    [FINCH_DTYPE_Q4_K] = {"q4_k", QK_K, 144, finch_dequant_q4_k, finch_quantize_q4_k},
    [FINCH_DTYPE_Q5_K] = {"q5_k", QK_K, 176, finch_dequant_q5_k, finch_quantize_q5_k},
    [FINCH_DTYPE_Q6_K] = {"q6_k", QK_K, 210, finch_dequant_q6_k, finch_quantize_q6_k},
    [FINCH_DTYPE_Q8_K] = {"q8_k", QK_K, 292, NULL, NULL},
    [FINCH_DTYPE_I8] = {"i8", 1, 1, NULL, NULL},
    [FINCH_DTYPE_I16] = {"i16", 1, 2, NULL, NULL},
    [FINCH_DTYPE_I32] = {"i32", 1, 4, NULL, NULL},
    [FINCH_DTYPE_I64] = {"i64", 1, 8, NULL, NULL},
    [FINCH_DTYPE_F64] = {"f64", 1, 8, NULL, NULL},
    [FINCH_DTYPE_BF16] = {"bf16", 1, 2, finch_dequant_bf16, finch_quantize_bf16},
    [FINCH_DTYPE_NF4] = {"nf4", QK_NF4, 36, finch_dequant_nf4, finch_quantize_nf4},
};

const finch_dtype_traits *finch_dtype_get(uint32_t id) {
    if (id >= FINCH_DTYPE_GGML_COUNT || !finch_dtype_info[id].name) return NULL;
    return &finch_dtype_info[id];
}

bool finch_dtype_row_bytes(finch_dtype t, int64_t n, size_t *out) {
    if ((unsigned)t >= FINCH_DTYPE_COUNT || !finch_dtype_info[t].name) return false;
    const finch_dtype_traits *tr = &finch_dtype_info[t];
    if (n < 0 || n % tr->block_elems) return false;
    return finch_size_mul((size_t)(n / tr->block_elems), (size_t)tr->block_bytes, out);
}
