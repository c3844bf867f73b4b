/*
 * test_mixture.c: finch_train on a multi-task mixture (several training files with weights)
 * on the tiny model: metrics.jsonl counts each file's examples, the counts adding up to the
 * examples trained; the same seed gives the same run, another seed another; a run
 * interrupted and resumed (crossing epochs, with dropout, packed or not) gives the
 * uninterrupted run's metrics, trainer state and adapter byte for byte; one file given as a
 * source (any weight) trains exactly as data.path; --val-fraction holds out a share of each
 * file; each file detects its own format; DPO mixes preference files; bad mixtures are
 * refused naming the file or the flag.
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
#include "test_util.h" /* read_file, read_text_in, same_runs */

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

static char dir[] = "/tmp/finch_mixture_XXXXXX";
static char fa[300], fb[300], pa[300], pb[300];
static finch_model *model;
static finch_data_source two[2];

static void option(finch_train_options *o, const char *name, const char *value) {
    finch_err err;
    if (finch_train_set_option(o, name, value, &err)) fail_msg("%s", err.msg);
}

/* The files a (weight 3) and b (weight 1): 8 steps of 2 examples over an epoch of 10
 * (b's Alpaca template is long: 128 tokens). */
static finch_train_options opts(const char *out) {
    finch_train_options o = finch_train_defaults();
    two[0] = (finch_data_source){fa, 3.0};
    two[1] = (finch_data_source){fb, 1.0};
    o.sources = two;
    o.n_sources = 2;
    o.data.max_seq_len = 128;
    o.out_dir = out;
    option(&o, "target-modules", "all-linear");
    option(&o, "lora-r", "4");
    option(&o, "lora-dropout", "0.1");
    o.learning_rate = 1e-2;
    o.batch_size = 2;
    o.max_steps = 8;
    o.log_steps = 1;
    return o;
}

static int stop_at;
static int64_t last_step;
static bool packed; /* (then a step takes more than its 2 rows' examples) */
static void track(const finch_train_progress *p, void *user) {
    (void)user;
    last_step = p->step;
    assert_int_equal(p->n_tasks, 2);
    assert_string_equal(p->task_names[0], "a");
    assert_string_equal(p->task_names[1], "b");
    if (!packed) assert_int_equal(p->task_seen[0] + p->task_seen[1], 2 * p->step);
}
static int stop_now(void *user) {
    (void)user;
    return last_step == stop_at;
}

/* Each metrics line counts the examples of each file trained so far: they add up to the
 * examples of the steps, never fall, and both files were drawn. */
static void test_counts(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/counts", dir);
    finch_err err;
    finch_train_options o = opts(out);
    stop_at = -1;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_OK);
    char *m = read_text_in(out, "metrics.jsonl");
    long long prev_a = 0, prev_b = 0;
    for (int step = 1; step <= 8; step++) {
        char key[64];
        snprintf(key, sizeof key, "{\"step\": %d, \"loss\"", step);
        char *line = strstr(m, key), *t = line ? strstr(line, "\"tasks\": {\"a\": ") : NULL;
        assert_non_null(t);
        long long a = atoll(t + 15), b = atoll(strstr(t, "\"b\": ") + 5);
        assert_int_equal(a + b, 2 * step);
        assert_true(a >= prev_a && b >= prev_b);
        prev_a = a, prev_b = b;
    }
    printf("  after 8 steps of 2: %lld from a (weight 3), %lld from b (weight 1)\n", prev_a,
           prev_b);
    assert_true(prev_a > 0 && prev_b > 0);
    free(m);
    /* two files of the same name: the second is told apart by its number */
    two[1].path = fa;
    o.max_steps = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    m = read_text_in(out, "metrics.jsonl");
    assert_non_null(strstr(m, "\"tasks\": {\"a\": "));
    assert_non_null(strstr(m, ", \"a#2\": "));
    free(m);
}

/* The same seed gives the same run; another seed another order (other losses). */
static void test_seeded(void **state) {
    (void)state;
    char a[300], b[300], c[300];
    snprintf(a, sizeof a, "%s/seed_a", dir);
    snprintf(b, sizeof b, "%s/seed_b", dir);
    snprintf(c, sizeof c, "%s/seed_c", dir);
    finch_err err;
    finch_train_options o = opts(a);
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o.out_dir = b;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    const char *files[] = {"adapter_model.safetensors"};
    same_runs(a, b, files, 1);
    o.out_dir = c;
    o.seed = 43;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *ma = read_text_in(a, "metrics.jsonl"), *mc = read_text_in(c, "metrics.jsonl");
    strip_speed(ma);
    strip_speed(mc);
    assert_string_not_equal(ma, mc);
    free(ma);
    free(mc);
}

