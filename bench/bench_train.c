/*
 * bench_train.c: LoRA training speed and peak memory of finch on one model, printed as
 * one JSON line.
 *
 * It writes a synthetic dataset to a fresh directory: JSONL {"prompt","completion"} lines
 * of repeated English text, each longer than SEQ tokens so that every example is cut to
 * exactly SEQ tokens (max_seq_len = SEQ), with train_on_prompt set so that every position
 * is a target. Then it runs finch_train with LoRA r 16, alpha 32, dropout 0.05 on all
 * linear layers, AdamW at lr 1e-4, batch BATCH, STEPS optimizer steps, no evaluation and no
 * intermediate checkpoints, and times each step as the wall time between consecutive
 * progress callbacks (the first step is timed from the start of finch_train, so it also
 * holds the data loading; it is one of the warm-up steps). Tokens/s of a step is
 * BATCH * SEQ / its time; the reported figure is the median over the steps after the 2
 * warm-up steps. Peak memory is this process's getrusage(RUSAGE_SELF) ru_maxrss, which
 * counts the pages of the memory-mapped model that were touched.
 *
 * Under mpirun (finch built with MPI) each process is a data-parallel rank with batch BATCH:
 * a step is then BATCH x ranks rows, tokens/s counts them all, and rank 0 prints the line
 * (with "ranks"). `mpirun -np 2 bench_train -t 1` against `bench_train -t 2` compares two
 * ranks of one thread with one process of two threads on the same cores.
 *
 * It deliberately uses only the public header; bench/train_vs_pytorch.py runs it beside a
 * PyTorch peer of the same shape and prints the ratios.
 *
 * Usage: bench_train -m MODEL [-b BATCH] [-T SEQ] [-n STEPS] [-t THREADS] [--out DIR]
 *                    [--method NAME] [--option NAME=VALUE ...] [--max-grad-norm G]
 *                    [--fused-optimizer] [--device cpu|cuda]
 *   defaults: -b 4 -T 128 -n 8 -t 2, clipping at 1 (finch train's default, and the PyTorch
 *   peer's of train_vs_pytorch.py; --max-grad-norm 0 turns it off); --out keeps the run directory (adapter, metrics)
 *   there instead of a temporary one that is removed at the end. --method trains another
 *   method of the table with its default options, or those --option gives; for lora and
 *   dora without --option the options are r 16, alpha 32, dropout 0.05, all linear layers.
 *   --device cuda runs the passes on the GPU (the model placed there, finch_model_to_device);
 *   its peak memory is then the host's alone.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "finch.h"

#define WARMUP_STEPS 2

static const char k_text[] =
    "The history of the lighthouse is a story of people who kept watch so that others "
    "could travel safely. Long before electric lamps, keepers climbed narrow stairs every "
    "evening to trim the wicks, polish the lenses and wind the clockwork that turned the "
    "great glass. Ships far out at sea counted the flashes to learn which coast they were "
    "passing, and a light that failed for a single night could mean a wreck on the rocks. "
    "Today most lights run on their own, watched by sensors and a distant office, yet the "
    "towers still stand on their headlands, and visitors climb them to look out over the "
    "water the way the keepers once did. ";

typedef struct {
    const char *model;
    const char *out;
    int batch, seq, steps, threads, bf16, ckpt, nf4, fused;
    double max_grad_norm;
    const char *method;
    const char *device; /* cpu or cuda */
    char *opts[16];     /* NAME=VALUE */
    int n_opts;
} bench_args;

typedef struct {
    double t_prev;
    int64_t last_step;
    int n;          /* steps recorded */
    int cap;
    double *tok_s;  /* per step, from our own clock */
    double lib_tok_s; /* the library's smoothed figure at the last step */
    double loss_first, loss_last;
    int64_t n_trainable, n_total;
    int64_t tokens_per_step;
} bench_state;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n) {
    double *c = malloc((size_t)n * sizeof *c);
    if (!c) return NAN;
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmp_double);
    double m = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
    free(c);
    return m;
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s -m MODEL [-b BATCH] [-T SEQ] [-n STEPS] [-t THREADS] [--out DIR]\n"
            "  -b examples per step (default 4), -T tokens per example (default 128),\n"
            "  -n optimizer steps, the first %d untimed (default 8), -t threads (default 2),\n"
            "  --out DIR keep the run directory there (default: a temporary one, removed)\n"
            "  --method NAME (default lora), --option NAME=VALUE (repeatable) its options\n"
            "  --bf16 the base's products in bf16 (finch train --bf16)\n"
            "  --gradient-checkpointing recompute each block in backward\n"
            "  --max-grad-norm G clip the gradients' global norm (default 1, 0 = off)\n"
            "  --fused-optimizer AdamW fused into backward (finch train\n"
            "    --fused-optimizer; needs --max-grad-norm 0)\n"
            "  --load-in-4bit quantize the base's projections to NF4 with double\n"
            "    quantization while loading (QLoRA; finch train --load-in-4bit)\n"
            "  --device cpu|cuda where the passes run (finch train --device)\n",
            prog, WARMUP_STEPS);
}

