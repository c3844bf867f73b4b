/*
 * load_hf.c: builds a finch_model from a Hugging Face LLaMA-family folder (llama, SmolLM,
 * mistral, qwen2), a Gemma 3 text folder (gemma3_text: norms stored as w, multiplied as 1 + w,
 * so 1 is added at load, as the GGUF holds them; q/k norms permuted with the q/k rows; four
 * norms a block) or a GPT-2 folder (bind_gpt2: Conv1D weights transposed at load): config.json
 * (io/hf_config.c), the weights in model.safetensors or in the shards named by
 * model.safetensors.index.json (io/safetensors.c, mapped and validated), and tokenizer.json when
 * the folder has one.
 *
 * Every tensor is bound by its Hugging Face name with its exact shape (FORMATS.md 2.4);
 * a missing tensor, a tensor nobody asked for, a wrong shape or a storage type other
 * than f32/f16/bf16 is an error naming the file and the tensor. Weights stay in their
 * storage types inside the mapping, except q_proj/k_proj, whose rows are permuted into
 * GGUF order in owned memory (model.h says why), and norm vectors and biases, which are
 * small and kept as f32.
 *
 * A checkpoint saved with bitsandbytes 4-bit NF4 (quantization_config) stores each
 * projection as Linear4bit's state dict (FORMATS.md 2.2): the packed codes as uint8 beside
 * weight.absmax, .quant_map, .nested_absmax, .nested_quant_map and the quant_state JSON.
 * Those become finch's NF4 blocks in owned memory: the codes as they are and each block's
 * absmax as bitsandbytes dequantizes it, so every value equals bitsandbytes' own.
 */
#include "model/model.h"
#include "core/quant.h"          /* finch_block_nf4, finch_nf4_code */
#include "tokenizer/tokenizer.h" /* finch_tokenizer_from_hf_json */

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

typedef struct {
    finch_model *m;
    finch_hf_index ix; /* weight_map of a sharded checkpoint (n == 0 otherwise) */
    bool *used;        /* per tensor of all shards, in shard order: bound already */
    int64_t *first;    /* per shard: index of its first tensor in used */
    float *owned;      /* next free slot in m->owned_f32 */
    uint8_t *rows;     /* next free byte in m->owned_rows */
    uint8_t *nf4;      /* next free byte in m->owned_nf4 (bitsandbytes checkpoints) */
    finch_err *err;
} loader;

static bool is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* dir/name into buf; false when it does not fit. */
static bool join(char *buf, size_t cap, const char *dir, const char *name) {
    return (size_t)snprintf(buf, cap, "%s/%s", dir, name) < cap;
}

/* The tensor called name, or NULL when the checkpoint has none. *shard says which file. */
static const finch_st_tensor *find(loader *L, const char *name, int *shard) {
    int s = 0;
    if (L->ix.n) {
        s = finch_hf_index_find(&L->ix, name);
        if (s < 0) return NULL;
    }
    *shard = s;
    return finch_st_find(L->m->shards[s], name);
}

static finch_status missing(loader *L, const char *name) {
    if (L->ix.n)
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s/model.safetensors.index.json: missing tensor '%s' (not in "
                             "weight_map)",
                             L->m->path, name);
    return finch_err_set(L->err, FINCH_E_FORMAT, "%s: missing tensor '%s'",
                         finch_st_path(L->m->shards[0]), name);
}

/* Looks a tensor up and checks its shape (n_dims dims, shape[0..]); *shard says which
 * file. */
static finch_status lookup_shape(loader *L, const char *name, int n_dims, int64_t d0, int64_t d1,
                                 const finch_st_tensor **out, int *shard) {
    int s;
    const finch_st_tensor *t = find(L, name, &s);
    if (!t) return missing(L, name);
    const char *file = finch_st_path(L->m->shards[s]);
    if (t->n_dims != n_dims || t->shape[0] != d0 || (n_dims == 2 && t->shape[1] != d1)) {
        char got[96] = "", want[48];
        for (int k = 0; k < t->n_dims; k++) {
            size_t len = strlen(got);
            snprintf(got + len, sizeof got - len, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
        }
        if (n_dims == 2)
            snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        else
            snprintf(want, sizeof want, "[%lld]", (long long)d0);
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s: tensor '%s' has shape [%s], expected %s (from config.json)", file,
                             name, got, want);
    }
    *out = t;
    *shard = s;
    return FINCH_OK;
}

static void mark_used(loader *L, const finch_st_tensor *t, int s) {
    L->used[L->first[s] + (t - finch_st_tensor_at(L->m->shards[s], 0))] = true;
}

/* Looks a tensor up, checks its shape and storage type (f32, f16, bf16), and marks it
 * bound. */
