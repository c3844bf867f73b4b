/*
 * test_data_parallel.c: finch train across ranks, through the finch command, on the tiny
 * model:
 *   - `mpirun -np 2 ... --batch-size 2` computes bit for bit what one process computes with
 *     --simulate-ranks 2 (the two halves of each micro-batch summed as the allreduce sums
 *     them): the same metrics.jsonl losses, gradient norms, validation losses and adapter
 *     bytes, with grad_accum 2, packing, dropout and evaluation on;
 *   - both follow one process with --batch-size 4 (the same objective: the loss of each
 *     micro-batch normalised by its whole token count) within a tolerance: one process sums
 *     each weight gradient over 4 rows at once, the ranks over 2 rows each and then the two
 *     sums, so the float roundings differ (about 1e-7 relative of a gradient); AdamW's
 *     first steps move each parameter by about lr * sign(g), so an element whose gradient
 *     is near zero can move by a whole lr either way. Here the 6 printed decimals agree;
 *     the test allows 1e-4. Dropout is off for this comparison: a rank draws its own masks;
 *   - --resume with the same rank count continues exactly (simulated or not); another
 *     count is refused;
 *     ranks given different flags are refused by name; bad --simulate-ranks values too;
 *   - --objective dpo likewise: each rank takes its pairs of the global micro-batch, the
 *     gradient is that of the mean over all of them and the rewards are summed over the
 *     ranks: mpirun -np 2 equals --simulate-ranks 2 bit for bit (losses, rewards,
 *     validation, adapter), and both follow one process with the doubled batch.
 * The mpirun cases skip when finch was built without MPI; the rest run everywhere.
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

#include "test_util.h" /* read_file, run_capture */

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"
#ifdef FINCH_MPIEXEC
#define MPIEXEC FINCH_MPIEXEC
#else
#define MPIEXEC "false" /* no mpirun: test_mpi_ranks skips before using it */
#endif

static char dir[] = "/tmp/finch_dp_XXXXXX";
static char out[1 << 16];

/* Runs `finch ARGS` (with mpirun -np np when np > 0); returns the exit code, the output
 * in out. Under mpirun LeakSanitizer is off (sanitizer build): Open MPI's plugins keep
 * memory from MPI_Init to exit and are unloaded before the leak check can name them; the
 * --simulate-ranks runs check the same data-parallel code of finch for leaks. */
static int finch(int np, const char *args) {
    char cmd[4096];
    if (np > 0)
        snprintf(cmd, sizeof cmd,
                 "FINCH_THREADS=1 ASAN_OPTIONS=detect_leaks=0 OMPI_ALLOW_RUN_AS_ROOT=1 "
                 "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 %s "
                 "--oversubscribe --bind-to none -np %d %s %s",
                 MPIEXEC, np, FINCH_CLI, args);
    else
        snprintf(cmd, sizeof cmd, "FINCH_THREADS=1 %s %s", FINCH_CLI, args);
    return run_capture(dir, cmd, NULL, out, sizeof out);
}

#define RUN_OK(np, ...)                                                                    \
    do {                                                                                   \
        char a_[2048];                                                                     \
        snprintf(a_, sizeof a_, __VA_ARGS__);                                              \
        if (finch(np, a_)) fail_msg("finch %s (np %d) failed:\n%s", a_, np, out);          \
    } while (0)

/* The values of "key": in OUT/metrics.jsonl, in order, into v (at most cap); returns how
 * many. */
static int metric(const char *run, const char *key, double *v, int cap) {
    char path[600], pat[64];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", dir, run);
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    size_t len;
    char *text = (char *)read_file(path, &len);
    text = realloc(text, len + 1);
    text[len] = 0;
    int n = 0;
    for (char *at = strstr(text, pat); at && n < cap; at = strstr(at + 1, pat))
        v[n++] = strtod(at + strlen(pat), NULL);
    free(text);
    return n;
}

/* The runs' metrics agree: exactly when tol is 0, else within tol (absolute). */
static void same_metrics(const char *a, const char *b, const char *key, double tol) {
    double va[64], vb[64];
    int na = metric(a, key, va, 64), nb = metric(b, key, vb, 64);
    assert_true(na > 0);
    assert_int_equal(na, nb);
    for (int i = 0; i < na; i++)
        if (tol == 0 ? va[i] != vb[i] : !(fabs(va[i] - vb[i]) <= tol))
            fail_msg("%s[%d]: %s has %.6f, %s has %.6f (tolerance %g)", key, i, a, va[i], b, vb[i],
                     tol);
}

