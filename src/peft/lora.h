/*
 * lora.h: LoRA's sites, shared with the methods built on it (DoRA):
 *
 *   y = x W^T + s (dropout(x) A^T) B^T,   A (r, in), B (out, r),  s = alpha / r
 *   (rsLoRA: s = alpha / sqrt(r)); A starts Kaiming-uniform as PEFT does, B at zero.
 *
 * A and B live in the registry (params.h) under PEFT's keys; B of q and k is in GGUF row
 * order there, and the registry converts it on save and load.
 */
#ifndef FINCH_LORA_H
#define FINCH_LORA_H

#include "peft/method.h"

/* The options LoRA and DoRA share (their option tables point into this struct). */
typedef struct {
    int r;            /* rank, 1..4096 */
    float alpha;      /* scale numerator */
    float dropout;    /* probability of zeroing an element of the LoRA input (training) */
    uint32_t targets; /* bit t set: target t in every selected layer */
    bool rslora;      /* scale alpha / sqrt(r) instead of alpha / r */
} finch_lora_config;

/* One adapted projection. */
typedef struct {
    int layer;
    finch_target target;
    int part;        /* GPT-2's c_attn: 0 for q (A, B registered, B of 3 out rows), 1 k,
                        2 v (A shared, B, magnitudes row blocks: finch_target_part) */
    int64_t in, out; /* the base weight's columns and rows */
    int r;
    float scale;     /* alpha / r or alpha / sqrt(r) */
    float dropout;   /* the dropout probability */
    float *A, *B;    /* (r, in), (out, r), in the registry */
    float *dA, *dB;  /* their gradients, or NULL when not training */
    float *u;        /* (max_tokens, r): xd A^T, the site's own when it trains */
    uint64_t u_pass; /* the training pass (finch_linear_ctx) whose u that is, 0 for none */
    float *du;       /* scratch (max_tokens, r): u's gradient */
    float *xd;       /* scratch (max_tokens, in): the dropped-out input, when dropout > 0 */
    int64_t max_tokens;
    /* DoRA (dora.c) */
    float *mag, *dmag; /* (out) magnitudes and their gradient */
    double *wnorm2;    /* (out) squared row norms of the base weight (constant) */
    float *mns, *mns1; /* (out) mag / ||W + s B A|| per row for this step, and that - 1 */
    float *inv_norm;   /* (out) 1 / ||W + s B A|| */
    float *tmpv;       /* (out) scratch */
    float *gscale;     /* (out) 1 + c (mns - 1): the base product's gradient scale, dropout c */
    float *negb;       /* (out) minus the base bias, or NULL without one */
    float *P;          /* (r, out) A W^T, for the norms; in backward (out, r) g^T u */
    float *Bm;         /* (out, r) B with row j scaled by mns[j] */
    float *zl;         /* (max_tokens, out): the renormalised rows' input, kept for backward */
    bool zl_made;      /* the product hook made zl for the forward that follows */
    bool P_made;       /* and P */
    float *g;          /* (max_tokens, out): DoRA's gradient buffer (shared) */
    uint64_t *mask;    /* DoRA with dropout: (max_tokens) rows of bits of the dropped inputs,
                          kept for backward */
} finch_lora_site;

typedef struct {
    int n_sites;
    finch_lora_site *sites;
    float *scratch; /* the sites' u, du, xd (and DoRA's zl, g), in scratch_be's memory */
    const finch_backend *scratch_be; /* the model's backend when the sites attached */
    uint64_t *mask;                  /* DoRA's sites' dropped-input bits */
    double *norms;                   /* DoRA's wnorm2 of every site */
    float *vecs;                     /* DoRA's per-row vectors and P of every site */
} finch_lora;

/* The LoRA option table (r, alpha, dropout, targets, rsLoRA), for LoRA and DoRA. */
#define FINCH_LORA_N_OPTIONS 5
extern const finch_method_option finch_lora_options[FINCH_LORA_N_OPTIONS];

