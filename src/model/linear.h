/*
 * linear.h: finch_linear, the one abstraction every projection goes through: a frozen
 * base weight in its storage type and an optional bias. Forward is y = x W^T + b.
 * PEFT methods attach to it (issue #3 adds the attachment list and backward).
 */
#ifndef FINCH_LINEAR_H
#define FINCH_LINEAR_H

#include "kernels/kernels.h"

typedef struct {
    finch_weight w;    /* (out, in) in its storage type */
    const float *bias; /* (out) or NULL */
} finch_linear;

/* The base product: a backend's matmul or matmul_q8. */
typedef void (*finch_matmul_fn)(float *y, const float *x, const finch_weight *w, int64_t T,
                                finch_workspace *ws);

/* y (T, out) = x (T, in) . W^T + b, the base product computed by mm. */
void finch_linear_forward(finch_matmul_fn mm, float *y, const float *x, const finch_linear *lin,
                          int64_t T, const finch_backend *be, finch_workspace *ws);

#endif /* FINCH_LINEAR_H */
