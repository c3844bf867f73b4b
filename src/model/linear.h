/*
 * linear.h: finch_linear, the one abstraction every projection goes through: a base
 * weight in its storage type, an optional bias, and a short list of attached methods
 * (the sites where PEFT methods act). A linear computes
 *
 *   x' = input_k(... input_1(x))        input transforms ((IA)^3 on a feed-forward input)
 *   y  = x' W^T + b                     the base product and bias
 *   y  = forward_n(... forward_1(y))    output transforms, in attachment order: LoRA adds
 *                                       to y, (IA)^3 scales it, DoRA renormalises W's rows
 *
 * Backward runs the output transforms in reverse (each turns the gradient of its output
 * into that of its input and accumulates its parameters' gradients), then the bias and
 * weight gradients when they train (BitFit, full fine-tuning), the base product's input
 * gradient, the attachments' own input-gradient parts, and the input transforms in reverse.
 * model/ never asks which method is attached; peft/ implements finch_peft_ops.
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
    uint64_t pass;         /* the training forward this call belongs to, unique in the process
                              (0: none): what a site's forward keeps is its backward's while
                              the pass is the same */
} finch_linear_ctx;

typedef struct finch_attachment finch_attachment;
typedef struct finch_linear finch_linear;

/* A PEFT method's operations at a linear layer. Every member may be NULL. x is always the
 * base product's input x' (after the input transforms). */
typedef struct {
    const char *name;
    /* The transformed input (T, in) of x: x itself or a buffer of the method's. */
    const float *(*input)(const finch_attachment *a, const float *x, int64_t T,
                          const finch_linear_ctx *ctx);
    /* dx (T, in) holds the gradient of input()'s result: turn it into that of its input x
     * in place, and accumulate the method's parameter gradients. */
    void (*input_backward)(const finch_attachment *a, float *dx, const float *x, int64_t T,
                           const finch_linear_ctx *ctx);
    /* The base product y (T, out) = x W^T in training, computed by the method with whatever
     * it keeps from the same pass over W (DoRA: the product with the dropped-out input);
     * false leaves it to the backend's matmul. The first attachment that takes it does. */
    bool (*product)(const finch_attachment *a, float *y, const float *x, int64_t T,
                    const finch_linear *lin, const finch_linear_ctx *ctx);
    /* y (T, out) = the transform of the output so far, in place. */
    void (*forward)(const finch_attachment *a, float *y, const float *x, int64_t T,
                    const finch_linear *lin, const finch_linear_ctx *ctx);
    /* g (T, out) is the gradient of forward()'s result: accumulate the parameter
     * gradients and return the gradient of its input y (g itself when forward adds to y,
     * otherwise a buffer of the method's, valid until the next call at this site). */
    const float *(*backward)(const finch_attachment *a, const float *g, const float *x, int64_t T,
                             const finch_linear *lin, const finch_linear_ctx *ctx);
    /* dx (T, in) += the method's part of the input gradient, after backward(); dx is NULL
     * when the input's gradient is not wanted (the parameter gradients left to this call are
     * still taken). */
    void (*backward_input)(const finch_attachment *a, float *dx, const float *x, int64_t T,
                           const finch_linear *lin, const finch_linear_ctx *ctx);
} finch_peft_ops;

struct finch_attachment {
    const finch_peft_ops *ops;
    void *state;  /* the method's per-site state */
    float weight; /* multiplies the contribution (combining several adapters) */
};

struct finch_linear {
    finch_weight w;    /* (out, in) in its storage type; f32 in the arena when it trains */
    const float *bias; /* (out) or NULL */
    float *dw;         /* (out, in) gradient when the weight trains, else NULL */
    float *dbias;      /* (out) gradient when the bias trains, else NULL */
    int n_att;
    finch_attachment att[FINCH_LINEAR_MAX_ATTACH];
};

/* The base product: a backend's matmul or matmul_q8. */
typedef void (*finch_matmul_fn)(float *y, const float *x, const finch_weight *w, int64_t T,
                                finch_workspace *ws);

/* y (T, out) = x (T, in) . W^T + b + attachments (inference: no dropout). */
void finch_linear_forward(finch_matmul_fn mm, float *y, const float *x, const finch_linear *lin,
                          int64_t T, const finch_backend *be, finch_workspace *ws);

/* The same with the exact matmul, in the context ctx (training: dropout active). */
void finch_linear_forward_train(float *y, const float *x, const finch_linear *lin, int64_t T,
                                const finch_linear_ctx *ctx);

/* dx (T, in) = the input gradient when dx is not NULL (it must be when an attachment
 * transforms the input); the gradients of everything that trains at this linear +=
 * (attachments' parameters, bias, weight). x is the forward's input. */
void finch_linear_backward(float *dx, const float *dy, const float *x, const finch_linear *lin,
                           int64_t T, const finch_linear_ctx *ctx);

/* Adds or removes an attachment; FINCH_E_RANGE when the list is full. */
finch_status finch_linear_attach(finch_linear *lin, const finch_peft_ops *ops, void *state,
                                 float weight, finch_err *err);
void finch_linear_detach(finch_linear *lin, const void *state);

#endif /* FINCH_LINEAR_H */
