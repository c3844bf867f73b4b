/*
 * ref.c: naive, obviously correct versions of every op, accumulating in double and
 * running on one thread. Tests compare each backend against these; nothing else calls
 * them on a hot path.
 */
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void finch_ref_matmul(float *y, const float *x, const finch_weight *w, int64_t T) {
    const finch_dtype_traits *tr = &finch_dtype_info[w->type];
    float *row = malloc((size_t)w->cols * sizeof(float));
    FINCH_ASSERT(row);
    for (int64_t r = 0; r < w->rows; r++) {
        tr->dequant(row, (const uint8_t *)w->data + (size_t)r * w->row_bytes, w->cols);
        for (int64_t t = 0; t < T; t++) {
            double s = 0;
            for (int64_t c = 0; c < w->cols; c++) s += (double)row[c] * x[t * w->cols + c];
            y[t * w->rows + r] = (float)s;
        }
    }
    free(row);
}

void finch_ref_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T,
                               int64_t C, float eps) {
    for (int64_t t = 0; t < T; t++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += (double)x[t * C + c] * x[t * C + c];
        double r = 1.0 / sqrt(ss / (double)C + (double)eps);
        if (rstd) rstd[t] = (float)r;
        for (int64_t c = 0; c < C; c++) y[t * C + c] = (float)(x[t * C + c] * r * w[c]);
    }
}

void finch_ref_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta) {
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < D / 2; i++) {
                double ang = (double)pos[t] * pow((double)theta, -2.0 * i / D);
                float *p = x + (t * nh + h) * D + 2 * i;
                double a = p[0], b = p[1];
                p[0] = (float)(a * cos(ang) - b * sin(ang));
                p[1] = (float)(a * sin(ang) + b * cos(ang));
            }
}

void finch_ref_attention_forward(float *out, const float *q, const float *k, const float *v,
                                 int64_t T, int64_t pos0, int H, int KVH, int D, int64_t window) {
    int64_t n_all = pos0 + T, kvs = (int64_t)KVH * D;
    double *att = malloc((size_t)n_all * sizeof(double));
    FINCH_ASSERT(att);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / KVH);
            int64_t n = pos0 + t + 1, j0 = window > 0 && n > window ? n - window : 0;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = j0; j < n; j++) {
                double s = 0;
                for (int d = 0; d < D; d++)
                    s += (double)q[(t * H + h) * D + d] * k[j * kvs + g * D + d];
                att[j] = s / sqrt((double)D);
                if (att[j] > mx) mx = att[j];
            }
            for (int64_t j = j0; j < n; j++) sum += (att[j] = exp(att[j] - mx));
            for (int d = 0; d < D; d++) {
                double o = 0;
                for (int64_t j = j0; j < n; j++) o += att[j] / sum * v[j * kvs + g * D + d];
                out[(t * H + h) * D + d] = (float)o;
            }
        }
    free(att);
}

void finch_ref_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i];
        h[i] = (float)(g / (1.0 + exp(-g)) * up[i]);
    }
}

/* ---- backward ops ------------------------------------------------------------------- */

void finch_ref_matmul_backward_input(float *dx, const float *dy, const finch_weight *w, int64_t T) {
    const int64_t R = w->rows, K = w->cols;
    float *row = malloc((size_t)K * sizeof(float));
    double *acc = calloc((size_t)(T * K), sizeof(double));
    FINCH_ASSERT(row && acc);
    for (int64_t r = 0; r < R; r++) {
        finch_dtype_info[w->type].dequant(row, (const uint8_t *)w->data + (size_t)r * w->row_bytes,
                                          K);
        for (int64_t t = 0; t < T; t++)
            for (int64_t c = 0; c < K; c++) acc[t * K + c] += (double)dy[t * R + r] * row[c];
    }
    for (int64_t i = 0; i < T * K; i++) dx[i] = (float)acc[i];
    free(acc);
    free(row);
}

void finch_ref_matmul_backward_weight(float *dw, const float *dy, const float *x, int64_t T,
                                      int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double s = 0;
            for (int64_t t = 0; t < T; t++) s += (double)dy[t * rows + r] * x[t * cols + c];
            dw[r * cols + c] = (float)(dw[r * cols + c] + s);
        }
}

void finch_ref_embed_backward(float *demb, const float *dx, const int32_t *ids, int64_t T,
                              int64_t C) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) demb[(int64_t)ids[t] * C + c] += dx[t * C + c];
}

