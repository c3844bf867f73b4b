/*
 * test_train_loop.c: the training run on the tiny model: learning happens on a small
 * memorisable task; a run interrupted and resumed from its checkpoint continues with
 * bit-identical losses (metrics.jsonl lines equal to the uninterrupted run's); a corrupt
 * checkpoint is refused and left as it was; bad options are refused with their flag name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finch.h"
#include "test_util.h" /* read_file */

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

static char dir[] = "/tmp/finch_train_XXXXXX";
static char data[300];
static finch_model *model;

static finch_train_options opts(const char *out) {
    finch_train_options o = finch_train_defaults();
    o.data.path = data;
    o.data.max_seq_len = 32;
    o.out_dir = out;
    o.target_modules = "all-linear";
    o.lora_r = 4;
    o.lora_alpha = 8;
    o.lora_dropout = 0.1f; /* dropout on: resume must regenerate its masks */
    o.learning_rate = 1e-2;
    o.batch_size = 2;
    o.max_steps = 8;
    o.log_steps = 1;
    o.warmup_steps = 2;
    return o;
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

static char *metrics_of(const char *out) {
    char path[400];
    size_t n;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    char *text = (char *)read_file(path, &n);
    text = realloc(text, n + 1);
    text[n] = 0;
    return text;
}

/* Removes every "tokens_per_s": <number>, field. */
static void strip_speed(char *s) {
    for (char *p; (p = strstr(s, "\"tokens_per_s\""));) {
        size_t n = strcspn(p, ",") + 1;
        memmove(p, p + n, strlen(p + n) + 1);
    }
}

static void test_resume_exact(void **state) {
    (void)state;
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    finch_err err;
    finch_train_options o = opts(a);
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    /* interrupted after step 4 (a checkpoint is written), then resumed */
    o = opts(b);
    stop_at = 4;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    assert_non_null(strstr(err.msg, "--resume"));
    o.resume_dir = b;
    stop_at = -1;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_OK);
    char *ma = metrics_of(a), *mb = metrics_of(b);
    /* tokens_per_s differs between runs: compare the lines without it */
    strip_speed(ma);
    strip_speed(mb);
    assert_string_equal(ma, mb);
    free(ma);
    free(mb);
    /* the adapters are the same bytes */
    char pa[400], pb[400];
    size_t na, nb;
    snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/adapter_model.safetensors", b);
    uint8_t *fa = read_file(pa, &na), *fb = read_file(pb, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(fa, fb, na);
    free(fa);
    free(fb);
}

static void test_learns(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/learn", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.max_steps = 40;
    o.log_steps = 40;
    o.lora_dropout = 0;
    o.val_path = data;
    finch_data_spec spec = {.path = data, .max_seq_len = 32};
    finch_loss_report before;
    assert_int_equal(finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &before, &err), FINCH_OK);
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *m = metrics_of(out), *v = strstr(m, "\"val_loss\": ");
    assert_non_null(v);
    double val = atof(v + 12);
    printf("  validation loss %.4f before, %.4f after 40 steps\n", before.loss, val);
    assert_true(val < 0.5 * before.loss);
    free(m);
}

static void test_corrupt_checkpoint(void **state) {
    (void)state;
    char out[300], path[400], cmd[600];
    snprintf(out, sizeof out, "%s/corrupt", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.max_steps = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    snprintf(path, sizeof path, "%s/checkpoint-2/trainer_state.bin", out);
    size_t n;
    uint8_t *orig = read_file(path, &n);
    snprintf(cmd, sizeof cmd, "truncate -s %zu %s", n / 2, path);
    assert_int_equal(system(cmd), 0);
    o.resume_dir = out;
    o.max_steps = 4;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "trainer_state.bin"));
    size_t n2;
    uint8_t *after = read_file(path, &n2);
    assert_int_equal(n2, n / 2); /* left as it was: nothing written over it */
    free(after);
    /* another LoRA configuration cannot resume it */
    FILE *f = fopen(path, "wb");
    fwrite(orig, 1, n, f);
    fclose(f);
    o.lora_r = 8;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "another model or LoRA configuration"));
    free(orig);
}

static void test_bad_options(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/bad", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.lora_r = 0;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "rank 0"));
    o = opts(out);
    o.learning_rate = 0;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--learning-rate"));
    o = opts(out);
    o.target_modules = "q,attention";
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "'attention'"));
    o = opts(out);
    o.lr_scheduler = "exponential";
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    o = opts(out);
    o.data.path = "/nonexistent.jsonl";
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_IO);
    o = opts(out);
    o.resume_dir = "/nonexistent-run";
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_IO);
    assert_non_null(strstr(err.msg, "no checkpoint"));
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    FILE *f = fopen(data, "w");
    const char *pairs[][2] = {{"red", " apple"}, {"blue", " sky"}, {"green", " grass"},
                              {"white", " snow"}, {"black", " night"}, {"gold", " sun"}};
    for (int r = 0; r < 2; r++)
        for (size_t i = 0; i < 6; i++)
            fprintf(f, "{\"prompt\": \"color %s:\", \"completion\": \"%s\"}\n", pairs[i][0], pairs[i][1]);
    fclose(f);
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_resume_exact), cmocka_unit_test(test_learns),
                                       cmocka_unit_test(test_corrupt_checkpoint),
                                       cmocka_unit_test(test_bad_options)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
