/*
 * weights.c: the model's own tensors as trainable parameters (weights.h).
 */
#include "peft/weights.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "io/io.h" /* GGUF and safetensors writers */

typedef finch_wkind wkind;

typedef struct {
    wkind kind;
    int layer;
    finch_target target;
    int64_t rows, cols;   /* cols 1 for vectors */
    float *data, *grad;   /* in the registry */
    finch_weight saved_w; /* what the model held before attaching */
    const float *saved_v;
} wsite;

typedef struct {
    int n_sites;
    wsite *sites;
} wstate;

/* ---- names ------------------------------------------------------------------------------ */

/* The names of a site's tensor: model.h's table (finch_tensor_name_table). */

/* The Hugging Face key of a site. */
static void hf_name(char *buf, size_t n, const wsite *s, const finch_model *m) {
    if (s->kind == FINCH_W_LINEAR || s->kind == FINCH_W_BIAS) {
        char key[160];
        finch_target_key(key, sizeof key, m, s->layer, s->target, true);
        snprintf(buf, n, "%s.%s", key, s->kind == FINCH_W_BIAS ? "bias" : "weight");
        return;
    }
    const char *f = m->arch->layer_norm ? finch_tensor_name_table[s->kind].gpt2
                    : m->arch->post_norms && finch_tensor_name_table[s->kind].hf_post
                        ? finch_tensor_name_table[s->kind].hf_post
                        : finch_tensor_name_table[s->kind].hf;
    snprintf(buf, n, f, s->layer);
}

/* The GGUF name of a site; a fused module's (GPT-2's attn_qkv) is its q site's. */
static void gguf_name(char *buf, size_t n, const wsite *s, const finch_model *m) {
    if (s->kind == FINCH_W_LINEAR || s->kind == FINCH_W_BIAS) {
        const bool fused = m->arch->fused_qkv && s->target <= FINCH_TARGET_V;
        snprintf(buf, n, "blk.%d.%s%s.%s", s->layer,
                 fused ? "attn_qkv" : finch_target_gguf_name(s->target),
                 fused && s->target != FINCH_TARGET_Q ? "(part)" : "",
                 s->kind == FINCH_W_BIAS ? "bias" : "weight");
        return;
    }
    snprintf(buf, n, finch_tensor_name_table[s->kind].gguf, s->layer);
}

/* ---- create, init ----------------------------------------------------------------------- */

static finch_status add_site(finch_peft *p, wstate *st, const finch_model *m, wkind kind, int layer,
                             finch_target t, int64_t rows, int64_t cols, finch_err *err) {
    wsite *s = &st->sites[st->n_sites++];
    *s = (wsite){.kind = kind, .layer = layer, .target = t, .rows = rows, .cols = cols};
    char name[200];
    hf_name(name, sizeof name, s, m);
    int heads = kind == FINCH_W_LINEAR || kind == FINCH_W_BIAS ? finch_target_heads(m, t) : 0;
    /* not norms, biases */
    bool decay = kind == FINCH_W_LINEAR || kind == FINCH_W_EMBD || kind == FINCH_W_HEAD ||
                 kind == FINCH_W_POS;
    int64_t module_rows = rows;
    const int part =
        kind == FINCH_W_LINEAR || kind == FINCH_W_BIAS ? finch_target_part(m, t, &module_rows) : 0;
    if (part) /* k, v of a fused module: row blocks of q's tensor */
        return finch_params_add_view(&p->params, name, part * rows * cols, &s->data, &s->grad, err);
    int64_t shape[2] = {module_rows, cols};
    finch_status e = finch_params_add(&p->params, name, cols > 1 || kind == FINCH_W_LINEAR ? 2 : 1,
                                      shape, heads, decay, &s->data, &s->grad, err);
    /* a block's tensors have their whole gradient once that block's backward is done */
    if (!e && layer >= 0) finch_params_set_block(&p->params, name, layer);
    return e;
}

