/*
 * ia3.c: (IA)^3 (Liu et al. 2022) as PEFT computes it (FORMATS.md 2.1c): a learned vector
 * l per targeted projection, ones at the start so the model is unchanged.
 *
 *   output target (k, v):   y = (x W^T + b) * l       ia3_l (out, 1)
 *   feed-forward (down):    y = (x * l) W^T + b       ia3_l (1, in)
 *
 * Backward: an output target's dl = sum_t g * (x W^T + b) (kept from forward) and the
 * gradient below it g * l; a feed-forward target's dl = sum_t dx' * x and dx = dx' * l.
 * Attached with a weight w (combining adapters) the vector acts as 1 + w (l - 1).
 */
#include "peft/method.h"

#include <stddef.h>
#include <stdlib.h>

typedef struct {
    uint32_t targets; /* projections scaled */
    uint32_t ff;      /* of those, the ones whose input is scaled */
} ia3_config;

static const finch_method_option ia3_options[] = {
    {"target-modules", NULL, "target_modules", FINCH_OPT_TARGETS, 0, 0, "k,v,down", "k,v,down",
     offsetof(ia3_config, targets), "projections scaled", NULL},
    {"feedforward-modules", NULL, "feedforward_modules", FINCH_OPT_TARGETS, 0, 0, "down", "down",
     offsetof(ia3_config, ff), "of those, the ones scaled at their input", NULL},
};

typedef struct {
    int layer;
    finch_target target;
    int part;      /* GPT-2's c_attn: 1, 2 for k, v, whose vector is a view of q's */
    bool ff;       /* input scaled */
    int64_t n;     /* the vector's length: in (ff) or out */
    float *l, *dl; /* in the registry */
    float *eff;    /* (n) 1 + w (l - 1) when attached with w != 1, else NULL */
    float *keep;   /* (max_tokens, n): the output before scaling, or the scaled input */
    float *g;      /* (max_tokens, n): the gradient backward returns (output targets) */
    float *tmpv;   /* (n) scratch */
    int64_t max_tokens;
} ia3_site;

typedef struct {
    int n_sites;
    ia3_site *sites;
    float *scratch;                  /* in scratch_be's memory */
    const finch_backend *scratch_be; /* the model's backend when the sites attached */
} ia3;

static const float *vec(const ia3_site *s) {
    return s->eff ? s->eff : s->l;
}

/* ---- the attachment --------------------------------------------------------------------- */

static const float *ia3_input(const finch_attachment *a, const float *x, int64_t T,
                              const finch_linear_ctx *ctx) {
    const ia3_site *s = a->state;
    FINCH_ASSERT(T <= s->max_tokens);
    ctx->be->scale_cols(s->keep, x, vec(s), T, s->n);
    return s->keep;
}

static void ia3_input_backward(const finch_attachment *a, float *dx, const float *x, int64_t T,
                               const finch_linear_ctx *ctx) {
    const ia3_site *s = a->state;
    if (s->dl) ctx->be->col_dot(s->dl, dx, x, T, s->n);
    ctx->be->scale_cols(dx, dx, vec(s), T, s->n);
}

static void ia3_forward(const finch_attachment *a, float *y, const float *x, int64_t T,
                        const finch_linear *lin, const finch_linear_ctx *ctx) {
    (void)x;
    (void)lin;
    const ia3_site *s = a->state;
    FINCH_ASSERT(T <= s->max_tokens);
    if (s->dl) ctx->be->copy(s->keep, y, (size_t)(T * s->n) * sizeof *y); /* for dl */
    ctx->be->scale_cols(y, y, vec(s), T, s->n);
}

static const float *ia3_backward(const finch_attachment *a, const float *g, const float *x,
                                 int64_t T, const finch_linear *lin, const finch_linear_ctx *ctx) {
    (void)x;
    (void)lin;
    const ia3_site *s = a->state;
    ctx->be->col_dot(s->dl, g, s->keep, T, s->n);
    ctx->be->scale_cols(s->g, g, vec(s), T, s->n);
    return s->g;
}

static const finch_peft_ops ia3_out_ops = {
    .name = "ia3", .forward = ia3_forward, .backward = ia3_backward};
