/*
 * freeze.c: layer freezing: the blocks chosen with --layers (all by default) train in
 * full, optionally with the embeddings and the head; every other block stays frozen in
 * its stored type (weights.h).
 */
#include "peft/weights.h"

#include <stddef.h>

static const finch_method_option freeze_options[] = {
    {"train-embeddings", NULL, NULL, FINCH_OPT_BOOL, 0, 1, "false", NULL,
     offsetof(finch_weights_config, embeddings), "the token embeddings train too", NULL},
    {"train-head", NULL, NULL, FINCH_OPT_BOOL, 0, 1, "false", NULL,
     offsetof(finch_weights_config, head), "the final norm and the output head train too", NULL},
    {"save-type", NULL, NULL, FINCH_OPT_CHOICE, 0, 0, "f32", NULL,
     offsetof(finch_weights_config, save_type), "the tuned model.gguf's projections",
     FINCH_WEIGHTS_SAVE_TYPES},
};

const finch_method finch_method_freeze = {
    .name = "freeze",
    .description = "the blocks of --layers train in full, the rest stay frozen; writes the model",
    .opts = freeze_options,
    .n_opts = sizeof freeze_options / sizeof freeze_options[0],
    .config_size = sizeof(finch_weights_config),
    .peft_type = "FREEZE",
    .writes_model = true,
    .create = finch_weights_create,
    .init = finch_weights_init,
    .attach = finch_weights_attach,
    .detach = finch_weights_detach,
    .free_state = finch_weights_free_state,
    .save = finch_weights_save,
};
