/*
 * test_train_loop.c: the training run on the tiny model: learning happens on a small
 * memorisable task; a run interrupted and resumed from its checkpoint continues with
 * bit-identical losses (metrics.jsonl lines equal to the uninterrupted run's), packed or
 * not; a loss that goes non-finite stops the run keeping the last checkpoint; a corrupt
 * checkpoint is refused and left as it was; bad options are refused with their flag name;
 * DPO resumes exactly too (LoRA with dropout, prefix tuning), learns, and refuses its bad
 * input.
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
#include "test_util.h" /* read_file, read_text_in, same_runs, write_colours */

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

/* Sets a method option as --name value would. */
static void option(finch_train_options *o, const char *name, const char *value) {
    finch_err err;
    if (finch_train_set_option(o, name, value, &err)) fail_msg("%s", err.msg);
}

static char dir[] = "/tmp/finch_train_XXXXXX";
static char data[300], pref[300];
static finch_model *model;

static finch_train_options opts(const char *out) {
    finch_train_options o = finch_train_defaults();
    o.data.path = data;
    o.data.max_seq_len = 32;
    o.out_dir = out;
    option(&o, "target-modules", "all-linear");
    option(&o, "lora-r", "4");
    option(&o, "lora-alpha", "8");
    option(&o, "lora-dropout", "0.1"); /* dropout on: resume must regenerate its masks */
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

/* A run interrupted after step 4 and resumed equals the uninterrupted one. */
static void resume_exact(bool packing) {
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/a%d", dir, packing);
    snprintf(b, sizeof b, "%s/b%d", dir, packing);
    finch_err err;
    finch_train_options o = opts(a);
    o.packing = packing;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    /* interrupted after step 4 (a checkpoint is written), then resumed */
    o = opts(b);
    o.packing = packing;
    stop_at = 4;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
    assert_non_null(strstr(err.msg, "--resume"));
    o.resume_dir = b;
    stop_at = -1;
    assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_OK);
    /* the adapters are the same bytes */
    const char *files[] = {"adapter_model.safetensors"};
    same_runs(a, b, files, 1);
}

static void test_resume_exact(void **state) {
    (void)state;
    resume_exact(false);
}

/* A run killed after it logged steps past its last checkpoint (simulated: the run ends,
 * then its checkpoints after step 3 are removed and a torn line is appended, as a kill
 * inside a write leaves one) resumes from step 3 with metrics.jsonl cut back to step 3: no
 * step is logged twice, and log and adapter equal the uninterrupted run's. */
static void test_resume_metrics_not_doubled(void **state) {
    (void)state;
    char a[300], b[300], cmd[1200];
    snprintf(a, sizeof a, "%s/metrics_a", dir);
    snprintf(b, sizeof b, "%s/metrics_b", dir);
    finch_err err;
    finch_train_options o = opts(a);
    o.save_steps = 3;
    o.eval_steps = 2;
    o.val_path = data;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o.out_dir = b;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    snprintf(cmd, sizeof cmd, "rm -r %s/checkpoint-6 %s/checkpoint-8 && printf '{\"step\": 9, \"lo' >> %s/metrics.jsonl", b, b, b);
    assert_int_equal(system(cmd), 0);
    o.resume_dir = b;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *m = read_text_in(b, "metrics.jsonl");
    int lines = 0;
    for (char *p = m; (p = strstr(p, "{\"step\": 4, \"loss\"")); p++) lines++;
    assert_int_equal(lines, 1);
    assert_null(strstr(m, "\"step\": 9"));
    free(m);
    const char *files[] = {"adapter_model.safetensors"};
    same_runs(a, b, files, 1);
    /* a fresh run (no --resume) into the same directory starts a new log */
    o.resume_dir = NULL;
    o.max_steps = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    m = read_text_in(b, "metrics.jsonl");
    assert_null(strstr(m, "\"step\": 3,"));
    free(m);
}

/* --save-total-limit 2 with a checkpoint every step keeps the newest two, and the run
 * resumes from the latest. */
