/*
 * dist.h: data parallelism across processes: the ranks of an MPI job and the few
 * collectives a data-parallel run needs (a sum over ranks of flat f32 and f64 arrays, a
 * broadcast from rank 0, a check that every rank holds the same values). Built on MPI
 * when CMake finds it (FINCH_MPI); otherwise, and in a process not started by mpirun, the
 * process is rank 0 of 1 and every collective leaves its data as it is. dist/ sees flat
 * arrays only, nothing of models or runs. The public half (init, rank, size, abort) is in
 * include/finch.h.
 *
 * Every collective must be called by every rank in the same order with the same sizes
 * (MPI's rule). A failed collective (a rank died, the network broke) returns FINCH_E_IO
 * with MPI's message instead of aborting: MPI_COMM_WORLD's error handler is
 * MPI_ERRORS_RETURN, so the caller can say where it failed before the job ends.
 */
#ifndef FINCH_DIST_H
#define FINCH_DIST_H

#include "core/core.h"

/* x (n) = the sum of every rank's x, element by element, the same bits on every rank.
 * With two ranks each element is a + b, which is b + a: the same as a single process
 * adding the two halves. what names the data in the error message. */
finch_status finch_dist_sum_f32(float *x, size_t n, const char *what, finch_err *err);

/* The same for doubles (losses, counts). */
finch_status finch_dist_sum_f64(double *x, size_t n, const char *what, finch_err *err);

/* buf (bytes) on every rank = rank 0's buf. */
finch_status finch_dist_bcast(void *buf, size_t bytes, const char *what, finch_err *err);

/* Checks that every rank holds the same v (n): FINCH_E_USAGE naming the first differing
 * value (names[i]) with its smallest and largest value over the ranks otherwise. Used
 * when a run starts, so that ranks given other data or flags stop with a message rather
 * than train on different batches. */
finch_status finch_dist_check_same(const int64_t *v, const char *const *names, int n,
                                   finch_err *err);

#endif /* FINCH_DIST_H */
