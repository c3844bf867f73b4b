/*
 * test_grad.c: every backward op, CPU and reference, against central finite differences
 * of a forward written here in double precision, and the CPU ops against the reference
 * ones. The scalar whose gradient is checked is a random projection L = sum_i P_i y_i of
 * the op's output y, so every output element contributes; dL/dy = P is the output
 * gradient handed to backward. Large inputs are checked at a random sample of indices.
 *
 * Tolerances. The finite differences use h = 1e-4 on functions evaluated in double with
 * O(1) inputs: truncation error ~h^2 = 1e-8 and rounding ~1e-16 / h = 1e-12, both far
 * below what is tested. The analytic gradients come from f32 kernels (inputs exact,
 * sums rounded), whose relative error is ~1e-7 per term times the number of terms; we
 * allow |g - fd| <= 2e-4 (|fd| + mean|fd|), which a wrong formula misses by O(1) and a
 * wrong index by far more. CPU against reference: the same f32-versus-double rounding,
 * so 1e-4 (|ref| + mean|ref|). Both also allow 1e-6 absolute: a gradient that is a
 * cancellation of O(1) terms keeps their f32 rounding (~1e-7) in absolute terms, as in
 * rmsnorm with C = 1, where dx = r w dy (1 - r^2 x^2) is ~1e-6 by cancellation.
 *
 * Shapes are deliberately awkward: 1, odd, not multiples of 8, 32 or the 64-row tile.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_weights.h" /* randn, rand_vec, make_weight */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/quant.h"
#include "kernels/kernels.h"
#include "test_util.h" /* test_backend, test_require_isa */

static const finch_backend *be; /* the backend under test (test_backend) */

#define FD_H 1e-4
#define FD_TOL 2e-4
#define REF_TOL 1e-4
#define FD_SAMPLES 40
#define ABS_TOL 1e-6

static float *copy_vec(const float *x, int64_t n) {
    float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    assert_non_null(v);
    memcpy(v, x, (size_t)n * sizeof *v);
    return v;
}

static double *to_double(const float *x, int64_t n) {
    double *d = malloc((size_t)(n ? n : 1) * sizeof *d);
    assert_non_null(d);
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static float *zeros(int64_t n) {
    float *v = calloc((size_t)(n ? n : 1), sizeof *v);
    assert_non_null(v);
    return v;
}

static void ws_init(finch_workspace *ws, int64_t max_cols, int64_t n_ctx) {
    finch_err err;
    assert_int_equal(finch_workspace_init(ws, finch_workspace_need(max_cols, n_ctx), 2, 0, &err),
                     FINCH_OK);
}

typedef double (*loss_fn)(const void *ctx);

/* Central differences of f with respect to param (n doubles, perturbed in place and
 * restored) at every index when n is small, else at FD_SAMPLES random ones, against g. */
static void check_fd(const char *what, double *param, int64_t n, const float *g, loss_fn f,
                     const void *ctx, finch_rng *r) {
    int64_t m = n <= FD_SAMPLES ? n : FD_SAMPLES;
    int64_t idx[FD_SAMPLES];
    double fd[FD_SAMPLES], mean = 0;
    for (int64_t s = 0; s < m; s++) {
        int64_t i = n <= FD_SAMPLES ? s : (int64_t)(finch_rng_u64(r) % (uint64_t)n);
        double x0 = param[i];
        param[i] = x0 + FD_H;
        double lp = f(ctx);
        param[i] = x0 - FD_H;
        double lm = f(ctx);
        param[i] = x0;
        idx[s] = i;
        fd[s] = (lp - lm) / (2 * FD_H);
        mean += fabs(fd[s]) / (double)m;
    }
    for (int64_t s = 0; s < m; s++) {
        double e = fabs((double)g[idx[s]] - fd[s]);
        if (!(e <= FD_TOL * (fabs(fd[s]) + mean) + ABS_TOL))
            fail_msg("%s: gradient[%lld] = %.9g, finite difference %.9g", what, (long long)idx[s],
                     g[idx[s]], fd[s]);
    }
}

/* a (CPU) against b (reference), every element. */
static void check_close(const char *what, const float *a, const float *b, int64_t n) {
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += fabs((double)b[i]) / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= REF_TOL * (fabs((double)b[i]) + mean) + ABS_TOL))
            fail_msg("%s: cpu[%lld] = %.9g, reference %.9g", what, (long long)i, a[i], b[i]);
    }
}

/* ---- matmul --------------------------------------------------------------------------- */

typedef struct {
    int64_t T, R, K;
    const double *x, *w, *P; /* x (T, K), w (R, K), P (T, R) */
} mm_ctx;

static double mm_loss(const void *p) {
    const mm_ctx *c = p;
    double L = 0;
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t r = 0; r < c->R; r++) {
            double y = 0;
            for (int64_t k = 0; k < c->K; k++) y += c->x[t * c->K + k] * c->w[r * c->K + k];
            L += c->P[t * c->R + r] * y;
        }
    return L;
}

/* dx for a weight of type t against finite differences, the reference, and the exact
 * product with the dequantized matrix (bound as in tests/kernels: 4e-6 sum|dy||w|). */
