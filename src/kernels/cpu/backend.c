/*
 * backend.c: the CPU backend's op table.
 */
#include "kernels/cpu/cpu.h"

const finch_backend finch_backend_cpu = {
    .name = "cpu",
    .matmul = finch_cpu_matmul,
    .matmul_q8 = finch_cpu_matmul_q8,
    .embed = finch_cpu_embed,
    .rmsnorm_forward = finch_cpu_rmsnorm_forward,
    .rope_forward = finch_cpu_rope_forward,
    .attention_forward = finch_cpu_attention_forward,
    .attention_forward_f16 = finch_cpu_attention_forward_f16,
    .to_f16 = finch_cpu_to_f16,
    .swiglu_forward = finch_cpu_swiglu_forward,
    .add = finch_cpu_add,
};
