/*
 * adamw.c: the AdamW update over flat float arrays, as torch.optim.AdamW (PyTorch 1.13,
 * _single_tensor_adamw, amsgrad and maximize off).
 *
 * It does not own m and v (they live in the training run's arena beside p and g) and
 * does not know tensors, only ranges with or without weight decay.
 *
 * Order of operations, matching torch's so results agree to float rounding:
 *   p = p * (float)(1 - lr*wd)                     param.mul_(1 - lr * weight_decay)
 *   m = m * b1 + (float)(1-b1) * g                 exp_avg.mul_(beta1).add_(grad, alpha)
 *   v = v * b2 + ((float)(1-b2) * g) * g           exp_avg_sq.mul_(beta2).addcmul_(g, g)
 *   denom = sqrt(v) / (float)sqrt(1 - b2^t) + eps
 *   p = p + ((float)(-lr / (1 - b1^t)) * m) / denom  param.addcdiv_(m, denom, -step_size)
 * Python scalars are doubles that torch rounds to float before the float32 loop; the
 * build has -ffp-contract=off, so no fused multiply-adds appear.
 */
#include "optim.h"

#include <math.h>

finch_adamw_config finch_adamw_config_default(void) {
    return (finch_adamw_config){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
}

/* One range; every element is independent, so any split across threads is exact. */
static void step_range(float *p, float *m, float *v, const float *g, size_t count, float decay,
                       float b1, float one_b1, float b2, float one_b2, float bc2_sqrt, float eps,
                       float neg_step_size) {
    int64_t N = (int64_t)count;
#pragma omp parallel for schedule(static) num_threads(finch_threads_get()) if (N > 32768)
    for (int64_t i = 0; i < N; i++) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = m[i] * b1 + one_b1 * gi;
        float vi = v[i] * b2 + one_b2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi + neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

void finch_adamw_step(float *p, float *m, float *v, const float *g, size_t n,
                      const finch_adamw_range *ranges, int n_ranges, const finch_adamw_config *cfg,
                      double lr, int64_t t) {
    FINCH_ASSERT(p && m && v && g && cfg && t >= 1 && n_ranges >= 0);
    FINCH_ASSERT(n_ranges == 0 || ranges);
    FINCH_ASSERT(cfg->beta1 >= 0 && cfg->beta1 < 1 && cfg->beta2 >= 0 && cfg->beta2 < 1);
    FINCH_ASSERT(cfg->eps > 0 && cfg->weight_decay >= 0 && lr >= 0);
    for (int r = 0; r < n_ranges; r++) {
        FINCH_ASSERT(ranges[r].begin <= n && ranges[r].count <= n - ranges[r].begin);
        for (int q = 0; q < r; q++) {
            const finch_adamw_range *a = &ranges[q], *b = &ranges[r];
            FINCH_ASSERT(a->begin + a->count <= b->begin || b->begin + b->count <= a->begin ||
                         a->count == 0 || b->count == 0);
        }
    }
    /* torch: bias_correction1 = 1 - beta1 ** step, in Python doubles. */
    double bc1 = 1.0 - pow(cfg->beta1, (double)t);
    double bc2 = 1.0 - pow(cfg->beta2, (double)t);
    float b1 = (float)cfg->beta1, one_b1 = (float)(1.0 - cfg->beta1);
    float b2 = (float)cfg->beta2, one_b2 = (float)(1.0 - cfg->beta2);
    float bc2_sqrt = (float)sqrt(bc2);
    float eps = (float)cfg->eps;
    float neg_step_size = (float)(-(lr / bc1));
    float decay_on = (float)(1.0 - lr * cfg->weight_decay);
    for (int r = 0; r < n_ranges; r++) {
        size_t o = ranges[r].begin;
        step_range(p + o, m + o, v + o, g + o, ranges[r].count, ranges[r].decay ? decay_on : 1.0f,
                   b1, one_b1, b2, one_b2, bc2_sqrt, eps, neg_step_size);
    }
}
