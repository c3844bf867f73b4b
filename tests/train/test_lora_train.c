/*
 * test_lora_train.c: LoRA training on the tiny model against a float64 PyTorch reference
 * (tests/reference/make_lora_reference.py, fixtures in tests/fixtures/lora/):
 *  - "grad": LoRA on every projection of both layers with random A and non-zero B; the
 *    batch's loss and the gradient of every A and B (the whole backward pass: head, final
 *    norm, SwiGLU, attention, RoPE, norms, the residual stream, LoRA itself);
 *  - "train": PEFT's init (B = 0), 20 steps of AdamW with warmup + linear decay and
 *    gradient clipping on two alternating batches; the loss at every step and A, B after.
 * The reference keeps q/k rows in Hugging Face order; finch holds the model in GGUF order,
 * so the B (and dB) of q and k are permuted here, by the formula of FORMATS.md 4.1.
 *
 * Tolerances: f32 against float64. Loss 1e-5 relative; gradients 1e-4 of the tensor's
 * largest element (sums over up to 24 tokens x 96 features in f32); 20 steps of training
 * compound rounding, so losses 1e-3 relative and final matrices 1e-3 of their largest
 * element.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "optim/optim.h"
#include "peft/peft.h"
#include "test_lora.h"
#include "test_train.h"
#include "test_util.h" /* read_file */

#define DIR FINCH_FIXTURES "/lora/"

static json_t *fx;

static float *load_f32(const char *name, size_t n) {
    char path[512];
    snprintf(path, sizeof path, DIR "%s", name);
    size_t size;
    uint8_t *p = read_file(path, &size);
    if (size != n * 4) fail_msg("%s: %zu bytes, expected %zu", path, size, n * 4);
    return (float *)p;
}

static finch_target target_of(const char *gguf_stem) {
    for (int t = 0; t < FINCH_TARGET_COUNT; t++)
        if (!strcmp(finch_target_gguf_name((finch_target)t), gguf_stem)) return (finch_target)t;
    fail_msg("unknown target %s", gguf_stem);
    return FINCH_TARGET_COUNT;
}

/* GGUF row of HF row hf, heads of size D (FORMATS.md 4.1). */
static int64_t gguf_row(int64_t hf, int D) {
    int64_t h = hf / D, i = hf % D;
    return h * D + (i < D / 2 ? 2 * i : 2 * (i - D / 2) + 1);
}

/* Copies an HF-order (out, r) matrix into GGUF order when t is q or k. */
static void to_gguf_rows(float *dst, const float *src, int64_t out, int r, finch_target t) {
    finch_model_config cfg;
    finch_model_config_get(model, &cfg);
    bool perm = t == FINCH_TARGET_Q || t == FINCH_TARGET_K;
    for (int64_t o = 0; o < out; o++)
        memcpy(dst + (perm ? gguf_row(o, cfg.head_dim) : o) * r, src + o * r, (size_t)r * sizeof(float));
}

static finch_peft *make_lora(void) {
    finch_lora_config cfg = {.r = (int)json_integer_value(json_object_get(fx, "r")),
                             .alpha = (float)json_real_value(json_object_get(fx, "alpha")),
                             .targets = (1u << FINCH_TARGET_COUNT) - 1};
    finch_rng rng;
    finch_rng_seed(&rng, 1);
    finch_peft *l;
    finch_err err;
    if (!(l = lora_new(model, &cfg, &rng, true))) fail_msg("%s", err.msg);
    return l;
}

static void compare(const float *got, const float *want, size_t n, double tol, const char *what) {
    double mx = 0, worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(want[i]));
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (e > worst) worst = e, at = i;
    }
    if (worst > tol * mx + 1e-9)
        fail_msg("%s: element %zu = %.8g, reference %.8g (max |ref| %.3g, tolerance %g)", what, at,
                 got[at], want[at], mx, tol);
}

