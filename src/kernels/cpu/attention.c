/*
 * attention.c: causal grouped-query attention over a key/value cache.
 *   out[t, h] = sum_j softmax_j(q[t,h] . k[j,g] / sqrt(D)) v[j,g],  j <= pos0 + t,
 *   g = h / (H / KVH).
 * One (token, head) pair per task; its scores live in the thread's workspace slice.
 */
#include "kernels/cpu/cpu.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* a . b over D elements (8 lanes, then a fixed horizontal sum). */
static inline float dot_f32(const float *a, const float *b, int D) {
    int d = 0;
    float s = 0;
#ifdef HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; d + 8 <= D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
    s = hsum8(acc);
#endif
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

/* o (D) += p * v (D) */
static inline void axpy_f32(float *o, float p, const float *v, int D) {
    int d = 0;
#ifdef HAVE_AVX2
    __m256 pp = _mm256_set1_ps(p);
    for (; d + 8 <= D; d += 8)
        _mm256_storeu_ps(o + d, _mm256_fmadd_ps(pp, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
#endif
    for (; d < D; d++) o[d] += p * v[d];
}

void finch_cpu_attention_forward(float *out, const float *q, const float *k, const float *v,
                                 int64_t T, int64_t pos0, int H, int KVH, int D,
                                 finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t kv_stride = (int64_t)KVH * D;
    const float scale = 1.0f / sqrtf((float)D);
    FINCH_ASSERT(ws && ws->per_thread >= (size_t)(pos0 + T));
#pragma omp parallel for schedule(dynamic, 1) num_threads(ws->n_threads) if (T * H > 1)
    for (int64_t th = 0; th < T * H; th++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *att = ws->buf + (size_t)tid * ws->per_thread;
        int64_t t = th / H;
        int h = (int)(th % H), g = h / group;
        int64_t n_kv = pos0 + t + 1;
        const float *qt = q + (t * H + h) * D;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_kv; j++) {
            float s = dot_f32(qt, k + j * kv_stride + (int64_t)g * D, D) * scale;
            att[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0;
        for (int64_t j = 0; j < n_kv; j++) {
            att[j] = expf(att[j] - mx);
            sum += att[j];
        }
        float inv = 1.0f / sum;
        float *ot = out + (t * H + h) * D;
        for (int d = 0; d < D; d++) ot[d] = 0;
        for (int64_t j = 0; j < n_kv; j++) axpy_f32(ot, att[j] * inv, v + j * kv_stride + (int64_t)g * D, D);
    }
}

/* Training attention: B sequences of T tokens, causal within each, no cache. Each
 * (sequence, head, token) row writes its probabilities straight into att, which backward
 * reads; no workspace is needed. */
void finch_cpu_attention_forward_train(float *out, float *att, const float *q, const float *k,
                                       const float *v, int64_t B, int64_t T, int H, int KVH, int D,
                                       finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D;
    const float scale = 1.0f / sqrtf((float)D);
    const int n_threads = ws ? ws->n_threads : 1;
#pragma omp parallel for schedule(dynamic, 4) num_threads(n_threads) if (B * H * T > 1)
    for (int64_t bht = 0; bht < B * H * T; bht++) {
        int64_t b = bht / (H * T), t = bht % T;
        int h = (int)(bht / T % H), g = h / group;
        const float *qt = q + (b * T + t) * qs + (int64_t)h * D;
        const float *kb = k + b * T * kvs + (int64_t)g * D, *vb = v + b * T * kvs + (int64_t)g * D;
        float *at = att + bht * T;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= t; j++) {
            float s = dot_f32(qt, kb + j * kvs, D) * scale;
            at[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0;
        for (int64_t j = 0; j <= t; j++) {
            at[j] = expf(at[j] - mx);
            sum += at[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j <= t; j++) at[j] *= inv;
        for (int64_t j = t + 1; j < T; j++) at[j] = 0.0f;
        float *ot = out + (b * T + t) * qs + (int64_t)h * D;
        for (int d = 0; d < D; d++) ot[d] = 0;
        for (int64_t j = 0; j <= t; j++) axpy_f32(ot, at[j], vb + j * kvs, D);
    }
}

/* With P a row of probabilities and S = q k^T / sqrt(D) its scores:
 *   dv_j += P_j dout,  dP_j = dout . v_j,  dS_j = P_j (dP_j - sum_i P_i dP_i),
 *   dq = sum_j dS_j k_j / sqrt(D),  dk_j += dS_j q / sqrt(D).
 * One task per (sequence, KV head) owns that head's dk and dv and the dq of its query
 * heads, so nothing is shared between threads and each sum runs in a fixed order. dS of
 * the current row lives in the thread's workspace slice. */
void finch_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                  const float *att, const float *q, const float *k, const float *v,
                                  int64_t B, int64_t T, int H, int KVH, int D,
                                  finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D;
    const float scale = 1.0f / sqrtf((float)D);
    FINCH_ASSERT(ws && ws->per_thread >= (size_t)T);
#pragma omp parallel for schedule(dynamic, 1) num_threads(ws->n_threads) if (B * KVH > 1)
    for (int64_t bg = 0; bg < B * KVH; bg++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *ds = ws->buf + (size_t)tid * ws->per_thread;
        int64_t b = bg / KVH;
        int g = (int)(bg % KVH);
        const float *kb = k + b * T * kvs + (int64_t)g * D, *vb = v + b * T * kvs + (int64_t)g * D;
        float *dkb = dk + b * T * kvs + (int64_t)g * D, *dvb = dv + b * T * kvs + (int64_t)g * D;
        for (int64_t j = 0; j < T; j++)
            for (int d = 0; d < D; d++) dkb[j * kvs + d] = dvb[j * kvs + d] = 0.0f;
        for (int h = g * group; h < (g + 1) * group; h++)
            for (int64_t t = 0; t < T; t++) {
                const float *at = att + ((b * H + h) * T + t) * T;
                const float *dot = dout + (b * T + t) * qs + (int64_t)h * D;
                const float *qt = q + (b * T + t) * qs + (int64_t)h * D;
                float *dqt = dq + (b * T + t) * qs + (int64_t)h * D;
                double sp = 0;
                for (int64_t j = 0; j <= t; j++) {
                    ds[j] = dot_f32(dot, vb + j * kvs, D);
                    sp += (double)at[j] * ds[j];
                }
                float spf = (float)sp;
                for (int64_t j = 0; j <= t; j++) ds[j] = at[j] * (ds[j] - spf) * scale;
                for (int d = 0; d < D; d++) dqt[d] = 0.0f;
                for (int64_t j = 0; j <= t; j++) {
                    axpy_f32(dqt, ds[j], kb + j * kvs, D);
                    axpy_f32(dkb + j * kvs, ds[j], qt, D);
                    axpy_f32(dvb + j * kvs, at[j], dot, D);
                }
            }
    }
}

#define h2f finch_f16_to_f32
#define f2h finch_f32_to_f16

void finch_cpu_to_f16(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = f2h(src[i]);
}

/* llama.cpp (no flash attention) computes K q with q rounded to f16, the softmax in f32
 * with the 1/sqrt(D) scale applied to the scores, and V p with p rounded to f16. The sums
 * run sequentially: with 8-bit activations downstream, any change of rounding moves the
 * logits at the scale of the quantization noise, and this order measurably tracks
 * llama.cpp's greedy path furthest (64 tokens on the plain test prompt, against 5 with
 * 8-lane sums); tests/integration/test_smollm2.c holds it to that. */
void finch_cpu_attention_forward_f16(float *out, const float *q, const uint16_t *k,
                                     const uint16_t *v, int64_t T, int64_t pos0, int H, int KVH,
                                     int D, finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t kv_stride = (int64_t)KVH * D;
    const float scale = 1.0f / sqrtf((float)D);
    FINCH_ASSERT(ws && ws->per_thread >= (size_t)(pos0 + T) + (size_t)D);
#pragma omp parallel for schedule(dynamic, 1) num_threads(ws->n_threads) if (T * H > 1)
    for (int64_t th = 0; th < T * H; th++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *qh = ws->buf + (size_t)tid * ws->per_thread, *att = qh + D;
        int64_t t = th / H;
        int h = (int)(th % H), g = h / group;
        int64_t n_kv = pos0 + t + 1;
        for (int d = 0; d < D; d++) qh[d] = h2f(f2h(q[(t * H + h) * D + d]));
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_kv; j++) {
            const uint16_t *kj = k + j * kv_stride + (int64_t)g * D;
            float s = 0;
            for (int d = 0; d < D; d++) s += qh[d] * h2f(kj[d]);
            s *= scale;
            att[j] = s;
            if (s > mx) mx = s;
        }
        double sum = 0;
        for (int64_t j = 0; j < n_kv; j++) {
            att[j] = expf(att[j] - mx);
            sum += att[j];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < n_kv; j++) att[j] = h2f(f2h(att[j] * inv));
        float *ot = out + (t * H + h) * D;
        for (int d = 0; d < D; d++) ot[d] = 0;
        for (int64_t j = 0; j < n_kv; j++) {
            const uint16_t *vj = v + j * kv_stride + (int64_t)g * D;
            for (int d = 0; d < D; d++) ot[d] += att[j] * h2f(vj[d]);
        }
    }
}
