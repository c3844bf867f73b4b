/*
 * test_optim.c: optim/ against PyTorch. Three 20-step AdamW runs (linear, cosine and
 * constant-with-warmup schedules, weight decay on some tensors and not others, global
 * clipping that triggers on some steps) replayed from the same gradients, checking the
 * pre-clip norm, the learning rate and every parameter at every step; ten more schedule
 * cases (no warmup, warmup longer than the run, a one-step run); scheduler names; clipping
 * of non-finite gradients; accumulation helpers; thread-count invariance; the fused
 * optimizer's one pass against its three; and the
 * optimizer state record: round trip, embedded in a larger stream, and every kind of bad
 * record. Fixture: tests/reference/make_optim_fixtures.py (layout in its docstring).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim/optim.h"
#include "test_util.h"

/* Parameters: torch and finch perform the same float32 operations in the same order, but
 * the clip coefficient is formed in double here and in float32 there (and the norm is
 * summed in double here, per tensor in float32 there), so clipped gradients may differ
 * by an ulp or so; AdamW divides m by sqrt(v), which can amplify such relative
 * differences a little when v is tiny. 1e-6 relative (about 8 float ulps) plus 1e-8
 * absolute for values near zero covers that and nothing larger. Observed: about 4% of the
 * values differ from torch's, by at most one ulp (6e-8 absolute). */
#define PARAM_RTOL 1e-6
#define PARAM_ATOL 1e-8
/* Norms: torch's float32 per-tensor sums against a double sum: a few float ulps. */
#define NORM_RTOL 1e-6
/* Learning rates: the same double arithmetic as Python's, except cos from another libm. */
#define LR_RTOL 1e-14

typedef struct {
    const uint8_t *p;
    size_t left;
} cursor;

static void take(cursor *c, void *dst, size_t n) {
    if (c->left < n) fail_msg("fixture truncated");
    memcpy(dst, c->p, n);
    c->p += n;
    c->left -= n;
}
static int32_t take_i32(cursor *c) {
    int32_t x;
    take(c, &x, 4);
    return x;
}
static double take_f64(cursor *c) {
    double x;
    take(c, &x, 8);
    return x;
}

static void check_close(double got, double want, double rtol, double atol, const char *what,
                        int run, int step, int i) {
    if (!(fabs(got - want) <= atol + rtol * fabs(want)))
        fail_msg("run %d step %d %s[%d]: finch %.9g, torch %.9g", run, step + 1, what, i, got,
                 want);
}

