/*
 * bitfit.c: BitFit (Ben Zaken et al. 2022): only the biases train. A targeted projection
 * that has a bias (Qwen2's q, k, v) trains it from its value; one that has none (LLaMA,
 * SmolLM2) gets a zero-initialised bias, so the model starts unchanged. Saved under the
 * Hugging Face model's keys (model.layers.0.self_attn.q_proj.bias) with an
 * adapter_config.json of peft_type "BITFIT" (PEFT has no BitFit; FORMATS.md 2.1f).
 * Merging writes the biases into the model, which llama.cpp's llama architecture reads.
 *
 * On GPT-2 (LayerNorm families) BitFit is the paper's setting: every bias of the model,
 * each linear's (c_attn's as one tensor whose q, k and v thirds the three split linears
 * use) and each LayerNorm's (ln_1, ln_2, ln_f), under transformers' names
 * (transformer.h.0.attn.c_attn.bias, transformer.h.0.ln_1.bias, transformer.ln_f.bias).
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

/* A bias that trains: a linear's (target >= 0) or, on LayerNorm families, a norm's
 * (norm: 1 attention, 2 FFN, 3 final). bias and dbias point at the model's slots. */
typedef struct {
    int layer;
    int target; /* finch_target, or -1 for a norm */
    int norm;
    int part; /* GPT-2's c_attn: 0 q (owns the registered 3 C rows), 1 k, 2 v (views) */
    int64_t out;
    const float **bias; /* the model's slot */
    float **dbias;
    float *b, *db;      /* in the registry */
    const float *base;  /* the model's own bias, or NULL */
    const float *saved; /* the slot's value before attaching */
    float *eff;         /* base + w (b - base) when attached with w != 1, else NULL */
} bitfit_site;

typedef struct {
    int n_sites;
    bitfit_site *sites;
    float *scratch;
} bitfit;

/* Registers site s under name (rows: the registered length, s->out or a fused module's). */
static finch_status add_site(finch_peft *p, bitfit *st, bitfit_site s, const char *name,
                             int64_t rows, int heads, finch_err *err) {
    bitfit_site *d = &st->sites[st->n_sites++];
    *d = s;
    d->base = *s.bias;
    if (s.part) return finch_params_add_view(&p->params, name, s.part * s.out, &d->b, &d->db, err);
    return finch_params_add(&p->params, name, 1, &rows, heads, false, &d->b, &d->db, err);
}

static finch_status bitfit_create(finch_peft *p, const finch_model *m, finch_err *err) {
    const bitfit_config *c = p->cfg;
    uint32_t targets = c->targets;
    finch_status e = finch_targets_check(m, &targets, err);
    if (e) return e;
    bitfit *st = finch_calloc(1, sizeof *st, "BitFit", err);
    if (!st) return FINCH_E_NOMEM;
    p->state = st;
    st->sites = finch_calloc((size_t)m->cfg.n_layer * (FINCH_TARGET_COUNT + 2) + 1,
                             sizeof *st->sites, "BitFit sites", err);
    if (!st->sites) return FINCH_E_NOMEM;
    finch_model *mm = (finch_model *)m; /* the slots are only recorded here */
    const bool ln = m->arch->layer_norm;
    char key[160], name[200];
    for (int ly = 0; ly < m->cfg.n_layer && !e; ly++) {
        if (!finch_peft_layer(p, ly)) continue;
        finch_layer *L = &mm->layers[ly];
        for (int t = 0; t < FINCH_TARGET_COUNT && !e; t++) {
            if (!(targets >> t & 1)) continue;
            finch_linear *lin = finch_model_target(mm, ly, (finch_target)t);
            int64_t rows;
            const int part = finch_target_part(m, (finch_target)t, &rows);
            finch_target_key(key, sizeof key, m, ly, (finch_target)t, true);
            snprintf(name, sizeof name, "%s.bias", key);
            e = add_site(p, st,
                         (bitfit_site){.layer = ly,
                                       .target = t,
                                       .part = part,
                                       .out = lin->w.rows,
                                       .bias = &lin->bias,
                                       .dbias = &lin->dbias},
                         name, rows, finch_target_heads(m, (finch_target)t), err);
        }
        /* LayerNorm biases train too: BitFit's setting is every bias of the model */
        for (int k = 1; k <= 2 && ln && !e; k++) {
            snprintf(name, sizeof name, "transformer.h.%d.ln_%d.bias", ly, k);
            e = add_site(p, st,
                         (bitfit_site){.layer = ly,
                                       .target = -1,
                                       .norm = k,
                                       .out = m->cfg.n_embd,
                                       .bias = k == 1 ? &L->attn_norm_b : &L->ffn_norm_b,
                                       .dbias = k == 1 ? &L->d_attn_norm_b : &L->d_ffn_norm_b},
                         name, m->cfg.n_embd, 0, err);
        }
    }
    if (!e && ln && p->all_layers)
        e = add_site(p, st,
                     (bitfit_site){.layer = -1,
                                   .target = -1,
                                   .norm = 3,
                                   .out = m->cfg.n_embd,
                                   .bias = &mm->output_norm_b,
                                   .dbias = &mm->d_output_norm_b},
                     "transformer.ln_f.bias", m->cfg.n_embd, 0, err);
    return e;
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

static const char *site_name(const bitfit_site *s) {
    static const char *const norms[] = {"", "attn_norm", "ffn_norm", "output_norm"};
    return s->target >= 0 ? finch_target_peft_name((finch_target)s->target) : norms[s->norm];
}

static finch_status bitfit_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                  finch_err *err) {
    (void)max_tokens;
    (void)m;
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
        if (*s->dbias || *s->bias != s->base)
            return finch_err_set(err, FINCH_E_USAGE,
                                 "another method already changes the biases of "
                                 "layer %d's %s",
                                 s->layer, site_name(s));
        s->eff = NULL;
        if (weight != 1.0f) {
            s->eff = e;
            e += s->out;
            for (int64_t j = 0; j < s->out; j++) {
                float b0 = s->base ? s->base[j] : 0.0f;
                s->eff[j] = b0 + weight * (s->b[j] - b0);
            }
        }
        s->saved = *s->bias;
        *s->bias = s->eff ? s->eff : s->b;
        *s->dbias = s->eff ? NULL : s->db;
    }
    return FINCH_OK;
}

