/*
 * test_fault_disk.c: a full disk. The core hook (finch_fault_write_set) makes the N-th
 * write fail with ENOSPC; for every writer finch has, every N from 1 to the number of
 * writes it makes is tried:
 *   - training (LoRA, and full fine-tuning, which writes the model): checkpoints
 *     (trainer_state.bin and the method's files), metrics.jsonl, the final adapter or model;
 *     the run stops with FINCH_E_IO naming a file of the run directory and "No space left
 *     on device", leaves no temporary file, and resuming from what is on disk (no faults)
 *     ends with an adapter (model) byte-identical to an uninterrupted run's: the last
 *     checkpoint is intact and loadable. Where no checkpoint was written, none is there.
 *   - merge (GGUF), the GGUF LoRA export, evaluation JSON, the run report: over an
 *     existing file, which must keep its previous contents, with the message naming it.
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h" /* finch_fault_write_set, finch_fault_write_count */
#include "fault_util.h"
#include "test_util.h" /* read_file */

static char dir[200];
static char train_data[300], val_data[300], run_dir[300], ref_lora[300], ref_full[300];
static finch_model *model;

static finch_train_options train_opts(const char *out, bool full) {
    finch_train_options o = finch_train_defaults();
    o.data.path = train_data;
    o.data.max_seq_len = 16;
    o.val_path = val_data;
    o.out_dir = out;
    o.batch_size = 2;
    o.max_steps = full ? 1 : 3;
    o.save_steps = 1;
    o.log_steps = 1;
    o.learning_rate = full ? 1e-3 : 0.05;
    if (full) o.method = "full";
    return o;
}

static bool has_checkpoint(const char *d) {
    DIR *dd = opendir(d);
    if (!dd) return false;
    struct dirent *e;
    bool found = false;
    while ((e = readdir(dd)))
        found |= !strncmp(e->d_name, "checkpoint-", 11);
    closedir(dd);
    return found;
}

static void assert_same_file(const char *a, const char *b) {
    size_t na, nb;
    uint8_t *pa = read_file(a, &na), *pb = read_file(b, &nb);
    if (na != nb || memcmp(pa, pb, na)) fail_msg("%s differs from %s", a, b);
    free(pa);
    free(pb);
}

/* Every write of a training run failing in turn (see the file comment). */
static void sweep_train(bool full, const char *ref, const char *const *results) {
    finch_err err = {0};
    finch_train_options o = train_opts(run_dir, full);
    rm_tree(run_dir);
    finch_fault_write_set(0);
    assert_int_equal(finch_train(model, &o, NULL, NULL, NULL, &err), FINCH_OK);
    const int64_t count = finch_fault_write_count();
    int resumed = 0;
    for (int64_t n = 1; n <= count; n++) {
        rm_tree(run_dir);
        err = (finch_err){0};
        finch_fault_write_set(n);
        finch_status st = finch_train(model, &o, NULL, NULL, NULL, &err);
        finch_fault_write_set(0);
        if (st != FINCH_E_IO || !strstr(err.msg, "No space left on device") ||
            !strstr(err.msg, run_dir))
            fail_msg("write %lld of %lld failing: status %s, message '%s'", (long long)n,
                     (long long)count, finch_status_str(st), err.msg);
        const char *left = stray_temp(run_dir);
        if (left) fail_msg("write %lld failing left %s (%s)", (long long)n, left, err.msg);
        if (!has_checkpoint(run_dir)) {
            char p[400];
            snprintf(p, sizeof p, "%s/%s", run_dir, results[0]);
            if (access(p, F_OK) == 0) fail_msg("write %lld: %s without a checkpoint", (long long)n, p);
            continue;
        }
        /* what is on disk resumes to the uninterrupted run's result */
        finch_train_options r = o;
        r.resume_dir = run_dir;
        if (finch_train(model, &r, NULL, NULL, NULL, &err))
            fail_msg("write %lld failing, then resuming: %s", (long long)n, err.msg);
        resumed++;
        for (int i = 0; results[i]; i++) {
            char a[400], b[400];
            snprintf(a, sizeof a, "%s/%s", run_dir, results[i]);
            snprintf(b, sizeof b, "%s/%s", ref, results[i]);
            assert_same_file(a, b);
        }
    }
    printf("  %s training: %lld writes, each failed in turn; %d runs resumed to the same %s\n",
           full ? "full" : "LoRA", (long long)count, resumed, results[0]);
    assert_true(resumed > 0 && resumed < count);
}

