/*
 * linear.c: forward and backward of a finch_linear: input transforms, the base product,
 * the bias, then each attached output transform in order (linear.h).
 */
#include "model/linear.h"

static void add_bias(const finch_backend *be, float *y, const float *b, int64_t T, int64_t n) {
    for (int64_t t = 0; t < T; t++) be->add(y + t * n, b, n);
}

/* The base product's input: x through every input transform. */
static const float *transformed_input(const float *x, const finch_linear *lin, int64_t T,
                                      const finch_linear_ctx *ctx) {
    for (int i = 0; i < lin->n_att; i++)
        if (lin->att[i].ops->input) x = lin->att[i].ops->input(&lin->att[i], x, T, ctx);
    return x;
}

static void forward(finch_matmul_fn mm, float *y, const float *x, const finch_linear *lin,
                    int64_t T, const finch_linear_ctx *ctx) {
    const float *xi = transformed_input(x, lin, T, ctx);
    bool done = false;
    for (int i = 0; i < lin->n_att && ctx->training && !done; i++)
        if (lin->att[i].ops->product)
            done = lin->att[i].ops->product(&lin->att[i], y, xi, T, lin, ctx);
    if (!done) mm(y, xi, &lin->w, T, ctx->ws);
    if (lin->bias) add_bias(ctx->be, y, lin->bias, T, lin->w.rows);
    for (int i = 0; i < lin->n_att; i++)
        if (lin->att[i].ops->forward) lin->att[i].ops->forward(&lin->att[i], y, xi, T, lin, ctx);
}

void finch_linear_forward(finch_matmul_fn mm, float *y, const float *x, const finch_linear *lin,
                          int64_t T, const finch_backend *be, finch_workspace *ws) {
    finch_linear_ctx ctx = {.be = be, .ws = ws};
    forward(mm, y, x, lin, T, &ctx);
}

void finch_linear_forward_train(float *y, const float *x, const finch_linear *lin, int64_t T,
                                const finch_linear_ctx *ctx) {
    forward(ctx->be->matmul, y, x, lin, T, ctx);
}

void finch_linear_backward(float *dx, const float *dy, const float *x, const finch_linear *lin,
                           int64_t T, const finch_linear_ctx *ctx) {
    const finch_backend *be = ctx->be;
    /* the input of each input transform, recomputed (they are elementwise and cheap) */
    const float *inputs[FINCH_LINEAR_MAX_ATTACH + 1];
    inputs[0] = x;
    int n_in = 0;
    for (int i = 0; i < lin->n_att; i++)
        if (lin->att[i].ops->input) {
            inputs[n_in + 1] = lin->att[i].ops->input(&lin->att[i], inputs[n_in], T, ctx);
            n_in++;
        }
    const float *xi = inputs[n_in];
    /* output transforms in reverse: g becomes the gradient of x' W^T + b */
    const float *g = dy;
    for (int i = lin->n_att - 1; i >= 0; i--)
        if (lin->att[i].ops->backward)
            g = lin->att[i].ops->backward(&lin->att[i], g, xi, T, lin, ctx);
    if (lin->dbias) be->col_dot(lin->dbias, g, NULL, T, lin->w.rows);
    if (lin->dw) be->matmul_backward_weight(lin->dw, g, xi, T, lin->w.rows, lin->w.cols, ctx->ws);
    FINCH_ASSERT(dx || !n_in);
    if (dx) be->matmul_backward_input(dx, g, &lin->w, T, ctx->ws);
    for (int i = 0; i < lin->n_att; i++)
        if (lin->att[i].ops->backward_input)
            lin->att[i].ops->backward_input(&lin->att[i], dx, xi, T, lin, ctx);
    if (!dx) return;
    /* input transforms in reverse, each given its own input */
    for (int i = lin->n_att - 1, k = n_in; i >= 0; i--)
        if (lin->att[i].ops->input) {
            k--;
            lin->att[i].ops->input_backward(&lin->att[i], dx, inputs[k], T, ctx);
        }
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
