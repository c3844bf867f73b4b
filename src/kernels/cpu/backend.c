/*
 * backend.c: the CPU backend's op table.
 */
#include "kernels/cpu/cpu.h"

const finch_backend finch_backend_cpu = {
    .name = "cpu",
    .matmul = finch_cpu_matmul,
    .embed = finch_cpu_embed,
    .rmsnorm_forward = finch_cpu_rmsnorm_forward,
    .rope_forward = finch_cpu_rope_forward,
    .attention_forward = finch_cpu_attention_forward,
    .swiglu_forward = finch_cpu_swiglu_forward,
    .add = finch_cpu_add,
};
