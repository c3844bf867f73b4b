/*
 * fuzz_checkpoint.c: libFuzzer target for a checkpoint's trainer_state.bin (the parameters,
 * AdamW's moments and the run's position that --resume reads: the data position, the
 * training files and their sampler state, the validation bests). The registry is a LoRA of
 * rank 1 on block 0's q projection of the tiny test model, so a valid file is small. A
 * state that loads must give finite parameters and a position that is not negative (its
 * files 0 to FINCH_MAX_TASKS, each with units and a weight > 0, bests not after the step);
 * a failure must name the file. The corpus holds a version 2 file (before mixtures) and a
 * version 3 one of two files.
 *
 * With FINCH_FUZZ_WRITE_SEED=DIR the target first writes a valid checkpoint of this
 * registry there (how tests/fuzz/corpus/checkpoint/ was made). Built as fuzz_checkpoint
 * with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as fuzz_checkpoint_replay,
 * which runs tests/fuzz/corpus/checkpoint/ as a test.
 */
#include <math.h>

#include "fuzz_files.h"
#include "peft/peft.h"
#include "train/train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static finch_model *model;
static finch_peft *peft;
static float *m, *v;

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_checkpoint: %s: %s\n", what, msg);
    abort();
}

static void init(void) {
    finch_err err;
    if (finch_model_load(FINCH_FIXTURES "/model/tiny_llama.gguf", &model, &err))
        die("model", err.msg);
    const finch_option opts[] = {{"r", "1"}, {"target-modules", "q"}, {"layers", "0"}};
    finch_rng rng;
    finch_rng_seed(&rng, 3);
    if (finch_peft_new(model, "lora", opts, 3, &rng, false, &peft, &err)) die("lora", err.msg);
    int64_t n = finch_peft_params(peft)->total;
    m = calloc((size_t)n, sizeof *m);
    v = calloc((size_t)n, sizeof *v);
    if (!m || !v) die("calloc", "out of memory");
    const char *seed_dir = getenv("FINCH_FUZZ_WRITE_SEED");
    if (seed_dir) {
        for (int64_t i = 0; i < n; i++) m[i] = 0.01f * (float)i, v[i] = 1e-4f * (float)i;
        finch_train_pos pos = {.step = 5,
                               .next = 3,
                               .epoch = 1,
                               .seed = 42,
                               .ranks = 1,
                               .n_tasks = 2,
                               .task_units = {6, 4},
                               .task_weight = {0.7, 0.3},
                               .drawn = {6, 4},
                               .seen = {9, 4},
                               .best_metric = 2.5,
                               .best_step = 4,
                               .best_ckpt_metric = 2.5,
                               .best_ckpt_step = 4,
                               .bad_evals = 1};
        if (finch_checkpoint_save(seed_dir, peft, model, m, v, &pos, &err)) die("seed", err.msg);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model) init();
    char path[256];
    fuzz_write("trainer_state.bin", data, size, path, sizeof path);
    finch_params *r = finch_peft_params(peft);
    finch_train_pos pos;
    finch_err err;
    if (finch_checkpoint_load(fuzz_dir(), r, m, v, &pos, &err) == FINCH_OK) {
        for (int64_t i = 0; i < r->total; i++)
            if (!isfinite(r->data[i])) abort();
        if (pos.step < 0 || pos.next < 0 || pos.epoch < 0 || pos.ranks < 1) abort();
        if (pos.n_tasks < 0 || pos.n_tasks > FINCH_MAX_TASKS) abort();
        for (int k = 0; k < pos.n_tasks; k++)
            if (pos.task_units[k] < 1 || !(pos.task_weight[k] > 0) || pos.drawn[k] < 0 ||
                pos.seen[k] < 0)
                abort();
        if (pos.best_step > pos.step || pos.best_ckpt_step > pos.step || pos.bad_evals < 0)
            abort();
    } else {
        fuzz_expect_named(err.msg, "trainer_state.bin");
    }
    fuzz_dir_empty();
    return 0;
}