static finch_status lookup(loader *L, const char *name, int n_dims, int64_t d0, int64_t d1,
                           const finch_st_tensor **out) {
    int s;
    const finch_st_tensor *t;
    finch_status st = lookup_shape(L, name, n_dims, d0, d1, &t, &s);
    if (st) return st;
    const char *file = finch_st_path(L->m->shards[s]);
    if (t->type != FINCH_DTYPE_F32 && t->type != FINCH_DTYPE_F16 && t->type != FINCH_DTYPE_BF16)
        return finch_err_set(L->err, FINCH_E_UNSUPPORTED,
                             "%s: tensor '%s' has dtype %s; finch reads F32, F16 and BF16 "
                             "weights",
                             file, name, finch_st_dtype_name(t->dtype));
    if ((uintptr_t)t->data % (uintptr_t)finch_st_dtype_size(t->dtype))
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s: tensor '%s' data is not aligned to its %d-byte elements "
                             "(header length not a multiple of 8?)",
                             file, name, finch_st_dtype_size(t->dtype));
    mark_used(L, t, s);
    *out = t;
    return FINCH_OK;
}

/* name + suffix, looked up with its shape and exact safetensors dtype, marked bound. */
static finch_status lookup_part(loader *L, const char *name, const char *suffix, int dtype,
                                int64_t d0, const finch_st_tensor **out) {
    char n[160];
    snprintf(n, sizeof n, "%s%s", name, suffix);
    int s;
    finch_status st = lookup_shape(L, n, 1, d0, 0, out, &s);
    if (st) return st;
    if ((int)(*out)->dtype != dtype)
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: tensor '%s' has dtype %s, expected %s",
                             finch_st_path(L->m->shards[s]), n, finch_st_dtype_name((*out)->dtype),
                             dtype == FINCH_ST_U8 ? "U8" : "F32");
    mark_used(L, *out, s);
    return FINCH_OK;
}

/* The f32 values of a 1-D F32 tensor, which may sit unaligned in the mapping. */
static float f32_at(const finch_st_tensor *t, int64_t i) {
    float v;
    memcpy(&v, (const uint8_t *)t->data + i * 4, 4);
    return v;
}

/* A bitsandbytes Linear4bit weight (rows, cols) as finch NF4 blocks in owned memory: its
 * quant_state checked against the shape config.json implies, each block's absmax
 * recovered (through the nested 8-bit quantization when there is one) as bitsandbytes
 * computes it, and the packed codes copied as they are. */