/* y = x r w with r = (mean(x^2) + eps)^(-1/2), so dr/dx_i = -r^3 x_i / C and
 *   dx_i = r w_i dy_i - r^3 / C x_i sum_j dy_j w_j x_j,   dw_i += dy_i x_i r. */
void finch_ref_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *rstd,
                                const float *x, const float *w, int64_t T, int64_t C) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C, *dyt = dy + t * C;
        double r = rstd[t], s = 0;
        for (int64_t c = 0; c < C; c++) s += (double)dyt[c] * w[c] * xt[c];
        for (int64_t c = 0; c < C; c++) {
            double g = dyt[c];
            if (dw) dw[c] = (float)(dw[c] + g * xt[c] * r);
            dx[t * C + c] = (float)(r * w[c] * g - r * r * r / (double)C * xt[c] * s);
        }
    }
}

void finch_ref_rope_backward(float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta) {
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < D / 2; i++) {
                double ang = (double)pos[t] * pow((double)theta, -2.0 * i / D);
                float *p = dx + (t * nh + h) * D + 2 * i;
                double a = p[0], b = p[1];
                p[0] = (float)(a * cos(ang) + b * sin(ang));
                p[1] = (float)(-a * sin(ang) + b * cos(ang));
            }
}

/* The first token of the segment holding token t of row b: scan back while seg repeats. */
static int64_t ref_seg_start(const int32_t *seg, int64_t b, int64_t T, int64_t t) {
    if (!seg) return 0;
    while (t > 0 && seg[b * T + t - 1] == seg[b * T + t]) t--;
    return t;
}

/* Whether a query of the segment starting at s0, token t, sees column c (c < P: prefix key
 * c, at position c; else token c - P, at position P + (c - P - s0)): in the segment, not
 * after t, and with window W > 0 within W positions (the query is at P + t - s0). */
static bool ref_sees(int64_t c, int64_t P, int64_t s0, int64_t t, int64_t W) {
    if (c >= P && (c - P < s0 || c - P > t)) return false;
    int64_t kpos = c < P ? c : P + (c - P - s0), qpos = P + t - s0;
    return W <= 0 || kpos > qpos - W;
}

void finch_ref_attention_forward_train(float *out, float *att, const float *q, const float *k,
                                       const float *v, const int32_t *seg,
                                       const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                       int KVH, int D, int64_t W) {
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D, P = pre ? pre->n : 0, S = P + T;
    double *p = malloc((size_t)S * sizeof(double));
    FINCH_ASSERT(p);
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                int g = h / (H / KVH);
                const float *qt = q + (b * T + t) * qs + h * D;
                const int64_t s0 = ref_seg_start(seg, b, T, t);
                double mx = -INFINITY, sum = 0;
                /* column c < P: prefix key c; c >= P: key c - P of the row */
                for (int64_t c = 0; c < S; c++) {
                    if (!ref_sees(c, P, s0, t, W)) continue;
                    const float *kc = c < P ? pre->k + c * pre->stride : k + (b * T + c - P) * kvs;
                    double s = 0;
                    for (int d = 0; d < D; d++) s += (double)qt[d] * kc[g * D + d];
                    p[c] = s / sqrt((double)D);
                    if (p[c] > mx) mx = p[c];
                }
                for (int64_t c = 0; c < S; c++)
                    if (ref_sees(c, P, s0, t, W)) sum += (p[c] = exp(p[c] - mx));
                float *at = att + ((b * H + h) * T + t) * S;
                for (int64_t c = 0; c < S; c++)
                    at[c] = ref_sees(c, P, s0, t, W) ? (float)(p[c] / sum) : 0.0f;
                for (int d = 0; d < D; d++) {
                    double o = 0;
                    for (int64_t c = 0; c < S; c++) {
                        if (!ref_sees(c, P, s0, t, W)) continue;
                        const float *vc =
                            c < P ? pre->v + c * pre->stride : v + (b * T + c - P) * kvs;
                        o += p[c] / sum * vc[g * D + d];
                    }
                    out[(b * T + t) * qs + h * D + d] = (float)o;
                }
            }
    free(p);
}

/* With P the probabilities and S = q k^T / sqrt(D) the scores of one row:
 *   dv_j += P_j dout,  dP_j = dout . v_j,  dS_j = P_j (dP_j - sum_i P_i dP_i),
 *   dq = sum_j dS_j k_j / sqrt(D),  dk_j += dS_j q / sqrt(D).
 * Prefix keys are columns 0..n-1 of every row; their gradients sum over all rows. */
