/*
 * dora.c: DoRA (Liu et al. 2024), LoRA with a learned magnitude per output row, as PEFT
 * computes it (FORMATS.md 2.1d; PEFT's LoraConfig with use_dora):
 *
 *   W' = m * (W + s B A) / ||W + s B A||_row,   norm treated as a constant in backward
 *
 * At a linear with input x, xd = dropout(x), bias b, z = x W^T, lora = s (xd A^T) B^T and
 * mns = m / norm, PEFT adds (mns - 1) * (xd W^T) + mns * lora to the base output, which
 * without dropout is y = b + mns * (z + lora). Both read
 *
 *   zl = (dropping ? xd W^T : z) + lora,   y += lora + (mns - 1) * zl
 *
 * Backward, from g = dL/dy:  dm += sum_t g * zl / norm;  the low-rank path gets mns * g;
 * without dropout the base product's gradient is mns * g, with dropout it is g and the
 * input gets (mns - 1) * g W through the mask as well. (The gradient backward returns is
 * the base product's: DoRA trains no bias and is the only method at its linears.)
 *
 * Dropout without two more products with W: with keep mask k, c = 1 / (1 - p) and
 * x_drop = x (1 - k) the dropped elements alone (a few percent of them),
 *
 *   xd W^T = c (z - x_drop W^T)
 *   dx     = g W + c k (h W) + lora's part,   h = (mns - 1) g
 *          = (g + c h) W  -  c (1 - k) (h W)  + lora's part
 *
 * so the forward takes z as without dropout, subtracts the masked product over the dropped
 * elements (matmul_masked) and scales by c as the low-rank term is added (dora_combine, one
 * pass that forms lora from xd A^T and B), and backward hands the base product g + c h, one
 * product with W for both, then corrects the dropped elements alone
 * (matmul_backward_masked). Both masked products cost about p of a dense one; above
 * FUSED_MAX_DROPOUT, or on a backend without them, the two dense products run instead.
 * In training DoRA computes the base product itself (dora_product, matmul_split): y, the
 * norms' A W^T and z - x_drop W^T come from one pass over W's tiles.
 *
 * The row norms: ||W + s B A||^2 = ||W||^2 + 2 s B (A W^T) + s^2 B (A A^T) B^T per row,
 * with ||W||^2 of the frozen base computed once and A W^T one product of r rows, so the
 * base is never expanded. A training instance recomputes them at every forward; a loaded
 * adapter once, when attached.
 */
#include "peft/lora.h"

#include <math.h>
#include <stdlib.h>

/* ||W_j||^2 of every row of a site's base weight, dequantized a row at a time. */
static finch_status base_row_norms(finch_lora_site *s, const finch_linear *lin, finch_err *err) {
    const finch_weight *w = &lin->w;
    float *row = finch_alloc((size_t)w->cols * sizeof *row, "DoRA row", err);
    if (!row) return FINCH_E_NOMEM;
    for (int64_t j = 0; j < w->rows; j++) {
        finch_weight_rows_f32(w, j, 1, row);
        double n2 = 0;
        for (int64_t c = 0; c < w->cols; c++) n2 += (double)row[c] * row[c];
        s->wnorm2[j] = n2;
    }
    free(row);
    return FINCH_OK;
}