static const finch_peft_ops ia3_in_ops = {
    .name = "ia3", .input = ia3_input, .input_backward = ia3_input_backward};

/* ---- the method ------------------------------------------------------------------------- */

static finch_status ia3_validate(const finch_peft *p, const finch_model *m, finch_err *err) {
    (void)m;
    const ia3_config *c = p->cfg;
    if (c->ff & ~c->targets)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--feedforward-modules must be a subset of --target-modules (as PEFT "
                             "requires)");
    return FINCH_OK;
}

static finch_status ia3_check_file(const json_t *j, const char *path, finch_err *err) {
    static const char *const must_be_empty[] = {"modules_to_save", "exclude_modules"};
    for (size_t i = 0; i < sizeof must_be_empty / sizeof *must_be_empty; i++) {
        json_t *v = json_object_get(j, must_be_empty[i]);
        if (v && !json_is_null(v) &&
            !((json_is_object(v) && !json_object_size(v)) ||
              (json_is_array(v) && !json_array_size(v))))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: \"%s\" is set; finch does not support it", path,
                                 must_be_empty[i]);
    }
    return FINCH_OK;
}

static void ia3_write_config(const finch_peft *p, const finch_model *m, json_t *j) {
    (void)p;
    json_object_set_new(j, "exclude_modules", json_null());
    /* PEFT sets it for GPT-2's Conv1D modules; the vectors are the same either way */
    json_object_set_new(j, "fan_in_fan_out", json_boolean(m->arch->fused_qkv));
    json_object_set_new(j, "init_ia3_weights", json_true());
    json_object_set_new(j, "modules_to_save", json_null());
}

static finch_status ia3_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const ia3_config *c = p->cfg;
    uint32_t targets = c->targets, ff = c->ff;
    finch_status e = finch_targets_check(m, &targets, err);
    if (e) return e;
    if (ff && (e = finch_targets_check(m, &ff, err))) return e;
    ia3 *st = finch_calloc(1, sizeof *st, "(IA)^3", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    st->sites = finch_calloc((size_t)m->cfg.n_layer * FINCH_TARGET_COUNT, sizeof *st->sites,
                             "(IA)^3 sites", err);
    if (!st->sites) return FINCH_E_NOMEM;
    for (int ly = 0; ly < m->cfg.n_layer; ly++)
        for (int t = 0; t < FINCH_TARGET_COUNT; t++) {
            if (!(targets >> t & 1) || !finch_peft_layer(p, ly)) continue;
            const finch_linear *lin = finch_model_target((finch_model *)m, ly, (finch_target)t);
            int64_t rows;
            const int part = finch_target_part(m, (finch_target)t, &rows);
            ia3_site *s = &st->sites[st->n_sites++];
            *s =
                (ia3_site){.layer = ly, .target = (finch_target)t, .part = part, .ff = ff >> t & 1};
            s->n = s->ff ? lin->w.cols : lin->w.rows;
            char key[160], name[200];
            finch_target_key(key, sizeof key, m, ly, (finch_target)t, false);
            snprintf(name, sizeof name, "%s.ia3_l", key);
            if (part) { /* k, v of a fused module: its input's vector, or their rows of it */
                e = finch_params_add_view(&p->params, name, s->ff ? 0 : part * s->n, &s->l, &s->dl,
                                          err);
                if (e) return e;
                continue;
            }
            int64_t shape[2] = {s->ff ? 1 : rows, s->ff ? s->n : 1};
            int heads = s->ff ? 0 : finch_target_heads(m, (finch_target)t);
            e = finch_params_add(&p->params, name, 2, shape, heads, true, &s->l, &s->dl, err);
            if (e) return e;
        }
    return FINCH_OK;
}

static void ia3_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    (void)m;
    (void)rng;
    for (int64_t i = 0; i < p->params.total; i++) p->params.data[i] = 1.0f;
}

static void ia3_free_state(finch_peft *p) {
    ia3 *st = p->state;
    if (!st) return;
    free(st->sites);
    if (st->scratch_be) st->scratch_be->free(st->scratch);
    free(st);
}

