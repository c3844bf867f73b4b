/* attention_rows.h: the row-at-a-time training attention, bench_attention's baseline
 * (attention_rows.c); the same contracts as finch_backend's attention_forward_train and
 * attention_backward (kernels/kernels.h), with a workspace of 2 (pre->n + T) floats a
 * thread. */
#ifndef FINCH_BENCH_ATTENTION_ROWS_H
#define FINCH_BENCH_ATTENTION_ROWS_H

#include "kernels/kernels.h"

void bench_rows_attention_forward_train(float *out, float *stats, const float *q, const float *k,
                                        const float *v, const int32_t *seg,
                                        const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                        int KVH, int D, int64_t window, finch_workspace *ws);
void bench_rows_attention_backward(float *dq, float *dk, float *dv, float *sps, const float *dout,
                                   const float *stats, const float *q, const float *k,
                                   const float *v, const int32_t *seg, const finch_attn_prefix *pre,
                                   int64_t B, int64_t T, int H, int KVH, int D, int64_t window,
                                   finch_workspace *ws);

#endif
