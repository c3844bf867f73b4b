/*
 * optim.h: what the training loop calls to update trainable state: AdamW, learning-rate
 * schedules, global gradient-norm clipping, gradient accumulation helpers and the
 * optimizer state's binary layout.
 *
 * optim/ sees flat float arrays only (STYLE.md section 4): the trainable parameters p,
 * their gradients g and AdamW's moments m and v share one index space of n floats in one
 * arena. Which slice belongs to which tensor is the caller's business; optim/ is told
 * only which ranges take weight decay. Every loop here is split across the OpenMP pool
 * (finch_threads_get) and gives bit-identical results for any thread count.
 *
 * Facts come from torch.optim.AdamW and torch.nn.utils.clip_grad_norm_ (PyTorch 1.13)
 * and from transformers' get_scheduler; tests/reference/make_optim_fixtures.py runs those
 * and tests/optim compares every step.
 */
#ifndef FINCH_OPTIM_H
#define FINCH_OPTIM_H

#include "core/core.h"       /* finch_status, finch_err */
#include "kernels/kernels.h" /* finch_adamw_scalars, finch_cpu_backend */

#include <stdint.h>
#include <stdio.h>

/* ---- AdamW -------------------------------------------------------------------------- */

/* AdamW's hyperparameters other than the learning rate, which comes from the schedule at
 * each step. torch's defaults are beta1 0.9, beta2 0.999, eps 1e-8, weight decay 0.01. */
typedef struct {
    double beta1;        /* decay of the first moment m, in [0, 1) */
    double beta2;        /* decay of the second moment v, in [0, 1) */
    double eps;          /* added to sqrt(v_hat) in the denominator, > 0 */
    double weight_decay; /* decoupled decay for ranges with decay set, >= 0 */
} finch_adamw_config;

/* torch.optim.AdamW's defaults. */
finch_adamw_config finch_adamw_config_default(void);

/* A slice of the flat arrays and whether it takes weight decay (biases and norm weights
 * usually do not, as in Hugging Face's Trainer). */
typedef struct {
    size_t begin; /* first index of the slice */
    size_t count; /* number of floats */
    bool decay;   /* true: apply config.weight_decay; false: none */
} finch_adamw_range;

/* One AdamW step (number t, counted from 1) at learning rate lr over the ranges, exactly
 * as torch.optim.AdamW (amsgrad and maximize off) in its order of float operations:
 *   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
 *   p += -(lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * Scalars are formed in double and rounded to float as torch does with Python numbers.
 * Ranges must lie inside [0, n) and not overlap (asserted); indices outside every range
 * are left untouched. p, m, v: (n) updated in place; g: (n) read. */
void finch_adamw_step(float *p, float *m, float *v, const float *g, size_t n,
                      const finch_adamw_range *ranges, int n_ranges, const finch_adamw_config *cfg,
                      double lr, int64_t t);

/* The same step with every gradient multiplied by grad_scale first (finch_grad_clip_coef:
 * the bits of clipping g in place before finch_adamw_step; g is left unscaled). */
void finch_adamw_step_scaled(float *p, float *m, float *v, const float *g, size_t n,
                             const finch_adamw_range *ranges, int n_ranges,
                             const finch_adamw_config *cfg, double lr, int64_t t, float grad_scale);

/* The fused optimizer's step over one tensor of n: finch_adamw_step over all of it (with
 * weight decay or not), g zeroed after, and the sum of g's squares returned with
 * finch_grad_sumsq's bits. One pass over g where the backend has one. */
double finch_adamw_step_consume(float *p, float *m, float *v, float *g, size_t n, bool decay,
                                const finch_adamw_config *cfg, double lr, int64_t t);

/* The float scalars of step t at learning rate lr for a range with or without decay, formed
 * in double and rounded as torch does (the backend's adamw_step takes them). */
finch_adamw_scalars finch_adamw_scalars_at(const finch_adamw_config *cfg, double lr, int64_t t,
                                           bool decay);

/* ---- learning-rate schedules -------------------------------------------------------- */

/* Schedules of transformers' get_scheduler. Values are stored in checkpoints; the enum
 * only grows at the end. */
typedef enum {
    FINCH_LR_LINEAR = 0,   /* warmup, then linear decay to 0 at total_steps */
    FINCH_LR_COSINE = 1,   /* warmup, then half a cosine down to 0 at total_steps */
    FINCH_LR_CONSTANT = 2, /* warmup, then constant (HF's constant_with_warmup) */
    FINCH_LR_COUNT
} finch_lr_kind;

