/*
 * backend.c: the CPU backend's op table, one per instruction set the files are compiled
 * for (finch_backend_cpu_<set>, named "cpu-<set>"). The device part (host memory) and
 * AdamW are kernels/host.c's, the same for every set.
 */
#include "kernels/cpu/cpu.h"

const finch_backend finch_backend_cpu = {
    .name = "cpu-" FINCH_ISA_STR(FINCH_ISA),
    .matmul = finch_cpu_matmul,
    .matmul_q8 = finch_cpu_matmul_q8,
    .embed = finch_cpu_embed,
    .rmsnorm_forward = finch_cpu_rmsnorm_forward,
    .rope_forward = finch_cpu_rope_forward,
    .attention_forward = finch_cpu_attention_forward,
    .attention_forward_f16 = finch_cpu_attention_forward_f16,
    .to_f16 = finch_cpu_to_f16,
    .rmsnorm_llamacpp = finch_cpu_rmsnorm_llamacpp,
    .swiglu_llamacpp = finch_cpu_swiglu_llamacpp,
    .gelu_llamacpp = finch_cpu_gelu_llamacpp,
    .rope_llamacpp = finch_cpu_rope_llamacpp,
    .geglu_llamacpp = finch_cpu_geglu_llamacpp,
    .swiglu_forward = finch_cpu_swiglu_forward,
    .add = finch_cpu_add,
    .scale = finch_cpu_scale,
    .geglu_forward = finch_cpu_geglu_forward,
    .geglu_backward = finch_cpu_geglu_backward,
    .gemm = finch_cpu_gemm,
    .scale_cols = finch_cpu_scale_cols,
    .col_dot = finch_cpu_col_dot,
    .dropout_forward = finch_cpu_dropout_forward,
    .dropout_backward = finch_cpu_dropout_backward,
    .matmul_backward_input = finch_cpu_matmul_backward_input,
    .matmul_backward_weight = finch_cpu_matmul_backward_weight,
    .embed_backward = finch_cpu_embed_backward,
    .rmsnorm_backward = finch_cpu_rmsnorm_backward,
    .rope_backward = finch_cpu_rope_backward,
    .attention_forward_train = finch_cpu_attention_forward_train,
    .attention_backward = finch_cpu_attention_backward,
    .swiglu_backward = finch_cpu_swiglu_backward,
    .softmax_xent = finch_cpu_softmax_xent,
    .layernorm_forward = finch_cpu_layernorm_forward,
    .layernorm_backward = finch_cpu_layernorm_backward,
    .gelu_forward = finch_cpu_gelu_forward,
    .gelu_backward = finch_cpu_gelu_backward,
    .adamw_step = finch_host_adamw_step,
    .device = false,
    .supports = NULL, /* every storage type, the prefix, bf16 */
    .alloc = finch_host_alloc,
    .free = finch_host_free,
    .copy_in = finch_host_copy,
    .copy_out = finch_host_copy,
    .sync = finch_host_sync,
};