finch_status finch_weights_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const finch_weights_config *c = p->cfg;
    const finch_model_config *mc = &m->cfg;
    wstate *st = finch_calloc(1, sizeof *st, "trainable weights", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    st->sites = finch_calloc((size_t)mc->n_layer * 20 + 8, sizeof *st->sites, "weight sites", err);
    if (!st->sites) return FINCH_E_NOMEM;
    finch_status e = FINCH_OK;
    /* a tied head is the embedding table: training either trains that one matrix */
    if (c->embeddings || (c->head && mc->tied_output))
        e = add_site(p, st, m, FINCH_W_EMBD, -1, 0, mc->n_vocab, mc->n_embd, err);
    if (!e && c->embeddings && m->arch->learned_pos)
        e = add_site(p, st, m, FINCH_W_POS, -1, 0, m->pos_embd.rows, mc->n_embd, err);
    for (int l = 0; l < mc->n_layer && !e; l++) {
        if (!finch_peft_layer(p, l)) continue;
        const finch_arch *a = m->arch;
        e = add_site(p, st, m, FINCH_W_NORM_ATTN, l, 0, mc->n_embd, 1, err);
        if (!e && a->layer_norm)
            e = add_site(p, st, m, FINCH_W_NORM_ATTN_B, l, 0, mc->n_embd, 1, err);
        if (!e && a->qk_norm) e = add_site(p, st, m, FINCH_W_NORM_Q, l, 0, mc->head_dim, 1, err);
        if (!e && a->qk_norm) e = add_site(p, st, m, FINCH_W_NORM_K, l, 0, mc->head_dim, 1, err);
        for (int t = 0; t < FINCH_TARGET_COUNT && !e; t++) {
            const finch_linear *lin = finch_model_target((finch_model *)m, l, (finch_target)t);
            if (t == FINCH_TARGET_GATE && a->post_norms)
                e = add_site(p, st, m, FINCH_W_NORM_POST_ATTN, l, 0, mc->n_embd, 1, err);
            if (!e && t == FINCH_TARGET_GATE)
                e = add_site(p, st, m, FINCH_W_NORM_FFN, l, 0, mc->n_embd, 1, err);
            if (!e && t == FINCH_TARGET_GATE && a->layer_norm)
                e = add_site(p, st, m, FINCH_W_NORM_FFN_B, l, 0, mc->n_embd, 1, err);
            if (!lin->w.data) continue; /* a projection the family lacks (GPT-2's gate) */
            if (!e)
                e = add_site(p, st, m, FINCH_W_LINEAR, l, (finch_target)t, lin->w.rows, lin->w.cols,
                             err);
            if (!e && lin->bias)
                e = add_site(p, st, m, FINCH_W_BIAS, l, (finch_target)t, lin->w.rows, 1, err);
        }
        if (!e && a->post_norms)
            e = add_site(p, st, m, FINCH_W_NORM_POST_FFN, l, 0, mc->n_embd, 1, err);
    }
    if (!e && c->head) e = add_site(p, st, m, FINCH_W_NORM_OUT, -1, 0, mc->n_embd, 1, err);
    if (!e && c->head && m->arch->layer_norm)
        e = add_site(p, st, m, FINCH_W_NORM_OUT_B, -1, 0, mc->n_embd, 1, err);
    if (!e && c->head && !mc->tied_output)
        e = add_site(p, st, m, FINCH_W_HEAD, -1, 0, mc->n_vocab, mc->n_embd, err);
    return e;
}

/* The model's current tensor of a site: a weight view or a vector. */
static finch_weight *site_weight(finch_model *m, const wsite *s) {
    switch (s->kind) {
    case FINCH_W_EMBD:
        return &m->tok_embd;
    case FINCH_W_POS:
        return &m->pos_embd;
    case FINCH_W_HEAD:
        return &m->output.w;
    case FINCH_W_LINEAR:
        return &finch_model_target(m, s->layer, s->target)->w;
    default:
        return NULL;
    }
}

static const float **site_vector(finch_model *m, const wsite *s) {
    finch_layer *ly = s->layer >= 0 ? &m->layers[s->layer] : NULL;
    switch (s->kind) {
    case FINCH_W_NORM_ATTN:
        return &ly->attn_norm;
    case FINCH_W_NORM_Q:
        return &ly->q_norm;
    case FINCH_W_NORM_K:
        return &ly->k_norm;
    case FINCH_W_NORM_POST_ATTN:
        return &ly->post_attn_norm;
    case FINCH_W_NORM_FFN:
        return &ly->ffn_norm;
    case FINCH_W_NORM_POST_FFN:
        return &ly->post_ffn_norm;
    case FINCH_W_NORM_OUT:
        return &m->output_norm;
    case FINCH_W_NORM_ATTN_B:
        return &ly->attn_norm_b;
    case FINCH_W_NORM_FFN_B:
        return &ly->ffn_norm_b;
    case FINCH_W_NORM_OUT_B:
        return &m->output_norm_b;
    case FINCH_W_BIAS:
        return &finch_model_target(m, s->layer, s->target)->bias;
    default:
        return NULL;
    }
}

