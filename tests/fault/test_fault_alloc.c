/*
 * test_fault_alloc.c: allocation failure. The core hook (finch_fault_alloc_set) fails the
 * N-th allocation finch makes; for loading the tiny model (its GGUF, and a Hugging Face
 * folder: config.json, the shard index, safetensors headers), training it (LoRA, two steps,
 * a validation set, a checkpoint per step), evaluating it (loss, and generation) and
 * merging an adapter into it (and full fine-tuning, also with AdamW fused into backward,
 * the GGUF LoRA export and the run report, and finch quantize of a Hugging Face folder),
 * every N from 1 to the number of allocations the operation makes is tried: each must
 * return FINCH_E_NOMEM with an "out of memory" message, leave no temporary file, and (in
 * the sanitizer build, through LeakSanitizer at exit) leak nothing and crash nowhere.
 * jansson's own allocations are hooked too (through finch_json_begin's allocator), so every
 * JSON parse and every JSON file written is swept; PCRE2's are not.
 * Every N is tried: all the sweeps together take a few seconds (under ASan too).
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h" /* finch_fault_alloc_set, finch_fault_alloc_count */
#include "fault_util.h"

static char dir[200];
static char train_data[300], val_data[300], out_dir[300], adapter_dir[300], merged[300];
static finch_model *model;

typedef finch_status (*op_fn)(finch_err *err);

static finch_status op_load(finch_err *err) {
    finch_model *m;
    finch_status st = finch_model_load(TINY, &m, err);
    if (!st) finch_model_free(m);
    return st;
}

static finch_status op_load_hf(finch_err *err) {
    finch_model *m;
    finch_status st = finch_model_load(FINCH_FIXTURES "/hf/tiny_llama", &m, err);
    if (!st) finch_model_free(m);
    return st;
}

static finch_train_options train_opts(const char *out) {
    finch_train_options o = finch_train_defaults();
    o.data.path = train_data;
    o.data.max_seq_len = 16;
    o.val_path = val_data;
    o.out_dir = out;
    o.batch_size = 2;
    o.max_steps = 2;
    o.save_steps = 1;
    o.log_steps = 1;
    o.learning_rate = 0.05;
    return o;
}

static finch_status op_train(finch_err *err) {
    rm_tree(out_dir);
    finch_train_options o = train_opts(out_dir);
    o.save_total_limit = 1;
    finch_status st = finch_train_set_option(&o, "lora-dropout", "0.1", err);
    return st ? st : finch_train(model, &o, NULL, NULL, NULL, err);
}

/* full fine-tuning: writes the model (GGUF and a transformers folder), not an adapter */
static finch_status op_train_full(finch_err *err) {
    rm_tree(out_dir);
    finch_train_options o = train_opts(out_dir);
    o.method = "full";
    o.max_steps = 1;
    o.learning_rate = 1e-3;
    return finch_train(model, &o, NULL, NULL, NULL, err);
}

/* full fine-tuning with AdamW fused into backward: the per-block gradient arena */
static finch_status op_train_fused(finch_err *err) {
    rm_tree(out_dir);
    finch_train_options o = train_opts(out_dir);
    o.method = "full";
    o.max_steps = 1;
    o.learning_rate = 1e-3;
    o.max_grad_norm = 0;
    o.fused_optimizer = 1;
    return finch_train(model, &o, NULL, NULL, NULL, err);
}

static finch_status op_report(finch_err *err) {
    char page[400];
    snprintf(page, sizeof page, "%s/report.html", adapter_dir);
    return finch_report_write(adapter_dir, NULL, 0, page, err);
}

static finch_status op_export_gguf(finch_err *err) {
    finch_adapter *a;
    finch_status st = finch_adapter_load(model, adapter_dir, &a, err);
    if (st) return st;
    char path[400];
    snprintf(path, sizeof path, "%s/lora.gguf", adapter_dir);
    st = finch_adapter_export_gguf(model, a, path, err);
    finch_adapter_free(a);
    return st;
}

static finch_status op_eval_loss(finch_err *err) {
    finch_data_spec spec = {.path = val_data};
    finch_loss_report rep;
    return finch_eval_loss(model, &spec, FINCH_NUMERICS_EXACT, NULL, NULL, &rep, err);
}

static finch_status op_eval_generate(finch_err *err) {
    finch_data_spec spec = {.path = val_data, .max_examples = 2};
    finch_gen_options g = finch_gen_defaults();
    g.max_tokens = 3;
    finch_gen_results r;
    finch_status st = finch_eval_generate(model, &spec, &g, NULL, NULL, &r, err);
    if (!st) finch_gen_results_release(&r);
    return st;
}