static finch_status bind_nf4(loader *L, const char *name, const finch_st_tensor *t, int shard,
                             int64_t rows, int64_t cols, finch_weight *out) {
    const char *file = finch_st_path(L->m->shards[shard]);
    if (cols % QK_NF4)
        return finch_err_set(L->err, FINCH_E_UNSUPPORTED,
                             "%s: tensor '%s': %lld columns are not a multiple of 64, so "
                             "bitsandbytes' blocks span rows (finch keeps NF4 blocks within a row)",
                             file, name, (long long)cols);
    const int64_t nb = rows * cols / QK_NF4;
    if (t->n_dims != 2 || t->shape[0] != rows * cols / 2 || t->shape[1] != 1)
        return finch_err_set(
            L->err, FINCH_E_FORMAT,
            "%s: tensor '%s' is not %lld packed NF4 codes of a [%lld, %lld] weight "
            "(shape [%lld, 1] expected)",
            file, name, (long long)(rows * cols), (long long)rows, (long long)cols,
            (long long)(rows * cols / 2));
    mark_used(L, t, shard);
    /* the non-tensor fields */
    const finch_st_tensor *js;
    finch_status st;
    char key[160];
    snprintf(key, sizeof key, "%s.quant_state.bitsandbytes__nf4", name);
    {
        int s;
        const finch_st_tensor *j = find(L, key, &s);
        if (!j)
            return finch_err_set(L->err, FINCH_E_FORMAT,
                                 "%s: tensor '%s' is uint8 but '%s' is missing (not a "
                                 "bitsandbytes NF4 weight)",
                                 file, name, key);
        if ((st = lookup_part(L, name, ".quant_state.bitsandbytes__nf4", FINCH_ST_U8, j->shape[0],
                              &js)))
            return st;
    }
    json_t *q;
    json_error_t je;
    if ((st = finch_json_loadb((const char *)js->data, js->nbytes, 0, key, &q, &je, L->err)))
        return st;
    if (!q)
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: tensor '%s': not valid JSON: %s", file,
                             key, je.text);
    const json_t *type = json_object_get(q, "quant_type"), *bs = json_object_get(q, "blocksize"),
                 *shape = json_object_get(q, "shape"),
                 *nbs = json_object_get(q, "nested_blocksize"),
                 *noff = json_object_get(q, "nested_offset");
    const bool nested = nbs != NULL;
    const char *why = NULL;
    if (!json_is_string(type) || strcmp(json_string_value(type), "nf4"))
        why = "quant_type is not \"nf4\"";
    else if (!json_is_integer(bs) || json_integer_value(bs) != QK_NF4)
        why = "blocksize is not 64";
    else if (!json_is_array(shape) || json_array_size(shape) != 2 ||
             json_integer_value(json_array_get(shape, 0)) != rows ||
             json_integer_value(json_array_get(shape, 1)) != cols)
        why = "shape is not the [rows, cols] config.json implies";
    else if (nested && (!json_is_integer(nbs) || json_integer_value(nbs) != QK_NF4_NESTED))
        why = "nested_blocksize is not 256";
    else if (nested && !json_is_number(noff))
        why = "nested_offset is not a number";
    const float offset = nested && !why ? (float)json_number_value(noff) : 0.0f;
    json_decref(q);
    if (why) return finch_err_set(L->err, FINCH_E_FORMAT, "%s: tensor '%s': %s", file, key, why);
    /* the code book must be NF4's */
    const finch_st_tensor *qm, *am, *na = NULL, *nm = NULL;
    if ((st = lookup_part(L, name, ".quant_map", FINCH_ST_F32, 16, &qm))) return st;
    for (int i = 0; i < 16; i++)
        if (f32_at(qm, i) != finch_nf4_code[i])
            return finch_err_set(L->err, FINCH_E_UNSUPPORTED,
                                 "%s: tensor '%s.quant_map': entry %d is %g, not NF4's %g", file,
                                 name, i, f32_at(qm, i), finch_nf4_code[i]);
    if ((st = lookup_part(L, name, ".absmax", nested ? FINCH_ST_U8 : FINCH_ST_F32, nb, &am)))
        return st;
    if (nested && ((st = lookup_part(L, name, ".nested_absmax", FINCH_ST_F32,
                                     (nb + QK_NF4_NESTED - 1) / QK_NF4_NESTED, &na)) ||
                   (st = lookup_part(L, name, ".nested_quant_map", FINCH_ST_F32, 256, &nm))))
        return st;
    finch_block_nf4 *blk = (finch_block_nf4 *)L->nf4;
    const uint8_t *codes = t->data;
    if (nested) {
        float map[256],
            *nest = finch_alloc((size_t)na->n_elems * sizeof(float), "NF4 absmax", L->err);
        float *absmax = finch_alloc((size_t)nb * sizeof(float), "NF4 absmax", L->err);
        if (!nest || !absmax) {
            free(nest);
            free(absmax);
            return FINCH_E_NOMEM;
        }
        for (int i = 0; i < 256; i++) map[i] = f32_at(nm, i);
        for (int64_t i = 0; i < (int64_t)na->n_elems; i++) nest[i] = f32_at(na, i);
        finch_nf4_dequant_absmax(absmax, am->data, nb, nest, map, QK_NF4_NESTED, offset);
        for (int64_t b = 0; b < nb; b++) blk[b].d = absmax[b];
        free(nest);
        free(absmax);
    } else {
        for (int64_t b = 0; b < nb; b++) blk[b].d = f32_at(am, b);
    }
    for (int64_t b = 0; b < nb; b++) memcpy(blk[b].qs, codes + b * (QK_NF4 / 2), QK_NF4 / 2);
    *out = (finch_weight){.type = FINCH_DTYPE_NF4,
                          .rows = rows,
                          .cols = cols,
                          .row_bytes = (size_t)(cols / QK_NF4) * sizeof(finch_block_nf4),
                          .data = blk};
    L->nf4 += (size_t)nb * sizeof(finch_block_nf4);
    return FINCH_OK;
}

/* Bytes of finch NF4 blocks for a tensor of packed NF4 codes (36 per 32 bytes of codes),
 * with room for a partial block. */
static size_t nf4_size(const finch_st_tensor *t) {
    return t->nbytes / 32 * 36 + 36;
}

/* Binds a 2-D weight (rows, cols) as a view into the mapping. */
static finch_status bind_weight(loader *L, const char *name, int64_t rows, int64_t cols,
                                finch_weight *out) {
    const finch_st_tensor *t;
    if (L->m->hf->bnb_nf4) {
        int s;
        t = find(L, name, &s);
        if (t && t->dtype == FINCH_ST_U8) return bind_nf4(L, name, t, s, rows, cols, out);
    }
    finch_status st = lookup(L, name, 2, rows, cols, &t);
    if (st) return st;
    *out = (finch_weight){.type = t->type,
                          .rows = rows,
                          .cols = cols,
                          .row_bytes = t->nbytes / (size_t)rows,
                          .data = t->data};
    return FINCH_OK;
}