static void check_matmul_backward_input(finch_dtype t, int64_t R, int64_t K, int64_t T,
                                        int64_t ws_cols, int n_threads, finch_rng *r) {
    char what[96];
    finch_weight w;
    void *data = make_weight(r, t, R, K, &w);
    float *wf = malloc((size_t)(R * K) * sizeof *wf), *x = rand_vec(r, T * K, 1.0f);
    float *dy = rand_vec(r, T * R, 1.0f), *dx = zeros(T * K), *dxr = zeros(T * K);
    for (int64_t i = 0; i < R; i++)
        finch_dtype_info[t].dequant(wf + i * K, (const uint8_t *)data + i * w.row_bytes, K);
    finch_workspace ws;
    finch_err err;
    assert_int_equal(
        finch_workspace_init(&ws, finch_workspace_need(ws_cols, 1), n_threads, 0, &err), FINCH_OK);
    be->matmul_backward_input(dx, dy, &w, T, &ws);
    finch_ref_matmul_backward_input(dxr, dy, &w, T);
    snprintf(what, sizeof what, "matmul_backward_input %s R=%lld K=%lld T=%lld threads=%d",
             finch_dtype_info[t].name, (long long)R, (long long)K, (long long)T, n_threads);
    for (int64_t i = 0; i < T; i++)
        for (int64_t k = 0; k < K; k++) {
            double e = 0, bound = 0;
            for (int64_t j = 0; j < R; j++) {
                e += (double)dy[i * R + j] * wf[j * K + k];
                bound += fabs((double)dy[i * R + j] * wf[j * K + k]);
            }
            if (fabs(dx[i * K + k] - e) > 4e-6 * bound + 1e-6 ||
                fabs(dxr[i * K + k] - e) > 1e-6 * bound + 1e-6)
                fail_msg("%s: dx[%lld,%lld] = %.9g, reference %.9g, exact %.9g", what, (long long)i,
                         (long long)k, dx[i * K + k], dxr[i * K + k], e);
        }
    double *xd = to_double(x, T * K), *wd = to_double(wf, R * K), *Pd = to_double(dy, T * R);
    mm_ctx c = {T, R, K, xd, wd, Pd};
    check_fd(what, xd, T * K, dx, mm_loss, &c, r);
    finch_workspace_free(&ws);
    free(xd);
    free(wd);
    free(Pd);
    free(wf);
    free(x);
    free(dy);
    free(dx);
    free(dxr);
    free(data);
}

static void test_matmul_backward_input(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 11);
    const finch_dtype types[] = {FINCH_DTYPE_F32,  FINCH_DTYPE_F16,  FINCH_DTYPE_BF16,
                                 FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q4_1, FINCH_DTYPE_Q5_0,
                                 FINCH_DTYPE_Q5_1, FINCH_DTYPE_Q8_0};
    const int64_t shapes[][2] = {{1, 32}, {7, 64}, {65, 96}, {130, 160}, {259, 32}};
    const int64_t Ts[] = {1, 3, 17};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++)
                check_matmul_backward_input(types[i], shapes[s][0], shapes[s][1], Ts[k],
                                            shapes[s][1], 2, &r);
    /* one thread; a workspace sized for wider weights (all rows in one chunk); more
     * threads than blocks of columns */
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        check_matmul_backward_input(types[i], 259, 96, 7, 96, 1, &r);
        check_matmul_backward_input(types[i], 259, 96, 7, 1536, 2, &r);
        check_matmul_backward_input(types[i], 70, 64, 5, 64, 3, &r);
    }
    const finch_dtype kq[] = {FINCH_DTYPE_Q2_K, FINCH_DTYPE_Q3_K, FINCH_DTYPE_Q4_K,
                              FINCH_DTYPE_Q5_K, FINCH_DTYPE_Q6_K};
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++) {
        check_matmul_backward_input(kq[i], 3, 256, 5, 256, 2, &r);
        check_matmul_backward_input(kq[i], 133, 512, 9, 512, 2, &r);
        check_matmul_backward_input(kq[i], 133, 768, 9, 768, 2, &r);
    }
    /* NF4 (blocks of 64): column bands of whole blocks, 1 to 3 threads */
    const int64_t nf4_shapes[][2] = {{1, 64}, {7, 128}, {130, 192}, {259, 576}};
    for (size_t s = 0; s < sizeof nf4_shapes / sizeof nf4_shapes[0]; s++)
        for (int th = 1; th <= 3; th++)
            check_matmul_backward_input(FINCH_DTYPE_NF4, nf4_shapes[s][0], nf4_shapes[s][1],
                                        s == 0 ? 1 : 17, nf4_shapes[s][1], th, &r);
}

static void test_matmul_backward_weight(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 12);
    const int64_t shapes[][2] = {{1, 1}, {7, 33}, {65, 96}, {130, 5}};
    const int64_t Ts[] = {1, 5, 17};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++) {
            int64_t R = shapes[s][0], K = shapes[s][1], T = Ts[k];
            char what[96];
            snprintf(what, sizeof what, "matmul_backward_weight R=%lld K=%lld T=%lld", (long long)R,
                     (long long)K, (long long)T);
            float *x = rand_vec(&r, T * K, 1.0f), *w = rand_vec(&r, R * K, 0.5f);
            float *dy = rand_vec(&r, T * R, 1.0f), *dw0 = rand_vec(&r, R * K, 1.0f);
            float *dw = copy_vec(dw0, R * K), *dwr = copy_vec(dw0, R * K), *g = zeros(R * K);
            be->matmul_backward_weight(dw, dy, x, T, R, K, NULL);
            finch_ref_matmul_backward_weight(dwr, dy, x, T, R, K);
            /* parameter gradients accumulate: subtract what was there */
            for (int64_t i = 0; i < R * K; i++) g[i] = dw[i] - dw0[i];
            double *xd = to_double(x, T * K), *wd = to_double(w, R * K), *Pd = to_double(dy, T * R);
            mm_ctx c = {T, R, K, xd, wd, Pd};
            check_fd(what, wd, R * K, g, mm_loss, &c, &r);
            for (int64_t i = 0; i < R * K; i++) g[i] = dwr[i] - dw0[i];
            check_fd(what, wd, R * K, g, mm_loss, &c, &r);
            check_close(what, dw, dwr, R * K);
            free(xd);
            free(wd);
            free(Pd);
            free(x);
            free(w);
            free(dy);
            free(dw0);
            free(dw);
            free(dwr);
            free(g);
        }
}

/* ---- embedding ------------------------------------------------------------------------ */

