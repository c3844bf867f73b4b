/*
 * norm.c: RMSNorm, y = x / sqrt(mean(x^2) + eps) * w, and the token-embedding lookup.
 * The sum of squares accumulates in double so the result is exact to f32 rounding.
 */
#include "kernels/cpu/cpu.h"

#include <math.h>

void finch_cpu_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w,
                               int64_t T, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        float *yt = y + t * C;
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += (double)xt[c] * xt[c];
        float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        if (rstd) rstd[t] = r;
        for (int64_t c = 0; c < C; c++) yt[c] = xt[c] * r * w[c];
    }
}

void finch_cpu_embed(float *x, const int32_t *ids, int64_t T, const finch_weight *emb) {
    finch_dequant_fn dq = finch_dtype_info[emb->type].dequant;
    for (int64_t t = 0; t < T; t++) {
        FINCH_ASSERT(ids[t] >= 0 && ids[t] < emb->rows);
        dq(x + t * emb->cols, (const uint8_t *)emb->data + (size_t)ids[t] * emb->row_bytes,
           emb->cols);
    }
}