/* mns, mns - 1 and 1/norm of every row for the current A, B, m (scale sw = weight * s). */
static void row_scales(finch_lora_site *s, const finch_linear *lin, float sw,
                       const finch_backend *be, finch_workspace *ws) {
    const int r = s->r;
    if (!s->P_made) be->matmul(s->P, s->A, &lin->w, r, ws); /* P (r, out) = A W^T */
    s->P_made = false;
    double G[64 * 64], *Gd = r <= 64 ? G : finch_mem_alloc((size_t)r * r * sizeof *Gd);
    FINCH_ASSERT(Gd);
    const int nth = finch_threads_get();
    /* G = A A^T, symmetric: each pair once, in four running sums (columns c % 4) */
#pragma omp parallel for schedule(dynamic) num_threads(nth) if (r * s->in >= 4096)
    for (int k = 0; k < r; k++) {
        const float *ak = s->A + (int64_t)k * s->in;
        for (int l = k; l < r; l++) {
            const float *al = s->A + (int64_t)l * s->in;
            double acc[4] = {0, 0, 0, 0};
            int64_t c = 0;
            for (; c + 4 <= s->in; c += 4)
                for (int q = 0; q < 4; q++) acc[q] += (double)ak[c + q] * al[c + q];
            for (; c < s->in; c++) acc[c % 4] += (double)ak[c] * al[c];
            Gd[k * r + l] = Gd[l * r + k] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
#pragma omp parallel for schedule(static) num_threads(nth) if (s->out * r * r >= 65536)
    for (int64_t j = 0; j < s->out; j++) {
        const float *b = s->B + j * r;
        double cross = 0, quad = 0;
        for (int k = 0; k < r; k++) {
            cross += (double)b[k] * s->P[(int64_t)k * s->out + j];
            double gb = 0;
            for (int l = 0; l < r; l++) gb += Gd[k * r + l] * b[l];
            quad += b[k] * gb;
        }
        double n2 = s->wnorm2[j] + 2.0 * sw * cross + (double)sw * sw * quad;
        double norm = sqrt(n2 > 0 ? n2 : 0);
        s->inv_norm[j] = norm > 0 ? (float)(1.0 / norm) : 0.0f;
        s->mns[j] = (float)(s->mag[j] * (norm > 0 ? 1.0 / norm : 0.0));
        s->mns1[j] = s->mns[j] - 1.0f;
    }
    if (Gd != G) free(Gd);
}

/* Above this dropout the masked products would cost more than the dense ones. */
#define FUSED_MAX_DROPOUT 0.4f

static bool dropping(const finch_lora_site *s, const finch_linear_ctx *ctx) {
    return ctx->training && s->dropout > 0;
}

/* Whether dropout goes through the masked products (the header). */
static bool fused(const finch_lora_site *s, const finch_linear_ctx *ctx) {
    const finch_backend *be = ctx->be;
    return s->dropout <= FUSED_MAX_DROPOUT && s->mask && be->dropout_bits && be->matmul_masked &&
           be->matmul_backward_masked;
}

/* Whether backward_input takes dA with dx in one pass over x (lora.h): without dropout or
 * with the masked products, where the backend can; backward then never forms xd. */
static bool takes_down(const finch_lora_site *s, const finch_linear_ctx *ctx) {
    return finch_lora_down_fused(ctx) && (!dropping(s, ctx) || fused(s, ctx));
}

/* A training instance's base product, with the norms' P = A W^T and (dropout through the
 * masked products) zl = z - x_drop W^T from the same pass over W's tiles (matmul_split):
 * forward then finds them made. */
static bool dora_product(const finch_attachment *a, float *y, const float *x, int64_t T,
                         const finch_linear *lin, const finch_linear_ctx *ctx) {
    finch_lora_site *s = a->state;
    const finch_backend *be = ctx->be;
    if (!s->dA || !be->matmul_split) return false;
    FINCH_ASSERT(T <= s->max_tokens);
    const bool masked = dropping(s, ctx) && fused(s, ctx);
    if (masked) {
        finch_dropout d = finch_lora_mask(s, ctx);
        be->dropout_bits(s->mask, T, s->in, &d);
    }
    const finch_split sp = {.ym = s->zl,
                            .bits = masked ? s->mask : NULL,
                            .alpha = -1.0f,
                            .p = s->P,
                            .a = s->A,
                            .np = s->r};
    be->matmul_split(y, x, &sp, &lin->w, T, ctx->ws);
    s->zl_made = masked;
    s->P_made = true;
    return true;
}

static void dora_forward(const finch_attachment *a, float *y, const float *x, int64_t T,
                         const finch_linear *lin, const finch_linear_ctx *ctx) {
    finch_lora_site *s = a->state;
    const finch_backend *be = ctx->be;
    FINCH_ASSERT(T <= s->max_tokens);
    const float sw = a->weight * s->scale;
    if (s->dA) row_scales(s, lin, sw, be, ctx->ws); /* training: A, B, m change every step */
    const float *xd = finch_lora_input(s, x, T, ctx);
    const int64_t n = T * s->out;
    float c = 1.0f; /* zl's factor */
    /* zl = xd W^T with dropout, else z = y - b */
    if (s->zl_made) { /* zl = z - x_drop W^T by dora_product, c scales it below */
        c = finch_lora_mask(s, ctx).scale;
        s->zl_made = false;
    } else if (dropping(s, ctx) && !fused(s, ctx)) {
        be->matmul(s->zl, xd, &lin->w, T, ctx->ws);
    } else {
        memcpy(s->zl, y, (size_t)n * sizeof *y);
        if (s->negb)
            for (int64_t t = 0; t < T; t++) be->add(s->zl + t * s->out, s->negb, s->out);
        if (dropping(s, ctx)) { /* zl = z - x_drop W^T, c scales it below */
            finch_dropout d = finch_lora_mask(s, ctx);
            be->dropout_bits(s->mask, T, s->in, &d);
            be->matmul_masked(s->zl, x, s->mask, -1.0f, &lin->w, T, ctx->ws);
            c = d.scale;
        }
    }
    /* lora = sw (xd A^T) B^T; zl = c zl + lora; y += lora + (mns - 1) zl */
    be->gemm(false, true, T, s->r, s->in, 1.0f, xd, s->in, s->A, s->in, 0.0f, s->u, s->r);
    s->u_pass = ctx->training && s->dA ? ctx->pass : 0; /* for backward (lora.h) */
    if (be->dora_combine) { /* lora formed inside, from u and sw B^T (in P, free here) */
        for (int64_t j = 0; j < s->out; j++)
            for (int k = 0; k < s->r; k++) s->P[k * s->out + j] = sw * s->B[j * s->r + k];
        be->dora_combine(y, s->zl, s->u, s->P, s->r, c, s->mns1, T, s->out);
        return;
    }
    be->gemm(false, true, T, s->out, s->r, sw, s->u, s->r, s->B, s->r, 0.0f, s->g, s->out);
    if (c != 1.0f) be->scale(s->zl, n, c);
    be->add(s->zl, s->g, n);
    be->add(y, s->g, n);
    be->scale_cols(s->g, s->zl, s->mns1, T, s->out);
    be->add(y, s->g, n);
}

/* dm += (sum_t g zl) / norm, gs = s1 g and, when h is not NULL, h = s2 g: one pass over g
 * where the backend has it. */
static void scale_grads(finch_lora_site *s, float *gs, float *h, const float *g, const float *s1,
                        const float *s2, int64_t T, const finch_backend *be) {
    memset(s->tmpv, 0, (size_t)s->out * sizeof *s->tmpv);
    if (be->dora_backward) {
        be->dora_backward(s->tmpv, gs, h, g, s->zl, s1, s2, T, s->out);
    } else {
        be->col_dot(s->tmpv, g, s->zl, T, s->out);
        be->scale_cols(gs, g, s1, T, s->out);
        if (h) be->scale_cols(h, g, s2, T, s->out);
    }
    be->scale_cols(s->tmpv, s->tmpv, s->inv_norm, 1, s->out);
    be->add(s->dmag, s->tmpv, s->out);
}

/* The low-rank path's gradients for the output gradient mns g, from g: mns scales B's rows
 * (for du = mns g B) and dB's (dB = mns g^T u), so mns g itself is never formed. xd NULL:
 * u is the forward's (or formed again from x) and backward_input takes dA (lora.h). */
static void backward_params_scaled(finch_lora_site *s, const float *g, float alpha, const float *x,
                                   const float *xd, int64_t T, const finch_linear_ctx *ctx) {
    const finch_backend *be = ctx->be;
    const int64_t r = s->r, out = s->out;
    if (xd)
        be->gemm(false, true, T, r, s->in, 1.0f, xd, s->in, s->A, s->in, 0.0f, s->u, r);
    else
        finch_lora_backward_u(s, x, T, ctx);
    for (int64_t j = 0; j < out; j++)
        for (int64_t k = 0; k < r; k++) s->Bm[j * r + k] = s->mns[j] * s->B[j * r + k];
    be->gemm(false, false, T, r, out, alpha, g, out, s->Bm, r, 0.0f, s->du, r);
    be->gemm(true, false, out, r, T, 1.0f, g, out, s->u, r, 0.0f, s->P, r); /* g^T u */
    for (int64_t j = 0; j < out; j++)
        for (int64_t k = 0; k < r; k++) s->dB[j * r + k] += alpha * s->mns[j] * s->P[j * r + k];
    if (xd) be->gemm(true, false, r, s->in, T, 1.0f, s->du, r, xd, s->in, 1.0f, s->dA, s->in);
}

static const float *dora_backward(const finch_attachment *a, const float *g, const float *x,
                                  int64_t T, const finch_linear *lin, const finch_linear_ctx *ctx) {
    (void)lin;
    finch_lora_site *s = a->state;
    const finch_backend *be = ctx->be;
    const bool down = takes_down(s, ctx);
    const float *xd = down ? NULL : finch_lora_input(s, x, T, ctx);
    const float alpha = a->weight * s->scale;
    if (!dropping(s, ctx) || !fused(s, ctx)) {
        /* y = b + mns (z + lora): the low-rank path and, without dropout, the base product
         * see mns g */
        scale_grads(s, s->g, NULL, g, s->mns, NULL, T, be);
        if (down)
            finch_lora_backward_up(s, s->g, alpha, x, T, ctx);
        else
            finch_lora_backward_params(s, s->g, alpha, xd, T, ctx);
        if (!dropping(s, ctx)) return s->g;
        be->scale_cols(s->g, g, s->mns1, T, s->out); /* for backward_input: (mns - 1) g */
        return g;
    }
    /* h = (mns - 1) g into zl (its last reader is this pass) for backward_input; the base
     * product gets g + c h */
    const float c = finch_lora_mask(s, ctx).scale;
    for (int64_t j = 0; j < s->out; j++) s->gscale[j] = 1.0f + c * s->mns1[j];
    scale_grads(s, s->g, s->zl, g, s->gscale, s->mns1, T, be);
    backward_params_scaled(s, g, alpha, x, xd, T, ctx);
    return s->g;
}

static void dora_backward_input(const finch_attachment *a, float *dx, const float *x, int64_t T,
                                const finch_linear *lin, const finch_linear_ctx *ctx) {
    finch_lora_site *s = a->state;
    const finch_backend *be = ctx->be;
    const bool down = takes_down(s, ctx);
    if (!dropping(s, ctx)) {
        if (down)
            finch_lora_backward_down(s, dx, x, T, ctx);
        else if (dx)
            finch_lora_backward_dx(s, dx, x, T, ctx);
        return;
    }
    finch_dropout d = finch_lora_mask(s, ctx);
    if (fused(s, ctx)) { /* dx -= c (h W) at the dropped elements (forward's bits), then du A
                            through the mask (and dA, as dora_backward left it) */
        if (dx) be->matmul_backward_masked(dx, s->zl, s->mask, -d.scale, &lin->w, T, ctx->ws);
        if (down)
            finch_lora_backward_down(s, dx, x, T, ctx);
        else if (dx)
            finch_lora_backward_dx(s, dx, x, T, ctx);
        return;
    }
    if (!dx) return;
    /* through the mask: dxd = (mns - 1) g W + du A */
    be->matmul_backward_input(s->xd, s->g, &lin->w, T, ctx->ws);
    be->gemm(false, false, T, s->in, s->r, 1.0f, s->du, s->r, s->A, s->in, 1.0f, s->xd, s->in);
    be->dropout_backward(dx, s->xd, T * s->in, &d);
}

static const finch_peft_ops dora_ops = {
    .name = "dora",
    .product = dora_product,
    .forward = dora_forward,
    .backward = dora_backward,
    .backward_input = dora_backward_input,
};

/* ---- the method ------------------------------------------------------------------------- */

static bool dora_claims(const json_t *j) {
    json_t *d = json_object_get(j, "use_dora");
    return d && json_is_true(d);
}

static void dora_write_config(const finch_peft *p, const finch_model *m, json_t *j) {
    finch_lora_write_config(p, m, j);
    json_object_set_new(j, "use_dora", json_true());
}

static finch_status dora_create(finch_peft *p, const finch_model *m, finch_err *err) {
    finch_status st = finch_lora_create(p, m, true, err);
    if (st) return st;
    finch_lora *l = p->state;
    size_t rows = 0, vecs = 0;
    for (int i = 0; i < l->n_sites; i++) {
        rows += (size_t)l->sites[i].out;
        vecs += (size_t)l->sites[i].out * (6 + 2 * (size_t)l->sites[i].r);
    }
    l->norms = finch_alloc(rows * sizeof *l->norms + 1, "DoRA norms", err);
    l->vecs = finch_calloc(vecs + 1, sizeof *l->vecs, "DoRA vectors", err);
    if (!l->norms || !l->vecs) return FINCH_E_NOMEM;
    double *nw = l->norms;
    float *v = l->vecs;
    for (int i = 0; i < l->n_sites && !st; i++) {
        finch_lora_site *s = &l->sites[i];
        const finch_linear *lin = finch_model_target((finch_model *)m, s->layer, s->target);
        s->wnorm2 = nw;
        nw += s->out;
        s->mns = v, s->mns1 = v + s->out, s->inv_norm = v + 2 * s->out, s->tmpv = v + 3 * s->out;
        s->negb = lin->bias ? v + 4 * s->out : NULL;
        s->gscale = v + 5 * s->out;
        s->P = v + 6 * s->out;
        s->Bm = s->P + s->out * s->r;
        v += s->out * (6 + 2 * s->r);
        for (int64_t j = 0; s->negb && j < s->out; j++) s->negb[j] = -lin->bias[j];
        st = base_row_norms(s, lin, err);
    }
    return st;
}

/* LoRA's init, and m = ||W + s B A|| = ||W|| (B = 0): the model starts unchanged. */
static void dora_init(finch_peft *p, const finch_model *m, finch_rng *rng) {
    finch_lora_init(p, m, rng);
    finch_lora *l = p->state;
    for (int i = 0; i < l->n_sites; i++)
        for (int64_t j = 0; j < l->sites[i].out; j++)
            l->sites[i].mag[j] = (float)sqrt(l->sites[i].wnorm2[j]);
}

static finch_status dora_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                                finch_err *err) {
    finch_status st = finch_lora_attach_ops(p, m, &dora_ops, weight, max_tokens, true, err);
    if (st) return st;
    /* a loaded adapter's rows are scaled once, here */
    finch_lora *l = p->state;
    int64_t max_cols = 0, max_r = 1;
    for (int i = 0; i < l->n_sites; i++) {
        max_cols = l->sites[i].in > max_cols ? l->sites[i].in : max_cols;
        max_r = l->sites[i].r > max_r ? l->sites[i].r : max_r;
    }
    finch_workspace ws;
    if ((st = finch_workspace_init(&ws, finch_workspace_need(max_cols, max_r), finch_threads_get(),
                                   0, err))) {
        finch_lora_detach(p, m);
        return st;
    }
    for (int i = 0; i < l->n_sites; i++) {
        finch_lora_site *s = &l->sites[i];
        row_scales(s, finch_model_target(m, s->layer, s->target), weight * s->scale, m->be, &ws);
    }
    finch_workspace_free(&ws);
    return FINCH_OK;
}

/* W' = m (W + w s B A) / ||W + w s B A||, row r. */
static bool dora_merge_row(const finch_peft *p, const finch_model *m, const char *gguf_name,
                           int64_t r, float *row, int64_t cols, float weight) {
    const finch_lora_site *s = finch_lora_site_of(p, m, gguf_name, &r);
    if (!s || !row) return s != NULL;
    FINCH_ASSERT(cols == s->in && r < s->out);
    finch_lora_merge_delta(s, r, row, weight);
    double n2 = 0;
    for (int64_t c = 0; c < cols; c++) n2 += (double)row[c] * row[c];
    float k = n2 > 0 ? (float)(s->mag[r] / sqrt(n2)) : 0.0f;
    for (int64_t c = 0; c < cols; c++) row[c] *= k;
    return true;
}

const finch_method finch_method_dora = {
    .name = "dora",
    .description = "LoRA with a learned magnitude per output row (Liu et al. 2024)",
    .opts = finch_lora_options,
    .n_opts = FINCH_LORA_N_OPTIONS,
    .config_size = sizeof(finch_lora_config),
    .peft_type = "LORA",
    .claims = dora_claims,
    .check_file = finch_lora_check_file,
    .write_config = dora_write_config,
    .create = dora_create,
    .init = dora_init,
    .attach = dora_attach,
    .detach = finch_lora_detach,
    .free_state = finch_lora_free_state,
    .merge_row = dora_merge_row,
};
