/*
 * test_device.c: training with the model on a device backend (model/device.c, the
 * parameters' device copies of peft/params.c, the passes' rows copied in by
 * model/train.c). The device here is the guarded host device (guarded_device.h): the
 * CPU's kernels, only the ops the CUDA backend has, and memory the host cannot touch. So a
 * run there computes what a host run with the same ops (its twin) computes, bit for bit,
 * and any host access to device memory the wiring left in ends the test. With a CUDA device the
 * same runs go on it too, within a stated tolerance of the CPU's.
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS, sigaction */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "finch.h"
#include "guarded_device.h"
#include "model/model.h"
#include "test_util.h" /* same_runs, write_colours, same_bytes */

static char dir[] = "/tmp/finch_device_XXXXXX";
static char data[300], val[300];

/* A run of method (LoRA on every linear with dropout, or another with its defaults) of 4
 * steps of 2 micro-batches, evaluations and checkpoints every 2 steps, on model m into out
 * (resumed from resume when not NULL); packed rows with gradient checkpointing when
 * packed. */
static void method_run(finch_model *m, const char *method, const char *out, const char *resume,
                       bool packed) {
    finch_train_options o = finch_train_defaults();
    o.data.path = data;
    o.data.max_seq_len = 32;
    o.val_path = val;
    o.out_dir = out;
    o.resume_dir = resume;
    o.learning_rate = 1e-2;
    o.batch_size = 2;
    o.grad_accum = 2;
    o.max_steps = 4;
    o.log_steps = 1;
    o.eval_steps = 2;
    o.save_steps = 2;
    o.packing = packed;
    o.gradient_checkpointing = packed;
    o.method = method;
    finch_err err;
    const bool lora = !strcmp(method, "lora");
    if ((lora && (finch_train_set_option(&o, "target-modules", "all-linear", &err) ||
                  finch_train_set_option(&o, "lora-dropout", "0.1", &err))) ||
        finch_train(m, &o, NULL, NULL, NULL, &err))
        fail_msg("%s: %s", out, err.msg);
}

static finch_model *load(const char *name) {
    char path[300];
    snprintf(path, sizeof path, "%s/model/%s", FINCH_FIXTURES, name);
    finch_model *m;
    finch_err err;
    if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    return m;
}

/* The guard works: host code writing device memory dies, and says why. */
static void test_guard_catches_the_host(void **state) {
    (void)state;
    const finch_backend *be = guarded_device();
    assert_non_null(be);
    pid_t pid = fork();
    if (pid == 0) {
        float *p = be->alloc(64, "a test buffer", NULL);
        p[3] = 1.0f; /* the host writing device memory */
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 3);
    /* and through the backend it is fine */
    float one = 1.0f, back = 0.0f;
    float *p = be->alloc(64, "a test buffer", NULL);
    assert_int_equal(be->copy_in(p + 3, &one, sizeof one, NULL), FINCH_OK);
    assert_int_equal(be->copy_out(&back, p + 3, sizeof back, NULL), FINCH_OK);
    assert_true(back == 1.0f);
    be->free(p);
}

/* The logits of a 12-token prompt at once, then of 3 tokens one at a time from the cache,
 * with the adapter in dir attached at weight 0.5: (12 + 3) x V into out. */
static void session_logits(finch_model *m, const char *dir_, float *out) {
    finch_adapter *ad;
    finch_kv_session s;
    finch_err err;
    if (finch_adapter_load(m, dir_, &ad, &err) || finch_adapter_attach(m, ad, 0.5f, &err) ||
        finch_kv_session_init(&s, m, 64, 16, FINCH_NUMERICS_EXACT, &err))
        fail_msg("%s", err.msg);
    const int V = m->cfg.n_vocab;
    int32_t ids[15];
    for (int i = 0; i < 15; i++) ids[i] = (int32_t)((i * 37 + 5) % V);
    finch_model_forward(m, &s, ids, 12, true);
    memcpy(out, s.logits, (size_t)12 * V * sizeof(float));
    for (int i = 12; i < 15; i++) {
        finch_model_forward(m, &s, ids + i, 1, false);
        memcpy(out + (size_t)i * V, s.logits, (size_t)V * sizeof(float));
    }
    assert_int_equal(finch_kv_session_status(&s, &err), FINCH_OK);
    finch_kv_session_release(&s);
    finch_adapter_detach(m, ad);
    finch_adapter_free(ad);
}

