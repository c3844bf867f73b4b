/*
 * prefix.c: prefix tuning (Li and Liang 2021) as PEFT computes it (FORMATS.md 2.1c): P
 * trained keys and values at every block, seen by every query before the sequence's own
 * keys (the real tokens at positions P, P+1, ...); the model is frozen.
 *
 * One table `prompt_embeddings` [P, L * 2 * KVH * D] (PEFT's GQA rule: token_dim =
 * head_dim x kv_heads): row p holds, for each block l, its keys (slot 2l) then values
 * (slot 2l+1), KVH heads of D each. Keys are used as they are, never rotated. In the file
 * each key head is in Hugging Face's rotate-half order, in memory in finch's pair order
 * (params.h converts), so q.k is the same number either way. Initialised N(0, 1) as
 * torch's nn.Embedding.
 *
 * With --prefix-projection (training only, as PEFT's PrefixEncoder) the table is the
 * output of an MLP over P trained embeddings of token_dim:
 *   table = tanh(E W0^T + b0) W2^T + b2,  E (P, KD), W0 (H, KD), W2 (L*2*KD, H),
 * registered under PEFT's names (prompt_encoder.embedding.weight, .transform.0.*,
 * .transform.2.*), recomputed before every forward and backpropagated after every
 * backward (model.h's refresh and backward); the adapter saves its output as
 * prompt_embeddings, as PEFT does, so it loads as a plain table.
 */
#include "peft/method.h"

#include <stddef.h>
#include <math.h>
#include <stdlib.h>

typedef struct {
    int n_virtual;
    bool projection;
    int hidden; /* 0: token_dim */
} prefix_config;

static const finch_method_option prefix_options[] = {
    {"num-virtual-tokens", NULL, "num_virtual_tokens", FINCH_OPT_INT, 1, 4096, "20", NULL,
     offsetof(prefix_config, n_virtual), "keys and values before every sequence, at every block",
     NULL},
    {"prefix-projection", NULL, NULL, FINCH_OPT_BOOL, 0, 0, "false", NULL,
     offsetof(prefix_config, projection), "train them through an MLP (saved as its output)", NULL},
    {"encoder-hidden", NULL, NULL, FINCH_OPT_INT, 0, 65536, "0", NULL,
     offsetof(prefix_config, hidden), "the MLP's width (0: the token width, KV heads x head dim)",
     NULL},
};

typedef struct {
    float *kv, *dkv; /* the table: in the registry, or the MLP's output (projection) */
    /* the projection: its parameters (registry) and activations */
    int64_t P, KD, H, W; /* tokens, token width, hidden, table width (L * 2 * KD) */
    float *e, *de, *w0, *dw0, *b0, *db0, *w2, *dw2, *b2, *db2;
    float *t;        /* (P, H) tanh of the hidden layer */
    float *out, *dt; /* (P, W) the output in HF key order, its gradient; (P, H) */
    float *ones;     /* (P) */
    int kv_heads;
    const finch_backend *be;
    finch_param table_param;
    finch_params table; /* what the adapter saves: the table alone */
} prefix_state;

static int64_t kv_width(const finch_model *m) {
    return (int64_t)m->cfg.n_head_kv * m->cfg.head_dim;
}

static finch_status prefix_validate(const finch_peft *p, const finch_model *m, finch_err *err) {
    const prefix_config *c = p->cfg;
    if (c->hidden && !c->projection)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--encoder-hidden is the width of --prefix-projection's MLP: give "
                             "both");
    if (c->n_virtual >= m->cfg.n_ctx_train)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--num-virtual-tokens %d: leaves no room in the model's context of %d",
                             c->n_virtual, m->cfg.n_ctx_train);
    return FINCH_OK;
}

static finch_status prefix_check_file(const json_t *config, const char *path, finch_err *err) {
    finch_status st = finch_prompt_learning_check(config, path, err);
    if (st) return st;
    json_t *v = json_object_get(config, "prefix_projection");
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return finch_err_set(err, FINCH_E_FORMAT, "%s: \"prefix_projection\" must be true or false",
                             path);
    return FINCH_OK;
}

static void prefix_write_config(const finch_peft *p, const finch_model *m, json_t *config) {
    const prefix_config *c = p->cfg;
    const int token_dim = (int)kv_width(m);
    finch_prompt_learning_config(config, m, c->n_virtual, token_dim, m->cfg.n_head_kv);
    json_object_set_new(config, "prefix_projection", json_boolean(c->projection));
    json_object_set_new(config, "encoder_hidden_size",
                        json_integer(c->projection && c->hidden ? c->hidden : token_dim));
}

