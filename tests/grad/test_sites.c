/*
 * test_sites.c: the gradients every method's sites produce, against central finite
 * differences of the whole training loss on the tiny model: LoRA (without dropout, and
 * with dropout 0.3 through a fixed mask), DoRA's magnitudes (the same), (IA)^3's output
 * and input scales, BitFit's added biases, freezing's and full fine-tuning's weights,
 * norms and embeddings, prompt tuning's rows, prefix tuning's keys and values (and its
 * projection), and the three bottleneck adapter layouts; on the tiny LLaMA, a tiny
 * Gemma 3 (also on packed rows longer than its sliding window), a tiny Qwen2 and a tiny GPT-2
 * GGUF. Every method's gradients are also the same bits when backward recomputes the
 * normed inputs and the FFN activation (FINCH_ACTS_RECOMPUTE). One thread: thousands of
 * tiny steps, no OpenMP pool to spin against another test's.
 * (DoRA's A and B are not here: PEFT detaches the row norm, so their gradient is by design
 * not the derivative of the loss; tests/train/test_methods.c checks them against PEFT.)
 *
 * The loss is f32 arithmetic summed in double; with h = 1e-3 its rounding (~1e-6 of a
 * loss near 5) gives differences good to ~1e-3 of the gradients here, far below what a
 * wrong formula, index or mask misses by. Parameters are moved away from their
 * initialisation first so no gradient is trivially zero.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "peft/method.h"
#include "test_util.h" /* test_backend */

#define TOL 2e-2
static double H = 1e-3; /* the finite-difference step (all_methods_on may set another) */
#define SAMPLES 24

static finch_model *model;
static finch_train_acts *acts;
/* rows of T tokens (10; 40 for the rows past Gemma 3's window), packed into the segments
 * of seg when not NULL */
enum { B = 2, T_MAX = 40 };
static int T = 10;
static int32_t ids[B * T_MAX], tg[B * T_MAX], pos[B * T_MAX], seg_long[B * T_MAX];
static const int32_t *seg;
/* The mean loss; with backward, the parameters' gradients accumulate. A forward without
 * backward runs as inference, without dropout; a training step draws its dropout masks
 * from the seed (1 here), the same masks on every call. */
static double loss(bool backward) {
    return finch_model_train_step(model, acts, ids, tg, pos, seg, 0.0f, 1, backward);
}

/* With drop, the method has dropout on: every loss is a training step's (same seed, so the
 * same masks), and the finite differences are of the loss with the masks held fixed. */
static void check_method_drop(const char *method, const finch_option *opts, int n_opts,
                              const char *only, bool drop);
static void check_method(const char *method, const finch_option *opts, int n_opts, const char *only) {
    check_method_drop(method, opts, n_opts, only, false);
}

