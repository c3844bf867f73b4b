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

/* llama.cpp's RMSNorm, for the llamacpp numerics: its rounding steps differ from the exact
 * form above (each square rounded to f32 before the double sum, the mean rounded to f32,
 * the reciprocal square root in f32), and at 8-bit activations one ulp of difference in
 * the scale can flip a code. The sum runs in column order, as ggml's scalar loop. */
void finch_cpu_rmsnorm_llamacpp(float *y, const float *x, const float *w, int64_t T, int64_t C,
                                float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        float *yt = y + t * C;
        double ss = 0;
        for (int64_t c = 0; c < C; c++) {
            float sq = xt[c] * xt[c];
            ss += (double)sq;
        }
        float mean = (float)(ss / (double)C);
        float scale = 1.0f / sqrtf(mean + eps);
        for (int64_t c = 0; c < C; c++) yt[c] = xt[c] * scale * w[c];
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

/* LayerNorm (GPT-2): y = (x - mu) r w + b, mu = mean(x), r = 1 / sqrt(mean((x - mu)^2) +
 * eps), the biased variance as torch.nn.LayerNorm computes it. Sums in double. */
void finch_cpu_layernorm_forward(float *y, float *stats, const float *x, const float *w,
                                 const float *b, int64_t T, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        float *yt = y + t * C;
        double s = 0, ss = 0;
        for (int64_t c = 0; c < C; c++) s += xt[c];
        const double mu = s / (double)C;
        for (int64_t c = 0; c < C; c++) ss += (xt[c] - mu) * (xt[c] - mu);
        const float m = (float)mu, r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        if (stats) {
            stats[2 * t] = m;
            stats[2 * t + 1] = r;
        }
        for (int64_t c = 0; c < C; c++) yt[c] = (xt[c] - m) * r * w[c] + b[c];
    }
}

/* LayerNorm as llama.cpp computes it (ggml_norm on an AVX-512 build, then its mul by w and
 * add of b): mu = (float)(sum x in double) / C in f32; d = x - mu; the squares d d rounded
 * to f32 and summed per run of 16 as finch_reduce16, the runs and the rest (one by one) in
 * double, var = (float)(sum / C); r = 1 / sqrtf(var + eps); y = ((d r) w) + b, each step
 * rounded. y may alias x. */
void finch_cpu_layernorm_llamacpp(float *y, const float *x, const float *w, const float *b,
                                  int64_t T, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        float *yt = y + t * C;
        double s = 0;
        for (int64_t c = 0; c < C; c++) s += (double)xt[c];
        const float mu = (float)s / (float)C;
        double ss = 0;
        int64_t c = 0;
        for (; c + 15 < C; c += 16) {
            float sq[16];
            for (int l = 0; l < 16; l++) {
                const float d = xt[c + l] - mu;
                sq[l] = d * d;
            }
            ss += (double)finch_reduce16(sq);
        }
        for (; c < C; c++) {
            const float d = xt[c] - mu;
            ss += (double)(d * d);
        }
        const float var = (float)(ss / (double)C), r = 1.0f / sqrtf(var + eps);
        for (c = 0; c < C; c++) yt[c] = (xt[c] - mu) * r * w[c] + b[c];
    }
}

/* With xh = (x - mu) r and g = dy w:
 *   dx = r (g - mean(g) - xh mean(g xh)),   dw += sum_t dy xh,   db += sum_t dy.
 * dw, db by blocks of columns (a fixed order over tokens), dx by token. */
void finch_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                  const float *stats, const float *x, const float *w, int64_t T,
                                  int64_t C) {
    enum { CB = 64 };
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t cb = 0; cb < (dw || db ? C : 0); cb += CB) {
            int64_t n = C - cb < CB ? C - cb : CB;
            float aw[CB] = {0}, ab[CB] = {0};
            for (int64_t t = 0; t < T; t++) {
                const float *dyt = dy + t * C + cb, *xt = x + t * C + cb;
                const float m = stats[2 * t], r = stats[2 * t + 1];
                for (int64_t c = 0; c < n; c++) {
                    aw[c] += dyt[c] * ((xt[c] - m) * r);
                    ab[c] += dyt[c];
                }
            }
            for (int64_t c = 0; c < n; c++) {
                if (dw) dw[cb + c] += aw[c];
                if (db) db[cb + c] += ab[c];
            }
        }
        /* the barrier above: dw, db have read dy before dx (which may alias it) is written */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * C, *dyt = dy + t * C;
            float *dxt = dx + t * C;
            const float m = stats[2 * t], r = stats[2 * t + 1];
            double sg = 0, sgx = 0;
            for (int64_t c = 0; c < C; c++) {
                double g = (double)dyt[c] * w[c];
                sg += g;
                sgx += g * ((xt[c] - m) * r);
            }
            const float mg = (float)(sg / (double)C), mgx = (float)(sgx / (double)C);
            for (int64_t c = 0; c < C; c++)
                dxt[c] = r * (dyt[c] * w[c] - mg - (xt[c] - m) * r * mgx);
        }
    }
}
