/*
 * clip.c: the global gradient norm and clipping as torch.nn.utils.clip_grad_norm_
 * (norm type 2, error_if_nonfinite off), and the accumulation helpers.
 *
 * torch sums per-tensor float32 norms; finch sums squares in double over the whole flat
 * array, which is at least as accurate, so the two agree to float rounding. The sum is
 * split into a fixed number of chunks whose boundaries depend on n alone, each summed by one
 * thread in 16 interleaved running sums and then added in chunk order: the same bits for any
 * thread count.
 * Unlike torch, a non-finite norm leaves the gradients untouched (torch would multiply
 * them by 0 or NaN); the caller sees the returned value and decides.
 */
#include "optim.h"

#include <math.h>

enum { NORM_CHUNKS = 64, LANES = 16 };

double finch_grad_norm(const float *g, size_t n) {
    return sqrt(finch_grad_sumsq(g, n));
}

/* g[lo .. hi) squared and summed in LANES running sums (one chain of dependent adds was the
 * bound: 10 % of a full fine-tuning step), added in lane order at the end. The lanes are
 * independent, so the compiler's vector code for each instruction set (cloned below, picked
 * at load time) sums exactly as the scalar loop does. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif
VECTOR_CLONES static double chunk_sumsq(const float *g, size_t lo, size_t hi) {
    double s[LANES] = {0};
    size_t i = lo;
    for (; i + LANES <= hi; i += LANES)
        for (int l = 0; l < LANES; l++) s[l] += (double)g[i + l] * (double)g[i + l];
    for (; i < hi; i++) s[0] += (double)g[i] * (double)g[i];
    double sum = 0;
    for (int l = 0; l < LANES; l++) sum += s[l];
    return sum;
}

double finch_grad_sumsq(const float *g, size_t n) {
    FINCH_ASSERT(g || n == 0);
    double part[NORM_CHUNKS];
    size_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
#pragma omp parallel for schedule(static) num_threads(finch_threads_get()) if (n > 65536)
    for (int c = 0; c < NORM_CHUNKS; c++) {
        size_t lo = (size_t)c * chunk, hi = lo + chunk;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        part[c] = chunk_sumsq(g, lo, hi);
    }
    double total = 0;
    for (int c = 0; c < NORM_CHUNKS; c++) total += part[c];
    return total;
}

float finch_grad_clip_coef(double norm, double max_norm) {
    FINCH_ASSERT(max_norm > 0);
    if (!isfinite(norm)) return 1.0f;
    double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? (float)coef : 1.0f;
}

double finch_grad_clip(float *g, size_t n, double max_norm) {
    FINCH_ASSERT(max_norm > 0);
    double norm = finch_grad_norm(g, n);
    float coef = finch_grad_clip_coef(norm, max_norm);
    if (coef != 1.0f) finch_grad_scale(g, n, coef);
    return norm;
}

void finch_grad_zero(float *g, size_t n) {
    FINCH_ASSERT(g || n == 0);
    if (n) memset(g, 0, n * sizeof *g);
}

void finch_grad_scale(float *g, size_t n, float scale) {
    FINCH_ASSERT(g || n == 0);
    int64_t N = (int64_t)n;
#pragma omp parallel for schedule(static) num_threads(finch_threads_get()) if (N > 32768)
    for (int64_t i = 0; i < N; i++) g[i] *= scale;
}