static void test_adamw_against_torch(void **state) {
    (void)state;
    size_t size;
    uint8_t *buf = read_file(FINCH_FIXTURES "/optim/adamw_runs.bin", &size);
    cursor c = {buf, size};
    char magic[8];
    take(&c, magic, 8);
    assert_memory_equal(magic, "FOPTFIX1", 8);
    int n_tensors = take_i32(&c), steps = take_i32(&c), n_runs = take_i32(&c);
    size_t n = (size_t)take_i32(&c);
    finch_adamw_range ranges[16];
    assert_true(n_tensors <= 16);
    size_t o = 0;
    for (int k = 0; k < n_tensors; k++) {
        ranges[k].begin = o;
        ranges[k].count = (size_t)take_i32(&c);
        ranges[k].decay = take_i32(&c) != 0;
        o += ranges[k].count;
    }
    assert_int_equal(o, n);
    float *grads = malloc((size_t)steps * n * 4), *init = malloc(n * 4), *want = malloc(n * 4);
    float *p = malloc(n * 4), *g = malloc(n * 4), *m = malloc(n * 4), *v = malloc(n * 4);
    take(&c, grads, (size_t)steps * n * 4);
    take(&c, init, n * 4);
    double worst = 0, worst_abs = 0;
    int clipped = 0, not_exact = 0;
    for (int r = 0; r < n_runs; r++) {
        finch_lr_schedule s = {0};
        s.kind = (finch_lr_kind)take_i32(&c);
        s.warmup_steps = take_i32(&c);
        s.total_steps = take_i32(&c);
        s.lr = take_f64(&c);
        finch_adamw_config cfg;
        cfg.beta1 = take_f64(&c);
        cfg.beta2 = take_f64(&c);
        cfg.eps = take_f64(&c);
        cfg.weight_decay = take_f64(&c);
        double max_norm = take_f64(&c);
        memcpy(p, init, n * 4);
        finch_grad_zero(m, n);
        finch_grad_zero(v, n);
        for (int t = 0; t < steps; t++) {
            double lr_want = take_f64(&c), norm_want = take_f64(&c);
            take(&c, want, n * 4);
            memcpy(g, grads + (size_t)t * n, n * 4);
            double norm = finch_grad_clip(g, n, max_norm);
            check_close(norm, norm_want, NORM_RTOL, 0, "norm", r, t, 0);
            if (norm > max_norm) clipped++;
            double lr = finch_lr_at(&s, t);
            check_close(lr, lr_want, LR_RTOL, 0, "lr", r, t, 0);
            finch_adamw_step(p, m, v, g, n, ranges, n_tensors, &cfg, lr, t + 1);
            for (size_t i = 0; i < n; i++) {
                check_close(p[i], want[i], PARAM_RTOL, PARAM_ATOL, "param", r, t, (int)i);
                double e = fabs((double)p[i] - want[i]) / fmax(fabs(want[i]), 1e-30);
                if (e > worst) worst = e;
                if (p[i] != want[i]) not_exact++;
                if (fabs((double)p[i] - want[i]) > worst_abs) worst_abs = fabs((double)p[i] - want[i]);
            }
        }
    }
    print_message("AdamW: %d runs x %d steps x %zu params, %d clipped steps, %d values not "
                  "bit-equal, worst difference %.3g relative, %.3g absolute\n",
                  n_runs, steps, n, clipped, not_exact, worst, worst_abs);
    assert_true(clipped > 0 && clipped < n_runs * steps);

    int n_cases = take_i32(&c);
    for (int k = 0; k < n_cases; k++) {
        finch_lr_schedule s = {0};
        s.kind = (finch_lr_kind)take_i32(&c);
        s.warmup_steps = take_i32(&c);
        s.total_steps = take_i32(&c);
        s.lr = take_f64(&c);
        for (int64_t t = 0; t < s.total_steps + 2; t++)
            check_close(finch_lr_at(&s, t), take_f64(&c), LR_RTOL, 1e-300, "case lr", k,
                        (int)t - 1, 0);
    }
    assert_int_equal(c.left, 0);
    free(grads), free(init), free(want), free(p), free(g), free(m), free(v), free(buf);
}

static void test_lr_kind_parse(void **state) {
    (void)state;
    finch_lr_kind k;
    finch_err err = {0};
    assert_int_equal(finch_lr_kind_parse("linear", &k, &err), FINCH_OK);
    assert_int_equal(k, FINCH_LR_LINEAR);
    assert_int_equal(finch_lr_kind_parse("cosine", &k, &err), FINCH_OK);
    assert_int_equal(k, FINCH_LR_COSINE);
    assert_int_equal(finch_lr_kind_parse("constant", &k, &err), FINCH_OK);
    assert_int_equal(k, FINCH_LR_CONSTANT);
    assert_int_equal(finch_lr_kind_parse("constant_with_warmup", &k, &err), FINCH_OK);
    assert_int_equal(k, FINCH_LR_CONSTANT);
    for (int i = 0; i < FINCH_LR_COUNT; i++) {
        assert_int_equal(finch_lr_kind_parse(finch_lr_kind_name((finch_lr_kind)i), &k, &err),
                         FINCH_OK);
        assert_int_equal(k, i);
    }
    k = FINCH_LR_COSINE;
    const char *bad[] = {"foo", "", "Linear", "cosine ", "polynomial"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(finch_lr_kind_parse(bad[i], &k, &err), FINCH_E_USAGE);
        assert_int_equal(k, FINCH_LR_COSINE);
    }
    assert_int_equal(finch_lr_kind_parse("foo", &k, &err), FINCH_E_USAGE);
    assert_string_equal(err.msg, "--lr-scheduler foo: use linear, cosine or constant");
}

