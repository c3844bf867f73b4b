/*
 * gguf_out.c: a loaded model described as the GGUF llama.cpp's convert_hf_to_gguf.py would
 * write for it: its tensors under GGUF names in GGUF row order (finch_model_gguf_tensors)
 * and the metadata (finch_model_gguf_kvs). `finch quantize FOLDER` (export/quantize.c) and
 * full fine-tuning's model.gguf over a Hugging Face base (peft/weights.c) write through it,
 * so a folder becomes a GGUF by one code path.
 *
 * The model is the source, not the folder's files: whatever load_hf.c made of them (q/k
 * rows in finch's interleaved order, GPT-2's Conv1D weights transposed and c_attn split,
 * Gemma's norms as 1 + w) is what GGUF holds, except for the rotate-half families (qwen2,
 * gemma3), whose GGUF keeps q/k rows in Hugging Face order: those rows (and their biases
 * and q/k norms) are read back through finch_qk_row. Nothing is copied but those small
 * vectors.
 *
 * Metadata per family, as convert_hf_to_gguf.py (llama.cpp b4000-b6000) writes it: every
 * family block_count, context_length, embedding_length, feed_forward_length,
 * attention.head_count; RMSNorm families head_count_kv, rope.freq_base,
 * layer_norm_rms_epsilon; llama also vocab_size and rope.dimension_count (and key/value
 * length when the head dim is not n_embd / n_head); gemma3 key_length, value_length,
 * sliding_window; gpt2 layer_norm_epsilon and no head_count_kv. Descriptive general.* keys
 * beyond the name (organization, license, ...) come from a model card finch does not read.
 */
#include "model/model.h"
#include "tokenizer/tokenizer.h" /* finch_tokenizer_gguf_kvs */

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h> /* stat: is tokenizer.model there */

const finch_tensor_names finch_tensor_name_table[FINCH_W_KIND_COUNT] = {
    [FINCH_W_EMBD] = {"model.embed_tokens.weight", NULL, "token_embd.weight",
                      "transformer.wte.weight"},
    [FINCH_W_NORM_ATTN] = {"model.layers.%d.input_layernorm.weight", NULL,
                           "blk.%d.attn_norm.weight", "transformer.h.%d.ln_1.weight"},
    [FINCH_W_NORM_Q] = {"model.layers.%d.self_attn.q_norm.weight", NULL,
                        "blk.%d.attn_q_norm.weight"},
    [FINCH_W_NORM_K] = {"model.layers.%d.self_attn.k_norm.weight", NULL,
                        "blk.%d.attn_k_norm.weight"},
    [FINCH_W_NORM_POST_ATTN] = {"model.layers.%d.post_attention_layernorm.weight", NULL,
                                "blk.%d.post_attention_norm.weight"},
    [FINCH_W_NORM_FFN] = {"model.layers.%d.post_attention_layernorm.weight",
                          "model.layers.%d.pre_feedforward_layernorm.weight",
                          "blk.%d.ffn_norm.weight", "transformer.h.%d.ln_2.weight"},
    [FINCH_W_NORM_POST_FFN] = {"model.layers.%d.post_feedforward_layernorm.weight", NULL,
                               "blk.%d.post_ffw_norm.weight"},
    [FINCH_W_NORM_OUT] = {"model.norm.weight", NULL, "output_norm.weight",
                          "transformer.ln_f.weight"},
    [FINCH_W_HEAD] = {"lm_head.weight", NULL, "output.weight", "lm_head.weight"},
    [FINCH_W_NORM_ATTN_B] = {NULL, NULL, "blk.%d.attn_norm.bias", "transformer.h.%d.ln_1.bias"},
    [FINCH_W_NORM_FFN_B] = {NULL, NULL, "blk.%d.ffn_norm.bias", "transformer.h.%d.ln_2.bias"},
    [FINCH_W_NORM_OUT_B] = {NULL, NULL, "output_norm.bias", "transformer.ln_f.bias"},
    [FINCH_W_POS] = {NULL, NULL, "position_embd.weight", "transformer.wpe.weight"},
};

static const char *const linear_stems[FINCH_LAYER_LINEARS] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

