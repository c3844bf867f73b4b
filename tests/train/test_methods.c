/*
 * test_methods.c: every method of the table but LoRA (test_lora_train.c has it) on the
 * tiny model against float64 references made by tests/reference/make_methods_reference.py
 * (PEFT itself for DoRA and (IA)^3, plain torch for BitFit, full fine-tuning and freezing;
 * fixtures in tests/fixtures/methods/<method>/):
 *  - "grad": the parameters set to the reference's random values (read through the
 *    registry's own loader, which moves q/k rows to GGUF order), one batch: the loss and
 *    the gradient of every trainable tensor;
 *  - "init": finch's initialisation equals the reference's where it is deterministic
 *    (DoRA's magnitudes are the base rows' norms, (IA)^3 ones, BitFit zeros, full
 *    fine-tuning the base weights); prompt and prefix tuning start from N(0, 1), whose
 *    mean and spread are checked instead;
 *  - "train": from the reference's start, 20 AdamW steps with warmup + linear decay,
 *    clipping and weight decay on what transformers' Trainer decays (not biases or norm
 *    weights), two alternating batches: the loss and gradient norm at every step and
 *    every tensor after the last.
 * Tolerances as test_lora_train.c: f32 against float64; loss 1e-5 relative, gradients
 * 1e-4 of the tensor's largest element; 20 steps compound rounding: 1e-3 (full
 * fine-tuning, whose loss falls to 0.03, 2e-3 on the last losses).
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
#include "peft/method.h"
#include "test_train.h"

#define DIR FINCH_FIXTURES "/methods/"

typedef struct {
    const char *method;
    finch_option opts[4];
    int n_opts;
    const char *fixture; /* its folder under methods/ (NULL: the method's name) */
} method_case;

/* The options that make finch's instance the reference's configuration. */
static const method_case cases[] = {
    {"dora", {{"lora-r", "4"}, {"lora-alpha", "8"}, {"lora-dropout", "0"}, {"target-modules", "all-linear"}}, 4, NULL},
    {"ia3", {{"target-modules", "k,v,down"}, {"feedforward-modules", "down"}}, 2, NULL},
    {"bitfit", {{"target-modules", "all-linear"}}, 1, NULL},
    {"full", {{NULL, NULL}}, 0, NULL},
    {"freeze", {{"layers", "1"}}, 1, NULL},
    {"prompt", {{"num-virtual-tokens", "3"}}, 1, NULL},
    {"prefix", {{"num-virtual-tokens", "3"}}, 1, NULL},
    {"prefix", {{"num-virtual-tokens", "3"}, {"prefix-projection", "true"}, {"encoder-hidden", "16"}}, 3,
     "prefix_proj"},
    {"adapter", {{"adapter-type", "houlsby"}, {"reduction-factor", "4"}}, 2, "adapter_houlsby"},
    {"adapter", {{"adapter-type", "sequential"}, {"reduction-factor", "4"}}, 2, "adapter_sequential"},
    {"adapter", {{"adapter-type", "parallel"}, {"reduction-factor", "4"}}, 2, "adapter_parallel"},
};

static const char *fixture(const method_case *c) {
    return c->fixture ? c->fixture : c->method;
}

static json_t *reference(const char *method) {
    char path[512];
    snprintf(path, sizeof path, DIR "%s/reference.json", method);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s", path, je.text);
    return j;
}

static finch_peft *instance(const method_case *c, finch_rng *rng, bool grads) {
    finch_peft *p = NULL;
    finch_err err = {0};
    if (finch_peft_new(model, c->method, c->opts, c->n_opts, rng, grads, &p, &err))
        fail_msg("%s: %s", c->method, err.msg);
    return p;
}

/* Loads a fixture file of the method into p's parameters. */
static void load(finch_peft *p, const char *method, const char *file) {
    char path[512];
    snprintf(path, sizeof path, DIR "%s/%s", method, file);
    finch_err err = {0};
    if (finch_params_load_st(&p->params, path, &err)) fail_msg("%s", err.msg);
}

/* Every tensor of got against want (same registry layout), each within tol of its largest
 * reference element; skip: tensors not to compare (NULL: none). */
