/*
 * bench_attention.c: one layer's training attention, forward + backward, of the CPU
 * backend (the tiled kernel of kernels/cpu/attention.c, the instruction set the library
 * picks) against the row-at-a-time kernel it replaced (baseline/attention_rows.c), in the
 * same process on the same random inputs, for SmolLM2's heads (H 9, KVH 3, D 64) and Gemma
 * 3's (H 4, KVH 1, D 256, sliding window 512), batch 1, at T = 512, 2048 and 8192.
 *
 * GFLOP/s counts 2 D flops per (query head, visible key) for each of six products: the
 * forward's scores and probabilities times values, the backward's dP, dQ, dK and dV (what
 * a kernel that stored the probabilities would do; recomputation is not counted). A
 * kernel's time is the best of its runs (wall clock; the ratio of the process CPU times of
 * those runs is printed too, steadier on a loaded machine). It also prints the largest difference
 * between the two kernels' outputs and gradients, relative to the largest value.
 *
 * Usage: bench_attention [-t THREADS] [-n RUNS] [-T SEQ]...
 *   defaults: -t 2 -n 3 -T 512 -T 2048 -T 8192; the old kernel runs once at T >= 8192
 *   (it takes minutes there).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "baseline/attention_rows.h"
#include "core/core.h"
#include "kernels/kernels.h" /* finch_backend, finch_cpu_backend, finch_workspace */

typedef struct {
    const char *name;
    int H, KVH, D;
    int64_t W;
} shape;

typedef void (*fwd_fn)(float *, float *, const float *, const float *, const float *,
                       const int32_t *, const finch_attn_prefix *, int64_t, int64_t, int, int, int,
                       int64_t, finch_workspace *);
typedef void (*bwd_fn)(float *, float *, float *, float *, const float *, const float *,
                       const float *, const float *, const float *, const float *, const int32_t *,
                       const finch_attn_prefix *, int64_t, int64_t, int, int, int, int64_t,
                       finch_workspace *);

/* The baseline's backward sums P dP over the keys itself: the forward output goes unused. */
static void rows_backward(float *dq, float *dk, float *dv, float *sps, const float *dout,
                          const float *out, const float *stats, const float *q, const float *k,
                          const float *v, const int32_t *seg, const finch_attn_prefix *pre,
                          int64_t B, int64_t T, int H, int KVH, int D, int64_t window,
                          finch_workspace *ws) {
    (void)out;
    bench_rows_attention_backward(dq, dk, dv, sps, dout, stats, q, k, v, seg, pre, B, T, H, KVH, D,
                                  window, ws);
}

static double now(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *alloc_f(int64_t n) {
    float *p = malloc((size_t)n * sizeof *p);
    if (!p) {
        fprintf(stderr, "bench_attention: out of memory\n");
        exit(1);
    }
    return p;
}

typedef struct {
    float *out, *st, *sps, *dq, *dk, *dv;
} outputs;

/* The best wall time of runs forward + backward passes; *cpu the process CPU time of
 * that run (all threads). */
static double time_kernel(double *cpu, fwd_fn fwd, bwd_fn bwd, outputs *o, const float *q,
                          const float *k, const float *v, const float *dout, int64_t T,
                          const shape *s, int runs, finch_workspace *ws) {
    double best = INFINITY;
    for (int r = 0; r < runs; r++) {
        double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
        fwd(o->out, o->st, q, k, v, NULL, NULL, 1, T, s->H, s->KVH, s->D, s->W, ws);
        bwd(o->dq, o->dk, o->dv, o->sps, dout, o->out, o->st, q, k, v, NULL, NULL, 1, T, s->H,
            s->KVH, s->D, s->W, ws);
        double dt = now(CLOCK_MONOTONIC) - t0;
        if (dt < best) best = dt, *cpu = now(CLOCK_PROCESS_CPUTIME_ID) - c0;
    }
    return best;
}

/* max |a - b| / max |b| over n values. */
static double rel_diff(const float *a, const float *b, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        d = e > d ? e : d;
        m = fabs((double)b[i]) > m ? fabs((double)b[i]) : m;
    }
    return m > 0 ? d / m : d;
}

