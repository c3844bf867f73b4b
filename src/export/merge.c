/*
 * merge.c: LoRA merged into the base weights (W' = W + w s B A per adapter), written as a
 * GGUF that llama.cpp and finch load like any model. Rows stay in GGUF order: finch holds
 * the adapter's B of q and k in that order already. A merged weight is built one row at
 * a time (dequantize, add the low-rank delta in f32, quantize), so the base is never
 * expanded whole.
 */
#include "export/export.h"

#include <stdlib.h>

typedef struct {
    char *name;
    uint8_t *data;
} merged;

finch_status finch_merge_save(const finch_model *m, finch_lora *const *adapters, const float *weights,
                              int n_adapters, finch_dtype out_type, const char *path, finch_err *err) {
    if (!m->gguf)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: merging writes a GGUF from a GGUF base model; this one was "
                             "loaded from a Hugging Face folder",
                             m->path);
    const finch_dtype_traits *ot = finch_dtype_get((uint32_t)out_type);
    if (!ot || !ot->quant)
        return finch_err_set(err, FINCH_E_USAGE, "merge: finch cannot write type %s",
                             ot ? ot->name : "unknown");
    finch_gguf_writer *w = finch_gguf_writer_new(err);
    if (!w) return FINCH_E_NOMEM;
    const finch_gguf *g = m->gguf;
    finch_status st = FINCH_OK;
    int64_t n_t = finch_gguf_n_tensors(g);
    merged *bufs = calloc((size_t)n_t, sizeof *bufs);
    float *row = NULL;
    if (!bufs) {
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < finch_gguf_n_kv(g) && !st; i++) {
        const finch_gguf_kv *kv = finch_gguf_kv_at(g, i);
        if (strcmp(kv->key, "general.file_type")) st = finch_gguf_set_kv(w, kv, err);
    }
    bool quantized = false;
    for (int64_t i = 0; i < n_t && !st; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        /* which adapters touch this tensor? */
        finch_lora_site *sites[16];
        float sw[16];
        int n_s = 0;
        for (int a = 0; a < n_adapters && a < 16; a++)
            for (int k = 0; k < adapters[a]->n_sites; k++) {
                finch_lora_site *s = &adapters[a]->sites[k];
                char name[FINCH_GGUF_MAX_NAME + 1];
                snprintf(name, sizeof name, "blk.%d.%s.weight", s->layer, finch_target_gguf_name(s->target));
                if (!strcmp(name, t->name)) sites[n_s] = s, sw[n_s++] = weights ? weights[a] : 1.0f;
            }
        if (!n_s) {
            quantized |= t->type != FINCH_DTYPE_F32 && t->type != FINCH_DTYPE_F16 && t->type != FINCH_DTYPE_BF16;
            st = finch_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
            continue;
        }
        const int64_t cols = t->ne[0], rows = t->ne[1];
        size_t rb_in = t->nbytes / (size_t)rows, rb_out;
        if (!finch_dtype_row_bytes(out_type, cols, &rb_out)) {
            st = finch_err_set(err, FINCH_E_USAGE, "merge: %s rows of %lld are not whole %s blocks", t->name,
                               (long long)cols, ot->name);
            break;
        }
        quantized |= ot->block_elems > 1;
        free(row);
        row = malloc((size_t)cols * sizeof *row);
        bufs[i].data = malloc(rb_out * (size_t)rows);
        if (!row || !bufs[i].data) {
            st = finch_err_set(err, FINCH_E_NOMEM, "out of memory merging %s", t->name);
            break;
        }
        for (int64_t r = 0; r < rows; r++) {
            finch_dtype_info[t->type].dequant(row, t->data + (size_t)r * rb_in, cols);
            for (int k = 0; k < n_s; k++) {
                const finch_lora_site *s = sites[k];
                /* row r of s B A: sum_j B[r][j] A[j][:] */
                for (int j = 0; j < s->r; j++) {
                    float b = sw[k] * s->scale * s->B[r * s->r + j];
                    const float *a = s->A + (int64_t)j * s->in;
                    for (int64_t c = 0; c < cols; c++) row[c] += b * a[c];
                }
            }
            ot->quant(bufs[i].data + (size_t)r * rb_out, row, cols);
        }
        st = finch_gguf_add_tensor(w, t->name, out_type, t->n_dims, t->ne, bufs[i].data, err);
    }
    /* general.file_type is a label: "mostly" the merged projections' type */
    static const uint32_t ftype[FINCH_DTYPE_COUNT] = {
        [FINCH_DTYPE_F32] = 0, [FINCH_DTYPE_F16] = 1, [FINCH_DTYPE_Q4_0] = 2,
        [FINCH_DTYPE_Q4_1] = 3, [FINCH_DTYPE_Q8_0] = 7, [FINCH_DTYPE_BF16] = 32};
    if (!st) st = finch_gguf_set_u32(w, "general.file_type", ftype[out_type], err);
    if (!st && quantized && !finch_gguf_find_kv(g, "general.quantization_version"))
        st = finch_gguf_set_u32(w, "general.quantization_version", 2, err);
    if (!st) st = finch_gguf_writer_save(w, path, err);
done:
    for (int64_t i = 0; bufs && i < n_t; i++) free(bufs[i].data);
    free(bufs);
    free(row);
    finch_gguf_writer_free(w);
    return st;
}

finch_status finch_merge(const finch_model *m, finch_adapter *const *adapters, const float *weights,
                         int n_adapters, const char *type_name, const char *path, finch_err *err) {
    if (n_adapters < 1 || n_adapters > 16)
        return finch_err_set(err, FINCH_E_USAGE, "merge: give 1 to 16 adapters (got %d)", n_adapters);
    finch_dtype type = FINCH_DTYPE_COUNT;
    for (int t = 0; t < FINCH_DTYPE_COUNT; t++)
        if (finch_dtype_info[t].name && finch_dtype_info[t].quant && !strcmp(finch_dtype_info[t].name, type_name))
            type = (finch_dtype)t;
    if (type == FINCH_DTYPE_COUNT)
        return finch_err_set(err, FINCH_E_USAGE,
                             "merge: --type %s: use f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1", type_name);
    finch_lora *loras[16];
    for (int a = 0; a < n_adapters; a++) loras[a] = finch_adapter_lora(adapters[a]);
    return finch_merge_save(m, loras, weights, n_adapters, type, path, err);
}
