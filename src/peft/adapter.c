/*
 * adapter.c: the public face of adapters (finch_adapter_*): an adapter of any method
 * loaded from its folder, attached to or detached from a model.
 */
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>

struct finch_adapter {
    finch_peft *peft;
};

finch_status finch_adapter_load(const finch_model *m, const char *dir, finch_adapter **out,
                                finch_err *err) {
    finch_adapter *a = finch_calloc(1, sizeof *a, "adapter", err);
    if (!a) return FINCH_E_NOMEM;
    finch_status st = finch_peft_load(dir, m, &a->peft, err);
    if (st) {
        free(a);
        return st;
    }
    *out = a;
    return FINCH_OK;
}

void finch_adapter_free(finch_adapter *a) {
    if (!a) return;
    finch_peft_free(a->peft);
    free(a);
}

finch_status finch_adapter_attach(finch_model *m, finch_adapter *a, float weight, finch_err *err) {
    if (!isfinite(weight))
        return finch_err_set(err, FINCH_E_USAGE, "adapter weight %g is not finite", weight);
    finch_status st = finch_peft_attach(a->peft, m, weight, FINCH_INFER_CHUNK, err);
    /* on a device (finch_peft_load refused the methods that do not run there), its
     * parameters go there too (params.h) */
    if (!st && m->be->device && (st = finch_params_place(finch_peft_params(a->peft), m->be, err)))
        finch_peft_detach(a->peft, m);
    return st;
}

void finch_adapter_detach(finch_model *m, finch_adapter *a) {
    finch_params_unplace(finch_peft_params(a->peft));
    finch_peft_detach(a->peft, m);
}

finch_status finch_adapter_export_gguf(const finch_model *m, const finch_adapter *a,
                                       const char *path, finch_err *err) {
    return finch_peft_save_gguf(a->peft, m, path, err);
}

finch_peft *finch_adapter_peft(finch_adapter *a) {
    return a->peft;
}
