/*
 * lora.c: LoRA (Hu et al. 2021) with PEFT's conventions, as a method of the table:
 *
 *   forward   u = xd A^T (T, r),  y += w s u B^T            xd = dropout(x), s = alpha/r
 *   backward  du = w s dy B (T, r)
 *             dB += w s dy^T u,   dA += du^T xd,   dx += mask * (du A)
 *
 * Dropout's keep mask is a hash of (step seed, layer, target, element) (kernels.h), so
 * backward regenerates the mask forward used; kept elements are scaled by 1/(1-p) as
 * torch.nn.Dropout does. Inference never drops.
 */
#include "peft/lora.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "io/io.h" /* the GGUF adapter writer */

const finch_method_option finch_lora_options[FINCH_LORA_N_OPTIONS] = {
    {"lora-r", "r", "r", FINCH_OPT_INT, 1, 4096, "8", "8", offsetof(finch_lora_config, r), "rank",
     NULL},
    {"lora-alpha", NULL, "lora_alpha", FINCH_OPT_FLOAT, 1e-12, 1e30, "16", "8",
     offsetof(finch_lora_config, alpha), "scale numerator: updates are scaled by alpha / r", NULL},
    {"lora-dropout", NULL, "lora_dropout", FINCH_OPT_FLOAT, 0, 0.99, "0.05", "0",
     offsetof(finch_lora_config, dropout), "dropout on the adapter's input", NULL},
    {"target-modules", NULL, "target_modules", FINCH_OPT_TARGETS, 0, 0, "q,v", "q,v",
     offsetof(finch_lora_config, targets), "q,k,v,o,gate,up,down or all-linear", NULL},
    {"use-rslora", NULL, "use_rslora", FINCH_OPT_BOOL, 0, 1, "false", "false",
     offsetof(finch_lora_config, rslora), "scale by alpha / sqrt(r) (rsLoRA)", NULL},
};

/* ---- parameters and sites --------------------------------------------------------------- */

finch_status finch_lora_create(finch_peft *p, const finch_model *m, bool with_magnitude,
                               finch_err *err) {
    const finch_lora_config *c = p->cfg;
    finch_lora *l = finch_calloc(1, sizeof *l, "LoRA", err);
    if (!l) return FINCH_E_NOMEM;
    p->state = l;
    uint32_t targets = c->targets;
    finch_status st = finch_targets_check(m, &targets, err);
    if (st) return st;
    int n_t = __builtin_popcount(targets);
    l->sites =
        finch_calloc((size_t)m->cfg.n_layer * (size_t)n_t, sizeof *l->sites, "LoRA sites", err);
    if (!l->sites) return FINCH_E_NOMEM;
    const float scale = c->rslora ? c->alpha / sqrtf((float)c->r) : c->alpha / (float)c->r;
    for (int ly = 0; ly < m->cfg.n_layer; ly++)
        for (int t = 0; t < FINCH_TARGET_COUNT; t++) {
            if (!(targets >> t & 1) || !finch_peft_layer(p, ly)) continue;
            const finch_linear *lin = finch_model_target((finch_model *)m, ly, (finch_target)t);
            int64_t rows;
            const int part = finch_target_part(m, (finch_target)t, &rows);
            finch_lora_site *s = &l->sites[l->n_sites++];
            *s = (finch_lora_site){.layer = ly,
                                   .target = (finch_target)t,
                                   .part = part,
                                   .in = lin->w.cols,
                                   .out = lin->w.rows,
                                   .r = c->r,
                                   .scale = scale,
                                   .dropout = c->dropout};
            char key[160], name[200], name_b[200], name_m[200];
            finch_target_key(key, sizeof key, m, ly, (finch_target)t, false);
            int64_t sa[2] = {c->r, s->in}, sb[2] = {rows, c->r};
            int heads = finch_target_heads(m, (finch_target)t);
            snprintf(name, sizeof name, "%s.lora_A.weight", key);
            snprintf(name_b, sizeof name_b, "%s.lora_B.weight", key);
            snprintf(name_m, sizeof name_m, "%s.lora_magnitude_vector", key);
            if (part) { /* k or v of a fused module: views of q's tensors */
                const int64_t row0 = (int64_t)part * s->out;
                if ((st = finch_params_add_view(&p->params, name, 0, &s->A, &s->dA, err)) ||
                    (st = finch_params_add_view(&p->params, name_b, row0 * c->r, &s->B, &s->dB,
                                                err)) ||
                    (with_magnitude && (st = finch_params_add_view(&p->params, name_m, row0,
                                                                   &s->mag, &s->dmag, err))))
                    return st;
                continue;
            }
            if ((st = finch_params_add(&p->params, name, 2, sa, 0, true, &s->A, &s->dA, err)))
                return st;
            if ((st = finch_params_add(&p->params, name_b, 2, sb, heads, true, &s->B, &s->dB, err)))
                return st;
            /* block ly's backward completes their gradients (the fused optimizer, params.h) */
            finch_params_set_block(&p->params, name, ly);
            finch_params_set_block(&p->params, name_b, ly);
            if (!with_magnitude) continue;
            if ((st = finch_params_add(&p->params, name_m, 1, &rows, heads, true, &s->mag, &s->dmag,
                                       err)))
                return st;
            finch_params_set_block(&p->params, name_m, ly);
        }
    return FINCH_OK;
}