/* Interrupted after step 4 and resumed (the epoch of 10 examples wraps at step 5), the run
 * equals the uninterrupted one: metrics with the tasks' counts, trainer state, adapter. */
static void resume_exact(bool packing) {
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/resume_a%d", dir, packing);
    snprintf(b, sizeof b, "%s/resume_b%d", dir, packing);
    finch_err err;
    finch_train_options o = opts(a);
    o.packing = packed = packing;
    o.val_fraction = 0.25;
    o.eval_steps = 3;
    stop_at = -1;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o.out_dir = b;
    stop_at = 4;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    o.resume_dir = b;
    stop_at = -1;
    if (finch_train(model, &o, track, stop_now, NULL, &err)) fail_msg("%s", err.msg);
    const char *files[] = {"adapter_model.safetensors", "checkpoint-8/trainer_state.bin"};
    same_runs(a, b, files, 2);
    char *m = read_text_in(a, "metrics.jsonl"), *last = strstr(m, "{\"step\": 8, \"loss\"");
    printf("  %s: resumed at step 4, same bytes at step 8 (%.60s...)\n",
           packing ? "packed" : "unpacked", strstr(last, "\"epoch\""));
    assert_true(atof(strstr(last, "\"epoch\": ") + 9) > 1.0); /* an epoch was crossed */
    free(m);
}

static void test_resume_exact(void **state) {
    (void)state;
    resume_exact(false);
    resume_exact(true);
    packed = false;
}

/* One file as a source, with any weight, trains exactly as data.path does; and a checkpoint
 * written before mixtures (version 2: no training files recorded) resumes a run of one file
 * exactly. */
static void test_one_source(void **state) {
    (void)state;
    char a[300], b[300], c[300], path[400];
    snprintf(a, sizeof a, "%s/one_a", dir);
    snprintf(b, sizeof b, "%s/one_b", dir);
    finch_err err;
    finch_train_options o = opts(a);
    o.n_sources = 0;
    o.sources = NULL;
    o.data.path = fa;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    finch_data_source one = {fa, 5.0};
    o.data.path = NULL;
    o.sources = &one;
    o.n_sources = 1;
    o.out_dir = b;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    const char *files[] = {"adapter_model.safetensors"}; /* (trainer_state.bin keeps the weight) */
    same_runs(a, b, files, 1);
    char *m = read_text_in(a, "metrics.jsonl");
    assert_null(strstr(m, "\"tasks\""));
    free(m);
    /* version 2: the same bytes without the files (u32 count, 32 bytes a file); the run's
     * later checkpoint removed, so that it resumes from this one */
    snprintf(c, sizeof c, "%s/one_c", dir);
    o.out_dir = c;
    o.save_steps = 4;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    snprintf(path, sizeof path, "rm -r %s/checkpoint-8", c);
    assert_int_equal(system(path), 0);
    snprintf(path, sizeof path, "%s/checkpoint-4/trainer_state.bin", c);
    size_t n;
    uint8_t *st = read_file(path, &n);
    assert_int_equal(st[8], 3);
    st[8] = 2;
    FILE *f = fopen(path, "wb");
    fwrite(st, 1, n - 36 - 40, f); /* (and the 40 bytes of validation state) */
    fclose(f);
    free(st);
    o.resume_dir = c;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    same_runs(a, c, files, 1);
}

static char logged[8192];
static void keep_log(finch_log_level level, const char *msg, void *user) {
    (void)level, (void)user;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}