static void test_embed_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 13);
    const int64_t V = 11, C = 7, T = 9;
    /* repeated ids: their rows must receive the sum */
    const int32_t ids[9] = {3, 0, 3, 10, 5, 3, 0, 7, 10};
    float *dx = rand_vec(&r, T * C, 1.0f), *d0 = rand_vec(&r, V * C, 1.0f);
    float *de = copy_vec(d0, V * C), *der = copy_vec(d0, V * C);
    be->embed_backward(de, dx, ids, T, C);
    finch_ref_embed_backward(der, dx, ids, T, C);
    for (int64_t v = 0; v < V; v++)
        for (int64_t c = 0; c < C; c++) {
            double e = d0[v * C + c];
            for (int64_t t = 0; t < T; t++)
                if (ids[t] == v) e += dx[t * C + c];
            assert_true(fabs(de[v * C + c] - e) <= 1e-6 * (1 + fabs(e)));
            assert_true(fabs(der[v * C + c] - e) <= 1e-6 * (1 + fabs(e)));
        }
    free(dx);
    free(d0);
    free(de);
    free(der);
}

/* ---- rmsnorm -------------------------------------------------------------------------- */

typedef struct {
    int64_t T, C;
    double eps;
    const double *x, *w, *P;
} rms_ctx;

static double rms_loss(const void *p) {
    const rms_ctx *c = p;
    double L = 0;
    for (int64_t t = 0; t < c->T; t++) {
        double ss = 0;
        for (int64_t i = 0; i < c->C; i++) ss += c->x[t * c->C + i] * c->x[t * c->C + i];
        double rs = 1.0 / sqrt(ss / (double)c->C + c->eps);
        for (int64_t i = 0; i < c->C; i++)
            L += c->P[t * c->C + i] * c->x[t * c->C + i] * rs * c->w[i];
    }
    return L;
}

static void test_rmsnorm_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 14);
    const int64_t shapes[][2] = {{1, 1}, {3, 7}, {9, 64}, {5, 67}, {33, 130}};
    const float eps = 1e-5f;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0], C = shapes[s][1];
        char what[64];
        float *x = rand_vec(&r, T * C, 1.0f), *w = rand_vec(&r, C, 1.0f);
        float *dy = rand_vec(&r, T * C, 1.0f), *y = zeros(T * C), *rstd = zeros(T);
        float *dw0 = rand_vec(&r, C, 1.0f), *dw = copy_vec(dw0, C), *dwr = copy_vec(dw0, C);
        float *dx = zeros(T * C), *dxr = zeros(T * C), *g = zeros(C);
        be->rmsnorm_forward(y, rstd, x, w, T, C, eps);
        be->rmsnorm_backward(dx, dw, dy, rstd, x, w, T, C);
        finch_ref_rmsnorm_backward(dxr, dwr, dy, rstd, x, w, T, C);
        double *xd = to_double(x, T * C), *wd = to_double(w, C), *Pd = to_double(dy, T * C);
        rms_ctx c = {T, C, eps, xd, wd, Pd};
        snprintf(what, sizeof what, "rmsnorm dx T=%lld C=%lld", (long long)T, (long long)C);
        check_fd(what, xd, T * C, dx, rms_loss, &c, &r);
        check_fd(what, xd, T * C, dxr, rms_loss, &c, &r);
        check_close(what, dx, dxr, T * C);
        snprintf(what, sizeof what, "rmsnorm dw T=%lld C=%lld", (long long)T, (long long)C);
        for (int64_t i = 0; i < C; i++) g[i] = dw[i] - dw0[i];
        check_fd(what, wd, C, g, rms_loss, &c, &r);
        for (int64_t i = 0; i < C; i++) g[i] = dwr[i] - dw0[i];
        check_fd(what, wd, C, g, rms_loss, &c, &r);
        check_close(what, dw, dwr, C);
        /* dx may alias dy */
        float *dd = copy_vec(dy, T * C), *dw2 = copy_vec(dw0, C);
        be->rmsnorm_backward(dd, dw2, dd, rstd, x, w, T, C);
        assert_memory_equal(dd, dx, (size_t)(T * C) * sizeof(float));
        assert_memory_equal(dw2, dw, (size_t)C * sizeof(float));
        free(dd);
        free(dw2);
        free(xd);
        free(wd);
        free(Pd);
        free(x);
        free(w);
        free(dy);
        free(y);
        free(rstd);
        free(dw0);
        free(dw);
        free(dwr);
        free(dx);
        free(dxr);
        free(g);
    }
}

/* ---- rope ----------------------------------------------------------------------------- */

typedef struct {
    int64_t T;
    int nh, D;
    double theta;
    const int32_t *pos;
    const double *x, *P;
} rope_ctx;

static double rope_loss(const void *p) {
    const rope_ctx *c = p;
    double L = 0;
    for (int64_t t = 0; t < c->T; t++)
        for (int h = 0; h < c->nh; h++)
            for (int i = 0; i < c->D / 2; i++) {
                double ang = c->pos[t] * pow(c->theta, -2.0 * i / c->D);
                int64_t o = (t * c->nh + h) * c->D + 2 * i;
                double a = c->x[o], b = c->x[o + 1];
                L += c->P[o] * (a * cos(ang) - b * sin(ang)) +
                     c->P[o + 1] * (a * sin(ang) + b * cos(ang));
            }
    return L;
}

