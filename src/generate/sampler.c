/*
 * sampler.c: next-token choice: greedy, or top-k, temperature, top-p (nucleus), draw.
 */
#define _GNU_SOURCE /* qsort_r */
#include "generate/generate.h"

#include <math.h>
#include <stdlib.h>

static int by_logit_desc(const void *a, const void *b, void *keys) {
    const float *k = keys;
    float x = k[*(const int32_t *)a], y = k[*(const int32_t *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

int32_t finch_sample(const float *logits, int32_t V, float temperature, int top_k, float top_p,
                     finch_rng *rng, float *probs, int32_t *idx) {
    if (temperature <= 0) {
        int32_t best = 0;
        for (int32_t i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    /* candidates sorted by logit, descending; ties keep id order (deterministic) */
    for (int32_t i = 0; i < V; i++) idx[i] = i;
    qsort_r(idx, (size_t)V, sizeof *idx, by_logit_desc, (void *)logits);
    int32_t n = (top_k > 0 && top_k < V) ? top_k : V;
    double sum = 0, mx = logits[idx[0]];
    for (int32_t i = 0; i < n; i++) {
        probs[i] = (float)exp(((double)logits[idx[i]] - mx) / temperature);
        sum += probs[i];
    }
    /* nucleus: the smallest prefix whose probability reaches top_p */
    if (top_p < 1.0f) {
        double acc = 0;
        for (int32_t i = 0; i < n; i++) {
            acc += probs[i] / sum;
            if (acc >= top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0;
        for (int32_t i = 0; i < n; i++) sum += probs[i];
    }
    double u = finch_rng_float(rng) * sum, acc = 0;
    for (int32_t i = 0; i < n; i++) {
        acc += probs[i];
        if (u < acc) return idx[i];
    }
    return idx[n - 1];
}