static finch_status prefix_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const prefix_config *c = p->cfg;
    prefix_state *st = finch_calloc(1, sizeof *st, "prefix tuning", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    const int64_t KD = kv_width(m), W = 2 * m->cfg.n_layer * KD, shape[2] = {c->n_virtual, W};
    st->P = c->n_virtual;
    st->KD = KD;
    st->W = W;
    /* keys are permuted to Hugging Face's order in the file, except without RoPE (GPT-2) */
    st->kv_heads = m->arch->learned_pos ? 0 : m->cfg.n_head_kv;
    st->be = m->be;
    if (!c->projection) {
        finch_status e = finch_params_add(&p->params, "prompt_embeddings", 2, shape, st->kv_heads,
                                          true, &st->kv, &st->dkv, err);
        if (!e && st->kv_heads) finch_params_set_kv_block(&p->params, "prompt_embeddings", KD);
        return e;
    }
    const int64_t H = c->hidden ? c->hidden : KD;
    st->H = H;
    const struct {
        const char *name;
        int n_dims;
        int64_t d0, d1;
        bool decay;
        float **data, **grad;
    } ps[] = {{"prompt_encoder.embedding.weight", 2, st->P, KD, true, &st->e, &st->de},
              {"prompt_encoder.transform.0.weight", 2, H, KD, true, &st->w0, &st->dw0},
              {"prompt_encoder.transform.0.bias", 1, H, 0, false, &st->b0, &st->db0},
              {"prompt_encoder.transform.2.weight", 2, W, H, true, &st->w2, &st->dw2},
              {"prompt_encoder.transform.2.bias", 1, W, 0, false, &st->b2, &st->db2}};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) {
        const int64_t sh[2] = {ps[i].d0, ps[i].d1};
        finch_status e = finch_params_add(&p->params, ps[i].name, ps[i].n_dims, sh, 0, ps[i].decay,
                                          ps[i].data, ps[i].grad, err);
        if (e) return e;
    }
    /* the table and its gradient, the hidden activations, the output in HF order */
    size_t need = (size_t)(st->P * (3 * W + 2 * H) + st->P);
    float *buf = finch_calloc(need + 1, sizeof(float), "prefix projection", err);
    if (!buf) return FINCH_E_NOMEM;
    st->kv = buf;
    st->dkv = st->kv + st->P * W;
    st->out = st->dkv + st->P * W;
    st->t = st->out + st->P * W;
    st->dt = st->t + st->P * H;
    st->ones = st->dt + st->P * H;
    for (int64_t i = 0; i < st->P; i++) st->ones[i] = 1.0f;
    st->table_param = (finch_param){.n_dims = 2,
                                    .shape = {st->P, W},
                                    .n = st->P * W,
                                    .permute_heads = st->kv_heads,
                                    .kv_block = st->kv_heads ? KD : 0};
    snprintf(st->table_param.name, sizeof st->table_param.name, "prompt_embeddings");
    st->table =
        (finch_params){.p = &st->table_param, .n = 1, .cap = 1, .data = st->kv, .total = st->P * W};
    return FINCH_OK;
}

/* N(0, 1) as nn.Embedding; the projection's linears as torch's nn.Linear: U(+-1/sqrt(in))
 * for weights and biases. */
static void prefix_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    (void)m;
    const prefix_state *st = p->state;
    if (!st->H) {
        for (int64_t i = 0; i < p->params.total; i++) p->params.data[i] = finch_rng_normal(rng);
        return;
    }
    for (int64_t i = 0; i < st->P * st->KD; i++) st->e[i] = finch_rng_normal(rng);
    const struct {
        float *v;
        int64_t n, fan_in;
    } lin[] = {{st->w0, st->H * st->KD, st->KD},
               {st->b0, st->H, st->KD},
               {st->w2, st->W * st->H, st->H},
               {st->b2, st->W, st->H}};
    for (size_t k = 0; k < sizeof lin / sizeof *lin; k++) {
        const float bound = 1.0f / sqrtf((float)lin[k].fan_in);
        for (int64_t i = 0; i < lin[k].n; i++)
            lin[k].v[i] = (2.0f * finch_rng_float(rng) - 1.0f) * bound;
    }
}

