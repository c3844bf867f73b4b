/*
 * load_4bit.c: QLoRA's load_in_4bit. The projections of every block (q, k, v, o, gate, up,
 * down: transformers' Linear4bit modules; not the embeddings, the output head or the
 * norms) of an f32, f16 or bf16 base become NF4 with blocks of 64 (core/quant.h), double
 * quantized by default, as bitsandbytes' quantize_4bit does on the Hugging Face weight: a
 * tensor's blocks are taken in its Hugging Face row order for the double quantization
 * (the mean and the groups of 256 depend on it), so each block's absmax is the f32
 * bitsandbytes would dequantize it to. Weights already NF4 (a bitsandbytes folder) stay
 * as they are; other quantized types are refused.
 *
 * The quantized weights live in one owned buffer (m->owned_nf4); the source rows are read
 * once, a row at a time, from the mapping, and each tensor's file pages are dropped once
 * it is quantized, so peak memory is the NF4 buffer's, not the base's.
 */
#include "model/model.h"
#include "core/quant.h" /* finch_block_nf4, finch_quantize_nf4, finch_nf4_double_quant */

#include <stdlib.h>

static bool is_float_type(finch_dtype t) {
    return t == FINCH_DTYPE_F32 || t == FINCH_DTYPE_F16 || t == FINCH_DTYPE_BF16;
}

/* Double quantization of one tensor's blocks in Hugging Face row order: q and k rows are
 * stored in finch's order (row r holds the Hugging Face row finch_qk_hf_row(r, D)). */
static finch_status double_quant_hf_order(finch_block_nf4 *blocks, const finch_weight *w, bool qk,
                                          int D, finch_err *err) {
    const int64_t bpr = w->cols / QK_NF4, nb = w->rows * bpr;
    float offset;
    if (!qk) {
        finch_nf4_double_quant(blocks, nb, NULL, NULL, &offset);
        return FINCH_OK;
    }
    finch_block_nf4 *hf = finch_alloc((size_t)nb * sizeof *hf, "NF4 blocks", err);
    if (!hf) return FINCH_E_NOMEM;
    for (int64_t r = 0; r < w->rows; r++)
        memcpy(hf + finch_qk_hf_row(r, D) * bpr, blocks + r * bpr, (size_t)bpr * sizeof *hf);
    finch_nf4_double_quant(hf, nb, NULL, NULL, &offset);
    for (int64_t r = 0; r < w->rows; r++)
        memcpy(blocks + r * bpr, hf + finch_qk_hf_row(r, D) * bpr, (size_t)bpr * sizeof *hf);
    free(hf);
    return FINCH_OK;
}

finch_status finch_model_load_in_4bit(finch_model *m, const char *quant_type, int double_quant,
                                      finch_err *err) {
    if (!quant_type || strcmp(quant_type, "nf4"))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "--bnb-4bit-quant-type %s: finch implements nf4 only (fp4 is not "
                             "implemented)",
                             quant_type ? quant_type : "(none)");
    const finch_model_config *c = &m->cfg;
    size_t total = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int i = 0; i < FINCH_LAYER_LINEARS; i++) {
            const finch_weight *w = &finch_layer_linear(&m->layers[l], i)->w;
            if (w->type == FINCH_DTYPE_NF4 || !w->data) continue; /* !data: GPT-2's gate */
            if (!is_float_type(w->type))
                return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                     "%s: --load-in-4bit quantizes an f32, f16 or bf16 base, and "
                                     "blk.%d.%s.weight is %s already: load it without "
                                     "--load-in-4bit",
                                     m->path, l, finch_linear_gguf_stem(i),
                                     finch_dtype_info[w->type].name);
            size_t rb;
            if (!finch_dtype_row_bytes(FINCH_DTYPE_NF4, w->cols, &rb))
                return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                     "%s: blk.%d.%s.weight: rows of %lld are not whole NF4 "
                                     "blocks of %d",
                                     m->path, l, finch_linear_gguf_stem(i), (long long)w->cols,
                                     QK_NF4);
            total += rb * (size_t)w->rows;
        }
    if (!total) return FINCH_OK;
    if (m->owned_nf4)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: --load-in-4bit on a bitsandbytes checkpoint whose projections "
                             "are only partly 4-bit (llm_int8_skip_modules): load it without "
                             "--load-in-4bit",
                             m->path);
    uint8_t *buf = finch_aalloc(total, "NF4 weights", err);
    if (!buf) return FINCH_E_NOMEM;
    float *row = NULL;
    finch_status st = FINCH_OK;
    uint8_t *dst = buf;
    for (int l = 0; l < c->n_layer && !st; l++)
        for (int i = 0; i < FINCH_LAYER_LINEARS && !st; i++) {
            finch_weight *w = &finch_layer_linear(&m->layers[l], i)->w;
            if (w->type == FINCH_DTYPE_NF4 || !w->data) continue;
            size_t rb;
            finch_dtype_row_bytes(FINCH_DTYPE_NF4, w->cols, &rb);
            free(row);
            if (!(row = finch_alloc((size_t)w->cols * sizeof *row, "a weight row", err))) {
                st = FINCH_E_NOMEM;
                break;
            }
            for (int64_t r = 0; r < w->rows; r++) {
                finch_weight_rows_f32(w, r, 1, row);
                finch_quantize_nf4(dst + (size_t)r * rb, row, w->cols);
            }
            if (double_quant)
                st = double_quant_hf_order((finch_block_nf4 *)dst, w,
                                           i < 2 && !m->arch->learned_pos, c->head_dim, err);
            /* the source rows are read once: their file pages leave memory now, so a base
             * larger than RAM quantizes within the NF4 buffer's size */
            const size_t src_bytes = w->row_bytes * (size_t)w->rows;
            finch_gguf_evict_range(m->gguf, w->data, src_bytes);
            for (int s = 0; s < m->n_shards; s++)
                finch_st_evict_range(m->shards[s], w->data, src_bytes);
            m->cfg.weight_bytes -= (int64_t)(w->row_bytes * (size_t)w->rows);
            *w = (finch_weight){.type = FINCH_DTYPE_NF4,
                                .rows = w->rows,
                                .cols = w->cols,
                                .row_bytes = rb,
                                .data = dst};
            m->cfg.weight_bytes += (int64_t)(rb * (size_t)w->rows);
            dst += rb * (size_t)w->rows;
        }
    free(row);
    m->owned_nf4 = buf; /* on failure too: some linears may point into it already */
    return st;
}
