/*
 * full.c: full fine-tuning: every weight of the model trains (embeddings, norms,
 * projections, biases, the head), from f32 master copies (weights.h).
 */
#include "peft/weights.h"

#include <stddef.h>

static const finch_method_option full_options[] = {
    {"save-type", NULL, NULL, FINCH_OPT_CHOICE, 0, 0, "f32", NULL,
     offsetof(finch_weights_config, save_type), "the tuned model.gguf's projections",
     FINCH_WEIGHTS_SAVE_TYPES},
};

static finch_status full_validate(const finch_peft *p, const finch_model *m, finch_err *err) {
    (void)m;
    if (!p->all_layers)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--layers: full fine-tuning trains every block; "
                             "use --method freeze to train some");
    finch_weights_config *c = p->cfg;
    c->embeddings = c->head = true;
    return FINCH_OK;
}

const finch_method finch_method_full = {
    .name = "full",
    .description = "every weight trains, from f32 master copies; writes the model",
    .opts = full_options,
    .n_opts = sizeof full_options / sizeof full_options[0],
    .config_size = sizeof(finch_weights_config),
    .peft_type = "FULL",
    .writes_model = true,
    .validate = full_validate,
    .create = finch_weights_create,
    .init = finch_weights_init,
    .attach = finch_weights_attach,
    .detach = finch_weights_detach,
    .free_state = finch_weights_free_state,
    .save = finch_weights_save,
};
