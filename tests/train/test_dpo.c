/*
 * test_dpo.c: the DPO objective (train/dpo.c) on the tiny model against TRL's sigmoid DPO
 * loss computed in float64 PyTorch by tests/reference/make_dpo_reference.py (fixtures in
 * tests/fixtures/dpo/<method>/), for LoRA, prefix tuning (whose virtual tokens must not be
 * in the reference) and freezing (whose attached weights must not be either):
 *  - the reference log-probs finch_dpo_new computes with the method not yet attached;
 *  - one training micro-batch of the 3 pairs (6 rows, padded): the loss, the rewards and
 *    accuracies, the gradient of every trainable tensor;
 *  - validation over the same pairs in micro-batches of 2 (the last one half full): the
 *    same loss and accuracy;
 *  - a micro-batch split into data-parallel lanes: their losses and gradients sum to the
 *    whole micro-batch's.
 * Tolerances: f32 against float64: log-probs 2e-5 relative, loss and rewards 2e-5,
 * gradients 1e-4 of the tensor's largest element (as test_methods.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/optim.h"
#include "peft/method.h"
#include "test_train.h"
#include "train/train.h"

#define DIR FINCH_FIXTURES "/dpo/"

typedef struct {
    const char *method;
    finch_option opts[4];
    int n_opts;
} dpo_case;

static const dpo_case cases[] = {
    {"lora", {{"lora-r", "4"}, {"lora-alpha", "8"}, {"lora-dropout", "0"}, {"target-modules", "all-linear"}}, 4},
    {"prefix", {{"num-virtual-tokens", "3"}}, 1},
    {"freeze", {{"layers", "1"}}, 1},
};

static json_t *reference(const char *method) {
    char path[512];
    snprintf(path, sizeof path, DIR "%s/reference.json", method);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s", path, je.text);
    return j;
}

static finch_peft *instance(const dpo_case *c, bool grads, const char *file) {
    finch_peft *p = NULL;
    finch_err err = {0};
    if (finch_peft_new(model, c->method, c->opts, c->n_opts, NULL, grads, &p, &err))
        fail_msg("%s: %s", c->method, err.msg);
    char path[512];
    snprintf(path, sizeof path, DIR "%s/%s", c->method, file);
    if (finch_params_load_st(&p->params, path, &err)) fail_msg("%s", err.msg);
    return p;
}

/* The fixture's pairs as a token set: chosen, rejected, chosen, ...; *T the longest. */
static void pairs_of(json_t *ref, finch_token_set *ts, int *T) {
    json_t *pairs = json_object_get(ref, "pairs");
    *ts = (finch_token_set){.pairs = true};
    ts->ex = calloc(2 * json_array_size(pairs), sizeof *ts->ex);
    *T = 2;
    for (size_t i = 0; i < json_array_size(pairs); i++)
        for (int s = 0; s < 2; s++) {
            json_t *e = json_object_get(json_array_get(pairs, i), s ? "rejected" : "chosen");
            json_t *ids = json_object_get(e, "ids"), *mask = json_object_get(e, "mask");
            finch_token_example *x = &ts->ex[ts->n++];
            x->n = (int32_t)json_array_size(ids);
            x->ids = malloc((size_t)x->n * sizeof *x->ids);
            x->mask = malloc((size_t)x->n);
            for (int k = 0; k < x->n; k++) {
                x->ids[k] = (int32_t)json_integer_value(json_array_get(ids, (size_t)k));
                x->mask[k] = (uint8_t)json_integer_value(json_array_get(mask, (size_t)k));
            }
            *T = x->n > *T ? x->n : *T;
        }
}

static void near(double got, double want, double tol, const char *what, const char *method) {
    if (!(fabs(got - want) <= tol))
        fail_msg("%s: %s %.8f, reference %.8f (tolerance %g)", method, what, got, want, tol);
}