static void same_file(const char *a, const char *b, const char *name) {
    char pa[600], pb[600];
    snprintf(pa, sizeof pa, "%s/%s/%s", dir, a, name);
    snprintf(pb, sizeof pb, "%s/%s/%s", dir, b, name);
    size_t na, nb;
    uint8_t *x = read_file(pa, &na), *y = read_file(pb, &nb);
    if (na != nb || memcmp(x, y, na)) fail_msg("%s and %s differ", pa, pb);
    free(x);
    free(y);
}

static char data[600], pref[600];
#define COMMON                                                                             \
    "-m " TINY " --data %s --max-steps 6 --log-steps 1 --grad-accum 2 --packing "          \
    "--max-seq-len 24 --val-fraction 0.2 --eval-steps 3 --save-steps 3 --lora-r 4 "       \
    "--learning-rate 1e-2"

/* One process, two simulated ranks against one process with the doubled batch. */
static void test_simulated_ranks(void **state) {
    (void)state;
    RUN_OK(0, "train " COMMON " --lora-dropout 0 --batch-size 4 --out %s/one", data, dir);
    RUN_OK(0, "train " COMMON " --lora-dropout 0 --batch-size 2 --simulate-ranks 2 --out %s/sim0",
           data, dir);
    assert_non_null(strstr(out, "global batch 8 on 2 ranks")); /* 2 x 2 x 2 */
    same_metrics("one", "sim0", "loss", 1e-4);
    same_metrics("one", "sim0", "val_loss", 1e-4);
    /* resumed from checkpoint-3 with 2 simulated ranks: the uninterrupted run's bits */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && cp -r sim0 sres && rm -r sres/checkpoint-6 sres/adapter_model.safetensors "
             "&& head -4 sim0/metrics.jsonl > sres/metrics.jsonl",
             dir);
    assert_int_equal(system(cmd), 0);
    RUN_OK(0, "train " COMMON " --lora-dropout 0 --batch-size 2 --simulate-ranks 2 --out %s/sres "
              "--resume %s/sres", data, dir, dir);
    same_metrics("sim0", "sres", "loss", 0);
    same_file("sim0", "sres", "adapter_model.safetensors");
    /* one process without --simulate-ranks is refused, naming the count */
    char args[2048];
    snprintf(args, sizeof args,
             "train " COMMON " --lora-dropout 0 --batch-size 2 --out %s/sres --resume %s/sres",
             data, dir, dir);
    assert_int_equal(finch(0, args), 2);
    assert_non_null(strstr(out, "made by 2 data-parallel ranks (global batch 8), this one has 1"));
    /* bad values */
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s/x --simulate-ranks 0", data,
             dir);
    assert_int_equal(finch(0, args), 2);
    assert_non_null(strstr(out, "--simulate-ranks 0"));
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s/x --simulate-ranks 5000",
             data, dir);
    assert_int_equal(finch(0, args), 2);
    assert_non_null(strstr(out, "--simulate-ranks 5000"));
}

#define DPO                                                                                \
    "-m " TINY " --objective dpo --beta 0.5 --data %s --max-steps 6 --log-steps 1 "          \
    "--grad-accum 2 --max-seq-len 24 --val-fraction 0.25 --eval-steps 3 --save-steps 3 "   \
    "--lora-r 4 --learning-rate 1e-2"

