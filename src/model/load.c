/*
 * load.c: builds a finch_model from a GGUF file: reads and validates the LLaMA
 * hyperparameters (FORMATS.md 3.1), binds every tensor by name with its exact shape
 * (FORMATS.md 3.2), and builds the tokenizer. GPT-2 files (llama.cpp's gpt2 names:
 * position_embd, LayerNorm biases, the fused attn_qkv, no ffn_gate) bind in
 * bind_gpt2_block; q, k, v are views of attn_qkv's row blocks. Weights are views into the mapping;
 * only norm vectors stored in a 16-bit type are converted (they are tiny).
 *
 * A path that is a folder is a Hugging Face model folder: load_hf.c builds the same
 * model from it.
 */
#include "model/model.h"
#include "tokenizer/tokenizer.h" /* finch_tokenizer_from_gguf, finch_chat_detect */

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Limits on hyperparameters read from a file, far above any real model. */
#define MAX_LAYERS 1024
#define MAX_EMBD 65536
#define MAX_FF (1 << 20)
#define MAX_HEADS 1024
#define MAX_VOCAB (1 << 24)

typedef struct {
    const finch_gguf *g;
    const char *path;
    finch_err *err;
    const finch_arch *arch;
} loader;

static finch_status get_dim(loader *L, const char *arch, const char *key, bool required,
                            uint32_t lo, uint32_t hi, int *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    uint32_t v = (uint32_t)*out;
    finch_status st = finch_gguf_get_u32(L->g, full, required, &v, L->err);
    if (st) return st;
    if (v < lo || v > hi)
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: key '%s' is %u, must be in %u..%u",
                             L->path, full, v, lo, hi);
    *out = (int)v;
    return FINCH_OK;
}

/* Binds a 2-D weight (rows, cols) = GGUF ne [cols, rows]. */
static finch_status bind_weight(loader *L, const char *name, int64_t rows, int64_t cols,
                                bool required, finch_weight *out, bool *found) {
    const finch_gguf_tensor *t = finch_gguf_find_tensor(L->g, name);
    if (found) *found = t != NULL;
    if (!t) {
        if (!required) return FINCH_OK;
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: missing tensor '%s'", L->path, name);
    }
    if (t->n_dims != 2 || t->ne[0] != cols || t->ne[1] != rows)
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected "
                             "[%lld, %lld]",
                             L->path, name, (long long)t->ne[0], (long long)t->ne[1],
                             (long long)t->ne[2], (long long)t->ne[3], (long long)cols,
                             (long long)rows);
    if (!finch_dtype_info[t->type].dequant)
        return finch_err_set(L->err, FINCH_E_UNSUPPORTED,
                             "%s: tensor '%s' has type %s, which finch cannot compute with",
                             L->path, name, finch_dtype_info[t->type].name);
    out->type = t->type;
    out->rows = rows;
    out->cols = cols;
    out->row_bytes = t->nbytes / (size_t)rows;
    out->data = t->data;
    return FINCH_OK;
}

/* Binds a norm vector (C); 16-bit types are converted into the slot at *owned. */
static finch_status bind_vector(loader *L, const char *name, int64_t n, float **owned,
                                const float **out) {
    const finch_gguf_tensor *t = finch_gguf_find_tensor(L->g, name);
    if (!t) return finch_err_set(L->err, FINCH_E_FORMAT, "%s: missing tensor '%s'", L->path, name);
    if (t->n_dims != 1 || t->ne[0] != n)
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s: tensor '%s' has %d dims with ne[0] = %lld, expected [%lld]",
                             L->path, name, t->n_dims, (long long)t->ne[0], (long long)n);
    if (t->type == FINCH_DTYPE_F32) {
        *out = (const float *)t->data;
        return FINCH_OK;
    }
    if (!finch_dtype_info[t->type].dequant)
        return finch_err_set(L->err, FINCH_E_UNSUPPORTED, "%s: tensor '%s' has type %s", L->path,
                             name, finch_dtype_info[t->type].name);
    finch_dtype_info[t->type].dequant(*owned, t->data, n);
    *out = *owned;
    *owned += n;
    return FINCH_OK;
}

