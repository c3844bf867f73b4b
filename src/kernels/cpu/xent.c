/*
 * xent.c: fused softmax + cross-entropy over the vocabulary, forward and backward in one
 * pass, so the probabilities are never stored beside the logits:
 *   loss_i = log sum_j e^(l_ij - m_i) - (l_i,target - m_i),  m_i = max_j l_ij,
 *   dlogits_ij = scale (softmax_ij - [j == target_i]).
 * The max subtraction keeps every exponent <= 0; the sum of exponentials and the loss
 * accumulate in double. Masked rows (target -1) add no loss and get a zero gradient.
 */
#include "kernels/cpu/cpu.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { MAX_PARTS = 256 };

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* e^x for 8 lanes, Cephes' expf: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts
 * so n ln2 is exact), e^r by a degree-7 polynomial, 2^n through the exponent bits. Error
 * about 1 ulp; inputs below -87.3 (where 2^n would leave the normal range) give 0, and a
 * NaN stays NaN, so a broken logit still makes the loss NaN. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33f);
    __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ), nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_floor_ps(
        _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_or_ps(_mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep), nan);
}
#endif

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
        __m256 x = exp8(_mm256_sub_ps(_mm256_loadu_ps(l + j), m));
        if (e) _mm256_storeu_ps(e + j, x);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(x)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(s0, s1));
    sum = (t[0] + t[1]) + (t[2] + t[3]);
#endif
    for (; j < V; j++) {
        float x = expf(l[j] - mx);
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