void finch_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                  const float *att, const float *q, const float *k, const float *v,
                                  const int32_t *seg, const finch_attn_prefix *pre, int64_t B,
                                  int64_t T, int H, int KVH, int D, int64_t W) {
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D, nkv = B * T * kvs;
    const int64_t P = pre ? pre->n : 0, S = P + T, npk = P * kvs;
    const double scale = 1.0 / sqrt((double)D);
    double *acc = calloc((size_t)(2 * nkv + 2 * npk), sizeof(double)),
           *ds = malloc((size_t)S * sizeof(double));
    FINCH_ASSERT(acc && ds);
    double *dka = acc, *dva = acc + nkv, *dpk = acc + 2 * nkv, *dpv = dpk + npk;
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                int g = h / (H / KVH);
                const float *at = att + ((b * H + h) * T + t) * S;
                const float *dot = dout + (b * T + t) * qs + h * D,
                            *qt = q + (b * T + t) * qs + h * D;
                const int64_t s0 = ref_seg_start(seg, b, T, t);
                double sp = 0;
                for (int64_t c = 0; c < S; c++) {
                    if (!ref_sees(c, P, s0, t, W)) continue;
                    const float *vc = c < P ? pre->v + c * pre->stride : v + (b * T + c - P) * kvs;
                    double dp = 0;
                    for (int d = 0; d < D; d++) dp += (double)dot[d] * vc[g * D + d];
                    ds[c] = dp;
                    sp += at[c] * dp;
                }
                for (int64_t c = 0; c < S; c++)
                    if (ref_sees(c, P, s0, t, W)) ds[c] = at[c] * (ds[c] - sp);
                for (int d = 0; d < D; d++) {
                    double s = 0;
                    for (int64_t c = 0; c < S; c++) {
                        if (!ref_sees(c, P, s0, t, W)) continue;
                        const float *kc =
                            c < P ? pre->k + c * pre->stride : k + (b * T + c - P) * kvs;
                        s += ds[c] * kc[g * D + d];
                    }
                    dq[(b * T + t) * qs + h * D + d] = (float)(s * scale);
                }
                for (int64_t c = 0; c < S; c++) {
                    if (!ref_sees(c, P, s0, t, W)) continue;
                    double *kd = c < P ? dpk + c * kvs : dka + (b * T + c - P) * kvs,
                           *vd = c < P ? dpv + c * kvs : dva + (b * T + c - P) * kvs;
                    for (int d = 0; d < D; d++) {
                        kd[g * D + d] += ds[c] * scale * qt[d];
                        vd[g * D + d] += (double)at[c] * dot[d];
                    }
                }
            }
    for (int64_t i = 0; i < nkv; i++) {
        dk[i] = (float)dka[i];
        dv[i] = (float)dva[i];
    }
    if (pre && pre->dk)
        for (int64_t c = 0; c < P; c++)
            for (int64_t i = 0; i < kvs; i++) {
                pre->dk[c * pre->stride + i] += (float)dpk[c * kvs + i];
                pre->dv[c * pre->stride + i] += (float)dpv[c * kvs + i];
            }
    free(ds);
    free(acc);
}

/* h = silu(g) u, silu(g) = g s(g) with s the logistic function, silu' = s (1 + g (1 - s)). */
void finch_ref_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i], s = 1.0 / (1.0 + exp(-g)), d = dh[i];
        dup[i] = (float)(d * g * s);
        dgate[i] = (float)(d * up[i] * s * (1.0 + g * (1.0 - s)));
    }
}

double finch_ref_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                              int64_t N, int64_t V, float grad_scale) {
    int64_t n = 0;
    for (int64_t i = 0; i < N; i++) n += targets[i] >= 0;
    double scale = grad_scale != 0.0f ? grad_scale : (n ? 1.0 / (double)n : 0.0), loss = 0;
    for (int64_t i = 0; i < N; i++) {
        const float *l = logits + i * V;
        int32_t tg = targets[i];
        if (tg < 0) {
            if (dlogits)
                for (int64_t j = 0; j < V; j++) dlogits[i * V + j] = 0.0f;
            continue;
        }
        FINCH_ASSERT(tg < V);
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        for (int64_t j = 0; j < V; j++) sum += exp(l[j] - mx);
        loss += log(sum) - (l[tg] - mx);
        if (dlogits) {
            double lt = l[tg];
            for (int64_t j = 0; j < V; j++) {
                double p = exp(l[j] - mx) / sum;
                dlogits[i * V + j] = (float)(scale * p);
            }
            dlogits[i * V + tg] = (float)(scale * (exp(lt - mx) / sum - 1.0));
        }
    }
    return n ? loss / (double)n : 0.0;
}

