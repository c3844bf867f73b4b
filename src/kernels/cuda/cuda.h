/*
 * cuda.h: what the files of kernels/cuda/ share: the process's CUDA context (one device,
 * one cuBLAS handle, one scratch buffer), launch helpers and the ops each file defines,
 * which backend.cu gathers into the op table. Contracts are those of the finch_backend
 * members (kernels/kernels.h) with every array pointer in device memory.
 *
 * Everything runs on the legacy default stream, so the ops, cuBLAS and cudaMemcpy are
 * ordered among themselves without events. A launch that fails to start is a bug (bad
 * shapes from our own code) and aborts like FINCH_ASSERT; an error met while a kernel runs
 * (a fault: the context is lost) surfaces in the next sync or copy as FINCH_E_IO, or
 * aborts the next launch or softmax_xent (whose loss is read back inside the op).
 */
#ifndef FINCH_KERNELS_CUDA_H
#define FINCH_KERNELS_CUDA_H

/* core.h and quant.h are C11; these two keywords are all that C++ spells differently */
#define _Noreturn [[noreturn]]
#define _Static_assert static_assert
extern "C" {
#include "core/quant.h"
#include "kernels/kernels.h"
}

#include <cublas_v2.h>
#include <cuda_runtime.h>

/* The process's device state, made once by finch_cuda_backend (backend.cu). */
struct finch_cuda_ctx {
    int device;          /* the CUDA device ordinal: the local MPI rank's turn, else 0 */
    int sm_count;        /* its multiprocessors */
    cublasHandle_t blas; /* on the default stream, CUBLAS_DEFAULT_MATH (no TF32) */
    void *scratch;       /* FINCH_CUDA_SCRATCH bytes for dequantized tiles and sums */
};
extern finch_cuda_ctx finch_cuda;

/* Bytes of the scratch buffer: the dequantized tile of a matmul band (16 Mi floats) */
#define FINCH_CUDA_SCRATCH ((size_t)64 << 20)

/* Aborts naming file, line and the CUDA or cuBLAS error: a launch or call that our own
 * arguments made fail. */
[[noreturn]] void finch_cuda_fail(const char *file, int line, const char *what, const char *msg);
#define FINCH_CU(call)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) finch_cuda_fail(__FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
    } while (0)
#define FINCH_CUBLAS(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            finch_cuda_fail(__FILE__, __LINE__, #call, cublasGetStatusString(s_));                 \
    } while (0)
/* After a <<<>>> launch: the configuration was accepted. */
#define FINCH_CU_LAUNCHED() FINCH_CU(cudaPeekAtLastError())

/* Blocks of `threads` threads covering n items, capped for grid-stride loops. */
static inline unsigned finch_cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads, cap = (int64_t)finch_cuda.sm_count * 32;
    if (b < 1) b = 1;
    return (unsigned)(b < cap ? b : cap);
}

/* matmul.cu */
void finch_cuda_matmul(float *y, const float *x, const finch_weight *w, int64_t T,
                       finch_workspace *ws);
void finch_cuda_matmul_backward_input(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                      finch_workspace *ws);
void finch_cuda_matmul_backward_weight(float *dw, const float *dy, const float *x, int64_t T,
                                       int64_t rows, int64_t cols, finch_workspace *ws);
void finch_cuda_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void finch_cuda_embed(float *x, const int32_t *ids, int64_t T, const finch_weight *emb);
bool finch_cuda_reads_type(finch_dtype t);

/* ops.cu */
void finch_cuda_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T,
                                int64_t C, float eps);
void finch_cuda_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *rstd,
                                 const float *x, const float *w, int64_t T, int64_t C);
void finch_cuda_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_cuda_rope_backward(float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_cuda_swiglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_cuda_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                                const float *up, int64_t n);
void finch_cuda_add(float *y, const float *x, int64_t n);
void finch_cuda_scale(float *x, int64_t n, float a);
void finch_cuda_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n);
void finch_cuda_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n);
void finch_cuda_embed_backward(float *demb, const float *dx, const int32_t *ids, int64_t T,
                               int64_t C);
double finch_cuda_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                               int64_t N, int64_t V, float grad_scale);
void finch_cuda_geglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_cuda_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n);
void finch_cuda_gelu_forward(float *y, const float *x, int64_t n);
void finch_cuda_gelu_backward(float *dx, const float *dy, const float *x, int64_t n);
void finch_cuda_to_f16(uint16_t *dst, const float *src, int64_t n);
void finch_cuda_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d);
void finch_cuda_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d);
void finch_cuda_layernorm_forward(float *y, float *stats, const float *x, const float *w,
                                  const float *b, int64_t T, int64_t C, float eps);
void finch_cuda_layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                   const float *stats, const float *x, const float *w, int64_t T,
                                   int64_t C);
void finch_cuda_adamw_step(float *p, float *m, float *v, const float *g, int64_t n,
                           const finch_adamw_scalars *s);

/* attention.cu */
void finch_cuda_attention_forward_train(float *out, float *stats, const float *q, const float *k,
                                        const float *v, const int32_t *seg,
                                        const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                        int KVH, int D, int64_t window, finch_workspace *ws);
void finch_cuda_attention_forward(float *out, const float *q, const float *k, const float *v,
                                  int64_t T, int64_t pos0, int H, int KVH, int D, int64_t window,
                                  finch_workspace *ws);
void finch_cuda_attention_backward(float *dq, float *dk, float *dv, float *sps, const float *dout,
                                   const float *out, const float *stats, const float *q,
                                   const float *k, const float *v, const int32_t *seg,
                                   const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                   int KVH, int D, int64_t window, finch_workspace *ws);

/* nccl.cu, in a build with NCCL's header (FINCH_HAVE_NCCL): whether the library opened,
 * then the collectives */
bool finch_cuda_nccl_load(void);
finch_status finch_cuda_group_id(void *id, finch_err *err);
finch_status finch_cuda_group_join(const void *id, int rank, int n, finch_err *err);
finch_status finch_cuda_group_sum(float *x, int64_t n, finch_err *err);

#endif /* FINCH_KERNELS_CUDA_H */