/* Where the model looks for a site's gradient. */
static float **site_grad(finch_model *m, const wsite *s) {
    finch_layer *ly = s->layer >= 0 ? &m->layers[s->layer] : NULL;
    switch (s->kind) {
    case FINCH_W_EMBD:
        return &m->d_tok_embd;
    case FINCH_W_POS:
        return &m->d_pos_embd;
    case FINCH_W_NORM_ATTN_B:
        return &ly->d_attn_norm_b;
    case FINCH_W_NORM_FFN_B:
        return &ly->d_ffn_norm_b;
    case FINCH_W_NORM_OUT_B:
        return &m->d_output_norm_b;
    case FINCH_W_HEAD:
        return &m->output.dw;
    case FINCH_W_LINEAR:
        return &finch_model_target(m, s->layer, s->target)->dw;
    case FINCH_W_BIAS:
        return &finch_model_target(m, s->layer, s->target)->dbias;
    case FINCH_W_NORM_ATTN:
        return &ly->d_attn_norm;
    case FINCH_W_NORM_Q:
        return &ly->d_q_norm;
    case FINCH_W_NORM_K:
        return &ly->d_k_norm;
    case FINCH_W_NORM_POST_ATTN:
        return &ly->d_post_attn_norm;
    case FINCH_W_NORM_FFN:
        return &ly->d_ffn_norm;
    case FINCH_W_NORM_POST_FFN:
        return &ly->d_post_ffn_norm;
    case FINCH_W_NORM_OUT:
        return &m->d_output_norm;
    }
    return NULL;
}

/* dst (rows * cols) = the model's current tensor of a site in f32, dequantized. */
static void site_to_f32(finch_model *m, const wsite *s, float *dst) {
    const finch_weight *w = site_weight(m, s);
    /* s->rows: all of a fused module's rows when asked (GPT-2's q, k, v views lie one after
     * another) */
    finch_weight whole = w ? *w : (finch_weight){0};
    whole.rows = s->rows;
    if (w)
        finch_weight_rows_f32(&whole, 0, s->rows, dst);
    else
        memcpy(dst, *site_vector(m, s), (size_t)s->rows * sizeof(float));
}

void finch_weights_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    (void)rng;
    wstate *st = p->state;
    finch_model *mm = (finch_model *)m;
    finch_dtype quantized = FINCH_DTYPE_COUNT;
    for (int i = 0; i < st->n_sites; i++) {
        const wsite *s = &st->sites[i];
        const finch_weight *w = site_weight(mm, s);
        if (w && finch_dtype_info[w->type].block_elems > 1) quantized = w->type;
        site_to_f32(mm, s, s->data);
    }
    if (quantized != FINCH_DTYPE_COUNT)
        finch_log(FINCH_LOG_INFO,
                  "%s: the base stores weights as %s: the trained ones are dequantized "
                  "to f32 master copies to start",
                  p->method->name, finch_dtype_info[quantized].name);
}

void finch_weights_free_state(finch_peft *p) {
    wstate *st = p->state;
    if (!st) return;
    free(st->sites);
    free(st);
}

/* ---- attach ----------------------------------------------------------------------------- */

finch_status finch_weights_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                  finch_err *err) {
    (void)max_tokens;
    if (weight != 1.0f)
        return finch_err_set(err, FINCH_E_USAGE,
                             "%s trains the model itself: it attaches with weight 1 only",
                             p->method->name);
    wstate *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        wsite *s = &st->sites[i];
        finch_weight *w = site_weight(m, s);
        if (w) {
            s->saved_w = *w;
            *w = (finch_weight){FINCH_DTYPE_F32, s->rows, s->cols, (size_t)s->cols * sizeof(float),
                                s->data};
        } else {
            s->saved_v = *site_vector(m, s);
            *site_vector(m, s) = s->data;
        }
        *site_grad(m, s) = s->grad;
        /* a tied head is the embedding table, trained through both */
        if (s->kind == FINCH_W_EMBD && m->cfg.tied_output) {
            m->output.w = m->tok_embd;
            m->output.dw = s->grad;
        }
    }
    /* every weight matrix copied out (full fine-tuning): the mapped file's pages are not
     * read again until detach, so they need not stay in memory */
    int64_t n_mat = 0;
    for (int i = 0; i < st->n_sites; i++)
        n_mat += st->sites[i].kind == FINCH_W_LINEAR || st->sites[i].kind == FINCH_W_EMBD ||
                 st->sites[i].kind == FINCH_W_HEAD;
    if (n_mat == (int64_t)m->cfg.n_layer * FINCH_TARGET_COUNT + 1 + !m->cfg.tied_output)
        finch_gguf_evict(m->gguf);
    return FINCH_OK;
}

