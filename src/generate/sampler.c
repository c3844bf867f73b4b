/*
 * sampler.c: next-token choice: greedy, or top-k, temperature, top-p (nucleus), draw.
 *
 * The tokens rank by logit, descending, ties by id ascending. A token's weight is
 * w = e^((logit - max) / T), rounded to float (the top token's is 1). The draw ranges over
 * the top k tokens (all with k = 0), Z the sum of their weights in id order; with top-p
 * below 1 it ranges over the nucleus instead, the shortest ranked prefix whose w / Z sum
 * reaches p, and Z over the nucleus in rank order. u = draw * Z picks the first ranked
 * token whose cumulative weight exceeds u (the last one if rounding leaves u beyond all).
 *
 * Gemma's vocabulary is 262,144 tokens, and ranking all of them took longer than the
 * forward pass. Only a prefix of the ranking is built: the top k by a heap, or without
 * k the tokens of weight at least tau, a prefix because w grows with the logit. When a
 * prefix is too short to decide, tau drops and the prefix grows, down to every token.
 */
#define _GNU_SOURCE /* qsort_r */
#include "generate/generate.h"

#include <math.h>
#include <stdlib.h>

/* a ranks before b */
static inline bool ranks_before(const float *l, int32_t a, int32_t b) {
    return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static int by_rank(const void *a, const void *b, void *logits) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return ranks_before(logits, x, y) ? -1 : ranks_before(logits, y, x) ? 1 : 0;
}

/* The largest logit (NaNs skipped; -inf when every logit is NaN): eight running maxima,
 * so the scan is not one chain of dependent compares. */
static float max_logit(const float *l, int32_t V) {
    float m[8];
    for (int k = 0; k < 8; k++) m[k] = -INFINITY;
    int32_t i = 0;
    for (; i + 8 <= V; i += 8)
        for (int k = 0; k < 8; k++) m[k] = l[i + k] > m[k] ? l[i + k] : m[k];
    for (; i < V; i++) m[0] = l[i] > m[0] ? l[i] : m[0];
    float mx = m[0];
    for (int k = 1; k < 8; k++) mx = m[k] > mx ? m[k] : mx;
    return mx;
}

/* the first token whose logit is mx */
static int32_t first_at(const float *l, int32_t V, float mx) {
    for (int32_t i = 0; i < V; i++)
        if (l[i] == mx) return i;
    return 0; /* every logit NaN */
}

/* Moves the entry at i of the heap h[0 .. n) down to its place; the root is the worst
 * ranked. */
static void sift_down(int32_t *h, int32_t n, int32_t i, const float *l) {
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && ranks_before(l, h[c], h[c + 1])) c++;
        if (!ranks_before(l, h[i], h[c])) return;
        int32_t t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

/* idx[0 .. k) = the top k tokens, ranked (k < V). */
static void top_k_ranked(const float *l, int32_t V, int32_t k, int32_t *idx) {
    for (int32_t i = 0; i < k; i++) idx[i] = i;
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(idx, k, i, l);
    for (int32_t i = k; i < V; i++)
        if (ranks_before(l, i, idx[0])) {
            idx[0] = i;
            sift_down(idx, k, 0, l);
        }
    qsort_r(idx, (size_t)k, sizeof *idx, by_rank, (void *)l);
}

/* The token the draw r (in [0, 1)) picks from the ranked prefix c[0 .. m) of the
 * candidates, whose weights are w[id]; complete: the prefix holds every candidate.
 * Returns -1 when the prefix is too short to decide. */
static int32_t pick(const int32_t *c, int32_t m, bool complete, const float *w, double Z,
                    float top_p, double r) {
    int32_t n = m;
    double total = Z;
    if (top_p < 1.0f) { /* the nucleus: the shortest prefix whose w / Z reaches top_p */
        double acc = 0;
        n = -1;
        for (int32_t j = 0; j < m && n < 0; j++) {
            acc += w[c[j]] / Z;
            if (acc >= top_p) n = j + 1;
        }
        if (n < 0 && !complete) return -1;
        if (n < 0) n = m;
        total = 0;
        for (int32_t j = 0; j < n; j++) total += w[c[j]];
    } else if (!complete) {
        double acc = 0;
        for (int32_t j = 0; j < m; j++) acc += w[c[j]];
        if (acc <= r * Z) return -1; /* the walk would run past the prefix */
    }
    const double u = r * total;
    double acc = 0;
    for (int32_t j = 0; j < n; j++) {
        acc += w[c[j]];
        if (u < acc) return c[j];
    }
    return c[n - 1];
}

int32_t finch_sample(const float *logits, int32_t V, float temperature, int top_k, float top_p,
                     finch_rng *rng, float *probs, int32_t *idx) {
    const double mx = max_logit(logits, V);
    if (temperature <= 0 || mx == -INFINITY) return first_at(logits, V, (float)mx);
    const double r = finch_rng_float(rng);
    float *w = probs; /* by token id */
    double Z = 0;
    if (top_k > 0 && top_k < V) {
        top_k_ranked(logits, V, top_k, idx);
        /* Z in id order: token i is among the top k when it ranks no lower than the k-th */
        const int32_t last = idx[top_k - 1];
        for (int32_t i = 0; i < V; i++)
            if (!ranks_before(logits, last, i)) {
                w[i] = (float)exp(((double)logits[i] - mx) / temperature);
                Z += w[i];
            }
        return pick(idx, top_k, true, w, Z, top_p, r);
    }
    for (int32_t i = 0; i < V; i++) {
        w[i] = (float)exp(((double)logits[i] - mx) / temperature);
        Z += w[i];
    }
    /* ranked prefixes of weight >= tau, tau = 2^-16, 2^-48, 2^-112, then every token */
    static const float taus[] = {0x1p-16f, 0x1p-48f, 0x1p-112f, 0.0f};
    for (size_t t = 0; t < sizeof taus / sizeof taus[0]; t++) {
        int32_t m = 0;
        for (int32_t i = 0; i < V; i++)
            if (w[i] >= taus[t] || taus[t] == 0.0f) idx[m++] = i;
        qsort_r(idx, (size_t)m, sizeof *idx, by_rank, (void *)logits);
        int32_t tok = pick(idx, m, m == V, w, Z, top_p, r);
        if (tok >= 0) return tok;
    }
    return idx[V - 1]; /* not reached: the last prefix is complete */
}
