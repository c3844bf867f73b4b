/*
 * merge.c: adapters merged into the base weights, written as a GGUF that llama.cpp and
 * finch load like any model. Each method says what merging does to a row of a weight it
 * touches (LoRA: W + w s B A; DoRA, (IA)^3: their rescalings); rows stay in the file's
 * order. Where a family's file keeps q/k rows in Hugging Face order (neox_rows: qwen2,
 * gemma3), finch holds them permuted (model/load.c), so the adapters are asked for finch's
 * row of each file row (and for a q/k bias, the vector in finch's order). A merged weight
 * is built one row at a time (dequantize, apply every adapter in f32, quantize), so the
 * base is never expanded whole.
 */
#include "export/export.h"

#include <stdlib.h>

typedef struct {
    uint8_t *data;
} merged;

/* The head dim when tensor name holds q or k rows (weights, biases) that the file keeps in
 * Hugging Face order and finch in its own; else 0. */
static int hf_qk_rows(const finch_model *m, const char *name) {
    return m->arch->neox_rows && (strstr(name, ".attn_q.") || strstr(name, ".attn_k."))
               ? m->cfg.head_dim
               : 0;
}

/* The buffers of tensors merging adds, kept until the writer saves. */
typedef struct {
    float **bufs;
    int n;
} new_bufs;

/* Tensors the adapters add that the base lacks (BitFit's biases on a bias-free model),
 * each weighted, as f32 vectors. */
static finch_status add_new_tensors(finch_gguf_writer *w, const finch_gguf *g,
                                    finch_peft *const *adapters, const float *weights,
                                    int n_adapters, const finch_model *m, new_bufs *keep,
                                    finch_err *err) {
    for (int a = 0; a < n_adapters; a++) {
        int n = finch_peft_new_tensors(adapters[a], m, NULL, 0);
        finch_new_tensor *nt = finch_mem_calloc((size_t)n + 1, sizeof *nt);
        float **more = finch_mem_realloc(keep->bufs, (size_t)(keep->n + n + 1) * sizeof *more);
        if (more) keep->bufs = more; /* the old block is gone once realloc succeeds */
        if (!nt || !more) {
            free(nt);
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory merging %s", m->path);
        }
        finch_peft_new_tensors(adapters[a], m, nt, n);
        finch_status st = FINCH_OK;
        for (int i = 0; i < n && !st; i++) {
            if (finch_gguf_find_tensor(g, nt[i].name)) continue;
            float *v = finch_mem_alloc((size_t)nt[i].n * sizeof *v + 1);
            if (!v) {
                st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
                break;
            }
            keep->bufs[keep->n++] = v;
            const int D = hf_qk_rows(m, nt[i].name);
            for (int64_t k = 0; k < nt[i].n; k++)
                v[D ? finch_qk_hf_row(k, D) : k] = (weights ? weights[a] : 1.0f) * nt[i].data[k];
            int64_t ne[1] = {nt[i].n};
            st = finch_gguf_add_tensor(w, nt[i].name, FINCH_DTYPE_F32, 1, ne, v, err);
        }
        free(nt);
        if (st) return st;
    }
    return FINCH_OK;
}