static void test_save_total_limit(void **state) {
    (void)state;
    char out[300], p[400];
    snprintf(out, sizeof out, "%s/limit", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.max_steps = 4;
    o.save_steps = 1;
    o.save_total_limit = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    for (int s = 1; s <= 4; s++) {
        snprintf(p, sizeof p, "%s/checkpoint-%d", out, s);
        assert_int_equal(access(p, F_OK) == 0, s >= 3);
    }
    o.max_steps = 5;
    o.resume_dir = out;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    snprintf(p, sizeof p, "%s/checkpoint-3", out);
    assert_int_not_equal(access(p, F_OK), 0); /* pruned again: 4 and 5 remain */
    snprintf(p, sizeof p, "%s/checkpoint-5", out);
    assert_int_equal(access(p, F_OK), 0);
    o = opts(out);
    o.save_total_limit = -1;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
}

/* Every other method resumes as exactly: metrics, the final trainer state and the result
 * files are the same bytes as an uninterrupted run's. */
static void test_resume_exact_methods(void **state) {
    (void)state;
    static const struct {
        const char *method, *opt, *value, *result;
    } ms[] = {{"dora", "lora-dropout", "0.1", "adapter_model.safetensors"},
              {"ia3", NULL, NULL, "adapter_model.safetensors"},
              {"bitfit", NULL, NULL, "adapter_model.safetensors"},
              {"freeze", "layers", "1", "model.gguf"},
              {"full", NULL, NULL, "model.safetensors"},
              {"prompt", "num-virtual-tokens", "4", "adapter_model.safetensors"},
              {"prefix", "num-virtual-tokens", "4", "adapter_model.safetensors"},
              {"prefix", "prefix-projection", "true", "adapter_model.safetensors"},
              {"adapter", "adapter-type", "houlsby", "adapter.safetensors"},
              {"adapter", "adapter-type", "parallel", "adapter.safetensors"}};
    for (size_t i = 0; i < sizeof ms / sizeof *ms; i++) {
        char a[300], b[300];
        snprintf(a, sizeof a, "%s/m%zu_a", dir, i);
        snprintf(b, sizeof b, "%s/m%zu_b", dir, i);
        finch_err err;
        finch_train_options o = finch_train_defaults();
        o.data.path = data;
        o.data.max_seq_len = 32;
        o.method = ms[i].method;
        if (ms[i].opt) option(&o, ms[i].opt, ms[i].value);
        o.learning_rate = 1e-2;
        o.batch_size = 2;
        o.max_steps = 6;
        o.log_steps = 1;
        o.out_dir = a;
        if (finch_train(model, &o, NULL, NULL, NULL, &err)) fail_msg("%s: %s", ms[i].method, err.msg);
        o.out_dir = b;
        stop_at = 3;
        assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
        o.resume_dir = b;
        stop_at = -1;
        if (finch_train(model, &o, track, stop_now, NULL, &err)) fail_msg("%s: %s", ms[i].method, err.msg);
        const char *files[] = {"checkpoint-6/trainer_state.bin", ms[i].result};
        same_runs(a, b, files, 2);
        printf("  %s: resumed at step 3, same bytes at step 6\n", ms[i].method);
    }
}

/* With packing a step takes several examples a row and crosses epochs within a batch:
 * the data position (example and epoch) must still round-trip through the checkpoint. */
static void test_resume_exact_packed(void **state) {
    (void)state;
    resume_exact(true);
    /* and it did pack: 8 steps of 2 rows took more than the 16 examples (1.33 epochs of
     * 12) they hold unpacked */
    char a[300];
    snprintf(a, sizeof a, "%s/a1", dir);
    char *m = read_text_in(a, "metrics.jsonl"), *last = strstr(m, "\"step\": 8,");
    assert_non_null(last);
    double epoch = atof(strstr(last, "\"epoch\": ") + 9);
    printf("  packed: epoch %.3f after 8 steps of 2 rows\n", epoch);
    assert_true(epoch > 1.6);
    free(m);
}

/* Packing learns the task as well: the validation loss falls as unpacked. */
static void test_learns_packed(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/learn_packed", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.max_steps = 20;
    o.log_steps = 20;
    option(&o, "lora-dropout", "0");
    o.packing = 1;
    o.val_path = data;
    finch_data_spec spec = {.path = data, .max_seq_len = 32};
    finch_loss_report before;
    assert_int_equal(finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &before, &err), FINCH_OK);
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *m = read_text_in(out, "metrics.jsonl"), *v = strstr(m, "\"val_loss\": ");
    assert_non_null(v);
    double val = atof(v + 12);
    printf("  packed: validation loss %.4f before, %.4f after 20 steps\n", before.loss, val);
    assert_true(val < 0.5 * before.loss);
    free(m);
}