static void prefix_free_state(finch_peft *p) {
    prefix_state *st = p->state;
    if (st && st->H) free(st->kv);
    free(st);
}

/* ---- the projection ----------------------------------------------------------------------- */

/* out = tanh(E W0^T + b0) W2^T + b2 (HF order), kv = out in finch's order. */
static void projection_refresh(void *self) {
    prefix_state *st = self;
    const finch_backend *be = st->be;
    for (int64_t r = 0; r < st->P; r++) memcpy(st->t + r * st->H, st->b0, (size_t)st->H * 4);
    be->gemm(false, true, st->P, st->H, st->KD, 1.0f, st->e, st->KD, st->w0, st->KD, 1.0f, st->t,
             st->H);
    for (int64_t i = 0; i < st->P * st->H; i++) st->t[i] = tanhf(st->t[i]);
    for (int64_t r = 0; r < st->P; r++) memcpy(st->out + r * st->W, st->b2, (size_t)st->W * 4);
    be->gemm(false, true, st->P, st->W, st->H, 1.0f, st->t, st->H, st->w2, st->H, 1.0f, st->out,
             st->W);
    finch_param_convert(&st->table_param, st->kv, st->out, false);
}

/* The table's gradient (finch's order, in dkv) into the projection's; dkv cleared. */
static void projection_backward(void *self) {
    prefix_state *st = self;
    if (!st->dw0) return;
    const finch_backend *be = st->be;
    float *g = st->out; /* the table's gradient in HF order (out is only scratch after
                           refresh: kv holds the table) */
    finch_param_convert(&st->table_param, g, st->dkv, true);
    be->gemm(true, false, st->W, st->H, st->P, 1.0f, g, st->W, st->t, st->H, 1.0f, st->dw2, st->H);
    be->gemm(true, false, st->W, 1, st->P, 1.0f, g, st->W, st->ones, 1, 1.0f, st->db2, 1);
    be->gemm(false, false, st->P, st->H, st->W, 1.0f, g, st->W, st->w2, st->H, 0.0f, st->dt, st->H);
    for (int64_t i = 0; i < st->P * st->H; i++) st->dt[i] *= 1.0f - st->t[i] * st->t[i];
    be->gemm(true, false, st->H, st->KD, st->P, 1.0f, st->dt, st->H, st->e, st->KD, 1.0f, st->dw0,
             st->KD);
    be->gemm(true, false, st->H, 1, st->P, 1.0f, st->dt, st->H, st->ones, 1, 1.0f, st->db0, 1);
    be->gemm(false, false, st->P, st->KD, st->H, 1.0f, st->dt, st->H, st->w0, st->KD, 1.0f, st->de,
             st->KD);
    memset(st->dkv, 0, (size_t)(st->P * st->W) * sizeof *st->dkv);
}

static const finch_params *prefix_saved(finch_peft *p, const finch_model *m) {
    (void)m;
    prefix_state *st = p->state;
    if (!st->H) return &p->params;
    projection_refresh(st);
    return &st->table;
}

static finch_status prefix_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                  finch_err *err) {
    (void)max_tokens;
    prefix_state *st = p->state;
    finch_virtual v = {
        .n = ((const prefix_config *)p->cfg)->n_virtual, .kv = st->kv, .d_kv = st->dkv};
    if (st->H) {
        v.d_kv = p->params.grad ? st->dkv : NULL;
        v.refresh = projection_refresh;
        v.backward = projection_backward;
        v.self = st;
        projection_refresh(st);
    }
    return finch_virtual_attach(m, &v, weight, "prefix tuning", err);
}

static void prefix_detach(finch_peft *p, finch_model *m) {
    (void)p;
    finch_virtual_detach(m);
}

const finch_method finch_method_prefix = {
    .name = "prefix",
    .description = "prefix tuning: trained keys and values at every block (Li and Liang 2021)",
    .opts = prefix_options,
    .n_opts = sizeof prefix_options / sizeof prefix_options[0],
    .config_size = sizeof(prefix_config),
    .peft_type = "PREFIX_TUNING",
    .layerless = true,
    .validate = prefix_validate,
    .check_file = prefix_check_file,
    .write_config = prefix_write_config,
    .create = prefix_create,
    .init = prefix_init,
    .attach = prefix_attach,
    .detach = prefix_detach,
    .free_state = prefix_free_state,
    .saved = prefix_saved,
};