static void test_rope_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 15);
    const int shapes[][3] = {{1, 1, 2}, {5, 3, 6}, {7, 2, 64}, {3, 5, 18}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0];
        int nh = shapes[s][1], D = shapes[s][2];
        int64_t n = T * nh * D;
        int32_t *pos = malloc((size_t)T * sizeof *pos);
        assert_non_null(pos);
        for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(finch_rng_u64(&r) % 2000);
        float *x = rand_vec(&r, n, 1.0f), *dy = rand_vec(&r, n, 1.0f);
        float *dx = copy_vec(dy, n), *dxr = copy_vec(dy, n);
        be->rope_backward(dx, pos, T, nh, D, 10000.0f);
        finch_ref_rope_backward(dxr, pos, T, nh, D, 10000.0f);
        double *xd = to_double(x, n), *Pd = to_double(dy, n);
        rope_ctx c = {T, nh, D, 10000.0, pos, xd, Pd};
        check_fd("rope", xd, n, dx, rope_loss, &c, &r);
        check_fd("rope ref", xd, n, dxr, rope_loss, &c, &r);
        check_close("rope", dx, dxr, n);
        /* backward undoes forward: a rotation's gradient is its inverse */
        float *y = copy_vec(x, n);
        be->rope_forward(y, pos, T, nh, D, 10000.0f);
        be->rope_backward(y, pos, T, nh, D, 10000.0f);
        for (int64_t i = 0; i < n; i++)
            assert_true(fabsf(y[i] - x[i]) <= 1e-5f * (1 + fabsf(x[i])));
        free(y);
        free(xd);
        free(Pd);
        free(x);
        free(dy);
        free(dx);
        free(dxr);
        free(pos);
    }
}

/* ---- attention ------------------------------------------------------------------------ */

typedef struct {
    int64_t B, T;
    int H, KVH, D;
    const double *q, *k, *v, *P;
    const int32_t *seg; /* (B, T) or NULL */
    const double *pre;  /* (np, 2 * KVH * D): prefix keys, then values, per row */
    int64_t np;
    int64_t W; /* sliding window (0: none) */
} att_ctx;

/* The position of token t of row b: np plus its distance from the first token of its run
 * of equal seg values (the prefix's keys hold positions 0 .. np - 1). */
static int64_t att_pos(const att_ctx *c, int64_t b, int64_t t) {
    int64_t p = c->np;
    for (int64_t i = t; i > 0 && c->seg && c->seg[b * c->T + i - 1] == c->seg[b * c->T + t]; i--)
        p++;
    if (!c->seg) p += t;
    return p;
}

/* Whether query t of row b sees key j: causal, no change of seg from j to t, and within
 * the window: key position > query position - W. */
static bool att_sees(const att_ctx *c, int64_t b, int64_t t, int64_t j) {
    if (j > t) return false;
    for (int64_t i = j; i < t && c->seg; i++)
        if (c->seg[b * c->T + i] != c->seg[b * c->T + t]) return false;
    return c->W <= 0 || att_pos(c, b, j) > att_pos(c, b, t) - c->W;
}

/* Whether query t of row b sees prefix key j (at position j). */
static bool att_sees_prefix(const att_ctx *c, int64_t b, int64_t t, int64_t j) {
    return c->W <= 0 || j > att_pos(c, b, t) - c->W;
}

/* Column j of a query's scores: prefix key j (j < np), else key j - np of the row. */
static const double *att_key(const att_ctx *c, int64_t b, int64_t j, bool value) {
    const int64_t kvs = (int64_t)c->KVH * c->D;
    if (j < c->np) return c->pre + j * 2 * kvs + (value ? kvs : 0);
    return (value ? c->v : c->k) + (b * c->T + j - c->np) * kvs;
}

static double att_loss(const void *p) {
    const att_ctx *c = p;
    const int64_t T = c->T, qs = (int64_t)c->H * c->D;
    double L = 0, s[80];
    assert_true(c->np + T <= 80);
    for (int64_t b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int64_t t = 0; t < T; t++) {
                int g = h / (c->H / c->KVH);
                double mx = -INFINITY, sum = 0;
                const int64_t n = c->np + t + 1;
#define SEES(j) ((j) < c->np ? att_sees_prefix(c, b, t, j) : att_sees(c, b, t, (j)-c->np))
                for (int64_t j = 0; j < n; j++) {
                    if (!SEES(j)) continue;
                    double d = 0;
                    for (int e = 0; e < c->D; e++)
                        d += c->q[(b * T + t) * qs + h * c->D + e] *
                             att_key(c, b, j, false)[g * c->D + e];
                    s[j] = d / sqrt((double)c->D);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int64_t j = 0; j < n; j++)
                    if (SEES(j)) sum += (s[j] = exp(s[j] - mx));
                for (int e = 0; e < c->D; e++) {
                    double o = 0;
                    for (int64_t j = 0; j < n; j++)
                        if (SEES(j)) o += s[j] / sum * att_key(c, b, j, true)[g * c->D + e];
                    L += c->P[(b * T + t) * qs + h * c->D + e] * o;
                }
#undef SEES
            }
    return L;
}

/* Segments for a (B, T) batch: variant 0 none (NULL); 1 random runs of 1 to 7 tokens
 * whose ids may repeat a run before the last (1 1 2 1: the last 1 is a run of its own),
 * so only the change of value separates examples, as the contract says. */
static int32_t *att_segments(finch_rng *r, int64_t B, int64_t T, int variant) {
    if (variant == 0) return NULL;
    int32_t *seg = malloc((size_t)(B * T) * sizeof *seg);
    assert_non_null(seg);
    for (int64_t b = 0; b < B; b++) {
        int32_t id = 1;
        for (int64_t t = 0; t < T;) {
            int64_t len = 1 + (int64_t)(finch_rng_u64(r) % 7);
            for (int64_t i = 0; i < len && t < T; i++, t++) seg[b * T + t] = id;
            id = id == 1 ? 2 : 1;
        }
    }
    return seg;
}

