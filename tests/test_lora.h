/*
 * test_lora.h: LoRA instances for tests that set and read A and B directly. Include after
 * cmocka.h.
 */
#ifndef FINCH_TEST_LORA_H
#define FINCH_TEST_LORA_H

#include <stdio.h>

#include "peft/lora.h"

#define LORA(p) ((finch_lora *)(p)->state)
#define LORA_CFG(p) ((finch_lora_config *)(p)->cfg)

/* A LoRA instance with cfg's options, made through the method table as finch train makes
 * it (rng NULL: parameters left zero). */
static inline finch_peft *lora_new(const finch_model *m, const finch_lora_config *cfg, finch_rng *rng,
                                   bool with_grads) {
    char r[16], alpha[32], dropout[32], targets[64] = "";
    static const char *const names[FINCH_TARGET_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
    snprintf(r, sizeof r, "%d", cfg->r);
    snprintf(alpha, sizeof alpha, "%.9g", (double)cfg->alpha);
    snprintf(dropout, sizeof dropout, "%.9g", (double)cfg->dropout);
    for (int t = 0; t < FINCH_TARGET_COUNT; t++)
        if (cfg->targets >> t & 1)
            snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s%s",
                     targets[0] ? "," : "", names[t]);
    finch_option opts[] = {{"lora-r", r},
                           {"lora-alpha", alpha},
                           {"lora-dropout", dropout},
                           {"target-modules", targets},
                           {"use-rslora", cfg->rslora ? "true" : "false"}};
    finch_peft *p = NULL;
    finch_err err = {0};
    if (finch_peft_new(m, "lora", opts, 5, rng, with_grads, &p, &err)) fail_msg("%s", err.msg);
    return p;
}

/* The site of (layer, target), or NULL. */
static inline finch_lora_site *lora_find(finch_peft *p, int layer, finch_target t) {
    finch_lora *l = LORA(p);
    for (int i = 0; i < l->n_sites; i++)
        if (l->sites[i].layer == layer && l->sites[i].target == t) return &l->sites[i];
    return NULL;
}

#endif /* FINCH_TEST_LORA_H */