/* An optional bias of n f32 values (q/k/v/o and FFN biases, which llama.cpp's llama
 * architecture reads when present). */
static finch_status bind_bias(loader *L, const char *name, int64_t n, const float **out) {
    const finch_gguf_tensor *t = finch_gguf_find_tensor(L->g, name);
    if (!t) return FINCH_OK;
    if (t->n_dims != 1 || t->ne[0] != n || t->type != FINCH_DTYPE_F32)
        return finch_err_set(
            L->err, FINCH_E_FORMAT,
            "%s: bias '%s' must be f32 [%lld] (has %d dims, ne[0] = %lld, type %s)", L->path, name,
            (long long)n, t->n_dims, (long long)t->ne[0],
            finch_dtype_info[t->type].name ? finch_dtype_info[t->type].name : "?");
    *out = (const float *)t->data;
    return FINCH_OK;
}

static finch_status read_config(loader *L, finch_model_config *c) {
    finch_str arch;
    finch_status st = finch_gguf_get_str(L->g, "general.architecture", true, &arch, L->err);
    if (st) return st;
    if (arch.len >= sizeof c->arch) arch.len = sizeof c->arch - 1;
    memcpy(c->arch, arch.ptr, arch.len);
    c->arch[arch.len] = 0;
    const finch_arch *row = finch_arch_find(c->arch);
    if (!row || !row->gguf) {
        char names[256];
        finch_arch_names(names, sizeof names, true);
        return finch_err_set(L->err, FINCH_E_UNSUPPORTED,
                             "%s: architecture '%s' is not supported (finch runs %s)", L->path,
                             c->arch, names);
    }
    L->arch = row;
    finch_str name = {0};
    if ((st = finch_gguf_get_str(L->g, "general.name", false, &name, L->err))) return st;
    snprintf(c->name, sizeof c->name, "%.*s", (int)(name.len < 127 ? name.len : 127),
             name.ptr ? name.ptr : "");

    const char *a = c->arch;
    c->n_ctx_train = 2048;
    if ((st = get_dim(L, a, "context_length", true, 1, 1u << 24, &c->n_ctx_train)) ||
        (st = get_dim(L, a, "embedding_length", true, 1, MAX_EMBD, &c->n_embd)) ||
        (st = get_dim(L, a, "block_count", true, 1, MAX_LAYERS, &c->n_layer)) ||
        (st = get_dim(L, a, "feed_forward_length", true, 1, MAX_FF, &c->n_ff)) ||
        (st = get_dim(L, a, "attention.head_count", true, 1, MAX_HEADS, &c->n_head)))
        return st;
    c->n_head_kv = c->n_head;
    if ((st = get_dim(L, a, "attention.head_count_kv", false, 1, MAX_HEADS, &c->n_head_kv)))
        return st;
    if (c->n_embd % c->n_head)
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s: embedding_length %d is not a multiple of head_count %d", L->path,
                             c->n_embd, c->n_head);
    if (c->n_head % c->n_head_kv)
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s: head_count %d is not a multiple of head_count_kv %d", L->path,
                             c->n_head, c->n_head_kv);
    /* the head dim is key_length when the file says (Gemma 3: 256 for 640 / 4) */
    c->head_dim = c->n_embd / c->n_head;
    if ((st = get_dim(L, a, "attention.key_length", false, 1, MAX_EMBD, &c->head_dim))) return st;
    int val_len = c->head_dim, rot = c->head_dim;
    if ((st = get_dim(L, a, "attention.value_length", false, 1, MAX_EMBD, &val_len)) ||
        (st = get_dim(L, a, "rope.dimension_count", false, 1, MAX_EMBD, &rot)))
        return st;
    if (val_len != c->head_dim || rot != c->head_dim)
        return finch_err_set(L->err, FINCH_E_UNSUPPORTED,
                             "%s: value_length %d / rope.dimension_count %d differ from the key "
                             "head dim %d",
                             L->path, val_len, rot, c->head_dim);
    if (row->swa_pattern) {
        c->sliding_window = c->n_ctx_train;
        if ((st = get_dim(L, a, "attention.sliding_window", true, 1, 1 << 24, &c->sliding_window)))
            return st;
    }
    if (c->head_dim % 2 && !row->learned_pos)
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: head dim %d is odd", L->path,
                             c->head_dim);
    char key[128];
    snprintf(key, sizeof key, "%s.attention.layer_norm%s_epsilon", a,
             row->layer_norm ? "" : "_rms");
    if ((st = finch_gguf_get_f32(L->g, key, true, &c->rms_eps, L->err))) return st;
    if (!(c->rms_eps > 0 && c->rms_eps < 1))
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: %s = %g, must be in (0, 1)", L->path, key,
                             c->rms_eps);
    c->rope_theta = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    if ((st = finch_gguf_get_f32(L->g, key, false, &c->rope_theta, L->err))) return st;
    if (!(c->rope_theta > 1))
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: %s = %g, must be > 1", L->path, key,
                             c->rope_theta);
    finch_str scaling = {0};
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if ((st = finch_gguf_get_str(L->g, key, false, &scaling, L->err))) return st;
    float factor = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", a);
    if ((st = finch_gguf_get_f32(L->g, key, false, &factor, L->err))) return st;
    bool plain = !scaling.ptr || (scaling.len == 4 && !memcmp(scaling.ptr, "none", 4));
    if (!plain && !(factor == 1.0f || factor == 0.0f))
        return finch_err_set(L->err, FINCH_E_UNSUPPORTED,
                             "%s: rope scaling '%.*s' with factor %g is not implemented", L->path,
                             (int)scaling.len, scaling.ptr, factor);
    return FINCH_OK;
}

