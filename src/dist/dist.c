/*
 * dist.c: the ranks of a data-parallel job and its collectives (dist.h, and the
 * finch_dist_* part of include/finch.h).
 *
 * With FINCH_MPI (CMake found MPI) a process started by mpirun (or another launcher
 * that sets the PMI/PMIx environment) joins MPI_COMM_WORLD in finch_dist_init; every
 * other process, and every process of a build without MPI, is rank 0 of 1 and the
 * collectives return at once. MPI is initialised only where a launcher asked for it, so
 * `finch train` alone in an MPI build starts no MPI runtime.
 *
 * MPI counts are ints: arrays longer than INT_MAX/2 elements go in chunks. Sums use
 * MPI_SUM on MPI_FLOAT / MPI_DOUBLE, whose result Open MPI delivers identical to every
 * rank (every algorithm it picks reduces each element once and distributes that value).
 */
#include "dist/dist.h"

#include <limits.h>
#include <stdlib.h>

#ifdef FINCH_MPI
#include <mpi.h>

/* True when MPI is up: initialised by finch_dist_init and not finalised yet. */
static bool mpi_on(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

/* True when a launcher (mpirun, srun, a PMIx server) started this process as a rank. */
static bool launched(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return true;
    return false;
}

static finch_status mpi_fail(int rc, const char *op, const char *what, finch_err *err) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = 0;
    return finch_err_set(err, FINCH_E_IO,
                         "rank %d: %s of %s failed: %s (a rank died or the network between "
                         "them broke)",
                         finch_dist_rank(), op, what, len ? msg : "unknown MPI error");
}

finch_status finch_dist_init(int *argc, char ***argv, finch_err *err) {
    if (mpi_on() || !launched()) return FINCH_OK;
    int provided = 0;
    /* OpenMP threads compute, only the main thread calls MPI */
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS)
        return finch_err_set(err, FINCH_E_IO, "MPI_Init_thread failed (error %d)", rc);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return FINCH_OK;
}

void finch_dist_finalize(void) {
    if (mpi_on()) MPI_Finalize();
}

int finch_dist_rank(void) {
    int r = 0;
    if (mpi_on()) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int finch_dist_size(void) {
    int n = 1;
    if (mpi_on()) MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

int finch_dist_local_size(void) {
    if (!mpi_on()) return 1;
    MPI_Comm node;
    int n = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS)
        return 1;
    MPI_Comm_size(node, &n);
    MPI_Comm_free(&node);
    return n;
}

int finch_dist_built(void) {
    return 1;
}

static finch_status sum(void *x, size_t n, size_t elem, MPI_Datatype type, const char *what,
                        finch_err *err) {
    if (finch_dist_size() == 1) return FINCH_OK;
    for (size_t at = 0; at < n;) {
        size_t k = n - at < (size_t)(INT_MAX / 2) ? n - at : (size_t)(INT_MAX / 2);
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)x + at * elem, (int)k, type, MPI_SUM,
                               MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "the allreduce", what, err);
        at += k;
    }
    return FINCH_OK;
}

finch_status finch_dist_sum_f32(float *x, size_t n, const char *what, finch_err *err) {
    return sum(x, n, sizeof *x, MPI_FLOAT, what, err);
}

finch_status finch_dist_sum_f64(double *x, size_t n, const char *what, finch_err *err) {
    return sum(x, n, sizeof *x, MPI_DOUBLE, what, err);
}

finch_status finch_dist_bcast(void *buf, size_t bytes, const char *what, finch_err *err) {
    if (finch_dist_size() == 1) return FINCH_OK;
    for (size_t at = 0; at < bytes;) {
        size_t k = bytes - at < (size_t)(INT_MAX / 2) ? bytes - at : (size_t)(INT_MAX / 2);
        int rc = MPI_Bcast((char *)buf + at, (int)k, MPI_BYTE, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "the broadcast", what, err);
        at += k;
    }
    return FINCH_OK;
}

finch_status finch_dist_check_same(const int64_t *v, const char *const *names, int n,
                                   finch_err *err) {
    if (finch_dist_size() == 1 || n <= 0) return FINCH_OK;
    int64_t *lo = finch_mem_alloc(2 * (size_t)n * sizeof *lo);
    if (!lo) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    int64_t *hi = lo + n;
    int rc = MPI_Allreduce(v, lo, n, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS) rc = MPI_Allreduce(v, hi, n, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    finch_status st = rc == MPI_SUCCESS ? FINCH_OK : mpi_fail(rc, "the check", "the run", err);
    for (int i = 0; i < n && !st; i++)
        if (lo[i] != hi[i])
            st = finch_err_set(err, FINCH_E_USAGE,
                               "the ranks disagree on %s (from %lld to %lld): give every rank "
                               "the same model, data and flags",
                               names[i], (long long)lo[i], (long long)hi[i]);
    free(lo);
    return st;
}

#else /* one process */

finch_status finch_dist_init(int *argc, char ***argv, finch_err *err) {
    (void)argc, (void)argv, (void)err;
    return FINCH_OK;
}
void finch_dist_finalize(void) {}
int finch_dist_rank(void) {
    return 0;
}
int finch_dist_size(void) {
    return 1;
}
int finch_dist_local_size(void) {
    return 1;
}
int finch_dist_built(void) {
    return 0;
}
finch_status finch_dist_sum_f32(float *x, size_t n, const char *what, finch_err *err) {
    (void)x, (void)n, (void)what, (void)err;
    return FINCH_OK;
}
finch_status finch_dist_sum_f64(double *x, size_t n, const char *what, finch_err *err) {
    (void)x, (void)n, (void)what, (void)err;
    return FINCH_OK;
}
finch_status finch_dist_bcast(void *buf, size_t bytes, const char *what, finch_err *err) {
    (void)buf, (void)bytes, (void)what, (void)err;
    return FINCH_OK;
}
finch_status finch_dist_check_same(const int64_t *v, const char *const *names, int n,
                                   finch_err *err) {
    (void)v, (void)names, (void)n, (void)err;
    return FINCH_OK;
}

#endif