void finch_ref_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < n; j++) y[t * n + j] = (float)((double)x[t * n + j] * s[j]);
}

void finch_ref_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        double acc = 0;
        for (int64_t t = 0; t < T; t++) acc += (double)a[t * n + j] * (b ? b[t * n + j] : 1.0);
        ds[j] = (float)(ds[j] + acc);
    }
}

/* The mask one element at a time, as finch_dropout defines it. */
static bool ref_kept(const finch_dropout *d, int64_t i) {
    return finch_mix64(d->base + (uint64_t)i) >= d->threshold;
}

void finch_ref_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d) {
    for (int64_t i = 0; i < n; i++) y[i] = ref_kept(d, i) ? x[i] * d->scale : 0.0f;
}

void finch_ref_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d) {
    for (int64_t i = 0; i < n; i++)
        if (ref_kept(d, i)) dx[i] += g[i] * d->scale;
}

void finch_ref_dropout_bits(uint64_t *bits, int64_t T, int64_t n, const finch_dropout *d) {
    const int64_t nw = finch_mask_words(n);
    memset(bits, 0, (size_t)(T * nw) * sizeof *bits);
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < n; j++)
            if (!ref_kept(d, t * n + j)) bits[t * nw + j / 64] |= 1ull << (j % 64);
}

static bool ref_bit(const uint64_t *bits, int64_t nw, int64_t t, int64_t j) {
    return bits[t * nw + j / 64] >> (j % 64) & 1;
}

void finch_ref_matmul_masked(float *y, const float *x, const uint64_t *bits, float alpha,
                             const finch_weight *w, int64_t T) {
    const int64_t R = w->rows, K = w->cols, nw = finch_mask_words(K);
    float *row = malloc((size_t)K * sizeof(float));
    FINCH_ASSERT(row);
    for (int64_t r = 0; r < R; r++) {
        finch_dtype_info[w->type].dequant(row, (const uint8_t *)w->data + (size_t)r * w->row_bytes,
                                          K);
        for (int64_t t = 0; t < T; t++) {
            double acc = 0;
            for (int64_t c = 0; c < K; c++)
                if (ref_bit(bits, nw, t, c)) acc += (double)x[t * K + c] * row[c];
            y[t * R + r] = (float)(y[t * R + r] + alpha * acc);
        }
    }
    free(row);
}

void finch_ref_matmul_backward_masked(float *dx, const float *dy, const uint64_t *bits, float alpha,
                                      const finch_weight *w, int64_t T) {
    const int64_t K = w->cols, nw = finch_mask_words(K);
    float *full = malloc((size_t)(T * K) * sizeof(float));
    FINCH_ASSERT(full);
    finch_ref_matmul_backward_input(full, dy, w, T);
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < K; c++)
            if (ref_bit(bits, nw, t, c)) dx[t * K + c] += alpha * full[t * K + c];
    free(full);
}

/* gelu(g) = g Phi~(g), the tanh form: 0.5 g (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3). */
void finch_ref_geglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    const double c = sqrt(2.0 / 3.14159265358979323846);
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i], u = c * (g + 0.044715 * g * g * g);
        h[i] = (float)(0.5 * g * (1.0 + tanh(u)) * up[i]);
    }
}

void finch_ref_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                              const float *up, int64_t n) {
    const double c = sqrt(2.0 / 3.14159265358979323846);
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i], u = c * (g + 0.044715 * g * g * g), th = tanh(u);
        double gelu = 0.5 * g * (1.0 + th);
        double dgelu =
            0.5 * (1.0 + th) + 0.5 * g * (1.0 - th * th) * c * (1.0 + 3 * 0.044715 * g * g);
        double d = dh[i];
        dup[i] = (float)(d * gelu);
        dgate[i] = (float)(d * up[i] * dgelu);
    }
}

