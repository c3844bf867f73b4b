/*
 * sites.c: the elementwise and per-column ops of the methods' sites: a vector scaling
 * the columns of activations ((IA)^3, DoRA), column sums of products (their gradients,
 * bias gradients), and dropout by a hashed keep mask (LoRA's input), also as bits of the
 * dropped elements (DoRA's masked products).
 *
 * Column sums give each thread whole columns and add rows in order, so the result is
 * bit-identical for any thread count. The dropout mask of element i is a function of
 * (base + i) alone, so backward regenerates the mask forward used without storing it;
 * the AVX-512 path computes the same hash eight lanes at a time and gives the same bits.
 */
#include "kernels/cpu/cpu.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif

void finch_cpu_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n) {
#pragma omp parallel for schedule(static) if (T * n > 65536)
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < n; j++) y[t * n + j] = x[t * n + j] * s[j];
}

/* Rows in blocks of TB, each block across the columns 16 at a time: a column block's r x 16
 * floats of bt stay in L1 for the block's rows, whose y and zl are read and written once. */
void finch_cpu_dora_combine(float *y, float *zl, const float *u, const float *bt, int64_t r,
                            float c, const float *s, int64_t T, int64_t n) {
    enum { TB = 8 };
    const finch_v8 cv = {c, c, c, c, c, c, c, c};
#pragma omp parallel for schedule(static) if (T * n > 65536)
    for (int64_t t0 = 0; t0 < T; t0 += TB) {
        const int64_t t1 = t0 + TB < T ? t0 + TB : T;
        int64_t j = 0;
        for (; j + 16 <= n; j += 16)
            for (int64_t t = t0; t < t1; t++) {
                const float *ut = u + t * r;
                finch_v8 l0 = {0}, l1 = {0};
                for (int64_t k = 0; k < r; k++) {
                    const float a = ut[k];
                    const finch_v8 av = {a, a, a, a, a, a, a, a};
                    l0 += av * finch_load8(bt + k * n + j);
                    l1 += av * finch_load8(bt + k * n + j + 8);
                }
                float *yt = y + t * n + j, *zt = zl + t * n + j;
                const finch_v8 z0 = cv * finch_load8(zt) + l0, z1 = cv * finch_load8(zt + 8) + l1;
                finch_store8(zt, z0);
                finch_store8(zt + 8, z1);
                finch_store8(yt, (finch_load8(yt) + l0) + finch_load8(s + j) * z0);
                finch_store8(yt + 8, (finch_load8(yt + 8) + l1) + finch_load8(s + j + 8) * z1);
            }
        for (; j < n; j++)
            for (int64_t t = t0; t < t1; t++) {
                float l = 0;
                for (int64_t k = 0; k < r; k++) l += u[t * r + k] * bt[k * n + j];
                const float z = c * zl[t * n + j] + l;
                zl[t * n + j] = z;
                y[t * n + j] = (y[t * n + j] + l) + s[j] * z;
            }
    }
}

/* A block of 64 columns keeps its running sums in finch_v8 values, so they stay in registers
 * across the rows (an array of them lived in memory, and each row's adds waited on the last
 * row's stores: 4 % of a DoRA step on a Xeon); the same per-column sums in the same order as
 * the scalar loop. */