static void test_attention_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 16);
    /* B, T, H, KVH, D */
    const int shapes[][5] = {{1, 1, 1, 1, 1},  {2, 5, 4, 2, 3},   {3, 7, 6, 2, 8},
                             {1, 17, 3, 3, 5}, {2, 33, 9, 3, 12}, {1, 40, 2, 1, 9}};
    /* a sliding window per shape: 1 (each token alone), shorter than segments and the
     * prefix, longer than a block of 16 query rows */
    const int64_t windows[] = {1, 3, 4, 5, 19, 7};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int variant = 0; variant < 8; variant++) {
            int64_t B = shapes[s][0], T = shapes[s][1];
            int H = shapes[s][2], KVH = shapes[s][3], D = shapes[s][4];
            /* variants: segments (bit 0), a prefix of 1 to 3 keys (bit 1), a window (bit 2) */
            const int64_t np = variant & 2 ? 1 + (int64_t)(s % 3) : 0, kvs = (int64_t)KVH * D;
            const int64_t W = variant & 4 ? windows[s] : 0;
            int64_t nq = B * T * H * D, nkv = B * T * KVH * D, na = B * H * T * (np + T);
            char what[128];
            int32_t *seg = att_segments(&r, B, T, variant & 1);
            float *q = rand_vec(&r, nq, 1.0f), *k = rand_vec(&r, nkv, 1.0f),
                  *v = rand_vec(&r, nkv, 1.0f);
            /* the prefix as a prefix method lays it out: keys and values of a row side by
             * side; its gradients start non-zero (they accumulate) */
            float *pre = rand_vec(&r, np * 2 * kvs + 1, 1.0f);
            float *dpre0 = rand_vec(&r, np * 2 * kvs + 1, 1.0f);
            float *dpre = zeros(np * 2 * kvs + 1), *dprer = zeros(np * 2 * kvs + 1);
            memcpy(dpre, dpre0, (size_t)(np * 2 * kvs) * sizeof(float));
            memcpy(dprer, dpre0, (size_t)(np * 2 * kvs) * sizeof(float));
            finch_attn_prefix pa = {pre, pre + kvs, dpre, dpre + kvs, np, 2 * kvs},
                              pr = {pre, pre + kvs, dprer, dprer + kvs, np, 2 * kvs};
            const finch_attn_prefix *pp = np ? &pa : NULL, *ppr = np ? &pr : NULL;
            float *dout = rand_vec(&r, nq, 1.0f), *out = zeros(nq), *outr = zeros(nq);
            /* the CPU kernel keeps row statistics (B, H, T, 2), the reference probabilities */
            const int64_t nst = B * H * T * 2;
            float *att = zeros(nst), *attr = zeros(na), *outc = zeros(nq), *ds = zeros(na);
            float *dq = zeros(nq), *dk = rand_vec(&r, nkv, 1.0f), *dv = rand_vec(&r, nkv, 1.0f);
            float *dqr = zeros(nq), *dkr = zeros(nkv), *dvr = zeros(nkv);
            finch_workspace ws;
            ws_init(&ws, 1, T + np);
            be->attention_forward_train(out, att, q, k, v, seg, pp, B, T, H, KVH, D, W, &ws);
            finch_ref_attention_forward_train(outr, attr, q, k, v, seg, ppr, B, T, H, KVH, D, W);
            snprintf(what, sizeof what,
                     "attention B=%lld T=%lld H=%d KVH=%d D=%d%s prefix %lld window %lld",
                     (long long)B, (long long)T, H, KVH, D, seg ? " segmented" : "", (long long)np,
                     (long long)W);
            check_close(what, out, outr, nq);
            /* each sequence (each segment) alone equals the cached forward from position 0 */
            for (int64_t b = 0; b < B && !np; b++)
                for (int64_t t0 = 0, t1; t0 < T; t0 = t1) {
                    for (t1 = t0 + 1; seg && t1 < T && seg[b * T + t1] == seg[b * T + t0];) t1++;
                    if (!seg) t1 = T;
                    int64_t o = b * T + t0;
                    finch_ref_attention_forward(outc + o * H * D, q + o * H * D, k + o * KVH * D,
                                                v + o * KVH * D, t1 - t0, 0, H, KVH, D, W);
                }
            if (!np) check_close(what, out, outc, nq);
            be->attention_backward(dq, dk, dv, ds, dout, out, att, q, k, v, seg, pp, B, T, H, KVH,
                                   D, W, &ws);
            finch_ref_attention_backward(dqr, dkr, dvr, dout, attr, q, k, v, seg, ppr, B, T, H, KVH,
                                         D, W);
            float *dpre_raw = zeros(np * 2 * kvs + 1);
            memcpy(dpre_raw, dpre, (size_t)(np * 2 * kvs) * sizeof(float));
            /* the prefix's gradients were added: take the starting values off */
            for (int64_t i = 0; i < np * 2 * kvs; i++) {
                dpre[i] -= dpre0[i];
                dprer[i] -= dpre0[i];
            }
            double *qd = to_double(q, nq), *kd = to_double(k, nkv), *vd = to_double(v, nkv);
            double *Pd = to_double(dout, nq);
            double *pred = to_double(pre, np * 2 * kvs + 1);
            att_ctx c = {B, T, H, KVH, D, qd, kd, vd, Pd, seg, pred, np, W};
            if (np) {
                check_fd(what, pred, np * 2 * kvs, dpre, att_loss, &c, &r);
                check_fd(what, pred, np * 2 * kvs, dprer, att_loss, &c, &r);
                check_close(what, dpre, dprer, np * 2 * kvs);
            }
            check_fd(what, qd, nq, dq, att_loss, &c, &r);
            check_fd(what, kd, nkv, dk, att_loss, &c, &r);
            check_fd(what, vd, nkv, dv, att_loss, &c, &r);
            check_fd(what, qd, nq, dqr, att_loss, &c, &r);
            check_fd(what, kd, nkv, dkr, att_loss, &c, &r);
            check_fd(what, vd, nkv, dvr, att_loss, &c, &r);
            check_close(what, dq, dqr, nq);
            check_close(what, dk, dkr, nkv);
            check_close(what, dv, dvr, nkv);
            /* every output has one owner summing in a fixed order: one thread gives the
             * same bits as two */
            finch_workspace ws1;
            finch_err err;
            assert_int_equal(
                finch_workspace_init(&ws1, finch_workspace_need(1, T + np), 1, 0, &err), FINCH_OK);
            float *o1 = zeros(nq), *a1 = zeros(nst), *q1 = zeros(nq), *k1 = zeros(nkv),
                  *v1 = zeros(nkv);
            float *p1 = zeros(np * 2 * kvs + 1);
            memcpy(p1, dpre0, (size_t)(np * 2 * kvs) * sizeof(float));
            finch_attn_prefix pa1 = {pre, pre + kvs, p1, p1 + kvs, np, 2 * kvs};
            be->attention_forward_train(o1, a1, q, k, v, seg, np ? &pa1 : NULL, B, T, H, KVH, D, W,
                                        &ws1);
            be->attention_backward(q1, k1, v1, ds, dout, o1, a1, q, k, v, seg, np ? &pa1 : NULL, B,
                                   T, H, KVH, D, W, &ws1);
            /* the prefix's sums run in a fixed order too */
            assert_memory_equal(p1, dpre_raw, (size_t)(np * 2 * kvs) * sizeof(float));
            free(p1);
            free(dpre_raw);
            assert_memory_equal(o1, out, (size_t)nq * sizeof(float));
            assert_memory_equal(a1, att, (size_t)nst * sizeof(float));
            assert_memory_equal(q1, dq, (size_t)nq * sizeof(float));
            assert_memory_equal(k1, dk, (size_t)nkv * sizeof(float));
            assert_memory_equal(v1, dv, (size_t)nkv * sizeof(float));
            finch_workspace_free(&ws1);
            free(o1);
            free(a1);
            free(q1);
            free(k1);
            free(v1);
            finch_workspace_free(&ws);
            free(seg);
            free(pred);
            free(pre);
            free(dpre0);
            free(dpre);
            free(dprer);
            free(qd);
            free(kd);
            free(vd);
            free(Pd);
            free(q);
            free(k);
            free(v);
            free(dout);
            free(out);
            free(outr);
            free(outc);
            free(att);
            free(attr);
            free(ds);
            free(dq);
            free(dk);
            free(dv);
            free(dqr);
            free(dkr);
            free(dvr);
        }
}

