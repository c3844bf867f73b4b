/*
 * bitfit.c: BitFit (Ben Zaken et al. 2022): only the biases train. A targeted projection
 * that has a bias (Qwen2's q, k, v) trains it from its value; one that has none (LLaMA,
 * SmolLM2) gets a zero-initialised bias, so the model starts unchanged. Saved under the
 * Hugging Face model's keys (model.layers.0.self_attn.q_proj.bias) with an
 * adapter_config.json of peft_type "BITFIT" (PEFT has no BitFit; FORMATS.md 2.1f).
 * Merging writes the biases into the model, which llama.cpp's llama architecture reads.
 */
#include "peft/method.h"

#include <stddef.h>
#include <stdlib.h>

typedef struct {
    uint32_t targets;
} bitfit_config;

static const finch_method_option bitfit_options[] = {
    {"target-modules", NULL, "target_modules", FINCH_OPT_TARGETS, 0, 0, "all-linear", "all-linear",
     offsetof(bitfit_config, targets), "projections whose biases train (added where missing)",
     NULL},
};

typedef struct {
    int layer;
    finch_target target;
    int64_t out;
    float *b, *db;      /* in the registry */
    const float *base;  /* the model's own bias, or NULL */
    const float *saved; /* the linear's bias pointer before attaching */
    float *eff;         /* base + w (b - base) when attached with w != 1, else NULL */
} bitfit_site;

typedef struct {
    int n_sites;
    bitfit_site *sites;
    float *scratch;
} bitfit;

static finch_status bitfit_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const bitfit_config *c = p->cfg;
    bitfit *st = finch_calloc(1, sizeof *st, "BitFit", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    st->sites = finch_calloc((size_t)m->cfg.n_layer * FINCH_TARGET_COUNT, sizeof *st->sites,
                             "BitFit sites", err);
    if (!st->sites) return FINCH_E_NOMEM;
    for (int ly = 0; ly < m->cfg.n_layer; ly++)
        for (int t = 0; t < FINCH_TARGET_COUNT; t++) {
            if (!(c->targets >> t & 1) || !finch_peft_layer(p, ly)) continue;
            const finch_linear *lin = finch_model_target((finch_model *)m, ly, (finch_target)t);
            bitfit_site *s = &st->sites[st->n_sites++];
            *s = (bitfit_site){
                .layer = ly, .target = (finch_target)t, .out = lin->w.rows, .base = lin->bias};
            char key[160], name[200];
            finch_target_key(key, sizeof key, ly, (finch_target)t, true);
            snprintf(name, sizeof name, "%s.bias", key);
            finch_status e =
                finch_params_add(&p->params, name, 1, &s->out,
                                 finch_target_heads(m, (finch_target)t), false, &s->b, &s->db, err);
            if (e) return e;
        }
    return FINCH_OK;
}

static void bitfit_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    (void)rng;
    bitfit *st = p->state;
    int added = 0;
    for (int i = 0; i < st->n_sites; i++) {
        bitfit_site *s = &st->sites[i];
        if (s->base)
            memcpy(s->b, s->base, (size_t)s->out * sizeof *s->b);
        else
            added++;
    }
    if (added)
        finch_log(FINCH_LOG_INFO,
                  "bitfit: %s has no bias on %d of the %d targeted projections: "
                  "adding zero-initialised biases there",
                  m->path, added, st->n_sites);
}

static void bitfit_free_state(finch_peft *p) {
    bitfit *st = p->state;
    if (!st) return;
    free(st->sites);
    free(st->scratch);
    free(st);
}

static finch_status bitfit_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                  finch_err *err) {
    (void)max_tokens;
    bitfit *st = p->state;
    if (weight != 1.0f) {
        size_t need = 0;
        for (int i = 0; i < st->n_sites; i++) need += (size_t)st->sites[i].out;
        free(st->scratch);
        if (!(st->scratch = finch_alloc(need * sizeof(float) + 1, "BitFit biases", err)))
            return FINCH_E_NOMEM;
    }
    float *e = st->scratch;
    for (int i = 0; i < st->n_sites; i++) {
        bitfit_site *s = &st->sites[i];
        finch_linear *lin = finch_model_target(m, s->layer, s->target);
        if (lin->dbias || lin->bias != s->base)
            return finch_err_set(err, FINCH_E_USAGE,
                                 "another method already changes the biases of "
                                 "layer %d's %s",
                                 s->layer, finch_target_peft_name(s->target));
        s->eff = NULL;
        if (weight != 1.0f) {
            s->eff = e;
            e += s->out;
            for (int64_t j = 0; j < s->out; j++) {
                float b0 = s->base ? s->base[j] : 0.0f;
                s->eff[j] = b0 + weight * (s->b[j] - b0);
            }
        }
        s->saved = lin->bias;
        lin->bias = s->eff ? s->eff : s->b;
        lin->dbias = s->eff ? NULL : s->db;
    }
    return FINCH_OK;
}

static void bitfit_detach(finch_peft *p, finch_model *m) {
    bitfit *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        finch_linear *lin = finch_model_target(m, st->sites[i].layer, st->sites[i].target);
        if (lin->bias != st->sites[i].b && lin->bias != st->sites[i].eff) continue;
        lin->bias = st->sites[i].saved;
        lin->dbias = NULL;
    }
}

/* The model's bias tensors take the trained values (w blends them with the base's). */
static bool bitfit_merge_row(const finch_peft *p, const finch_model *m, const char *gguf_name,
                             int64_t r, float *row, int64_t cols, float weight) {
    (void)m;
    (void)r;
    const bitfit *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        const bitfit_site *s = &st->sites[i];
        char b[96];
        snprintf(b, sizeof b, "blk.%d.%s.bias", s->layer, finch_target_gguf_name(s->target));
        if (strcmp(gguf_name, b)) continue;
        if (!row) return true;
        FINCH_ASSERT(cols == s->out);
        for (int64_t c = 0; c < cols; c++) row[c] += weight * (s->b[c] - row[c]);
        return true;
    }
    return false;
}

/* Biases the base model lacks: merging adds them as new f32 tensors. */
static int bitfit_new_tensors(const finch_peft *p, const finch_model *m, finch_new_tensor *out,
                              int cap) {
    (void)m;
    const bitfit *st = p->state;
    int n = 0;
    for (int i = 0; i < st->n_sites; i++) {
        const bitfit_site *s = &st->sites[i];
        if (s->base) continue;
        if (n < cap) {
            snprintf(out[n].name, sizeof out[n].name, "blk.%d.%s.bias", s->layer,
                     finch_target_gguf_name(s->target));
            out[n].n = s->out;
            out[n].data = s->b;
        }
        n++;
    }
    return n;
}

const finch_method finch_method_bitfit = {
    .name = "bitfit",
    .description = "biases only, added at zero where the model has none (Ben Zaken et al. 2022)",
    .opts = bitfit_options,
    .n_opts = sizeof bitfit_options / sizeof bitfit_options[0],
    .config_size = sizeof(bitfit_config),
    .peft_type = "BITFIT",
    .create = bitfit_create,
    .init = bitfit_init,
    .attach = bitfit_attach,
    .detach = bitfit_detach,
    .free_state = bitfit_free_state,
    .merge_row = bitfit_merge_row,
    .new_tensors = bitfit_new_tensors,
};