static void test_clip_edges(void **state) {
    (void)state;
    /* 3-4-0 has norm 5: no clipping at max_norm 5 (coef just below 1 only because of the
     * 1e-6, and torch clips then too), clipping to 1 at max_norm 1. */
    float g[3] = {3, 4, 0};
    assert_true(finch_grad_clip(g, 3, 10.0) == 5.0);
    assert_true(g[0] == 3 && g[1] == 4);
    assert_true(finch_grad_clip(g, 3, 1.0) == 5.0);
    assert_true(fabs(finch_grad_norm(g, 3) - 1.0) < 1e-6);
    assert_true(finch_grad_norm(g, 0) == 0.0);
    assert_true(finch_grad_clip(NULL, 0, 1.0) == 0.0);

    float h[4] = {1, INFINITY, 2, 0};
    assert_true(isinf(finch_grad_clip(h, 4, 1.0)));
    assert_true(h[0] == 1 && h[2] == 2);
    h[1] = NAN;
    assert_true(isnan(finch_grad_clip(h, 4, 1.0)));
    assert_true(h[0] == 1 && h[2] == 2);
    /* Squares that overflow float32 do not overflow the double sum. */
    float big[2] = {3e30f, 4e30f};
    assert_true(fabs(finch_grad_norm(big, 2) / 5e30 - 1) < 1e-7);
}

static void test_accumulation_and_threads(void **state) {
    (void)state;
    size_t n = 300001; /* odd, above the parallel thresholds */
    float *g = malloc(n * 4), *p1 = malloc(n * 4), *p2 = malloc(n * 4);
    float *m1 = calloc(n, 4), *v1 = calloc(n, 4), *m2 = calloc(n, 4), *v2 = calloc(n, 4);
    finch_rng rng;
    finch_rng_seed(&rng, 7);
    finch_grad_zero(g, n);
    for (size_t i = 0; i < n; i++) assert_true(g[i] == 0.0f);
    /* Four micro-batches accumulated with += and scaled by 1/4. */
    for (int mb = 0; mb < 4; mb++)
        for (size_t i = 0; i < n; i++) g[i] += (float)mb * 0.25f + (float)(i % 7);
    finch_grad_scale(g, n, 0.25f);
    for (size_t i = 0; i < n; i++) assert_true(g[i] == (1.5f * 0.25f + (float)(i % 7)));
    for (size_t i = 0; i < n; i++) {
        g[i] = finch_rng_float(&rng) - 0.5f;
        p1[i] = p2[i] = finch_rng_float(&rng);
    }
    finch_adamw_config cfg = finch_adamw_config_default();
    finch_adamw_range all = {0, n, true};
    finch_threads_set(1);
    double n1 = finch_grad_norm(g, n);
    for (int t = 1; t <= 3; t++) finch_adamw_step(p1, m1, v1, g, n, &all, 1, &cfg, 1e-3, t);
    finch_threads_set(2);
    double n2 = finch_grad_norm(g, n);
    for (int t = 1; t <= 3; t++) finch_adamw_step(p2, m2, v2, g, n, &all, 1, &cfg, 1e-3, t);
    finch_threads_set(1);
    assert_true(n1 == n2);
    assert_memory_equal(p1, p2, n * 4);
    assert_memory_equal(v1, v2, n * 4);
    /* Indices outside every range are untouched. */
    float q[4] = {1, 1, 1, 1}, gm[4] = {1, 1, 1, 1}, mm[4] = {0}, vv[4] = {0};
    finch_adamw_range mid = {1, 2, false};
    finch_adamw_step(q, mm, vv, gm, 4, &mid, 1, &cfg, 0.1, 1);
    assert_true(q[0] == 1 && q[3] == 1 && q[1] < 1 && q[2] < 1 && mm[0] == 0 && vv[3] == 0);
    free(g), free(p1), free(p2), free(m1), free(v1), free(m2), free(v2);
}

/* The fused optimizer's one pass (finch_adamw_step_consume) against its three passes
 * (finch_grad_sumsq, finch_adamw_step, finch_grad_zero): the same parameters, moments and
 * sum of squares, bit for bit, g zeroed, on 1 and 2 threads, with and without decay; at
 * sizes whose 64 parts end inside a vector and with a tail shorter than one. */
