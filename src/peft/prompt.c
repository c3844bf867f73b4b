/*
 * prompt.c: prompt tuning (Lester et al. 2021) as PEFT computes it (FORMATS.md 2.1c): K
 * trainable embeddings stand before every sequence, at positions 0..K-1, the real tokens
 * following from K; the model is frozen. The rows enter block 0 as they are (not scaled
 * by an embedding scale, as PEFT concatenates them after the model's embedding layer).
 * Saved as PEFT does: `prompt_embeddings` [K, hidden] and a PROMPT_TUNING config.
 *
 * Also here, for prefix tuning too: PEFT's shared prompt-learning config fields and the
 * model's virtual-token slot (model.h) taken and released.
 *
 * Initialisation (prompt_tuning_init): random N(0, 1) as torch's nn.Embedding; vocab,
 * rows of the embedding table for uniformly drawn token ids; text, the rows of the text's
 * tokens, cut to K or repeated until K long.
 */
#include "peft/method.h"

#include <stddef.h>
#include <stdlib.h>

#include "tokenizer/tokenizer.h" /* finch_tokenize */

enum { PROMPT_RANDOM, PROMPT_VOCAB, PROMPT_TEXT };
static const char *const peft_init[] = {"RANDOM", "SAMPLE_VOCAB", "TEXT"};

typedef struct {
    int n_virtual;
    int init;
    char text[1024];
} prompt_config;

static const finch_method_option prompt_options[] = {
    {"num-virtual-tokens", NULL, "num_virtual_tokens", FINCH_OPT_INT, 1, 4096, "20", NULL,
     offsetof(prompt_config, n_virtual), "virtual tokens before every sequence", NULL},
    {"prompt-init", NULL, NULL, FINCH_OPT_CHOICE, 0, 0, "random", NULL,
     offsetof(prompt_config, init), "their start", "random,vocab,text"},
    {"prompt-init-text", NULL, NULL, FINCH_OPT_STRING, 0, 1024, "", NULL,
     offsetof(prompt_config, text),
     "the text whose token embeddings start them (--prompt-init text)", NULL},
};

typedef struct {
    float *rows, *drows; /* in the registry: (K, C) */
} prompt_state;

/* ---- shared by the prompt-learning methods --------------------------------------------- */

void finch_prompt_learning_config(json_t *config, const finch_model *m, int n_virtual,
                                  int token_dim, int heads) {
    json_object_set_new(config, "num_virtual_tokens", json_integer(n_virtual));
    json_object_set_new(config, "token_dim", json_integer(token_dim));
    json_object_set_new(config, "num_transformer_submodules", json_integer(1));
    json_object_set_new(config, "num_attention_heads", json_integer(heads));
    json_object_set_new(config, "num_layers", json_integer(m->cfg.n_layer));
}

finch_status finch_prompt_learning_check(const json_t *config, const char *path, finch_err *err) {
    json_t *v = json_object_get(config, "num_virtual_tokens");
    if (!json_is_integer(v))
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: \"num_virtual_tokens\" is missing or not an integer", path);
    v = json_object_get(config, "num_transformer_submodules");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"num_transformer_submodules\" is not 1: an adapter for an "
                             "encoder-decoder model; finch runs decoder-only models",
                             path);
    return FINCH_OK;
}

finch_status finch_virtual_attach(finch_model *m, const finch_virtual *v, float weight,
                                  const char *method, finch_err *err) {
    if (weight != 1.0f)
        return finch_err_set(err, FINCH_E_USAGE,
                             "%s adapters do not combine with weights (weight %g): attach one "
                             "with weight 1",
                             method, (double)weight);
    if (m->virt.n)
        return finch_err_set(err, FINCH_E_USAGE,
                             "a prompt or prefix adapter is already attached; finch runs one at "
                             "a time");
    m->virt = *v;
    return FINCH_OK;
}

void finch_virtual_detach(finch_model *m) {
    m->virt = (finch_virtual){0};
}

/* ---- prompt tuning ---------------------------------------------------------------------- */

static finch_status prompt_validate(const finch_peft *p, const finch_model *m, finch_err *err) {
    const prompt_config *c = p->cfg;
    if (c->init == PROMPT_TEXT && !c->text[0])
        return finch_err_set(err, FINCH_E_USAGE, "--prompt-init text needs --prompt-init-text");
    if (c->init != PROMPT_TEXT && c->text[0])
        return finch_err_set(err, FINCH_E_USAGE,
                             "--prompt-init-text is used by --prompt-init text only");
    if (c->init == PROMPT_TEXT && !m->tok)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--prompt-init text: %s has no tokenizer to read the text with",
                             m->path);
    if (c->n_virtual >= m->cfg.n_ctx_train)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--num-virtual-tokens %d: leaves no room in the model's context of %d",
                             c->n_virtual, m->cfg.n_ctx_train);
    return FINCH_OK;
}

