/*
 * linear.c: forward of a finch_linear (base matmul, then bias).
 */
#include "model/linear.h"

void finch_linear_forward(finch_matmul_fn mm, float *y, const float *x, const finch_linear *lin,
                          int64_t T, const finch_backend *be, finch_workspace *ws) {
    mm(y, x, &lin->w, T, ws);
    if (lin->bias)
        for (int64_t t = 0; t < T; t++) be->add(y + t * lin->w.rows, lin->bias, lin->w.rows);
}
