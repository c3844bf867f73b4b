/*
 * norm.c: RMSNorm, y = x / sqrt(mean(x^2) + eps) * w, and the token-embedding lookup.
 * The sum of squares accumulates in double so the result is exact to f32 rounding.
 */
#include "kernels/cpu/cpu.h"

#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* sum_c (double)(a_c b_c) * x_c, b NULL meaning 1: the per-token sums of both passes, in
 * double. Each term is exact in double (a product of two floats), so lanes of partial sums
 * change only the order of the additions. */
static inline double dot_d(const float *a, const float *b, const float *x, int64_t C) {
    double s = 0;
    int64_t c = 0;
#if defined(__AVX512F__)
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (; c + 16 <= C; c += 16) {
        __m256 p0 = _mm256_loadu_ps(a + c), p1 = _mm256_loadu_ps(a + c + 8);
        if (b) {
            p0 = _mm256_mul_ps(p0, _mm256_loadu_ps(b + c));
            p1 = _mm256_mul_ps(p1, _mm256_loadu_ps(b + c + 8));
        }
        s0 = _mm512_fmadd_pd(_mm512_cvtps_pd(p0), _mm512_cvtps_pd(_mm256_loadu_ps(x + c)), s0);
        s1 = _mm512_fmadd_pd(_mm512_cvtps_pd(p1), _mm512_cvtps_pd(_mm256_loadu_ps(x + c + 8)), s1);
    }
    s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
#endif
    for (; c < C; c++) s += (double)(b ? a[c] * b[c] : a[c]) * x[c];
    return s;
}

void finch_cpu_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T,
                               int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        float *yt = y + t * C;
        double ss = dot_d(xt, NULL, xt, C);
        float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        if (rstd) rstd[t] = r;
        for (int64_t c = 0; c < C; c++) yt[c] = xt[c] * r * w[c];
    }
}

/* With r = rstd[t] (dr/dx_i = -r^3 x_i / C):
 *   dx_i = r w_i dy_i - r^3 / C x_i sum_j dy_j w_j x_j,   dw_i += sum_t dy_i x_i r.
 * dx is split by token; dw by blocks of columns, each summing over tokens in a fixed
 * order, so no two threads add into the same element. */
void finch_cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *rstd,
                                const float *x, const float *w, int64_t T, int64_t C) {
    enum { CB = 64 };
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t cb = 0; cb < (dw ? C : 0); cb += CB) {
            int64_t n = C - cb < CB ? C - cb : CB;
            float acc[CB] = {0};
            for (int64_t t = 0; t < T; t++) {
                const float *dyt = dy + t * C + cb, *xt = x + t * C + cb;
                float r = rstd[t];
                for (int64_t c = 0; c < n; c++) acc[c] += dyt[c] * xt[c] * r;
            }
            for (int64_t c = 0; c < n; c++) dw[cb + c] += acc[c];
        }
        /* the implicit barrier above: dw has read dy before dx (which may alias it) is
         * written */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * C, *dyt = dy + t * C;
            float *dxt = dx + t * C;
            double s = dot_d(dyt, w, xt, C);
            float r = rstd[t], k = (float)((double)r * r * r / (double)C * s);
            for (int64_t c = 0; c < C; c++) dxt[c] = r * w[c] * dyt[c] - k * xt[c];
        }
    }
}

void finch_cpu_embed(float *x, const int32_t *ids, int64_t T, const finch_weight *emb) {
    finch_dequant_fn dq = finch_dtype_info[emb->type].dequant;
    for (int64_t t = 0; t < T; t++) {
        FINCH_ASSERT(ids[t] >= 0 && ids[t] < emb->rows);
        dq(x + t * emb->cols, (const uint8_t *)emb->data + (size_t)ids[t] * emb->row_bytes,
           emb->cols);
    }
}

/* Tokens may repeat, so rows are added one token after another, in order. */
void finch_cpu_embed_backward(float *demb, const float *dx, const int32_t *ids, int64_t T,
                              int64_t C) {
    for (int64_t t = 0; t < T; t++) {
        float *row = demb + (int64_t)ids[t] * C;
        const float *g = dx + t * C;
        for (int64_t c = 0; c < C; c++) row[c] += g[c];
    }
}