static void ia3_detach(finch_peft *p, finch_model *m) {
    ia3 *st = p->state;
    for (int i = 0; i < st->n_sites; i++)
        finch_linear_detach(finch_model_target(m, st->sites[i].layer, st->sites[i].target),
                            &st->sites[i]);
}

static finch_status ia3_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                               finch_err *err) {
    ia3 *st = p->state;
    size_t need = 0;
    for (int i = 0; i < st->n_sites; i++)
        need += (size_t)st->sites[i].n * (2 * (size_t)max_tokens + 2);
    /* in the memory of the backend the sites' operations run on; l is the host's here (a
     * device gets the parameters after attaching) */
    float *scratch = m->be->alloc(need * sizeof(float) + 1, "(IA)^3 scratch", err);
    if (!scratch) return FINCH_E_NOMEM;
    if (st->scratch_be) st->scratch_be->free(st->scratch);
    st->scratch = scratch;
    st->scratch_be = m->be;
    finch_status e = FINCH_OK;
    for (int i = 0; i < st->n_sites && !e; i++) {
        ia3_site *s = &st->sites[i];
        s->max_tokens = max_tokens;
        s->keep = scratch;
        s->g = s->keep + max_tokens * s->n;
        s->tmpv = s->g + max_tokens * s->n;
        s->eff = NULL;
        if (weight != 1.0f) { /* formed in host memory, then put where the ops read it */
            float *eff = finch_alloc((size_t)s->n * sizeof *eff, "(IA)^3 vector", err);
            if (!eff) {
                e = FINCH_E_NOMEM;
                break;
            }
            for (int64_t j = 0; j < s->n; j++) eff[j] = 1.0f + weight * (s->l[j] - 1.0f);
            s->eff = s->tmpv + s->n;
            e = m->be->copy_in(s->eff, eff, (size_t)s->n * sizeof *eff, err);
            free(eff);
        }
        scratch = s->tmpv + 2 * s->n;
        if (!e)
            e = finch_linear_attach(finch_model_target(m, s->layer, s->target),
                                    s->ff ? &ia3_in_ops : &ia3_out_ops, s, weight, err);
    }
    if (e) ia3_detach(p, m);
    return e;
}

/* Output targets scale row r (and the bias) by l[r]; feed-forward targets scale every
 * row's columns by l. */
static bool ia3_merge_row(const finch_peft *p, const finch_model *m, const char *gguf_name,
                          int64_t r, float *row, int64_t cols, float weight) {
    const ia3 *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        const ia3_site *s = &st->sites[i];
        /* a fused module's q site has the whole vector (k's and v's are views of it) */
        const bool fused = m->arch->fused_qkv && s->target <= FINCH_TARGET_V;
        if (s->part) continue;
        const char *stem = fused ? "attn_qkv" : finch_target_gguf_name(s->target);
        char w[96], b[96];
        snprintf(w, sizeof w, "blk.%d.%s.weight", s->layer, stem);
        snprintf(b, sizeof b, "blk.%d.%s.bias", s->layer, stem);
        bool is_w = !strcmp(gguf_name, w), is_b = !s->ff && !strcmp(gguf_name, b);
        if (!is_w && !is_b) continue;
        if (!row) return true;
        for (int64_t c = 0; c < cols; c++) {
            float l = s->ff ? s->l[c] : is_b ? s->l[c] : s->l[r];
            row[c] *= 1.0f + weight * (l - 1.0f);
        }
        return true;
    }
    return false;
}

const finch_method finch_method_ia3 = {
    .name = "ia3",
    .description = "(IA)^3: vectors scaling keys, values, the FFN input (Liu et al. 2022)",
    .opts = ia3_options,
    .n_opts = sizeof ia3_options / sizeof ia3_options[0],
    .config_size = sizeof(ia3_config),
    .peft_type = "IA3",
    .device = true,
    .validate = ia3_validate,
    .check_file = ia3_check_file,
    .write_config = ia3_write_config,
    .create = ia3_create,
    .init = ia3_init,
    .attach = ia3_attach,
    .detach = ia3_detach,
    .free_state = ia3_free_state,
    .merge_row = ia3_merge_row,
};
