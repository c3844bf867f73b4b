/*
 * host.c: the CPU backend's device part (its memory is the host's: finch_aalloc, memcpy,
 * memset, nothing to wait for) and finch_cuda_backend's answer in a build
 * without CUDA. Compiled once, for the baseline; every instruction set's table points
 * here.
 */
#include "kernels/kernels.h"

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

void finch_host_zero(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}

void finch_host_copy_within(void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}

finch_status finch_host_sync(finch_err *err) {
    (void)err;
    return FINCH_OK;
}

#ifndef FINCH_HAVE_CUDA
/* weak: a CUDA backend linked in beside replaces it (scripts/cuda_emu_check.sh --nccl
 * links the host emulation's into the CLI) */
__attribute__((weak)) const finch_backend *finch_cuda_backend(finch_err *err) {
    finch_err_set(err, FINCH_E_UNSUPPORTED,
                  "finch was built without CUDA (no CUDA compiler was found when it was "
                  "configured, or -DFINCH_CUDA=OFF)");
    return NULL;
}
#endif