/* ---- swiglu --------------------------------------------------------------------------- */

typedef struct {
    int64_t n;
    const double *gate, *up, *P;
} swiglu_ctx;

static double swiglu_loss(const void *p) {
    const swiglu_ctx *c = p;
    double L = 0;
    for (int64_t i = 0; i < c->n; i++)
        L += c->P[i] * c->gate[i] / (1.0 + exp(-c->gate[i])) * c->up[i];
    return L;
}

static void test_swiglu_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 17);
    const int64_t ns[] = {1, 7, 100, 20001};
    for (size_t s = 0; s < sizeof ns / sizeof ns[0]; s++) {
        int64_t n = ns[s];
        float *gate = rand_vec(&r, n, 3.0f), *up = rand_vec(&r, n, 1.0f),
              *dh = rand_vec(&r, n, 1.0f);
        float *dg = zeros(n), *du = zeros(n), *dgr = zeros(n), *dur = zeros(n);
        be->swiglu_backward(dg, du, dh, gate, up, n);
        finch_ref_swiglu_backward(dgr, dur, dh, gate, up, n);
        double *gd = to_double(gate, n), *ud = to_double(up, n), *Pd = to_double(dh, n);
        swiglu_ctx c = {n, gd, ud, Pd};
        check_fd("swiglu dgate", gd, n, dg, swiglu_loss, &c, &r);
        check_fd("swiglu dup", ud, n, du, swiglu_loss, &c, &r);
        check_fd("swiglu dgate ref", gd, n, dgr, swiglu_loss, &c, &r);
        check_fd("swiglu dup ref", ud, n, dur, swiglu_loss, &c, &r);
        check_close("swiglu dgate", dg, dgr, n);
        check_close("swiglu dup", du, dur, n);
        /* dgate may alias dh */
        float *dd = copy_vec(dh, n), *du2 = zeros(n);
        be->swiglu_backward(dd, du2, dd, gate, up, n);
        assert_memory_equal(dd, dg, (size_t)n * sizeof(float));
        assert_memory_equal(du2, du, (size_t)n * sizeof(float));
        free(dd);
        free(du2);
        free(gd);
        free(ud);
        free(Pd);
        free(gate);
        free(up);
        free(dh);
        free(dg);
        free(du);
        free(dgr);
        free(dur);
    }
}

/* GeGLU: gelu (tanh form) of the gate times up. */
static double geglu_loss(const void *p) {
    const swiglu_ctx *c = p;
    double L = 0;
    for (int64_t i = 0; i < c->n; i++) {
        double g = c->gate[i];
        L += c->P[i] * 0.5 * g *
             (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (g + 0.044715 * g * g * g))) *
             c->up[i];
    }
    return L;
}

static void test_geglu_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 18);
    const int64_t ns[] = {1, 7, 20001};
    for (size_t s = 0; s < sizeof ns / sizeof ns[0]; s++) {
        int64_t n = ns[s];
        float *gate = rand_vec(&r, n, 3.0f), *up = rand_vec(&r, n, 1.0f),
              *dh = rand_vec(&r, n, 1.0f);
        float *dg = zeros(n), *du = zeros(n), *dgr = zeros(n), *dur = zeros(n);
        be->geglu_backward(dg, du, dh, gate, up, n);
        finch_ref_geglu_backward(dgr, dur, dh, gate, up, n);
        double *gd = to_double(gate, n), *ud = to_double(up, n), *Pd = to_double(dh, n);
        swiglu_ctx c = {n, gd, ud, Pd};
        check_fd("geglu dgate", gd, n, dg, geglu_loss, &c, &r);
        check_fd("geglu dup", ud, n, du, geglu_loss, &c, &r);
        check_fd("geglu dgate ref", gd, n, dgr, geglu_loss, &c, &r);
        check_close("geglu dgate", dg, dgr, n);
        check_close("geglu dup", du, dur, n);
        free(gd), free(ud), free(Pd), free(gate), free(up), free(dh);
        free(dg), free(du), free(dgr), free(dur);
    }
}

/* ---- layernorm (GPT-2) ------------------------------------------------------------------ */

typedef struct {
    int64_t T, C;
    double eps;
    const double *x, *w, *b, *P;
} ln_ctx;

