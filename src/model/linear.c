/*
 * linear.c: forward and backward of a finch_linear: the base product, the bias, then
 * each attached method in order.
 */
#include "model/linear.h"

static void add_bias(const finch_backend *be, float *y, const float *b, int64_t T, int64_t n) {
    for (int64_t t = 0; t < T; t++) be->add(y + t * n, b, n);
}

void finch_linear_forward(finch_matmul_fn mm, float *y, const float *x, const finch_linear *lin,
                          int64_t T, const finch_backend *be, finch_workspace *ws) {
    mm(y, x, &lin->w, T, ws);
    if (lin->bias) add_bias(be, y, lin->bias, T, lin->w.rows);
    finch_linear_ctx ctx = {.be = be, .ws = ws};
    for (int i = 0; i < lin->n_att; i++) lin->att[i].ops->forward(&lin->att[i], y, x, T, &ctx);
}

void finch_linear_forward_train(float *y, const float *x, const finch_linear *lin, int64_t T,
                                const finch_linear_ctx *ctx) {
    ctx->be->matmul(y, x, &lin->w, T, ctx->ws);
    if (lin->bias) add_bias(ctx->be, y, lin->bias, T, lin->w.rows);
    for (int i = 0; i < lin->n_att; i++) lin->att[i].ops->forward(&lin->att[i], y, x, T, ctx);
}

void finch_linear_backward(float *dx, const float *dy, const float *x, const finch_linear *lin,
                           int64_t T, const finch_linear_ctx *ctx) {
    if (dx) ctx->be->matmul_backward_input(dx, dy, &lin->w, T, ctx->ws);
    for (int i = 0; i < lin->n_att; i++)
        if (lin->att[i].ops->backward) lin->att[i].ops->backward(&lin->att[i], dx, dy, x, T, ctx);
}

finch_status finch_linear_attach(finch_linear *lin, const finch_peft_ops *ops, void *state,
                                 float weight, finch_err *err) {
    if (lin->n_att == FINCH_LINEAR_MAX_ATTACH)
        return finch_err_set(err, FINCH_E_RANGE, "at most %d methods attach to one layer",
                             FINCH_LINEAR_MAX_ATTACH);
    lin->att[lin->n_att++] = (finch_attachment){ops, state, weight};
    return FINCH_OK;
}

void finch_linear_detach(finch_linear *lin, const void *state) {
    int k = 0;
    for (int i = 0; i < lin->n_att; i++)
        if (lin->att[i].state != state) lin->att[k++] = lin->att[i];
    lin->n_att = k;
}