const char *finch_linear_gguf_stem(int i) {
    FINCH_ASSERT(i >= 0 && i < FINCH_LAYER_LINEARS);
    return linear_stems[i];
}

void finch_gguf_src_convert(const finch_gguf_src *s, int64_t r0, int64_t r1, finch_dtype to,
                            void *dst, float *row) {
    const int64_t cols = s->ne[0];
    size_t rb_out = 0;
    const bool whole = finch_dtype_row_bytes(to, cols, &rb_out);
    FINCH_ASSERT(whole);
    for (int64_t r = r0; r < r1; r++) {
        uint8_t *out = (uint8_t *)dst + (size_t)(r - r0) * rb_out;
        if (to == s->type) {
            memcpy(out, finch_gguf_src_row(s, r), rb_out);
            continue;
        }
        finch_dtype_info[s->type].dequant(row, finch_gguf_src_row(s, r), cols);
        finch_dtype_info[to].quant(out, row, cols);
    }
}

/* ---- tensors ------------------------------------------------------------------------- */

typedef struct {
    finch_gguf_src *v;
    int64_t n, cap;
    finch_err *err;
} src_list;

static finch_gguf_src *push(src_list *L, const char *name) {
    if (L->n == L->cap) {
        int64_t cap = L->cap ? 2 * L->cap : 64;
        finch_gguf_src *v = finch_mem_realloc(L->v, (size_t)cap * sizeof *v);
        if (!v) {
            finch_err_set(L->err, FINCH_E_NOMEM, "out of memory listing the model's tensors");
            return NULL;
        }
        L->v = v;
        L->cap = cap;
    }
    finch_gguf_src *s = &L->v[L->n++];
    *s = (finch_gguf_src){.n_dims = 1, .ne = {1, 1, 1, 1}};
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

/* A matrix: a weight view (rows, cols) as GGUF ne [cols, rows]; D > 0: q/k rows of head dim
 * D to be written in rotate-half order. */
static finch_status add_matrix(src_list *L, const char *name, const finch_weight *w, int D) {
    finch_gguf_src *s = push(L, name);
    if (!s) return FINCH_E_NOMEM;
    s->type = w->type;
    s->n_dims = 2;
    s->ne[0] = w->cols;
    s->ne[1] = w->rows;
    s->row_bytes = w->row_bytes;
    s->data = w->data;
    s->qk_head_dim = D;
    return FINCH_OK;
}

/* A vector of n floats; D > 0: permuted from finch's q/k order into rotate-half order, a copy
 * the list owns. */
static finch_status add_vector(src_list *L, const char *name, const float *v, int64_t n, int D) {
    finch_gguf_src *s = push(L, name);
    if (!s) return FINCH_E_NOMEM;
    s->type = FINCH_DTYPE_F32;
    s->ne[0] = n;
    s->row_bytes = (size_t)n * sizeof(float);
    s->data = (const uint8_t *)v;
    if (D > 0) {
        if (!(s->owned = finch_mem_alloc((size_t)n * sizeof(float) + 1)))
            return finch_err_set(L->err, FINCH_E_NOMEM, "out of memory writing %s", name);
        for (int64_t r = 0; r < n; r++) s->owned[r] = v[finch_qk_row(r, D)];
        s->data = (const uint8_t *)s->owned;
    }
    return FINCH_OK;
}

static finch_status add_kind(src_list *L, finch_wkind k, int l, const void *t, int64_t n, int D) {
    char name[FINCH_GGUF_MAX_NAME + 1];
    snprintf(name, sizeof name, finch_tensor_name_table[k].gguf, l);
    return n ? add_vector(L, name, t, n, D) : add_matrix(L, name, t, D);
}

finch_status finch_model_gguf_tensors(const finch_model *m, finch_gguf_src **out, int64_t *n,
                                      finch_err *err) {
    const finch_model_config *c = &m->cfg;
    const finch_arch *a = m->arch;
    const int64_t C = c->n_embd;
    const int D = a->neox_rows ? c->head_dim : 0; /* q/k rows back to rotate-half order */
    src_list L = {.err = err};
    finch_status st = add_kind(&L, FINCH_W_EMBD, 0, &m->tok_embd, 0, 0);
    if (!st && a->learned_pos) st = add_kind(&L, FINCH_W_POS, 0, &m->pos_embd, 0, 0);
    for (int l = 0; l < c->n_layer && !st; l++) {
        const finch_layer *ly = &m->layers[l];
        char name[FINCH_GGUF_MAX_NAME + 1];
        st = add_kind(&L, FINCH_W_NORM_ATTN, l, ly->attn_norm, C, 0);
        if (!st && a->layer_norm) st = add_kind(&L, FINCH_W_NORM_ATTN_B, l, ly->attn_norm_b, C, 0);
        for (int i = 0; i < FINCH_LAYER_LINEARS && !st; i++) {
            const finch_linear *lin = finch_layer_linear((finch_layer *)ly, i);
            if (i == 4 && a->post_norms)
                st = add_kind(&L, FINCH_W_NORM_POST_ATTN, l, ly->post_attn_norm, C, 0);
            if (!st && i == 4) {
                st = add_kind(&L, FINCH_W_NORM_FFN, l, ly->ffn_norm, C, 0);
                if (!st && a->layer_norm)
                    st = add_kind(&L, FINCH_W_NORM_FFN_B, l, ly->ffn_norm_b, C, 0);
            }
            if (st || !lin->w.data) continue;                 /* no gate [plain_ffn] */
            if (a->fused_qkv && (i == 1 || i == 2)) continue; /* rows of attn_qkv */
            finch_weight w = lin->w;
            const char *stem = linear_stems[i];
            if (a->fused_qkv && i == 0) { /* q, k, v: consecutive row blocks of one tensor */
                stem = "attn_qkv";
                w.rows = ly->wq.w.rows + ly->wk.w.rows + ly->wv.w.rows;
            }
            const int qk = i < 2 ? D : 0;
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, stem);
            if (!st) st = add_matrix(&L, name, &w, qk);
            snprintf(name, sizeof name, "blk.%d.%s.bias", l, stem);
            if (!st && lin->bias) st = add_vector(&L, name, lin->bias, w.rows, qk);
            if (!st && i == 2 && a->qk_norm)
                st = add_kind(&L, FINCH_W_NORM_Q, l, ly->q_norm, c->head_dim, D);
            if (!st && i == 2 && a->qk_norm)
                st = add_kind(&L, FINCH_W_NORM_K, l, ly->k_norm, c->head_dim, D);
        }
        if (!st && a->post_norms)
            st = add_kind(&L, FINCH_W_NORM_POST_FFN, l, ly->post_ffn_norm, C, 0);
    }
    if (!st) st = add_kind(&L, FINCH_W_NORM_OUT, 0, m->output_norm, C, 0);
    if (!st && a->layer_norm) st = add_kind(&L, FINCH_W_NORM_OUT_B, 0, m->output_norm_b, C, 0);
    /* GPT-2's converter writes the tied head as a copy; the others leave it out */
    if (!st && (!c->tied_output || a->fused_qkv))
        st = add_kind(&L, FINCH_W_HEAD, 0, c->tied_output ? &m->tok_embd : &m->output.w, 0, 0);
    if (st) {
        finch_gguf_src_list_free(L.v, L.n);
        return st;
    }
    *out = L.v;
    *n = L.n;
    return FINCH_OK;
}

