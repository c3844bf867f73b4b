/*
 * cpu.h: the CPU backend's ops, gathered into finch_backend_cpu by backend.c. Contracts
 * are those of the matching finch_backend members (kernels/kernels.h).
 */
#ifndef FINCH_KERNELS_CPU_H
#define FINCH_KERNELS_CPU_H

#include "kernels/kernels.h"

void finch_cpu_matmul(float *y, const float *x, const finch_weight *w, int64_t T,
                      finch_workspace *ws);
/* C (M, N) = A (M, K) . B (K, N), or += when accumulate; row-major with row strides lda,
 * ldb, ldc; single-threaded, the same bits every run (gemm.c). */
void finch_cpu_sgemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate);
/* bf16 products (gemm_bf16.c): operands rounded to bf16 and packed, sums in f32.
 * finch_bf16_pad: n rounded up to 32. pack_a: A (M, K) (or its transpose, trans: src is
 * (K, M)) into pad(M) x pad(K) values, zeros around. pack_b_nn: B (K, N) row-major into
 * VNNI panels of finch_bf16_b_size(K, N) values, zeros around; pack_b_rows: n rows of W
 * (each K values: B = W^T) as columns n0.. of such panels with pad(K) = Kp (the caller
 * zeroes columns it leaves out). gemm_bf16: C (M, N) = A . B (+= when acc), A packed with
 * row stride lda (its padded width), B packed; single-threaded. finch_bf16_amx: whether
 * the AMX path runs (else the same rounded operands go through finch_cpu_sgemm_nn). */
int64_t finch_bf16_pad(int64_t n);
void finch_bf16_pack_a(uint16_t *dst, const float *src, int64_t M, int64_t K, int64_t lds,
                       bool trans);
size_t finch_bf16_b_size(int64_t K, int64_t N);
void finch_bf16_pack_b_nn(uint16_t *dst, const float *B, int64_t K, int64_t N, int64_t ldb);
void finch_bf16_pack_b_rows(uint16_t *dst, int64_t Kp, int64_t n0, const float *W, int64_t n,
                            int64_t K, int64_t ldw);
void finch_cpu_gemm_bf16(int64_t M, int64_t N, int64_t K, const uint16_t *A, int64_t lda,
                         const uint16_t *Bp, float *C, int64_t ldc, bool acc);
bool finch_bf16_amx(void);
void finch_cpu_matmul_q8(float *y, const float *x, const finch_weight *w, int64_t T,
                         finch_workspace *ws);
void finch_cpu_attention_forward_f16(float *out, const float *q, const uint16_t *k,
                                     const uint16_t *v, int64_t T, int64_t pos0, int H, int KVH,
                                     int D, int64_t window, finch_workspace *ws);
void finch_cpu_to_f16(uint16_t *dst, const float *src, int64_t n);
void finch_cpu_embed(float *x, const int32_t *ids, int64_t T, const finch_weight *emb);
void finch_cpu_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T,
                               int64_t C, float eps);
void finch_cpu_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_cpu_attention_forward(float *out, const float *q, const float *k, const float *v,
                                 int64_t T, int64_t pos0, int H, int KVH, int D, int64_t window,
                                 finch_workspace *ws);
void finch_cpu_swiglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_cpu_add(float *y, const float *x, int64_t n);
void finch_cpu_scale(float *x, int64_t n, float a);
void finch_cpu_geglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_cpu_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                              const float *up, int64_t n);
void finch_cpu_layernorm_forward(float *y, float *stats, const float *x, const float *w,
                                 const float *b, int64_t T, int64_t C, float eps);
void finch_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                  const float *stats, const float *x, const float *w, int64_t T,
                                  int64_t C);
void finch_cpu_gelu_forward(float *y, const float *x, int64_t n);
void finch_cpu_gelu_backward(float *dx, const float *dy, const float *x, int64_t n);
void finch_cpu_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n);
void finch_cpu_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n);
void finch_cpu_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d);
void finch_cpu_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d);
void finch_cpu_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void finch_cpu_matmul_backward_input(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                     finch_workspace *ws);
void finch_cpu_matmul_backward_weight(float *dw, const float *dy, const float *x, int64_t T,
                                      int64_t rows, int64_t cols, finch_workspace *ws);
void finch_cpu_embed_backward(float *demb, const float *dx, const int32_t *ids, int64_t T,
                              int64_t C);
void finch_cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *rstd,
                                const float *x, const float *w, int64_t T, int64_t C);
void finch_cpu_rope_backward(float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_cpu_attention_forward_train(float *out, float *att, const float *q, const float *k,
                                       const float *v, const int32_t *seg,
                                       const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                       int KVH, int D, finch_workspace *ws);
void finch_cpu_attention_backward(float *dq, float *dk, float *dv, float *ds, const float *dout,
                                  const float *att, const float *q, const float *k, const float *v,
                                  const int32_t *seg, const finch_attn_prefix *pre, int64_t B,
                                  int64_t T, int H, int KVH, int D, finch_workspace *ws);
void finch_cpu_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n);
double finch_cpu_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                              int64_t N, int64_t V, float grad_scale);

#endif /* FINCH_KERNELS_CPU_H */