static void compare(const finch_params *r, const float *got, const float *want, double tol,
                    const char *what, const char *skip) {
    for (int i = 0; i < r->n; i++) {
        const finch_param *p = &r->p[i];
        if (skip && strstr(p->name, skip)) continue;
        double mx = 0, worst = 0;
        int64_t at = 0;
        for (int64_t k = 0; k < p->n; k++) mx = fmax(mx, fabs(want[p->off + k]));
        for (int64_t k = 0; k < p->n; k++) {
            double e = fabs((double)got[p->off + k] - want[p->off + k]);
            if (e > worst) worst = e, at = k;
        }
        if (worst > tol * mx + 1e-9)
            fail_msg("%s %s: element %lld = %.8g, reference %.8g (max |ref| %.3g, tolerance %g)",
                     what, p->name, (long long)at, got[p->off + at], want[p->off + at], mx, tol);
    }
}

static void check_gradients(const method_case *c) {
    json_t *ref = reference(fixture(c)), *g = json_object_get(ref, "grad");
    finch_peft *p = instance(c, NULL, true), *want = instance(c, NULL, false);
    load(p, fixture(c), json_string_value(json_object_get(g, "params_file")));
    load(want, fixture(c), json_string_value(json_object_get(g, "grads_file")));
    int32_t ids[256], tg[256], pos[256];
    int B, T;
    json_batch(g, ids, tg, pos, &B, &T);
    finch_err err;
    assert_int_equal(finch_peft_attach(p, model, 1.0f, (int64_t)B * T, &err), FINCH_OK);
    finch_train_acts *a;
    assert_int_equal(finch_train_acts_new(model, B, T, &a, &err), FINCH_OK);
    double loss = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 0, true);
    double ref_loss = json_real_value(json_object_get(g, "loss"));
    printf("  %s: loss %.7f, reference %.7f; %d tensors\n", fixture(c), loss, ref_loss, p->params.n);
    if (!(fabs(loss - ref_loss) < 1e-5 * ref_loss)) fail_msg("%s: loss differs", fixture(c));
    compare(&p->params, p->params.grad, want->params.data, 1e-4, fixture(c), NULL);
    finch_peft_detach(p, model);
    finch_train_acts_free(a);
    finch_peft_free(p);
    finch_peft_free(want);
    json_decref(ref);
}

static void check_init(const method_case *c) {
    finch_rng rng;
    finch_rng_seed(&rng, 1);
    finch_peft *p = instance(c, &rng, false), *want = instance(c, NULL, false);
    load(want, fixture(c), "train_init.safetensors");
    if (!strcmp(c->method, "prompt") || !strcmp(c->method, "prefix")) {
        /* N(0, 1) draws (the table, or the projection's embeddings): mean and variance
         * within 5 standard errors */
        const finch_param *t = &p->params.p[0];
        const float *d = p->params.data + t->off;
        double s1 = 0, s2 = 0, n = (double)t->n;
        for (int64_t i = 0; i < t->n; i++) {
            s1 += d[i];
            s2 += (double)d[i] * d[i];
        }
        double mean = s1 / n, var = s2 / n - mean * mean;
        printf("  %s init: %g values, mean %.4f, variance %.4f\n", c->method, n, mean, var);
        assert_true(fabs(mean) < 5 / sqrt(n) && fabs(var - 1) < 5 * sqrt(2 / n));
    } else {
        /* LoRA's A and an adapter's down projection are random: the rest is determined */
        compare(&p->params, p->params.data, want->params.data, 1e-6, fixture(c),
                !strcmp(c->method, "adapter") ? "adapter_down.0.weight" : "lora_A");
    }
    finch_peft_free(p);
    finch_peft_free(want);
}

