/*
 * mix.c: the order in which a run visits its examples: a seeded shuffle per epoch, and for
 * a multi-task mixture (several training files, each with a weight, as FLAN mixes its
 * tasks) the weighted draw of a task per slot; and the "PATH:WEIGHT" form of a training
 * file on the command line.
 *
 * Mixture sampling. The tasks' units (examples, or preference pairs) are numbered task by
 * task. An epoch has as many slots as all tasks have units together. Slot i of epoch e
 * draws task k with probability w_k / sum(w) (a uniform double from an RNG seeded by (seed,
 * e) against the cumulative weights), then takes the next unit of task k's own sequence:
 * its units shuffled (seeded by (seed, k, pass)), shuffled anew for the next pass when a
 * pass is used up. A task's place in its sequence carries over from epoch to epoch, so a
 * task drawn more often than its size repeats its units only after seeing each once per
 * pass, and one drawn less often goes on where the last epoch left it. The state between
 * epochs is the count of units each task has given (drawn[k]: pass drawn[k] / size[k],
 * position drawn[k] % size[k]), which a checkpoint keeps. With one task, every slot takes
 * the task's next unit and epoch e is exactly the plain shuffle of e (pass e).
 *
 * Deliberately not here: which units are trained (data/tokens.c fills batches from the
 * order) and the loop's bookkeeping of what was trained (train/loop.c).
 */
#include "data/data.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

/* One splitmix64 step from z. */
static uint64_t mix64(uint64_t z) {
    return finch_mix64(z + 0x9e3779b97f4a7c15ull);
}

void finch_shuffle(int64_t *order, int64_t n, uint64_t seed, int64_t e) {
    finch_rng rng;
    finch_rng_seed(&rng, mix64(seed ^ mix64((uint64_t)e + 1)));
    for (int64_t i = 0; i < n; i++) order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(finch_rng_u64(&rng) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

uint64_t finch_task_seed(uint64_t seed, int task) {
    return task ? seed ^ mix64(0x7a5c0000ull + (uint64_t)task) : seed;
}

void finch_mix_order(int64_t *order, const finch_mixture *mx, int64_t e, const int64_t *drawn,
                     int64_t *drawn_end, int64_t *scratch) {
    const int n = mx->n_tasks;
    int64_t start[FINCH_MAX_TASKS], total = 0; /* task k's units: [start[k], start[k] + size[k]) */
    double cum[FINCH_MAX_TASKS], wsum = 0;
    for (int k = 0; k < n; k++) wsum += mx->weight[k];
    for (int k = 0; k < n; k++) {
        cum[k] = (k ? cum[k - 1] : 0) + mx->weight[k] / wsum;
        start[k] = total;
        total += mx->size[k];
        drawn_end[k] = drawn[k];
        /* the shuffle of the task's current pass, in its part of scratch */
        finch_shuffle(scratch + start[k], mx->size[k], finch_task_seed(mx->seed, k),
                      drawn[k] / mx->size[k]);
    }
    cum[n - 1] = 1.0; /* against rounding: every draw below 1 finds a task */
    finch_rng rng;
    finch_rng_seed(&rng, mix64(mx->seed ^ 0x6d69780000000000ull ^ mix64((uint64_t)e + 1)));
    for (int64_t i = 0; i < total; i++) {
        int k = 0;
        if (n > 1) {
            const double u = (double)(finch_rng_u64(&rng) >> 11) * 0x1p-53;
            while (u >= cum[k]) k++;
        }
        const int64_t at = drawn_end[k]++ % mx->size[k];
        order[i] = start[k] + scratch[start[k] + at];
        if (at + 1 == mx->size[k]) /* the pass is used up: the next one's shuffle */
            finch_shuffle(scratch + start[k], mx->size[k], finch_task_seed(mx->seed, k),
                          drawn_end[k] / mx->size[k]);
    }
}

finch_status finch_data_source_parse(const char *arg, char *path, size_t cap, double *weight,
                                     finch_err *err) {
    const char *colon = strrchr(arg, ':');
    /* a file of this name, or nothing after a ':' that could be a weight: all of it is the path */
    const bool whole = !colon || strchr(colon, '/') || access(arg, F_OK) == 0;
    const size_t n = whole ? strlen(arg) : (size_t)(colon - arg);
    double w = 1.0;
    if (!whole) {
        char *end;
        errno = 0;
        w = strtod(colon + 1, &end);
        if (!colon[1] || *end || errno || !isfinite(w))
            return finch_err_set(err, FINCH_E_USAGE,
                                 "--data %s: no such file, and '%s' is not a weight (give "
                                 "FILE:WEIGHT, WEIGHT a number > 0; a file whose name holds ':' "
                                 "must exist)",
                                 arg, colon + 1);
        if (!(w > 0))
            return finch_err_set(err, FINCH_E_USAGE,
                                 "--data %s: weight %s: must be > 0 (leave the file out instead)",
                                 arg, colon + 1);
        if (n == 0) return finch_err_set(err, FINCH_E_USAGE, "--data %s: no file before ':'", arg);
    }
    if (n >= cap) return finch_err_set(err, FINCH_E_USAGE, "--data %.200s...: path too long", arg);
    memcpy(path, arg, n);
    path[n] = 0;
    *weight = w;
    return FINCH_OK;
}
