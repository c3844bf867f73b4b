/*
 * forward.c: the forward pass for inference over a key/value cache, for every family of
 * the architecture table (arch.c); what a row switches on is marked [row field].
 *
 *   x = tok_embd[ids]  (* sqrt(C) [embed_scale])  (+ pos_embd[pos] [learned_pos])
 *   norm: rmsnorm(x) * w, or layernorm(x) * w + b [layer_norm]
 *   per block:  xn = norm(x) * attn_norm
 *               q, k, v = xn Wq^T (+ bq), xn Wk^T (+ bk), xn Wv^T (+ bv)   (biases: Qwen2)
 *               q, k = rmsnorm per head * q_norm, k_norm  [qk_norm]
 *               rope(q), rope(k) (the block's base [swa_pattern]; none [learned_pos]);
 *               append k, v
 *               a = attention(q, K, V) (within the sliding window [swa_pattern]) Wo^T
 *               x += a  (x += rmsnorm(a) * post_attn_norm [post_norms])
 *               xn = rmsnorm(x) * ffn_norm
 *               f = (act(xn Wgate^T) * (xn Wup^T)) Wdown^T  (act: silu or gelu [act])
 *                   (gelu(xn Wup^T + bup) Wdown^T + bdown [plain_ffn])
 *               x += f  (x += rmsnorm(f) * post_ffn_norm [post_norms])
 *   logits = norm(x) (output_norm) Wout^T
 *
 * Facts: FORMATS.md 3.1 (graph), 4 (RoPE on interleaved pairs for GGUF row order; a
 * Hugging Face folder's and a rotate-half GGUF's Q/K rows, biases and q/k norms are put
 * in that order at load, model.h). Biases are added inside finch_linear_forward
 * (model/linear.c), so training gets them too.
 * Shapes: T tokens, C hidden, H/KVH heads, D head dim, F FFN width, V vocabulary.
 */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>

finch_status finch_kv_session_init(finch_kv_session *s, const finch_model *m, int n_ctx,
                                   int n_batch, finch_numerics numerics, finch_err *err) {
    const finch_model_config *c = &m->cfg;
    memset(s, 0, sizeof *s);
    if (numerics != FINCH_NUMERICS_EXACT && numerics != FINCH_NUMERICS_LLAMACPP &&
        numerics != FINCH_NUMERICS_BF16)
        return finch_err_set(err, FINCH_E_USAGE, "unknown numerics mode %d", (int)numerics);
    const finch_backend *be = m->be;
    if (numerics == FINCH_NUMERICS_LLAMACPP && !be->matmul_q8)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "llama.cpp numerics do not run on %s: use exact numerics or the CPU",
                             be->name);
    if (n_ctx > INT32_MAX - m->virt.n)
        return finch_err_set(err, FINCH_E_RANGE, "KV cache for %d positions overflows", n_ctx);
    n_ctx += m->virt.n;
    if (m->arch->learned_pos && n_ctx > c->n_ctx_train)
        return finch_err_set(err, FINCH_E_RANGE,
                             "%d positions (with %d virtual tokens): the model has learned "
                             "position embeddings for %d",
                             n_ctx, m->virt.n, c->n_ctx_train);
    s->n_ctx = n_ctx;
    s->start = m->virt.n;
    s->n_batch = n_batch;
    s->numerics = numerics;
    const size_t kv_elem = numerics == FINCH_NUMERICS_LLAMACPP ? 2 : 4;
    const size_t C = (size_t)c->n_embd, KD = (size_t)c->n_head_kv * c->head_dim,
                 HD = (size_t)c->n_head * c->head_dim, F = (size_t)c->n_ff, V = (size_t)c->n_vocab,
                 B = (size_t)n_batch;
    size_t cache;
    if (!finch_size_mul((size_t)c->n_layer * (size_t)n_ctx, KD, &cache))
        return finch_err_set(err, FINCH_E_RANGE, "KV cache for %d positions overflows", n_ctx);
    if (!finch_size_mul(cache, kv_elem, &cache))
        return finch_err_set(err, FINCH_E_RANGE, "KV cache for %d positions overflows", n_ctx);
    s->be = be;
    s->k = be->alloc(cache, "key cache", err);
    s->v = s->k ? be->alloc(cache, "value cache", err) : NULL;
    if (!s->v) goto fail;
    struct {
        float **p;
        size_t n;
        const char *what;
    } bufs[] = {
        {&s->x, B * C, "activations"},   {&s->xn, B * C, "activations"},
        {&s->q, B * HD, "queries"},      {&s->kk, B * KD, "keys"},
        {&s->vv, B * KD, "values"},      {&s->att, B * HD, "attention output"},
        {&s->gate, B * F, "ffn"},        {&s->up, B * F, "ffn"},
        {&s->d_logits, B * V, "logits"},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i].p = be->alloc(bufs[i].n * sizeof(float), bufs[i].what, err);
        if (!*bufs[i].p) goto fail;
    }
    s->logits = be->device ? finch_aalloc(B * V * sizeof(float), "logits", err) : s->d_logits;
    s->pos_ids = s->logits ? finch_alloc(B * sizeof(int32_t), "positions", err) : NULL;
    if (!s->pos_ids) goto fail;
    if (be->device && !(s->d_pos = be->alloc(2 * B * sizeof(int32_t), "positions", err))) goto fail;
    s->d_ids = s->d_pos ? s->d_pos + B : NULL;
    const int64_t max_cols = finch_widest_input(c);
    size_t act =
        numerics == FINCH_NUMERICS_LLAMACPP ? finch_workspace_act_need(n_batch, max_cols) : 0;
    if (finch_workspace_init(&s->ws, finch_workspace_need(max_cols, n_ctx), finch_threads_get(),
                             act, err))
        goto fail;
    /* bf16: x rounded once per product, up to n_batch rows of the widest input */
    if (numerics == FINCH_NUMERICS_BF16 &&
        finch_model_bf16_products(m, &s->ws, n_batch, max_cols, 0, err))
        goto fail;
    return FINCH_OK;