static void check_case(const dpo_case *c) {
    json_t *ref = reference(c->method);
    const double beta = json_real_value(json_object_get(ref, "beta"));
    finch_token_set ts;
    int T;
    pairs_of(ref, &ts, &T);
    const int P = (int)(ts.n / 2);
    finch_peft *p = instance(c, true, "grad_params.safetensors");
    finch_peft *want = instance(c, false, "grad_grads.safetensors");
    finch_err err;
    /* the reference, before the method attaches; the validation set is the same pairs */
    finch_dpo *d, *d2;
    assert_int_equal(finch_dpo_new(model, &ts, &ts, 0, P, T, beta, &d, &err), FINCH_OK);
    assert_int_equal(finch_dpo_new(model, &ts, &ts, 0, 2, T, beta, &d2, &err), FINCH_OK);
    json_t *rl = json_object_get(ref, "ref_logps");
    for (int i = 0; i < P; i++)
        for (int s = 0; s < 2; s++) {
            double w = json_real_value(json_array_get(json_array_get(rl, (size_t)i), (size_t)s));
            near(finch_dpo_reference(d, 0, 2 * i + s), w, 2e-5 * fabs(w) + 1e-6,
                 "reference log-prob", c->method);
            assert_true(finch_dpo_reference(d2, 1, 2 * i + s) == finch_dpo_reference(d, 0, 2 * i + s));
        }
    /* one micro-batch of every pair, the method attached */
    assert_int_equal(finch_peft_attach(p, model, 1.0f, (int64_t)2 * P * T, &err), FINCH_OK);
    finch_train_acts *a, *a2;
    finch_batch b, b2;
    assert_int_equal(finch_train_acts_new(model, 2 * P, T, &a, &err), FINCH_OK);
    assert_int_equal(finch_batch_init(&b, 2 * P, T, &err), FINCH_OK);
    int64_t order[3] = {0, 1, 2}, next = 0, epoch = 0;
    assert_int_equal(P, 3);
    finch_dpo_stats st = {0}, mean;
    finch_grad_zero(p->params.grad, (size_t)p->params.total);
    double loss =
        finch_dpo_step(d, model, a, &b, &ts, order, &next, &epoch, 0, 1, 1.0f, 0, &st, NULL);
    finch_dpo_stats_mean(&st, &mean);
    json_t *rw = json_object_get(ref, "rewards");
    double ref_loss = json_real_value(json_object_get(ref, "loss"));
    printf("  %s: loss %.7f, reference %.7f; rewards chosen %.6f (%.6f), rejected %.6f (%.6f), "
           "accuracy %.3f\n",
           c->method, loss, ref_loss, mean.chosen,
           json_real_value(json_object_get(rw, "chosen")), mean.rejected,
           json_real_value(json_object_get(rw, "rejected")), mean.accuracy);
    assert_true(next == 0 && epoch == 1); /* 3 pairs of 3: the order wrapped once */
    near(loss, ref_loss, 2e-5, "loss", c->method);
    near(mean.loss, ref_loss, 2e-5, "mean loss", c->method);
    near(mean.chosen, json_real_value(json_object_get(rw, "chosen")), 2e-5, "rewards/chosen",
         c->method);
    near(mean.rejected, json_real_value(json_object_get(rw, "rejected")), 2e-5, "rewards/rejected",
         c->method);
    near(mean.accuracy, json_real_value(json_object_get(rw, "accuracies")), 1e-12,
         "rewards/accuracies", c->method);
    /* every trainable tensor's gradient */
    const finch_params *r = &p->params;
    for (int i = 0; i < r->n; i++) {
        const finch_param *t = &r->p[i];
        const float *g = r->grad + t->off, *w = want->params.data + t->off;
        double mx = 0, worst = 0;
        int64_t at = 0;
        for (int64_t k = 0; k < t->n; k++) mx = fmax(mx, fabs(w[k]));
        for (int64_t k = 0; k < t->n; k++)
            if (fabs((double)g[k] - w[k]) > worst) worst = fabs((double)g[k] - w[k]), at = k;
        assert_true(mx > 0);
        if (worst > 1e-4 * mx)
            fail_msg("%s %s: gradient element %lld = %.8g, reference %.8g (max |ref| %.3g)",
                     c->method, t->name, (long long)at, g[at], w[at], mx);
    }
    printf("  %s: %d gradient tensors within 1e-4 of their largest element\n", c->method, r->n);
    /* validation: 2 pairs, then 1 (the other rows of that batch masked) */
    assert_int_equal(finch_train_acts_new(model, 4, T, &a2, &err), FINCH_OK);
    assert_int_equal(finch_batch_init(&b2, 4, T, &err), FINCH_OK);
    assert_int_equal(finch_dpo_eval(d2, model, a2, &b2, &ts, 0, &st, &err), FINCH_OK);
    finch_dpo_stats_mean(&st, &mean);
    assert_int_equal(st.n, 3);
    near(mean.loss, ref_loss, 2e-5, "validation loss", c->method);
    near(mean.accuracy, json_real_value(json_object_get(rw, "accuracies")), 1e-12,
         "validation accuracy", c->method);
    /* --val-max-examples 1: the first pair */
    assert_int_equal(finch_dpo_eval(d2, model, a2, &b2, &ts, 1, &st, &err), FINCH_OK);
    assert_int_equal(st.n, 1);
    near(st.loss, json_real_value(json_array_get(json_object_get(ref, "losses"), 0)), 2e-5,
         "first pair's loss", c->method);
    finch_peft_detach(p, model);
    finch_batch_release(&b);
    finch_batch_release(&b2);
    finch_train_acts_free(a);
    finch_train_acts_free(a2);
    finch_dpo_free(d);
    finch_dpo_free(d2);
    finch_peft_free(p);
    finch_peft_free(want);
    finch_token_set_release(&ts);
    json_decref(ref);
}

