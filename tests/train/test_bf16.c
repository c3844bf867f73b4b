/*
 * test_bf16.c: training with --bf16 (the base's products with bf16 operands, f32 sums) on
 * the tiny model, LoRA and full fine-tuning: every step's loss within 1 % of the f32 run's (a product that
 * lost more than bf16's 2^-9 per operand would drift past it over 12 steps), but not the
 * same bits (the bf16 path ran); the run learns; and an interrupted bf16 run resumes to the
 * same adapter bytes, so its products are deterministic.
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
#include "test_util.h" /* read_file, write_colours */

static char dir[] = "/tmp/finch_bf16_XXXXXX";
static char data[300];
static finch_model *model;

static finch_train_options opts_method(const char *out, int bf16, const char *method) {
    finch_train_options o = finch_train_defaults();
    o.method = method;
    o.data.path = data;
    o.data.max_seq_len = 32;
    o.out_dir = out;
    o.learning_rate = 1e-2;
    o.batch_size = 4;
    o.max_steps = 12;
    o.log_steps = 1;
    o.bf16 = bf16;
    finch_err err;
    const finch_option set[] = {{"target-modules", "all-linear"}, {"lora-r", "4"}, {"lora-dropout", "0.1"}};
    for (size_t i = 0; strcmp(method, "lora") == 0 && i < sizeof set / sizeof set[0]; i++)
        if (finch_train_set_option(&o, set[i].name, set[i].value, &err)) fail_msg("%s", err.msg);
    return o;
}

static finch_train_options opts(const char *out, int bf16) {
    return opts_method(out, bf16, "lora");
}

/* The "loss" of every step's metrics line, up to cap of them; returns how many. */
static int losses(const char *out, double *loss, int cap) {
    char path[400];
    size_t n;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    char *text = (char *)read_file(path, &n);
    text = realloc(text, n + 1);
    text[n] = 0;
    int k = 0;
    for (char *p = text; k < cap && (p = strstr(p, "\"loss\": ")); p += 8) loss[k++] = atof(p + 8);
    free(text);
    return k;
}

/* The method's run with and without --bf16. */
static void close_to_f32(const char *method, double lr) {
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/%s-f32", dir, method);
    snprintf(b, sizeof b, "%s/%s-bf16", dir, method);
    finch_err err;
    finch_train_options o = opts_method(a, 0, method);
    o.learning_rate = lr;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o = opts_method(b, 1, method);
    o.learning_rate = lr;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    double la[16], lb[16];
    int na = losses(a, la, 16), nb = losses(b, lb, 16);
    assert_int_equal(na, 12);
    assert_int_equal(nb, 12);
    double worst = 0;
    int same = 0;
    for (int i = 0; i < na; i++) {
        worst = fmax(worst, fabs(lb[i] - la[i]) / la[i]);
        same += la[i] == lb[i];
    }
    printf("  %s, 12 steps: loss %.4f -> %.4f (f32), %.4f -> %.4f (bf16); largest relative "
           "difference %.2e\n",
           method, la[0], la[na - 1], lb[0], lb[nb - 1], worst);
    assert_true(worst < 0.01);
    assert_true(same < na);
    assert_true(lb[nb - 1] < 0.7 * lb[0]);
}

/* LoRA over the frozen base; full fine-tuning, whose weight gradients are bf16 products
 * too. */
static void test_close_to_f32(void **state) {
    (void)state;
    close_to_f32("lora", 1e-2);
    close_to_f32("full", 1e-3);
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

static void test_resume_exact(void **state) {
    (void)state;
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/whole", dir);
    snprintf(b, sizeof b, "%s/resumed", dir);
    finch_err err;
    finch_train_options o = opts(a, 1);
    o.max_steps = 8;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o = opts(b, 1);
    o.max_steps = 8;
    stop_at = 4;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    o.resume_dir = b;
    stop_at = -1;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_OK);
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

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    if (write_colours(data, 2)) return -1;
    finch_threads_set(2);
    finch_err err;
    return finch_model_load(FINCH_FIXTURES "/model/tiny_llama.gguf", &model, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_close_to_f32),
                                       cmocka_unit_test(test_resume_exact)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