void finch_lora_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    (void)m;
    finch_lora *l = p->state;
    for (int i = 0; i < l->n_sites; i++) {
        finch_lora_site *s = &l->sites[i];
        if (s->part) continue; /* A is q's */
        float bound = 1.0f / sqrtf((float)s->in);
        for (int64_t k = 0; k < (int64_t)s->r * s->in; k++)
            s->A[k] = (2.0f * finch_rng_float(rng) - 1.0f) * bound;
    }
}

void finch_lora_free_state(finch_peft *p) {
    finch_lora *l = p->state;
    if (!l) return;
    free(l->sites);
    if (l->scratch_be) l->scratch_be->free(l->scratch);
    free(l->mask);
    free(l->norms);
    free(l->vecs);
    free(l);
}

finch_status finch_lora_attach_ops(finch_peft *p, finch_model *m, const finch_peft_ops *ops,
                                   float weight, int64_t max_tokens, bool dora, finch_err *err) {
    finch_lora *l = p->state;
    /* du, the dropped-out input and DoRA's gradient buffer live only within one site's
     * forward or backward, so the sites share them; u (LoRA's backward takes it from the
     * forward of the same pass) and DoRA's zl are kept from forward to backward, one per
     * training site (sites that do not train share one u) */
    int64_t max_r = 1, max_in = 1, max_out = 1, zl = 0, us = 0;
    bool drops = false;
    for (int i = 0; i < l->n_sites; i++) {
        const finch_lora_site *s = &l->sites[i];
        max_r = s->r > max_r ? s->r : max_r;
        max_in = s->in > max_in ? s->in : max_in;
        max_out = s->out > max_out ? s->out : max_out;
        drops |= s->dropout > 0;
        zl += dora ? s->out : 0;
        us += s->dA ? s->r : 0;
    }
    size_t need =
        (size_t)max_tokens * (2 * (size_t)max_r + (size_t)us + (drops ? (size_t)max_in : 0) +
                              (dora ? (size_t)max_out : 0) + (size_t)zl);
    /* in the memory of the backend the sites' operations run on */
    float *scratch = m->be->alloc(need * sizeof(float) + 1, "adapter scratch", err);
    if (!scratch) return FINCH_E_NOMEM;
    if (l->scratch_be) l->scratch_be->free(l->scratch);
    l->scratch = scratch;
    l->scratch_be = m->be;
    /* DoRA's dropout mask bits are kept from forward to backward, one per training site */
    size_t words = 0;
    for (int i = 0; dora && i < l->n_sites; i++)
        if (l->sites[i].dropout > 0 && l->sites[i].dA)
            words += (size_t)max_tokens * (size_t)finch_mask_words(l->sites[i].in);
    free(l->mask);
    l->mask = NULL;
    if (words && !(l->mask = finch_alloc(words * sizeof *l->mask, "DoRA dropout masks", err)))
        return FINCH_E_NOMEM;
    uint64_t *mask = l->mask;
    float *u = scratch, *du = u + max_tokens * max_r, *next = du + max_tokens * max_r;
    float *xd = drops ? next : NULL;
    next += drops ? max_tokens * max_in : 0;
    float *g = dora ? next : NULL;
    next += dora ? max_tokens * max_out : 0;
    for (int i = 0; i < l->n_sites; i++) {
        finch_lora_site *s = &l->sites[i];
        s->max_tokens = max_tokens;
        s->u = s->dA ? next : u;
        next += s->dA ? max_tokens * s->r : 0;
        s->u_pass = 0;
        s->du = du;
        s->xd = s->dropout > 0 ? xd : NULL;
        s->g = g;
        s->mask = dora && s->dropout > 0 && s->dA ? mask : NULL;
        mask += s->mask ? max_tokens * finch_mask_words(s->in) : 0;
        s->zl = dora ? next : NULL;
        next += dora ? max_tokens * s->out : 0;
        finch_status st =
            finch_linear_attach(finch_model_target(m, s->layer, s->target), ops, s, weight, err);
        if (st) {
            finch_lora_detach(p, m);
            return st;
        }
    }
    return FINCH_OK;
}

