/*
 * threads.c: the thread count used by every kernel. One OpenMP pool serves the whole
 * library, and OpenBLAS (its OpenMP build) shares it.
 */
#include "core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Process-wide configuration, like the log callback: set once before work starts. */
static int n_threads = 1;

void finch_threads_set(int n) {
    n_threads = n < 1 ? 1 : n;
#ifdef _OPENMP
    omp_set_num_threads(n_threads);
#endif
}

int finch_threads_get(void) {
    return n_threads;
}