/* DPO across ranks: simulated against the doubled batch, and mpirun against simulated. */
static void test_dpo_ranks(void **state) {
    (void)state;
    RUN_OK(0, "train " DPO " --lora-dropout 0 --batch-size 2 --out %s/dpo1", pref, dir);
    RUN_OK(0, "train " DPO " --lora-dropout 0 --batch-size 1 --simulate-ranks 2 --out %s/dsim0",
           pref, dir);
    assert_non_null(strstr(out, "global batch 4 on 2 ranks")); /* pairs: 1 x 2 x 2 */
    const char *keys[] = {"loss", "val_loss", "rewards/chosen", "rewards/margins",
                          "val_rewards/margins"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        same_metrics("dpo1", "dsim0", keys[i], 1e-4);
#ifdef FINCH_MPIEXEC
    RUN_OK(0, "train " DPO " --batch-size 1 --simulate-ranks 2 --out %s/dsim", pref, dir);
    RUN_OK(2, "train " DPO " --batch-size 1 --out %s/dmpi", pref, dir);
    assert_non_null(strstr(out, "global batch 4 on 2 ranks"));
    const char *exact[] = {"loss",           "grad_norm",          "val_loss",
                           "rewards/chosen", "rewards/rejected",   "rewards/accuracies",
                           "logps/chosen",   "val_rewards/margins", "val_rewards/accuracies"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        same_metrics("dsim", "dmpi", exact[i], 0);
    same_file("dsim", "dmpi", "adapter_model.safetensors");
    same_file("dsim", "dmpi", "checkpoint-3/trainer_state.bin");
#endif
}

static void test_mpi_ranks(void **state) {
    (void)state;
#ifndef FINCH_MPIEXEC
    skip(); /* finch was built without MPI */
#else
    RUN_OK(0, "train " COMMON " --batch-size 2 --simulate-ranks 2 --out %s/sim", data, dir);
    RUN_OK(2, "train " COMMON " --batch-size 2 --out %s/mpi", data, dir);
    assert_non_null(strstr(out, "global batch 8 on 2 ranks"));
    /* bit for bit: losses, norms, validation, the adapter and the checkpoints' state */
    same_metrics("sim", "mpi", "loss", 0);
    same_metrics("sim", "mpi", "grad_norm", 0);
    same_metrics("sim", "mpi", "val_loss", 0);
    same_file("sim", "mpi", "adapter_model.safetensors");
    same_file("sim", "mpi", "checkpoint-3/trainer_state.bin");
    /* and the doubled batch in one process, dropout off, within the stated tolerance */
    RUN_OK(2, "train " COMMON " --lora-dropout 0 --batch-size 2 --out %s/mpi0", data, dir);
    RUN_OK(0, "train " COMMON " --lora-dropout 0 --batch-size 4 --out %s/one4", data, dir);
    same_metrics("one4", "mpi0", "loss", 1e-4);

    /* resume from checkpoint-3 with 2 ranks: the uninterrupted run's bits */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && cp -r mpi res && rm -r res/checkpoint-6 res/adapter_model.safetensors && "
             "head -4 mpi/metrics.jsonl > res/metrics.jsonl",
             dir);
    assert_int_equal(system(cmd), 0);
    RUN_OK(2, "train " COMMON " --batch-size 2 --out %s/res --resume %s/res", data, dir, dir);
    same_metrics("mpi", "res", "loss", 0);
    same_metrics("mpi", "res", "val_loss", 0);
    same_file("mpi", "res", "adapter_model.safetensors");
    /* another rank count is refused, naming both */
    char args[2048];
    snprintf(args, sizeof args, "train " COMMON " --batch-size 2 --out %s/res --resume %s/res",
             data, dir, dir);
    assert_int_equal(finch(0, args), 2);
    assert_non_null(strstr(out, "made by 2 data-parallel ranks"));
    assert_non_null(strstr(out, "this one has 1: resume it with mpirun -np 2"));
    assert_int_not_equal(finch(3, args), 0);
    assert_non_null(strstr(out, "this one has 3"));
    /* --simulate-ranks under mpirun, and ranks that disagree */
    snprintf(args, sizeof args, "train " COMMON " --batch-size 2 --simulate-ranks 2 --out %s/x",
             data, dir);
    assert_int_not_equal(finch(2, args), 0);
    assert_non_null(strstr(out, "give one or the other"));
    snprintf(args, sizeof args,
             "train " COMMON " --batch-size 2 --out %s/y --seed 1 : -np 1 %s train " COMMON
             " --batch-size 2 --out %s/y --seed 2",
             data, dir, FINCH_CLI, data, dir);
    assert_int_not_equal(finch(1, args), 0);
    assert_non_null(strstr(out, "the ranks disagree on --seed (from 1 to 2)"));
    snprintf(args, sizeof args,
             "train " COMMON " --batch-size 2 --out %s/y : -np 1 %s train " COMMON
             " --batch-size 2 --out %s/y --target-modules q,k,v --resume %s/mpi",
             data, dir, FINCH_CLI, data, dir, dir);
    assert_int_not_equal(finch(1, args), 0); /* refused before the checkpoint is sent */
    assert_non_null(strstr(out, "the ranks disagree on the trainable parameters"));
#endif
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(data, sizeof data, "%s/train.jsonl", dir);
    FILE *f = fopen(data, "w");
    if (!f) return -1;
    for (int i = 0; i < 32; i++)
        fprintf(f, "{\"prompt\": \"n %d:\", \"completion\": \" %d and %d\"}\n", i, 2 * i, 3 * i);
    fclose(f);
    snprintf(pref, sizeof pref, "%s/pref.jsonl", dir);
    if (!(f = fopen(pref, "w"))) return -1;
    for (int i = 0; i < 24; i++)
        fprintf(f, "{\"prompt\": \"n %d:\", \"chosen\": \" %d\", \"rejected\": \" %d %d\"}\n", i,
                2 * i, 3 * i + 1, i);
    fclose(f);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simulated_ranks),
        cmocka_unit_test(test_mpi_ranks),
        cmocka_unit_test(test_dpo_ranks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