void finch_lora_detach(finch_peft *p, finch_model *m) {
    finch_lora *l = p->state;
    for (int i = 0; i < l->n_sites; i++)
        finch_linear_detach(finch_model_target(m, l->sites[i].layer, l->sites[i].target),
                            &l->sites[i]);
}

finch_lora_site *finch_lora_site_of(const finch_peft *p, const finch_model *m,
                                    const char *gguf_name, int64_t *r) {
    const finch_lora *l = p->state;
    for (int i = 0; i < l->n_sites; i++) {
        finch_lora_site *s = &l->sites[i];
        const bool fused = m->arch->fused_qkv && s->target <= FINCH_TARGET_V;
        char name[96];
        snprintf(name, sizeof name, "blk.%d.%s.weight", s->layer,
                 fused ? "attn_qkv" : finch_target_gguf_name(s->target));
        if (strcmp(name, gguf_name) || (fused && *r / s->out != s->part)) continue;
        if (fused) *r -= s->part * s->out;
        return s;
    }
    return NULL;
}

/* ---- the low-rank path ------------------------------------------------------------------ */

static bool drops(const finch_lora_site *s, const finch_linear_ctx *ctx) {
    return ctx->training && s->dropout > 0;
}

finch_dropout finch_lora_mask(const finch_lora_site *s, const finch_linear_ctx *ctx) {
    /* the parts of a fused module share its input and so its mask, as in PEFT */
    return finch_dropout_make(ctx->dropout_seed,
                              (uint64_t)s->layer * FINCH_TARGET_COUNT + s->target - s->part + 1,
                              s->dropout);
}

const float *finch_lora_input(const finch_lora_site *s, const float *x, int64_t T,
                              const finch_linear_ctx *ctx) {
    if (!drops(s, ctx)) return x;
    finch_dropout d = finch_lora_mask(s, ctx);
    ctx->be->dropout_forward(s->xd, x, T * s->in, &d);
    return s->xd;
}

void finch_lora_backward_params(const finch_lora_site *s, const float *gs, float alpha,
                                const float *xd, int64_t T, const finch_linear_ctx *ctx) {
    const finch_backend *be = ctx->be;
    FINCH_ASSERT(T <= s->max_tokens && s->dA);
    /* the forward of this step left u = xd A^T in scratch only if nothing ran between;
     * recompute it (r is small) so backward never depends on call order */
    be->gemm(false, true, T, s->r, s->in, 1.0f, xd, s->in, s->A, s->in, 0.0f, s->u, s->r);
    be->gemm(false, false, T, s->r, s->out, alpha, gs, s->out, s->B, s->r, 0.0f, s->du, s->r);
    be->gemm(true, false, s->out, s->r, T, alpha, gs, s->out, s->u, s->r, 1.0f, s->dB, s->r);
    be->gemm(true, false, s->r, s->in, T, 1.0f, s->du, s->r, xd, s->in, 1.0f, s->dA, s->in);
}

void finch_lora_backward_dx(const finch_lora_site *s, float *dx, const float *x, int64_t T,
                            const finch_linear_ctx *ctx) {
    (void)x;
    const finch_backend *be = ctx->be;
    if (!drops(s, ctx)) {
        be->gemm(false, false, T, s->in, s->r, 1.0f, s->du, s->r, s->A, s->in, 1.0f, dx, s->in);
        return;
    }
    /* through dropout: the same mask and scale (xd's buffer is free again) */
    float *dxd = s->xd;
    be->gemm(false, false, T, s->in, s->r, 1.0f, s->du, s->r, s->A, s->in, 0.0f, dxd, s->in);
    finch_dropout d = finch_lora_mask(s, ctx);
    be->dropout_backward(dx, dxd, T * s->in, &d);
}