static void test_gradients(void **state) {
    (void)state;
    json_t *g = json_object_get(fx, "grad");
    finch_peft *l = make_lora();
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(g, "tensors"), i, e) {
        finch_lora_site *s = lora_find(l, (int)json_integer_value(json_object_get(e, "layer")),
                                             target_of(json_string_value(json_object_get(e, "target"))));
        const char *pre = json_string_value(json_object_get(e, "prefix"));
        char name[256];
        snprintf(name, sizeof name, "%s_A.f32", pre);
        float *A = load_f32(name, (size_t)s->r * s->in);
        snprintf(name, sizeof name, "%s_B.f32", pre);
        float *B = load_f32(name, (size_t)s->out * s->r);
        memcpy(s->A, A, (size_t)s->r * s->in * sizeof(float));
        to_gguf_rows(s->B, B, s->out, s->r, s->target);
        free(A);
        free(B);
    }
    finch_err err;
    int32_t ids[256], tg[256], pos[256];
    int Bn, T;
    json_batch(g, ids, tg, pos, &Bn, &T);
    assert_int_equal(finch_peft_attach(l, model, 1.0f, (int64_t)Bn * T, &err), FINCH_OK);
    finch_train_acts *a;
    assert_int_equal(finch_train_acts_new(model, Bn, T, &a, &err), FINCH_OK);
    double loss = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 0, true);
    double want = json_real_value(json_object_get(g, "loss"));
    printf("  loss %.7f, reference %.7f\n", loss, want);
    assert_true(fabs(loss - want) < 1e-5 * want);
    json_array_foreach(json_object_get(g, "tensors"), i, e) {
        finch_lora_site *s = lora_find(l, (int)json_integer_value(json_object_get(e, "layer")),
                                             target_of(json_string_value(json_object_get(e, "target"))));
        const char *pre = json_string_value(json_object_get(e, "prefix"));
        char name[256], what[300];
        snprintf(name, sizeof name, "%s_dA.f32", pre);
        float *dA = load_f32(name, (size_t)s->r * s->in);
        snprintf(name, sizeof name, "%s_dB.f32", pre);
        float *dB = load_f32(name, (size_t)s->out * s->r), *dBg = malloc((size_t)s->out * s->r * sizeof(float));
        to_gguf_rows(dBg, dB, s->out, s->r, s->target);
        snprintf(what, sizeof what, "%s dA", pre);
        compare(s->dA, dA, (size_t)s->r * s->in, 1e-4, what);
        snprintf(what, sizeof what, "%s dB", pre);
        compare(s->dB, dBg, (size_t)s->out * s->r, 1e-4, what);
        free(dA);
        free(dB);
        free(dBg);
    }
    printf("  gradients of %d LoRA sites equal to the reference\n", LORA(l)->n_sites);
    finch_peft_detach(l, model);
    finch_train_acts_free(a);
    finch_peft_free(l);
}

/* LoRA's backward takes u from the forward of the same pass: a forward of other rows by
 * another set of activations in between must leave the gradients bit for bit those of
 * forward and backward alone (DoRA keeps more than u from its forward, its zl, so the
 * callers never run another forward between; it is not checked for it). For both, a
 * backend without lora_down_backward (the ops in turn) gives the same gradients within f32
 * rounding. With dropout (0.05 takes DoRA's masked products, 0.2 its plain path) and
 * without, all linear layers, random parameters. */
static void check_interleaved(const char *method, const char *dropout) {
    json_t *g = json_object_get(fx, "grad");
    finch_option opts[] = {{"lora-r", "4"},
                           {"lora-alpha", "8"},
                           {"lora-dropout", dropout},
                           {"target-modules", "all-linear"}};
    finch_rng rng;
    finch_rng_seed(&rng, 3);
    finch_peft *l = NULL;
    finch_err e0 = {0};
    if (finch_peft_new(model, method, opts, 4, &rng, true, &l, &e0)) fail_msg("%s", e0.msg);
    printf("  %s, dropout %s\n", method, dropout);
    finch_params *pr = &l->params;
    for (int64_t i = 0; i < pr->total; i++) pr->data[i] = 0.1f * (2.0f * finch_rng_float(&rng) - 1);
    finch_err err;
    int32_t ids[256], tg[256], pos[256], ids2[256];
    int Bn, T;
    json_batch(g, ids, tg, pos, &Bn, &T);
    for (int i = 0; i < Bn * T; i++) ids2[i] = (ids[i] * 7 + 3) % 50;
    assert_int_equal(finch_peft_attach(l, model, 1.0f, (int64_t)Bn * T, &err), FINCH_OK);
    finch_train_acts *a, *a2;
    assert_int_equal(finch_train_acts_new(model, Bn, T, &a, &err), FINCH_OK);
    assert_int_equal(finch_train_acts_new(model, Bn, T, &a2, &err), FINCH_OK);
    float rs[64];
    for (int b = 0; b < Bn; b++) rs[b] = -0.25f;
    const size_t bytes = (size_t)pr->grad_total * sizeof(float);
    float *alone = malloc(bytes);
    const bool interleave = !strcmp(method, "lora");
    for (int run = 0; run < (interleave ? 2 : 1); run++) {
        memset(pr->grad, 0, bytes);
        finch_model_train_forward(model, a, ids, tg, pos, NULL, 41, true, NULL);
        if (run) finch_model_train_forward(model, a2, ids2, tg, pos, NULL, 42, true, NULL);
        finch_model_train_backward(model, a, rs);
        if (!run) memcpy(alone, pr->grad, bytes);
    }
    double mx = 0;
    for (int64_t i = 0; i < pr->grad_total; i++) mx = fmax(mx, fabs(alone[i]));
    assert_true(mx > 0);
    assert_memory_equal(pr->grad, alone, bytes);
    finch_backend ops = *model->be;
    const finch_backend *be = model->be;
    ops.lora_down_backward = NULL;
    model->be = &ops;
    memset(pr->grad, 0, bytes);
    finch_model_train_forward(model, a, ids, tg, pos, NULL, 41, true, NULL);
    finch_model_train_backward(model, a, rs);
    model->be = be;
    compare(pr->grad, alone, (size_t)pr->grad_total, 1e-5, "gradients without lora_down_backward");
    free(alone);
    finch_peft_detach(l, model);
    finch_train_acts_free(a);
    finch_train_acts_free(a2);
    finch_peft_free(l);
}