static finch_status op_merge(finch_err *err) {
    finch_adapter *a;
    finch_status st = finch_adapter_load(model, adapter_dir, &a, err);
    if (st) return st;
    st = finch_merge(model, &a, NULL, 1, "q8_0", merged, err);
    finch_adapter_free(a);
    return st;
}

/* finch quantize from a Hugging Face folder: the model loaded, its GGUF metadata and
 * tokenizer written (model/gguf_out.c, tokenizer/gguf_kv.c), the tensors streamed */
static finch_status op_quantize_hf(finch_err *err) {
    char out[400];
    snprintf(out, sizeof out, "%s/folder-q8_0.gguf", dir);
    finch_quantize_options o = {.type = "q8_0", .force = 1};
    return finch_quantize(FINCH_FIXTURES "/model/tiny_gpt2", out, &o, err);
}

/* Runs op with the N-th allocation failing for every N up to its allocation count; fails the test on any N that succeeds, gives
 * another status, gives no message or leaves a temporary file. */
static void sweep(const char *name, op_fn op) {
    finch_err err = {0};
    finch_fault_alloc_set(0);
    if (op(&err)) fail_msg("%s without faults: %s", name, err.msg);
    const int64_t count = finch_fault_alloc_count();
    int64_t tried = 0, bad = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t n = 1; n <= count; n++) {
        err = (finch_err){0};
        finch_fault_alloc_set(n);
        finch_status st = op(&err);
        finch_fault_alloc_set(0);
        tried++;
        const char *left = stray_temp(dir);
        if (st != FINCH_E_NOMEM || !strstr(err.msg, "out of memory") || left) {
            if (bad++ < 20)
                print_error("%s: allocation %lld of %lld failing: status %s, message '%s'%s%s\n",
                            name, (long long)n, (long long)count, finch_status_str(st), err.msg,
                            left ? ", left " : "", left ? left : "");
            if (left) rm_tree(left);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("  %s: %lld allocations, each failed in turn, %.1f s\n", name, (long long)count,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    if (bad) fail_msg("%s: %lld of %lld failure points did not end cleanly", name, (long long)bad,
                      (long long)tried);
    /* the model is as it was: the operation still works */
    assert_int_equal(op(&err), FINCH_OK);
}

static void test_load(void **state) {
    (void)state;
    sweep("load", op_load);
    sweep("load hf folder", op_load_hf);
}

/* The tiny model's logits for a few tokens. */
static void logits(float *out) {
    const int32_t ids[] = {5, 17, 33, 42};
    finch_session *s;
    finch_err err;
    assert_int_equal(finch_session_new(model, 4, FINCH_NUMERICS_EXACT, &s, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(s, ids, 4, out, NULL, &err), FINCH_OK);
    finch_session_free(s);
}

static void test_train(void **state) {
    (void)state;
    float before[4 * 97], after[4 * 97];
    logits(before);
    sweep("train", op_train);
    sweep("train full", op_train_full);
    sweep("train full fused", op_train_fused);
    /* no failed run left a method attached or a weight changed */
    logits(after);
    assert_memory_equal(before, after, sizeof before);
}

static void test_eval(void **state) {
    (void)state;
    sweep("eval loss", op_eval_loss);
    sweep("eval generate", op_eval_generate);
}

static void test_merge_export_report(void **state) {
    (void)state;
    sweep("merge", op_merge);
    sweep("export gguf", op_export_gguf);
    sweep("report", op_report);
    sweep("quantize a folder", op_quantize_hf);
}

static int setup(void **state) {
    (void)state;
    if (scratch_dir(dir, sizeof dir, "finch_fault_alloc")) return -1;
    snprintf(train_data, sizeof train_data, "%s/train.jsonl", dir);
    snprintf(val_data, sizeof val_data, "%s/val.jsonl", dir);
    snprintf(out_dir, sizeof out_dir, "%s/run", dir);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", dir);
    snprintf(merged, sizeof merged, "%s/merged.gguf", dir);
    write_dataset(train_data, 6, 0);
    write_dataset(val_data, 3, 100);
    finch_threads_set(1); /* a sweep of thousands of tiny runs: no OpenMP pool to spin */
    finch_err err;
    if (finch_model_load(TINY, &model, &err)) return -1;
    finch_train_options o = train_opts(adapter_dir);
    o.val_path = NULL;
    return finch_train(model, &o, NULL, NULL, NULL, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    rm_tree(dir);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_train),
        cmocka_unit_test(test_eval),
        cmocka_unit_test(test_merge_export_report),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