static void test_learns(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/learn", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.max_steps = 40;
    o.log_steps = 40;
    option(&o, "lora-dropout", "0");
    o.val_path = data;
    finch_data_spec spec = {.path = data, .max_seq_len = 32};
    finch_loss_report before;
    assert_int_equal(finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &before, &err), FINCH_OK);
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *m = read_text_in(out, "metrics.jsonl"), *v = strstr(m, "\"val_loss\": ");
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
    option(&o, "lora-r", "8");
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "another model or method configuration"));
    free(orig);
}

/* On the real model (SmolLM2-135M, the default), a short packed run lowers the loss. */
static void test_packed_real_model(void **state) {
    (void)state;
    char path[4096], out[300];
    finch_err err;
    const char *env = getenv("FINCH_MODEL");
    if (env) snprintf(path, sizeof path, "%s", env);
    else assert_int_equal(finch_default_model_path(path, sizeof path, &err), FINCH_OK);
    if (access(path, R_OK) != 0) {
        if (getenv("FINCH_ALLOW_NO_MODEL")) skip();
        fail_msg("the default model is missing at %s: run scripts/setup.sh", path);
    }
    finch_model *real;
    assert_int_equal(finch_model_load(path, &real, &err), FINCH_OK);
    snprintf(out, sizeof out, "%s/real_packed", dir);
    finch_train_options o = opts(out);
    o.data.max_seq_len = 64; /* about 6 examples a row */
    option(&o, "target-modules", "q,v");
    option(&o, "lora-r", "8");
    option(&o, "lora-alpha", "16");
    option(&o, "lora-dropout", "0");
    o.learning_rate = 2e-3;
    o.batch_size = 1;
    o.max_steps = 3;
    o.warmup_steps = 0;
    o.log_steps = 3;
    o.packing = 1;
    o.val_path = data;
    finch_data_spec spec = {.path = data, .max_seq_len = 64};
    finch_loss_report before;
    assert_int_equal(finch_eval_loss(real, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &before, &err), FINCH_OK);
    assert_int_equal(finch_train(real, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *m = read_text_in(out, "metrics.jsonl"), *v = strstr(m, "\"val_loss\": ");
    assert_non_null(v);
    double val = atof(v + 12);
    printf("  SmolLM2, packed: validation loss %.4f before, %.4f after 3 steps\n", before.loss, val);
    assert_true(val < 0.8 * before.loss);
    free(m);
    finch_model_free(real);
}

/* A run whose loss goes non-finite stops at that step with a clear error, saving nothing:
 * the last checkpoint stays byte-identical to that of a run that ended cleanly there, no
 * final adapter appears, and the checkpoint resumes. The blow-up is real: a LoRA scale of
 * 1e20 (alpha 1e20, r 1) is harmless while B is zero (steps 1 and 2 start from B = 0:
 * step 1 has learning rate 0 in the warmup), then the first update of B (step 2) drives
 * step 3's activations past the f32 range. */
static void test_nonfinite_stops(void **state) {
    (void)state;
    char ok[300], bad[300], a[500], b[500];
    snprintf(ok, sizeof ok, "%s/finite", dir);
    snprintf(bad, sizeof bad, "%s/nonfinite", dir);
    finch_err err;
    finch_train_options o = opts(ok);
    option(&o, "lora-r", "1");
    option(&o, "lora-alpha", "1e20");
    option(&o, "lora-dropout", "0");
    o.lr_scheduler = "constant";
    o.warmup_steps = 2;
    o.save_steps = 1;
    o.max_steps = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    o.out_dir = bad;
    o.max_steps = 6;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_RANGE);
    printf("  %s\n", err.msg);
    assert_non_null(strstr(err.msg, "step 3: the loss is"));
    assert_non_null(strstr(err.msg, "not finite"));
    snprintf(a, sizeof a, "the last good state is %s/checkpoint-2 ", bad);
    assert_non_null(strstr(err.msg, a));
    /* checkpoint-2 is the clean run's, byte for byte; nothing of step 3 was written */
    const char *files[] = {"adapter_model.safetensors", "adapter_config.json", "trainer_state.bin"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(a, sizeof a, "%s/checkpoint-2/%s", ok, files[i]);
        snprintf(b, sizeof b, "%s/checkpoint-2/%s", bad, files[i]);
        if (!same_bytes(a, b)) fail_msg("%s differs from %s", b, a);
    }
    snprintf(b, sizeof b, "%s/checkpoint-3", bad);
    assert_int_not_equal(access(b, F_OK), 0);
    snprintf(b, sizeof b, "%s/adapter_model.safetensors", bad);
    assert_int_not_equal(access(b, F_OK), 0);
    char *m = read_text_in(bad, "metrics.jsonl");
    assert_non_null(strstr(m, "\"step\": 2,"));
    assert_null(strstr(m, "\"step\": 3,"));
    free(m);
    /* it resumes: with a sane alpha the run continues from step 2 to its end */
    option(&o, "lora-alpha", "8");
    o.resume_dir = bad;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    snprintf(b, sizeof b, "%s/checkpoint-6", bad);
    assert_int_equal(access(b, F_OK), 0);
}

/* DPO options on the pairs of pref: beta 0.1, 2 pairs a step, validation on them. */
static finch_train_options dpo_opts(const char *out, const char *method) {
    finch_train_options o = finch_train_defaults();
    o.data.path = pref;
    o.val_path = pref;
    o.objective = "dpo";
    o.method = method;
    o.learning_rate = 1e-2;
    o.batch_size = 2;
    o.log_steps = 1;
    o.out_dir = out;
    return o;
}

/* DPO: a run interrupted and resumed (the reference log-probs computed again) equals the
 * uninterrupted one, metrics (rewards included) and result; prefix tuning's virtual tokens
 * and freezing's attached weights are kept out of the reference there too. */
static void test_dpo_resume_exact(void **state) {
    (void)state;
    static const struct {
        const char *method, *opt, *value, *result;
    } ms[] = {{"lora", "lora-dropout", "0.1", "adapter_model.safetensors"},
              {"prefix", "num-virtual-tokens", "3", "adapter_model.safetensors"},
              {"freeze", "layers", "1", "model.gguf"}};
    for (size_t i = 0; i < sizeof ms / sizeof *ms; i++) {
        char a[300], b[300];
        snprintf(a, sizeof a, "%s/dpo%zu_a", dir, i);
        snprintf(b, sizeof b, "%s/dpo%zu_b", dir, i);
        finch_err err;
        finch_train_options o = dpo_opts(a, ms[i].method);
        option(&o, ms[i].opt, ms[i].value);
        o.max_steps = 8;
        o.eval_steps = 3;
        if (finch_train(model, &o, NULL, NULL, NULL, &err)) fail_msg("%s: %s", ms[i].method, err.msg);
        o.out_dir = b;
        stop_at = 4;
        assert_int_equal(finch_train(model, &o, track, stop_now, NULL, &err), FINCH_E_INTERRUPTED);
        o.resume_dir = b;
        stop_at = -1;
        if (finch_train(model, &o, track, stop_now, NULL, &err)) fail_msg("%s: %s", ms[i].method, err.msg);
        const char *files[] = {"checkpoint-8/trainer_state.bin", ms[i].result};
        same_runs(a, b, files, 2);
        char *m = read_text_in(a, "metrics.jsonl");
        assert_non_null(strstr(m, "\"rewards/margins\": "));
        assert_non_null(strstr(m, "\"val_rewards/accuracies\": "));
        free(m);
        printf("  dpo %s: resumed at step 4, same bytes at step 8\n", ms[i].method);
    }
}

/* DPO learns the pairs: held-out (here: the same pairs, without dropout) reward accuracy 1,
 * the loss far under log 2, where it starts. */
static void test_dpo_learns(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/dpo_learn", dir);
    finch_err err;
    finch_train_options o = dpo_opts(out, "lora");
    option(&o, "target-modules", "all-linear");
    option(&o, "lora-r", "4");
    option(&o, "lora-alpha", "8");
    o.max_steps = 30;
    o.eval_steps = 30;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    char *m = read_text_in(out, "metrics.jsonl"), *first = strstr(m, "{\"step\": 1, \"loss\": "),
         *last = strstr(m, "{\"step\": 30, \"val_loss\": ");
    assert_non_null(first);
    assert_non_null(last);
    double loss1 = atof(first + 20), val = atof(last + 25),
           acc = atof(strstr(last, "\"val_rewards/accuracies\": ") + 26);
    printf("  dpo: loss %.4f at step 1 (log 2 = %.4f); after 30 steps validation loss %.4f, "
           "reward accuracy %.2f\n",
           loss1, log(2.0), val, acc);
    assert_true(fabs(loss1 - log(2.0)) < 1e-6); /* LoRA starts as the reference */
    assert_true(val < 0.6 * log(2.0) && acc == 1.0);
    free(m);
}

/* DPO's own bad input: another objective, preference data without DPO and the reverse,
 * packing, beta. */
static void test_dpo_bad_options(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/dpo_bad", dir);
    finch_err err;
    finch_train_options o = opts(out);
    o.objective = "ppo";
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--objective ppo: use sft or dpo"));
    o = opts(out);
    o.objective = "dpo";
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--objective dpo needs preference lines"));
    o = opts(out);
    o.data.path = pref;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "train with --objective dpo"));
    o.objective = "dpo";
    o.val_path = data;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "data.jsonl: --objective dpo needs preference lines"));
    o.val_path = NULL;
    o.packing = 1;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--packing"));
    o.packing = 0;
    o.beta = 0;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--beta 0"));
    /* --val-fraction holds out whole pairs */
    o.beta = 0.1;
    o.val_fraction = 0.25;
    o.max_steps = 2;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
}