void finch_cpu_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n) {
    enum { CB = 64 };
#pragma omp parallel for schedule(static) if (T * n > 65536)
    for (int64_t cb = 0; cb < n; cb += CB) {
        int64_t w = n - cb < CB ? n - cb : CB;
        if (w == CB) {
            finch_v8 acc[CB / 8] = {{0}};
            for (int64_t t = 0; t < T; t++) {
                const float *at = a + t * n + cb;
                if (b) {
                    const float *bt = b + t * n + cb;
#pragma GCC unroll 8
                    for (int j = 0; j < CB / 8; j++)
                        acc[j] += finch_load8(at + 8 * j) * finch_load8(bt + 8 * j);
                } else {
#pragma GCC unroll 8
                    for (int j = 0; j < CB / 8; j++) acc[j] += finch_load8(at + 8 * j);
                }
            }
            for (int j = 0; j < CB / 8; j++)
                for (int c = 0; c < 8; c++) ds[cb + 8 * j + c] += acc[j][c];
            continue;
        }
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

/* col_dot's column blocks, writing both scalings of g as each row of the block is read:
 * the same sums as col_dot, one pass over g instead of three. */
void finch_cpu_dora_backward(float *dm, float *gs, float *h, const float *g, const float *zl,
                             const float *s1, const float *s2, int64_t T, int64_t n) {
    enum { CB = 64 };
#pragma omp parallel for schedule(static) if (T * n > 65536)
    for (int64_t cb = 0; cb < n; cb += CB) {
        const int64_t w = n - cb < CB ? n - cb : CB;
        if (w == CB) {
            finch_v8 acc[CB / 8] = {{0}}, a[CB / 8], b[CB / 8];
            for (int j = 0; j < CB / 8; j++) {
                a[j] = finch_load8(s1 + cb + 8 * j);
                b[j] = h ? finch_load8(s2 + cb + 8 * j) : a[j];
            }
            for (int64_t t = 0; t < T; t++) {
                const int64_t o = t * n + cb;
#pragma GCC unroll 8
                for (int j = 0; j < CB / 8; j++) {
                    const finch_v8 gv = finch_load8(g + o + 8 * j);
                    acc[j] += gv * finch_load8(zl + o + 8 * j);
                    finch_store8(gs + o + 8 * j, a[j] * gv);
                    if (h) finch_store8(h + o + 8 * j, b[j] * gv);
                }
            }
            for (int j = 0; j < CB / 8; j++)
                for (int c = 0; c < 8; c++) dm[cb + 8 * j + c] += acc[j][c];
            continue;
        }
        float acc[CB] = {0};
        for (int64_t t = 0; t < T; t++)
            for (int64_t c = 0; c < w; c++) {
                const int64_t i = t * n + cb + c;
                const float gi = g[i];
                acc[c] += gi * zl[i];
                gs[i] = s1[cb + c] * gi;
                if (h) h[i] = s2[cb + c] * gi;
            }
        for (int64_t c = 0; c < w; c++) dm[cb + c] += acc[c];
    }
}

#if !(defined(__AVX512F__) && defined(__AVX512DQ__))
/* Whether dropout keeps element i. */
static inline bool kept(const finch_dropout *d, int64_t i) {
    return finch_mix64(d->base + (uint64_t)i) >= d->threshold;
}
#endif

#if defined(__AVX2__) && !(defined(__AVX512F__) && defined(__AVX512DQ__))
#include <immintrin.h>
#define DROPOUT_AVX2 1
/* The low 64 bits of a * c in each lane, from 32-bit products (AVX2 has no 64-bit one). */
static inline __m256i mul64(__m256i a, uint64_t c) {
    const __m256i lo = _mm256_set1_epi64x((long long)(c & 0xffffffffu));
    const __m256i hi = _mm256_set1_epi64x((long long)(c >> 32));
    const __m256i cross =
        _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), lo), _mm256_mul_epu32(a, hi));
    return _mm256_add_epi64(_mm256_mul_epu32(a, lo), _mm256_slli_epi64(cross, 32));
}

/* finch_mix64 of base + i .. base + i + 3 against the threshold: bit l set when element
 * i + l is dropped. */
static inline unsigned dropped4(const finch_dropout *d, int64_t i) {
    const long long sign = (long long)0x8000000000000000ull;
    __m256i z = _mm256_add_epi64(_mm256_set1_epi64x((long long)(d->base + (uint64_t)i)),
                                 _mm256_setr_epi64x(0, 1, 2, 3));
    z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), 0xbf58476d1ce4e5b9ull);
    z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), 0x94d049bb133111ebull);
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
    /* unsigned z < threshold, as a signed compare with both sign bits flipped */
    const __m256i below = _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)d->threshold ^ sign),
                                             _mm256_xor_si256(z, _mm256_set1_epi64x(sign)));
    return (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(below));
}