static void test_consume_one_pass(void **state) {
    (void)state;
    const size_t sizes[] = {5, 1000, 70001, 262147};
    finch_adamw_config cfg = finch_adamw_config_default();
    cfg.weight_decay = 0.1;
    finch_rng rng;
    finch_rng_seed(&rng, 9);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (int th = 1; th <= 2; th++) {
            const size_t n = sizes[k];
            float *b = malloc(n * 4 * 8);
            assert_non_null(b);
            float *p1 = b, *m1 = b + n, *v1 = b + 2 * n, *g1 = b + 3 * n;
            float *p2 = b + 4 * n, *m2 = b + 5 * n, *v2 = b + 6 * n, *g2 = b + 7 * n;
            for (size_t i = 0; i < n; i++) {
                p1[i] = p2[i] = finch_rng_float(&rng) - 0.5f;
                m1[i] = m2[i] = 0.01f * (finch_rng_float(&rng) - 0.5f);
                v1[i] = v2[i] = 1e-4f * finch_rng_float(&rng);
                g1[i] = g2[i] = finch_rng_float(&rng) - 0.5f;
            }
            finch_threads_set(th);
            const bool decay = k % 2 == 0;
            const finch_adamw_range all = {0, n, decay};
            const double sq1 = finch_grad_sumsq(g1, n);
            finch_adamw_step(p1, m1, v1, g1, n, &all, 1, &cfg, 1e-3, 3);
            const double sq2 = finch_adamw_step_consume(p2, m2, v2, g2, n, decay, &cfg, 1e-3, 3);
            finch_threads_set(1);
            assert_true(sq1 == sq2 && sq1 > 0);
            assert_memory_equal(p1, p2, n * 4);
            assert_memory_equal(m1, m2, n * 4);
            assert_memory_equal(v1, v2, n * 4);
            for (size_t i = 0; i < n; i++) assert_true(g2[i] == 0.0f);
            free(b);
        }
}

/* A valid record of n floats in a malloc'd buffer, with m[i] = i and v[i] = 2i. */
static uint8_t *make_record(size_t n, int64_t step, size_t *size) {
    float *m = malloc(n * 4 + 4), *v = malloc(n * 4 + 4);
    for (size_t i = 0; i < n; i++) m[i] = (float)i - 3.5f, v[i] = 2.0f * (float)i;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    finch_err err = {0};
    assert_int_equal(finch_optim_state_save(f, "mem", m, v, n, step, &err), FINCH_OK);
    fclose(f);
    free(m), free(v);
    *size = len;
    return (uint8_t *)buf;
}

static finch_status load_from(const uint8_t *buf, size_t size, size_t n, int64_t *step,
                              finch_err *err) {
    float *m = malloc(n * 4 + 4), *v = malloc(n * 4 + 4);
    /* fmemopen of a zero-length buffer is not portable; an empty file stands in. */
    FILE *f = size ? fmemopen((void *)buf, size, "rb") : tmpfile();
    assert_non_null(f);
    finch_status st = finch_optim_state_load(f, "ckpt/optim", m, v, n, step, err);
    fclose(f);
    free(m), free(v);
    return st;
}

static void test_state_round_trip(void **state) {
    (void)state;
    size_t n = 1000;
    float *m = malloc(n * 4), *v = malloc(n * 4), *m2 = malloc(n * 4), *v2 = malloc(n * 4);
    finch_rng rng;
    finch_rng_seed(&rng, 3);
    for (size_t i = 0; i < n; i++) m[i] = finch_rng_float(&rng) - 0.5f, v[i] = finch_rng_float(&rng);
    FILE *f = tmpfile();
    assert_non_null(f);
    finch_err err = {0};
    /* Embedded between other sections, as a checkpoint writer would. */
    fputs("before", f);
    assert_int_equal(finch_optim_state_save(f, "tmp", m, v, n, 1234, &err), FINCH_OK);
    assert_int_equal(ftell(f), 6 + (long)finch_optim_state_size(n));
    assert_int_equal(finch_optim_state_save(f, "tmp", m, v, 0, 0, &err), FINCH_OK);
    fputs("after", f);
    rewind(f);
    char word[8] = {0};
    assert_int_equal(fread(word, 1, 6, f), 6);
    int64_t step = -1;
    assert_int_equal(finch_optim_state_load(f, "tmp", m2, v2, n, &step, &err), FINCH_OK);
    assert_int_equal(step, 1234);
    assert_memory_equal(m, m2, n * 4);
    assert_memory_equal(v, v2, n * 4);
    assert_int_equal(finch_optim_state_load(f, "tmp", NULL, NULL, 0, &step, &err), FINCH_OK);
    assert_int_equal(step, 0);
    memset(word, 0, sizeof word);
    assert_int_equal(fread(word, 1, 5, f), 5);
    assert_string_equal(word, "after");
    fclose(f);
    free(m), free(v), free(m2), free(v2);
}