/* A rotate-half (neox) file: q and k rows (and their biases and norm weights, per head)
 * go to finch's interleaved order (model.h), the weights into owned memory; owned is the
 * next free float of m->owned_f32. */
static finch_status permute_qk(loader *L, finch_model *m, float *owned) {
    const int D = m->cfg.head_dim;
    size_t bytes = 0;
    for (int l = 0; l < m->cfg.n_layer; l++)
        bytes += m->layers[l].wq.w.row_bytes * (size_t)m->layers[l].wq.w.rows +
                 m->layers[l].wk.w.row_bytes * (size_t)m->layers[l].wk.w.rows;
    uint8_t *dst = m->owned_rows = finch_aalloc(bytes ? bytes : 1, "Q/K weights", L->err);
    if (!dst) return FINCH_E_NOMEM;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        finch_layer *ly = &m->layers[l];
        finch_linear *qk[2] = {&ly->wq, &ly->wk};
        const float **norms[2] = {&ly->q_norm, &ly->k_norm};
        for (int i = 0; i < 2; i++) {
            finch_weight *w = &qk[i]->w;
            const uint8_t *src = w->data;
            for (int64_t r = 0; r < w->rows; r++)
                memcpy(dst + (size_t)r * w->row_bytes,
                       src + (size_t)finch_qk_hf_row(r, D) * w->row_bytes, w->row_bytes);
            w->data = dst;
            dst += (size_t)w->rows * w->row_bytes;
            const float *vecs[2] = {qk[i]->bias, *norms[i]};
            int64_t lens[2] = {w->rows, D};
            for (int v = 0; v < 2; v++) {
                if (!vecs[v]) continue;
                for (int64_t r = 0; r < lens[v]; r++) owned[r] = vecs[v][finch_qk_hf_row(r, D)];
                if (v == 0)
                    qk[i]->bias = owned;
                else
                    *norms[i] = owned;
                owned += lens[v];
            }
        }
    }
    return FINCH_OK;
}