void finch_weights_detach(finch_peft *p, finch_model *m) {
    wstate *st = p->state;
    for (int i = st->n_sites - 1; i >= 0; i--) {
        wsite *s = &st->sites[i];
        finch_weight *w = site_weight(m, s);
        if (w)
            *w = s->saved_w;
        else
            *site_vector(m, s) = s->saved_v;
        *site_grad(m, s) = NULL;
        if (s->kind == FINCH_W_EMBD && m->cfg.tied_output) {
            m->output.w = m->tok_embd;
            m->output.dw = NULL;
        }
    }
}

/* ---- save ------------------------------------------------------------------------------- */

/* The heads of a site whose rows are q/k rows (finch's order in memory, the Hugging Face
 * order in files: finch_rows_permute), 0 for the others. A per-head q/k norm is one head's
 * D rows. */
static int site_heads(const finch_model *m, const wsite *s) {
    if (s->kind == FINCH_W_LINEAR || s->kind == FINCH_W_BIAS)
        return finch_target_heads(m, s->target);
    return s->kind == FINCH_W_NORM_Q || s->kind == FINCH_W_NORM_K ? 1 : 0;
}

/* Whether a site is an RMSNorm weight (Gemma's files differ in what they hold: arch
 * norm_one). */
static bool site_is_norm(const wsite *s) {
    switch (s->kind) {
    case FINCH_W_NORM_ATTN:
    case FINCH_W_NORM_Q:
    case FINCH_W_NORM_K:
    case FINCH_W_NORM_POST_ATTN:
    case FINCH_W_NORM_FFN:
    case FINCH_W_NORM_POST_FFN:
    case FINCH_W_NORM_OUT:
        return true;
    default:
        return false;
    }
}

static const wsite *site_by_gguf_name(const wstate *st, const finch_model *m, const char *name) {
    for (int i = 0; i < st->n_sites; i++) {
        char g[96];
        gguf_name(g, sizeof g, &st->sites[i], m);
        if (!strcmp(g, name)) return &st->sites[i];
    }
    return NULL;
}

/* The writer's callback for save_gguf_model: a tensor's rows in the type chosen. */
typedef struct {
    const finch_gguf_src *s;
    finch_dtype to;
} fill_job;

static finch_status fill_rows(void *buf, size_t nbytes, void *user, finch_err *err) {
    (void)nbytes;
    const fill_job *j = user;
    float *row = finch_mem_alloc((size_t)j->s->ne[0] * sizeof *row + 1);
    if (!row) return finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", j->s->name);
    finch_gguf_src_convert(j->s, 0, j->s->ne[1] * j->s->ne[2] * j->s->ne[3], j->to, buf, row);
    free(row);
    return FINCH_OK;
}

/* A Hugging Face base has no GGUF to copy: the model as llama.cpp's converter would write
 * it (model/gguf_out.c, as `finch quantize FOLDER` writes it), the trained matrices (the
 * attached copies are the model's tensors) in the save type where their rows are whole
 * blocks of it, every other tensor in its stored type. A base whose tokenizer has no GGUF
 * form (or that has none) gets no model.gguf, with a warning: the folder is the result. */
static finch_status save_gguf_model(const finch_peft *p, const finch_model *m, finch_dtype out,
                                    uint32_t ftype, const char *path, finch_err *err) {
    const wstate *st = p->state;
    finch_gguf_src *src = NULL;
    int64_t n = 0;
    finch_gguf_writer *w = NULL;
    fill_job *jobs = NULL;
    finch_status e = finch_model_gguf_tensors(m, &src, &n, err);
    if (e) return e;
    if (!(w = finch_gguf_writer_new(err))) {
        e = FINCH_E_NOMEM;
        goto done;
    }
    if (!(jobs = finch_mem_calloc((size_t)n + 1, sizeof *jobs))) {
        e = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", path);
        goto done;
    }
    if ((e = finch_model_gguf_kvs(m, ftype, w, err))) {
        if (e == FINCH_E_UNSUPPORTED) { /* no tokenizer llama.cpp could run: the folder only */
            finch_log(FINCH_LOG_WARN, "%s not written: %s", path, err->msg);
            e = FINCH_OK;
        }
        goto done;
    }
    for (int64_t i = 0; i < n && !e; i++) {
        size_t rb;
        jobs[i] = (fill_job){&src[i], src[i].type};
        if (src[i].n_dims == 2 && site_by_gguf_name(st, m, src[i].name) &&
            finch_dtype_row_bytes(out, src[i].ne[0], &rb))
            jobs[i].to = out;
        e = finch_gguf_add_tensor_fill(w, src[i].name, jobs[i].to, src[i].n_dims, src[i].ne,
                                       fill_rows, &jobs[i], err);
    }
    if (!e) e = finch_gguf_writer_save(w, path, err);
done:
    free(jobs);
    finch_gguf_writer_free(w);
    finch_gguf_src_list_free(src, n);
    return e;
}

