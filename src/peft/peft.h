/*
 * peft.h: the methods that adapt a loaded model (LoRA, DoRA, (IA)^3, BitFit, layer
 * freezing, full fine-tuning), behind one table (method.h). What the rest of finch sees is
 * an instance, finch_peft: created from a method name and options, attached to a model,
 * its trainable parameters in one registry (params.h), saved and loaded, merged.
 *
 * Facts: FORMATS.md 2.1 (PEFT config and key names), 4.4 (q/k rows), 6 (GGUF LoRA).
 */
#ifndef FINCH_PEFT_H
#define FINCH_PEFT_H

#include "core/core.h"
#include "model/model.h" /* finch_model, finch_layer, finch_linear */
#include "peft/params.h"

/* The projections methods target, in PEFT's names; the index of each in a block's
 * linears (finch_layer_linear). */
typedef enum {
    FINCH_TARGET_Q,    /* q_proj  (GGUF attn_q) */
    FINCH_TARGET_K,    /* k_proj  (attn_k) */
    FINCH_TARGET_V,    /* v_proj  (attn_v) */
    FINCH_TARGET_O,    /* o_proj  (attn_output) */
    FINCH_TARGET_GATE, /* gate_proj (ffn_gate) */
    FINCH_TARGET_UP,   /* up_proj   (ffn_up) */
    FINCH_TARGET_DOWN, /* down_proj (ffn_down) */
    FINCH_TARGET_COUNT
} finch_target;

/* "q_proj", ...; the GGUF tensor stem ("attn_q", ...). */
const char *finch_target_peft_name(finch_target t);
const char *finch_target_gguf_name(finch_target t);

/* Parses a comma-separated list of targets: q,k,v,o,gate,up,down (or the PEFT names
 * q_proj, ...), or "all-linear". FINCH_E_USAGE naming an unknown entry. */
finch_status finch_target_parse(const char *list, uint32_t *mask, finch_err *err);

/* The linear layer of block l that target t names (borrowed, inside the model). */
finch_linear *finch_model_target(finch_model *m, int l, finch_target t);

typedef struct finch_method finch_method;
typedef struct finch_peft finch_peft;

/* The method of this name, or NULL. */
const finch_method *finch_method_find(const char *name);

/* Creates an instance of the named method for model m with options (later ones of the
 * same name win; the rest keep their defaults): parses and checks them (errors name the
 * flag and the method), registers the parameters and, when rng is not NULL, initialises
 * them as the method does (else they stay zero, to be loaded). with_grads allocates the
 * gradient arena. */
finch_status finch_peft_new(const finch_model *m, const char *method, const finch_option *opts,
                            int n_opts, finch_rng *rng, bool with_grads, finch_peft **out,
                            finch_err *err);
void finch_peft_free(finch_peft *p);

/* Attaches the instance to the model's sites with a weight on its contribution (1 for a
 * single adapter; LoRA-style adapters combine by attaching several), for calls of up to
 * max_tokens rows; or detaches it. The instance must outlive its attachment. */
finch_status finch_peft_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                               finch_err *err);
void finch_peft_detach(finch_peft *p, finch_model *m);

/* Its trainable parameters (borrowed). */
finch_params *finch_peft_params(const finch_peft *p);
/* Its method's name, and whether its result is a whole model rather than an adapter. */
const char *finch_peft_method(const finch_peft *p);
bool finch_peft_writes_model(const finch_peft *p);

/* Writes the result into dir (created): for adapters adapter_config.json (the method's
 * options under PEFT's keys, sorted) and adapter_model.safetensors (every parameter under
 * its name, q/k rows in Hugging Face order), the config last and each file atomically, so
 * a folder with a config has its weights; a model for full fine-tuning and freezing. */
finch_status finch_peft_save(const finch_peft *p, const finch_model *m, const char *dir,
                             finch_err *err);

/* Loads an adapter folder made for model m (without gradients): adapter_config.json's
 * peft_type (and fields such as use_dora) chooses the method, its fields give the options
 * (fields finch does not implement are FINCH_E_UNSUPPORTED, unknown ones ignored as PEFT
 * does), and every tensor must be present with this model's shape and nothing else.
 * Errors name the file and the field or tensor. */
finch_status finch_peft_load(const char *dir, const finch_model *m, finch_peft **out,
                             finch_err *err);

/* Writes the GGUF adapter llama.cpp loads with --lora (FINCH_E_UNSUPPORTED for a method
 * llama.cpp has no adapter format for). */
finch_status finch_peft_save_gguf(const finch_peft *p, const finch_model *m, const char *path,
                                  finch_err *err);

/* Merging: whether the method merges exactly, and the merged row r (cols f32 values) of
 * the base tensor gguf_name, changed in place; false when the instance leaves it as is
 * (row NULL only asks). */
bool finch_peft_can_merge(const finch_peft *p);
bool finch_peft_merge_row(const finch_peft *p, const finch_model *m, const char *gguf_name,
                          int64_t r, float *row, int64_t cols, float weight);

/* A tensor merging adds to a model that lacks it (BitFit's biases): its GGUF name, length
 * and f32 values (borrowed from the instance). */
typedef struct {
    char name[96];
    int64_t n;
    const float *data;
} finch_new_tensor;

/* The tensors merging adds, up to cap into out; returns how many there are. */
int finch_peft_new_tensors(const finch_peft *p, const finch_model *m, finch_new_tensor *out,
                           int cap);

/* The instance inside a public adapter handle (borrowed). */
finch_peft *finch_adapter_peft(finch_adapter *a);

#endif /* FINCH_PEFT_H */