/* Binds q_proj or k_proj with its rows copied into GGUF order (model.h). */
static finch_status bind_qk(loader *L, const char *name, int64_t rows, int64_t cols,
                            finch_weight *out) {
    finch_status st = bind_weight(L, name, rows, cols, out);
    if (st) return st;
    const uint8_t *src = out->data;
    const int D = L->m->cfg.head_dim;
    for (int64_t r = 0; r < rows; r++)
        memcpy(L->rows + (size_t)r * out->row_bytes,
               src + (size_t)finch_qk_hf_row(r, D) * out->row_bytes, out->row_bytes);
    out->data = L->rows;
    L->rows += (size_t)rows * out->row_bytes;
    return FINCH_OK;
}

/* Binds a vector (n) as f32: a view when stored as aligned f32, else converted into the
 * owned slot. permute: a q/k bias, reordered like the rows. */
static finch_status bind_vector(loader *L, const char *name, int64_t n, bool permute,
                                const float **out) {
    const finch_st_tensor *t;
    finch_status st = lookup(L, name, 1, n, 0, &t);
    if (st) return st;
    if (t->type == FINCH_DTYPE_F32 && !permute) {
        *out = (const float *)t->data;
        return FINCH_OK;
    }
    float *dst = L->owned;
    L->owned += n;
    finch_dtype_info[t->type].dequant(dst, t->data, n);
    if (permute) {
        float *tmp = L->owned; /* scratch just past the slot, inside the allocation */
        memcpy(tmp, dst, (size_t)n * sizeof *dst);
        for (int64_t r = 0; r < n; r++) dst[r] = tmp[finch_qk_hf_row(r, L->m->cfg.head_dim)];
    }
    *out = dst;
    return FINCH_OK;
}

/* Binds a norm weight (n) as bind_vector does, but always into the owned slot when the
 * family multiplies by 1 + w (Gemma 3): Hugging Face stores w, finch (and GGUF) 1 + w,
 * computed in f32 as transformers' Gemma3RMSNorm does. per_head: a q/k norm (n = D),
 * permuted like a head's rows. */
static finch_status bind_norm(loader *L, const char *name, int64_t n, bool per_head,
                              const float **out) {
    if (!L->m->arch->norm_one) return bind_vector(L, name, n, per_head, out);
    const finch_st_tensor *t;
    finch_status st = lookup(L, name, 1, n, 0, &t);
    if (st) return st;
    float *dst = L->owned, *w = L->owned + n; /* w: scratch just past the slot */
    L->owned += n;
    finch_dtype_info[t->type].dequant(w, t->data, n);
    for (int64_t r = 0; r < n; r++)
        dst[r] = 1.0f + w[per_head ? finch_qk_hf_row(r, L->m->cfg.head_dim) : r];
    *out = dst;
    return FINCH_OK;
}

/* Binds a GPT-2 Conv1D weight, stored [in = cols, out = rows], transposed into owned memory
 * as the (rows, cols) matrix every other weight is. */
static finch_status bind_conv1d(loader *L, const char *name, int64_t rows, int64_t cols,
                                finch_weight *out) {
    const finch_st_tensor *t;
    finch_status st = lookup(L, name, 2, cols, rows, &t);
    if (st) return st;
    const size_t es = (size_t)finch_st_dtype_size(t->dtype);
    const uint8_t *src = t->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            memcpy(L->rows + ((size_t)r * (size_t)cols + (size_t)c) * es,
                   src + ((size_t)c * (size_t)rows + (size_t)r) * es, es);
    *out = (finch_weight){.type = t->type,
                          .rows = rows,
                          .cols = cols,
                          .row_bytes = (size_t)cols * es,
                          .data = L->rows};
    L->rows += (size_t)rows * (size_t)cols * es;
    return FINCH_OK;
}

/* The prefix of a GPT-2 checkpoint's names: "transformer." as GPT2LMHeadModel saves them,
 * "" for the original checkpoints (GPT2Model's names). */
static const char *gpt2_prefix(loader *L) {
    int s;
    return find(L, "transformer.wte.weight", &s) ? "transformer." : "";
}

/* GPT-2 (transformers' GPT2LMHeadModel): wte, wpe, per block ln_1, attn.c_attn (fused q/k/v,
 * split into three views of its transposed rows), attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj,
 * every Conv1D with its bias; ln_f; lm_head tied unless config.json says otherwise. */
