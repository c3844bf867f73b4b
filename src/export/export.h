/*
 * export.h: models out: a base model with adapters merged into its weights, as GGUF.
 */
#ifndef FINCH_EXPORT_H
#define FINCH_EXPORT_H

#include "peft/peft.h" /* finch_peft */

/* Writes model with each adapter merged in turn, each with its weight (LoRA:
 * W' = W + sum_a weight_a s_a B_a A_a), to path (atomically). Merged projections are stored as
 * out_type (f32, f16, bf16, q8_0, q4_0, q4_1: any type with a quantizer), and with
 * all_weights every other matrix too (embeddings, output head: with f32, the base
 * dequantized whole); every other tensor and every metadata key is copied unchanged. */
finch_status finch_merge_save(const finch_model *m, finch_peft *const *adapters,
                              const float *weights, int n_adapters, finch_dtype out_type,
                              bool all_weights, const char *path, finch_err *err);

#endif /* FINCH_EXPORT_H */
