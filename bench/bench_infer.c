/*
 * bench_infer.c: inference speed of finch on one model, as prompt processing (pp) and
 * token generation (tg) throughput, printed as one JSON line.
 *
 * pp: one finch_session_decode call over n_prompt token ids from an empty cache, asking
 *     for the last position's logits only (what a prompt costs before the first token).
 * tg: from an empty cache, n_gen calls of finch_session_decode with one token each, the
 *     next token being the greedy argmax of the last logits (what each generated token
 *     costs; the first call feeds the prompt's first id, as llama-bench's tg does).
 * Each is repeated; the reported figure is the median tokens/s over the repeats. One
 * untimed warm-up decode pages the memory-mapped weights in first.
 *
 * It deliberately uses only the public header, like any user of the library, and does
 * not compare against anything itself: bench/infer_vs_llamacpp.py runs this program and
 * llama.cpp on the same file and the same token ids and prints the ratio.
 *
 * The prompt is a fixed English text tokenized by the model's tokenizer and repeated
 * until it is n_prompt ids long, or the ids listed in a file (-P) so that a peer can be
 * given exactly the same ids.
 *
 * The session numerics default to FINCH_NUMERICS_EXACT, as finch generate does; -N llamacpp
 * times the path that reproduces llama.cpp's arithmetic (8-bit activations, f16 KV cache),
 * -N bf16 the prompt's products in bf16 (AMX where the CPU has it).
 *
 * Usage: bench_infer -m MODEL [-t THREADS] [-p 512] [-n 128] [-r REPEATS]
 *                    [-N exact|llamacpp|bf16] [-P IDS_FILE]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "finch.h"

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
    const char *ids_file;
    int threads;
    int n_prompt;
    int n_gen;
    int repeats;
    finch_numerics numerics;
} bench_args;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The lowest id of the largest logit, as the library's greedy sampler and numpy's argmax
 * (the peer's) pick it: eight running maxima, then the first id holding it. One chain of
 * dependent compares over Gemma's 262,144 logits took 2 % of a token. */
static int32_t argmax(const float *v, int n) {
    float m[8];
    for (int k = 0; k < 8; k++) m[k] = v[0];
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) m[k] = v[i + k] > m[k] ? v[i + k] : m[k];
    for (; i < n; i++) m[0] = v[i] > m[0] ? v[i] : m[0];
    float mx = m[0];
    for (int k = 1; k < 8; k++) mx = m[k] > mx ? m[k] : mx;
    for (i = 0; i < n; i++)
        if (v[i] == mx) return i;
    return 0;
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s -m MODEL [-t THREADS] [-p N_PROMPT] [-n N_GEN] [-r REPEATS] "
            "[-N exact|llamacpp|bf16] [-P IDS_FILE]\n"
            "  -t threads (default 2), -p prompt tokens (default 512), -n generated tokens\n"
            "  (default 128), -r repeats, median reported (default 3), -N session numerics\n"
            "  (default exact), -P whitespace-separated token ids to use as the prompt\n"
            "  (repeated to N_PROMPT)\n",
            prog);
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
    *a = (bench_args){NULL, NULL, 2, 512, 128, 3, FINCH_NUMERICS_EXACT};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_infer: %s needs a value\n", f);
            return -1;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(f, "-m")) a->model = v;
        else if (!strcmp(f, "-P")) a->ids_file = v;
        else if (!strcmp(f, "-t")) bad = parse_int(v, 1, &a->threads);
        else if (!strcmp(f, "-p")) bad = parse_int(v, 1, &a->n_prompt);
        else if (!strcmp(f, "-n")) bad = parse_int(v, 1, &a->n_gen);
        else if (!strcmp(f, "-r")) bad = parse_int(v, 1, &a->repeats);
        else if (!strcmp(f, "-N") && !strcmp(v, "llamacpp")) a->numerics = FINCH_NUMERICS_LLAMACPP;
        else if (!strcmp(f, "-N") && !strcmp(v, "exact")) a->numerics = FINCH_NUMERICS_EXACT;
        else if (!strcmp(f, "-N") && !strcmp(v, "bf16")) a->numerics = FINCH_NUMERICS_BF16;
        else if (!strcmp(f, "-N")) bad = 1;
        else {
            fprintf(stderr, "bench_infer: unknown flag %s\n", f);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "bench_infer: %s: bad value '%s'\n", f, v);
            return -1;
        }
    }
    if (!a->model) {
        fprintf(stderr, "bench_infer: -m MODEL is required\n");
        return -1;
    }
    return 0;
}

/* Reads whitespace-separated ids from path into a malloc'd array; returns the count or -1. */
static int64_t read_ids(const char *path, int32_t **out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench_infer: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    int64_t n = 0, cap = 1024;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    long v;
    while (ids && fscanf(f, "%ld", &v) == 1) {
        if (n == cap) {
            cap *= 2;
            int32_t *grown = realloc(ids, (size_t)cap * sizeof *ids);
            if (!grown) {
                free(ids);
                ids = NULL;
                break;
            }
            ids = grown;
        }
        ids[n++] = (int32_t)v;
    }
    int bad = !feof(f);
    fclose(f);
    if (!ids || bad || n == 0) {
        fprintf(stderr, "bench_infer: %s: expected whitespace-separated token ids\n", path);
        free(ids);
        return -1;
    }
    *out = ids;
    return n;
}

/* The n_prompt prompt ids: the source ids (the -P file, else the tokenized text)
 * repeated. Returns a malloc'd array owned by the caller, or NULL after a message. */
