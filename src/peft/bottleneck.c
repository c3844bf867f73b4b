/*
 * bottleneck.c: bottleneck adapters as the AdapterHub `adapters` package computes them on
 * LLaMA (its modeling_llama: the attention and FFN outputs pass through
 * attention_adapters and output_adapters with no layer norm), one module of
 *
 *   f(v) = s * (act(v W_down^T + b_down) W_up^T + b_up),   W_down (m, C), W_up (C, m),
 *   m = C / reduction_factor, s the scaling,
 *
 * at the places model.h names, by --adapter-type:
 *   houlsby     after attention and after the FFN, on the sublayer's output: x + h + f(h)
 *               (DoubleSeqBnConfig: swish, scaling 1)
 *   sequential  after the FFN, on the stream: z + f(z), z = x + h (SeqBnConfig: relu, 1)
 *   parallel    beside the FFN, from its input stream: x + h + f(x) (ParBnConfig: relu, 4)
 * Initialised as `mam_adapter`: W_down kaiming-uniform (bound 1/sqrt(C)), W_up and the
 * biases 0, so the model starts unchanged.
 *
 * Saved as `adapters` saves one (save_adapter): adapter_config.json {"config": the
 * BnConfig fields, "hidden_size", "model_class", "model_type", "name", "version"} and
 * adapter.safetensors with keys model.layers.{l}.{attention|output}_adapters.adapters.
 * {name}.adapter_down.0.{weight,bias} and .adapter_up.{weight,bias} (GPT-2:
 * transformer.h.{l}..., model_class GPT2LMHeadModel; its integration places the modules
 * alike, without layer norms); --layers is its leave_out (the blocks without adapters).
 */
#include "peft/method.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <strings.h>

#include "io/io.h" /* finch_json_write_file */

enum { HOULSBY, SEQUENTIAL, PARALLEL };
enum { ACT_AUTO, ACT_RELU, ACT_SWISH, ACT_GELU };
static const char *const act_names[] = {"", "relu", "swish", "gelu"};

typedef struct {
    int type;
    float reduction;
    int act;
    float scaling; /* 0: the type's */
    char name[64];
} bn_config;

static const finch_method_option bn_options[] = {
    {"adapter-type", NULL, NULL, FINCH_OPT_CHOICE, 0, 0, "houlsby", NULL, offsetof(bn_config, type),
     "where the modules sit", "houlsby,sequential,parallel"},
    {"reduction-factor", NULL, NULL, FINCH_OPT_FLOAT, 1, 65536, "16", NULL,
     offsetof(bn_config, reduction), "hidden size / bottleneck width", NULL},
    {"adapter-nonlinearity", NULL, NULL, FINCH_OPT_CHOICE, 0, 0, "auto", NULL,
     offsetof(bn_config, act), "the bottleneck's activation (auto: swish for houlsby, else relu)",
     "auto,relu,swish,gelu"},
    {"adapter-scaling", NULL, NULL, FINCH_OPT_FLOAT, 0, 1000, "0", NULL,
     offsetof(bn_config, scaling), "factor on the output (0: 4 for parallel, else 1)", NULL},
    {"adapter-name", NULL, NULL, FINCH_OPT_STRING, 0, 64, "finch", NULL, offsetof(bn_config, name),
     "the name in the saved keys", NULL},
};

typedef struct bottleneck bottleneck;

typedef struct {
    const bottleneck *bn; /* the instance's shared state */
    int layer;
    bool attn; /* after attention (houlsby), else after / beside the FFN */
    int64_t C, m;
    float *wd, *bd, *wu, *bu, *dwd, *dbd, *dwu, *dbu; /* in the registry */
    float *keep_in, *keep_u; /* (max_tokens, C), (max_tokens, m): forward's, for backward */
    finch_block_module mod;
} bn_site;

