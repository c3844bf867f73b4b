/*
 * weights.h: the model's own tensors made trainable, the site kind of full fine-tuning
 * and layer freezing. The chosen tensors get f32 master copies in the registry (made
 * from their stored type: a quantized base is dequantized to start), under the keys a
 * Hugging Face model names them by (model.layers.0.self_attn.q_proj.weight); attaching
 * points the model's linears, norms and embeddings at those copies and their gradients.
 * Everything not chosen stays frozen in its stored type.
 *
 * The result is a model: model.gguf (a GGUF base with the trained tensors replaced, in
 * --save-type; from a Hugging Face base, the GGUF llama.cpp's converter would write of the
 * tuned model, model/gguf_out.c) and a Hugging Face folder (config.json +
 * model.safetensors) beside it.
 */
#ifndef FINCH_WEIGHTS_H
#define FINCH_WEIGHTS_H

#include "peft/method.h"

/* The options full and freeze share (their tables point into this struct). */
typedef struct {
    bool embeddings; /* the token embeddings train */
    bool head;       /* the final norm and the output head train */
    int save_type;   /* index into FINCH_WEIGHTS_SAVE_TYPES */
} finch_weights_config;

#define FINCH_WEIGHTS_SAVE_TYPES "f32,f16,bf16,q8_0,q4_0,q4_1"

/* Registers the selected blocks' norms, projections and biases, and the embeddings and
 * head as the config says. */
finch_status finch_weights_create(finch_peft *p, const finch_model *m, finch_err *err);
/* Fills the master copies from the model (dequantized), and says so for a quantized base. */
void finch_weights_init(finch_peft *p, const finch_model *m, finch_rng *rng);
finch_status finch_weights_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                  finch_err *err);
void finch_weights_detach(finch_peft *p, finch_model *m);
void finch_weights_free_state(finch_peft *p);
/* Writes dir/model.gguf (from a Hugging Face base only when its tokenizer has a GGUF form:
 * a warning says why not), dir/model.safetensors and dir/config.json, and
 * dir/finch_method.json (the method and its options, for resuming and reading back). */
finch_status finch_weights_save(const finch_peft *p, const finch_model *m, const char *dir,
                                finch_err *err);

#endif /* FINCH_WEIGHTS_H */