/* The base GGUF with the trained tensors replaced: 2-D ones quantized to the save type
 * where their rows are whole blocks of it, vectors in f32. */
static finch_status save_gguf(const finch_peft *p, const finch_model *m, const char *path,
                              finch_err *err) {
    const finch_weights_config *c = p->cfg;
    const wstate *st = p->state;
    static const finch_dtype types[] = {FINCH_DTYPE_F32,  FINCH_DTYPE_F16,  FINCH_DTYPE_BF16,
                                        FINCH_DTYPE_Q8_0, FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q4_1};
    static const uint32_t ftypes[] = {0, 1, 32, 7, 2, 3}; /* general.file_type, llama ftype */
    const finch_dtype out = types[c->save_type];
    const finch_gguf *g = m->gguf;
    if (!g) return save_gguf_model(p, m, out, ftypes[c->save_type], path, err);
    finch_gguf_writer *w = finch_gguf_writer_new(err);
    if (!w) return FINCH_E_NOMEM;
    finch_status e = FINCH_OK;
    int64_t n_t = finch_gguf_n_tensors(g);
    uint8_t **bufs = finch_mem_calloc((size_t)n_t + 1, sizeof *bufs);
    float *tmp = NULL;
    if (!bufs) {
        e = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        goto done;
    }
    e = finch_gguf_set_kvs_from(w, g, "general.file_type", err);
    if (!e) e = finch_gguf_set_u32(w, "general.file_type", ftypes[c->save_type], err);
    const bool hf_rows = m->arch->neox_rows; /* the family keeps HF q/k rows in GGUF */
    for (int64_t i = 0; i < n_t && !e; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        const wsite *found = site_by_gguf_name(st, m, t->name);
        if (!found) {
            e = finch_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
            continue;
        }
        /* the file's tensor: a fused module's q site holds all of its rows */
        wsite whole = *found;
        whole.rows = t->n_dims == 2 ? t->ne[1] : t->ne[0];
        FINCH_ASSERT(whole.rows * whole.cols == t->ne[0] * t->ne[1]);
        const wsite *s = &whole;
        const float *src = s->data;
        int heads = site_heads(m, s);
        if (hf_rows && heads) {
            free(tmp);
            if (!(tmp = finch_mem_alloc((size_t)(s->rows * s->cols) * sizeof *tmp))) {
                e = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", t->name);
                break;
            }
            finch_rows_permute(tmp, s->data, s->rows, s->cols, heads, true);
            src = tmp;
        }
        size_t rb;
        finch_dtype ty =
            s->cols > 1 && finch_dtype_row_bytes(out, s->cols, &rb) ? out : FINCH_DTYPE_F32;
        if (ty == FINCH_DTYPE_F32 && src == s->data) { /* written as it is: no copy */
            e = finch_gguf_add_tensor(w, t->name, ty, t->n_dims, t->ne, s->data, err);
            continue;
        }
        if (ty == FINCH_DTYPE_F32) rb = (size_t)s->cols * sizeof(float);
        if (!(bufs[i] = finch_mem_alloc(rb * (size_t)s->rows))) {
            e = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", t->name);
            break;
        }
        for (int64_t r = 0; r < s->rows; r++)
            finch_dtype_info[ty].quant(bufs[i] + (size_t)r * rb, src + r * s->cols, s->cols);
        e = finch_gguf_add_tensor(w, t->name, ty, t->n_dims, t->ne, bufs[i], err);
    }
    if (!e && finch_dtype_info[out].block_elems > 1 &&
        !finch_gguf_find_kv(g, "general.quantization_version"))
        e = finch_gguf_set_u32(w, "general.quantization_version", 2, err);
    if (!e) e = finch_gguf_writer_save(w, path, err);
done:
    for (int64_t i = 0; bufs && i < n_t; i++) free(bufs[i]);
    free(bufs);
    free(tmp);
    finch_gguf_writer_free(w);
    return e;
}