void finch_lora_forward_u(finch_lora_site *s, const float *x, int64_t T,
                          const finch_linear_ctx *ctx) {
    FINCH_ASSERT(T <= s->max_tokens);
    const float *xd = finch_lora_input(s, x, T, ctx);
    ctx->be->gemm(false, true, T, s->r, s->in, 1.0f, xd, s->in, s->A, s->in, 0.0f, s->u, s->r);
    s->u_pass = ctx->training && s->dA ? ctx->pass : 0;
}

void finch_lora_backward_u(finch_lora_site *s, const float *x, int64_t T,
                           const finch_linear_ctx *ctx) {
    if (!ctx->pass || s->u_pass != ctx->pass) /* another forward ran since */
        finch_lora_forward_u(s, x, T, ctx);
}

void finch_lora_backward_up(finch_lora_site *s, const float *gs, float alpha, const float *x,
                            int64_t T, const finch_linear_ctx *ctx) {
    const finch_backend *be = ctx->be;
    FINCH_ASSERT(T <= s->max_tokens && s->dA);
    finch_lora_backward_u(s, x, T, ctx);
    be->gemm(false, false, T, s->r, s->out, alpha, gs, s->out, s->B, s->r, 0.0f, s->du, s->r);
    be->gemm(true, false, s->out, s->r, T, alpha, gs, s->out, s->u, s->r, 1.0f, s->dB, s->r);
}

void finch_lora_backward_down(const finch_lora_site *s, float *dx, const float *x, int64_t T,
                              const finch_linear_ctx *ctx) {
    const finch_dropout d = finch_lora_mask(s, ctx);
    ctx->be->lora_down_backward(s->dA, dx, s->du, x, s->A, T, s->in, s->r,
                                drops(s, ctx) ? &d : NULL);
}

/* ---- the attachment --------------------------------------------------------------------- */

static void lora_forward(const finch_attachment *a, float *y, const float *x, int64_t T,
                         const finch_linear *lin, const finch_linear_ctx *ctx) {
    (void)lin;
    finch_lora_site *s = a->state;
    finch_lora_forward_u(s, x, T, ctx);
    ctx->be->gemm(false, true, T, s->out, s->r, a->weight * s->scale, s->u, s->r, s->B, s->r, 1.0f,
                  y, s->out);
}

static const float *lora_backward(const finch_attachment *a, const float *g, const float *x,
                                  int64_t T, const finch_linear *lin, const finch_linear_ctx *ctx) {
    (void)lin;
    finch_lora_site *s = a->state;
    const float alpha = a->weight * s->scale;
    if (finch_lora_down_fused(ctx))
        finch_lora_backward_up(s, g, alpha, x, T, ctx);
    else
        finch_lora_backward_params(s, g, alpha, finch_lora_input(s, x, T, ctx), T, ctx);
    return g;
}

static void lora_backward_input(const finch_attachment *a, float *dx, const float *x, int64_t T,
                                const finch_linear *lin, const finch_linear_ctx *ctx) {
    (void)lin;
    if (finch_lora_down_fused(ctx))
        finch_lora_backward_down(a->state, dx, x, T, ctx);
    else if (dx)
        finch_lora_backward_dx(a->state, dx, x, T, ctx);
}

static const finch_peft_ops lora_ops = {
    .name = "lora",
    .forward = lora_forward,
    .backward = lora_backward,
    .backward_input = lora_backward_input,
};

/* ---- the method ------------------------------------------------------------------------- */

static bool lora_claims(const json_t *j) {
    json_t *d = json_object_get(j, "use_dora");
    return !d || !json_is_true(d);
}

/* Fields PEFT allows that finch does not implement: present with a non-default value is
 * FINCH_E_UNSUPPORTED rather than an adapter that silently computes something else. */
