/*
 * method.h: the method table. A method is one file in src/peft/ that fills a finch_method
 * and one row in the table (method.c). It provides:
 *
 *   options      a table of its options: flag name, PEFT config key, type, range,
 *                default, where the value lives in its config struct. One table serves
 *                flags, --config, adapter_config.json in and out, and --help.
 *   create       registers its parameters (params.h) and builds its per-site state;
 *   init         gives the parameters their starting values (after the arena exists);
 *   attach       puts its operations on the model's sites (linear.h attachments, trainable
 *                biases, norm weights, whole weights), detach takes them off;
 *   save / load  adapter_config.json + adapter_model.safetensors by default (the
 *                registry's names are the keys), or the method's own writer;
 *   merge_row    its exact effect on one row of a base weight, where there is one.
 *
 * Nothing outside src/peft/ names a method: the training loop, checkpoints, merging and
 * the public adapter handle work through finch_peft (peft.h).
 */
#ifndef FINCH_METHOD_H
#define FINCH_METHOD_H

#include <jansson.h>

#include "peft/peft.h"

typedef enum {
    FINCH_OPT_INT,     /* int */
    FINCH_OPT_FLOAT,   /* float */
    FINCH_OPT_BOOL,    /* bool, a switch on the command line */
    FINCH_OPT_TARGETS, /* uint32_t mask of finch_target; a list of PEFT names in the config */
    FINCH_OPT_CHOICE,  /* int: the index of the value in choices */
    FINCH_OPT_STRING,  /* char[hi]: text of fewer than hi bytes */
} finch_opt_type;

typedef struct {
    const char *name;     /* the flag without "--": "lora-r" */
    const char *alias;    /* another accepted name ("r"), or NULL */
    const char *peft_key; /* its key in adapter_config.json, or NULL: not saved */
    finch_opt_type type;
    double lo, hi;        /* inclusive range of INT and FLOAT values */
    const char *def;      /* the default, as a flag value */
    const char *peft_def; /* the default when a config file lacks the key (PEFT's), or NULL:
                             def */
    size_t offset;        /* where the value lives in the method's config struct */
    const char *help;     /* "rank" */
    const char *choices;  /* CHOICE: the values, comma-separated */
} finch_method_option;

struct finch_method {
    const char *name; /* "lora" */
    const char *description;
    const finch_method_option *opts;
    int n_opts;
    size_t config_size;       /* the method's config struct */
    const char *peft_type;    /* adapter_config.json's "peft_type" */
    bool writes_model;        /* its result is a model (full, freeze), not an adapter */
    bool layerless;           /* acts before the blocks (prompt, prefix): --layers does not apply */
    bool device;              /* trains on a device backend: its operations go through the
                                 backend alone, its scratch is in the backend's memory */
    const char *weights_file; /* its adapter folder's weights; NULL: adapter_model.safetensors */
    /* Whether a config of this peft_type is this method's (LORA with use_dora is DoRA's);
     * NULL: every config of the type. */
    bool (*claims)(const json_t *config);
    /* Rules across options and the model, after every option is parsed; may be NULL. */
    finch_status (*validate)(const finch_peft *p, const finch_model *m, finch_err *err);
    /* Fields of adapter_config.json beyond the options: check_file refuses values finch
     * does not implement, write_config adds the fixed ones PEFT writes. May be NULL. */
    finch_status (*check_file)(const json_t *config, const char *path, finch_err *err);
    /* Options (and --layers) from a config file in the method's own format, in place of
     * the option table's PEFT keys; may be NULL. */
    finch_status (*read_config)(finch_peft *p, const finch_model *m, const json_t *config,
                                const char *path, finch_err *err);
    void (*write_config)(const finch_peft *p, const finch_model *m, json_t *config);
    finch_status (*create)(finch_peft *p, const finch_model *m, finch_err *err);
    void (*init)(finch_peft *p, const finch_model *m, finch_rng *rng);
    finch_status (*attach)(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                           finch_err *err);
    void (*detach)(finch_peft *p, finch_model *m);
    void (*free_state)(finch_peft *p);
    /* The tensors the default writer saves, when they are not the registry's (prefix
     * tuning's projection saves its output table); may be NULL. */
    const finch_params *(*saved)(finch_peft *p, const finch_model *m);
    /* Replaces the default adapter writer (full, freeze write models); may be NULL. */
    finch_status (*save)(const finch_peft *p, const finch_model *m, const char *dir,
                         finch_err *err);
    /* Row r (cols values, f32) of the base tensor named gguf_name, changed in place as
     * merging the method with this weight changes it; false when the method does not
     * touch that tensor. row NULL only asks whether it does. NULL: no exact merge. */
    bool (*merge_row)(const finch_peft *p, const finch_model *m, const char *gguf_name, int64_t r,
                      float *row, int64_t cols, float weight);
    /* Tensors merging adds (up to cap into out); returns how many. May be NULL. */
    int (*new_tensors)(const finch_peft *p, const finch_model *m, finch_new_tensor *out, int cap);
    /* The GGUF adapter llama.cpp loads with --lora; NULL when llama.cpp has none. */
    finch_status (*save_gguf)(const finch_peft *p, const finch_model *m, const char *path,
                              finch_err *err);
};