fail:
    finch_kv_session_release(s);
    return err ? err->code : FINCH_E_NOMEM;
}

void finch_kv_session_release(finch_kv_session *s) {
    if (!s->be) return; /* never made, or released */
    s->be->free(s->k);
    s->be->free(s->v);
    float *bufs[] = {s->x, s->xn, s->q, s->kk, s->vv, s->att, s->gate, s->up, s->d_logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) s->be->free(bufs[i]);
    if (s->logits != s->d_logits) finch_afree(s->logits);
    s->be->free(s->d_pos);
    free(s->pos_ids);
    finch_workspace_free(&s->ws);
    memset(s, 0, sizeof *s);
}

finch_status finch_kv_session_status(const finch_kv_session *s, finch_err *err) {
    return finch_kept_status(&s->dev_err, err);
}

/* n ids from the host's src into the session's device buffer dst (none elsewhere: the
 * host's own are used); the first failure is kept for finch_kv_session_status. */
static const int32_t *to_device(finch_kv_session *s, int32_t *dst, const int32_t *src, int n) {
    if (!s->be->device) return src;
    finch_copy_kept(s->be->copy_in, dst, src, (size_t)n * sizeof *src, &s->dev_err);
    return dst;
}

/* x (T, C) += h, a sublayer's output, through the block's module b at its place
 * (model.h); h is clobbered. */
static void join(const finch_block_module *b, float *x, float *h, int64_t T, int64_t C,
                 const finch_linear_ctx *ctx) {
    if (b && b->place == FINCH_MODULE_ON_OUTPUT) b->forward(b, h, h, T, ctx);
    if (b && b->place == FINCH_MODULE_PARALLEL) b->forward(b, h, x, T, ctx);
    ctx->be->add(x, h, T * C);
    if (b && b->place == FINCH_MODULE_AFTER_ADD) b->forward(b, x, x, T, ctx);
}

/* y (rows, C) = RMSNorm of x with weight w, with llama.cpp's rounding in its numerics. */
static void rms_rows(const finch_kv_session *s, const finch_backend *be, float *y, const float *x,
                     const float *w, int64_t rows, int64_t C, float eps) {
    if (s->numerics == FINCH_NUMERICS_LLAMACPP)
        be->rmsnorm_llamacpp(y, x, w, rows, C, eps);
    else
        be->rmsnorm_forward(y, NULL, x, w, rows, C, eps);
}

/* The block's norm (finch_norm_forward): RMSNorm through rms_rows, LayerNorm with
 * llama.cpp's rounding in its numerics. */
static void norm_rows(const finch_model *m, const finch_kv_session *s, float *y, const float *x,
                      const float *w, const float *b, int64_t T) {
    if (m->arch->layer_norm && s->numerics == FINCH_NUMERICS_LLAMACPP)
        m->be->layernorm_llamacpp(y, x, w, b, T, m->cfg.n_embd, m->cfg.rms_eps);
    else if (m->arch->layer_norm)
        finch_norm_forward(m, y, NULL, x, w, b, T);
    else
        rms_rows(s, m->be, y, x, w, T, m->cfg.n_embd, m->cfg.rms_eps);
}

