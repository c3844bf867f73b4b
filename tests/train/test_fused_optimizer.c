/*
 * test_fused_optimizer.c: AdamW fused into backward (--fused-optimizer) against the step
 * after backward, both without clipping and with one micro-batch a step. 4 steps of full
 * fine-tuning (Qwen2: a tied head, q/k/v biases; GPT-2's fused q/k/v views, LayerNorm
 * biases and learned positions; Gemma 3's q/k and post norms, 6 blocks, also with gradient
 * checkpointing), freezing (the second block and the head; both blocks), LoRA with dropout,
 * DoRA, prefix tuning (tensors updated only when backward ends), and LoRA and full
 * fine-tuning under DPO give checkpoints whose parameters, AdamW moments and run position
 * are the same bytes, the same result file and the same losses (grad_norm, summed tensor
 * by tensor, within 1e-6); the gradient arena is smaller than the parameters wherever a
 * method places tensors in two blocks or more; a fused run interrupted and resumed, or
 * resumed from an unfused run's checkpoint, ends in the same bytes; clipping, accumulation
 * and several ranks are refused with their message.
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
#include "test_util.h" /* same_bytes, read_text_in, strip_speed, write_colours */

static char dir[] = "/tmp/finch_fused_XXXXXX";
static char data[300], pairs[300];
static bool dpo;  /* the runs train DPO on pairs */
static bool ckpt; /* with gradient checkpointing (blocks recomputed in backward) */

/* The log's "gradients held" line of the last run: held and all. */
static long long held = -1, held_of = -1;
static void on_log(finch_log_level level, const char *msg, void *user) {
    (void)level;
    (void)user;
    const char *p = strstr(msg, "gradients held: ");
    if (!p) return;
    p += strlen("gradients held: ");
    if (sscanf(p, "%lld of %lld", &held, &held_of) == 2) return;
    if (sscanf(p, "all %lld", &held) == 1) held_of = held;
}

static finch_train_options opts(const char *out, const char *method, bool fused) {
    finch_train_options o = finch_train_defaults();
    o.data.path = dpo ? pairs : data;
    o.objective = dpo ? "dpo" : NULL;
    o.gradient_checkpointing = ckpt;
    o.data.max_seq_len = 32;
    o.out_dir = out;
    o.method = method;
    o.learning_rate = 1e-2;
    o.weight_decay = 0.1; /* the ranges with and without decay */
    o.warmup_steps = 1;
    o.batch_size = 2;
    o.max_steps = 4;
    o.log_steps = 1;
    o.max_grad_norm = 0;
    o.fused_optimizer = fused;
    return o;
}

/* Removes every '"grad_norm": <number>, ' of a metrics text into norms (up to 64). */
static int take_norms(char *s, double *norms) {
    int n = 0;
    for (char *p; (p = strstr(s, "\"grad_norm\""));) {
        if (n < 64) norms[n++] = strtod(p + strlen("\"grad_norm\": "), NULL);
        size_t k = strcspn(p, ",") + 1;
        memmove(p, p + k, strlen(p + k) + 1);
    }
    return n;
}

/* Runs a and b logged the same metrics but for the speed and grad_norm (within 1e-6
 * relative) and wrote the same bytes to each file named. */
static void same_bits(const char *a, const char *b, const char *const *files, int n) {
    char *ma = read_text_in(a, "metrics.jsonl"), *mb = read_text_in(b, "metrics.jsonl");
    double na[64], nb[64];
    strip_speed(ma);
    strip_speed(mb);
    int ka = take_norms(ma, na), kb = take_norms(mb, nb);
    assert_int_equal(ka, kb);
    assert_true(ka > 0);
    for (int i = 0; i < ka; i++)
        if (!(fabs(na[i] - nb[i]) <= 1e-6 * fabs(na[i]))) fail_msg("grad_norm %g, %g", na[i], nb[i]);
    assert_string_equal(ma, mb);
    free(ma);
    free(mb);
    for (int f = 0; f < n; f++) {
        char pa[1024], pb[1024];
        snprintf(pa, sizeof pa, "%s/%s", a, files[f]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[f]);
        if (!same_bytes(pa, pb)) fail_msg("%s differs from %s", pb, pa);
    }
}

