/*
 * host.c: the CPU backend's device part (its memory is the host's: finch_aalloc, memcpy,
 * nothing to wait for), its AdamW step, and finch_cuda_backend's answer in a build
 * without CUDA. Compiled once, for the baseline; every instruction set's table points
 * here.
 */
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>

void *finch_host_alloc(size_t bytes, const char *what, finch_err *err) {
    return finch_aalloc(bytes ? bytes : 1, what, err);
}

void finch_host_free(void *p) {
    finch_afree(p);
}

finch_status finch_host_copy(void *dst, const void *src, size_t bytes, finch_err *err) {
    (void)err;
    if (bytes) memcpy(dst, src, bytes);
    return FINCH_OK;
}

finch_status finch_host_sync(finch_err *err) {
    (void)err;
    return FINCH_OK;
}

/* The loop of optim/adamw.c (the build has -ffp-contract=off, so the same bits). */
void finch_host_adamw_step(float *p, float *m, float *v, const float *g, int64_t n,
                           const finch_adamw_scalars *s) {
#pragma omp parallel for schedule(static) num_threads(finch_threads_get()) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float pi = p[i] * s->decay;
        float mi = m[i] * s->b1 + s->one_b1 * gi;
        float vi = v[i] * s->b2 + s->one_b2 * gi * gi;
        float denom = sqrtf(vi) / s->bc2_sqrt + s->eps;
        p[i] = pi + s->neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

#ifndef FINCH_HAVE_CUDA
const finch_backend *finch_cuda_backend(finch_err *err) {
    finch_err_set(err, FINCH_E_UNSUPPORTED,
                  "finch was built without CUDA (no CUDA compiler was found when it was "
                  "configured, or -DFINCH_CUDA=OFF)");
    return NULL;
}
#endif