struct bottleneck {
    int n_sites;
    bn_site *sites;
    int act;
    float scale;
    float weight;
    int64_t max_tokens; /* rows a training call keeps */
    int64_t rows;       /* rows of the shared buffers */
    float *scratch;     /* the sites' kept activations, then the shared buffers below */
    float *ta, *tb;     /* (rows, m) */
    float *to;          /* (rows, C) */
    float *ones;        /* (rows) */
};

static int act_of(const bn_config *c) {
    return c->act != ACT_AUTO ? c->act : c->type == HOULSBY ? ACT_SWISH : ACT_RELU;
}

static float scale_of(const bn_config *c) {
    return c->scaling > 0 ? c->scaling : c->type == PARALLEL ? 4.0f : 1.0f;
}

static int64_t width(const finch_model *m, const bn_config *c) {
    int64_t w = (int64_t)((double)m->cfg.n_embd / c->reduction);
    return w < 1 ? 1 : w;
}

/* ---- the module ------------------------------------------------------------------------- */

static float act_f(int act, float x) {
    if (act == ACT_RELU) return x > 0 ? x : 0;
    if (act == ACT_SWISH) return x / (1.0f + expf(-x));
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

static float act_df(int act, float x) {
    if (act == ACT_RELU) return x > 0 ? 1.0f : 0.0f;
    if (act == ACT_SWISH) {
        float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
           x * 0.39894228040143268f * expf(-0.5f * x * x);
}

/* u (T, m) = in W_down^T + b_down */
static void down(const bn_site *s, float *u, const float *in, int64_t T, const finch_backend *be) {
    for (int64_t t = 0; t < T; t++) memcpy(u + t * s->m, s->bd, (size_t)s->m * sizeof *u);
    be->gemm(false, true, T, s->m, s->C, 1.0f, in, s->C, s->wd, s->C, 1.0f, u, s->m);
}

static void bn_forward(const finch_block_module *b, float *out, const float *in, int64_t T,
                       const finch_linear_ctx *ctx) {
    const bn_site *s = b->state;
    const bottleneck *bn = s->bn;
    const finch_backend *be = ctx->be;
    const bool keep = ctx->training && s->dwd;
    FINCH_ASSERT(T <= (keep ? bn->max_tokens : bn->rows));
    float *u = keep ? s->keep_u : bn->ta, *a = bn->tb, *o = bn->to;
    if (keep) memcpy(s->keep_in, in, (size_t)(T * s->C) * sizeof *in);
    down(s, u, in, T, be);
    for (int64_t i = 0; i < T * s->m; i++) a[i] = act_f(bn->act, u[i]);
    for (int64_t t = 0; t < T; t++) memcpy(o + t * s->C, s->bu, (size_t)s->C * sizeof *o);
    be->gemm(false, true, T, s->C, s->m, 1.0f, a, s->m, s->wu, s->m, 1.0f, o, s->C);
    const float k = bn->scale * bn->weight;
    for (int64_t i = 0; i < T * s->C; i++) out[i] += k * o[i];
}

/* With g = s dout: dW_up += g^T a, db_up += sum g, da = g W_up, du = da act'(u),
 * dW_down += du^T in, db_down += sum du, din = du W_down. */
static void bn_backward(const finch_block_module *b, float *din, const float *dout, int64_t T,
                        const finch_linear_ctx *ctx) {
    const bn_site *s = b->state;
    const bottleneck *bn = s->bn;
    const finch_backend *be = ctx->be;
    FINCH_ASSERT(T <= bn->max_tokens && s->dwd);
    const float k = bn->scale * bn->weight;
    const float *u = s->keep_u;
    float *a = bn->ta, *du = bn->tb;
    for (int64_t i = 0; i < T * s->m; i++) a[i] = act_f(bn->act, u[i]);
    be->gemm(true, false, s->C, s->m, T, k, dout, s->C, a, s->m, 1.0f, s->dwu, s->m);
    be->gemm(true, false, s->C, 1, T, k, dout, s->C, bn->ones, 1, 1.0f, s->dbu, 1);
    be->gemm(false, false, T, s->m, s->C, k, dout, s->C, s->wu, s->m, 0.0f, du, s->m);
    for (int64_t i = 0; i < T * s->m; i++) du[i] *= act_df(bn->act, u[i]);
    be->gemm(true, false, s->m, s->C, T, 1.0f, du, s->m, s->keep_in, s->C, 1.0f, s->dwd, s->C);
    be->gemm(true, false, s->m, 1, T, 1.0f, du, s->m, bn->ones, 1, 1.0f, s->dbd, 1);
    be->gemm(false, false, T, s->C, s->m, 1.0f, du, s->m, s->wd, s->C, 0.0f, din, s->C);
}

/* ---- the method ------------------------------------------------------------------------- */

static finch_status bn_validate(const finch_peft *p, const finch_model *m, finch_err *err) {
    const bn_config *c = p->cfg;
    if (!c->name[0] || strspn(c->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                       "0123456789_-") != strlen(c->name))
        return finch_err_set(err, FINCH_E_USAGE,
                             "--adapter-name '%s': give letters, digits, '_' or '-'", c->name);
    if (c->reduction > m->cfg.n_embd)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--reduction-factor %g: more than the hidden size %d (the bottleneck "
                             "would be empty)",
                             (double)c->reduction, m->cfg.n_embd);
    return FINCH_OK;
}

static finch_status add_param(finch_peft *p, const finch_model *m, const bn_site *s,
                              const char *part, int n_dims, int64_t d0, int64_t d1, bool decay,
                              float **data, float **grad, finch_err *err) {
    const bn_config *c = p->cfg;
    char name[200];
    /* the block's module path in transformers: GPT-2's blocks are transformer.h.{l} */
    snprintf(name, sizeof name, "%s.%d.%s_adapters.adapters.%s.%s",
             m->arch->fused_qkv ? "transformer.h" : "model.layers", s->layer,
             s->attn ? "attention" : "output", c->name, part);
    const int64_t shape[2] = {d0, d1};
    return finch_params_add(&p->params, name, n_dims, shape, 0, decay, data, grad, err);
}

static finch_status bn_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const bn_config *c = p->cfg;
    bottleneck *st = finch_calloc(1, sizeof *st, "bottleneck adapters", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    st->act = act_of(c);
    st->scale = scale_of(c);
    st->sites = finch_calloc((size_t)m->cfg.n_layer * 2, sizeof *st->sites, "adapter sites", err);
    if (!st->sites) return FINCH_E_NOMEM;
    const int64_t C = m->cfg.n_embd, w = width(m, c);
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int attn = c->type == HOULSBY ? 1 : 0; attn >= 0; attn--) {
            if (!finch_peft_layer(p, l)) continue;
            bn_site *s = &st->sites[st->n_sites++];
            *s = (bn_site){.bn = st, .layer = l, .attn = attn, .C = C, .m = w};
            s->mod = (finch_block_module){.place = c->type == HOULSBY      ? FINCH_MODULE_ON_OUTPUT
                                                   : c->type == SEQUENTIAL ? FINCH_MODULE_AFTER_ADD
                                                                           : FINCH_MODULE_PARALLEL,
                                          .state = s,
                                          .forward = bn_forward,
                                          .backward = bn_backward};
            finch_status e;
            if ((e = add_param(p, m, s, "adapter_down.0.weight", 2, w, C, true, &s->wd, &s->dwd,
                               err)) ||
                (e = add_param(p, m, s, "adapter_down.0.bias", 1, w, 0, false, &s->bd, &s->dbd,
                               err)) ||
                (e = add_param(p, m, s, "adapter_up.weight", 2, C, w, true, &s->wu, &s->dwu,
                               err)) ||
                (e = add_param(p, m, s, "adapter_up.bias", 1, C, 0, false, &s->bu, &s->dbu, err)))
                return e;
        }
    return FINCH_OK;
}

/* mam_adapter: W_down kaiming-uniform with a = sqrt(5) (bound 1/sqrt(C)), the rest 0. */
static void bn_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    (void)m;
    bottleneck *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        bn_site *s = &st->sites[i];
        const float bound = 1.0f / sqrtf((float)s->C);
        for (int64_t k = 0; k < s->m * s->C; k++)
            s->wd[k] = (2.0f * finch_rng_float(rng) - 1.0f) * bound;
    }
}