finch_status finch_lora_check_file(const json_t *j, const char *path, finch_err *err) {
    /* fan_in_fan_out says how the base layer stores its weight (GPT-2's Conv1D); lora_A and
     * lora_B have the same layout and meaning either way, so it is accepted as it is */
    static const char *const must_be_false[] = {"lora_bias", "use_qalora"};
    static const char *const must_be_empty[] = {"rank_pattern",
                                                "alpha_pattern",
                                                "modules_to_save",
                                                "layer_replication",
                                                "exclude_modules",
                                                "target_parameters",
                                                "trainable_token_indices",
                                                "alora_invocation_tokens"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof *must_be_false; i++) {
        json_t *v = json_object_get(j, must_be_false[i]);
        if (v && !json_is_null(v) && !json_is_false(v))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: \"%s\" is set; finch loads plain LoRA adapters only", path,
                                 must_be_false[i]);
    }
    for (size_t i = 0; i < sizeof must_be_empty / sizeof *must_be_empty; i++) {
        json_t *v = json_object_get(j, must_be_empty[i]);
        if (v && !json_is_null(v) &&
            !((json_is_object(v) && !json_object_size(v)) ||
              (json_is_array(v) && !json_array_size(v))))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: \"%s\" is set; finch does not support it (remove it or "
                                 "merge the adapter in PEFT)",
                                 path, must_be_empty[i]);
    }
    json_t *bias = json_object_get(j, "bias");
    if (bias && !json_is_null(bias) &&
        !(json_is_string(bias) && !strcmp(json_string_value(bias), "none")))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"bias\" must be \"none\" (finch LoRA adapters train no biases)",
                             path);
    json_t *pattern = json_object_get(j, "layers_pattern");
    if (pattern && !json_is_null(pattern) &&
        !(json_is_string(pattern) && !strcmp(json_string_value(pattern), "layers")))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"layers_pattern\" must be \"layers\" for a LLaMA-family model",
                             path);
    return FINCH_OK;
}

void finch_lora_write_config(const finch_peft *p, const finch_model *m, json_t *j) {
    (void)p;
    /* LoraConfig's fields as PEFT writes them (FORMATS.md 2.1a); those finch does not set
     * keep PEFT's defaults, which finch's adapters match */
    json_object_set_new(j, "alpha_pattern", json_object());
    json_object_set_new(j, "bias", json_string("none"));
    json_object_set_new(j, "corda_config", json_null());
    json_object_set_new(j, "eva_config", json_null());
    json_object_set_new(j, "exclude_modules", json_null());
    /* true for GPT-2's Conv1D modules, as PEFT sets it */
    json_object_set_new(j, "fan_in_fan_out", json_boolean(m->arch->fused_qkv));
    json_object_set_new(j, "init_lora_weights", json_true());
    json_object_set_new(j, "layer_replication", json_null());
    json_object_set_new(j, "layers_pattern", json_null());
    json_object_set_new(j, "loftq_config", json_object());
    json_object_set_new(j, "lora_bias", json_false());
    json_object_set_new(j, "megatron_config", json_null());
    json_object_set_new(j, "megatron_core", json_string("megatron.core"));
    json_object_set_new(j, "modules_to_save", json_null());
    json_object_set_new(j, "rank_pattern", json_object());
    json_object_set_new(j, "use_dora", json_false());
}

static finch_status lora_create(finch_peft *p, const finch_model *m, finch_err *err) {
    return finch_lora_create(p, m, false, err);
}

static finch_status lora_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                finch_err *err) {
    return finch_lora_attach_ops(p, m, &lora_ops, weight, max_tokens, false, err);
}

/* W' = W + w s B A, row r: sum_j B[r][j] A[j][:]. */
static bool lora_merge_row(const finch_peft *p, const finch_model *m, const char *gguf_name,
                           int64_t r, float *row, int64_t cols, float weight) {
    const finch_lora_site *s = finch_lora_site_of(p, m, gguf_name, &r);
    if (!s || !row) return s != NULL;
    FINCH_ASSERT(cols == s->in && r < s->out);
    finch_lora_merge_delta(s, r, row, weight);
    return true;
}

void finch_lora_merge_delta(const finch_lora_site *s, int64_t r, float *row, float weight) {
    for (int j = 0; j < s->r; j++) {
        float b = weight * s->scale * s->B[r * s->r + j];
        const float *a = s->A + (int64_t)j * s->in;
        for (int64_t c = 0; c < s->in; c++) row[c] += b * a[c];
    }
}