/* config.json for transformers' GPT2LMHeadModel. */
static json_t *gpt2_config(const finch_model *m) {
    const finch_model_config *c = &m->cfg;
    json_t *j = json_object(), *arch = json_array();
    json_array_append_new(arch, json_string("GPT2LMHeadModel"));
    json_object_set_new(j, "architectures", arch);
    json_object_set_new(j, "model_type", json_string("gpt2"));
    json_object_set_new(j, "n_embd", json_integer(c->n_embd));
    json_object_set_new(j, "n_inner", json_integer(c->n_ff));
    json_object_set_new(j, "n_layer", json_integer(c->n_layer));
    json_object_set_new(j, "n_head", json_integer(c->n_head));
    json_object_set_new(j, "n_positions", json_integer(c->n_ctx_train));
    json_object_set_new(j, "n_ctx", json_integer(c->n_ctx_train));
    json_object_set_new(j, "vocab_size", json_integer(c->n_vocab));
    json_object_set_new(j, "layer_norm_epsilon", json_real(c->rms_eps));
    json_object_set_new(j, "activation_function", json_string("gelu_new"));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tied_output));
    json_object_set_new(j, "torch_dtype", json_string("float32"));
    return j;
}

/* config.json for transformers' LlamaForCausalLM (Qwen2ForCausalLM for a qwen2 base,
 * GPT2LMHeadModel for gpt2, Gemma3ForCausalLM, model_type gemma3_text, for a gemma3 one:
 * transformers 4.50 or later, its fields as Google's gemma-3-270m config.json names them). */
static finch_status save_hf_config(const finch_model *m, const char *path, finch_err *err) {
    const finch_model_config *c = &m->cfg;
    const finch_arch *a = m->arch;
    bool qwen2 = !strcmp(c->arch, "qwen2"), gemma3 = !strcmp(c->arch, "gemma3");
    finch_json_begin(); /* the writing sees a failed allocation of the building */
    if (m->arch->fused_qkv) {
        json_t *g = gpt2_config(m);
        finch_status e = finch_json_write_file(g, path, err);
        json_decref(g);
        finch_json_end();
        return e;
    }
    json_t *j = json_object(), *arch = json_array();
    json_array_append_new(arch, json_string(qwen2    ? "Qwen2ForCausalLM"
                                            : gemma3 ? "Gemma3ForCausalLM"
                                                     : "LlamaForCausalLM"));
    json_object_set_new(j, "architectures", arch);
    json_object_set_new(j, "model_type",
                        json_string(qwen2    ? "qwen2"
                                    : gemma3 ? "gemma3_text"
                                             : "llama"));
    json_object_set_new(j, "hidden_size", json_integer(c->n_embd));
    json_object_set_new(j, "intermediate_size", json_integer(c->n_ff));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->n_layer));
    json_object_set_new(j, "num_attention_heads", json_integer(c->n_head));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->n_head_kv));
    json_object_set_new(j, "head_dim", json_integer(c->head_dim));
    json_object_set_new(j, "vocab_size", json_integer(c->n_vocab));
    json_object_set_new(j, "max_position_embeddings", json_integer(c->n_ctx_train));
    json_object_set_new(j, "rms_norm_eps", json_real(c->rms_eps));
    json_object_set_new(j, "rope_theta", json_real(c->rope_theta));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tied_output));
    if (gemma3) {
        /* GeGLU with tanh GELU; scores scaled by 1 / sqrt(head_dim) as finch and llama.cpp
         * do (query_pre_attn_scalar); blocks l with (l + 1) % pattern != 0 slide, with
         * their own RoPE base; no soft-capping */
        json_object_set_new(j, "hidden_activation", json_string("gelu_pytorch_tanh"));
        json_object_set_new(j, "query_pre_attn_scalar", json_integer(c->head_dim));
        json_object_set_new(j, "sliding_window", json_integer(c->sliding_window));
        json_object_set_new(j, "sliding_window_pattern", json_integer(a->swa_pattern));
        json_object_set_new(j, "rope_local_base_freq", json_real(a->swa_rope_base));
        json_t *types = json_array();
        for (int l = 0; l < c->n_layer; l++)
            json_array_append_new(types, json_string(finch_layer_window(m, l) ? "sliding_attention"
                                                                              : "full_attention"));
        json_object_set_new(j, "layer_types", types);
        json_object_set_new(j, "rope_scaling", json_null());
        json_object_set_new(j, "attn_logit_softcapping", json_null());
        json_object_set_new(j, "final_logit_softcapping", json_null());
        json_object_set_new(j, "attention_dropout", json_real(0.0));
    }
    json_object_set_new(j, "hidden_act", json_string(gemma3 ? "gelu_pytorch_tanh" : "silu"));
    json_object_set_new(j, "attention_bias", json_false());
    json_object_set_new(j, "mlp_bias", json_false());
    json_object_set_new(j, "torch_dtype", json_string("float32"));
    finch_status e = finch_json_write_file(j, path, err);
    json_decref(j);
    finch_json_end();
    return e;
}

