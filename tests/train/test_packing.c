/*
 * test_packing.c: a packed batch computes what its examples compute alone. Examples of
 * different lengths are run once unpacked (one per row, padded) and once packed into one
 * row (positions restarting and a segment number per example); on the tiny model with
 * LoRA on every projection (random A and B, so every path carries gradient), the loss and
 * every LoRA gradient must agree.
 *
 * Tolerance: the two runs do the same arithmetic on each example except for the order of
 * sums over tokens (the LoRA weight gradients sum over rows laid out differently) and the
 * padding's exact zeros, so they agree to f32 rounding: 1e-6 relative on the loss, and on
 * each gradient 1e-5 of the tensor's largest element. Attention crossing into another
 * example, or positions not restarting, changes them at the percent level.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim/optim.h" /* finch_grad_zero */
#include "peft/peft.h"
#include "test_lora.h"
#include "test_train.h"

#define N_EX 4
static const int lens[N_EX] = {5, 9, 1, 7}; /* one example of a single token: no target */

/* A LoRA on every projection with A and B drawn at random; returns its gradients after one
 * train step on (ids, targets, pos, seg) of B rows of T, and the loss in *loss. */
static float *grads_of(int B, int T, const int32_t *ids, const int32_t *tg, const int32_t *pos,
                       const int32_t *seg, double *loss, int64_t *n_params) {
    finch_lora_config cfg = {.r = 3, .alpha = 6.0f, .targets = (1u << FINCH_TARGET_COUNT) - 1};
    finch_rng rng;
    finch_rng_seed(&rng, 7);
    finch_peft *l;
    finch_err err;
    l = lora_new(model, &cfg, &rng, true);
    finch_rng_seed(&rng, 8);
    for (int64_t i = 0; i < l->params.total; i++) l->params.data[i] = (finch_rng_float(&rng) - 0.5f) * 0.4f;
    assert_int_equal(finch_peft_attach(l, model, 1.0f, (int64_t)B * T, &err), FINCH_OK);
    finch_train_acts *a;
    assert_int_equal(finch_train_acts_new(model, B, T, &a, &err), FINCH_OK);
    finch_grad_zero(l->params.grad, (size_t)l->params.total);
    *loss = finch_model_train_step(model, a, ids, tg, pos, seg, 0.0f, 0, true);
    float *g = malloc((size_t)l->params.total * sizeof *g);
    assert_non_null(g);
    memcpy(g, l->params.grad, (size_t)l->params.total * sizeof *g);
    *n_params = l->params.total;
    finch_train_acts_free(a);
    finch_peft_detach(l, model);
    finch_peft_free(l);
    return g;
}

static void test_packed_equals_unpacked(void **state) {
    (void)state;
    finch_model_config c;
    finch_model_config_get(model, &c);
    finch_rng rng;
    finch_rng_seed(&rng, 3);
    /* the examples: random ids; targets the next id, except on a few masked positions */
    int32_t ex[N_EX][16], mask[N_EX][16];
    int total = 0;
    for (int e = 0; e < N_EX; e++, total += lens[e - 1])
        for (int k = 0; k < lens[e]; k++) {
            ex[e][k] = (int32_t)(finch_rng_u64(&rng) % (uint64_t)c.n_vocab);
            mask[e][k] = k > 0 && finch_rng_u64(&rng) % 4 != 0; /* 1: id k is a target */
        }
    /* unpacked: one example per row of Tu, padded with id 0, no target */
    enum { Tu = 9 };
    int32_t uid[N_EX * Tu], utg[N_EX * Tu], upos[N_EX * Tu];
    for (int e = 0; e < N_EX; e++)
        for (int k = 0; k < Tu; k++) {
            int i = e * Tu + k;
            uid[i] = k < lens[e] ? ex[e][k] : 0;
            utg[i] = k + 1 < lens[e] && mask[e][k + 1] ? ex[e][k + 1] : -1;
            upos[i] = k;
        }
    /* packed: all examples in one row of Tp, then padding (segment 0) */
    enum { Tp = 25 };
    assert_true(total <= Tp);
    int32_t pid[Tp], ptg[Tp], ppos[Tp], pseg[Tp];
    for (int i = 0; i < Tp; i++) pid[i] = 0, ptg[i] = -1, ppos[i] = 0, pseg[i] = 0;
    for (int e = 0, at = 0; e < N_EX; at += lens[e++])
        for (int k = 0; k < lens[e]; k++) {
            pid[at + k] = ex[e][k];
            ptg[at + k] = k + 1 < lens[e] && mask[e][k + 1] ? ex[e][k + 1] : -1;
            ppos[at + k] = k;
            pseg[at + k] = e + 1;
        }
    double lu, lp, lw;
    int64_t n, n2;
    float *gu = grads_of(N_EX, Tu, uid, utg, upos, NULL, &lu, &n);
    float *gp = grads_of(1, Tp, pid, ptg, ppos, pseg, &lp, &n2);
    assert_int_equal(n, n2);
    printf("  loss unpacked %.9f, packed %.9f\n", lu, lp);
    assert_true(fabs(lp - lu) <= 1e-6 * fabs(lu));
    /* site by site (tensor by tensor: A then B) */
    finch_lora_config cfg = {.r = 3, .alpha = 6.0f, .targets = (1u << FINCH_TARGET_COUNT) - 1};
    finch_rng r0;
    finch_rng_seed(&r0, 7);
    finch_peft *l;
    l = lora_new(model, &cfg, &r0, false);
    double worst = 0;
    for (int s = 0; s < LORA(l)->n_sites; s++) {
        const finch_lora_site *st = &LORA(l)->sites[s];
        int64_t off[2] = {st->A - l->params.data, st->B - l->params.data}, len[2] = {st->r * st->in, st->out * st->r};
        for (int m = 0; m < 2; m++) {
            double mx = 0, e = 0;
            for (int64_t i = off[m]; i < off[m] + len[m]; i++) {
                mx = fmax(mx, fabs(gu[i]));
                e = fmax(e, fabs((double)gp[i] - gu[i]));
            }
            assert_true(mx > 0); /* every tensor carries gradient */
            if (e > 1e-5 * mx)
                fail_msg("layer %d site %d %s: packed gradient differs by %.3g (largest %.3g)", st->layer,
                         s, m ? "B" : "A", e, mx);
            worst = fmax(worst, e / mx);
        }
    }
    printf("  gradients: largest difference %.3g of the tensor's largest element\n", worst);
    finch_peft_free(l);
    /* the same packed row without segments lets attention cross examples: it must differ */
    int32_t *same = calloc(Tp, sizeof *same);
    for (int i = 0; i < Tp; i++) same[i] = 1;
    float *gx = grads_of(1, Tp, pid, ptg, ppos, same, &lw, &n2);
    printf("  loss with attention crossing examples %.9f\n", lw);
    assert_true(fabs(lw - lu) > 1e-4 * fabs(lu));
    free(same);
    free(gx);
    free(gu);
    free(gp);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_packed_equals_unpacked)};
    return cmocka_run_group_tests(tests, setup_tiny, teardown_tiny);
}