static finch_status prompt_check_file(const json_t *config, const char *path, finch_err *err) {
    finch_status st = finch_prompt_learning_check(config, path, err);
    if (st) return st;
    json_t *v = json_object_get(config, "prompt_tuning_init");
    if (v && !json_is_null(v)) {
        const char *s = json_is_string(v) ? json_string_value(v) : "";
        bool known = false;
        for (int k = 0; k < 3; k++) known |= !strcmp(s, peft_init[k]);
        if (!known)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: \"prompt_tuning_init\" must be RANDOM, SAMPLE_VOCAB or TEXT",
                                 path);
    }
    return FINCH_OK;
}

static void prompt_write_config(const finch_peft *p, const finch_model *m, json_t *config) {
    const prompt_config *c = p->cfg;
    finch_prompt_learning_config(config, m, c->n_virtual, m->cfg.n_embd, m->cfg.n_head);
    json_object_set_new(config, "prompt_tuning_init", json_string(peft_init[c->init]));
    json_object_set_new(config, "prompt_tuning_init_text",
                        c->text[0] ? json_string(c->text) : json_null());
    json_object_set_new(config, "tokenizer_name_or_path",
                        c->init == PROMPT_TEXT ? json_string(m->cfg.name) : json_null());
    json_object_set_new(config, "tokenizer_kwargs", json_null());
}

static finch_status prompt_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const prompt_config *c = p->cfg;
    prompt_state *st = finch_calloc(1, sizeof *st, "prompt tuning", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    const int64_t shape[2] = {c->n_virtual, m->cfg.n_embd};
    return finch_params_add(&p->params, "prompt_embeddings", 2, shape, 0, true, &st->rows,
                            &st->drows, err);
}

static void prompt_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    const prompt_config *c = p->cfg;
    prompt_state *st = p->state;
    const int64_t K = c->n_virtual, C = m->cfg.n_embd, V = m->cfg.n_vocab;
    if (c->init == PROMPT_RANDOM) {
        for (int64_t i = 0; i < K * C; i++) st->rows[i] = finch_rng_normal(rng);
        return;
    }
    int32_t *ids = NULL;
    int64_t n = 0;
    if (c->init == PROMPT_TEXT &&
        (finch_tokenize(m->tok, c->text, strlen(c->text), FINCH_TOK_ADD_SPECIAL, &ids, &n, NULL) ||
         n == 0)) {
        finch_log(FINCH_LOG_WARN,
                  "prompt tuning: the init text gives no tokens; starting from random rows");
        free(ids);
        for (int64_t i = 0; i < K * C; i++) st->rows[i] = finch_rng_normal(rng);
        return;
    }
    for (int64_t k = 0; k < K; k++) {
        int64_t id = c->init == PROMPT_TEXT ? ids[k % n] : (int64_t)(finch_rng_u64(rng) % V);
        finch_weight_rows_f32(&m->tok_embd, id, 1, st->rows + k * C);
    }
    free(ids);
}

static void prompt_free_state(finch_peft *p) {
    free(p->state);
}

static finch_status prompt_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                  finch_err *err) {
    (void)max_tokens;
    const prompt_state *st = p->state;
    const finch_virtual v = {
        .n = ((const prompt_config *)p->cfg)->n_virtual, .embd = st->rows, .d_embd = st->drows};
    return finch_virtual_attach(m, &v, weight, "prompt tuning", err);
}

static void prompt_detach(finch_peft *p, finch_model *m) {
    (void)p;
    finch_virtual_detach(m);
}

const finch_method finch_method_prompt = {
    .name = "prompt",
    .description = "prompt tuning: trained embeddings before every input (Lester et al. 2021)",
    .opts = prompt_options,
    .n_opts = sizeof prompt_options / sizeof prompt_options[0],
    .config_size = sizeof(prompt_config),
    .peft_type = "PROMPT_TUNING",
    .layerless = true,
    .validate = prompt_validate,
    .check_file = prompt_check_file,
    .write_config = prompt_write_config,
    .create = prompt_create,
    .init = prompt_init,
    .attach = prompt_attach,
    .detach = prompt_detach,
    .free_state = prompt_free_state,
};