static void test_bad_options(void **state) {
    (void)state;
    char out[300];
    snprintf(out, sizeof out, "%s/bad", dir);
    finch_err err;
    finch_train_options o = opts(out);
    option(&o, "lora-r", "0");
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--lora-r 0"));
    o = opts(out);
    o.learning_rate = 0;
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--learning-rate"));
    o = opts(out);
    option(&o, "target-modules", "q,attention");
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
    if (write_colours(data, 2)) return -1;
    /* the same colours as preference pairs: the right noun against another one */
    const char *const (*pairs)[2] = colour_pairs;
    snprintf(pref, sizeof pref, "%s/pref.jsonl", dir);
    FILE *f = fopen(pref, "w");
    for (int r = 0; r < 2; r++)
        for (size_t i = 0; i < 6; i++)
            fprintf(f, "{\"prompt\": \"color %s:\", \"chosen\": \"%s\", \"rejected\": \"%s\"}\n",
                    pairs[i][0], pairs[i][1], pairs[(i + 1 + r) % 6][1]);
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_resume_exact), cmocka_unit_test(test_resume_exact_methods),
                                       cmocka_unit_test(test_save_total_limit),
                                       cmocka_unit_test(test_resume_metrics_not_doubled),
                                       cmocka_unit_test(test_learns),
                                       cmocka_unit_test(test_resume_exact_packed),
                                       cmocka_unit_test(test_learns_packed),
                                       cmocka_unit_test(test_nonfinite_stops),
                                       cmocka_unit_test(test_packed_real_model),
                                       cmocka_unit_test(test_corrupt_checkpoint),
                                       cmocka_unit_test(test_dpo_resume_exact),
                                       cmocka_unit_test(test_dpo_learns),
                                       cmocka_unit_test(test_dpo_bad_options),
                                       cmocka_unit_test(test_bad_options)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
