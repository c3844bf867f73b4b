/*
 * test_window.c: training past a sliding window, on the tiny Gemma 3 (five of six blocks
 * with a window of 16, tests/reference/make_tiny_gemma3.py).
 *
 *  - The training forward's log-probabilities of 5 of the 97 vocabulary entries at every
 *    position of a 40-token sequence equal those of the inference forward over a KV cache
 *    (model/forward.c, whose attention kernel applies the window on its own), for a plain
 *    row, a row packing two examples (each longer than the window) and with prefix tuning's
 *    keys before them (which leave the window as they leave an inference cache's). The same
 *    rows without the window differ past position 16, so the comparison sees the window.
 *  - The gradients with gradient checkpointing, and on 1 and 2 threads, are the same bits.
 * (test_sites.c checks every method's gradients on these rows against finite differences.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peft/method.h"
#include "test_util.h" /* test_backend */

/* the log-probabilities compared: every VSTEP-th vocabulary entry at every position (5
 * of 97; one training forward of T x T tokens each: minutes under the sanitizers) */
enum { T = 40, V = 97, SPLIT = 22, VSTEP = 24 };
/* f32 on both paths, different summation orders: log-probabilities within a few ulps of
 * their magnitude (up to ~10) */
#define TOL 2e-5

static finch_model *model;
static int32_t ids[T];

/* The inference forward's log softmax (T rows of V) over the tokens ids (n of them),
 * from position 0 with the model's virtual tokens first. */
static void infer_logp(double *out, const int32_t *tok, int n) {
    finch_kv_session s;
    finch_err err;
    assert_int_equal(finch_kv_session_init(&s, model, 64, 64, FINCH_NUMERICS_EXACT, &err),
                     FINCH_OK);
    finch_model_forward(model, &s, tok, n, true);
    for (int t = 0; t < n; t++) {
        const float *l = s.logits + (size_t)t * V;
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        for (int v = 0; v < V; v++) sum += exp(l[v] - mx);
        for (int v = 0; v < V; v++) out[t * V + v] = l[v] - mx - log(sum);
    }
    finch_kv_session_release(&s);
}

/* The training forward's log-probabilities of every VSTEP-th v at every position of one row (ids,
 * pos, seg): T copies of the row, copy b with the single target v at position b, so that
 * row b's log-probability is position b's. */
static void train_logp(double *out, const int32_t *pos, const int32_t *seg) {
    finch_train_acts *a;
    finch_err err;
    assert_int_equal(finch_train_acts_new(model, T, T, &a, &err), FINCH_OK);
    int32_t *rid = malloc(sizeof(int32_t) * T * T), *rpos = malloc(sizeof(int32_t) * T * T),
            *rseg = malloc(sizeof(int32_t) * T * T), *tg = malloc(sizeof(int32_t) * T * T);
    double row[T];
    assert_true(rid && rpos && rseg && tg);
    for (int b = 0; b < T; b++) {
        memcpy(rid + b * T, ids, sizeof ids);
        memcpy(rpos + b * T, pos, sizeof(int32_t) * T);
        if (seg) memcpy(rseg + b * T, seg, sizeof(int32_t) * T);
    }
    for (int v = 0; v < V; v += VSTEP) {
        for (int i = 0; i < T * T; i++) tg[i] = i / T == i % T ? v : -1;
        finch_model_train_forward(model, a, rid, tg, rpos, seg ? rseg : NULL, 0, false, row);
        for (int b = 0; b < T; b++) out[b * V + v] = row[b];
    }
    free(rid);
    free(rpos);
    free(rseg);
    free(tg);
    finch_train_acts_free(a);
}

/* max |a - b| over positions [t0, t1) (rows of V), on the entries compared. */
static double max_diff(const double *a, const double *b, int t0, int t1) {
    double m = 0;
    for (int i = t0 * V; i < t1 * V; i++)
        if (i % V % VSTEP == 0) m = fmax(m, fabs(a[i] - b[i]));
    return m;
}

/* The training forward against inference for one plain row and one packed row (the
 * examples ids[0..SPLIT) and ids[SPLIT..T), each alone in inference). */
static void check_rows(const char *what) {
    double tr[T * V], inf[T * V], inf2[T * V];
    int32_t pos[T], seg[T];
    for (int t = 0; t < T; t++) pos[t] = t;
    train_logp(tr, pos, NULL);
    infer_logp(inf, ids, T);
    double d = max_diff(tr, inf, 0, T);
    printf("  %s, one example of %d: training vs inference log-probabilities %.3g\n", what, T, d);
    assert_true(d < TOL);
    for (int t = 0; t < T; t++) {
        pos[t] = t < SPLIT ? t : t - SPLIT;
        seg[t] = t < SPLIT ? 1 : 2;
    }
    train_logp(tr, pos, seg);
    infer_logp(inf2, ids + SPLIT, T - SPLIT);
    double d1 = max_diff(tr, inf, 0, SPLIT), d2 = max_diff(tr + SPLIT * V, inf2, 0, T - SPLIT);
    printf("  %s, packed %d + %d: %.3g, %.3g\n", what, SPLIT, T - SPLIT, d1, d2);
    assert_true(d1 < TOL && d2 < TOL);
}