static void bn_free_state(finch_peft *p) {
    bottleneck *st = p->state;
    if (!st) return;
    free(st->sites);
    free(st->scratch);
    free(st);
}

static void bn_detach(finch_peft *p, finch_model *m) {
    bottleneck *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        finch_layer *ly = &m->layers[st->sites[i].layer];
        const finch_block_module **slot = st->sites[i].attn ? &ly->attn_module : &ly->ffn_module;
        if (*slot == &st->sites[i].mod) *slot = NULL;
    }
}

static finch_status bn_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                              finch_err *err) {
    bottleneck *st = p->state;
    const bool grads = p->params.grad != NULL;
    int64_t w = st->n_sites ? st->sites[0].m : 1, C = m->cfg.n_embd;
    size_t per = grads ? (size_t)max_tokens * (size_t)(C + w) : 0, need;
    /* training keeps max_tokens rows per site; inference runs chunks of up to
     * FINCH_INFER_CHUNK rows through the shared buffers */
    const int64_t rows = max_tokens > FINCH_INFER_CHUNK ? max_tokens : FINCH_INFER_CHUNK;
    if (!finch_size_mul(per, (size_t)st->n_sites, &need) ||
        !finch_size_add(need, (size_t)rows * (size_t)(2 * w + C + 1), &need))
        return finch_err_set(err, FINCH_E_RANGE, "adapter activations overflow");
    float *scratch = finch_alloc(need * sizeof(float) + 1, "adapter activations", err);
    if (!scratch) return FINCH_E_NOMEM;
    free(st->scratch);
    st->scratch = scratch;
    st->weight = weight;
    st->max_tokens = max_tokens;
    st->rows = rows;
    for (int i = 0; i < st->n_sites; i++) {
        bn_site *s = &st->sites[i];
        s->keep_in = grads ? scratch : NULL;
        s->keep_u = grads ? scratch + max_tokens * C : NULL;
        scratch += grads ? per : 0;
    }
    st->ta = scratch;
    st->tb = st->ta + rows * w;
    st->to = st->tb + rows * w;
    st->ones = st->to + rows * C;
    for (int64_t t = 0; t < rows; t++) st->ones[t] = 1.0f;
    for (int i = 0; i < st->n_sites; i++) {
        bn_site *s = &st->sites[i];
        finch_layer *ly = &m->layers[s->layer];
        const finch_block_module **slot = s->attn ? &ly->attn_module : &ly->ffn_module;
        if (*slot) {
            bn_detach(p, m);
            return finch_err_set(err, FINCH_E_USAGE,
                                 "block %d already has an adapter module; finch runs one "
                                 "bottleneck adapter at a time",
                                 s->layer);
        }
        *slot = &s->mod;
    }
    return FINCH_OK;
}