/* Splits the fused projection qkv (3 n rows) into q, k, v: views of its row blocks, and
 * of its bias when there is one. */
static void split_qkv(finch_layer *ly, const finch_weight *qkv, const float *bias, int64_t n) {
    finch_linear *lins[3] = {&ly->wq, &ly->wk, &ly->wv};
    for (int i = 0; i < 3; i++) {
        lins[i]->w = *qkv;
        lins[i]->w.rows = n;
        lins[i]->w.data = (const uint8_t *)qkv->data + (size_t)(i * n) * qkv->row_bytes;
        lins[i]->bias = bias ? bias + i * n : NULL;
    }
}

/* A GPT-2 block (llama.cpp's gpt2 tensors): LayerNorms with weight and bias, the fused
 * attn_qkv split into q, k, v, attn_output, ffn_up, ffn_down, every linear with its bias. */
static finch_status bind_gpt2_block(loader *L, finch_model *m, int l, float **owned) {
    const finch_model_config *c = &m->cfg;
    const int64_t C = c->n_embd, F = c->n_ff;
    finch_layer *ly = &m->layers[l];
    char n[FINCH_GGUF_MAX_NAME + 1];
    finch_weight qkv;
    const float *qkv_b = NULL;
    finch_status st;
#define NAME(s) (snprintf(n, sizeof n, "blk.%d.%s", l, s), n)
    if ((st = bind_vector(L, NAME("attn_norm.weight"), C, owned, &ly->attn_norm)) ||
        (st = bind_vector(L, NAME("attn_norm.bias"), C, owned, &ly->attn_norm_b)) ||
        (st = bind_vector(L, NAME("ffn_norm.weight"), C, owned, &ly->ffn_norm)) ||
        (st = bind_vector(L, NAME("ffn_norm.bias"), C, owned, &ly->ffn_norm_b)) ||
        (st = bind_weight(L, NAME("attn_qkv.weight"), 3 * C, C, true, &qkv, NULL)) ||
        (st = bind_weight(L, NAME("attn_output.weight"), C, C, true, &ly->wo.w, NULL)) ||
        (st = bind_weight(L, NAME("ffn_up.weight"), F, C, true, &ly->w_up.w, NULL)) ||
        (st = bind_weight(L, NAME("ffn_down.weight"), C, F, true, &ly->w_down.w, NULL)))
        return st;
    struct {
        const char *stem;
        int64_t n;
        const float **b;
    } biases[] = {{"attn_qkv.bias", 3 * C, &qkv_b},
                  {"attn_output.bias", C, &ly->wo.bias},
                  {"ffn_up.bias", F, &ly->w_up.bias},
                  {"ffn_down.bias", C, &ly->w_down.bias}};
    for (size_t i = 0; i < sizeof biases / sizeof biases[0]; i++) {
        if ((st = bind_bias(L, NAME(biases[i].stem), biases[i].n, biases[i].b))) return st;
        if (!*biases[i].b)
            return finch_err_set(L->err, FINCH_E_FORMAT, "%s: missing tensor '%s'", L->path, n);
    }
#undef NAME
    split_qkv(ly, &qkv, qkv_b, C);
    return FINCH_OK;
}

