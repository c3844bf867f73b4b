/*
 * adamw.c: the AdamW step over flat arrays (the backend's adamw_step), in torch's order of
 * float operations (optim/adamw.c defines it). Each operation is IEEE single precision
 * (multiply, add, square root, divide; no fused multiply-add), so 16 or 8 lanes at a time
 * give the scalar loop's bits. Elements are independent: any split across threads is exact.
 * Clipping's coefficient multiplies g here (grad_scale) rather than in a pass of its own:
 * the step is memory-bound (full fine-tuning of SmolLM2, 134.5 M parameters, Xeon, 2
 * threads: 15 % of a step), and that pass read and wrote every gradient once more. For
 * the same reason the fused optimizer's step (adamw_step_consume) also sums the squares
 * of g and zeroes it while each chunk is in L1, where three passes read g from memory.
 */
#include "kernels/cpu/cpu.h"

#include <math.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* One element, as the vector lanes compute it. */
static inline void step1(float *p, float *m, float *v, float g, const finch_adamw_scalars *s) {
    g = g * s->grad_scale;
    float pi = *p * s->decay;
    float mi = *m * s->b1 + s->one_b1 * g;
    float vi = *v * s->b2 + s->one_b2 * g * g;
    float denom = sqrtf(vi) / s->bc2_sqrt + s->eps;
    *p = pi + s->neg_step_size * mi / denom;
    *m = mi;
    *v = vi;
}

#if defined(__AVX512F__)
enum { LANES = 16 };
typedef __m512 vec;
#define VLOAD _mm512_loadu_ps
#define VSTORE _mm512_storeu_ps
#define VSET _mm512_set1_ps
#define VMUL _mm512_mul_ps
#define VADD _mm512_add_ps
#define VDIV _mm512_div_ps
#define VSQRT _mm512_sqrt_ps
#elif defined(__AVX2__)
enum { LANES = 8 };
typedef __m256 vec;
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VSET _mm256_set1_ps
#define VMUL _mm256_mul_ps
#define VADD _mm256_add_ps
#define VDIV _mm256_div_ps
#define VSQRT _mm256_sqrt_ps
#else
enum { LANES = 1 };
#endif

/* Elements [i0, i1), i1 - i0 a multiple of LANES. */
static void step_lanes(float *p, float *m, float *v, const float *g, int64_t i0, int64_t i1,
                       const finch_adamw_scalars *s) {
#if LANES > 1
    const vec decay = VSET(s->decay), b1 = VSET(s->b1), one_b1 = VSET(s->one_b1);
    const vec b2 = VSET(s->b2), one_b2 = VSET(s->one_b2), bc2 = VSET(s->bc2_sqrt);
    const vec eps = VSET(s->eps), step = VSET(s->neg_step_size), gs = VSET(s->grad_scale);
    for (int64_t i = i0; i < i1; i += LANES) {
        vec gi = VMUL(VLOAD(g + i), gs);
        vec pi = VMUL(VLOAD(p + i), decay);
        vec mi = VADD(VMUL(VLOAD(m + i), b1), VMUL(one_b1, gi));
        vec vi = VADD(VMUL(VLOAD(v + i), b2), VMUL(VMUL(one_b2, gi), gi));
        vec denom = VADD(VDIV(VSQRT(vi), bc2), eps);
        VSTORE(p + i, VADD(pi, VDIV(VMUL(step, mi), denom)));
        VSTORE(m + i, mi);
        VSTORE(v + i, vi);
    }
#else
    for (int64_t i = i0; i < i1; i++) step1(p + i, m + i, v + i, g[i], s);
#endif
}

void finch_cpu_adamw_step(float *p, float *m, float *v, const float *g, int64_t n,
                          const finch_adamw_scalars *s) {
    enum { CHUNK = 4096 }; /* a multiple of LANES */
    const int64_t nv = n / LANES * LANES, n_chunks = (nv + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) num_threads(finch_threads_get()) if (n > 32768)
    for (int64_t c = 0; c < n_chunks; c++)
        step_lanes(p, m, v, g, c * CHUNK, c * CHUNK + CHUNK < nv ? c * CHUNK + CHUNK : nv, s);
    for (int64_t i = nv; i < n; i++) step1(p + i, m + i, v + i, g[i], s);
}

/* Elements [lo, hi): the step, the squares of g summed into 16 double lanes (element i
 * into lane (i - lo) % 16, as optim/clip.c sums), g zeroed; the lanes' sum in order. */
static double consume_part(float *p, float *m, float *v, float *g, int64_t lo, int64_t hi,
                           const finch_adamw_scalars *s) {
    enum { SUM_LANES = 16, CHUNK = 1024 }; /* LANES divides SUM_LANES, SUM_LANES CHUNK */
    double sq[SUM_LANES] = {0};
    const int64_t whole = lo + (hi - lo) / SUM_LANES * SUM_LANES;
    int64_t i = lo;
    for (; i < whole; i += CHUNK) {
        const int64_t e = whole - i < CHUNK ? whole : i + CHUNK;
        for (int64_t j = i; j < e; j += SUM_LANES)
            for (int l = 0; l < SUM_LANES; l++) sq[l] += (double)g[j + l] * (double)g[j + l];
        step_lanes(p, m, v, g, i, e, s);
        memset(g + i, 0, (size_t)(e - i) * sizeof *g);
    }
    for (i = whole; i < hi; i++) {
        sq[0] += (double)g[i] * (double)g[i];
        step1(p + i, m + i, v + i, g[i], s);
        g[i] = 0.0f;
    }
    double sum = 0;
    for (int l = 0; l < SUM_LANES; l++) sum += sq[l];
    return sum;
}

double finch_cpu_adamw_step_consume(float *p, float *m, float *v, float *g, int64_t n,
                                    const finch_adamw_scalars *s) {
    enum { PARTS = 64 };
    double part[PARTS];
    const int64_t len = (n + PARTS - 1) / PARTS;
#pragma omp parallel for schedule(static) num_threads(finch_threads_get()) if (n > 32768)
    for (int c = 0; c < PARTS; c++) {
        const int64_t lo = c * len < n ? c * len : n, hi = lo + len < n ? lo + len : n;
        part[c] = consume_part(p, m, v, g, lo, hi, s);
    }
    double sum = 0;
    for (int c = 0; c < PARTS; c++) sum += part[c];
    return sum;
}