/* ---- AdapterHub's files ----------------------------------------------------------------- */

#define BN_WEIGHTS "adapter.safetensors"

static json_t *bn_config_json(const finch_peft *p, const finch_model *m) {
    const bn_config *c = p->cfg;
    json_t *k = json_object();
    const bool houlsby = c->type == HOULSBY, seq = c->type == SEQUENTIAL;
    json_object_set_new(k, "adapter_residual_before_ln", json_false());
    json_object_set_new(k, "cross_adapter", json_false());
    json_object_set_new(k, "dropout", json_real(0.0));
    json_object_set_new(k, "init_weights", json_string("mam_adapter"));
    json_object_set_new(k, "inv_adapter", json_null());
    json_object_set_new(k, "inv_adapter_reduction_factor", json_null());
    json_object_set_new(k, "is_parallel", json_boolean(c->type == PARALLEL));
    json_t *leave = json_array();
    for (int l = 0; l < m->cfg.n_layer; l++)
        if (!finch_peft_layer(p, l)) json_array_append_new(leave, json_integer(l));
    json_object_set_new(k, "leave_out", leave);
    json_object_set_new(k, "ln_after", json_false());
    json_object_set_new(k, "ln_before", json_false());
    json_object_set_new(k, "mh_adapter", json_boolean(houlsby));
    json_object_set_new(k, "non_linearity", json_string(act_names[act_of(c)]));
    json_object_set_new(k, "original_ln_after", json_true());
    json_object_set_new(k, "original_ln_before", json_boolean(seq));
    json_object_set_new(k, "output_adapter", json_true());
    json_object_set_new(k, "phm_layer", json_false());
    double rf = c->reduction;
    json_object_set_new(k, "reduction_factor",
                        rf == floor(rf) ? json_integer((json_int_t)rf) : json_real(rf));
    json_object_set_new(k, "residual_before_ln", json_true());
    json_object_set_new(k, "scaling", json_real(scale_of(c)));
    json_object_set_new(k, "use_gating", json_false());
    json_t *j = json_object();
    json_object_set_new(j, "config", k);
    json_object_set_new(j, "hidden_size", json_integer(m->cfg.n_embd));
    json_object_set_new(j, "model_class",
                        json_string(m->arch->fused_qkv ? "GPT2LMHeadModel" : "LlamaForCausalLM"));
    json_object_set_new(j, "model_name", json_string(m->cfg.name));
    json_object_set_new(j, "model_type", json_string(m->arch->name));
    json_object_set_new(j, "name", json_string(c->name));
    json_object_set_new(j, "version", json_string("adapters.1.0.1"));
    return j;
}