static double ln_loss(const void *p) {
    const ln_ctx *c = p;
    double L = 0;
    for (int64_t t = 0; t < c->T; t++) {
        const double *x = c->x + t * c->C;
        double mu = 0, var = 0;
        for (int64_t i = 0; i < c->C; i++) mu += x[i] / (double)c->C;
        for (int64_t i = 0; i < c->C; i++) var += (x[i] - mu) * (x[i] - mu) / (double)c->C;
        double rs = 1.0 / sqrt(var + c->eps);
        for (int64_t i = 0; i < c->C; i++)
            L += c->P[t * c->C + i] * ((x[i] - mu) * rs * c->w[i] + c->b[i]);
    }
    return L;
}

static void test_layernorm_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 24);
    /* C = 1 is left out: its output is b whatever x is (x - mu = 0) */
    const int64_t shapes[][2] = {{1, 2}, {3, 7}, {9, 64}, {5, 67}, {33, 130}};
    const float eps = 1e-5f;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0], C = shapes[s][1];
        char what[64];
        float *x = rand_vec(&r, T * C, 1.0f), *w = rand_vec(&r, C, 1.0f),
              *b = rand_vec(&r, C, 1.0f);
        float *dy = rand_vec(&r, T * C, 1.0f), *y = zeros(T * C), *yr = zeros(T * C);
        float *st = zeros(2 * T), *str = zeros(2 * T);
        float *dw0 = rand_vec(&r, C, 1.0f), *dw = copy_vec(dw0, C), *dwr = copy_vec(dw0, C);
        float *db = copy_vec(dw0, C), *dbr = copy_vec(dw0, C);
        float *dx = zeros(T * C), *dxr = zeros(T * C), *g = zeros(C);
        be->layernorm_forward(y, st, x, w, b, T, C, eps);
        finch_ref_layernorm_forward(yr, str, x, w, b, T, C, eps);
        snprintf(what, sizeof what, "layernorm y T=%lld C=%lld", (long long)T, (long long)C);
        check_close(what, y, yr, T * C);
        check_close(what, st, str, 2 * T);
        be->layernorm_backward(dx, dw, db, dy, st, x, w, T, C);
        finch_ref_layernorm_backward(dxr, dwr, dbr, dy, st, x, w, T, C);
        double *xd = to_double(x, T * C), *wd = to_double(w, C), *bd = to_double(b, C);
        double *Pd = to_double(dy, T * C);
        ln_ctx c = {T, C, eps, xd, wd, bd, Pd};
        snprintf(what, sizeof what, "layernorm dx T=%lld C=%lld", (long long)T, (long long)C);
        check_fd(what, xd, T * C, dx, ln_loss, &c, &r);
        check_fd(what, xd, T * C, dxr, ln_loss, &c, &r);
        check_close(what, dx, dxr, T * C);
        snprintf(what, sizeof what, "layernorm dw T=%lld C=%lld", (long long)T, (long long)C);
        for (int64_t i = 0; i < C; i++) g[i] = dw[i] - dw0[i];
        check_fd(what, wd, C, g, ln_loss, &c, &r);
        for (int64_t i = 0; i < C; i++) g[i] = dwr[i] - dw0[i];
        check_fd(what, wd, C, g, ln_loss, &c, &r);
        check_close(what, dw, dwr, C);
        snprintf(what, sizeof what, "layernorm db T=%lld C=%lld", (long long)T, (long long)C);
        for (int64_t i = 0; i < C; i++) g[i] = db[i] - dw0[i];
        check_fd(what, bd, C, g, ln_loss, &c, &r);
        for (int64_t i = 0; i < C; i++) g[i] = dbr[i] - dw0[i];
        check_fd(what, bd, C, g, ln_loss, &c, &r);
        check_close(what, db, dbr, C);
        /* dx may alias dy; without dw, db only dx is computed */
        float *dd = copy_vec(dy, T * C);
        be->layernorm_backward(dd, NULL, NULL, dd, st, x, w, T, C);
        assert_memory_equal(dd, dx, (size_t)(T * C) * sizeof(float));
        free(dd), free(xd), free(wd), free(bd), free(Pd), free(x), free(w), free(b), free(dy);
        free(y), free(yr), free(st), free(str), free(dw0), free(dw), free(dwr), free(db);
        free(dbr), free(dx), free(dxr), free(g);
    }
}

/* GELU (tanh form), GPT-2's MLP activation. */
typedef struct {
    int64_t n;
    const double *x, *P;
} gelu_ctx;

static double gelu_loss(const void *p) {
    const gelu_ctx *c = p;
    double L = 0;
    for (int64_t i = 0; i < c->n; i++) {
        double g = c->x[i];
        L += c->P[i] * 0.5 * g *
             (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (g + 0.044715 * g * g * g)));
    }
    return L;
}

static void test_gelu_backward(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 25);
    const int64_t ns[] = {1, 7, 20001};
    for (size_t s = 0; s < sizeof ns / sizeof ns[0]; s++) {
        int64_t n = ns[s];
        float *x = rand_vec(&r, n, 3.0f), *dy = rand_vec(&r, n, 1.0f);
        float *y = zeros(n), *yr = zeros(n), *dx = zeros(n), *dxr = zeros(n);
        be->gelu_forward(y, x, n);
        finch_ref_gelu_forward(yr, x, n);
        check_close("gelu y", y, yr, n);
        be->gelu_backward(dx, dy, x, n);
        finch_ref_gelu_backward(dxr, dy, x, n);
        double *xd = to_double(x, n), *Pd = to_double(dy, n);
        gelu_ctx c = {n, xd, Pd};
        check_fd("gelu dx", xd, n, dx, gelu_loss, &c, &r);
        check_fd("gelu dx ref", xd, n, dxr, gelu_loss, &c, &r);
        check_close("gelu dx", dx, dxr, n);
        /* dx may alias dy */
        float *dd = copy_vec(dy, n);
        be->gelu_backward(dd, dd, x, n);
        assert_memory_equal(dd, dx, (size_t)n * sizeof(float));
        free(dd), free(xd), free(Pd), free(x), free(dy), free(y), free(yr), free(dx), free(dxr);
    }
}