static void check_method_drop(const char *method, const finch_option *opts, int n_opts,
                              const char *only, bool drop) {
    finch_peft *p = NULL;
    finch_err err = {0};
    finch_rng rng;
    finch_rng_seed(&rng, 3);
    if (finch_peft_new(model, method, opts, n_opts, &rng, true, &p, &err)) fail_msg("%s", err.msg);
    finch_params *r = &p->params;
    for (int64_t i = 0; i < r->total; i++) r->data[i] += 0.2f * (finch_rng_float(&rng) - 0.5f);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, B * T, &err), FINCH_OK);
    /* virtual tokens change the rows the step keeps: activations of their own */
    finch_train_acts *shared = acts, *own = NULL;
    if (model->virt.n) {
        assert_int_equal(finch_train_acts_new(model, B, T, &own, &err), FINCH_OK);
        acts = own;
    }
    /* the gradient is that of the training step, dropout included */
    memset(r->grad, 0, (size_t)r->total * sizeof(float));
    const double l0 = loss(true);
    float *grad = malloc((size_t)r->total * sizeof *grad);
    assert_non_null(grad);
    memcpy(grad, r->grad, (size_t)r->total * sizeof *grad);
    /* backward recomputing the normed inputs and the FFN activation gives the same bits */
    finch_train_acts *kept = acts, *rc = NULL;
    assert_int_equal(finch_train_acts_create(model, B, T, FINCH_ACTS_RECOMPUTE, &rc, &err),
                     FINCH_OK);
    acts = rc;
    memset(r->grad, 0, (size_t)r->total * sizeof(float));
    assert_true(loss(true) == l0);
    assert_memory_equal(r->grad, grad, (size_t)r->total * sizeof *grad);
    finch_train_acts_free(rc);
    acts = kept;
    if (drop) {
        /* the masks are on (the loss is not inference's) and fixed (the same seed gives
         * the same loss bit for bit; another seed another loss) */
        assert_true(loss(false) != l0);
        assert_true(loss(true) == l0);
        assert_true(finch_model_train_step(model, acts, ids, tg, pos, seg, 0.0f, 2, true) != l0);
    }
    double mean = 0;
    int64_t n_in = 0;
    for (int i = 0; i < r->n; i++)
        if (!only || strstr(r->p[i].name, only))
            for (int64_t k = 0; k < r->p[i].n; k++) mean += fabs(grad[r->p[i].off + k]), n_in++;
    mean /= (double)n_in;
    int checked = 0;
    for (int s = 0; s < SAMPLES; s++) {
        int i = (int)(finch_rng_u64(&rng) % (uint64_t)r->n);
        if (only && !strstr(r->p[i].name, only)) {
            s--;
            continue;
        }
        int64_t k = r->p[i].off + (int64_t)(finch_rng_u64(&rng) % (uint64_t)r->p[i].n);
        float x0 = r->data[k];
        r->data[k] = x0 + (float)H;
        double up = loss(drop);
        r->data[k] = x0 - (float)H;
        double dn = loss(drop);
        r->data[k] = x0;
        double fd = (up - dn) / ((double)(x0 + (float)H) - (double)(x0 - (float)H));
        double e = fabs(fd - grad[k]);
        if (e > TOL * (fabs(fd) + mean) + 1e-6)
            fail_msg("%s %s[%lld]: gradient %.7g, finite difference %.7g", method, r->p[i].name,
                     (long long)(k - r->p[i].off), grad[k], fd);
        checked++;
    }
    printf("  %s%s: %d gradients equal to finite differences (mean |g| %.3g), all the same "
           "bits with the activations recomputed\n",
           method,
           drop ? " with dropout (masks fixed)" : "", checked, mean);
    free(grad);
    finch_peft_detach(p, model);
    finch_peft_free(p);
    if (own) {
        finch_train_acts_free(own);
        acts = shared;
    }
}

/* DoRA with dropout through the masked products (dora.c), from one pass over W with the
 * base product or after it (the same bits), against the two dense products they replace
 * (the same backend without matmul_masked): the loss, and every gradient,
 * A and B included, which finite differences cannot check (the detached norm). The sums
 * run in other orders: equal to 1e-4 of the mean gradient; a wrong sign, scale or mask
 * misses by more than the gradient itself. */
