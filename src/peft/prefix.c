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
 */
#include "peft/method.h"

#include <stddef.h>
#include <stdlib.h>

typedef struct {
    int n_virtual;
} prefix_config;

static const finch_method_option prefix_options[] = {
    {"num-virtual-tokens", NULL, "num_virtual_tokens", FINCH_OPT_INT, 1, 4096, "20", NULL,
     offsetof(prefix_config, n_virtual), "keys and values before every sequence, at every block",
     NULL},
};

typedef struct {
    float *kv, *dkv; /* in the registry */
} prefix_state;

static int64_t kv_width(const finch_model *m) {
    return (int64_t)m->cfg.n_head_kv * m->cfg.head_dim;
}

static finch_status prefix_validate(const finch_peft *p, const finch_model *m, finch_err *err) {
    const prefix_config *c = p->cfg;
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
    json_object_set_new(config, "prefix_projection", json_false());
    json_object_set_new(config, "encoder_hidden_size", json_integer(token_dim));
}

static finch_status prefix_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const prefix_config *c = p->cfg;
    prefix_state *st = finch_calloc(1, sizeof *st, "prefix tuning", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    const int64_t KD = kv_width(m), shape[2] = {c->n_virtual, 2 * m->cfg.n_layer * KD};
    finch_status e = finch_params_add(&p->params, "prompt_embeddings", 2, shape, m->cfg.n_head_kv,
                                      true, &st->kv, &st->dkv, err);
    if (!e) finch_params_set_kv_block(&p->params, "prompt_embeddings", KD);
    return e;
}

static void prefix_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    (void)m;
    for (int64_t i = 0; i < p->params.total; i++) p->params.data[i] = finch_rng_normal(rng);
}

static void prefix_free_state(finch_peft *p) {
    free(p->state);
}

static finch_status prefix_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                  finch_err *err) {
    (void)max_tokens;
    const prefix_state *st = p->state;
    const finch_virtual v = {
        .n = ((const prefix_config *)p->cfg)->n_virtual, .kv = st->kv, .d_kv = st->dkv};
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
};
