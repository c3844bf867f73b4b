/*
 * test_gemma3_window.c: Gemma 3 270M (scripts/setup.sh --with-gemma3) trains on rows of
 * 1024 tokens, twice its sliding window of 512:
 *  - the training forward's mean cross-entropy over a 1024-token text equals the one of
 *    the inference forward's logits (KV cache, model/forward.c, whose attention applies
 *    the window on its own) within TOL; the same text with the window taken off gives
 *    another loss, so the comparison sees the window;
 *  - one LoRA step (forward and backward, gradient checkpointing) runs and gives finite,
 *    non-zero gradients, the same bits as without checkpointing.
 * Label "long" (a minute or more on two cores): `ctest -L long`; the default CI run skips
 * it (scripts/test.sh). Without the model it fails, saying how to fetch it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "peft/method.h"

enum { T = 1024 };
/* both paths are f32 with other summation orders; the mean of 1023 terms near 3 */
#define TOL 1e-4

static finch_model *model;
static int32_t ids[T + 1];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The inference forward's mean cross-entropy of ids[t + 1] after ids[0..t], t < T - 1. */
static double infer_loss(void) {
    finch_kv_session s;
    finch_err err;
    const int64_t V = model->cfg.n_vocab;
    assert_int_equal(finch_kv_session_init(&s, model, T, FINCH_INFER_CHUNK, FINCH_NUMERICS_EXACT,
                                           &err),
                     FINCH_OK);
    double sum = 0;
    for (int c0 = 0; c0 < T; c0 += FINCH_INFER_CHUNK) {
        finch_model_forward(model, &s, ids + c0, FINCH_INFER_CHUNK, true);
        for (int t = c0; t < c0 + FINCH_INFER_CHUNK && t < T - 1; t++) {
            const float *l = s.logits + (size_t)(t - c0) * V;
            double mx = -INFINITY, z = 0;
            for (int64_t v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
            for (int64_t v = 0; v < V; v++) z += exp(l[v] - mx);
            sum += mx + log(z) - l[ids[t + 1]];
        }
    }
    finch_kv_session_release(&s);
    return sum / (T - 1);
}

static int32_t pos[T], tg[T];

static void test_loss(void **state) {
    (void)state;
    finch_train_acts *a;
    finch_err err;
    assert_int_equal(finch_train_acts_create(model, 1, T, FINCH_ACTS_CHECKPOINT, &a, &err),
                     FINCH_OK);
    double t0 = now();
    const double lt = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 1, false);
    double t1 = now();
    const double li = infer_loss();
    double t2 = now();
    const int w = model->cfg.sliding_window;
    model->cfg.sliding_window = 0;
    const double ln = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 1, false);
    model->cfg.sliding_window = w;
    printf("  T=%d: training forward loss %.9f (%.1f s), inference %.9f (%.1f s), "
           "difference %.3g; without the window %.6f\n",
           T, lt, t1 - t0, li, t2 - t1, fabs(lt - li), ln);
    assert_true(fabs(lt - li) < TOL);
    assert_true(fabs(ln - li) > 1e-3);
    finch_train_acts_free(a);
}

/* One LoRA step's gradients with flags. */
static float *lora_step(unsigned flags, int64_t *n) {
    finch_peft *p = NULL;
    finch_err err = {0};
    finch_rng rng;
    finch_rng_seed(&rng, 7);
    const finch_option opt[] = {{"target-modules", "all-linear"}};
    if (finch_peft_new(model, "lora", opt, 1, &rng, true, &p, &err)) fail_msg("%s", err.msg);
    /* B starts at zero: move it so that A's gradients are not zero either */
    for (int64_t i = 0; i < p->params.total; i++)
        p->params.data[i] += 0.01f * (finch_rng_float(&rng) - 0.5f);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, T, &err), FINCH_OK);
    finch_train_acts *a;
    assert_int_equal(finch_train_acts_create(model, 1, T, flags, &a, &err), FINCH_OK);
    memset(p->params.grad, 0, sizeof(float) * (size_t)p->params.total);
    double t0 = now();
    double l = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 1, true);
    double t1 = now();
    *n = p->params.total;
    float *g = malloc(sizeof(float) * (size_t)*n);
    assert_non_null(g);
    memcpy(g, p->params.grad, sizeof(float) * (size_t)*n);
    double norm = 0;
    for (int64_t i = 0; i < *n; i++) {
        assert_true(isfinite(g[i]));
        norm += (double)g[i] * g[i];
    }
    printf("  LoRA step at T=%d%s: loss %.6f, gradient norm %.4g, %.1f s\n", T,
           flags ? " (checkpointing)" : "", l, sqrt(norm), t1 - t0);
    assert_true(norm > 0 && isfinite(l));
    finch_train_acts_free(a);
    finch_peft_detach(p, model);
    finch_peft_free(p);
    return g;
}

static void test_lora_step(void **state) {
    (void)state;
    int64_t n, n2;
    float *gc = lora_step(FINCH_ACTS_CHECKPOINT, &n), *g = lora_step(0, &n2);
    assert_true(n == n2);
    assert_memory_equal(g, gc, sizeof(float) * (size_t)n);
    free(g);
    free(gc);
}

static int setup(void **state) {
    (void)state;
    char dir[4096], path[4200];
    finch_err err;
    const char *cache = getenv("FINCH_CACHE"), *home = getenv("HOME");
    if (cache) snprintf(dir, sizeof dir, "%s", cache);
    else snprintf(dir, sizeof dir, "%s/.cache/finch", home ? home : ".");
    snprintf(path, sizeof path, "%s/gemma-3-270m-q4_k_m.gguf", dir);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "Gemma 3 270M is missing at %s: run scripts/setup.sh --with-gemma3\n", path);
        return -1;
    }
    if (finch_model_load(path, &model, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    if (model->cfg.sliding_window != 512) return -1;
    /* the bundled quotes as one text, its first T + 1 tokens */
    FILE *f = fopen(FINCH_FIXTURES "/../../datasets/quotes/general.jsonl", "rb");
    if (!f) return -1;
    static char text[1 << 16];
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    int32_t *tok;
    int64_t n;
    if (finch_tokenize(finch_model_tokenizer(model), text, len, 0, &tok, &n, &err)) return -1;
    if (n < T + 1) return free(tok), -1;
    memcpy(ids, tok, sizeof ids);
    free(tok);
    for (int t = 0; t < T; t++) {
        pos[t] = t;
        tg[t] = t < T - 1 ? ids[t + 1] : -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_loss),
                                       cmocka_unit_test(test_lora_step)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
