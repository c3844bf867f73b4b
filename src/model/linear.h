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

/* y (T, out) = x (T, in) . W^T + b through the backend. */
void finch_linear_forward(const finch_backend *be, float *y, const float *x,
                          const finch_linear *lin, int64_t T, finch_workspace *ws);

#endif /* FINCH_LINEAR_H */