static finch_status bind_tensors(loader *L, finch_model *m) {
    finch_model_config *c = &m->cfg;
    const finch_gguf_tensor *emb = finch_gguf_find_tensor(L->g, "token_embd.weight");
    if (!emb)
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: missing tensor 'token_embd.weight'",
                             L->path);
    if (emb->ne[1] < 1 || emb->ne[1] > MAX_VOCAB)
        return finch_err_set(L->err, FINCH_E_FORMAT, "%s: token_embd.weight has %lld rows", L->path,
                             (long long)emb->ne[1]);
    c->n_vocab = (int)emb->ne[1];
    int vocab_key = c->n_vocab;
    finch_status st = get_dim(L, c->arch, "vocab_size", false, 1, MAX_VOCAB, &vocab_key);
    if (st) return st;
    if (vocab_key != c->n_vocab)
        return finch_err_set(L->err, FINCH_E_FORMAT,
                             "%s: %s.vocab_size is %d but token_embd.weight has %d rows", L->path,
                             c->arch, vocab_key, c->n_vocab);
    const int64_t C = c->n_embd, F = c->n_ff, V = c->n_vocab;
    const int64_t HD = (int64_t)c->n_head * c->head_dim, KD = (int64_t)c->n_head_kv * c->head_dim;
    if ((st = bind_weight(L, "token_embd.weight", V, C, true, &m->tok_embd, NULL))) return st;
    float *owned = m->owned_f32;
    if ((st = bind_vector(L, "output_norm.weight", C, &owned, &m->output_norm))) return st;
    if (L->arch->layer_norm &&
        (st = bind_vector(L, "output_norm.bias", C, &owned, &m->output_norm_b)))
        return st;
    if (L->arch->learned_pos &&
        (st = bind_weight(L, "position_embd.weight", c->n_ctx_train, C, true, &m->pos_embd, NULL)))
        return st;
    bool has_out;
    if ((st = bind_weight(L, "output.weight", V, C, false, &m->output.w, &has_out))) return st;
    c->tied_output = !has_out;
    if (!has_out) m->output.w = m->tok_embd;

    m->layers = finch_calloc((size_t)c->n_layer, sizeof *m->layers, "layers", L->err);
    if (!m->layers) return FINCH_E_NOMEM;
    for (int l = 0; l < c->n_layer; l++) {
        finch_layer *ly = &m->layers[l];
        char n[FINCH_GGUF_MAX_NAME + 1];
        ly->sliding = L->arch->swa_pattern && l % L->arch->swa_pattern < L->arch->swa_pattern - 1;
#define NAME(s) (snprintf(n, sizeof n, "blk.%d.%s", l, s), n)
        if (L->arch->fused_qkv) {
            if ((st = bind_gpt2_block(L, m, l, &owned))) return st;
            continue;
        }
        if ((st = bind_vector(L, NAME("attn_norm.weight"), C, &owned, &ly->attn_norm)) ||
            (st = bind_vector(L, NAME("ffn_norm.weight"), C, &owned, &ly->ffn_norm)) ||
            (st = bind_weight(L, NAME("attn_q.weight"), HD, C, true, &ly->wq.w, NULL)) ||
            (st = bind_weight(L, NAME("attn_k.weight"), KD, C, true, &ly->wk.w, NULL)) ||
            (st = bind_weight(L, NAME("attn_v.weight"), KD, C, true, &ly->wv.w, NULL)) ||
            (st = bind_weight(L, NAME("attn_output.weight"), C, HD, true, &ly->wo.w, NULL)) ||
            (st = bind_weight(L, NAME("ffn_gate.weight"), F, C, true, &ly->w_gate.w, NULL)) ||
            (st = bind_weight(L, NAME("ffn_up.weight"), F, C, true, &ly->w_up.w, NULL)) ||
            (st = bind_weight(L, NAME("ffn_down.weight"), C, F, true, &ly->w_down.w, NULL)))
            return st;
        if (L->arch->qk_norm &&
            ((st = bind_vector(L, NAME("attn_q_norm.weight"), c->head_dim, &owned, &ly->q_norm)) ||
             (st = bind_vector(L, NAME("attn_k_norm.weight"), c->head_dim, &owned, &ly->k_norm))))
            return st;
        if (L->arch->post_norms &&
            ((st = bind_vector(L, NAME("post_attention_norm.weight"), C, &owned,
                               &ly->post_attn_norm)) ||
             (st = bind_vector(L, NAME("post_ffw_norm.weight"), C, &owned, &ly->post_ffn_norm))))
            return st;
        for (int t = 0; t < FINCH_LAYER_LINEARS && !st; t++) {
            finch_linear *lin = finch_layer_linear(ly, t);
            char b[FINCH_GGUF_MAX_NAME + 1];
            snprintf(b, sizeof b, "blk.%d.%s.bias", l, finch_linear_gguf_stem(t));
            st = bind_bias(L, b, lin->w.rows, &lin->bias);
        }
        if (st) return st;
#undef NAME
    }
    return L->arch->neox_rows ? permute_qk(L, m, owned) : FINCH_OK;
}

