/*
 * ref.c: naive, obviously correct versions of every op, accumulating in double and
 * running on one thread. Tests compare each backend against these; nothing else calls
 * them on a hot path.
 */
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>

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

void finch_ref_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w,
                               int64_t T, int64_t C, float eps) {
    for (int64_t t = 0; t < T; t++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += (double)x[t * C + c] * x[t * C + c];
        double r = 1.0 / sqrt(ss / (double)C + (double)eps);
        if (rstd) rstd[t] = (float)r;
        for (int64_t c = 0; c < C; c++) y[t * C + c] = (float)(x[t * C + c] * r * w[c]);
    }
}

void finch_ref_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D,
                            float theta) {
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
                                 int64_t T, int64_t pos0, int H, int KVH, int D) {
    int64_t n_all = pos0 + T, kvs = (int64_t)KVH * D;
    double *att = malloc((size_t)n_all * sizeof(double));
    FINCH_ASSERT(att);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / KVH);
            int64_t n = pos0 + t + 1;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int d = 0; d < D; d++) s += (double)q[(t * H + h) * D + d] * k[j * kvs + g * D + d];
                att[j] = s / sqrt((double)D);
                if (att[j] > mx) mx = att[j];
            }
            for (int64_t j = 0; j < n; j++) sum += (att[j] = exp(att[j] - mx));
            for (int d = 0; d < D; d++) {
                double o = 0;
                for (int64_t j = 0; j < n; j++) o += att[j] / sum * v[j * kvs + g * D + d];
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