finch_status finch_merge_save(const finch_model *m, finch_peft *const *adapters,
                              const float *weights, int n_adapters, finch_dtype out_type,
                              bool all_weights, const char *path, finch_err *err) {
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
    merged *bufs = finch_mem_calloc((size_t)n_t, sizeof *bufs);
    float *row = NULL, *vec = NULL;
    new_bufs extra = {0};
    if (!bufs) {
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        goto done;
    }
    if (!st) st = finch_gguf_set_kvs_from(w, g, "general.file_type", err);
    bool quantized = false;
    for (int64_t i = 0; i < n_t && !st; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        /* does an adapter touch this tensor (or is every matrix rewritten)? */
        bool touched = all_weights && t->n_dims == 2 && t->type != out_type;
        for (int a = 0; a < n_adapters && t->n_dims <= 2 && !touched; a++)
            touched = finch_peft_merge_row(adapters[a], m, t->name, 0, NULL, t->ne[0], 1.0f);
        if (!touched) {
            quantized |= t->type != FINCH_DTYPE_F32 && t->type != FINCH_DTYPE_F16 &&
                         t->type != FINCH_DTYPE_BF16;
            st = finch_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
            continue;
        }
        const int64_t cols = t->ne[0], rows = t->ne[1];
        /* vectors (biases) stay f32, as llama.cpp reads them */
        const finch_dtype ty = t->n_dims == 1 ? FINCH_DTYPE_F32 : out_type;
        const finch_dtype_traits *tt = finch_dtype_get((uint32_t)ty);
        size_t rb_in = t->nbytes / (size_t)rows, rb_out;
        if (!finch_dtype_row_bytes(ty, cols, &rb_out)) {
            st = finch_err_set(err, FINCH_E_USAGE, "merge: %s rows of %lld are not whole %s blocks",
                               t->name, (long long)cols, ot->name);
            break;
        }
        quantized |= tt->block_elems > 1;
        free(row);
        free(vec);
        row = finch_mem_alloc((size_t)cols * sizeof *row);
        vec = finch_mem_alloc((size_t)cols * sizeof *vec);
        bufs[i].data = finch_mem_alloc(rb_out * (size_t)rows);
        if (!row || !vec || !bufs[i].data) {
            st = finch_err_set(err, FINCH_E_NOMEM, "out of memory merging %s", t->name);
            break;
        }
        /* q/k in Hugging Face order: a weight's row r is finch's row finch_qk_row(r), a
         * bias (one row) goes to finch's order and back */
        const int D = hf_qk_rows(m, t->name);
        const bool bias = D && t->n_dims == 1;
        for (int64_t r = 0; r < rows; r++) {
            finch_dtype_info[t->type].dequant(bias ? vec : row, t->data + (size_t)r * rb_in, cols);
            for (int64_t c = 0; bias && c < cols; c++) row[c] = vec[finch_qk_hf_row(c, D)];
            for (int a = 0; a < n_adapters; a++)
                finch_peft_merge_row(adapters[a], m, t->name, D && !bias ? finch_qk_row(r, D) : r,
                                     row, cols, weights ? weights[a] : 1.0f);
            for (int64_t c = 0; bias && c < cols; c++) vec[finch_qk_hf_row(c, D)] = row[c];
            tt->quant(bufs[i].data + (size_t)r * rb_out, bias ? vec : row, cols);
        }
        st = finch_gguf_add_tensor(w, t->name, ty, t->n_dims, t->ne, bufs[i].data, err);
    }
    if (!st) st = add_new_tensors(w, g, adapters, weights, n_adapters, m, &extra, err);
    /* general.file_type is a label: "mostly" the merged projections' type */
    static const uint32_t ftype[FINCH_DTYPE_COUNT] = {
        [FINCH_DTYPE_F32] = 0,  [FINCH_DTYPE_F16] = 1,  [FINCH_DTYPE_Q4_0] = 2,
        [FINCH_DTYPE_Q4_1] = 3, [FINCH_DTYPE_Q8_0] = 7, [FINCH_DTYPE_Q5_0] = 8,
        [FINCH_DTYPE_Q5_1] = 9, [FINCH_DTYPE_BF16] = 32};
    if (!st) st = finch_gguf_set_u32(w, "general.file_type", ftype[out_type], err);
    if (!st && quantized && !finch_gguf_find_kv(g, "general.quantization_version"))
        st = finch_gguf_set_u32(w, "general.quantization_version", 2, err);
    if (!st) st = finch_gguf_writer_save(w, path, err);
done:
    for (int i = 0; i < extra.n; i++) free(extra.bufs[i]);
    free(extra.bufs);
    for (int64_t i = 0; bufs && i < n_t; i++) free(bufs[i].data);
    free(bufs);
    free(row);
    free(vec);
    finch_gguf_writer_free(w);
    return st;
}

static finch_status merge(const finch_model *m, finch_adapter *const *adapters,
                          const float *weights, int n_adapters, const char *type_name,
                          bool all_weights, const char *path, finch_err *err) {
    if (n_adapters < 1 || n_adapters > 16)
        return finch_err_set(err, FINCH_E_USAGE, "merge: give 1 to 16 adapters (got %d)",
                             n_adapters);
    finch_dtype type = FINCH_DTYPE_COUNT;
    for (int t = 0; t < FINCH_DTYPE_COUNT; t++)
        if (finch_dtype_info[t].name && finch_dtype_info[t].quant &&
            !strcmp(finch_dtype_info[t].name, type_name))
            type = (finch_dtype)t;
    if (type == FINCH_DTYPE_COUNT)
        return finch_err_set(err, FINCH_E_USAGE,
                             "merge: --type %s: use f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1",
                             type_name);
    finch_peft *pefts[16];
    for (int a = 0; a < n_adapters; a++) {
        pefts[a] = finch_adapter_peft(adapters[a]);
        if (!finch_peft_can_merge(pefts[a]))
            return finch_err_set(err, FINCH_E_UNSUPPORTED, "merge: %s adapters have no exact merge",
                                 finch_peft_method(pefts[a]));
    }
    return finch_merge_save(m, pefts, weights, n_adapters, type, all_weights, path, err);
}

finch_status finch_merge(const finch_model *m, finch_adapter *const *adapters, const float *weights,
                         int n_adapters, const char *type_name, const char *path, finch_err *err) {
    return merge(m, adapters, weights, n_adapters, type_name, false, path, err);
}

finch_status finch_merge_all(const finch_model *m, finch_adapter *const *adapters,
                             const float *weights, int n_adapters, const char *type_name,
                             const char *path, finch_err *err) {
    return merge(m, adapters, weights, n_adapters, type_name, true, path, err);
}