static finch_status bind_gpt2(loader *L) {
    finch_model *m = L->m;
    const finch_model_config *c = &m->cfg;
    const int64_t C = c->n_embd, F = c->n_ff, V = c->n_vocab;
    const char *pre = gpt2_prefix(L);
    char n[128];
    finch_status st;
#define NAME(s) (snprintf(n, sizeof n, "%s%s", pre, s), n)
    if ((st = bind_weight(L, NAME("wte.weight"), V, C, &m->tok_embd)) ||
        (st = bind_weight(L, NAME("wpe.weight"), c->n_ctx_train, C, &m->pos_embd)) ||
        (st = bind_vector(L, NAME("ln_f.weight"), C, false, &m->output_norm)) ||
        (st = bind_vector(L, NAME("ln_f.bias"), C, false, &m->output_norm_b)))
        return st;
#undef NAME
    if (c->tied_output)
        m->output.w = m->tok_embd;
    else if ((st = bind_weight(L, "lm_head.weight", V, C, &m->output.w)))
        return st;
    for (int l = 0; l < c->n_layer; l++) {
        finch_layer *ly = &m->layers[l];
        finch_weight qkv;
        const float *qkv_b;
#define NAME(s) (snprintf(n, sizeof n, "%sh.%d.%s", pre, l, s), n)
        if ((st = bind_vector(L, NAME("ln_1.weight"), C, false, &ly->attn_norm)) ||
            (st = bind_vector(L, NAME("ln_1.bias"), C, false, &ly->attn_norm_b)) ||
            (st = bind_vector(L, NAME("ln_2.weight"), C, false, &ly->ffn_norm)) ||
            (st = bind_vector(L, NAME("ln_2.bias"), C, false, &ly->ffn_norm_b)) ||
            (st = bind_conv1d(L, NAME("attn.c_attn.weight"), 3 * C, C, &qkv)) ||
            (st = bind_vector(L, NAME("attn.c_attn.bias"), 3 * C, false, &qkv_b)) ||
            (st = bind_conv1d(L, NAME("attn.c_proj.weight"), C, C, &ly->wo.w)) ||
            (st = bind_vector(L, NAME("attn.c_proj.bias"), C, false, &ly->wo.bias)) ||
            (st = bind_conv1d(L, NAME("mlp.c_fc.weight"), F, C, &ly->w_up.w)) ||
            (st = bind_vector(L, NAME("mlp.c_fc.bias"), F, false, &ly->w_up.bias)) ||
            (st = bind_conv1d(L, NAME("mlp.c_proj.weight"), C, F, &ly->w_down.w)) ||
            (st = bind_vector(L, NAME("mlp.c_proj.bias"), C, false, &ly->w_down.bias)))
            return st;
#undef NAME
        finch_linear *qkv_lins[3] = {&ly->wq, &ly->wk, &ly->wv};
        for (int i = 0; i < 3; i++) {
            qkv_lins[i]->w = qkv;
            qkv_lins[i]->w.rows = C;
            qkv_lins[i]->w.data = (const uint8_t *)qkv.data + (size_t)(i * C) * qkv.row_bytes;
            qkv_lins[i]->bias = qkv_b + i * C;
        }
    }
    return FINCH_OK;
}

static finch_status bind_tensors(loader *L) {
    finch_model *m = L->m;
    if (m->arch->fused_qkv) return bind_gpt2(L);
    const finch_model_config *c = &m->cfg;
    const int64_t C = c->n_embd, F = c->n_ff, V = c->n_vocab;
    const int64_t HD = (int64_t)c->n_head * c->head_dim, KD = (int64_t)c->n_head_kv * c->head_dim;
    finch_status st;
    if ((st = bind_weight(L, "model.embed_tokens.weight", V, C, &m->tok_embd)) ||
        (st = bind_norm(L, "model.norm.weight", C, false, &m->output_norm)))
        return st;
    if (c->tied_output) {
        m->output.w = m->tok_embd;
    } else if ((st = bind_weight(L, "lm_head.weight", V, C, &m->output.w))) {
        return st;
    }
    const bool bias = m->hf->qkv_bias;
    /* Gemma 3: post_attention_layernorm normalizes the attention's output; the FFN's input
     * norm is pre_feedforward_layernorm */
    const bool post = m->arch->post_norms;
    const char *ffn_norm =
        post ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight";
    for (int l = 0; l < c->n_layer; l++) {
        finch_layer *ly = &m->layers[l];
        char n[96];
        ly->sliding = m->arch->swa_pattern && m->hf->layer_sliding[l];
#define NAME(s) (snprintf(n, sizeof n, "model.layers.%d.%s", l, s), n)
        if ((st = bind_norm(L, NAME("input_layernorm.weight"), C, false, &ly->attn_norm)) ||
            (st = bind_norm(L, NAME(ffn_norm), C, false, &ly->ffn_norm)) ||
            (st = bind_qk(L, NAME("self_attn.q_proj.weight"), HD, C, &ly->wq.w)) ||
            (st = bind_qk(L, NAME("self_attn.k_proj.weight"), KD, C, &ly->wk.w)) ||
            (st = bind_weight(L, NAME("self_attn.v_proj.weight"), KD, C, &ly->wv.w)) ||
            (st = bind_weight(L, NAME("self_attn.o_proj.weight"), C, HD, &ly->wo.w)) ||
            (st = bind_weight(L, NAME("mlp.gate_proj.weight"), F, C, &ly->w_gate.w)) ||
            (st = bind_weight(L, NAME("mlp.up_proj.weight"), F, C, &ly->w_up.w)) ||
            (st = bind_weight(L, NAME("mlp.down_proj.weight"), C, F, &ly->w_down.w)))
            return st;
        if (bias && ((st = bind_vector(L, NAME("self_attn.q_proj.bias"), HD, true, &ly->wq.bias)) ||
                     (st = bind_vector(L, NAME("self_attn.k_proj.bias"), KD, true, &ly->wk.bias)) ||
                     (st = bind_vector(L, NAME("self_attn.v_proj.bias"), KD, false, &ly->wv.bias))))
            return st;
        const int64_t D = c->head_dim;
        if (m->arch->qk_norm &&
            ((st = bind_norm(L, NAME("self_attn.q_norm.weight"), D, true, &ly->q_norm)) ||
             (st = bind_norm(L, NAME("self_attn.k_norm.weight"), D, true, &ly->k_norm))))
            return st;
        if (post && ((st = bind_norm(L, NAME("post_attention_layernorm.weight"), C, false,
                                     &ly->post_attn_norm)) ||
                     (st = bind_norm(L, NAME("post_feedforward_layernorm.weight"), C, false,
                                     &ly->post_ffn_norm))))
            return st;
#undef NAME
    }
    return FINCH_OK;
}

