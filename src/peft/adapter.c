/*
 * adapter.c: the public face of adapters (finch_adapter_*): a LoRA adapter loaded from a
 * PEFT folder, attached to or detached from a model's linears.
 */
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>

/* The largest number of rows one forward call passes to a linear at inference: a
 * session's batch (generate/session.c processes prompts in chunks of 512). */
enum { MAX_TOKENS = 512 };

struct finch_adapter {
    finch_lora *lora;
    bool attached;
};

finch_status finch_adapter_load(const finch_model *m, const char *dir, finch_adapter **out,
                                finch_err *err) {
    finch_adapter *a = finch_calloc(1, sizeof *a, "adapter", err);
    if (!a) return FINCH_E_NOMEM;
    finch_status st = finch_lora_load_peft(dir, m, &a->lora, err);
    if (st) {
        free(a);
        return st;
    }
    *out = a;
    return FINCH_OK;
}

void finch_adapter_free(finch_adapter *a) {
    if (!a) return;
    finch_lora_free(a->lora);
    free(a);
}

finch_status finch_adapter_attach(finch_model *m, finch_adapter *a, float weight, finch_err *err) {
    if (a->attached) return finch_err_set(err, FINCH_E_USAGE, "the adapter is already attached");
    if (!isfinite(weight)) return finch_err_set(err, FINCH_E_USAGE, "adapter weight %g is not finite", weight);
    finch_status st = finch_lora_attach(a->lora, m, weight, MAX_TOKENS, err);
    if (!st) a->attached = true;
    return st;
}

void finch_adapter_detach(finch_model *m, finch_adapter *a) {
    if (!a->attached) return;
    finch_lora_detach(a->lora, m);
    a->attached = false;
}

finch_status finch_adapter_export_gguf(const finch_model *m, const finch_adapter *a,
                                       const char *path, finch_err *err) {
    return finch_lora_save_gguf(a->lora, m, path, err);
}

finch_lora *finch_adapter_lora(finch_adapter *a) { return a->lora; }