/* --val-fraction holds out that share of each file; each file's format is its own. */
static void test_val_fraction(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/val", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.val_fraction = 0.25;
    o.max_steps = 2;
    logged[0] = 0;
    finch_log_set(keep_log, NULL);
    finch_status st = finch_train(model, &o, NULL, NULL, NULL, &err);
    finch_log_set(NULL, NULL);
    assert_int_equal(st, FINCH_OK);
    printf("%s", logged);
    assert_non_null(strstr(logged, "task a: "));
    assert_non_null(strstr(logged, ", 4 examples (completion), 2 held out, weight 3"));
    assert_non_null(strstr(logged, ", 3 examples (alpaca), 1 held out, weight 1"));
    assert_non_null(strstr(logged, "7 training examples, 3 validation"));
    /* a file too small to give its share and keep one */
    o.val_fraction = 0.9;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_RANGE);
    assert_non_null(strstr(err.msg, "b.jsonl: --val-fraction 0.9 of its 4 examples leaves none"));
}

/* DPO mixes preference files as well. */
static void test_dpo(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/dpo", dir);
    finch_err err;
    finch_train_options o = opts(out);
    finch_data_source prefs[2] = {{pa, 1}, {pb, 1}};
    o.sources = prefs;
    o.objective = "dpo";
    o.max_steps = 3;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *m = read_text_in(out, "metrics.jsonl"), *last = strstr(m, "{\"step\": 3, ");
    assert_non_null(last);
    assert_non_null(strstr(last, "\"rewards/margins\""));
    const char *t = strstr(last, "\"tasks\": {\"pa\": ");
    assert_non_null(t);
    assert_int_equal(atoll(t + 16) + atoll(strstr(t, "\"pb\": ") + 6), 6); /* pairs */
    free(m);
    /* a preference file among instruction files is refused by name */
    prefs[0].path = fa;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "a.jsonl: --objective dpo needs preference lines"));
}

static void test_bad(void **state) {
    (void)state;
    char out[300], other[300];
    snprintf(out, sizeof out, "%s/bad", dir);
    finch_err err;
    finch_train_options o = opts(out);
    two[1].weight = 0;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "b.jsonl:0: the weight must be a number > 0"));
    o = opts(out);
    two[0].weight = NAN;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    o = opts(out);
    o.data.path = fa;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "training data given twice"));
    o = opts(out);
    snprintf(other, sizeof other, "%s/missing.jsonl", dir);
    two[1].path = other;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_IO);
    assert_non_null(strstr(err.msg, "missing.jsonl"));
    /* a checkpoint resumes only with the same files and weights */
    o = opts(out);
    o.max_steps = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o.resume_dir = out;
    o.max_steps = 3;
    two[1].weight = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "training file 2"));
    assert_non_null(strstr(err.msg, "weight 1 in the run, here 4 and 2"));
    o = opts(out);
    o.resume_dir = out;
    o.n_sources = 1;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "the run trained on 2 files, this one on 1"));
}

static void write_lines(const char *path, const char *fmt, int n) {
    FILE *f = fopen(path, "w");
    static const char *const words[] = {"red", "blue", "green", "white", "black", "gold"};
    static const char *const nouns[] = {" apple", " sky", " grass", " snow", " night", " sun"};
    for (int i = 0; i < n; i++)
        fprintf(f, fmt, words[i % 6], nouns[i % 6], nouns[(i + 1) % 6]);
    fprintf(f, "\n");
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(fa, sizeof fa, "%s/a.jsonl", dir);
    snprintf(fb, sizeof fb, "%s/b.jsonl", dir);
    snprintf(pa, sizeof pa, "%s/pa.jsonl", dir);
    snprintf(pb, sizeof pb, "%s/pb.jsonl", dir);
    /* a: 6 completion lines; b: 4 Alpaca lines (another format, detected on its own) */
    write_lines(fa, "{\"prompt\": \"color %s:\", \"completion\": \"%s\"}\n", 6);
    write_lines(fb, "{\"instruction\": \"name a %s thing\", \"output\": \"%s\", \"x\": \"%s\"}\n", 4);
    write_lines(pa, "{\"prompt\": \"color %s:\", \"chosen\": \"%s\", \"rejected\": \"%s\"}\n", 6);
    write_lines(pb, "{\"prompt\": \"a %s thing:\", \"chosen\": \"%s\", \"rejected\": \"%s\"}\n", 4);
    finch_threads_set(2);
    finch_err err;
    return finch_model_load(TINY, &model, &err) ? -1 : 0;
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
        cmocka_unit_test(test_counts),       cmocka_unit_test(test_seeded),
        cmocka_unit_test(test_resume_exact), cmocka_unit_test(test_one_source),
        cmocka_unit_test(test_val_fraction), cmocka_unit_test(test_dpo),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
