/*
 * targets.c: the projections methods target, by their PEFT and GGUF names.
 */
#include "peft/method.h"

static const char *const peft_names[FINCH_TARGET_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const char *const gguf_names[FINCH_TARGET_COUNT] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
static const char *const short_names[FINCH_TARGET_COUNT] = {"q",    "k",  "v",   "o",
                                                            "gate", "up", "down"};

const char *finch_target_peft_name(finch_target t) {
    return peft_names[t];
}
const char *finch_target_gguf_name(finch_target t) {
    return gguf_names[t];
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
        int found = -1;
        for (int t = 0; t < FINCH_TARGET_COUNT && found < 0; t++)
            if ((strlen(short_names[t]) == n && !strncmp(p, short_names[t], n)) ||
                (strlen(peft_names[t]) == n && !strncmp(p, peft_names[t], n)))
                found = t;
        if (found < 0)
            return finch_err_set(err, FINCH_E_USAGE,
                                 "target module '%.*s': use q, k, v, o, gate, up, down (or "
                                 "q_proj, ...), comma-separated, or all-linear",
                                 (int)n, p);
        m |= 1u << found;
        p += n;
        if (*p == ',') p++;
    }
    if (!m) return finch_err_set(err, FINCH_E_USAGE, "target modules: the list is empty");
    *mask = m;
    return FINCH_OK;
}

finch_linear *finch_model_target(finch_model *m, int l, finch_target t) {
    return finch_layer_linear(&m->layers[l], (int)t);
}

int finch_target_heads(const finch_model *m, finch_target t) {
    if (t == FINCH_TARGET_Q) return m->cfg.n_head;
    if (t == FINCH_TARGET_K) return m->cfg.n_head_kv;
    return 0;
}

void finch_target_key(char *buf, size_t n, int l, finch_target t, bool model_key) {
    snprintf(buf, n, "%smodel.layers.%d.%s.%s", model_key ? "" : "base_model.model.", l,
             t <= FINCH_TARGET_O ? "self_attn" : "mlp", peft_names[t]);
}
