/*
 * peft.h: parameter-efficient methods attached to a loaded model. LoRA first:
 *
 *   y = x W^T + s (dropout(x) A^T) B^T,   A (r, in), B (out, r),  s = alpha / r
 *   (rsLoRA: s = alpha / sqrt(r)); A starts Kaiming-uniform as PEFT does, B at zero.
 *
 * The adapter's matrices live in one f32 arena (finch_lora.params) so the optimizer,
 * clipping and checkpoints see one flat array; gradients have the same layout in
 * finch_lora.grads. Row order: finch keeps the model in GGUF order, where the rows of
 * q and k are permuted against Hugging Face's (FORMATS.md 4), so the B of q and k is in
 * GGUF row order here; PEFT files store it in HF order and the adapter I/O converts.
 *
 * Facts: FORMATS.md 2.1 (PEFT config and key names), 4.4 (B rows of q/k), 6 (GGUF LoRA).
 */
#ifndef FINCH_PEFT_H
#define FINCH_PEFT_H

#include "core/core.h"
#include "model/model.h" /* finch_model, finch_layer, finch_linear */

/* The projections LoRA can target, in PEFT's names. */
typedef enum {
    FINCH_TARGET_Q, /* q_proj  (GGUF attn_q) */
    FINCH_TARGET_K, /* k_proj  (attn_k) */
    FINCH_TARGET_V, /* v_proj  (attn_v) */
    FINCH_TARGET_O, /* o_proj  (attn_output) */
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

typedef struct {
    int r;            /* rank, 1..4096 */
    float alpha;      /* scale numerator */
    bool rslora;      /* scale alpha / sqrt(r) instead of alpha / r */
    float dropout;    /* probability of zeroing an element of the LoRA input (training) */
    uint32_t targets; /* bit t set: target t in every layer */
} finch_lora_config;

/* One adapted projection: views into the adapter's arena. */
typedef struct {
    int layer;
    finch_target target;
    int64_t in, out;      /* the base weight's columns and rows */
    int r;
    float scale;          /* the adapter's scale */
    float dropout;        /* the adapter's dropout probability */
    float *A, *B;         /* (r, in), (out, r) */
    float *dA, *dB;       /* their gradients (same shapes), or NULL when not training */
    float *u, *du;        /* scratch (max_tokens, r) each: x A^T and its gradient */
    float *xd;            /* scratch (max_tokens, in): the dropped-out input, when dropout > 0 */
    int64_t max_tokens;
} finch_lora_site;

typedef struct {
    finch_lora_config cfg;
    float scale;          /* alpha / r or alpha / sqrt(r) */
    int n_sites;
    finch_lora_site *sites;
    float *params;        /* all A and B, site after site, A before B */
    float *grads;         /* same layout, or NULL */
    int64_t n_params;
    float *scratch;       /* the sites' u, du, xd */
} finch_lora;

/* Creates LoRA matrices for every targeted projection of the model: A drawn from
 * U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform_(a=sqrt(5)) on an (r, in) matrix)
 * with rng, B zero. with_grads allocates the gradient arena. */
finch_status finch_lora_new(const finch_model *m, const finch_lora_config *cfg, finch_rng *rng,
                            bool with_grads, finch_lora **out, finch_err *err);
void finch_lora_free(finch_lora *l);

/* The site of (layer, target), or NULL. */
finch_lora_site *finch_lora_find(finch_lora *l, int layer, finch_target t);

/* Attaches the adapter to the model's linears with a weight multiplying its scale (1 for
 * a single adapter; several adapters combine by attaching each with its weight), or
 * detaches it. Calls may pass up to max_tokens rows at once (scratch is sized for that).
 * The adapter must outlive its attachment. */
finch_status finch_lora_attach(finch_lora *l, finch_model *m, float weight, int64_t max_tokens,
                               finch_err *err);
void finch_lora_detach(finch_lora *l, finch_model *m);

/* The attachment operations (model/linear.h) that LoRA implements. */
extern const finch_peft_ops finch_lora_ops;

/* ---- adapter files (adapter_io.c) ------------------------------------------------------ */

/* Writes the adapter as a Hugging Face PEFT folder, created if missing: dir/
 * adapter_model.safetensors (keys base_model.model.model.layers.{L}.self_attn.q_proj.lora_A.weight
 * ..., A (r, in) and B (out, r) in F32, the B rows of q_proj/k_proj un-permuted to HF order)
 * and then dir/adapter_config.json (PEFT's LoraConfig fields, keys sorted, target_modules a
 * sorted list of PEFT names, base_model_name_or_path the model's general.name). Each file is
 * written atomically; the config last, so a folder with a config has its weights. */
finch_status finch_lora_save_peft(const finch_lora *l, const finch_model *m, const char *dir,
                                  finch_err *err);

/* Loads a PEFT LoRA folder made for model m (without gradients): validates the config
 * (peft_type LORA, r, lora_alpha, lora_dropout, use_rslora, target_modules a list of known
 * names or "all-linear"; fields finch does not implement, such as use_dora or
 * rank_pattern, are FINCH_E_UNSUPPORTED) and the weights (every expected key present with
 * this model's shape, F32/F16/BF16 converted to f32, no other tensors, layers in range),
 * and permutes the B rows of q/k from HF to GGUF order. Errors name the file and, for
 * shapes, the projection, the layer, the shape found and the one needed. */
finch_status finch_lora_load_peft(const char *dir, const finch_model *m, finch_lora **out,
                                  finch_err *err);

/* Writes the adapter as a GGUF LoRA adapter for llama.cpp's --lora (FORMATS.md 6):
 * general.architecture of the model, general.type "adapter", adapter.type "lora",
 * adapter.lora.alpha (for rsLoRA alpha * sqrt(r), as llama.cpp scales by alpha / r),
 * tensors blk.{L}.{attn_q,...}.weight.lora_a ne [in, r] and .lora_b ne [r, out] in F32,
 * B in GGUF row order. Written atomically. */
finch_status finch_lora_save_gguf(const finch_lora *l, const finch_model *m, const char *path,
                                  finch_err *err);

/* The LoRA inside a public adapter handle (borrowed). */
finch_lora *finch_adapter_lora(finch_adapter *a);

#endif /* FINCH_PEFT_H */