typedef struct {
    finch_lr_kind kind;   /* the shape after warmup */
    double lr;            /* peak learning rate, > 0 */
    int64_t warmup_steps; /* steps of linear warmup from 0, >= 0 */
    int64_t total_steps;  /* optimizer steps of the whole run, >= 1 */
} finch_lr_schedule;

/* Parses a scheduler name: "linear", "cosine", "constant" (also spelt
 * "constant_with_warmup"). Unknown names are FINCH_E_USAGE with
 * "--lr-scheduler NAME: use linear, cosine or constant". */
finch_status finch_lr_kind_parse(const char *name, finch_lr_kind *out, finch_err *err);

/* The canonical name of kind ("linear", "cosine", "constant"). */
const char *finch_lr_kind_name(finch_lr_kind kind);

/* The learning rate after `step` scheduler steps, which is the rate optimizer step
 * step + 1 uses (Hugging Face steps the scheduler after each optimizer step, so the
 * first step of a warmup runs at 0). lr * lambda(step) with lambda as transformers
 * defines it:
 *   warmup (step < warmup_steps): step / max(1, warmup_steps)
 *   linear:   max(0, (total - step) / max(1, total - warmup))
 *   cosine:   max(0, 0.5 * (1 + cos(pi * progress))), progress = (step - warmup) /
 *             max(1, total - warmup)
 *   constant: 1. */
double finch_lr_at(const finch_lr_schedule *s, int64_t step);

/* ---- gradients ---------------------------------------------------------------------- */

/* The global L2 norm of g (n), accumulated in double in fixed chunks, so the result does
 * not depend on the thread count. inf or nan when an element is not finite. */
double finch_grad_norm(const float *g, size_t n);

/* The sum of the squares of g (n), in double, summed as finch_grad_norm sums them
 * (finch_grad_norm is its square root): the per-tensor part of a global norm that an
 * optimizer step fused into backward adds up tensor by tensor. */
double finch_grad_sumsq(const float *g, size_t n);

/* Global norm clipping as torch.nn.utils.clip_grad_norm_: computes the norm of g (n); if
 * it is finite and max_norm / (norm + 1e-6) < 1, multiplies g by that coefficient.
 * Returns the norm before clipping. A non-finite norm leaves g unchanged and is returned
 * for the caller to act on. max_norm > 0 (asserted). */
double finch_grad_clip(float *g, size_t n, double max_norm);

/* The factor finch_grad_clip multiplies g by, given its norm: (float)(max_norm / (norm +
 * 1e-6)) when the norm is finite and that is below 1, else 1. max_norm > 0 (asserted). */
float finch_grad_clip_coef(double norm, double max_norm);

/* Sets g (n) to zero, before the first micro-batch of a step. */
void finch_grad_zero(float *g, size_t n);

/* g *= scale over n floats: 1/accum after accumulating accum micro-batches whose
 * losses were means over their own tokens. */
void finch_grad_scale(float *g, size_t n, float scale);

/* ---- optimizer state ---------------------------------------------------------------- */

/* Version of the layout below that this build writes and reads. */
#define FINCH_OPTIM_STATE_VERSION 1u

/* Optimizer state, little-endian, as a record that a checkpoint can embed:
 *
 *   offset  size  field
 *   0       8     magic "FINCHOPT"
 *   8       4     u32 version (1)
 *   12      4     u32 bytes per element (4: float32)
 *   16      8     u64 n, floats in each of m and v
 *   24      8     i64 step, optimizer steps taken (0 before the first)
 *   32      4n    m
 *   32+4n   4n    v
 *
 * The record is 32 + 8n bytes (finch_optim_state_size). */
size_t finch_optim_state_size(size_t n);

/* Writes the record at f's current position. name labels messages (a path). FINCH_E_IO
 * on a failed write. */
finch_status finch_optim_state_save(FILE *f, const char *name, const float *m, const float *v,
                                    size_t n, int64_t step, finch_err *err);

/* Reads a record from f's current position into m and v (n each, the size the caller
 * expects) and *step. A wrong magic, version or element size, another n, a negative
 * step, a negative or NaN v, or a record cut short is FINCH_E_FORMAT naming name and the
 * offset from the record's start. *step is written only on success; after a failure m
 * and v may hold part of the record and must not be used. */
finch_status finch_optim_state_load(FILE *f, const char *name, float *m, float *v, size_t n,
                                    int64_t *step, finch_err *err);

#endif /* FINCH_OPTIM_H */