/* All ones in the lanes of elements i .. i + 7 that dropout keeps. */
static inline __m256 kept_lanes(const finch_dropout *d, int64_t i) {
    const unsigned m = dropped4(d, i) | dropped4(d, i + 4) << 4;
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), sel),
                                                  _mm256_setzero_si256()));
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
#ifdef DROPOUT_AVX2
    const __m256 scale = _mm256_set1_ps(d->scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n / 8 * 8; i += 8)
        _mm256_storeu_ps(
            y + i, _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale), kept_lanes(d, i)));
    for (int64_t i = n / 8 * 8; i < n; i++) y[i] = kept(d, i) ? x[i] * d->scale : 0.0f;
#else
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = kept(d, i) ? x[i] * d->scale : 0.0f;
#endif
}

void finch_cpu_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d) {
#ifdef DROPOUT_AVX2
    const __m256 scale = _mm256_set1_ps(d->scale);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n / 8 * 8; i += 8) {
        const __m256 old = _mm256_loadu_ps(dx + i);
        const __m256 sum = _mm256_add_ps(old, _mm256_mul_ps(_mm256_loadu_ps(g + i), scale));
        _mm256_storeu_ps(dx + i, _mm256_blendv_ps(old, sum, kept_lanes(d, i)));
    }
    for (int64_t i = n / 8 * 8; i < n; i++)
        if (kept(d, i)) dx[i] += g[i] * d->scale;
#else
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        if (kept(d, i)) dx[i] += g[i] * d->scale;
#endif
}
#endif

/* A row's mask bits one word (64 elements) at a time; rows split across threads. */
void finch_cpu_dropout_bits(uint64_t *bits, int64_t T, int64_t n, const finch_dropout *d) {
    const int64_t nw = finch_mask_words(n);
#pragma omp parallel for schedule(static) if (T * n > 65536)
    for (int64_t t = 0; t < T; t++)
        for (int64_t w = 0; w < nw; w++) {
            const int64_t j0 = w * 64, j1 = n - j0 < 64 ? n : j0 + 64;
            const uint64_t base = d->base + (uint64_t)(t * n);
            uint64_t word = 0;
            int64_t j = j0;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
            for (; j + 8 <= j1; j += 8) word |= (uint64_t)(uint8_t)~kept8(d, t * n + j) << (j - j0);
#elif defined(DROPOUT_AVX2)
            for (; j + 4 <= j1; j += 4) word |= (uint64_t)dropped4(d, t * n + j) << (j - j0);
#endif
            for (; j < j1; j++)
                word |= (uint64_t)(finch_mix64(base + (uint64_t)j) < d->threshold) << (j - j0);
            bits[t * nw + w] = word;
        }
}

/* ---- LoRA's input side in backward -------------------------------------------------------
 * dA (r, in) += du^T xd and dx += du A through the mask, in one pass over x and dx. Threads
 * own bands of 16 columns; a band's r sums per column stay in a thread buffer (in registers
 * for r 8 and 16) while the rows go by LB_ROWS at a time, and are added to dA after the
 * last row, so every element is summed in row order by one thread. A row's du A over the
 * band is four partial sums (j mod 4), added ((0 + 1) + (2 + 3)). The mask is hashed once
 * per element: what dropout_forward, gemm and dropout_backward did in three passes with xd
 * and du A stored in between. */

typedef int32_t v16i __attribute__((vector_size(16 * sizeof(int32_t))));

static inline finch_v16 splat16(float v) {
    return (finch_v16){v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v};
}

