/*
 * test_checkpointing.c: gradient checkpointing (block inputs kept, each block recomputed
 * in backward) gives the run without it bit for bit: for every kind of site (LoRA with
 * dropout, DoRA, (IA)^3, prefix tuning's attention prefix, a bottleneck adapter's block
 * modules, full fine-tuning's weights, norms and embeddings), 4 steps on the tiny model
 * write the same metrics and the same adapter or model bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finch.h"
#include "test_util.h" /* same_runs, write_colours */

static char dir[] = "/tmp/finch_ckpt_XXXXXX";
static char data[300];
static finch_model *model;

static void same_run(const char *method, const finch_option *opt, int n_opt, const char *file) {
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/%s-plain", dir, method);
    snprintf(b, sizeof b, "%s/%s-ckpt", dir, method);
    for (int ck = 0; ck < 2; ck++) {
        finch_train_options o = finch_train_defaults();
        o.data.path = data;
        o.data.max_seq_len = 32;
        o.out_dir = ck ? b : a;
        o.method = method;
        o.learning_rate = 1e-2;
        o.batch_size = 2;
        o.max_steps = 4;
        o.log_steps = 1;
        o.gradient_checkpointing = ck;
        finch_err err;
        for (int i = 0; i < n_opt; i++)
            if (finch_train_set_option(&o, opt[i].name, opt[i].value, &err)) fail_msg("%s", err.msg);
        if (finch_train(model, &o, NULL, NULL, NULL, &err)) fail_msg("%s: %s", method, err.msg);
    }
    const char *files[] = {file};
    same_runs(a, b, files, 1); /* metrics.jsonl (but for the speed) and the result */
    printf("  %s: the same metrics and %s\n", method, file);
}

static void test_bit_identical(void **state) {
    (void)state;
    const finch_option lora[] = {{"target-modules", "all-linear"}, {"lora-dropout", "0.1"}};
    same_run("lora", lora, 2, "adapter_model.safetensors");
    same_run("dora", lora, 2, "adapter_model.safetensors");
    same_run("ia3", NULL, 0, "adapter_model.safetensors");
    const finch_option prefix[] = {{"num-virtual-tokens", "3"}};
    same_run("prefix", prefix, 1, "adapter_model.safetensors");
    const finch_option adapter[] = {{"reduction-factor", "8"}};
    same_run("adapter", adapter, 1, "adapter.safetensors");
    same_run("full", NULL, 0, "model.safetensors");
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    if (write_colours(data, 1)) return -1;
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_bit_identical)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