/* 4 steps of method on the model at path, after backward and fused: the same bits. */
static void same_run(const char *model_path, const char *tag, const char *method,
                     const finch_option *opt, int n_opt, const char *result, bool smaller) {
    finch_model *m;
    finch_err err;
    if (finch_model_load(model_path, &m, &err)) fail_msg("%s", err.msg);
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/%s-%s-plain", dir, tag, method);
    snprintf(b, sizeof b, "%s/%s-%s-fused", dir, tag, method);
    long long h[2] = {0}, of[2] = {0};
    for (int fused = 0; fused < 2; fused++) {
        finch_train_options o = opts(fused ? b : a, method, fused);
        for (int i = 0; i < n_opt; i++)
            if (finch_train_set_option(&o, opt[i].name, opt[i].value, &err)) fail_msg("%s", err.msg);
        held = held_of = -1;
        if (finch_train(m, &o, NULL, NULL, NULL, &err)) fail_msg("%s: %s", method, err.msg);
        h[fused] = held;
        of[fused] = held_of;
    }
    finch_model_free(m);
    const char *files[] = {result, "checkpoint-4/trainer_state.bin"};
    same_bits(a, b, files, 2);
    assert_true(h[0] > 0 && h[0] == of[0] && of[1] == of[0]); /* unfused: every gradient */
    if (smaller) assert_true(h[1] < of[1]);                   /* fused: a block's worth */
    printf("  %s %s: the same parameters, moments and losses; gradients held %lld of %lld\n",
           tag, method, h[1], of[1]);
}

static void test_full_bit_identical(void **state) {
    (void)state;
    same_run(FINCH_FIXTURES "/model/tiny_qwen2.gguf", "qwen2_tied", "full", NULL, 0,
             "model.safetensors", true);
    same_run(FINCH_FIXTURES "/model/tiny_gpt2.gguf", "gpt2", "full", NULL, 0, "model.safetensors",
             true);
    same_run(FINCH_FIXTURES "/model/tiny_gemma3.gguf", "gemma3", "full", NULL, 0,
             "model.safetensors", true);
    ckpt = true; /* block l recomputed before its backward, block l + 1 updated already */
    same_run(FINCH_FIXTURES "/model/tiny_gemma3.gguf", "gemma3_ckpt", "full", NULL, 0,
             "model.safetensors", true);
    ckpt = false;
}