finch_status finch_model_load(const char *path, finch_model **out, finch_err *err) {
    finch_model *m = finch_calloc(1, sizeof *m, "model", err);
    if (!m) return FINCH_E_NOMEM;
    finch_status st = FINCH_E_USAGE;
    if (!(m->be = finch_cpu_backend(err))) goto fail;
    st = FINCH_E_NOMEM;
    m->path = finch_alloc(strlen(path) + 1, "model path", err);
    if (!m->path) goto fail;
    memcpy(m->path, path, strlen(path) + 1);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if ((st = finch_model_load_hf(m, err))) goto fail;
        *out = m;
        return FINCH_OK;
    }
    st = finch_gguf_open(path, &m->gguf, err);
    if (st) goto fail;
    loader L = {.g = m->gguf, .path = path, .err = err};
    if ((st = read_config(&L, &m->cfg))) goto fail;
    m->arch = L.arch;
    /* room for every norm vector in case all are stored in a 16-bit type, and for the q/k
     * biases and norms a rotate-half file has permuted */
    const finch_model_config *mc = &m->cfg;
    size_t n_owned =
        (size_t)(4 * mc->n_layer + 2) * (size_t)mc->n_embd +
        (size_t)mc->n_layer *
            (4 * (size_t)mc->head_dim + 2 * (size_t)(mc->n_head + mc->n_head_kv) * mc->head_dim);
    m->owned_f32 = finch_calloc(n_owned, sizeof(float), "norm weights", err);
    if (!m->owned_f32) {
        st = FINCH_E_NOMEM;
        goto fail;
    }
    if ((st = bind_tensors(&L, m))) goto fail;
    if ((st = finch_tokenizer_from_gguf(m->gguf, &m->tok, err))) goto fail;
    if (m->tok && finch_tokenizer_n_vocab(m->tok) > m->cfg.n_vocab) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: tokenizer has %d tokens but the model only %d embeddings", path,
                           finch_tokenizer_n_vocab(m->tok), m->cfg.n_vocab);
        goto fail;
    }
    for (int64_t i = 0; i < finch_gguf_n_tensors(m->gguf); i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(m->gguf, i);
        m->cfg.n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        m->cfg.weight_bytes += (int64_t)t->nbytes;
    }
    *out = m;
    return FINCH_OK;
fail:
    finch_model_free(m);
    return st;
}

void finch_model_free(finch_model *m) {
    if (!m) return;
    finch_model_unplace(m);
    finch_tokenizer_free(m->tok);
    free(m->layers);
    free(m->owned_f32);
    finch_afree(m->owned_rows);
    finch_afree(m->owned_nf4);
    finch_gguf_close(m->gguf);
    for (int i = 0; i < m->n_shards; i++) finch_st_close(m->shards[i]);
    free(m->shards);
    free(m->hf);
    free(m->path);
    free(m);
}

void finch_model_config_get(const finch_model *m, finch_model_config *cfg) {
    *cfg = m->cfg;
}

const finch_tokenizer *finch_model_tokenizer(const finch_model *m) {
    return m->tok;
}

finch_linear *finch_layer_linear(finch_layer *ly, int i) {
    finch_linear *lins[FINCH_LAYER_LINEARS] = {&ly->wq,     &ly->wk,   &ly->wv,    &ly->wo,
                                               &ly->w_gate, &ly->w_up, &ly->w_down};
    FINCH_ASSERT(i >= 0 && i < FINCH_LAYER_LINEARS);
    return lins[i];
}