static void bitfit_detach(finch_peft *p, finch_model *m) {
    (void)m;
    bitfit *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        bitfit_site *s = &st->sites[i];
        if (*s->bias != s->b && *s->bias != s->eff) continue;
        *s->bias = s->saved;
        *s->dbias = NULL;
    }
}

/* The GGUF name of the bias tensor a site trains, and its length there (GPT-2's q site
 * stands for the whole attn_qkv bias); false for the k and v parts of a fused one. */
static bool gguf_bias(const finch_model *m, const bitfit_site *s, char *buf, size_t n,
                      int64_t *len) {
    static const char *const norms[] = {"", "attn_norm", "ffn_norm"};
    *len = s->out;
    if (s->part) return false;
    if (s->norm == 3)
        snprintf(buf, n, "output_norm.bias");
    else if (s->norm)
        snprintf(buf, n, "blk.%d.%s.bias", s->layer, norms[s->norm]);
    else if (m->arch->fused_qkv && s->target == FINCH_TARGET_Q)
        snprintf(buf, n, "blk.%d.attn_qkv.bias", s->layer), *len = 3 * s->out;
    else
        snprintf(buf, n, "blk.%d.%s.bias", s->layer,
                 finch_target_gguf_name((finch_target)s->target));
    return true;
}

/* The model's bias tensors take the trained values (w blends them with the base's). */
static bool bitfit_merge_row(const finch_peft *p, const finch_model *m, const char *gguf_name,
                             int64_t r, float *row, int64_t cols, float weight) {
    (void)r;
    const bitfit *st = p->state;
    for (int i = 0; i < st->n_sites; i++) {
        const bitfit_site *s = &st->sites[i];
        char b[96];
        int64_t len;
        if (!gguf_bias(m, s, b, sizeof b, &len) || strcmp(gguf_name, b)) continue;
        if (!row) return true;
        FINCH_ASSERT(cols == len);
        for (int64_t c = 0; c < cols; c++) row[c] += weight * (s->b[c] - row[c]);
        return true;
    }
    return false;
}

/* Biases the base model lacks: merging adds them as new f32 tensors. */
static int bitfit_new_tensors(const finch_peft *p, const finch_model *m, finch_new_tensor *out,
                              int cap) {
    const bitfit *st = p->state;
    int n = 0;
    for (int i = 0; i < st->n_sites; i++) {
        const bitfit_site *s = &st->sites[i];
        int64_t len;
        char b[96];
        if (s->base || !gguf_bias(m, s, b, sizeof b, &len)) continue;
        if (n < cap) {
            snprintf(out[n].name, sizeof out[n].name, "%s", b);
            out[n].n = len;
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