/* y = (x - mu) r w + b, r = (mean((x - mu)^2) + eps)^(-1/2); stats (T, 2) = mu, r. */
void finch_ref_layernorm_forward(float *y, float *stats, const float *x, const float *w,
                                 const float *b, int64_t T, int64_t C, float eps) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        double mu = 0, var = 0;
        for (int64_t c = 0; c < C; c++) mu += xt[c];
        mu /= (double)C;
        for (int64_t c = 0; c < C; c++) var += (xt[c] - mu) * (xt[c] - mu);
        double r = 1.0 / sqrt(var / (double)C + (double)eps);
        if (stats) {
            stats[2 * t] = (float)mu;
            stats[2 * t + 1] = (float)r;
        }
        for (int64_t c = 0; c < C; c++) y[t * C + c] = (float)((xt[c] - mu) * r * w[c] + b[c]);
    }
}

/* xh = (x - mu) r, g = dy w: dx = r (g - mean(g) - xh mean(g xh)), dw += dy xh, db += dy. */
void finch_ref_layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                  const float *stats, const float *x, const float *w, int64_t T,
                                  int64_t C) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C, *dyt = dy + t * C;
        const double mu = stats[2 * t], r = stats[2 * t + 1];
        double sg = 0, sgx = 0;
        for (int64_t c = 0; c < C; c++) {
            sg += (double)dyt[c] * w[c];
            sgx += (double)dyt[c] * w[c] * (xt[c] - mu) * r;
        }
        for (int64_t c = 0; c < C; c++) {
            double xh = (xt[c] - mu) * r, g = dyt[c];
            if (dw) dw[c] = (float)(dw[c] + g * xh);
            if (db) db[c] = (float)(db[c] + g);
            dx[t * C + c] = (float)(r * (g * w[c] - sg / (double)C - xh * sgx / (double)C));
        }
    }
}

/* gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). */
void finch_ref_gelu_forward(float *y, const float *x, int64_t n) {
    const double c = sqrt(2.0 / 3.14159265358979323846);
    for (int64_t i = 0; i < n; i++) {
        double g = x[i];
        y[i] = (float)(0.5 * g * (1.0 + tanh(c * (g + 0.044715 * g * g * g))));
    }
}

void finch_ref_gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
    const double c = sqrt(2.0 / 3.14159265358979323846);
    for (int64_t i = 0; i < n; i++) {
        double g = x[i], th = tanh(c * (g + 0.044715 * g * g * g));
        dx[i] = (float)(dy[i] * (0.5 * (1.0 + th) +
                                 0.5 * g * (1.0 - th * th) * c * (1.0 + 3 * 0.044715 * g * g)));
    }
}

void finch_ref_dora_backward(float *dm, float *gs, float *h, const float *g, const float *zl,
                             const float *s1, const float *s2, int64_t T, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        double acc = 0;
        for (int64_t t = 0; t < T; t++) {
            const int64_t i = t * n + j;
            const float gi = g[i];
            acc += (double)gi * zl[i];
            gs[i] = s1[j] * gi;
            if (h) h[i] = s2[j] * gi;
        }
        dm[j] += (float)acc;
    }
}

void finch_ref_lora_down_backward(float *dA, float *dx, const float *du, const float *x,
                                  const float *A, int64_t T, int64_t in, int64_t r,
                                  const finch_dropout *d) {
    for (int64_t c = 0; c < in; c++)
        for (int64_t j = 0; j < r; j++) {
            double acc = 0;
            for (int64_t t = 0; t < T; t++) {
                const int64_t i = t * in + c;
                const double f = !d ? 1.0 : ref_kept(d, i) ? (double)d->scale : 0.0;
                acc += (double)du[t * r + j] * (f * x[i]);
            }
            dA[j * in + c] = (float)(dA[j * in + c] + acc);
        }
    for (int64_t t = 0; dx && t < T; t++)
        for (int64_t c = 0; c < in; c++) {
            const int64_t i = t * in + c;
            if (d && !ref_kept(d, i)) continue;
            double g = 0;
            for (int64_t j = 0; j < r; j++) g += (double)du[t * r + j] * A[j * in + c];
            dx[i] = (float)(dx[i] + (d ? (double)d->scale : 1.0) * g);
        }
}

void finch_ref_dora_combine(float *y, float *zl, const float *u, const float *bt, int64_t r,
                            float c, const float *s, int64_t T, int64_t n) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < n; j++) {
            const int64_t i = t * n + j;
            double lora = 0;
            for (int64_t k = 0; k < r; k++) lora += (double)u[t * r + k] * bt[k * n + j];
            const double z = (double)c * zl[i] + lora;
            zl[i] = (float)z;
            y[i] = (float)((y[i] + lora) + s[j] * z);
        }
}