static void test_dpo_against_reference(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_case(&cases[i]);
}

/* With the method at its start (LoRA's B = 0) the policy is the reference to the bit: z = 0,
 * the loss log 2, the rewards 0, and the gradient still flows (sigmoid(0) = 1/2). */
static void test_dpo_starts_at_log2(void **state) {
    (void)state;
    json_t *ref = reference("lora");
    finch_token_set ts;
    int T;
    pairs_of(ref, &ts, &T);
    finch_rng rng;
    finch_rng_seed(&rng, 5);
    finch_peft *p = NULL;
    finch_err err;
    assert_int_equal(finch_peft_new(model, "lora", cases[0].opts, cases[0].n_opts, &rng, true, &p, &err),
                     FINCH_OK);
    finch_dpo *d;
    assert_int_equal(finch_dpo_new(model, &ts, &ts, 0, 3, T, 0.1, &d, &err), FINCH_OK);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, (int64_t)6 * T, &err), FINCH_OK);
    finch_train_acts *a;
    finch_batch b;
    assert_int_equal(finch_train_acts_new(model, 6, T, &a, &err), FINCH_OK);
    assert_int_equal(finch_batch_init(&b, 6, T, &err), FINCH_OK);
    int64_t order[3] = {2, 0, 1}, next = 0, epoch = 0;
    finch_dpo_stats st = {0};
    finch_grad_zero(p->params.grad, (size_t)p->params.total);
    int64_t tokens = 0;
    double loss =
        finch_dpo_step(d, model, a, &b, &ts, order, &next, &epoch, 0, 1, 1.0f, 0, &st, &tokens);
    assert_true(fabs(loss - log(2.0)) < 1e-15 && st.chosen == 0 && st.rejected == 0 && st.accuracy == 0);
    assert_int_equal(tokens, b.n_tokens);
    double g2 = 0;
    for (int64_t i = 0; i < p->params.total; i++) g2 += (double)p->params.grad[i] * p->params.grad[i];
    printf("  LoRA at its start: loss %.17g = log 2, gradient norm %.4g\n", loss, sqrt(g2));
    assert_true(g2 > 0);
    /* the same micro-batch as 3 data-parallel lanes of 1 pair each: every lane moves the
     * position past all 3 pairs, the lanes' losses and gradients sum to the whole batch's */
    const size_t n = (size_t)p->params.total;
    float *whole = malloc(n * sizeof *whole);
    memcpy(whole, p->params.grad, n * sizeof *whole);
    finch_dpo *d1;
    finch_peft_detach(p, model);
    assert_int_equal(finch_dpo_new(model, &ts, &ts, 0, 1, T, 0.1, &d1, &err), FINCH_OK);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, (int64_t)6 * T, &err), FINCH_OK);
    finch_train_acts *a1;
    finch_batch b1;
    assert_int_equal(finch_train_acts_new(model, 2, T, &a1, &err), FINCH_OK);
    assert_int_equal(finch_batch_init(&b1, 2, T, &err), FINCH_OK);
    finch_grad_zero(p->params.grad, n);
    finch_dpo_stats lanes = {0};
    double lane_loss = 0;
    int64_t lane_tokens = 0;
    for (int lane = 0; lane < 3; lane++) {
        int64_t nx = 0, ep = 0;
        lane_loss += finch_dpo_step(d1, model, a1, &b1, &ts, order, &nx, &ep, lane, 3, 1.0f, 0,
                                    &lanes, lane ? NULL : &lane_tokens);
        assert_true(nx == 0 && ep == 1);
    }
    assert_true(fabs(lane_loss - loss) < 1e-15);
    assert_int_equal(lanes.n, 3);
    assert_int_equal(lane_tokens, tokens);
    double worst = 0, gmax = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)p->params.grad[i] - whole[i]));
        gmax = fmax(gmax, fabs((double)whole[i]));
    }
    printf("  3 lanes of 1 pair: loss %.17g, gradients within %.3g of the whole batch's (max %.3g)\n",
           lane_loss, worst, gmax);
    assert_true(worst <= 1e-5 * gmax);
    free(whole);
    finch_batch_release(&b1);
    finch_train_acts_free(a1);
    finch_dpo_free(d1);
    finch_peft_detach(p, model);
    finch_batch_release(&b);
    finch_train_acts_free(a);
    finch_dpo_free(d);
    finch_peft_free(p);
    finch_token_set_release(&ts);
    json_decref(ref);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_dpo_against_reference),
                                       cmocka_unit_test(test_dpo_starts_at_log2)};
    return cmocka_run_group_tests(tests, setup_tiny, teardown_tiny);
}