/* An instance: a method with its options for one model, its parameters and state. */
struct finch_peft {
    const finch_method *method;
    void *cfg;           /* the method's config struct, options parsed */
    uint64_t layers[4];  /* --layers: the blocks it acts on, bit l (all by default) */
    bool all_layers;     /* no --layers given */
    finch_params params; /* what trains */
    void *state;         /* the method's per-site state */
    bool attached;
};

/* Whether block l is selected (--layers). */
static inline bool finch_peft_layer(const finch_peft *p, int l) {
    return l >= 0 && l < 256 && (p->layers[l >> 6] >> (l & 63) & 1);
}

/* The rows of the projection t of the model permuted against Hugging Face's: its head
 * count for q and k, else 0 (params.h). */
int finch_target_heads(const finch_model *m, finch_target t);

/* The key of a projection of m in PEFT files, "base_model.model.model.layers.{l}.{self_attn|
 * mlp}.{name}", or with model_key as a Hugging Face model names it, "model.layers.{l}...";
 * GPT-2: "transformer.h.{l}.attn.c_attn" (q, k and v alike), ".attn.c_proj", ".mlp.c_fc",
 * ".mlp.c_proj" (targets.c). */
void finch_target_key(char *buf, size_t n, const finch_model *m, int l, finch_target t,
                      bool model_key);

/* The targets a name selects (a short name, a PEFT name, or a GPT-2 module name, which may
 * select several), the name being name[0..n); 0 when unknown. */
uint32_t finch_target_lookup(const char *name, size_t n);

/* Fits a target mask to the model: on a family with fused q/k/v any of q, k, v selects the
 * fused module (all three); projections the family lacks (GPT-2's gate) are dropped;
 * FINCH_E_USAGE when nothing is left. */
finch_status finch_targets_check(const finch_model *m, uint32_t *mask, finch_err *err);

/* Whether the model has the projection t (GPT-2 has no gate). */
bool finch_target_present(const finch_model *m, finch_target t);

/* Which part of its file module target t is: 0 for the module itself or the first part (q
 * of a fused q/k/v), 1 and 2 for k and v of a fused one, whose rows are then the module's
 * rows t * (its linear's rows) on; *rows receives the module's rows (3x the linear's for a
 * fused one). */
int finch_target_part(const finch_model *m, finch_target t, int64_t *rows);

/* The names target_modules lists for mask on model m (NULL: LLaMA's names), into names
 * (FINCH_TARGET_COUNT entries), *n of them, unsorted. */
void finch_targets_json(const finch_model *m, uint32_t mask, const char **names, int *n);

/* Prompt learning (prompt.c, prefix.c): PEFT's PromptLearningConfig fields for virtual
 * tokens of token_dim values over heads heads; the virtual tokens v put on the model
 * (weight 1 only: they do not combine). */
void finch_prompt_learning_config(json_t *config, const finch_model *m, int n_virtual,
                                  int token_dim, int heads);
finch_status finch_prompt_learning_check(const json_t *config, const char *path, finch_err *err);
finch_status finch_virtual_attach(finch_model *m, const finch_virtual *v, float weight,
                                  const char *method, finch_err *err);
void finch_virtual_detach(finch_model *m);

#endif /* FINCH_METHOD_H */