/* After binding: every tensor of every shard must have been asked for. Old checkpoints
 * carry RoPE's inverse frequencies as buffers (*.rotary_emb.inv_freq); they are
 * recomputed from rope_theta and skipped. */
static finch_status check_all_used(loader *L) {
    static const char skip[] = ".rotary_emb.inv_freq";
    /* GPT-2 checkpoints may carry the attention's causal mask buffers */
    static const char *const gpt2_skip[] = {".attn.bias", ".attn.masked_bias"};
    for (int s = 0; s < L->m->n_shards; s++) {
        const finch_st *f = L->m->shards[s];
        for (int64_t i = 0; i < finch_st_n_tensors(f); i++) {
            const char *name = finch_st_tensor_at(f, i)->name;
            size_t len = strlen(name);
            if (L->used[L->first[s] + i]) continue;
            if (len >= sizeof skip - 1 && !strcmp(name + len - (sizeof skip - 1), skip)) continue;
            bool buffer = false;
            for (int k = 0; k < 2 && L->m->arch->fused_qkv; k++) {
                size_t kl = strlen(gpt2_skip[k]);
                buffer = buffer || (len >= kl && !strcmp(name + len - kl, gpt2_skip[k]));
            }
            if (buffer) continue;
            if (L->ix.n && finch_hf_index_find(&L->ix, name) != s)
                return finch_err_set(L->err, FINCH_E_FORMAT,
                                     "%s: tensor '%s' is not listed for this file in "
                                     "model.safetensors.index.json",
                                     finch_st_path(f), name);
            return finch_err_set(L->err, FINCH_E_FORMAT,
                                 "%s: unexpected tensor '%s' (not part of a %s model with "
                                 "this config.json)",
                                 finch_st_path(f), name, L->m->hf->model_type);
        }
    }
    return FINCH_OK;
}

/* Maps model.safetensors, or the shards of model.safetensors.index.json, checking that
 * every tensor the index names is in the shard it names. */