static void test_against_inference(void **state) {
    (void)state;
    check_rows("window 16");
    /* without the window the same row differs past it, and only there */
    double tr[T * V], inf[T * V];
    int32_t pos[T];
    for (int t = 0; t < T; t++) pos[t] = t;
    infer_logp(inf, ids, T);
    const int w = model->cfg.sliding_window;
    model->cfg.sliding_window = 0;
    train_logp(tr, pos, NULL);
    model->cfg.sliding_window = w;
    double in = max_diff(tr, inf, 0, w), past = max_diff(tr, inf, w, T);
    printf("  without the window: %.3g within it, %.3g past it\n", in, past);
    assert_true(in < TOL && past > 1e-2);
}

/* Prefix tuning's keys stand before every example, at positions 0..P-1: they leave the
 * window of a query P + W - 1 - j positions into an example (key j) in training as in an
 * inference cache. */
static void test_prefix(void **state) {
    (void)state;
    finch_peft *p = NULL;
    finch_err err = {0};
    finch_rng rng;
    finch_rng_seed(&rng, 5);
    const finch_option opt[] = {{"num-virtual-tokens", "5"}};
    if (finch_peft_new(model, "prefix", opt, 1, &rng, true, &p, &err)) fail_msg("%s", err.msg);
    for (int64_t i = 0; i < p->params.total; i++)
        p->params.data[i] += 2.0f * (finch_rng_float(&rng) - 0.5f);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, T * T, &err), FINCH_OK);
    check_rows("prefix of 5");
    finch_peft_detach(p, model);
    finch_peft_free(p);
}

/* A step's gradients (prefix tuning or LoRA on every linear) on two 40-token rows, one
 * packed: with flags, on n threads; their count into *count. */
static float *grads(const char *method, unsigned flags, int n, int64_t *count) {
    finch_peft *p = NULL;
    finch_err err = {0};
    finch_rng rng;
    finch_rng_seed(&rng, 6);
    const finch_option opt[] = {{"num-virtual-tokens", "3"}, {"target-modules", "all-linear"}};
    finch_threads_set(n);
    if (finch_peft_new(model, method, opt + (method[0] == 'l'), 1, &rng, true, &p, &err))
        fail_msg("%s", err.msg);
    for (int64_t i = 0; i < p->params.total; i++)
        p->params.data[i] += 0.2f * (finch_rng_float(&rng) - 0.5f);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, 2 * T, &err), FINCH_OK);
    finch_train_acts *a;
    assert_int_equal(finch_train_acts_create(model, 2, T, flags, &a, &err), FINCH_OK);
    int32_t rid[2 * T], pos[2 * T], seg[2 * T], tg[2 * T];
    for (int i = 0; i < 2 * T; i++) rid[i] = ids[(i % T * 7 + i / T) % T];
    for (int i = 0; i < 2 * T; i++) {
        int t = i % T;
        pos[i] = i < T && t >= SPLIT ? t - SPLIT : t;
        seg[i] = i < T && t >= SPLIT ? 2 : 1;
        tg[i] = t == T - 1 || (i < T && t == SPLIT - 1) ? -1 : rid[i + 1];
    }
    memset(p->params.grad, 0, sizeof(float) * (size_t)p->params.total);
    finch_model_train_step(model, a, rid, tg, pos, seg, 0.0f, 1, true);
    float *g = malloc(sizeof(float) * (size_t)p->params.total);
    assert_non_null(g);
    memcpy(g, p->params.grad, sizeof(float) * (size_t)p->params.total);
    double norm = 0;
    for (int64_t i = 0; i < p->params.total; i++) norm += (double)g[i] * g[i];
    assert_true(norm > 0);
    finch_train_acts_free(a);
    finch_peft_detach(p, model);
    *count = p->params.total;
    finch_peft_free(p);
    finch_threads_set(1);
    return g;
}

static void test_bit_identical(void **state) {
    (void)state;
    const char *methods[] = {"prefix", "lora"};
    for (int m = 0; m < 2; m++) {
        int64_t n, n2, nc;
        float *g1 = grads(methods[m], 0, 1, &n), *g2 = grads(methods[m], 0, 2, &n2),
              *gc = grads(methods[m], FINCH_ACTS_CHECKPOINT, 2, &nc);
        assert_true(n == n2 && n == nc);
        assert_memory_equal(g1, g2, sizeof(float) * (size_t)n);
        assert_memory_equal(g1, gc, sizeof(float) * (size_t)n);
        printf("  %s: %lld gradients, the same bits on 1 and 2 threads and with checkpointing\n",
               methods[m], (long long)n);
        free(g1);
        free(g2);
        free(gc);
    }
}

static int setup(void **state) {
    (void)state;
    finch_err err;
    finch_threads_set(1);
    if (finch_model_load(FINCH_FIXTURES "/model/tiny_gemma3.gguf", &model, &err)) return -1;
    if (model->cfg.sliding_window != 16 || model->cfg.n_vocab != V) return -1;
    finch_rng r;
    finch_rng_seed(&r, 11);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(3 + finch_rng_u64(&r) % (V - 3));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    return 0;
}

int main(void) {
    test_backend(); /* skips when FINCH_CPU names a set this CPU lacks */
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_against_inference),
                                       cmocka_unit_test(test_prefix),
                                       cmocka_unit_test(test_bit_identical)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