/* The GGUF adapter llama.cpp loads with --lora (FORMATS.md 6): general.architecture of the
 * model, general.type "adapter", adapter.type "lora", adapter.lora.alpha (for rsLoRA
 * alpha * sqrt(r): llama.cpp scales by alpha / r), tensors blk.{L}.{stem}.weight.lora_a
 * ne [in, r] and .lora_b ne [r, out] in F32. llama.cpp's llama arch keeps q/k rows in
 * GGUF order, as finch does; qwen2 uses rotate-half RoPE on rows in Hugging Face order, so
 * there B of q and k goes out un-permuted. GPT-2's attn_qkv is one adapter: q's site holds
 * lora_b's 3 C rows (k's and v's are views of it) and the shared lora_a. */
static finch_status lora_save_gguf(const finch_peft *p, const finch_model *m, const char *path,
                                   finch_err *err) {
    const finch_lora_config *c = p->cfg;
    const finch_lora *l = p->state;
    finch_status st;
    char name[96];
    float **tmp = NULL;
    finch_gguf_writer *w = finch_gguf_writer_new(err);
    if (!w) return FINCH_E_NOMEM;
    float alpha = c->rslora ? (float)((double)c->alpha * sqrt((double)c->r)) : c->alpha;
    if ((st = finch_gguf_set_str(w, "general.architecture", m->cfg.arch, err)) ||
        (st = finch_gguf_set_str(w, "general.type", "adapter", err)) ||
        (st = finch_gguf_set_str(w, "adapter.type", "lora", err)) ||
        (st = finch_gguf_set_f32(w, "adapter.lora.alpha", alpha, err)))
        goto done;
    if (m->cfg.name[0] && (st = finch_gguf_set_str(w, "general.name", m->cfg.name, err))) goto done;
    const bool hf_rows = m->arch->neox_rows; /* the family keeps HF q/k rows in GGUF */
    /* the writer keeps pointers: the permuted copies live until the save */
    if (!(tmp = finch_mem_calloc((size_t)l->n_sites + 1, sizeof *tmp))) {
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < l->n_sites; i++) {
        const finch_lora_site *s = &l->sites[i];
        /* a fused module (GPT-2's attn_qkv) is one adapter: q's site holds all its B rows */
        const bool fused = m->arch->fused_qkv && s->target <= FINCH_TARGET_V;
        if (s->part) continue;
        const char *stem = fused ? "attn_qkv" : finch_target_gguf_name(s->target);
        int64_t ne_a[2] = {s->in, s->r}, ne_b[2] = {s->r, fused ? 3 * s->out : s->out};
        const float *B = s->B;
        int heads = hf_rows ? finch_target_heads(m, s->target) : 0;
        if (heads) {
            if (!(tmp[i] = finch_mem_alloc((size_t)s->out * (size_t)s->r * sizeof(float)))) {
                st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
                goto done;
            }
            finch_rows_permute(tmp[i], s->B, s->out, s->r, heads, true);
            B = tmp[i];
        }
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", s->layer, stem);
        if ((st = finch_gguf_add_tensor(w, name, FINCH_DTYPE_F32, 2, ne_a, s->A, err))) goto done;
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", s->layer, stem);
        if ((st = finch_gguf_add_tensor(w, name, FINCH_DTYPE_F32, 2, ne_b, B, err))) goto done;
    }
    st = finch_gguf_writer_save(w, path, err);
done:
    for (int i = 0; tmp && i < l->n_sites; i++) free(tmp[i]);
    free(tmp);
    finch_gguf_writer_free(w);
    return st;
}

const finch_method finch_method_lora = {
    .name = "lora",
    .description = "low-rank A, B beside frozen projections (Hu et al. 2021)",
    .opts = finch_lora_options,
    .n_opts = FINCH_LORA_N_OPTIONS,
    .config_size = sizeof(finch_lora_config),
    .peft_type = "LORA",
    .device = true,
    .claims = lora_claims,
    .check_file = finch_lora_check_file,
    .write_config = finch_lora_write_config,
    .create = lora_create,
    .init = finch_lora_init,
    .attach = lora_attach,
    .detach = finch_lora_detach,
    .free_state = finch_lora_free_state,
    .merge_row = lora_merge_row,
    .save_gguf = lora_save_gguf,
};