static void test_train_lora(void **state) {
    (void)state;
    const char *results[] = {"adapter_model.safetensors", "adapter_config.json", NULL};
    sweep_train(false, ref_lora, results);
}

static void test_train_full(void **state) {
    (void)state;
    const char *results[] = {"model.gguf", "model.safetensors", "config.json", NULL};
    sweep_train(true, ref_full, results);
}

/* Writers of one file: path holds "previous" before each try and must still after a
 * failure; the message names path. */
typedef finch_status (*write_fn)(const char *path, finch_err *err);

static void sweep_file(const char *name, write_fn fn, const char *path) {
    finch_err err = {0};
    finch_fault_write_set(0);
    if (fn(path, &err)) fail_msg("%s without faults: %s", name, err.msg);
    const int64_t count = finch_fault_write_count();
    for (int64_t n = 1; n <= count; n++) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs("previous", f);
        fclose(f);
        err = (finch_err){0};
        finch_fault_write_set(n);
        finch_status st = fn(path, &err);
        finch_fault_write_set(0);
        if (st != FINCH_E_IO || !strstr(err.msg, "No space left on device") ||
            !strstr(err.msg, path))
            fail_msg("%s: write %lld of %lld failing: status %s, message '%s'", name,
                     (long long)n, (long long)count, finch_status_str(st), err.msg);
        size_t len;
        uint8_t *got = read_file(path, &len);
        if (len != 8 || memcmp(got, "previous", 8))
            fail_msg("%s: write %lld failing changed %s", name, (long long)n, path);
        free(got);
        const char *left = stray_temp(dir);
        if (left) fail_msg("%s: write %lld failing left %s", name, (long long)n, left);
    }
    printf("  %s: %lld writes, each failed in turn\n", name, (long long)count);
    assert_true(count > 0);
}

static finch_status do_merge(const char *path, finch_err *err) {
    finch_adapter *a;
    finch_status st = finch_adapter_load(model, ref_lora, &a, err);
    if (st) return st;
    st = finch_merge(model, &a, NULL, 1, "q4_1", path, err);
    finch_adapter_free(a);
    return st;
}

static finch_status do_export(const char *path, finch_err *err) {
    finch_adapter *a;
    finch_status st = finch_adapter_load(model, ref_lora, &a, err);
    if (st) return st;
    st = finch_adapter_export_gguf(model, a, path, err);
    finch_adapter_free(a);
    return st;
}

static finch_status do_eval_json(const char *path, finch_err *err) {
    static const char text[] = "{\"task\": \"loss\", \"loss\": 1.5}\n";
    return finch_eval_write_file(path, text, sizeof text - 1, err);
}

static finch_status do_report(const char *path, finch_err *err) {
    return finch_report_write(ref_lora, NULL, 0, path, err);
}

static void test_single_files(void **state) {
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/merged.gguf", dir);
    sweep_file("merge", do_merge, path);
    snprintf(path, sizeof path, "%s/lora.gguf", dir);
    sweep_file("GGUF LoRA export", do_export, path);
    snprintf(path, sizeof path, "%s/eval.json", dir);
    sweep_file("eval JSON", do_eval_json, path);
    snprintf(path, sizeof path, "%s/report.html", dir);
    sweep_file("report", do_report, path);
}

static int setup(void **state) {
    (void)state;
    if (scratch_dir(dir, sizeof dir, "finch_fault_disk")) return -1;
    snprintf(train_data, sizeof train_data, "%s/train.jsonl", dir);
    snprintf(val_data, sizeof val_data, "%s/val.jsonl", dir);
    snprintf(run_dir, sizeof run_dir, "%s/run", dir);
    snprintf(ref_lora, sizeof ref_lora, "%s/ref_lora", dir);
    snprintf(ref_full, sizeof ref_full, "%s/ref_full", dir);
    write_dataset(train_data, 6, 0);
    write_dataset(val_data, 3, 100);
    finch_threads_set(1); /* a sweep of thousands of tiny runs: no OpenMP pool to spin */
    finch_err err;
    if (finch_model_load(TINY, &model, &err)) return -1;
    finch_train_options lo = train_opts(ref_lora, false), fo = train_opts(ref_full, true);
    return finch_train(model, &lo, NULL, NULL, NULL, &err) ||
                   finch_train(model, &fo, NULL, NULL, NULL, &err)
               ? -1
               : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    rm_tree(dir);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_lora),
        cmocka_unit_test(test_train_full),
        cmocka_unit_test(test_single_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