/* T rows from ids, or from embd (T, C) as they are; the logits of the last n_out rows
 * (0, 1 or T). */
static void forward_rows(const finch_model *m, finch_kv_session *s, const int32_t *ids,
                         const float *embd, int T, int n_out) {
    const finch_model_config *c = &m->cfg;
    const finch_backend *be = m->be;
    const int C = c->n_embd, H = c->n_head, KVH = c->n_head_kv, D = c->head_dim;
    const int64_t KD = (int64_t)KVH * D, F = c->n_ff, pos0 = s->pos;
    finch_workspace *ws = &s->ws;
    const bool llamacpp = s->numerics == FINCH_NUMERICS_LLAMACPP;
    const finch_matmul_fn mm = llamacpp ? be->matmul_q8 : be->matmul;
    /* the elementwise ops of the session's numerics, chosen once */
    void (*const rope)(float *, const int32_t *, int64_t, int, int, float) =
        llamacpp ? be->rope_llamacpp : be->rope_forward;
    void (*const gelu)(float *, const float *, int64_t) =
        llamacpp ? be->gelu_llamacpp : be->gelu_forward;
    void (*const geglu)(float *, const float *, const float *, int64_t) =
        llamacpp ? be->geglu_llamacpp : be->geglu_forward;
    const finch_linear_ctx ctx = {.be = be, .ws = ws};
    FINCH_ASSERT(T >= 1 && T <= s->n_batch && pos0 + T <= s->n_ctx);

    const finch_arch *a = m->arch;
    for (int t = 0; t < T; t++) s->pos_ids[t] = (int32_t)(pos0 + t);
    const int32_t *pos_ids = to_device(s, s->d_pos, s->pos_ids, T);
    if (embd) {
        FINCH_ASSERT(!be->device); /* virtual tokens stay on the host (finch_model_place) */
        memcpy(s->x, embd, (size_t)T * C * sizeof(float));
    } else {
        be->embed(s->x, to_device(s, s->d_ids, ids, T), T, &m->tok_embd);
        if (a->embed_scale) be->scale(s->x, (int64_t)T * C, sqrtf((float)C));
    }
    if (a->learned_pos) { /* every row, virtual ones too, gets its position's embedding */
        be->embed(s->xn, pos_ids, T, &m->pos_embd);
        be->add(s->x, s->xn, (int64_t)T * C);
    }

    for (int l = 0; l < c->n_layer; l++) {
        const finch_layer *ly = &m->layers[l];
        const size_t layer_off = (size_t)l * s->n_ctx * KD;
        const float theta = finch_layer_theta(m, l);
        const int64_t window = finch_layer_window(m, l);
        /* attention */
        /* exact numerics: the new keys and values go straight into the f32 cache */
        float *kf = (float *)s->k + layer_off, *vf = (float *)s->v + layer_off;
        float *kn = llamacpp ? s->kk : kf + pos0 * KD, *vn = llamacpp ? s->vv : vf + pos0 * KD;
        norm_rows(m, s, s->xn, s->x, ly->attn_norm, ly->attn_norm_b, T);
        finch_linear_forward(mm, s->q, s->xn, &ly->wq, T, be, ws);
        finch_linear_forward(mm, kn, s->xn, &ly->wk, T, be, ws);
        finch_linear_forward(mm, vn, s->xn, &ly->wv, T, be, ws);
        if (a->qk_norm) {
            rms_rows(s, be, s->q, s->q, ly->q_norm, (int64_t)T * H, D, c->rms_eps);
            rms_rows(s, be, kn, kn, ly->k_norm, (int64_t)T * KVH, D, c->rms_eps);
        }
        if (!a->learned_pos) {
            rope(s->q, pos_ids, T, H, D, theta);
            rope(kn, pos_ids, T, KVH, D, theta);
        }
        if (llamacpp) {
            uint16_t *kc = (uint16_t *)s->k + layer_off, *vc = (uint16_t *)s->v + layer_off;
            be->to_f16(kc + pos0 * KD, s->kk, T * KD);
            be->to_f16(vc + pos0 * KD, s->vv, T * KD);
            /* llama.cpp's Gemma 3 graph scales the queries (f32, before their f16
             * rounding); its llama graph scales the scores */
            float kq_scale = 1.0f / sqrtf((float)D);
            if (a->scale_q) {
                be->scale(s->q, (int64_t)T * H * D, kq_scale);
                kq_scale = 1.0f;
            }
            be->attention_forward_f16(s->att, s->q, kc, vc, T, pos0, H, KVH, D, kq_scale,
                                      a->neox_rows, window, ws);
        } else {
            be->attention_forward(s->att, s->q, kf, vf, T, pos0, H, KVH, D, window, ws);
        }
        finch_linear_forward(mm, s->xn, s->att, &ly->wo, T, be, ws);
        if (a->post_norms) rms_rows(s, be, s->xn, s->xn, ly->post_attn_norm, T, C, c->rms_eps);
        join(ly->attn_module, s->x, s->xn, T, C, &ctx);
        /* feed-forward */
        norm_rows(m, s, s->xn, s->x, ly->ffn_norm, ly->ffn_norm_b, T);
        if (a->plain_ffn) {
            finch_linear_forward(mm, s->gate, s->xn, &ly->w_up, T, be, ws);
            gelu(s->gate, s->gate, (int64_t)T * F);
        } else {
            finch_linear_forward(mm, s->gate, s->xn, &ly->w_gate, T, be, ws);
            finch_linear_forward(mm, s->up, s->xn, &ly->w_up, T, be, ws);
            if (a->act == FINCH_ACT_GELU_TANH)
                geglu(s->gate, s->gate, s->up, (int64_t)T * F);
            else if (llamacpp)
                be->swiglu_llamacpp(s->gate, s->gate, s->up, T, F);
            else
                be->swiglu_forward(s->gate, s->gate, s->up, (int64_t)T * F);
        }
        finch_linear_forward(mm, s->xn, s->gate, &ly->w_down, T, be, ws);
        if (a->post_norms) rms_rows(s, be, s->xn, s->xn, ly->post_ffn_norm, T, C, c->rms_eps);
        join(ly->ffn_module, s->x, s->xn, T, C, &ctx);
    }
    s->pos += T;

    /* head: only the rows whose logits are wanted */
    if (!n_out) return;
    const float *xl = s->x + (size_t)(T - n_out) * C;
    norm_rows(m, s, s->xn, xl, m->output_norm, m->output_norm_b, n_out);
    finch_linear_forward(mm, s->d_logits, s->xn, &m->output, n_out, be, ws);
    if (be->device)
        finch_copy_kept(be->copy_out, s->logits, s->d_logits,
                        (size_t)n_out * c->n_vocab * sizeof(float), &s->dev_err);
}

