/*
 * test_sampler.c: finch_sample, which ranks only a prefix of the vocabulary, against the
 * rule it documents written plainly (every token ranked by one sort, every weight summed):
 * the same token for every seed, over vocabularies with ties, -inf logits, nuclei and draws
 * that reach below the first prefixes, and every top-k from 1 to past V. Then the rule
 * itself: drawn frequencies against the softmax, the top-k and top-p cut-offs, and greedy
 * as the lowest id among equal maxima.
 */
#define _GNU_SOURCE /* qsort_r */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "generate/generate.h"

static int ref_by_rank(const void *a, const void *b, void *keys) {
    const float *l = keys;
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (l[x] != l[y]) return l[x] < l[y] ? 1 : -1;
    return x < y ? -1 : x > y;
}

/* sampler.c's rule, plainly: rank every token, weigh the top k, sum in id order. */
static int32_t ref_sample(const float *l, int32_t V, float T, int top_k, float top_p,
                          finch_rng *rng) {
    int32_t *idx = malloc((size_t)V * sizeof *idx);
    float *w = calloc((size_t)V, sizeof *w);
    bool *in = calloc((size_t)V, sizeof *in);
    for (int32_t i = 0; i < V; i++) idx[i] = i;
    qsort_r(idx, (size_t)V, sizeof *idx, ref_by_rank, (void *)l);
    if (T <= 0) {
        int32_t tok = idx[0];
        free(idx), free(w), free(in);
        return tok;
    }
    const int32_t n = top_k > 0 && top_k < V ? top_k : V;
    const double mx = l[idx[0]];
    for (int32_t j = 0; j < n; j++) in[idx[j]] = true;
    double Z = 0;
    for (int32_t i = 0; i < V; i++)
        if (in[i]) {
            w[i] = (float)exp(((double)l[i] - mx) / T);
            Z += w[i];
        }
    int32_t m = n;
    double total = Z;
    if (top_p < 1.0f) {
        double acc = 0;
        for (int32_t j = 0; j < n; j++) {
            acc += w[idx[j]] / Z;
            if (acc >= top_p) {
                m = j + 1;
                break;
            }
        }
        total = 0;
        for (int32_t j = 0; j < m; j++) total += w[idx[j]];
    }
    const double u = finch_rng_float(rng) * total;
    double acc = 0;
    int32_t tok = idx[m - 1];
    for (int32_t j = 0; j < m; j++) {
        acc += w[idx[j]];
        if (u < acc) {
            tok = idx[j];
            break;
        }
    }
    free(idx), free(w), free(in);
    return tok;
}

/* logits of a few shapes: 0 spread normal, 1 few distinct values (ties everywhere),
 * 2 one token far above a long tail below 2^-16 of its weight, 3 some -inf */
static void fill(float *l, int32_t V, int shape, finch_rng *r) {
    for (int32_t i = 0; i < V; i++) {
        switch (shape) {
        case 0:
            l[i] = 3.0f * finch_rng_normal(r);
            break;
        case 1:
            l[i] = (float)(int)(4.0f * finch_rng_float(r));
            break;
        case 2:
            l[i] = i == V / 3 ? 0.0f : -12.0f - 0.5f * finch_rng_float(r);
            break;
        default:
            l[i] = finch_rng_float(r) < 0.3f ? -INFINITY : finch_rng_normal(r);
            break;
        }
    }
}

static void test_same_as_full_ranking(void **state) {
    (void)state;
    const int32_t Vs[] = {1, 7, 1000, 50000};
    const float temps[] = {0.0f, 0.3f, 1.0f, 2.5f};
    const float tops_p[] = {1.0f, 0.95f, 0.5f, 1e-4f};
    finch_rng r;
    finch_rng_seed(&r, 11);
    for (size_t v = 0; v < sizeof Vs / sizeof Vs[0]; v++) {
        const int32_t V = Vs[v];
        const int tops_k[] = {0, 1, 5, 40, V - 1, V, V + 5};
        float *l = malloc((size_t)V * sizeof *l), *probs = malloc((size_t)V * sizeof *probs);
        int32_t *idx = malloc((size_t)V * sizeof *idx);
        for (int shape = 0; shape < 4; shape++) {
            fill(l, V, shape, &r);
            if (shape == 3) l[V / 2] = 1.0f; /* not every logit -inf */
            int cases = 0;
            for (size_t t = 0; t < sizeof temps / sizeof temps[0]; t++)
                for (size_t k = 0; k < sizeof tops_k / sizeof tops_k[0]; k++)
                    for (size_t p = 0; p < sizeof tops_p / sizeof tops_p[0]; p++) {
                        if (tops_k[k] < 0) continue;
                        const int draws = V >= 50000 ? 2 : 6;
                        for (int d = 0; d < draws; d++, cases++) {
                            finch_rng a, b;
                            finch_rng_seed(&a, 1000u * (uint64_t)cases + (uint64_t)d);
                            b = a;
                            int32_t got =
                                finch_sample(l, V, temps[t], tops_k[k], tops_p[p], &a, probs, idx);
                            int32_t want = ref_sample(l, V, temps[t], tops_k[k], tops_p[p], &b);
                            if (got != want)
                                fail_msg("V %d shape %d T %g top-k %d top-p %g draw %d: token "
                                         "%d, the full ranking's %d",
                                         V, shape, temps[t], tops_k[k], tops_p[p], d, got, want);
                            /* the draw was taken once, as the plain rule takes it */
                            assert_true(finch_rng_float(&a) == finch_rng_float(&b));
                        }
                    }
        }
        free(l), free(probs), free(idx);
    }
}

