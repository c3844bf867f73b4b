/*
 * xent.c: fused softmax + cross-entropy over the vocabulary, forward and backward in one
 * pass, so the probabilities are never stored beside the logits:
 *   loss_i = log sum_j e^(l_ij - m_i) - (l_i,target - m_i),  m_i = max_j l_ij,
 *   dlogits_ij = scale (softmax_ij - [j == target_i]).
 * The max subtraction keeps every exponent <= 0; the sum of exponentials and the loss
 * accumulate in double. Masked rows (target -1) add no loss and get a zero gradient.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/vexp.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { MAX_PARTS = 256 };

static float row_max(const float *l, int64_t V) {
    float mx = -INFINITY;
    int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (V >= 8) {
        __m256 m = _mm256_loadu_ps(l);
        for (j = 8; j + 8 <= V; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(l + j));
        float t[8];
        _mm256_storeu_ps(t, m);
        for (int i = 0; i < 8; i++) mx = t[i] > mx ? t[i] : mx;
    }
#endif
    for (; j < V; j++) mx = l[j] > mx ? l[j] : mx;
    return mx;
}

/* sum_j e^(l_j - mx) in double; the exponentials go to e (which may be l) when not NULL. */
static double row_expsum(float *e, const float *l, int64_t V, float mx) {
    double sum = 0;
    int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    __m256 m = _mm256_set1_ps(mx);
    for (; j + 8 <= V; j += 8) {
        __m256 x = finch_exp8(_mm256_sub_ps(_mm256_loadu_ps(l + j), m));
        if (e) _mm256_storeu_ps(e + j, x);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(x)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(s0, s1));
    sum = (t[0] + t[1]) + (t[2] + t[3]);
#endif
    for (; j < V; j++) {
        float x = finch_exp_lane(l[j] - mx);
        if (e) e[j] = x;
        sum += x;
    }
    return sum;
}

/* Rows are split into one contiguous chunk per thread and the chunk losses are added in
 * thread order afterwards, so the result depends on the thread count only. */
double finch_cpu_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                              int64_t N, int64_t V, float grad_scale) {
    int64_t n = 0;
    for (int64_t i = 0; i < N; i++) n += targets[i] >= 0;
    const float scale = grad_scale != 0.0f ? grad_scale : (n ? (float)(1.0 / (double)n) : 0.0f);
    double part[MAX_PARTS] = {0};
    int n_parts = 1;
#pragma omp parallel if (N > 1)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        if (nth > MAX_PARTS) nth = MAX_PARTS;
        if (tid == 0) n_parts = nth;
        double loss = 0;
        for (int64_t i = N * tid / nth; tid < nth && i < N * (tid + 1) / nth; i++) {
            const float *l = logits + i * V;
            float *dl = dlogits ? dlogits + i * V : NULL;
            int32_t tg = targets[i];
            if (tg < 0) {
                if (dl)
                    for (int64_t j = 0; j < V; j++) dl[j] = 0.0f;
                continue;
            }
            FINCH_ASSERT(tg < V);
            float mx = row_max(l, V), lt = l[tg];
            /* dl may be l: each exponential replaces the logit it came from */
            double sum = row_expsum(dl, l, V, mx);
            if (dl) {
                float f = (float)((double)scale / sum);
                for (int64_t j = 0; j < V; j++) dl[j] *= f;
                dl[tg] -= scale;
            }
            loss += log(sum) - ((double)lt - mx);
        }
        if (tid < nth) part[tid] = loss;
    }
    double total = 0;
    for (int p = 0; p < n_parts; p++) total += part[p];
    return n ? total / (double)n : 0.0;
}