static void check_dora_masked(void) {
    const finch_option o[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0.3"}};
    finch_peft *p = NULL;
    finch_err err = {0};
    finch_rng rng;
    finch_rng_seed(&rng, 5);
    if (finch_peft_new(model, "dora", o, 2, &rng, true, &p, &err)) fail_msg("%s", err.msg);
    finch_params *r = &p->params;
    for (int64_t i = 0; i < r->total; i++) r->data[i] += 0.2f * (finch_rng_float(&rng) - 0.5f);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, B * T, &err), FINCH_OK);
    memset(r->grad, 0, (size_t)r->total * sizeof(float));
    const double l_masked = loss(true);
    float *g_masked = malloc((size_t)r->total * sizeof *g_masked);
    assert_non_null(g_masked);
    memcpy(g_masked, r->grad, (size_t)r->total * sizeof *g_masked);
    const finch_backend *be = model->be;
    /* the base product, the masked one and the norms' A W^T from one pass (matmul_split) or
     * one after another: zl the same sums (but (z + b) - b where a linear has a bias), A W^T
     * from another kernel, whose rounding mns - 1 (near 0) magnifies */
    finch_backend two = *be;
    two.matmul_split = NULL;
    model->be = &two;
    memset(r->grad, 0, (size_t)r->total * sizeof(float));
    const double l_two = loss(true);
    assert_true(fabs(l_two - l_masked) <= 1e-6 * fabs(l_masked));
    double mean_m = 0;
    for (int64_t i = 0; i < r->total; i++) mean_m += fabs(g_masked[i]) / (double)r->total;
    for (int64_t i = 0; i < r->total; i++)
        if (fabs((double)g_masked[i] - r->grad[i]) > 1e-4 * (fabs(g_masked[i]) + mean_m))
            fail_msg("dora [%lld]: one pass %.9g, two %.9g", (long long)i, g_masked[i], r->grad[i]);
    finch_backend dense = *be;
    dense.matmul_masked = NULL;
    model->be = &dense;
    memset(r->grad, 0, (size_t)r->total * sizeof(float));
    const double l_dense = loss(true);
    model->be = be;
    assert_true(fabs(l_masked - l_dense) <= 1e-6 * fabs(l_dense));
    double mean = 0;
    for (int64_t i = 0; i < r->total; i++) mean += fabs(r->grad[i]) / (double)r->total;
    for (int i = 0; i < r->n; i++)
        for (int64_t k = 0; k < r->p[i].n; k++) {
            const int64_t j = r->p[i].off + k;
            if (fabs((double)g_masked[j] - r->grad[j]) > 1e-4 * (fabs(r->grad[j]) + mean))
                fail_msg("dora %s[%lld]: masked products %.9g, dense %.9g", r->p[i].name,
                         (long long)k, g_masked[j], r->grad[j]);
        }
    printf("  dora with dropout: masked products equal the dense ones (%lld gradients)\n",
           (long long)r->total);
    free(g_masked);
    finch_peft_detach(p, model);
    finch_peft_free(p);
}