/* a * b + c in each lane, rounded once where the set has FMA. */
static inline finch_v16 fma16(finch_v16 a, finch_v16 b, finch_v16 c) {
#if defined(__AVX512F__)
    return (finch_v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
    __m256 h[3][2];
    memcpy(h[0], &a, sizeof a), memcpy(h[1], &b, sizeof b);
    memcpy(h[2], &c, sizeof c);
    const __m256 lo = _mm256_fmadd_ps(h[0][0], h[1][0], h[2][0]),
                 hi = _mm256_fmadd_ps(h[0][1], h[1][1], h[2][1]);
    finch_v16 r;
    memcpy(&r, &lo, sizeof lo), memcpy((char *)&r + sizeof lo, &hi, sizeof hi);
    return r;
#else
    return a * b + c;
#endif
}

/* All ones in the lanes of elements i .. i + 15 that d keeps (all lanes without d). */
static inline v16i keep16(const finch_dropout *d, int64_t i) {
    v16i k;
    if (!d) {
        memset(&k, 0xff, sizeof k);
        return k;
    }
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    const __m512i m = _mm512_movm_epi32(kept16(d, i, i + 16));
    memcpy(&k, &m, sizeof k);
#elif defined(DROPOUT_AVX2)
    const __m256 lo = kept_lanes(d, i), hi = kept_lanes(d, i + 8);
    memcpy(&k, &lo, sizeof lo), memcpy((char *)&k + sizeof lo, &hi, sizeof hi);
#else
    for (int l = 0; l < 16; l++)
        k[l] = finch_mix64(d->base + (uint64_t)(i + l)) >= d->threshold ? -1 : 0;
#endif
    return k;
}

enum { LB_ROWS = 16, LB_SUMS = 1024, LB_MAX_R = 4096 };

/* Rows t0 .. t1 of the 16 columns from c: s[j] += du[t][j] xd[t] for every j and dx[t] +=
 * f (du[t] A) where kept. local: s copied into an array of constant size first (r <= 16),
 * which the compiler keeps in registers. */
static inline __attribute__((always_inline)) void
band_rows(finch_v16 *s, float *dx, const float *du, const float *x, const float *A, int64_t t0,
          int64_t t1, int64_t in, int64_t c, const int64_t r, const finch_dropout *d,
          finch_v16 scale, bool local) {
    finch_v16 tmp[16];
    finch_v16 *acc = local ? tmp : s;
    if (local)
        for (int64_t j = 0; j < r; j++) tmp[j] = s[j];
    for (int64_t t = t0; t < t1; t++) {
        const int64_t i = t * in + c;
        const v16i keep = keep16(d, i);
        const finch_v16 f = (finch_v16)((v16i)scale & keep), xv = finch_load16(x + i) * f;
        const float *dut = du + t * r, *a = A + c;
        /* this band's line of x and dx in the next block of rows, into L2: rows are too far
         * apart for the hardware prefetchers to follow a band down them */
        __builtin_prefetch(x + i + LB_ROWS * in, 0, 1);
        if (dx) __builtin_prefetch(dx + i + LB_ROWS * in, 1, 1);
        finch_v16 p0 = {0}, p1 = {0}, p2 = {0}, p3 = {0};
        int64_t j = 0;
#pragma GCC unroll 4
        for (; j + 4 <= r; j += 4) {
            const finch_v16 b0 = splat16(dut[j]), b1 = splat16(dut[j + 1]),
                            b2 = splat16(dut[j + 2]), b3 = splat16(dut[j + 3]);
            acc[j] = fma16(b0, xv, acc[j]);
            acc[j + 1] = fma16(b1, xv, acc[j + 1]);
            acc[j + 2] = fma16(b2, xv, acc[j + 2]);
            acc[j + 3] = fma16(b3, xv, acc[j + 3]);
            p0 = fma16(b0, finch_load16(a + j * in), p0);
            p1 = fma16(b1, finch_load16(a + (j + 1) * in), p1);
            p2 = fma16(b2, finch_load16(a + (j + 2) * in), p2);
            p3 = fma16(b3, finch_load16(a + (j + 3) * in), p3);
        }
        for (; j < r; j++) { /* r mod 4 more, into the sums of j mod 4 */
            const finch_v16 b = splat16(dut[j]);
            acc[j] = fma16(b, xv, acc[j]);
            if ((j & 3) == 0) p0 = fma16(b, finch_load16(a + j * in), p0);
            if ((j & 3) == 1) p1 = fma16(b, finch_load16(a + j * in), p1);
            if ((j & 3) == 2) p2 = fma16(b, finch_load16(a + j * in), p2);
        }
        if (dx) {
            const finch_v16 g = finch_load16(dx + i), n = fma16(f, (p0 + p1) + (p2 + p3), g);
            finch_store16(dx + i, (finch_v16)(((v16i)n & keep) | ((v16i)g & ~keep)));
        }
    }
    if (local)
        for (int64_t j = 0; j < r; j++) s[j] = tmp[j];
}

void finch_cpu_lora_down_backward(float *dA, float *dx, const float *du, const float *x,
                                  const float *A, int64_t T, int64_t in, int64_t r,
                                  const finch_dropout *d) {
    FINCH_ASSERT(r >= 1 && r <= LB_MAX_R);
    const int64_t units = in / 16;
    const float sc = d ? d->scale : 1.0f;
    const finch_v16 scale = (finch_v16){0} + sc;
    /* bands per pass: a pass's r sums per column fit LB_SUMS vectors */
    const int64_t per_pass = LB_SUMS / r > 1 ? LB_SUMS / r : 1;
#pragma omp parallel if (T * in * r > 65536)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        finch_v16 sums[LB_SUMS > LB_MAX_R ? LB_SUMS : LB_MAX_R];
        const int64_t u0 = units * tid / nth, u1 = units * (tid + 1) / nth;
        for (int64_t b0 = u0; b0 < u1; b0 += per_pass) {
            const int64_t nb = u1 - b0 < per_pass ? u1 - b0 : per_pass;
            memset(sums, 0, (size_t)(nb * r) * sizeof *sums);
            for (int64_t t0 = 0; t0 < T; t0 += LB_ROWS) {
                const int64_t t1 = t0 + LB_ROWS < T ? t0 + LB_ROWS : T;
                for (int64_t k = 0; k < nb; k++) {
                    const int64_t c = (b0 + k) * 16;
                    finch_v16 *s = sums + k * r;
                    if (r == 16)
                        band_rows(s, dx, du, x, A, t0, t1, in, c, 16, d, scale, true);
                    else if (r == 8)
                        band_rows(s, dx, du, x, A, t0, t1, in, c, 8, d, scale, true);
                    else
                        band_rows(s, dx, du, x, A, t0, t1, in, c, r, d, scale, false);
                }
            }
            for (int64_t k = 0; k < nb; k++)
                for (int64_t j = 0; j < r; j++) {
                    float *a = dA + j * in + (b0 + k) * 16;
                    finch_store16(a, finch_load16(a) + sums[k * r + j]);
                }
        }
        /* the columns past the last whole band, on the last thread, element by element in
         * the same orders, each element's mask hashed once; the column's r sums in sums */
        float *cs = (float *)sums;
        for (int64_t c = units * 16; tid == nth - 1 && c < in; c++) {
            memset(cs, 0, (size_t)r * sizeof *cs);
            for (int64_t t = 0; t < T; t++) {
                const int64_t i = t * in + c;
                const bool keep = !d || finch_mix64(d->base + (uint64_t)i) >= d->threshold;
                const float xk = keep ? x[i] * sc : 0.0f, *dut = du + t * r;
                float p[4] = {0};
                for (int64_t j = 0; j < r; j++) {
                    cs[j] = finch_fmaf(dut[j], xk, cs[j]);
                    p[j & 3] = finch_fmaf(dut[j], A[j * in + c], p[j & 3]);
                }
                if (dx && keep) dx[i] = finch_fmaf(sc, (p[0] + p[1]) + (p[2] + p[3]), dx[i]);
            }
            for (int64_t j = 0; j < r; j++) dA[j * in + c] += cs[j];
        }
    }
}
