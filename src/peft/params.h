/*
 * params.h: the trainable-parameter registry. A method registers named f32 tensors (the
 * name is the key the tensor is saved under); the registry lays them out back to back in
 * one arena, with the gradients in a parallel arena of the same layout. The optimizer,
 * clipping, accumulation, checkpoints and the parameter report work on the two flat
 * arrays and never see a method's own structures.
 *
 * Gradient layouts (finch_params_alloc_grads): whole, a gradient arena parallel to the
 * parameters (what clipping, accumulation and the allreduce need); or per block, for an
 * optimizer step fused into backward (train/loop.c), where each tensor is updated as soon
 * as backward has completed its gradient: a tensor says which block's backward completes
 * it (finch_params_set_block; the model's backward runs the blocks from the last to the
 * first), every block's tensors share one region of the arena as large as the largest
 * block's, and the tensors whose gradient is complete only when backward ends (the
 * default: embeddings, a tied head, the final norm, prompt tables) keep their own place.
 *
 * Row order: finch keeps q and k rows in GGUF order (model.h). A tensor whose first
 * dimension runs over the rows of q or k (LoRA's B, a DoRA magnitude, a bias, a whole
 * weight) says so with permute_heads, and file I/O converts those rows to Hugging Face
 * order on save and back on load (FORMATS.md 4.1). A prefix-tuning table (kv_block set)
 * holds keys in the same order within each head: its rows are pairs of kv_block keys
 * (permute_heads heads) and kv_block values, and the keys are converted.
 */
#ifndef FINCH_PARAMS_H
#define FINCH_PARAMS_H

#include "core/core.h"
#include "kernels/kernels.h" /* finch_backend */

#define FINCH_PARAM_MAX_NAME 191

/* finch_param.block of a tensor whose gradient is complete only when backward ends. */
#define FINCH_PARAM_LAST (-1)

typedef struct {
    char name[FINCH_PARAM_MAX_NAME + 1];
    int n_dims;        /* 1 or 2 */
    int64_t shape[2];  /* outermost first, as saved */
    int64_t off, n;    /* elements: where in the arena, how many */
    int permute_heads; /* rows (dim 0) are q/k rows of this many heads; 0: plain rows */
    int64_t kv_block;  /* > 0: each row is pairs of kv_block keys (permute_heads heads) and
                          kv_block values, and the keys are what is permuted */
    bool decay;        /* AdamW's weight decay applies (not to biases and norm weights) */
    int block;         /* the block whose backward completes the gradient, or
                          FINCH_PARAM_LAST: only the end of backward does */
    int64_t goff;      /* elements: where its gradient lies in the gradient arena */
    float **data_slot; /* set to the tensor's place in the arena when allocated */
    float **grad_slot; /* the same in the gradient arena (NULL when there is none) */
} finch_param;

/* A second pair of pointers into a registered tensor, off elements in: a site that uses a
 * slice of a tensor another site registered (GPT-2's c_attn: q, k and v are row blocks of
 * one adapter tensor). */
typedef struct {
    int param;
    int64_t off;
    float **data_slot, **grad_slot;
} finch_param_view;

typedef struct {
    finch_param *p;
    int n, cap;
    finch_param_view *views;
    int n_views, cap_views;
    float *data; /* total elements */
    float *grad; /* grad_total elements, or NULL */
    int64_t total;
    int64_t grad_total;  /* the gradient arena's elements: total, or less per block */
    bool grad_per_block; /* the gradient arena is laid out per block */
    /* placed on a device (finch_params_place): copies of both arenas there, which the
     * slots point at; data and grad stay the master copies on the host */
    const finch_backend *dev;
    float *dev_data, *dev_grad;
} finch_params;

/* Registers a tensor of n_dims (1 or 2) with shape; data_slot and grad_slot (either may be
 * NULL) receive its pointers when the arena is allocated. Names must be unique. */