static void check_training(const method_case *c) {
    json_t *ref = reference(fixture(c)), *tr = json_object_get(ref, "train");
    finch_peft *p = instance(c, NULL, true), *want = instance(c, NULL, false);
    load(p, fixture(c), "train_init.safetensors");
    load(want, fixture(c), "train_final.safetensors");
    json_t *hist = json_object_get(tr, "history");
    int32_t ids[256], tg[256], pos[256];
    int B, T;
    json_batch(json_array_get(hist, 0), ids, tg, pos, &B, &T);
    finch_err err;
    assert_int_equal(finch_peft_attach(p, model, 1.0f, (int64_t)B * T, &err), FINCH_OK);
    finch_train_acts *a;
    assert_int_equal(finch_train_acts_new(model, B, T, &a, &err), FINCH_OK);
    finch_params *r = &p->params;
    float *m = calloc((size_t)r->total, sizeof(float)), *v = calloc((size_t)r->total, sizeof(float));
    finch_adamw_range *ranges = calloc((size_t)r->n, sizeof *ranges);
    for (int i = 0; i < r->n; i++)
        ranges[i] = (finch_adamw_range){(size_t)r->p[i].off, (size_t)r->p[i].n, r->p[i].decay};
    finch_adamw_config ac = finch_adamw_config_default();
    ac.weight_decay = json_real_value(json_object_get(tr, "weight_decay"));
    int steps = (int)json_integer_value(json_object_get(tr, "steps"));
    finch_lr_schedule sched = {FINCH_LR_LINEAR, json_real_value(json_object_get(tr, "lr")),
                               json_integer_value(json_object_get(tr, "warmup")), steps};
    double clip = json_real_value(json_object_get(tr, "max_grad_norm"));
    for (int k = 0; k < steps; k++) {
        json_t *h = json_array_get(hist, (size_t)k);
        json_batch(h, ids, tg, pos, &B, &T);
        finch_grad_zero(r->grad, (size_t)r->total);
        double loss = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 0, true);
        double norm = finch_grad_clip(r->grad, (size_t)r->total, clip);
        finch_adamw_step(r->data, m, v, r->grad, (size_t)r->total, ranges, r->n, &ac, finch_lr_at(&sched, k),
                         k + 1);
        double want_loss = json_real_value(json_object_get(h, "loss"));
        double want_norm = json_real_value(json_object_get(h, "grad_norm"));
        double tol = want_loss < 0.1 ? 2e-3 : 1e-3;
        if (fabs(loss - want_loss) > tol * want_loss || fabs(norm - want_norm) > tol * want_norm)
            fail_msg("%s step %d: loss %.6f (reference %.6f), grad norm %.6f (reference %.6f)", fixture(c),
                     k, loss, want_loss, norm, want_norm);
        if (k == 0 || k == steps - 1)
            printf("  %s step %2d: loss %.5f (reference %.5f)\n", fixture(c), k + 1, loss, want_loss);
    }
    compare(r, r->data, want->params.data, 1e-3, fixture(c), NULL);
    free(m);
    free(v);
    free(ranges);
    finch_peft_detach(p, model);
    finch_train_acts_free(a);
    finch_peft_free(p);
    finch_peft_free(want);
    json_decref(ref);
}

/* Prefix tuning trained through its projection saves the projection's output as
 * prompt_embeddings (as PEFT does): loaded back, the plain table gives the same loss. */
static void test_projection_saves_table(void **state) {
    (void)state;
    const method_case *c = NULL;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (!strcmp(fixture(&cases[i]), "prefix_proj")) c = &cases[i];
    assert_non_null(c);
    json_t *ref = reference("prefix_proj"), *g = json_object_get(ref, "grad");
    finch_peft *p = instance(c, NULL, true);
    load(p, "prefix_proj", "grad_params.safetensors");
    int32_t ids[256], tg[256], pos[256];
    int B, T;
    json_batch(g, ids, tg, pos, &B, &T);
    char dir[] = "/tmp/finch_proj_XXXXXX";
    assert_non_null(mkdtemp(dir));
    finch_err err;
    assert_int_equal(finch_peft_save(p, model, dir, &err), FINCH_OK);
    double loss[2];
    finch_peft *q = NULL;
    if (finch_peft_load(dir, model, &q, &err)) fail_msg("%s", err.msg);
    assert_int_equal(q->params.n, 1);
    assert_string_equal(q->params.p[0].name, "prompt_embeddings");
    finch_peft *both[2] = {p, q};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(finch_peft_attach(both[k], model, 1.0f, (int64_t)B * T, &err), FINCH_OK);
        finch_train_acts *a;
        assert_int_equal(finch_train_acts_new(model, B, T, &a, &err), FINCH_OK);
        loss[k] = finch_model_train_step(model, a, ids, tg, pos, NULL, 0.0f, 0, false);
        finch_train_acts_free(a);
        finch_peft_detach(both[k], model);
    }
    printf("  prefix_proj: loss through the projection %.7f, from the saved table %.7f\n", loss[0],
           loss[1]);
    assert_true(fabs(loss[0] - loss[1]) < 1e-6 * loss[0]);
    assert_true(fabs(loss[0] - json_real_value(json_object_get(g, "loss"))) < 1e-5 * loss[0]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    finch_peft_free(p);
    finch_peft_free(q);
    json_decref(ref);
}

static void test_gradients(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_gradients(&cases[i]);
}

static void test_init(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_init(&cases[i]);
}

static void test_training(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_training(&cases[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_gradients), cmocka_unit_test(test_init),
                                       cmocka_unit_test(test_training),
                                       cmocka_unit_test(test_projection_saves_table)};
    return cmocka_run_group_tests(tests, setup_tiny, teardown_tiny);
}
