/*
 * test_early_stopping.c: early stopping on the validation loss and the best checkpoint as
 * the result, on the tiny model with a crafted case: it learns colour -> noun pairs while
 * validating on the same colours followed by numbers, so that once the model has learnt
 * the format the validation loss climbs as it grows sure of its nouns. The rule (transformers' EarlyStoppingCallback:
 * an evaluation improves when it beats the best by more than the threshold; stop after
 * `patience` evaluations in a row that do not) is applied by hand to the validation losses
 * of the run without early stopping, and the run with it must stop exactly there, with the
 * same losses up to that step. A run interrupted before it stops and resumed stops at the
 * same step with the same bytes (the counter and the best are in the checkpoint); resuming
 * a stopped run does nothing. --load-best-model-at-end leaves the best checkpoint's adapter
 * bytes as the result and keeps that checkpoint from --save-total-limit. Bad combinations
 * are refused with the flags named.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finch.h"
#include "test_util.h" /* read_text_in, same_runs, same_bytes, write_colours */

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"
#define STEPS 30
#define EVAL 2

static char dir[] = "/tmp/finch_early_XXXXXX";
static char train[300], val[300], full[300];
static finch_model *model;
/* the run without early stopping: its validation loss at each evaluated step (NaN else) */
static double val_at[STEPS + 1];

static finch_train_options opts(const char *out) {
    finch_train_options o = finch_train_defaults();
    finch_err err;
    o.data.path = train;
    o.val_path = val;
    o.out_dir = out;
    assert_int_equal(finch_train_set_option(&o, "target-modules", "all-linear", &err), 0);
    assert_int_equal(finch_train_set_option(&o, "lora-r", "4", &err), 0);
    assert_int_equal(finch_train_set_option(&o, "lora-dropout", "0.1", &err), 0);
    o.learning_rate = 0.02;
    o.batch_size = 2;
    o.max_steps = STEPS;
    o.eval_steps = EVAL;
    o.log_steps = EVAL;
    return o;
}

/* The step at which early stopping with this patience and threshold ends the run whose
 * validation losses are val_at (STEPS + 1 when it does not). */
static int64_t stop_step(int64_t patience, double threshold) {
    double best = NAN;
    int64_t bad = 0;
    for (int s = EVAL; s <= STEPS; s += EVAL) {
        double v = val_at[s];
        if (isnan(best) || best - v > threshold)
            bad = 0;
        else
            bad++;
        if (isnan(best) || v < best) best = v;
        if (bad >= patience) return s;
    }
    return STEPS + 1;
}

/* The validation loss a run logged at step s (NaN when it logged none). */
static double val_loss_of(const char *out, int s) {
    char *m = read_text_in(out, "metrics.jsonl"), key[64];
    snprintf(key, sizeof key, "{\"step\": %d, \"val_loss\": ", s);
    const char *at = strstr(m, key);
    double v = at ? atof(at + strlen(key)) : NAN;
    free(m);
    return v;
}

/* The last step a run logged. */
static int last_logged(const char *out) {
    char *m = read_text_in(out, "metrics.jsonl"), *p = m, *at;
    int last = 0;
    while ((at = strstr(p, "{\"step\": "))) {
        last = atoi(at + 9);
        p = at + 1;
    }
    free(m);
    return last;
}

static int stop_at;
static int64_t last_step;
static void track(const finch_train_progress *p, void *user) {
    (void)user;
    last_step = p->step;
}
static int stop_now(void *user) {
    (void)user;
    return last_step == stop_at;
}

/* The run stops where the rule says, for two thresholds, with the losses of the run without
 * early stopping up to there, and says so in its last validation line. */
static void test_stops_where_the_rule_says(void **state) {
    (void)state;
    const struct {
        int64_t patience;
        double threshold;
    } cases[] = {{3, 0.0}, {3, 0.3}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const int64_t want = stop_step(cases[c].patience, cases[c].threshold);
        printf("  patience %lld, threshold %g: the rule stops at step %lld\n",
               (long long)cases[c].patience, cases[c].threshold, (long long)want);
        assert_true(want <= STEPS); /* the crafted case does stop early */
        char out[300];
        snprintf(out, sizeof out, "%s/stop%zu", dir, c);
        finch_err err;
        finch_train_options o = opts(out);
        o.early_stopping_patience = cases[c].patience;
        o.early_stopping_threshold = cases[c].threshold;
        assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
        assert_int_equal(last_logged(out), want);
        for (int s = EVAL; s <= want; s += EVAL) assert_true(val_loss_of(out, s) == val_at[s]);
        char *m = read_text_in(out, "metrics.jsonl"), key[400];
        snprintf(key, sizeof key, "\"early_stopping_counter\": %lld, \"stopped_early\": true}",
                 (long long)cases[c].patience);
        assert_non_null(strstr(m, key));
        free(m);
        snprintf(key, sizeof key, "%s/checkpoint-%lld", out, (long long)want);
        assert_int_equal(access(key, F_OK), 0);
        assert_int_equal(access(strcat(out, "/adapter_model.safetensors"), F_OK), 0);
    }
}

/* Interrupted two evaluations before it stops (its counter then above 0) and resumed, it
 * stops at the same step with the same metrics, trainer state and adapter; resumed once
 * more, it does nothing and changes nothing. */