static int32_t *make_prompt(const bench_args *a, const finch_model *m) {
    int32_t *src = NULL;
    int64_t n_src;
    if (a->ids_file) {
        n_src = read_ids(a->ids_file, &src);
        if (n_src < 0) return NULL;
    } else {
        const finch_tokenizer *tok = finch_model_tokenizer(m);
        finch_err err;
        if (!tok) {
            fprintf(stderr, "bench_infer: the model has no tokenizer; pass ids with -P\n");
            return NULL;
        }
        if (finch_tokenize(tok, k_text, sizeof k_text - 1, 0, &src, &n_src, &err)) {
            fprintf(stderr, "bench_infer: tokenize: %s\n", err.msg);
            return NULL;
        }
        if (n_src == 0) {
            free(src);
            fprintf(stderr, "bench_infer: the text tokenized to nothing\n");
            return NULL;
        }
    }
    int32_t *prompt = malloc((size_t)a->n_prompt * sizeof *prompt);
    if (prompt) {
        for (int i = 0; i < a->n_prompt; i++) prompt[i] = src[i % n_src];
    }
    free(src);
    return prompt;
}

/* Times one prompt decode; returns tokens/s or a negative value on failure. */
static double run_pp(finch_session *s, const int32_t *prompt, int n, float *last) {
    finch_err err;
    finch_session_reset(s);
    double t0 = now_s();
    if (finch_session_decode(s, prompt, n, NULL, last, &err)) {
        fprintf(stderr, "bench_infer: decode: %s\n", err.msg);
        return -1.0;
    }
    return n / (now_s() - t0);
}

/* Times n single-token decodes with greedy feedback; returns tokens/s or negative. */
static double run_tg(finch_session *s, int32_t first, int n, float *last, int n_vocab) {
    finch_err err;
    int32_t tok = first;
    finch_session_reset(s);
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        if (finch_session_decode(s, &tok, 1, NULL, last, &err)) {
            fprintf(stderr, "bench_infer: decode: %s\n", err.msg);
            return -1.0;
        }
        tok = argmax(last, n_vocab);
    }
    return n / (now_s() - t0);
}

static void print_runs(const char *key, const double *v, int n) {
    printf(", \"%s\": [", key);
    for (int i = 0; i < n; i++) printf(i ? ", %.3f" : "%.3f", v[i]);
    printf("]");
}

/* One JSON line: the medians, the settings, and every timed run in order. */
static void print_result(const bench_args *a, const double *pp, const double *tg) {
    double *sorted = malloc(2 * (size_t)a->repeats * sizeof *sorted);
    if (!sorted) return;
    memcpy(sorted, pp, (size_t)a->repeats * sizeof *pp);
    memcpy(sorted + a->repeats, tg, (size_t)a->repeats * sizeof *tg);
    printf("{\"pp_tok_s\": %.3f, \"tg_tok_s\": %.3f, \"n_prompt\": %d, \"n_gen\": %d, "
           "\"threads\": %d, \"repeats\": %d, \"numerics\": \"%s\"",
           median(sorted, a->repeats), median(sorted + a->repeats, a->repeats), a->n_prompt,
           a->n_gen, a->threads, a->repeats,
           a->numerics == FINCH_NUMERICS_EXACT  ? "exact"
           : a->numerics == FINCH_NUMERICS_BF16 ? "bf16"
                                                : "llamacpp");
    print_runs("pp_runs", pp, a->repeats);
    print_runs("tg_runs", tg, a->repeats);
    printf("}\n");
    fflush(stdout);
    free(sorted);
}

int main(int argc, char **argv) {
    bench_args a;
    if (parse_args(argc, argv, &a)) {
        usage(argv[0]);
        return 2;
    }
    finch_threads_set(a.threads);

    finch_err err;
    finch_model *m = NULL;
    if (finch_model_load(a.model, &m, &err)) {
        fprintf(stderr, "bench_infer: %s\n", err.msg);
        return 1;
    }
    finch_model_config cfg;
    finch_model_config_get(m, &cfg);

    int rc = 1;
    finch_session *s = NULL;
    int32_t *prompt = make_prompt(&a, m);
    float *last = malloc((size_t)cfg.n_vocab * sizeof *last);
    double *pp = calloc((size_t)a.repeats, sizeof *pp);
    double *tg = calloc((size_t)a.repeats, sizeof *tg);
    int n_ctx = (a.n_prompt > a.n_gen ? a.n_prompt : a.n_gen) + 16;
    if (!prompt || !last || !pp || !tg) goto done;
    if (finch_session_new(m, n_ctx, a.numerics, &s, &err)) {
        fprintf(stderr, "bench_infer: %s\n", err.msg);
        goto done;
    }
    for (int i = 0; i < a.n_prompt; i++) {
        if (prompt[i] < 0 || prompt[i] >= cfg.n_vocab) {
            fprintf(stderr, "bench_infer: prompt id %d is outside the vocabulary\n",
                    (int)prompt[i]);
            goto done;
        }
    }

    /* warm-up: page in the weights and let the thread pool start */
    if (run_pp(s, prompt, a.n_prompt < 32 ? a.n_prompt : 32, last) < 0) goto done;

    for (int r = 0; r < a.repeats; r++) {
        pp[r] = run_pp(s, prompt, a.n_prompt, last);
        tg[r] = run_tg(s, prompt[0], a.n_gen, last, cfg.n_vocab);
        if (pp[r] < 0 || tg[r] < 0) goto done;
        fprintf(stderr, "bench_infer: run %d: pp %.2f tok/s, tg %.2f tok/s\n", r + 1, pp[r],
                tg[r]);
    }
    print_result(&a, pp, tg);
    rc = 0;

done:
    finch_session_free(s);
    free(tg);
    free(pp);
    free(last);
    free(prompt);
    finch_model_free(m);
    return rc;
}