int main(int argc, char **argv) {
    int threads = 2, runs = 3, nT = 0;
    int64_t Ts[16];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-T") && i + 1 < argc && nT < 16)
            Ts[nT++] = atoll(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_attention [-t THREADS] [-n RUNS] [-T SEQ]...\n");
            return 2;
        }
    }
    if (threads < 1 || runs < 1) {
        fprintf(stderr, "bench_attention: -t and -n must be at least 1\n");
        return 2;
    }
    if (!nT) Ts[nT++] = 512, Ts[nT++] = 2048, Ts[nT++] = 8192;
    finch_err err = {0};
    const finch_backend *be = finch_cpu_backend(&err);
    if (!be) {
        fprintf(stderr, "bench_attention: %s\n", err.msg);
        return 1;
    }
    printf("backend %s, %d threads, best of %d runs\n", be->name, threads, runs);
    const shape shapes[] = {{"smollm2", 9, 3, 64, 0}, {"gemma3", 4, 1, 256, 512}};
    finch_rng r;
    finch_rng_seed(&r, 1);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ti = 0; ti < nT; ti++) {
            const shape *s = &shapes[si];
            const int64_t T = Ts[ti], nq = T * s->H * s->D, nkv = T * s->KVH * s->D;
            float *q = alloc_f(nq), *k = alloc_f(nkv), *v = alloc_f(nkv), *dout = alloc_f(nq);
            for (int64_t i = 0; i < nq; i++) q[i] = 2 * finch_rng_float(&r) - 1;
            for (int64_t i = 0; i < nkv; i++) k[i] = 2 * finch_rng_float(&r) - 1;
            for (int64_t i = 0; i < nkv; i++) v[i] = 2 * finch_rng_float(&r) - 1;
            for (int64_t i = 0; i < nq; i++) dout[i] = 2 * finch_rng_float(&r) - 1;
            outputs o[2];
            for (int j = 0; j < 2; j++)
                o[j] = (outputs){alloc_f(nq), alloc_f(2 * T * s->H), alloc_f(T * s->H),
                                 alloc_f(nq), alloc_f(nkv),          alloc_f(nkv)};
            finch_workspace ws;
            if (finch_workspace_init(&ws, finch_workspace_need((int64_t)s->H * s->D, T), threads, 0,
                                     &err)) {
                fprintf(stderr, "bench_attention: %s\n", err.msg);
                return 1;
            }
            double pairs = 0; /* (query, visible key) pairs of one head */
            for (int64_t t = 0; t < T; t++)
                pairs += (double)(s->W > 0 && t + 1 > s->W ? s->W : t + 1);
            const double flops = 6.0 * 2.0 * s->D * pairs * s->H;
            double cn, co;
            double tn = time_kernel(&cn, be->attention_forward_train, be->attention_backward, &o[0],
                                    q, k, v, dout, T, s, runs, &ws);
            double to = time_kernel(&co, bench_rows_attention_forward_train, rows_backward, &o[1],
                                    q, k, v, dout, T, s, T >= 8192 ? 1 : runs, &ws);
            double diff = rel_diff(o[0].out, o[1].out, nq);
            double dd = rel_diff(o[0].dq, o[1].dq, nq);
            diff = dd > diff ? dd : diff;
            dd = rel_diff(o[0].dk, o[1].dk, nkv);
            diff = dd > diff ? dd : diff;
            dd = rel_diff(o[0].dv, o[1].dv, nkv);
            diff = dd > diff ? dd : diff;
            printf("%-8s T %5lld: tiled %9.1f ms %6.1f GFLOP/s | rows %9.1f ms %6.1f GFLOP/s | "
                   "speed-up %5.1fx (CPU time %5.1fx) | max rel diff %.1e\n",
                   s->name, (long long)T, 1e3 * tn, flops / tn * 1e-9, 1e3 * to, flops / to * 1e-9,
                   to / tn, co / cn, diff);
            fflush(stdout);
            finch_workspace_free(&ws);
            for (int j = 0; j < 2; j++) {
                free(o[j].out), free(o[j].st), free(o[j].sps), free(o[j].dq), free(o[j].dk);
                free(o[j].dv);
            }
            free(q), free(k), free(v), free(dout);
        }
    return 0;
}
