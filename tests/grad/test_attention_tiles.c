/*
 * test_attention_tiles.c: the tiled training attention (kernels/cpu/attention.c) against
 * the float64 reference (kernels/ref/) at shapes larger than test_grad's finite
 * differences reach: T = 300 over several blocks of 64 queries and tiles of 32 keys, a
 * segment split inside a block, heads of 64 and 256, GQA 3:1 and 4:1, windows of 0 and 128,
 * a prefix; and the edges: T = 1, T not a multiple of the tiles, segments of one token, a
 * prefix longer than a key tile, a window longer than a block. Each case checks the output,
 * dq, dk, dv and the prefix's gradients, and that one thread gives the bits of two.
 *
 * Tolerance: test_grad's CPU-against-reference bound, 1e-4 (|ref| + mean|ref|) + 1e-6: the
 * kernel sums in f32 what the reference sums in double, ~1e-7 relative per term; a
 * masking or indexing error is off by O(1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_weights.h" /* rand_vec */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test_util.h" /* test_backend */

#define REF_TOL 1e-4
#define ABS_TOL 1e-6

static const finch_backend *be; /* the backend under test (test_backend) */

static float *zeros(int64_t n) {
    float *v = calloc((size_t)(n ? n : 1), sizeof *v);
    assert_non_null(v);
    return v;
}

static void check_close(const char *what, const char *name, const float *a, const float *b,
                        int64_t n) {
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += fabs((double)b[i]) / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= REF_TOL * (fabs((double)b[i]) + mean) + ABS_TOL))
            fail_msg("%s %s: cpu[%lld] = %.9g, reference %.9g", what, name, (long long)i, a[i],
                     b[i]);
    }
}

typedef struct {
    int64_t B, T;
    int H, KVH, D;
    int64_t W, np;
    int seg; /* 0: none; 1: a split at T / 2 - 13; 2: one token each; 3: runs of 1 to 40 */
} att_case;

static int32_t *make_seg(finch_rng *r, const att_case *c) {
    if (!c->seg) return NULL;
    int32_t *seg = malloc((size_t)(c->B * c->T) * sizeof *seg);
    assert_non_null(seg);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t t = 0, id = 0, left = 0; t < c->T; t++) {
            if (c->seg == 1) id = t < c->T / 2 - 13;
            if (c->seg == 2) id = t;
            if (c->seg == 3 && left-- == 0) left = (int64_t)(finch_rng_u64(r) % 40), id++;
            seg[b * c->T + t] = (int32_t)id;
        }
    return seg;
}

/* The kernel's forward and backward on n_threads threads into out, dq, dk, dv and the
 * prefix gradients dpre (starting from dpre0). */
static void run(float *out, float *dq, float *dk, float *dv, float *dpre, const float *dpre0,
                const float *q, const float *k, const float *v, const float *dout, const float *pre,
                const int32_t *seg, const att_case *c, int n_threads) {
    const int64_t kvs = (int64_t)c->KVH * c->D, T = c->T, B = c->B;
    finch_workspace ws;
    finch_err err;
    assert_int_equal(
        finch_workspace_init(&ws, finch_workspace_need(c->H * c->D, T + c->np), n_threads, 0, &err),
        FINCH_OK);
    memcpy(dpre, dpre0, (size_t)(c->np * 2 * kvs) * sizeof(float));
    finch_attn_prefix pa = {pre, pre + kvs, dpre, dpre + kvs, c->np, 2 * kvs};
    float *st = zeros(B * c->H * T * 2), *sps = zeros(B * c->H * T);
    be->attention_forward_train(out, st, q, k, v, seg, c->np ? &pa : NULL, B, T, c->H, c->KVH, c->D,
                                c->W, &ws);
    be->attention_backward(dq, dk, dv, sps, dout, out, st, q, k, v, seg, c->np ? &pa : NULL, B, T,
                           c->H, c->KVH, c->D, c->W, &ws);
    free(st);
    free(sps);
    finch_workspace_free(&ws);
}

