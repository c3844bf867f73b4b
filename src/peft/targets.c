/*
 * targets.c: the projections methods target, by their PEFT and GGUF names, per family.
 *
 * LLaMA-family models name each projection (q_proj ... down_proj). GPT-2 (transformers'
 * GPT2 modules) has four: attn.c_attn holds q, k and v as row blocks of one Conv1D (finch
 * splits it into three linears at load), attn.c_proj is o, mlp.c_fc is up, mlp.c_proj is
 * down; there is no gate. PEFT matches target_modules by the last part of a module's name,
 * so "c_proj" selects both c_proj modules. A method on a fused module registers one tensor
 * under its name for the q target and gives the k and v linears views of it
 * (finch_target_part): row blocks of the tensors whose rows are the module's outputs, the
 * same tensor where they run over its input (LoRA's A).
 */
#include "peft/method.h"

static const char *const peft_names[FINCH_TARGET_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const char *const short_names[FINCH_TARGET_COUNT] = {"q",    "k",  "v",   "o",
                                                            "gate", "up", "down"};
enum { QKV = 1u << FINCH_TARGET_Q | 1u << FINCH_TARGET_K | 1u << FINCH_TARGET_V };

/* GPT-2's module names (PEFT's), and the targets each selects. */
static const struct {
    const char *name;
    uint32_t mask;
} gpt2_names[] = {{"c_attn", QKV},
                  {"c_proj", 1u << FINCH_TARGET_O | 1u << FINCH_TARGET_DOWN},
                  {"attn.c_proj", 1u << FINCH_TARGET_O},
                  {"mlp.c_proj", 1u << FINCH_TARGET_DOWN},
                  {"c_fc", 1u << FINCH_TARGET_UP}};

const char *finch_target_peft_name(finch_target t) {
    return peft_names[t];
}
const char *finch_target_gguf_name(finch_target t) {
    return finch_linear_gguf_stem((int)t); /* the targets are the block's linears, in order */
}

uint32_t finch_target_lookup(const char *name, size_t n) {
    for (int t = 0; t < FINCH_TARGET_COUNT; t++)
        if ((strlen(short_names[t]) == n && !strncmp(name, short_names[t], n)) ||
            (strlen(peft_names[t]) == n && !strncmp(name, peft_names[t], n)))
            return 1u << t;
    for (size_t i = 0; i < sizeof gpt2_names / sizeof gpt2_names[0]; i++)
        if (strlen(gpt2_names[i].name) == n && !strncmp(name, gpt2_names[i].name, n))
            return gpt2_names[i].mask;
    return 0;
}

finch_status finch_target_parse(const char *list, uint32_t *mask, finch_err *err) {
    uint32_t m = 0;
    const char *p = list;
    if (!strcmp(list, "all-linear")) {
        *mask = (1u << FINCH_TARGET_COUNT) - 1;
        return FINCH_OK;
    }
    while (*p) {
        size_t n = strcspn(p, ",");
        uint32_t bits = finch_target_lookup(p, n);
        if (!bits)
            return finch_err_set(err, FINCH_E_USAGE,
                                 "target module '%.*s': use q, k, v, o, gate, up, down (or "
                                 "q_proj, ...; GPT-2: c_attn, c_proj, c_fc, attn.c_proj, "
                                 "mlp.c_proj), comma-separated, or all-linear",
                                 (int)n, p);
        m |= bits;
        p += n;
        if (*p == ',') p++;
    }
    if (!m) return finch_err_set(err, FINCH_E_USAGE, "target modules: the list is empty");
    *mask = m;
    return FINCH_OK;
}

finch_status finch_targets_check(const finch_model *m, uint32_t *mask, finch_err *err) {
    uint32_t k = *mask;
    if (m->arch->fused_qkv && (k & QKV)) k |= QKV; /* q, k or v select c_attn: all three */
    for (int t = 0; t < FINCH_TARGET_COUNT; t++)
        if (!finch_target_present(m, (finch_target)t)) k &= ~(1u << t);
    if (!k)
        return finch_err_set(err, FINCH_E_USAGE,
                             "target modules: none of them is a projection of this %s model",
                             m->cfg.arch);
    *mask = k;
    return FINCH_OK;
}

bool finch_target_present(const finch_model *m, finch_target t) {
    return finch_model_target((finch_model *)m, 0, t)->w.data != NULL;
}

int finch_target_part(const finch_model *m, finch_target t, int64_t *rows) {
    const finch_linear *lin = finch_model_target((finch_model *)m, 0, t);
    *rows = lin->w.rows;
    if (!m->arch->fused_qkv || t > FINCH_TARGET_V) return 0;
    *rows = 3 * lin->w.rows;
    return (int)t;
}

void finch_targets_json(const finch_model *m, uint32_t mask, const char **names, int *n) {
    *n = 0;
    if (m && m->arch->fused_qkv) {
        /* the fewest GPT-2 names that select exactly mask */
        uint32_t left = mask & ~(1u << FINCH_TARGET_GATE);
        for (size_t i = 0; i < sizeof gpt2_names / sizeof gpt2_names[0]; i++)
            if ((left & gpt2_names[i].mask) == gpt2_names[i].mask && gpt2_names[i].mask) {
                names[(*n)++] = gpt2_names[i].name;
                left &= ~gpt2_names[i].mask;
            }
        return;
    }
    for (int t = 0; t < FINCH_TARGET_COUNT; t++)
        if (mask >> t & 1) names[(*n)++] = peft_names[t];
}

finch_linear *finch_model_target(finch_model *m, int l, finch_target t) {
    return finch_layer_linear(&m->layers[l], (int)t);
}

int finch_target_heads(const finch_model *m, finch_target t) {
    if (m->arch->learned_pos) return 0; /* no RoPE: rows are never permuted */
    if (t == FINCH_TARGET_Q) return m->cfg.n_head;
    if (t == FINCH_TARGET_K) return m->cfg.n_head_kv;
    return 0;
}

void finch_target_key(char *buf, size_t n, const finch_model *m, int l, finch_target t,
                      bool model_key) {
    const char *pre = model_key ? "" : "base_model.model.";
    if (m->arch->fused_qkv) {
        static const char *const gpt2[FINCH_TARGET_COUNT] = {
            "attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj",
            "mlp.gate",    "mlp.c_fc",    "mlp.c_proj"};
        snprintf(buf, n, "%stransformer.h.%d.%s", pre, l, gpt2[t]);
        return;
    }
    snprintf(buf, n, "%smodel.layers.%d.%s.%s", pre, l, t <= FINCH_TARGET_O ? "self_attn" : "mlp",
             peft_names[t]);
}