/* Every method on the loaded model. */
static void all_methods(void) {
    const finch_option lora[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0"}, {"lora-r", "3"}};
    check_method("lora", lora, 3, NULL);
    const finch_option dora[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0"}};
    check_method("dora", dora, 2, "magnitude");
    /* dropout 0.3 on the adapters' inputs: the gradients through a fixed mask */
    const finch_option lora_drop[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0.3"}, {"lora-r", "3"}};
    check_method_drop("lora", lora_drop, 3, NULL, true);
    const finch_option dora_drop[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0.3"}};
    check_method_drop("dora", dora_drop, 2, "magnitude", true); /* masked products (dora.c) */
    const finch_option dora_drop_dense[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0.6"}};
    check_method_drop("dora", dora_drop_dense, 2, "magnitude", true); /* two dense products */
    check_dora_masked();
    const finch_option ia3[] = {{"target-modules", "q,k,v,o,down,up"}, {"feedforward-modules", "down,o"}};
    check_method("ia3", ia3, 2, NULL);
    check_method("bitfit", NULL, 0, NULL);
    char layers[32]; /* the first and the last block */
    snprintf(layers, sizeof layers, "0,%d", model->cfg.n_layer - 1);
    const finch_option freeze[] = {{"layers", layers}, {"train-embeddings", NULL}, {"train-head", NULL}};
    check_method("freeze", freeze, 3, NULL);
    check_method("full", NULL, 0, NULL);
    /* virtual tokens: prompt rows, prefix keys and values (plain, and through the
     * projection); block modules: the three bottleneck layouts */
    const finch_option prompt[] = {{"num-virtual-tokens", "2"}};
    check_method("prompt", prompt, 1, NULL);
    check_method("prefix", prompt, 1, NULL);
    const finch_option proj[] = {{"num-virtual-tokens", "2"}, {"prefix-projection", NULL},
                                 {"encoder-hidden", "8"}};
    check_method("prefix", proj, 3, NULL);
    const char *layouts[] = {"houlsby", "sequential", "parallel"};
    for (int i = 0; i < 3; i++) {
        const finch_option ad[] = {{"adapter-type", layouts[i]}, {"reduction-factor", "8"},
                                   {"adapter-nonlinearity", i == 2 ? "gelu" : "auto"}};
        check_method("adapter", ad, 3, NULL);
    }
}

static void test_sites(void **state) {
    (void)state;
    all_methods();
}

/* Every method on the model at path instead of the tiny LLaMA, with step h. */
static void all_methods_on(const char *path, double h) {
    finch_model *llama = model;
    finch_train_acts *llama_acts = acts;
    finch_err err;
    if (finch_model_load(path, &model, &err)) fail_msg("%s", err.msg);
    assert_int_equal(finch_train_acts_new(model, B, T, &acts, &err), FINCH_OK);
    H = h;
    all_methods();
    H = 1e-3;
    finch_train_acts_free(acts);
    finch_model_free(model);
    model = llama;
    acts = llama_acts;
}

/* The same on a tiny Gemma 3 (tests/reference/make_tiny_gemma3.py): q/k norms, post norms,
 * GeGLU, scaled embeddings, sliding-window blocks with their own RoPE base, q/k rows
 * permuted at load. */
static void test_sites_gemma3(void **state) {
    (void)state;
    all_methods_on(FINCH_FIXTURES "/model/tiny_gemma3.gguf", 1e-3);
}

/* Rows of T tokens with targets but at the first 3 and the last position of each row. */
static void make_rows(int n) {
    finch_rng r;
    finch_rng_seed(&r, 9);
    T = n;
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)(finch_rng_u64(&r) % 97);
        pos[i] = i % T;
    }
    for (int i = 0; i < B * T; i++) tg[i] = i % T < 3 || i % T == T - 1 ? -1 : ids[i + 1];
}

/* On the tiny Gemma 3 with rows of 40 tokens, past its sliding window of 16: row 0 packs
 * two examples of 22 and 18 tokens (positions restarting, segments 1 and 2), row 1 is one
 * example of 40; every method's gradients through the windowed blocks (and prefix keys
 * that leave the window) against finite differences. Step 2e-3: the loss over 80 tokens
 * rounds its thousands of e^x (vexp.h, within 1.3 ulp) to a noise that, divided by a
 * step of 1e-3, reached the tolerance on prefix tuning's smallest gradients (4e-4). */
static void test_sites_gemma3_long(void **state) {
    (void)state;
    make_rows(40);
    for (int i = 0; i < B * T; i++) {
        int t = i % T;
        seg_long[i] = i < T && t >= 22 ? 2 : 1;
        if (i < T && t >= 22) pos[i] = t - 22;
        if (i < T && t == 21) tg[i] = -1; /* no target across examples */
    }
    seg = seg_long;
    all_methods_on(FINCH_FIXTURES "/model/tiny_gemma3.gguf", 2e-3);
    seg = NULL;
    make_rows(10);
}

/* And on a tiny Qwen2 GGUF (tests/reference/make_qwen2_mistral_gguf.py): q/k/v biases,
 * the q/k rows and biases permuted at load, a tied head. */
static void test_sites_qwen2(void **state) {
    (void)state;
    all_methods_on(FINCH_FIXTURES "/model/tiny_qwen2.gguf", 1e-3);
}

/* And on a tiny GPT-2 GGUF (tests/reference/make_gpt2_fixtures.py): LayerNorms with
 * biases, learned positions, the fused attn_qkv split into q, k, v (whose adapter tensors
 * are one c_attn tensor seen by three linears), a plain GELU MLP, biases everywhere. Its
 * loss is near 6 (400 tokens) and prefix tuning's gradients are small (mean 0.004): with
 * h = 1e-3 the loss's f32 rounding puts ~1e-4 of noise on a difference, at the tolerance
 * (a sample fails by 9e-5 there), so the step is 4e-3 (noise ~3e-5; every method passes). */
static void test_sites_gpt2(void **state) {
    (void)state;
    all_methods_on(FINCH_FIXTURES "/model/tiny_gpt2.gguf", 4e-3);
}

static int setup(void **state) {
    (void)state;
    finch_err err;
    finch_threads_set(1);
    if (finch_model_load(FINCH_FIXTURES "/model/tiny_llama.gguf", &model, &err)) return -1;
    make_rows(10);
    return finch_train_acts_new(model, B, T, &acts, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_train_acts_free(acts);
    finch_model_free(model);
    return 0;
}

int main(void) {
    test_backend(); /* skips when FINCH_CPU names a set this CPU lacks */
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_sites),
                                       cmocka_unit_test(test_sites_gemma3),
                                       cmocka_unit_test(test_sites_gemma3_long),
                                       cmocka_unit_test(test_sites_qwen2),
                                       cmocka_unit_test(test_sites_gpt2)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
