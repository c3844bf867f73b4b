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
            const float *kj = k + j * kv_stride + (int64_t)g * D;
            float s = 0;
            for (int d = 0; d < D; d++) s += qt[d] * kj[d];
            s *= scale;
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
        for (int64_t j = 0; j < n_kv; j++) {
            const float *vj = v + j * kv_stride + (int64_t)g * D;
            float p = att[j] * inv;
            for (int d = 0; d < D; d++) ot[d] += p * vj[d];
        }
    }
}

#define h2f finch_f16_to_f32
#define f2h finch_f32_to_f16

void finch_cpu_to_f16(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = f2h(src[i]);
}

/* llama.cpp (no flash attention) computes K q with q rounded to f16, the softmax in f32
 * with the 1/sqrt(D) scale applied to the scores, and V p with p rounded to f16. */
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
