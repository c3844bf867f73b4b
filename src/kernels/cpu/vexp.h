/*
 * vexp.h: e^x in vector lanes for the training kernels (attention's and the cross-entropy's
 * softmax, the gated activations). Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in
 * two parts, so n ln2 is exact), e^r = 1 + r + r^2 p(r) with p of degree 5, 2^n through the
 * exponent bits. Within 1.3 ulp of e^x. x below -87.33 (where 2^n would leave the normal
 * range) gives 0; x above 88.376 (127.5 ln2) gives e^88.376, where float's e^x overflows
 * only from 88.72; NaN stays NaN.
 *
 * finch_exp_lane computes one lane with the same operations one at a time, for the
 * elements past the last whole vector: an element's bits do not depend on where it falls,
 * so neither on how threads split an array. Without AVX2 and FMA it is libm's expf.
 */
#ifndef FINCH_KERNELS_CPU_VEXP_H
#define FINCH_KERNELS_CPU_VEXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FINCH_VEXP8 1
#endif
#if defined(__AVX512F__)
#define FINCH_VEXP16 1
#endif

#define FINCH_VEXP_LO (-87.33f)
#define FINCH_VEXP_HI 88.3762626647949f
#define FINCH_VEXP_LOG2E 1.44269504088896341f
#define FINCH_VEXP_C1 0.693359375f    /* ln2's leading bits: n C1 is exact */
#define FINCH_VEXP_C2 -2.12194440e-4f /* ln2 - C1 */
#define FINCH_VEXP_P0 1.9875691500e-4f
#define FINCH_VEXP_P1 1.3981999507e-3f
#define FINCH_VEXP_P2 8.3334519073e-3f
#define FINCH_VEXP_P3 4.1665795894e-2f
#define FINCH_VEXP_P4 1.6666665459e-1f
#define FINCH_VEXP_P5 5.0000001201e-1f

static inline float finch_exp_lane(float x) {
#ifdef FINCH_VEXP8
    if (x != x) return x;
    if (!(x >= FINCH_VEXP_LO)) return 0.0f;
    x = x < FINCH_VEXP_HI ? x : FINCH_VEXP_HI;
    const float n = floorf(fmaf(x, FINCH_VEXP_LOG2E, 0.5f));
    float r = fmaf(-n, FINCH_VEXP_C1, x);
    r = fmaf(-n, FINCH_VEXP_C2, r);
    float p = FINCH_VEXP_P0;
    p = fmaf(p, r, FINCH_VEXP_P1);
    p = fmaf(p, r, FINCH_VEXP_P2);
    p = fmaf(p, r, FINCH_VEXP_P3);
    p = fmaf(p, r, FINCH_VEXP_P4);
    p = fmaf(p, r, FINCH_VEXP_P5);
    p = fmaf(p * r, r, r + 1.0f);
    const int32_t e = ((int32_t)n + 127) * (1 << 23);
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
#else
    return expf(x);
#endif
}

#ifdef FINCH_VEXP8
static inline __m256 finch_exp8(__m256 x) {
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(FINCH_VEXP_LO), _CMP_GE_OQ);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 c = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(FINCH_VEXP_LO)),
                             _mm256_set1_ps(FINCH_VEXP_HI));
    const __m256 n =
        _mm256_floor_ps(_mm256_fmadd_ps(c, _mm256_set1_ps(FINCH_VEXP_LOG2E), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(FINCH_VEXP_C1), c);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(FINCH_VEXP_C2), r);
    __m256 p = _mm256_set1_ps(FINCH_VEXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FINCH_VEXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FINCH_VEXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FINCH_VEXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FINCH_VEXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FINCH_VEXP_P5));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
    return _mm256_blendv_ps(y, x, nan);
}
#endif

#ifdef FINCH_VEXP16
static inline __m512 finch_exp16(__m512 x) {
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(FINCH_VEXP_LO), _CMP_GE_OQ);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512 c = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(FINCH_VEXP_LO)),
                             _mm512_set1_ps(FINCH_VEXP_HI));
    const __m512 n = _mm512_roundscale_ps(
        _mm512_fmadd_ps(c, _mm512_set1_ps(FINCH_VEXP_LOG2E), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FINCH_VEXP_C1), c);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FINCH_VEXP_C2), r);
    __m512 p = _mm512_set1_ps(FINCH_VEXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FINCH_VEXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FINCH_VEXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FINCH_VEXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FINCH_VEXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FINCH_VEXP_P5));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    const __m512 y = _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
    return _mm512_mask_mov_ps(y, nan, x);
}
#endif

#endif