static void test_interleaved_forward(void **state) {
    (void)state;
    const char *const methods[] = {"lora", "dora"}, *const dropouts[] = {"0", "0.05", "0.2"};
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 3; k++) check_interleaved(methods[i], dropouts[k]);
}

static void test_training_trajectory(void **state) {
    (void)state;
    json_t *tr = json_object_get(fx, "train");
    finch_peft *l = make_lora();
    char name[256];
    for (int i = 0; i < LORA(l)->n_sites; i++) {
        finch_lora_site *s = &LORA(l)->sites[i];
        snprintf(name, sizeof name, "train_L%d_%s_A0.f32", s->layer, finch_target_gguf_name(s->target));
        float *A = load_f32(name, (size_t)s->r * s->in);
        memcpy(s->A, A, (size_t)s->r * s->in * sizeof(float));
        free(A);
        memset(s->B, 0, (size_t)s->out * s->r * sizeof(float));
    }
    json_t *hist = json_object_get(tr, "history");
    int32_t ids[256], tg[256], pos[256];
    int Bn, T;
    json_batch(json_array_get(hist, 0), ids, tg, pos, &Bn, &T);
    finch_err err;
    assert_int_equal(finch_peft_attach(l, model, 1.0f, (int64_t)Bn * T, &err), FINCH_OK);
    finch_train_acts *a;
    assert_int_equal(finch_train_acts_new(model, Bn, T, &a, &err), FINCH_OK);
    float *m = calloc((size_t)l->params.total, sizeof(float)), *v = calloc((size_t)l->params.total, sizeof(float));
    finch_adamw_config ac = finch_adamw_config_default();
    ac.weight_decay = json_real_value(json_object_get(tr, "weight_decay"));
    finch_adamw_range all = {0, (size_t)l->params.total, true};
    int steps = (int)json_integer_value(json_object_get(tr, "steps"));
    finch_lr_schedule sched = {FINCH_LR_LINEAR, json_real_value(json_object_get(tr, "lr")),
                               json_integer_value(json_object_get(tr, "warmup")), steps};
    double clip = json_real_value(json_object_get(tr, "max_grad_norm"));
    for (int k = 0; k < steps; k++) {
        json_t *h = json_array_get(hist, (size_t)k);
        json_batch(h, ids, tg, pos, &Bn, &T);
        finch_grad_zero(l->params.grad, (size_t)l->params.total);
        double loss = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 0, true);
        double norm = finch_grad_clip(l->params.grad, (size_t)l->params.total, clip);
        double lr = finch_lr_at(&sched, k);
        finch_adamw_step(l->params.data, m, v, l->params.grad, (size_t)l->params.total, &all, 1, &ac, lr, k + 1);
        double want = json_real_value(json_object_get(h, "loss"));
        double want_norm = json_real_value(json_object_get(h, "grad_norm"));
        if (fabs(loss - want) > 1e-3 * want || fabs(norm - want_norm) > 1e-3 * want_norm)
            fail_msg("step %d: loss %.6f (reference %.6f), grad norm %.6f (reference %.6f)", k,
                     loss, want, norm, want_norm);
        assert_true(fabs(lr - json_real_value(json_object_get(h, "lr"))) < 1e-12);
        if (k == 0 || k == steps - 1) printf("  step %2d: loss %.5f (reference %.5f)\n", k + 1, loss, want);
    }
    for (int i = 0; i < LORA(l)->n_sites; i++) {
        finch_lora_site *s = &LORA(l)->sites[i];
        const char *stem = finch_target_gguf_name(s->target);
        snprintf(name, sizeof name, "train_L%d_%s_A.f32", s->layer, stem);
        float *A = load_f32(name, (size_t)s->r * s->in);
        snprintf(name, sizeof name, "train_L%d_%s_B.f32", s->layer, stem);
        float *B = load_f32(name, (size_t)s->out * s->r), *Bg = malloc((size_t)s->out * s->r * sizeof(float));
        to_gguf_rows(Bg, B, s->out, s->r, s->target);
        compare(s->A, A, (size_t)s->r * s->in, 1e-3, name);
        compare(s->B, Bg, (size_t)s->out * s->r, 1e-3, name);
        free(A);
        free(B);
        free(Bg);
    }
    free(m);
    free(v);
    finch_peft_detach(l, model);
    finch_train_acts_free(a);
    finch_peft_free(l);
}

static int setup(void **state) {
    (void)state;
    json_error_t je;
    fx = json_load_file(DIR "lora_reference.json", 0, &je);
    if (!fx) return -1;
    finch_err err;
    finch_threads_set(2);
    return finch_model_load(FINCH_FIXTURES "/model/tiny_llama.gguf", &model, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    json_decref(fx);
    finch_model_free(model);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_gradients),
                                       cmocka_unit_test(test_interleaved_forward),
                                       cmocka_unit_test(test_training_trajectory)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
