/*
 * linear.h: finch_linear, the one abstraction every projection goes through: a frozen
 * base weight in its storage type, an optional bias, and a short list of attached
 * methods (LoRA, ...) that add their part:
 *
 *   y = x W^T + b + sum_a attachment_a(x)
 *
 * Backward mirrors it: dx = dy W + sum_a d attachment_a / dx, and each attachment
 * accumulates its own parameter gradients. model/ never asks which method is attached;
 * peft/ implements finch_peft_ops.
 */
#ifndef FINCH_LINEAR_H
#define FINCH_LINEAR_H

#include "kernels/kernels.h"

#define FINCH_LINEAR_MAX_ATTACH 8

/* What an attachment sees of the computation it runs in. */
typedef struct {
    const finch_backend *be;
    finch_workspace *ws;
    bool training;         /* dropout active, gradients wanted */
    uint64_t dropout_seed; /* per step; forward and backward of one step use the same */
} finch_linear_ctx;

typedef struct finch_attachment finch_attachment;

/* A PEFT method's operations at a linear layer. */
typedef struct {
    const char *name;
    /* y (T, out) += the method's contribution for input x (T, in). */
    void (*forward)(const finch_attachment *a, float *y, const float *x, int64_t T,
                    const finch_linear_ctx *ctx);
    /* dx (T, in) += its part of the input gradient (dx may be NULL: not wanted), and its
     * parameter gradients += from dy (T, out) and the forward's x. NULL: not trainable. */
    void (*backward)(const finch_attachment *a, float *dx, const float *dy, const float *x,
                     int64_t T, const finch_linear_ctx *ctx);
} finch_peft_ops;

struct finch_attachment {
    const finch_peft_ops *ops;
    void *state;  /* the method's per-site state */
    float weight; /* multiplies the contribution (combining several adapters) */
};

typedef struct {
    finch_weight w;    /* (out, in) in its storage type */
    const float *bias; /* (out) or NULL */
    int n_att;
    finch_attachment att[FINCH_LINEAR_MAX_ATTACH];
} finch_linear;

/* The base product: a backend's matmul or matmul_q8. */
typedef void (*finch_matmul_fn)(float *y, const float *x, const finch_weight *w, int64_t T,
                                finch_workspace *ws);

/* y (T, out) = x (T, in) . W^T + b + attachments (inference: no dropout). */
void finch_linear_forward(finch_matmul_fn mm, float *y, const float *x, const finch_linear *lin,
                          int64_t T, const finch_backend *be, finch_workspace *ws);

/* The same with the exact matmul, in the context ctx (training: dropout active). */
void finch_linear_forward_train(float *y, const float *x, const finch_linear *lin, int64_t T,
                                const finch_linear_ctx *ctx);

/* dx (T, in) = dy W (+ attachments' parts) when dx is not NULL; attachments' parameter
 * gradients +=. x is the forward's input. */
void finch_linear_backward(float *dx, const float *dy, const float *x, const finch_linear *lin,
                           int64_t T, const finch_linear_ctx *ctx);

/* Adds or removes an attachment; FINCH_E_RANGE when the list is full. */
finch_status finch_linear_attach(finch_linear *lin, const finch_peft_ops *ops, void *state,
                                 float weight, finch_err *err);
void finch_linear_detach(finch_linear *lin, const void *state);

#endif /* FINCH_LINEAR_H */