static void check_case(finch_rng *r, const att_case *c) {
    const int64_t B = c->B, T = c->T, np = c->np, kvs = (int64_t)c->KVH * c->D;
    const int64_t nq = B * T * c->H * c->D, nkv = B * T * kvs, npre = np * 2 * kvs;
    char what[160];
    snprintf(what, sizeof what, "B=%lld T=%lld H=%d KVH=%d D=%d window %lld prefix %lld seg %d",
             (long long)B, (long long)T, c->H, c->KVH, c->D, (long long)c->W, (long long)np,
             c->seg);
    int32_t *seg = make_seg(r, c);
    float *q = rand_vec(r, nq, 1.0f), *k = rand_vec(r, nkv, 1.0f), *v = rand_vec(r, nkv, 1.0f);
    float *dout = rand_vec(r, nq, 1.0f), *pre = rand_vec(r, npre, 1.0f);
    float *dpre0 = rand_vec(r, npre, 1.0f);
    float *out = zeros(nq), *dq = zeros(nq), *dk = zeros(nkv), *dv = zeros(nkv),
          *dpre = zeros(npre);
    run(out, dq, dk, dv, dpre, dpre0, q, k, v, dout, pre, seg, c, 2);

    float *outr = zeros(nq), *att = zeros(B * c->H * T * (np + T)), *dqr = zeros(nq),
          *dkr = zeros(nkv), *dvr = zeros(nkv), *dprer = zeros(npre);
    memcpy(dprer, dpre0, (size_t)npre * sizeof(float));
    finch_attn_prefix pr = {pre, pre + kvs, dprer, dprer + kvs, np, 2 * kvs};
    finch_ref_attention_forward_train(outr, att, q, k, v, seg, np ? &pr : NULL, B, T, c->H, c->KVH,
                                      c->D, c->W);
    finch_ref_attention_backward(dqr, dkr, dvr, dout, att, q, k, v, seg, np ? &pr : NULL, B, T,
                                 c->H, c->KVH, c->D, c->W);
    check_close(what, "out", out, outr, nq);
    check_close(what, "dq", dq, dqr, nq);
    check_close(what, "dk", dk, dkr, nkv);
    check_close(what, "dv", dv, dvr, nkv);
    /* the prefix's gradients less their starting values */
    float *dpre_raw = zeros(npre);
    memcpy(dpre_raw, dpre, (size_t)npre * sizeof(float));
    for (int64_t i = 0; i < npre; i++) dpre[i] -= dpre0[i], dprer[i] -= dpre0[i];
    check_close(what, "prefix", dpre, dprer, npre);

    /* one thread: the same bits */
    float *o1 = zeros(nq), *q1 = zeros(nq), *k1 = zeros(nkv), *v1 = zeros(nkv), *p1 = zeros(npre);
    run(o1, q1, k1, v1, p1, dpre0, q, k, v, dout, pre, seg, c, 1);
    assert_memory_equal(o1, out, (size_t)nq * sizeof(float));
    assert_memory_equal(q1, dq, (size_t)nq * sizeof(float));
    assert_memory_equal(k1, dk, (size_t)nkv * sizeof(float));
    assert_memory_equal(v1, dv, (size_t)nkv * sizeof(float));
    if (npre) assert_memory_equal(p1, dpre_raw, (size_t)npre * sizeof(float));
    printf("%s: ok\n", what);

    free(seg), free(q), free(k), free(v), free(dout), free(pre), free(dpre0);
    free(out), free(dq), free(dk), free(dv), free(dpre), free(dpre_raw);
    free(outr), free(att), free(dqr), free(dkr), free(dvr), free(dprer);
    free(o1), free(q1), free(k1), free(v1), free(p1);
}

static void test_large(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 300);
    /* B, T, H, KVH, D, window, prefix, segments */
    const att_case cases[] = {
        {1, 300, 9, 3, 64, 0, 0, 1},    /* SmolLM2's heads, a split inside a block */
        {1, 300, 3, 1, 64, 128, 5, 1},  /* 3:1, window, prefix */
        {1, 300, 4, 1, 256, 128, 3, 0}, /* Gemma 3's heads, window, prefix */
        {2, 300, 4, 1, 256, 0, 0, 1},   /* 4:1, two rows */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&r, &cases[i]);
}

static void test_edges(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 1);
    const att_case cases[] = {
        {1, 1, 4, 1, 256, 0, 0, 0},   /* one token */
        {1, 1, 4, 1, 256, 128, 2, 0}, /* one token after a prefix */
        {2, 70, 2, 2, 20, 0, 3, 2},   /* segments of one token, D not a multiple of 8 */
        {2, 70, 6, 2, 20, 5, 3, 2},   /* the same in a window */
        {2, 45, 3, 1, 9, 33, 40, 3},  /* a prefix over two key tiles, window over a tile */
        {2, 150, 3, 1, 9, 70, 2, 3},  /* a window over a block of queries */
        {1, 97, 4, 4, 16, 0, 33, 3},  /* no GQA, runs of up to 40 tokens */
        {1, 161, 6, 3, 64, 31, 0, 0}, /* T past a multiple of 32 and 64, window below a tile */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&r, &cases[i]);
}

int main(void) {
    be = test_backend();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_large),
        cmocka_unit_test(test_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