static void test_methods_bit_identical(void **state) {
    (void)state;
    const char *llama = FINCH_FIXTURES "/model/tiny_llama.gguf";
    const finch_option freeze[] = {{"layers", "1"}, {"train-head", "true"}};
    same_run(llama, "llama", "freeze", freeze, 2, "model.safetensors", false); /* one block */
    const finch_option freeze2[] = {{"layers", "0,1"}};
    same_run(llama, "llama2", "freeze", freeze2, 1, "model.safetensors", true);
    const finch_option lora[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0.1"}};
    same_run(llama, "llama", "lora", lora, 2, "adapter_model.safetensors", true);
    same_run(llama, "llama", "dora", lora, 2, "adapter_model.safetensors", true);
    const finch_option prefix[] = {{"num-virtual-tokens", "3"}};
    same_run(llama, "llama", "prefix", prefix, 1, "adapter_model.safetensors", false);
    dpo = true; /* DPO's backward with per-row gradient scales */
    same_run(llama, "dpo", "lora", lora, 2, "adapter_model.safetensors", true);
    same_run(llama, "dpo", "full", NULL, 0, "model.safetensors", true);
    dpo = false;
}

static int64_t last_step, stop_at = -1;
static void track(const finch_train_progress *p, void *user) {
    (void)user;
    last_step = p->step;
}
static int stop_now(void *user) {
    (void)user;
    return last_step == stop_at;
}

/* A fused full fine-tuning run interrupted after step 2 and resumed, and one resumed from
 * the unfused run's checkpoint of step 2, end in the uninterrupted fused run's bytes. */
static void test_resume(void **state) {
    (void)state;
    finch_model *m;
    finch_err err;
    if (finch_model_load(FINCH_FIXTURES "/model/tiny_qwen2.gguf", &m, &err))
        fail_msg("%s", err.msg);
    char a[300], b[300], c[300], cmd[1000];
    snprintf(a, sizeof a, "%s/resume-a", dir);
    snprintf(b, sizeof b, "%s/resume-b", dir);
    snprintf(c, sizeof c, "%s/resume-c", dir);
    finch_train_options o = opts(a, "full", true);
    o.save_steps = 2;
    assert_int_equal(finch_train(m, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o.out_dir = b;
    stop_at = 2;
    assert_int_equal(finch_train(m, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    stop_at = -1;
    o.resume_dir = b;
    if (finch_train(m, &o, track, stop_now, NULL, &err)) fail_msg("%s", err.msg);
    const char *files[] = {"model.safetensors", "checkpoint-4/trainer_state.bin"};
    same_bits(a, b, files, 2);
    /* an unfused run's checkpoint of step 2, continued fused */
    finch_train_options u = opts(c, "full", false);
    u.save_steps = 2;
    u.max_steps = 4;
    stop_at = 2;
    assert_int_equal(finch_train(m, &u, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    stop_at = -1;
    o.out_dir = o.resume_dir = c;
    if (finch_train(m, &o, track, stop_now, NULL, &err)) fail_msg("%s", err.msg);
    same_bits(a, c, files, 2);
    snprintf(cmd, sizeof cmd, "test -f %s/checkpoint-2/trainer_state.bin", c);
    assert_int_equal(system(cmd), 0);
    finch_model_free(m);
}

/* Clipping, accumulation and several ranks: FINCH_E_USAGE saying what to change. */
static void test_refused(void **state) {
    (void)state;
    finch_model *m;
    finch_err err;
    if (finch_model_load(FINCH_FIXTURES "/model/tiny_llama.gguf", &m, &err))
        fail_msg("%s", err.msg);
    char out[300];
    snprintf(out, sizeof out, "%s/refused", dir);
    struct {
        const char *what, *says;
    } cases[] = {{"clip", "give --max-grad-norm 0 (clipping off; now 1)"},
                 {"accum", "give --grad-accum 1 (now 2)"},
                 {"ranks", "with 2 data-parallel ranks the gradients are summed across ranks"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        finch_train_options o = opts(out, "full", true);
        if (!strcmp(cases[i].what, "clip")) o.max_grad_norm = 1.0;
        if (!strcmp(cases[i].what, "accum")) o.grad_accum = 2;
        if (!strcmp(cases[i].what, "ranks")) o.simulate_ranks = 2;
        assert_int_equal(finch_train(m, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
        if (!strstr(err.msg, "--fused-optimizer") || !strstr(err.msg, cases[i].says))
            fail_msg("%s: %s", cases[i].what, err.msg);
        printf("  %s refused: %s\n", cases[i].what, err.msg);
    }
    assert_int_not_equal(access(out, F_OK), 0); /* refused before anything was written */
    finch_model_free(m);
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    if (write_colours(data, 1)) return -1;
    snprintf(pairs, sizeof pairs, "%s/pairs.jsonl", dir);
    FILE *f = fopen(pairs, "w");
    if (!f) return -1;
    for (int i = 0; i < 6; i++)
        fprintf(f, "{\"prompt\": \"%s\", \"chosen\": \"%s\", \"rejected\": \"%s\"}\n",
                colour_pairs[i][0], colour_pairs[i][1], colour_pairs[(i + 1) % 6][1]);
    if (fclose(f)) return -1;
    finch_threads_set(2);
    finch_log_set(on_log, NULL);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_bit_identical), cmocka_unit_test(test_methods_bit_identical),
        cmocka_unit_test(test_resume), cmocka_unit_test(test_refused)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