/* LoRA on every family the fixtures have (LLaMA, tied head, Gemma 3's norms and sliding
 * windows, GPT-2's LayerNorm, learned positions, biases and fused qkv), and (IA)^3 (GPT-2's
 * vectors are views of one c_attn vector): on the device the same
 * metrics (losses, gradient norms, validation losses) and adapter bytes, checkpoint's
 * too, as the host run with the same ops; a run resumed on the device from the host run's
 * checkpoint ends with the host run's adapter; a session with that adapter attached (at
 * weight 0.5) gives the same logits on both, for a prompt and for tokens from the cache. */
static void test_lora_same_on_device(void **state) {
    (void)state;
    const struct {
        const char *model, *method;
        bool packed; /* the segments copied in; blocks recomputed */
    } runs[] = {{"tiny_llama.gguf", "lora", false},  {"tiny_llama_tied.gguf", "lora", false},
                {"tiny_gemma3.gguf", "lora", false}, {"tiny_gpt2.gguf", "lora", false},
                {"tiny_llama.gguf", "lora", true},   {"tiny_llama.gguf", "ia3", false},
                {"tiny_gpt2.gguf", "ia3", false}};
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        const bool packed = runs[i].packed;
        const char *method = runs[i].method;
        char a[400], b[400], c[400], ck[500];
        snprintf(a, sizeof a, "%s/%zu-cpu", dir, i);
        snprintf(b, sizeof b, "%s/%zu-dev", dir, i);
        snprintf(c, sizeof c, "%s/%zu-resumed", dir, i);
        finch_model *m = load(runs[i].model);
        const finch_backend *cpu = m->be;
        m->be = guarded_twin(); /* the CPU's kernels, but those the device lacks */
        method_run(m, method, a, NULL, packed);
        const size_t V = (size_t)m->cfg.n_vocab;
        float *la = malloc(15 * V * sizeof(float)), *lb = malloc(15 * V * sizeof(float));
        session_logits(m, a, la);
        m->be = cpu;
        finch_err err;
        if (finch_model_place(m, guarded_device(), &err)) fail_msg("%s", err.msg);
        assert_true(m->be->device);
        method_run(m, method, b, NULL, packed);
        snprintf(ck, sizeof ck, "%s/checkpoint-2", a);
        method_run(m, method, c, ck, packed);
        session_logits(m, a, lb); /* the host run's adapter, applied on the device */
        assert_memory_equal(la, lb, 15 * V * sizeof(float));
        free(la);
        free(lb);
        const char *files[] = {"adapter_model.safetensors",
                               "checkpoint-2/adapter_model.safetensors"};
        same_runs(a, b, files, 2);
        char pa[500], pc[500];
        snprintf(pa, sizeof pa, "%s/adapter_model.safetensors", a);
        snprintf(pc, sizeof pc, "%s/adapter_model.safetensors", c);
        assert_true(same_bytes(pa, pc));
        finch_model_unplace(m);
        assert_false(m->be->device);
        finch_model_free(m);
        printf("  %s %s%s: the device's run is the host's, resumed too, and so are its "
               "logits with the adapter\n",
               runs[i].model, method, packed ? " (packed, checkpointing)" : "");
    }
}

/* What does not run on a device says so: other methods, the fused optimizer, bf16
 * products (the backend has none), DPO, and llama.cpp or bf16 numerics. */