finch_status finch_params_add(finch_params *r, const char *name, int n_dims, const int64_t *shape,
                              int permute_heads, bool decay, float **data_slot, float **grad_slot,
                              finch_err *err);

/* Registers a view: when the arena is allocated, data_slot and grad_slot (either may be
 * NULL) receive the place off elements into the tensor name, which must be registered
 * already and hold more than off elements. */
finch_status finch_params_add_view(finch_params *r, const char *name, int64_t off,
                                   float **data_slot, float **grad_slot, finch_err *err);

/* Marks the tensor name (registered with permute_heads = heads) as a prefix table of
 * key/value pairs of kv_block values each. */
void finch_params_set_kv_block(finch_params *r, const char *name, int64_t kv_block);

/* Says that the backward of block `block` (>= 0) completes the gradient of the tensor name
 * (registered): nothing outside that block's backward adds to it. */
void finch_params_set_block(finch_params *r, const char *name, int block);

/* Allocates the arena (zeroed) and, with_grads, the whole gradient arena; fills every
 * slot. */
finch_status finch_params_alloc(finch_params *r, bool with_grads, finch_err *err);

/* Allocates the gradient arena (zeroed; after finch_params_alloc without grads) and points
 * every gradient slot and view into it: whole (per_block false), parallel to the
 * parameters; or per block: the FINCH_PARAM_LAST tensors first, in registration order,
 * then one region that every block's tensors share (each block's in registration order
 * from its start), so that a block's gradients must be used and set back to zero before
 * the next block's backward adds to them. */
finch_status finch_params_alloc_grads(finch_params *r, bool per_block, finch_err *err);
void finch_params_release(finch_params *r);

/* Training on a device (be->device): the parameters' master copy, the optimizer and its
 * state, checkpoints and the allreduce stay on the host, and the passes use copies in the
 * device's memory. finch_params_place (with a whole gradient arena, or none: an adapter
 * applied for inference) makes the copies, pushes the parameters and points every slot and
 * view at the device's;
 * push copies the host's parameters over (after each optimizer step); zero_grads zeroes
 * the gradients on both sides (before a step's passes); pull_grads copies the device's
 * gradients over the host's (after them); unplace points the slots back at the host's
 * arenas and frees the copies (release frees them, leaving the slots alone). push and
 * pull do nothing when not placed. */
finch_status finch_params_place(finch_params *r, const finch_backend *be, finch_err *err);
finch_status finch_params_push(finch_params *r, finch_err *err);
void finch_params_zero_grads(finch_params *r);
finch_status finch_params_pull_grads(finch_params *r, finch_err *err);
void finch_params_unplace(finch_params *r);

/* The tensor registered under name, or NULL. */
finch_param *finch_params_find(const finch_params *r, const char *name);

/* Writes every tensor to a safetensors file (F32, q/k rows in Hugging Face order),
 * atomically, with metadata format=pt as PEFT writes. */
finch_status finch_params_save_st(const finch_params *r, const char *path, finch_err *err);

/* Reads every registered tensor from a safetensors file: each must be present with its
 * shape (F32, F16 or BF16), and the file may hold nothing else. q/k rows go back to GGUF
 * order. Errors name the file and the tensor; shape errors say which shape this model
 * needs. */
finch_status finch_params_load_st(finch_params *r, const char *path, finch_err *err);

/* dst = src (p's values, p->n of them) with its q/k rows or prefix keys in Hugging Face
 * order (to_hf) or back in finch's; dst and src distinct. */
void finch_param_convert(const finch_param *p, float *dst, const float *src, bool to_hf);

/* Converts rows (dim 0, row_len elements each) of a q/k tensor between GGUF and Hugging
 * Face order (FORMATS.md 4.1); dst and src distinct. */
void finch_rows_permute(float *dst, const float *src, int64_t rows, int64_t row_len, int heads,
                        bool to_hf);

#endif /* FINCH_PARAMS_H */