static finch_status bn_save(const finch_peft *p, const finch_model *m, const char *dir,
                            finch_err *err) {
    char path[4096];
    if (strlen(dir) + 40 > sizeof path)
        return finch_err_set(err, FINCH_E_USAGE, "adapter folder '%.200s...': path too long", dir);
    finch_status st = finch_mkdir_p(dir, err);
    if (st) return st;
    snprintf(path, sizeof path, "%s/" BN_WEIGHTS, dir);
    if ((st = finch_params_save_st(&p->params, path, err))) return st;
    finch_json_begin();               /* the writing sees a failed allocation of the building */
    json_t *j = bn_config_json(p, m); /* the config last: a folder with one is complete */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    st = finch_json_write_file(j, path, err);
    json_decref(j);
    finch_json_end();
    return st;
}

/* An AdapterHub config: no peft_type, a "config" object of a bottleneck adapter. */
static bool bn_claims(const json_t *j) {
    const json_t *k = json_object_get(j, "config");
    return json_is_object(k) && json_object_get(k, "mh_adapter") &&
           json_object_get(k, "output_adapter");
}

static finch_status bn_read_config(finch_peft *p, const finch_model *m, const json_t *j,
                                   const char *path, finch_err *err) {
    bn_config *c = p->cfg;
    const json_t *k = json_object_get(j, "config");
#define FIELD(key) json_object_get(k, key)
#define BOOL_IS(key, want) (json_is_boolean(FIELD(key)) && json_is_true(FIELD(key)) == (want))
    const json_t *name = json_object_get(j, "name");
    if (!json_is_string(name) || json_string_length(name) >= sizeof c->name)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: \"name\" is missing or not a short string",
                             path);
    snprintf(c->name, sizeof c->name, "%s", json_string_value(name));
    const json_t *hs = json_object_get(j, "hidden_size");
    if (hs && json_integer_value(hs) != m->cfg.n_embd)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: \"hidden_size\" is %lld, this model's is %d: an adapter for "
                             "another model",
                             path, (long long)json_integer_value(hs), m->cfg.n_embd);
    /* what finch implements: the three layouts of the LLaMA integration, no layer norms,
     * gating, PHM or invertible adapters */
    const char *bad = NULL;
    if (!BOOL_IS("output_adapter", true))
        bad = "output_adapter (must be true)";
    else if (BOOL_IS("ln_before", true) || BOOL_IS("ln_after", true))
        bad = "ln_before / ln_after (adapter layer norms)";
    else if (BOOL_IS("use_gating", true))
        bad = "use_gating";
    else if (BOOL_IS("phm_layer", true))
        bad = "phm_layer (Compacter)";
    else if (FIELD("inv_adapter") && !json_is_null(FIELD("inv_adapter")))
        bad = "inv_adapter";
    else if (BOOL_IS("residual_before_ln", false))
        bad = "residual_before_ln false";
    else if (json_is_string(FIELD("scaling")))
        bad = "scaling \"learned\"";
    if (bad)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"config\": %s is not implemented by finch", path, bad);
    const bool par = BOOL_IS("is_parallel", true), mh = BOOL_IS("mh_adapter", true),
               lnb = BOOL_IS("original_ln_before", true);
    if (par && !mh)
        c->type = PARALLEL;
    else if (!par && mh && !lnb)
        c->type = HOULSBY;
    else if (!par && !mh && lnb)
        c->type = SEQUENTIAL;
    else
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"config\": is_parallel %s, mh_adapter %s, original_ln_before "
                             "%s: not one of the houlsby, sequential or parallel layouts",
                             path, par ? "true" : "false", mh ? "true" : "false",
                             lnb ? "true" : "false");
    const json_t *rf = FIELD("reduction_factor");
    if (!json_is_number(rf) || json_number_value(rf) < 1 || json_number_value(rf) > 65536)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: \"config\": \"reduction_factor\" must be a number from 1 (a "
                             "per-layer mapping is not implemented)",
                             path);
    c->reduction = (float)json_number_value(rf);
    const json_t *sc = FIELD("scaling");
    c->scaling = json_is_number(sc) ? (float)json_number_value(sc) : 1.0f;
    if (!(c->scaling > 0 && c->scaling <= 1000))
        return finch_err_set(err, FINCH_E_FORMAT, "%s: \"config\": \"scaling\" %g is out of range",
                             path, (double)c->scaling);
    const json_t *nl = FIELD("non_linearity");
    c->act = -1;
    for (int a = ACT_RELU; a <= ACT_GELU && json_is_string(nl); a++)
        if (!strcasecmp(json_string_value(nl), act_names[a]) ||
            (a == ACT_SWISH && !strcasecmp(json_string_value(nl), "silu")))
            c->act = a;
    if (c->act < 0)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"config\": \"non_linearity\" must be relu, swish or gelu", path);
    const json_t *leave = FIELD("leave_out");
    if (leave && !json_is_null(leave)) {
        if (!json_is_array(leave))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: \"config\": \"leave_out\" must be a list of layers", path);
        size_t i;
        const json_t *e;
        json_array_foreach(leave, i, e) {
            json_int_t l = json_integer_value(e);
            if (!json_is_integer(e) || l < 0 || l >= m->cfg.n_layer)
                return finch_err_set(err, FINCH_E_FORMAT,
                                     "%s: \"config\": \"leave_out\"[%zu] is not a layer of this "
                                     "model (0-%d)",
                                     path, i, m->cfg.n_layer - 1);
            p->layers[l >> 6] &= ~(1ull << (l & 63));
            p->all_layers = false;
        }
    }
#undef FIELD
#undef BOOL_IS
    return FINCH_OK;
}

const finch_method finch_method_adapter = {
    .name = "adapter",
    .description = "bottleneck adapters: houlsby, sequential or parallel (AdapterHub's layout)",
    .opts = bn_options,
    .n_opts = sizeof bn_options / sizeof bn_options[0],
    .config_size = sizeof(bn_config),
    .weights_file = BN_WEIGHTS,
    .claims = bn_claims,
    .read_config = bn_read_config,
    .validate = bn_validate,
    .create = bn_create,
    .init = bn_init,
    .attach = bn_attach,
    .detach = bn_detach,
    .free_state = bn_free_state,
    .save = bn_save,
};