static finch_status open_shards(loader *L) {
    finch_model *m = L->m;
    char path[4096];
    finch_status st;
    if (!join(path, sizeof path, m->path, "model.safetensors"))
        return finch_err_set(L->err, FINCH_E_IO, "%s: path too long", m->path);
    if (!is_file(path)) {
        if (!join(path, sizeof path, m->path, "model.safetensors.index.json"))
            return finch_err_set(L->err, FINCH_E_IO, "%s: path too long", m->path);
        if (!is_file(path))
            return finch_err_set(L->err, FINCH_E_IO,
                                 "%s: folder has config.json but neither model.safetensors nor "
                                 "model.safetensors.index.json",
                                 m->path);
        if ((st = finch_hf_index_load(path, &L->ix, L->err))) return st;
    }
    const int n = L->ix.n ? L->ix.n_files : 1;
    m->shards = finch_calloc((size_t)n, sizeof *m->shards, "shards", L->err);
    L->first = finch_calloc((size_t)n + 1, sizeof *L->first, "shards", L->err);
    if (!m->shards || !L->first) return FINCH_E_NOMEM;
    for (int s = 0; s < n; s++) {
        if (L->ix.n) {
            char shard[4096];
            if (!join(shard, sizeof shard, m->path, L->ix.files[s]))
                return finch_err_set(L->err, FINCH_E_IO, "%s: path too long", m->path);
            if (!is_file(shard))
                return finch_err_set(L->err, FINCH_E_IO,
                                     "%s: weight_map names shard '%s', which is not a file in "
                                     "%s",
                                     path, L->ix.files[s], m->path);
            st = finch_st_open(shard, &m->shards[s], L->err);
        } else {
            st = finch_st_open(path, &m->shards[s], L->err);
        }
        if (st) return st;
        m->n_shards = s + 1;
        L->first[s + 1] = L->first[s] + finch_st_n_tensors(m->shards[s]);
    }
    for (int64_t i = 0; i < L->ix.n; i++)
        if (!finch_st_find(m->shards[L->ix.file[i]], L->ix.tensor[i]))
            return finch_err_set(L->err, FINCH_E_FORMAT,
                                 "%s: weight_map puts tensor '%s' in '%s', which has no such "
                                 "tensor",
                                 path, L->ix.tensor[i], L->ix.files[L->ix.file[i]]);
    L->used = finch_calloc((size_t)L->first[n] + 1, sizeof *L->used, "tensor flags", L->err);
    return L->used ? FINCH_OK : FINCH_E_NOMEM;
}

/* The finch config from config.json; the name is the folder's. */
static void fill_config(finch_model *m) {
    const finch_hf_config *h = m->hf;
    finch_model_config *c = &m->cfg;
    /* the GGUF architecture llama.cpp would give it: mistral is llama there */
    snprintf(c->arch, sizeof c->arch, "%s",
             !strcmp(h->model_type, "qwen2")         ? "qwen2"
             : !strcmp(h->model_type, "gpt2")        ? "gpt2"
             : !strcmp(h->model_type, "gemma3_text") ? "gemma3"
                                                     : "llama");
    m->arch = finch_arch_find(c->arch);
    size_t end = strlen(m->path);
    while (end > 1 && m->path[end - 1] == '/') end--; /* trailing slashes */
    size_t start = end;
    while (start > 0 && m->path[start - 1] != '/') start--;
    size_t len = end - start < sizeof c->name - 1 ? end - start : sizeof c->name - 1;
    memcpy(c->name, m->path + start, len);
    c->name[len] = 0;
    c->n_layer = h->num_hidden_layers;
    c->n_embd = h->hidden_size;
    c->n_ff = h->intermediate_size;
    c->n_head = h->num_attention_heads;
    c->n_head_kv = h->num_key_value_heads;
    c->head_dim = h->head_dim;
    c->n_vocab = h->vocab_size;
    c->n_ctx_train = h->context;
    c->rope_theta = h->rope_theta;
    c->rms_eps = h->rms_norm_eps;
    c->tied_output = h->tie_word_embeddings;
    c->sliding_window = m->arch->swa_pattern ? h->sliding_window : 0;
}

static finch_status load_tokenizer(finch_model *m, finch_err *err) {
    char tj[4096], tc[4096];
    if (!join(tj, sizeof tj, m->path, "tokenizer.json") ||
        !join(tc, sizeof tc, m->path, "tokenizer_config.json"))
        return finch_err_set(err, FINCH_E_IO, "%s: path too long", m->path);
    if (!is_file(tj)) return FINCH_OK; /* loads without a tokenizer, as a GGUF without one */
    finch_status st = finch_tokenizer_from_hf_json(tj, is_file(tc) ? tc : NULL, &m->tok, err);
    if (st) return st;
    if (finch_tokenizer_n_vocab(m->tok) > m->cfg.n_vocab)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: tokenizer has %d tokens but config.json's vocab_size is %d", tj,
                             finch_tokenizer_n_vocab(m->tok), m->cfg.n_vocab);
    return FINCH_OK;
}