/* The model's virtual tokens into an empty cache: prompt rows run through the blocks,
 * prefix keys and values are stored as they are. */
static void fill_virtual(const finch_model *m, finch_kv_session *s) {
    const finch_virtual *v = &m->virt;
    const finch_model_config *c = &m->cfg;
    if (v->embd)
        for (int done = 0; done < v->n;) {
            int T = v->n - done < s->n_batch ? v->n - done : s->n_batch;
            forward_rows(m, s, NULL, v->embd + (size_t)done * c->n_embd, T, 0);
            done += T;
        }
    if (v->refresh) v->refresh(v->self);
    if (v->kv) {
        const int64_t KD = (int64_t)c->n_head_kv * c->head_dim, row = 2 * c->n_layer * KD;
        for (int l = 0; l < c->n_layer; l++)
            for (int p = 0; p < v->n; p++) {
                const float *k = v->kv + p * row + 2 * l * KD, *vv = k + KD;
                size_t at = ((size_t)l * s->n_ctx + p) * KD;
                if (s->numerics == FINCH_NUMERICS_LLAMACPP) {
                    m->be->to_f16((uint16_t *)s->k + at, k, KD);
                    m->be->to_f16((uint16_t *)s->v + at, vv, KD);
                } else {
                    memcpy((float *)s->k + at, k, (size_t)KD * sizeof(float));
                    memcpy((float *)s->v + at, vv, (size_t)KD * sizeof(float));
                }
            }
        s->pos = v->n;
    }
}

void finch_model_forward(const finch_model *m, finch_kv_session *s, const int32_t *ids, int T,
                         bool all_logits) {
    FINCH_ASSERT(m->virt.n == s->start);
    if (s->pos == 0 && s->start) fill_virtual(m, s);
    FINCH_ASSERT(s->pos >= s->start);
    forward_rows(m, s, ids, NULL, T, all_logits ? T : 1);
}