static void test_refusals(void **state) {
    (void)state;
    finch_model *m = load("tiny_llama.gguf");
    finch_err err;
    if (finch_model_place(m, guarded_device(), &err)) fail_msg("%s", err.msg);
    char out[400];
    snprintf(out, sizeof out, "%s/refused", dir);
    finch_train_options o = finch_train_defaults();
    o.data.path = data;
    o.out_dir = out;
    o.max_steps = 1;
    o.method = "dora";
    assert_int_equal(finch_train(m, &o, NULL, NULL, NULL, &err), FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "dora does not run on a guarded host device"));
    o.method = "prompt"; /* refused before its initialisation reads the embeddings */
    assert_int_equal(finch_train(m, &o, NULL, NULL, NULL, &err), FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "prompt does not run on a guarded host device"));
    o.method = "lora";
    o.fused_optimizer = 1;
    o.max_grad_norm = 0;
    assert_int_equal(finch_train(m, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--fused-optimizer: on a guarded host device"));
    o.fused_optimizer = 0;
    o.bf16 = 1;
    assert_int_equal(finch_train(m, &o, NULL, NULL, NULL, &err), FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "bf16"));
    o.bf16 = 0;
    o.objective = "dpo";
    assert_int_equal(finch_train(m, &o, NULL, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "--objective dpo does not run on a guarded host device"));
    finch_kv_session s;
    assert_int_equal(finch_kv_session_init(&s, m, 64, 1, FINCH_NUMERICS_LLAMACPP, &err),
                     FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "llama.cpp numerics do not run on a guarded host device"));
    assert_int_equal(finch_kv_session_init(&s, m, 64, 16, FINCH_NUMERICS_BF16, &err),
                     FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "bf16"));
    finch_model_free(m); /* placed: its device copies go too */
}

/* On a CUDA device, when there is one, for LoRA and (IA)^3: the same run within a
 * tolerance of the CPU's losses, and a session's logits with the CPU run's adapter within
 * 1e-4 of the largest (cuBLAS sums in its own order; the kernels' other differences are
 * within the per-op tolerances of test_cuda). Skipped without one. */
static void test_methods_on_cuda(void **state) {
    (void)state;
    finch_err err;
    const finch_backend *cuda = finch_cuda_backend(&err);
    if (!cuda) {
        printf("  skipped: %s\n", err.msg);
        skip();
    }
    const char *methods[] = {"lora", "ia3"};
    for (int k = 0; k < 2; k++) {
        char a[400], b[400];
        snprintf(a, sizeof a, "%s/cuda-cpu-%s", dir, methods[k]);
        snprintf(b, sizeof b, "%s/cuda-dev-%s", dir, methods[k]);
        finch_model *m = load("tiny_llama.gguf");
        const size_t V = (size_t)m->cfg.n_vocab;
        float *la = malloc(15 * V * sizeof(float)), *lb = malloc(15 * V * sizeof(float));
        method_run(m, methods[k], a, NULL, false);
        session_logits(m, a, la);
        if (finch_model_place(m, cuda, &err)) fail_msg("%s", err.msg);
        method_run(m, methods[k], b, NULL, false);
        session_logits(m, a, lb);
        finch_model_free(m);
        double worst = 0, top = 0;
        for (size_t i = 0; i < 15 * V; i++) {
            worst = fmax(worst, fabs((double)la[i] - lb[i]));
            top = fmax(top, fabs((double)la[i]));
        }
        printf("  %s: logits with the adapter at most %.3g apart (largest %.3g)\n", methods[k],
               worst, top);
        assert_true(worst <= 1e-4 * top);
        free(la);
        free(lb);
        char *ma = read_text_in(a, "metrics.jsonl"), *mb = read_text_in(b, "metrics.jsonl");
        int n = 0;
        for (char *p = ma, *q = mb; (p = strstr(p, "\"loss\": ")) && (q = strstr(q, "\"loss\": "));
             n++) {
            double x = strtod(p + 8, &p), y = strtod(q + 8, &q);
            printf("  %s: loss %.6f on the CPU, %.6f on %s\n", methods[k], x, y, cuda->name);
            assert_true(fabs(x - y) <= 1e-3 * fabs(x) + 1e-5);
        }
        assert_int_equal(n, 4);
        free(ma);
        free(mb);
    }
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    snprintf(val, sizeof val, "%s/val.jsonl", dir);
    if (write_colours(data, 2) || write_colours(val, 1)) return -1;
    finch_threads_set(2);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return getenv("FINCH_KEEP") ? 0 : system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guard_catches_the_host), cmocka_unit_test(test_lora_same_on_device),
        cmocka_unit_test(test_refusals), cmocka_unit_test(test_methods_on_cuda)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