static int parse_int(const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > 1000000) return -1;
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, bench_args *a) {
    *a = (bench_args){
        .batch = 4, .seq = 128, .steps = 8, .threads = 2, .method = "lora", .device = "cpu",
        .max_grad_norm = 1.0};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) return -1;
        if (!strcmp(f, "--bf16")) {
            a->bf16 = 1;
            continue;
        }
        if (!strcmp(f, "--gradient-checkpointing")) {
            a->ckpt = 1;
            continue;
        }
        if (!strcmp(f, "--fused-optimizer")) {
            a->fused = 1;
            continue;
        }
        if (!strcmp(f, "--load-in-4bit")) {
            a->nf4 = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_train: %s needs a value\n", f);
            return -1;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(f, "-m")) a->model = v;
        else if (!strcmp(f, "--out")) a->out = v;
        else if (!strcmp(f, "--method")) a->method = v;
        else if (!strcmp(f, "--device")) a->device = v;
        else if (!strcmp(f, "--option") && a->n_opts < 16 && strchr(v, '=')) a->opts[a->n_opts++] = (char *)v;
        else if (!strcmp(f, "-b")) bad = parse_int(v, 1, &a->batch);
        else if (!strcmp(f, "-T")) bad = parse_int(v, 2, &a->seq);
        else if (!strcmp(f, "-n")) bad = parse_int(v, WARMUP_STEPS + 1, &a->steps);
        else if (!strcmp(f, "-t")) bad = parse_int(v, 1, &a->threads);
        else if (!strcmp(f, "--max-grad-norm")) {
            char *end;
            errno = 0;
            a->max_grad_norm = strtod(v, &end);
            bad = errno || end == v || *end || !(a->max_grad_norm >= 0 && a->max_grad_norm <= 1e9);
        }
        else {
            fprintf(stderr, "bench_train: unknown flag %s\n", f);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "bench_train: %s: bad value '%s'\n", f, v);
            return -1;
        }
    }
    if (!a->model) {
        fprintf(stderr, "bench_train: -m MODEL is required\n");
        return -1;
    }
    return 0;
}

static void on_log(finch_log_level level, const char *msg, void *user) {
    (void)user;
    if (level >= FINCH_LOG_WARN) fprintf(stderr, "bench_train: finch: %s\n", msg);
}

static void on_progress(const finch_train_progress *p, void *user) {
    bench_state *s = user;
    if (p->step <= s->last_step) return; /* an evaluation report for a step already seen */
    double t = now_s();
    double dt = (t - s->t_prev) / (double)(p->step - s->last_step);
    s->t_prev = t;
    s->last_step = p->step;
    if (s->n < s->cap) s->tok_s[s->n++] = (double)s->tokens_per_step / dt;
    if (s->n == 1) s->loss_first = p->loss;
    s->loss_last = p->loss;
    s->lib_tok_s = p->tokens_per_s;
    s->n_trainable = p->n_trainable;
    s->n_total = p->n_total;
    fprintf(stderr, "bench_train: step %lld/%lld loss %.4f %.1f tok/s\n", (long long)p->step,
            (long long)p->total_steps, p->loss, (double)s->tokens_per_step / dt);
}

