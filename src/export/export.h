/*
 * export.h: models out: a base model with adapters merged into its weights, as GGUF.
 */
#ifndef FINCH_EXPORT_H
#define FINCH_EXPORT_H

#include "peft/peft.h" /* finch_lora */

/* Writes model with each adapter's delta merged, W' = W + sum_a weight_a s_a B_a A_a, to
 * path (atomically). Merged projections are stored as out_type (f32, f16, bf16, q8_0,
 * q4_0, q4_1: any type with a quantizer); every other tensor and every metadata key is
 * copied unchanged. */
finch_status finch_merge_save(const finch_model *m, finch_lora *const *adapters, const float *weights,
                              int n_adapters, finch_dtype out_type, const char *path, finch_err *err);

#endif /* FINCH_EXPORT_H */