finch_status finch_model_load_hf(finch_model *m, finch_err *err) {
    loader L = {.m = m, .err = err};
    char path[4096];
    finch_status st;
    if (!join(path, sizeof path, m->path, "config.json"))
        return finch_err_set(err, FINCH_E_IO, "%s: path too long", m->path);
    if (!is_file(path))
        return finch_err_set(err, FINCH_E_IO,
                             "%s: is a directory without config.json (finch loads GGUF files and "
                             "Hugging Face model folders)",
                             m->path);
    m->hf = finch_calloc(1, sizeof *m->hf, "config", err);
    if (!m->hf) return FINCH_E_NOMEM;
    if ((st = finch_hf_config_load(path, m->hf, err))) return st;
    fill_config(m);
    const finch_model_config *c = &m->cfg;
    if (m->arch->swa_pattern && m->hf->rope_local_base_freq != m->arch->swa_rope_base) {
        st = finch_err_set(err, FINCH_E_UNSUPPORTED,
                           "%s: field 'rope_local_base_freq': %g is not supported (finch's %s "
                           "sliding-window blocks use RoPE base %g)",
                           path, m->hf->rope_local_base_freq, c->arch, m->arch->swa_rope_base);
        goto done;
    }
    if ((st = open_shards(&L))) goto done;

    /* Owned memory is sized from the tensors the files hold, not from config.json, so an
     * absurd config fails on a missing tensor rather than on a huge allocation. f32: every
     * norm and bias is a 1-D tensor of the files, plus scratch for one bias permutation. */
    size_t n_f32 = 0, max_1d = 0;
    for (int k = 0; k < m->n_shards; k++)
        for (int64_t i = 0; i < finch_st_n_tensors(m->shards[k]); i++) {
            const finch_st_tensor *t = finch_st_tensor_at(m->shards[k], i);
            if (t->n_dims != 1) continue;
            n_f32 += t->n_elems;
            if (t->n_elems > max_1d) max_1d = t->n_elems;
        }
    n_f32 += max_1d + 1;
    const size_t L_ = (size_t)c->n_layer;
    m->owned_f32 = finch_calloc(n_f32, sizeof(float), "norm weights and biases", err);
    m->layers = finch_calloc(L_, sizeof *m->layers, "layers", err);
    if (!m->owned_f32 || !m->layers) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    /* Q/K copies: at most the bytes of the q/k tensors present (binding checks them) */
    size_t rows_bytes = 0;
    for (int k = 0; k < m->n_shards && m->arch->fused_qkv; k++) /* GPT-2's Conv1D weights */
        for (int64_t i = 0; i < finch_st_n_tensors(m->shards[k]); i++) {
            const finch_st_tensor *t = finch_st_tensor_at(m->shards[k], i);
            if (t->n_dims == 2 && (strstr(t->name, ".c_attn.") || strstr(t->name, ".c_proj.") ||
                                   strstr(t->name, ".c_fc.")))
                rows_bytes += t->nbytes;
        }
    for (int l = 0; l < c->n_layer; l++) {
        for (int k = 0; k < 2; k++) {
            char n[96];
            snprintf(n, sizeof n, "model.layers.%d.self_attn.%s_proj.weight", l, k ? "k" : "q");
            int s;
            const finch_st_tensor *t = find(&L, n, &s);
            /* within the mapped files: cannot overflow; packed NF4 codes grow by 36 / 32 */
            if (t) rows_bytes += t->dtype == FINCH_ST_U8 ? nf4_size(t) : t->nbytes;
        }
    }
    /* NF4 blocks of a bitsandbytes checkpoint: 36 bytes per 32 bytes of packed codes */
    size_t nf4_bytes = 0;
    for (int k = 0; m->hf->bnb_nf4 && k < m->n_shards; k++)
        for (int64_t i = 0; i < finch_st_n_tensors(m->shards[k]); i++) {
            const finch_st_tensor *t = finch_st_tensor_at(m->shards[k], i);
            if (t->dtype == FINCH_ST_U8 && t->n_dims == 2) nf4_bytes += nf4_size(t);
        }
    m->owned_rows = finch_aalloc(rows_bytes ? rows_bytes : 1, "Q/K weights", err);
    m->owned_nf4 = nf4_bytes ? finch_aalloc(nf4_bytes, "NF4 weights", err) : NULL;
    if (!m->owned_rows || (nf4_bytes && !m->owned_nf4)) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    L.nf4 = m->owned_nf4;
    L.owned = m->owned_f32;
    L.rows = m->owned_rows;
    if ((st = bind_tensors(&L)) || (st = check_all_used(&L))) goto done;
    if ((st = load_tokenizer(m, err))) goto done;
    for (int k = 0; k < m->n_shards; k++)
        for (int64_t i = 0; i < finch_st_n_tensors(m->shards[k]); i++) {
            const finch_st_tensor *t = finch_st_tensor_at(m->shards[k], i);
            m->cfg.weight_bytes += (int64_t)t->nbytes;
            if (m->hf->bnb_nf4 && strstr(t->name, ".weight.")) continue; /* NF4 statistics */
            /* packed NF4 codes: two weights a byte */
            m->cfg.n_params += (int64_t)t->n_elems * (t->dtype == FINCH_ST_U8 ? 2 : 1);
        }
done:
    finch_hf_index_free(&L.ix);
    free(L.used);
    free(L.first);
    return st;
}
