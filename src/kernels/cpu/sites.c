/*
 * sites.c: the elementwise and per-column ops of the methods' sites: a vector scaling
 * the columns of activations ((IA)^3, DoRA), column sums of products (their gradients,
 * bias gradients), and dropout by a hashed keep mask (LoRA's input).
 *
 * Column sums give each thread whole columns and add rows in order, so the result is
 * bit-identical for any thread count. The dropout mask of element i is a function of
 * (base + i) alone, so backward regenerates the mask forward used without storing it;
 * the AVX-512 path computes the same hash eight lanes at a time and gives the same bits.
 */
#include "kernels/cpu/cpu.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif

void finch_cpu_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n) {
#pragma omp parallel for schedule(static) if (T * n > 65536)
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < n; j++) y[t * n + j] = x[t * n + j] * s[j];
}

void finch_cpu_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n) {
    enum { CB = 64 };
#pragma omp parallel for schedule(static) if (T * n > 65536)
    for (int64_t cb = 0; cb < n; cb += CB) {
        int64_t w = n - cb < CB ? n - cb : CB;
        float acc[CB] = {0};
        for (int64_t t = 0; t < T; t++) {
            const float *at = a + t * n + cb;
            if (b) {
                const float *bt = b + t * n + cb;
                for (int64_t c = 0; c < w; c++) acc[c] += at[c] * bt[c];
            } else {
                for (int64_t c = 0; c < w; c++) acc[c] += at[c];
            }
        }
        for (int64_t c = 0; c < w; c++) ds[cb + c] += acc[c];
    }
}

#if !(defined(__AVX512F__) && defined(__AVX512DQ__))
/* Whether dropout keeps element i. */
static inline bool kept(const finch_dropout *d, int64_t i) {
    return finch_mix64(d->base + (uint64_t)i) >= d->threshold;
}
#endif

#if defined(__AVX512F__) && defined(__AVX512DQ__)
/* The lanes of 16 elements from i that lie below n. */
static inline __mmask16 tail16(int64_t i, int64_t n) {
    return n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
}

/* Whether dropout keeps element i (finch_mix64 of base + i against the threshold), for
 * elements i .. i+7 in 64-bit lanes. */
static inline __mmask8 kept8(const finch_dropout *d, int64_t i) {
    const __m512i m1 = _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ull);
    const __m512i m2 = _mm512_set1_epi64((long long)0x94d049bb133111ebull);
    __m512i z = _mm512_add_epi64(_mm512_set1_epi64((long long)(d->base + (uint64_t)i)),
                                 _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), m1);
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), m2);
    z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
    return _mm512_cmpge_epu64_mask(z, _mm512_set1_epi64((long long)d->threshold));
}

/* kept8 for elements i .. i+15 that lie below n. */
static inline __mmask16 kept16(const finch_dropout *d, int64_t i, int64_t n) {
    return (__mmask16)(((unsigned)kept8(d, i + 8) << 8 | kept8(d, i)) & tail16(i, n));
}

void finch_cpu_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d) {
    const __m512 scale = _mm512_set1_ps(d->scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = kept16(d, i, n);
        _mm512_mask_storeu_ps(y + i, tail16(i, n),
                              _mm512_maskz_mul_ps(k, _mm512_maskz_loadu_ps(k, x + i), scale));
    }
}

void finch_cpu_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d) {
    const __m512 scale = _mm512_set1_ps(d->scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = kept16(d, i, n);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + i), scale);
        _mm512_mask_storeu_ps(dx + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, dx + i), v));
    }
}
#else
void finch_cpu_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = kept(d, i) ? x[i] * d->scale : 0.0f;
}

void finch_cpu_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        if (kept(d, i)) dx[i] += g[i] * d->scale;
}
#endif