void finch_gguf_src_list_free(finch_gguf_src *list, int64_t n) {
    for (int64_t i = 0; list && i < n; i++) free(list[i].owned);
    free(list);
}

/* ---- metadata ------------------------------------------------------------------------ */

/* The special-token ids config.json names (bos, eos, unk, pad; -1 when absent), which the
 * converter uses where tokenizer_config.json names none. */
static finch_status config_ids(const finch_model *m, int32_t ids[4], finch_err *err) {
    for (int i = 0; i < 4; i++) ids[i] = -1;
    if (!m->hf) return FINCH_OK;
    ids[0] = m->hf->bos_token_id;
    ids[1] = m->hf->eos_token_id;
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", m->path) >= sizeof path)
        return finch_err_set(err, FINCH_E_IO, "%s: path too long", m->path);
    json_t *j = NULL;
    json_error_t je;
    finch_status st = finch_json_load_file(path, 0, &j, &je, err);
    if (st) return st;
    static const char *const keys[2] = {"unk_token_id", "pad_token_id"};
    for (int i = 0; j && i < 2; i++) {
        const json_t *v = json_object_get(j, keys[i]);
        if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < INT32_MAX)
            ids[2 + i] = (int32_t)json_integer_value(v);
    }
    json_decref(j);
    return FINCH_OK;
}