/* model.safetensors: every tensor of the model under its Hugging Face key, f32, q/k rows
 * (and q/k norms) in Hugging Face order, norms as the file holds them (w for a family whose
 * norms multiply by 1 + w): the trained copies, the frozen ones dequantized. */
static finch_status save_hf_weights(const finch_peft *p, const finch_model *m, const char *path,
                                    finch_err *err) {
    const wstate *st = p->state;
    const finch_model_config *mc = &m->cfg;
    /* every tensor of the model as a site, trained or not */
    int cap = mc->n_layer * 24 + 4, n = 0; /* 6 norms, 7 linears and their biases a block */
    wsite *all = finch_mem_calloc((size_t)cap, sizeof *all);
    float **bufs = finch_mem_calloc((size_t)cap, sizeof *bufs);
    finch_st_writer *w = finch_st_writer_new(err);
    finch_status e =
        !all || !bufs || !w ? finch_err_set(err, FINCH_E_NOMEM, "out of memory") : FINCH_OK;
    if (!e) e = finch_st_writer_set_meta(w, "format", "pt", err);
    const bool gpt2 = m->arch->fused_qkv;
    if (!e && gpt2) {
        /* GPT-2: c_attn is the q site with all 3 C rows; every Conv1D is written [in, out] */
        const int64_t C = mc->n_embd, F = mc->n_ff;
        all[n++] = (wsite){.kind = FINCH_W_EMBD, .rows = mc->n_vocab, .cols = C};
        all[n++] = (wsite){.kind = FINCH_W_POS, .rows = m->pos_embd.rows, .cols = C};
        for (int l = 0; l < mc->n_layer; l++) {
            const struct {
                wkind k;
                finch_target t;
                int64_t rows, cols;
            } b[] = {{FINCH_W_NORM_ATTN, 0, C, 1},
                     {FINCH_W_NORM_ATTN_B, 0, C, 1},
                     {FINCH_W_LINEAR, FINCH_TARGET_Q, 3 * C, C},
                     {FINCH_W_BIAS, FINCH_TARGET_Q, 3 * C, 1},
                     {FINCH_W_LINEAR, FINCH_TARGET_O, C, C},
                     {FINCH_W_BIAS, FINCH_TARGET_O, C, 1},
                     {FINCH_W_NORM_FFN, 0, C, 1},
                     {FINCH_W_NORM_FFN_B, 0, C, 1},
                     {FINCH_W_LINEAR, FINCH_TARGET_UP, F, C},
                     {FINCH_W_BIAS, FINCH_TARGET_UP, F, 1},
                     {FINCH_W_LINEAR, FINCH_TARGET_DOWN, C, F},
                     {FINCH_W_BIAS, FINCH_TARGET_DOWN, C, 1}};
            for (size_t k = 0; k < sizeof b / sizeof b[0]; k++)
                all[n++] = (wsite){.kind = b[k].k,
                                   .layer = l,
                                   .target = b[k].t,
                                   .rows = b[k].rows,
                                   .cols = b[k].cols};
        }
        all[n++] = (wsite){.kind = FINCH_W_NORM_OUT, .rows = mc->n_embd, .cols = 1};
        all[n++] = (wsite){.kind = FINCH_W_NORM_OUT_B, .rows = mc->n_embd, .cols = 1};
        if (!mc->tied_output)
            all[n++] = (wsite){.kind = FINCH_W_HEAD, .rows = mc->n_vocab, .cols = mc->n_embd};
    } else if (!e) {
        all[n++] = (wsite){.kind = FINCH_W_EMBD, .rows = mc->n_vocab, .cols = mc->n_embd};
        const finch_arch *a = m->arch;
        for (int l = 0; l < mc->n_layer; l++) {
            all[n++] =
                (wsite){.kind = FINCH_W_NORM_ATTN, .layer = l, .rows = mc->n_embd, .cols = 1};
            all[n++] = (wsite){.kind = FINCH_W_NORM_FFN, .layer = l, .rows = mc->n_embd, .cols = 1};
            if (a->qk_norm) {
                all[n++] =
                    (wsite){.kind = FINCH_W_NORM_Q, .layer = l, .rows = mc->head_dim, .cols = 1};
                all[n++] =
                    (wsite){.kind = FINCH_W_NORM_K, .layer = l, .rows = mc->head_dim, .cols = 1};
            }
            if (a->post_norms) {
                all[n++] = (wsite){
                    .kind = FINCH_W_NORM_POST_ATTN, .layer = l, .rows = mc->n_embd, .cols = 1};
                all[n++] = (wsite){
                    .kind = FINCH_W_NORM_POST_FFN, .layer = l, .rows = mc->n_embd, .cols = 1};
            }
            for (int t = 0; t < FINCH_TARGET_COUNT; t++) {
                const finch_linear *lin = finch_model_target((finch_model *)m, l, (finch_target)t);
                all[n++] = (wsite){.kind = FINCH_W_LINEAR,
                                   .layer = l,
                                   .target = (finch_target)t,
                                   .rows = lin->w.rows,
                                   .cols = lin->w.cols};
                if (lin->bias)
                    all[n++] = (wsite){.kind = FINCH_W_BIAS,
                                       .layer = l,
                                       .target = (finch_target)t,
                                       .rows = lin->w.rows,
                                       .cols = 1};
            }
        }
        all[n++] = (wsite){.kind = FINCH_W_NORM_OUT, .rows = mc->n_embd, .cols = 1};
        if (!mc->tied_output)
            all[n++] = (wsite){.kind = FINCH_W_HEAD, .rows = mc->n_vocab, .cols = mc->n_embd};
    }
    for (int i = 0; i < n && !e; i++) {
        wsite *s = &all[i];
        char name[200], g[96];
        hf_name(name, sizeof name, s, m);
        gguf_name(g, sizeof g, s, m);
        const wsite *trained = site_by_gguf_name(st, m, g);
        size_t count = (size_t)(s->rows * s->cols);
        int heads = site_heads(m, s);
        const bool less_one = m->arch->norm_one && site_is_norm(s);
        /* a trained tensor in Hugging Face row order is written from the registry; the
         * others through a buffer: q/k rows permuted, frozen ones expanded to f32, Gemma's
         * norms less 1 */
        const float *src = trained ? trained->data : NULL;
        if (!trained || heads || less_one) {
            if (!(bufs[i] = finch_mem_alloc(count * sizeof(float) + 1))) {
                e = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", name);
                break;
            }
            if (trained && heads) {
                finch_rows_permute(bufs[i], trained->data, s->rows, s->cols, heads, true);
            } else if (trained) {
                memcpy(bufs[i], trained->data, count * sizeof(float));
            } else {
                /* the attached copies are the model's tensors now; frozen ones are as loaded */
                site_to_f32((finch_model *)m, s, bufs[i]);
                if (heads) {
                    float *hf = finch_mem_alloc(count * sizeof(float) + 1);
                    if (!hf) {
                        e = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", name);
                        break;
                    }
                    finch_rows_permute(hf, bufs[i], s->rows, s->cols, heads, true);
                    free(bufs[i]);
                    bufs[i] = hf;
                }
            }
            for (size_t k = 0; less_one && k < count; k++) bufs[i][k] -= 1.0f;
            src = bufs[i];
        }
        int64_t shape[2] = {s->rows, s->cols};
        if (gpt2 && s->kind == FINCH_W_LINEAR) { /* Conv1D: [in, out] */
            float *t = finch_mem_alloc(count * sizeof(float) + 1);
            if (!t) {
                e = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", name);
                break;
            }
            for (int64_t r = 0; r < s->rows; r++)
                for (int64_t c = 0; c < s->cols; c++) t[c * s->rows + r] = src[r * s->cols + c];
            free(bufs[i]);
            bufs[i] = t;
            src = t;
            shape[0] = s->cols;
            shape[1] = s->rows;
        }
        e = finch_st_writer_add(w, name, FINCH_ST_F32,
                                s->cols > 1 || s->kind == FINCH_W_LINEAR ? 2 : 1, shape, src, err);
    }
    if (!e) e = finch_st_writer_save(w, path, err);
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(all);
    finch_st_writer_free(w);
    return e;
}

finch_status finch_weights_save(const finch_peft *p, const finch_model *m, const char *dir,
                                finch_err *err) {
    char path[4096];
    if (strlen(dir) + 32 > sizeof path)
        return finch_err_set(err, FINCH_E_USAGE, "output folder '%.200s...': path too long", dir);
    finch_status e = finch_mkdir_p(dir, err);
    if (e) return e;
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    if ((e = save_gguf(p, m, path, err))) return e;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((e = save_hf_weights(p, m, path, err))) return e;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return save_hf_config(m, path, err);
}