/* Writes n_examples completion-format lines whose text is longer than seq tokens. */
static int write_dataset(const char *path, const finch_model *model, int seq, int n_examples) {
    finch_err err;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    if (finch_tokenize(finch_model_tokenizer(model), k_text, strlen(k_text), 0, &ids, &n_ids,
                       &err)) {
        fprintf(stderr, "bench_train: tokenize: %s\n", err.msg);
        return -1;
    }
    free(ids);
    if (n_ids < 1) n_ids = 1;
    int reps = (int)(seq / n_ids) + 2; /* the prompt alone exceeds seq tokens */
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "bench_train: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (int e = 0; e < n_examples; e++) {
        /* Start each example at a different sentence so the examples differ. */
        const char *start = k_text;
        for (int k = 0; k < e % 6; k++) {
            const char *dot = strstr(start, ". ");
            if (!dot) break;
            start = dot + 2;
        }
        fputs("{\"prompt\": \"", f);
        fputs(start, f);
        for (int r = 1; r < reps; r++) fputs(k_text, f);
        fputs("\", \"completion\": \"", f);
        fputs(k_text, f);
        fputs("\"}\n", f);
    }
    if (fclose(f)) {
        fprintf(stderr, "bench_train: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(int argc, char **argv) {
    bench_args a;
    if (parse_args(argc, argv, &a)) {
        usage(argv[0]);
        return 2;
    }
    finch_log_set(on_log, NULL);
    finch_threads_set(a.threads);
    finch_err err;
    if (finch_dist_init(&argc, &argv, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    const int rank = finch_dist_rank(), ranks = finch_dist_size();

    char tmpl[] = "/tmp/finch-bench-train-XXXXXX";
    const char *dir = mkdtemp(tmpl);
    if (!dir) {
        fprintf(stderr, "bench_train: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    char data_path[4096], out_dir[4096];
    snprintf(data_path, sizeof data_path, "%s/train.jsonl", dir);
    if (a.out) snprintf(out_dir, sizeof out_dir, "%s", a.out);
    else snprintf(out_dir, sizeof out_dir, "%s/run", dir);

    int rc = 1;
    finch_model *model = NULL;
    bench_state st = {0};
    if (finch_model_load(a.model, &model, &err) ||
        (a.nf4 && finch_model_load_in_4bit(model, "nf4", 1, &err)) ||
        finch_model_to_device(model, a.device, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        goto done;
    }
    /* Enough examples that no step repeats an epoch's data order mid-run. */
    if (write_dataset(data_path, model, a.seq, (a.batch * a.steps + a.batch) * ranks)) goto done;

    finch_train_options o = finch_train_defaults();
    o.data.path = data_path;
    o.data.format = "completion";
    o.data.max_seq_len = a.seq;
    o.data.train_on_prompt = 1;
    o.val_path = NULL;
    o.val_fraction = 0.0;
    o.method = a.method;
    o.bf16 = a.bf16;
    o.gradient_checkpointing = a.ckpt;
    o.max_grad_norm = a.max_grad_norm;
    o.fused_optimizer = a.fused;
    if (!a.n_opts && (!strcmp(a.method, "lora") || !strcmp(a.method, "dora"))) {
        finch_train_set_option(&o, "lora-r", "16", NULL);
        finch_train_set_option(&o, "lora-alpha", "32", NULL);
        finch_train_set_option(&o, "lora-dropout", "0.05", NULL);
        finch_train_set_option(&o, "target-modules", "all-linear", NULL);
    }
    for (int i = 0; i < a.n_opts; i++) {
        char *eq = strchr(a.opts[i], '=');
        *eq = 0;
        if (finch_train_set_option(&o, a.opts[i], eq + 1, &err)) {
            fprintf(stderr, "bench_train: --option %s: %s\n", a.opts[i], err.msg);
            goto done;
        }
    }
    o.learning_rate = 1e-4;
    o.batch_size = a.batch;
    o.grad_accum = 1;
    o.max_steps = a.steps;
    o.save_steps = 0;
    o.eval_steps = 0;
    o.log_steps = 1;
    o.out_dir = out_dir;

    st.cap = a.steps;
    st.tok_s = calloc((size_t)a.steps, sizeof *st.tok_s);
    st.tokens_per_step = (int64_t)a.batch * a.seq * ranks;
    if (!st.tok_s) goto done;
    st.t_prev = now_s();
    if (finch_train(model, &o, on_progress, NULL, &st, &err)) {
        fprintf(stderr, "bench_train: finch_train: %s\n", err.msg);
        goto done;
    }
    if (rank != 0) { /* rank 0 times the steps and prints */
        rc = 0;
        goto done;
    }
    if (st.n <= WARMUP_STEPS) {
        fprintf(stderr, "bench_train: only %d steps reported, need more than %d\n", st.n,
                WARMUP_STEPS);
        goto done;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"method\": \"%s\", \"tok_s\": %.3f, \"peak_rss_mb\": %.1f, \"batch\": %d, \"seq\": %d, "
           "\"steps\": %d, \"threads\": %d, \"max_grad_norm\": %g, \"fused\": %d, \"lib_tok_s\": %.3f, \"loss_first\": %.5f, "
           "\"loss_last\": %.5f, \"n_trainable\": %lld, \"n_total\": %lld, \"ranks\": %d, "
           "\"runs\": [",
           a.method, median(st.tok_s + WARMUP_STEPS, st.n - WARMUP_STEPS), (double)ru.ru_maxrss / 1024.0,
           a.batch, a.seq, a.steps, a.threads, a.max_grad_norm, a.fused, st.lib_tok_s, st.loss_first, st.loss_last,
           (long long)st.n_trainable, (long long)st.n_total, ranks);
    for (int i = WARMUP_STEPS; i < st.n; i++)
        printf("%s%.3f", i > WARMUP_STEPS ? ", " : "", st.tok_s[i]);
    printf("]}\n");
    rc = 0;
done:
    free(st.tok_s);
    finch_model_free(model);
    if (a.out) remove(data_path), rmdir(dir);
    else nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (!rc) finch_dist_finalize(); /* a failed rank exits: mpirun ends the others */
    return rc;
}