static void test_resume_exact(void **state) {
    (void)state;
    const int64_t want = stop_step(3, 0);
    char a[300], b[300], ckpt[64];
    snprintf(a, sizeof a, "%s/stop0", dir); /* the uninterrupted run of the test above */
    snprintf(b, sizeof b, "%s/resumed", dir);
    finch_err err;
    finch_train_options o = opts(b);
    o.early_stopping_patience = 3;
    stop_at = (int)want - 2 * EVAL;
    assert_true(stop_at >= EVAL);
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    o.resume_dir = b;
    stop_at = -1;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_OK);
    snprintf(ckpt, sizeof ckpt, "checkpoint-%lld/trainer_state.bin", (long long)want);
    const char *files[] = {"adapter_model.safetensors", ckpt};
    same_runs(a, b, files, 2);
    last_step = 0;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_OK);
    assert_int_equal(last_step, 0); /* no step ran */
    same_runs(a, b, files, 2);
    printf("  interrupted at step %d, resumed: stopped at step %lld with the same bytes\n",
           (int)want - 2 * EVAL, (long long)want);
}

/* --load-best-model-at-end with a checkpoint every 4 steps, keeping 1: the result is the
 * adapter of the checkpoint whose validation loss is the lowest, which is kept besides the
 * newest. */
static void test_load_best(void **state) {
    (void)state;
    char out[300], a[400], b[400];
    snprintf(out, sizeof out, "%s/best", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.load_best_model_at_end = 1;
    o.save_steps = 2 * EVAL;
    o.save_total_limit = 1;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    int best = 0;
    for (int s = 2 * EVAL; s <= STEPS; s += 2 * EVAL)
        if (!best || val_at[s] < val_at[best]) best = s;
    if (val_at[STEPS] < val_at[best]) best = STEPS; /* the last step saves one too */
    printf("  the best checkpoint: step %d (validation loss %.4f; %.4f at step %d)\n", best,
           val_at[best], val_at[STEPS], STEPS);
    assert_true(best != STEPS); /* the crafted case: the last is not the best */
    snprintf(a, sizeof a, "%s/adapter_model.safetensors", out);
    snprintf(b, sizeof b, "%s/checkpoint-%d/adapter_model.safetensors", out, best);
    assert_true(same_bytes(a, b));
    snprintf(b, sizeof b, "%s/checkpoint-%d/adapter_model.safetensors", out, STEPS);
    assert_false(same_bytes(a, b));
    for (int s = 2 * EVAL; s < STEPS; s += 2 * EVAL) {
        snprintf(b, sizeof b, "%s/checkpoint-%d", out, s);
        assert_int_equal(access(b, F_OK) == 0, s == best);
    }
    /* the same training as the run without it */
    for (int s = EVAL; s <= STEPS; s += EVAL) assert_true(val_loss_of(out, s) == val_at[s]);
    /* interrupted after step 14 (a checkpoint outside the plan, not a candidate) and resumed:
     * the same result */
    char c[300];
    snprintf(c, sizeof c, "%s/best_resumed", dir);
    o.out_dir = c;
    stop_at = 14;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    o.resume_dir = c;
    stop_at = -1;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_OK);
    const char *files[] = {"adapter_model.safetensors"};
    same_runs(out, c, files, 1);
}

static void test_bad(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/bad", dir);
    finch_err err;
    static const struct {
        int64_t patience, eval, save;
        double threshold;
        int best, no_val;
        const char *msg;
    } bad[] = {
        {3, 0, 0, 0, 0, 0, "--early-stopping-patience 3 counts evaluations: give --eval-steps"},
        {3, 2, 0, 0, 0, 1, "validation data (--val FILE or --val-fraction F)"},
        {-1, 2, 0, 0, 0, 0, "--early-stopping-patience -1: must be >= 0"},
        {3, 2, 0, -0.5, 0, 0, "--early-stopping-threshold -0.5: must be a number >= 0"},
        {0, 0, 2, 0, 1, 0, "--load-best-model-at-end picks the checkpoint"},
        {0, 2, 0, 0, 1, 0, "round multiple of --eval-steps (here 0 and 2)"},
        {0, 2, 3, 0, 1, 0, "round multiple of --eval-steps (here 3 and 2)"},
        {0, 2, 4, 0, 1, 1, "validation data"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        finch_train_options o = opts(out);
        o.early_stopping_patience = bad[i].patience;
        o.eval_steps = bad[i].eval;
        o.save_steps = bad[i].save;
        o.early_stopping_threshold = bad[i].threshold;
        o.load_best_model_at_end = bad[i].best;
        if (bad[i].no_val) o.val_path = NULL;
        assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
        if (!strstr(err.msg, bad[i].msg)) fail_msg("case %zu: '%s'", i, err.msg);
    }
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(train, sizeof train, "%s/train.jsonl", dir);
    snprintf(val, sizeof val, "%s/val.jsonl", dir);
    snprintf(full, sizeof full, "%s/full", dir);
    if (write_colours(train, 2)) return -1;
    const char *const (*pairs)[2] = colour_pairs;
    FILE *f = fopen(val, "w"); /* the same colours, then numbers */
    for (int i = 0; i < 6; i++)
        fprintf(f, "{\"prompt\": \"color %s:\", \"completion\": \" %d %d %d\"}\n", pairs[i][0],
                7 * i, 3 * i, i);
    fclose(f);
    finch_threads_set(2);
    finch_err err;
    if (finch_model_load(TINY, &model, &err)) return -1;
    /* the run without early stopping */
    finch_train_options o = opts(full);
    if (finch_train(model, &o, NULL, NULL, NULL, &err)) return -1;
    printf("  validation losses without early stopping:");
    for (int s = 0; s <= STEPS; s++) {
        val_at[s] = s && s % EVAL == 0 ? val_loss_of(full, s) : NAN;
        if (!isnan(val_at[s])) printf(" %d: %.4f", s, val_at[s]);
    }
    printf("\n");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stops_where_the_rule_says),
        cmocka_unit_test(test_resume_exact),
        cmocka_unit_test(test_load_best),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