finch_status finch_model_gguf_kvs(const finch_model *m, uint32_t ftype, finch_gguf_writer *w,
                                  finch_err *err) {
    const finch_model_config *c = &m->cfg;
    const finch_arch *a = m->arch;
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: the model has no tokenizer (a Hugging Face folder needs "
                             "tokenizer.json), and llama.cpp cannot run a GGUF without one",
                             m->path);
    /* GGUF has no per-block layout: llama.cpp (and finch's GGUF loader) slide in blocks
     * l % pattern < pattern - 1 */
    for (int l = 0; a->swa_pattern && l < c->n_layer; l++)
        if (m->layers[l].sliding != (l % a->swa_pattern < a->swa_pattern - 1))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: block %d %s the sliding window, but a %s GGUF slides in "
                                 "blocks l with l %% %d < %d only (llama.cpp's fixed layout)",
                                 m->path, l, m->layers[l].sliding ? "uses" : "does not use",
                                 c->arch, a->swa_pattern, a->swa_pattern - 1);
    char key[128];
    finch_status st = FINCH_OK;
#define U32(k, v)                                                                                  \
    (snprintf(key, sizeof key, "%s.%s", c->arch, k), st = finch_gguf_set_u32(w, key, (v), err))
#define F32(k, v)                                                                                  \
    (snprintf(key, sizeof key, "%s.%s", c->arch, k), st = finch_gguf_set_f32(w, key, (v), err))
    if ((st = finch_gguf_set_str(w, "general.architecture", c->arch, err)) ||
        (st = finch_gguf_set_str(w, "general.type", "model", err)) ||
        (st = finch_gguf_set_str(w, "general.name", c->name, err)) ||
        U32("block_count", (uint32_t)c->n_layer) ||
        U32("context_length", (uint32_t)c->n_ctx_train) ||
        U32("embedding_length", (uint32_t)c->n_embd) ||
        U32("feed_forward_length", (uint32_t)c->n_ff) ||
        U32("attention.head_count", (uint32_t)c->n_head))
        return st;
    if (a->layer_norm) {
        if (F32("attention.layer_norm_epsilon", c->rms_eps)) return st;
    } else {
        if (U32("attention.head_count_kv", (uint32_t)c->n_head_kv) ||
            F32("rope.freq_base", c->rope_theta) ||
            F32("attention.layer_norm_rms_epsilon", c->rms_eps))
            return st;
    }
    const bool llama = !strcmp(c->arch, "llama");
    if (llama && (U32("vocab_size", (uint32_t)c->n_vocab) ||
                  U32("rope.dimension_count", (uint32_t)c->head_dim)))
        return st;
    if ((a->qk_norm || (llama && c->head_dim * c->n_head != c->n_embd)) &&
        (U32("attention.key_length", (uint32_t)c->head_dim) ||
         U32("attention.value_length", (uint32_t)c->head_dim)))
        return st;
    if (a->swa_pattern && U32("attention.sliding_window", (uint32_t)c->sliding_window)) return st;
#undef U32
#undef F32
    if ((st = finch_gguf_set_u32(w, "general.file_type", ftype, err))) return st;
    /* a folder's tokenizer.model holds the SentencePiece scores a tokenizer.json lacks */
    char spm[4096];
    struct stat sb;
    const bool has_spm =
        m->hf && (size_t)snprintf(spm, sizeof spm, "%s/tokenizer.model", m->path) < sizeof spm &&
        stat(spm, &sb) == 0 && S_ISREG(sb.st_mode);
    int32_t ids[4];
    if ((st = config_ids(m, ids, err)) ||
        (st = finch_tokenizer_gguf_kvs(m->tok, c->n_vocab, ids, has_spm ? spm : NULL, w, err))) {
        finch_err_prefix(err, "%s", m->path);
        return st;
    }
    return finch_gguf_set_u32(w, "general.quantization_version", 2, err);
}
