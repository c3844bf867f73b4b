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