/* ---- softmax + cross-entropy ---------------------------------------------------------- */

typedef struct {
    int64_t N, V;
    const double *l;
    const int32_t *tg;
} xent_ctx;

/* the mean loss over unmasked rows, in double */
static double xent_loss(const void *p) {
    const xent_ctx *c = p;
    double L = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < c->N; i++) {
        if (c->tg[i] < 0) continue;
        const double *l = c->l + i * c->V;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < c->V; j++) mx = l[j] > mx ? l[j] : mx;
        for (int64_t j = 0; j < c->V; j++) sum += exp(l[j] - mx);
        L += log(sum) + mx - l[c->tg[i]];
        n++;
    }
    return n ? L / (double)n : 0.0;
}

static void test_softmax_xent(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 18);
    const int64_t shapes[][2] = {{1, 1}, {1, 3}, {5, 37}, {7, 1000}, {33, 129}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t N = shapes[s][0], V = shapes[s][1];
        char what[64];
        snprintf(what, sizeof what, "softmax_xent N=%lld V=%lld", (long long)N, (long long)V);
        int32_t *tg = malloc((size_t)N * sizeof *tg);
        assert_non_null(tg);
        for (int64_t i = 0; i < N; i++)
            tg[i] = (i % 3 == 1) ? -1 : (int32_t)(finch_rng_u64(&r) % (uint64_t)V);
        float *l = rand_vec(&r, N * V, 2.0f), *dl = zeros(N * V), *dlr = zeros(N * V);
        double loss = be->softmax_xent(dl, l, tg, N, V, 0.0f);
        double lossr = finch_ref_softmax_xent(dlr, l, tg, N, V, 0.0f);
        double *ld = to_double(l, N * V);
        xent_ctx c = {N, V, ld, tg};
        double want = xent_loss(&c);
        /* f32 exponentials summed in double: relative error ~1e-7 */
        assert_true(fabs(loss - want) <= 1e-6 * (1 + fabs(want)));
        assert_true(fabs(lossr - want) <= 1e-9 * (1 + fabs(want)));
        check_fd(what, ld, N * V, dl, xent_loss, &c, &r);
        check_fd(what, ld, N * V, dlr, xent_loss, &c, &r);
        check_close(what, dl, dlr, N * V);
        for (int64_t i = 0; i < N; i++)
            if (tg[i] < 0)
                for (int64_t j = 0; j < V; j++) assert_true(dl[i * V + j] == 0.0f);
        /* loss only; an explicit scale; in place */
        assert_true(be->softmax_xent(NULL, l, tg, N, V, 0.0f) == loss);
        float *dl3 = zeros(N * V), *inplace = copy_vec(l, N * V);
        be->softmax_xent(dl3, l, tg, N, V, 0.25f);
        int64_t n = 0;
        for (int64_t i = 0; i < N; i++) n += tg[i] >= 0;
        for (int64_t i = 0; i < N * V; i++)
            assert_true(fabsf(dl3[i] - dl[i] * 0.25f * (float)n) <= 1e-6f);
        assert_true(be->softmax_xent(inplace, inplace, tg, N, V, 0.0f) == loss);
        assert_memory_equal(inplace, dl, (size_t)(N * V) * sizeof(float));
        /* stability: a huge common offset changes nothing */
        for (int64_t i = 0; i < N * V; i++) inplace[i] = l[i] + 1e4f;
        double big = be->softmax_xent(NULL, inplace, tg, N, V, 0.0f);
        double bigr = finch_ref_softmax_xent(NULL, inplace, tg, N, V, 0.0f);
        /* l + 1e4 is rounded to f32's spacing at 1e4 (~1e-3), so compare loosely */
        assert_true(isfinite(big) && fabs(big - want) <= 1e-2 * (1 + fabs(want)));
        assert_true(fabs(big - bigr) <= 1e-5 * (1 + fabs(bigr)));
        free(dl3);
        free(inplace);
        free(ld);
        free(tg);
        free(l);
        free(dl);
        free(dlr);
    }
    /* a NaN logit anywhere in an unmasked row makes the loss NaN (the run must stop) */
    float *nl = rand_vec(&r, 3 * 40, 1.0f);
    int32_t nt[3] = {1, 2, 3};
    for (int where = 0; where < 40; where += 13) {
        nl[40 + where] = NAN;
        assert_true(isnan(be->softmax_xent(NULL, nl, nt, 3, 40, 0.0f)));
        assert_true(isnan(finch_ref_softmax_xent(NULL, nl, nt, 3, 40, 0.0f)));
        nl[40 + where] = 0.5f;
    }
    free(nl);
    /* every row masked: zero loss, zero gradient */
    int32_t tg[2] = {-1, -1};
    float l[6] = {1, 2, 3, 4, 5, 6}, dl[6] = {9, 9, 9, 9, 9, 9};
    assert_true(be->softmax_xent(dl, l, tg, 2, 3, 0.0f) == 0.0);
    assert_true(finch_ref_softmax_xent(NULL, l, tg, 2, 3, 0.0f) == 0.0);
    for (int i = 0; i < 6; i++) assert_true(dl[i] == 0.0f);
}

int main(void) {
    be = test_backend();
    finch_threads_set(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_backward_input), cmocka_unit_test(test_matmul_backward_weight),
        cmocka_unit_test(test_embed_backward),        cmocka_unit_test(test_rmsnorm_backward),
        cmocka_unit_test(test_rope_backward),         cmocka_unit_test(test_attention_backward),
        cmocka_unit_test(test_swiglu_backward),       cmocka_unit_test(test_geglu_backward),
        cmocka_unit_test(test_layernorm_backward),    cmocka_unit_test(test_gelu_backward),
        cmocka_unit_test(test_softmax_xent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