/* The long tail of shape 2 holds most of the mass: the draw must reach it. */
static void test_draw_below_first_prefix(void **state) {
    (void)state;
    const int32_t V = 50000;
    float *l = malloc((size_t)V * sizeof *l), *probs = malloc((size_t)V * sizeof *probs);
    int32_t *idx = malloc((size_t)V * sizeof *idx);
    finch_rng r;
    finch_rng_seed(&r, 5);
    fill(l, V, 2, &r);
    int tail = 0;
    for (int i = 0; i < 400; i++)
        if (finch_sample(l, V, 1.0f, 0, 1.0f, &r, probs, idx) != V / 3) tail++;
    /* weights: 1 for the top, about 50000 * e^-12.25 = 0.24 for the tail: 19 % */
    assert_in_range(tail, 40, 120);
    free(l), free(probs), free(idx);
}

static void test_frequencies(void **state) {
    (void)state;
    const float l[5] = {2.0f, 1.0f, 0.5f, -1.0f, 2.0f};
    float probs[5];
    int32_t idx[5];
    const float T = 0.8f;
    double p[5], Z = 0;
    for (int i = 0; i < 5; i++) Z += p[i] = exp(l[i] / T);
    finch_rng r;
    finch_rng_seed(&r, 3);
    const int N = 200000;
    int count[5] = {0};
    for (int n = 0; n < N; n++) count[finch_sample(l, 5, T, 0, 1.0f, &r, probs, idx)]++;
    for (int i = 0; i < 5; i++)
        if (fabs((double)count[i] / N - p[i] / Z) > 0.005)
            fail_msg("token %d drawn %.4f of the time, softmax %.4f", i, (double)count[i] / N,
                     p[i] / Z);
    /* top-k 2: only the two tied maxima, evenly */
    memset(count, 0, sizeof count);
    for (int n = 0; n < N; n++) count[finch_sample(l, 5, T, 2, 1.0f, &r, probs, idx)]++;
    assert_int_equal(count[0] + count[4], N);
    assert_true(fabs((double)count[0] / N - 0.5) < 0.005);
    /* top-p: 0 and 4 (the tied maxima, 0.81 of the mass together), then 1, reach 0.85 */
    memset(count, 0, sizeof count);
    for (int n = 0; n < N; n++) count[finch_sample(l, 5, T, 0, 0.85f, &r, probs, idx)]++;
    assert_int_equal(count[2] + count[3], 0);
    assert_true(count[1] > 0);
    /* top-p below the first token's share: that token alone */
    assert_int_equal(finch_sample(l, 5, T, 0, 0.01f, &r, probs, idx), 0);
}

static void test_greedy(void **state) {
    (void)state;
    float l[37];
    float probs[37];
    int32_t idx[37];
    for (int i = 0; i < 37; i++) l[i] = (float)(i % 5);
    /* the lowest id among equal maxima, wherever the scan's lanes put them */
    assert_int_equal(finch_sample(l, 37, 0.0f, 0, 1.0f, NULL, probs, idx), 4);
    l[36] = 9.0f;
    assert_int_equal(finch_sample(l, 37, 0.0f, 0, 1.0f, NULL, probs, idx), 36);
    l[20] = NAN; /* NaNs are passed over */
    assert_int_equal(finch_sample(l, 37, 0.0f, 0, 1.0f, NULL, probs, idx), 36);
    for (int i = 0; i < 37; i++) l[i] = -INFINITY;
    assert_int_equal(finch_sample(l, 37, 1.0f, 0, 1.0f, NULL, probs, idx), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_as_full_ranking),
        cmocka_unit_test(test_draw_below_first_prefix),
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_greedy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