/* Registers A and B (and, with_magnitude, DoRA's lora_magnitude_vector) for every
 * targeted projection of every selected layer, and builds the sites. */
finch_status finch_lora_create(finch_peft *p, const finch_model *m, bool with_magnitude,
                               finch_err *err);
/* PEFT's initialisation: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_(a=sqrt(5)) on
 * (r, in)) drawn site after site, B = 0. */
void finch_lora_init(finch_peft *p, const finch_model *m, finch_rng *rng);
void finch_lora_free_state(finch_peft *p);
/* Allocates the sites' scratch for max_tokens rows (with DoRA's buffers when dora) and
 * attaches ops to every site. */
finch_status finch_lora_attach_ops(finch_peft *p, finch_model *m, const finch_peft_ops *ops,
                                   float weight, int64_t max_tokens, bool dora, finch_err *err);
void finch_lora_detach(finch_peft *p, finch_model *m);
/* adapter_config.json: LoraConfig's fields finch refuses when set, and those it writes. */
finch_status finch_lora_check_file(const json_t *j, const char *path, finch_err *err);
void finch_lora_write_config(const finch_peft *p, const finch_model *m, json_t *j);
/* The site of row *r of a GGUF weight name ("blk.3.attn_q.weight"), or NULL; for a fused
 * module (GPT-2's "blk.3.attn_qkv.weight") the part holding the row, *r becoming the row
 * within it. */
finch_lora_site *finch_lora_site_of(const finch_peft *p, const finch_model *m,
                                    const char *gguf_name, int64_t *r);

/* row (in) += weight s (B A)[r]: merging row r of the site's base weight. */
void finch_lora_merge_delta(const finch_lora_site *s, int64_t r, float *row, float weight);

/* The low-rank path at a site, in steps DoRA reuses:
 *   input:    the dropped-out input xd (x itself without dropout or outside training);
 *   u:        u = xd A^T into s->u (forward_u: kept for the backward of the same pass);
 *   backward: given gs = the gradient of the low-rank output (already multiplied by
 *             weight * scale and any per-row factor), du = gs B, dB += gs^T u,
 *             dA += du^T xd;
 *   input gradient: dx += (du A) through the dropout mask.
 * Where the backend has lora_down_backward (finch_lora_down_fused), backward takes du and
 * dB (backward_up, u the forward's when of this pass) and backward_input dA with dx in one
 * pass over x (backward_down, dx may be NULL); else backward_params and backward_dx. */
/* The site's dropout mask this step (a fused module's parts share it, as in PEFT). */
finch_dropout finch_lora_mask(const finch_lora_site *s, const finch_linear_ctx *ctx);
const float *finch_lora_input(const finch_lora_site *s, const float *x, int64_t T,
                              const finch_linear_ctx *ctx);
void finch_lora_backward_params(const finch_lora_site *s, const float *gs, float alpha,
                                const float *xd, int64_t T, const finch_linear_ctx *ctx);
void finch_lora_backward_dx(const finch_lora_site *s, float *dx, const float *x, int64_t T,
                            const finch_linear_ctx *ctx);
void finch_lora_forward_u(finch_lora_site *s, const float *x, int64_t T,
                          const finch_linear_ctx *ctx);
/* u for backward: the forward's when it is of this pass, else formed again. */
void finch_lora_backward_u(finch_lora_site *s, const float *x, int64_t T,
                           const finch_linear_ctx *ctx);
static inline bool finch_lora_down_fused(const finch_linear_ctx *ctx) {
    return ctx->be->lora_down_backward != NULL;
}
void finch_lora_backward_up(finch_lora_site *s, const float *gs, float alpha, const float *x,
                            int64_t T, const finch_linear_ctx *ctx);
void finch_lora_backward_down(const finch_lora_site *s, float *dx, const float *x, int64_t T,
                              const finch_linear_ctx *ctx);

#endif /* FINCH_LORA_H */
