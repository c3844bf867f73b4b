/*
 * device.c: finch_device_check, what `--device` asks: whether models can compute on a
 * device. Every model computes through the CPU backend today; the CUDA backend's ops exist
 * (kernels/cuda/) but the model's weights, activations and KV cache are not yet placed on
 * the device, so "cuda" is refused with the reason, the most basic first.
 */
#include "kernels/kernels.h" /* finch_cuda_backend */

#include <string.h>

finch_status finch_device_check(const char *device, finch_err *err) {
    if (!device || !strcmp(device, "cpu")) return FINCH_OK;
    if (strcmp(device, "cuda"))
        return finch_err_set(err, FINCH_E_USAGE, "unknown device '%s': cpu or cuda", device);
    const finch_backend *be = finch_cuda_backend(err);
    if (!be) return err ? err->code : FINCH_E_UNSUPPORTED;
    return finch_err_set(err, FINCH_E_UNSUPPORTED,
                         "models do not run on CUDA yet: the CUDA backend's ops are built, "
                         "each with a test against the CPU's (found %s), but the forward, "
                         "training and generation still compute on the CPU; use --device cpu",
                         be->name);
}