static void expect_format(const uint8_t *buf, size_t size, size_t n, const char *fragment) {
    finch_err err = {0};
    int64_t step = 77;
    finch_status st = load_from(buf, size, n, &step, &err);
    if (st != FINCH_E_FORMAT || !strstr(err.msg, fragment))
        fail_msg("expected FINCH_E_FORMAT with \"%s\", got %d: %s", fragment, st, err.msg);
    assert_int_equal(step, 77);
    assert_non_null(strstr(err.msg, "ckpt/optim"));
}

static void test_state_bad_records(void **state) {
    (void)state;
    size_t n = 5, size;
    uint8_t *rec = make_record(n, 9, &size);
    assert_int_equal(size, finch_optim_state_size(n));
    finch_err err = {0};
    int64_t step = 0;
    assert_int_equal(load_from(rec, size, n, &step, &err), FINCH_OK);
    assert_int_equal(step, 9);

    /* Cut short at every offset: the message names the offset where the data ran out. */
    char frag[64];
    for (size_t cut = 0; cut < size; cut++) {
        snprintf(frag, sizeof frag, "offset %zu: truncated in %s", cut,
                 cut < 32 ? "the header" : cut < 32 + 4 * n ? "m" : "v");
        expect_format(rec, cut, n, frag);
    }
    uint8_t *bad = malloc(size);
    struct {
        size_t at;
        uint8_t byte;
        const char *fragment;
    } cases[] = {
        {0, 'X', "offset 0: magic"},
        {7, 0, "offset 0: magic"},
        {8, 2, "offset 8: version 2"},
        {8, 0, "offset 8: version 0"},
        {12, 2, "offset 12: 2 bytes per element"},
        {16, 6, "offset 16: 6 floats per moment, this run trains 5"},
        {23, 0x80, "offset 16:"},
        {31, 0x80, "offset 24: step"},
        {32 + 4 * n + 3, 0x80, "offset 52: v[0] = -0"}, /* -0.0 compares >= 0: allowed below */
        {32 + 4 * n + 4 * 2 + 3, 0x7f, "offset 60: v[2] = nan"},
        {32 + 4 * n + 4 * 4 + 3, 0xc0, "offset 68: v[4] = -"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        memcpy(bad, rec, size);
        bad[cases[k].at] = cases[k].byte;
        if (k == 8) { /* v[0] = -0.0 is a valid zero */
            assert_int_equal(load_from(bad, size, n, &step, &err), FINCH_OK);
            continue;
        }
        if (cases[k].at == 32 + 4 * n + 4 * 2 + 3) bad[cases[k].at - 1] = 0xff;
        expect_format(bad, size, n, cases[k].fragment);
    }
    /* All-zero and all-0xff headers. */
    memset(bad, 0, size);
    expect_format(bad, size, n, "magic");
    memset(bad, 0xff, size);
    expect_format(bad, size, n, "magic");
    /* The record of another model: the size check comes before any data is read. */
    expect_format(rec, size, n + 1, "5 floats per moment, this run trains 6");
    free(bad);
    free(rec);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_against_torch),
        cmocka_unit_test(test_lr_kind_parse),
        cmocka_unit_test(test_clip_edges),
        cmocka_unit_test(test_accumulation_and_threads),
        cmocka_unit_test(test_consume_one_pass),
        cmocka_unit_test(test_state_round_trip),
        cmocka_unit_test(test_state_bad_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
