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
 * Python scalars are doubles that torch rounds to float before the float32 loop
 * (finch_adamw_scalars_at); the loop is the CPU backend's adamw_step (kernels/cpu/adamw.c:
 * these operations lane by lane, no fused multiply-adds).
 */
#include "optim.h"

#include <math.h>

finch_adamw_config finch_adamw_config_default(void) {
    return (finch_adamw_config){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
}

finch_adamw_scalars finch_adamw_scalars_at(const finch_adamw_config *cfg, double lr, int64_t t,
                                           bool decay) {
    /* torch: bias_correction1 = 1 - beta1 ** step, in Python doubles. */
    double bc1 = 1.0 - pow(cfg->beta1, (double)t);
    double bc2 = 1.0 - pow(cfg->beta2, (double)t);
    return (finch_adamw_scalars){
        .decay = decay ? (float)(1.0 - lr * cfg->weight_decay) : 1.0f,
        .b1 = (float)cfg->beta1,
        .one_b1 = (float)(1.0 - cfg->beta1),
        .b2 = (float)cfg->beta2,
        .one_b2 = (float)(1.0 - cfg->beta2),
        .bc2_sqrt = (float)sqrt(bc2),
        .eps = (float)cfg->eps,
        .neg_step_size = (float)(-(lr / bc1)),
        .grad_scale = 1.0f,
    };
}

/* The arrays are host memory: the CPU backend's loop (vectorized, the same bits on every
 * instruction set), looked up once. */
static const finch_backend *host_backend(void) {
    static const finch_backend *be;
    const finch_backend *b = __atomic_load_n(&be, __ATOMIC_ACQUIRE);
    if (!b) {
        finch_err e;
        b = finch_cpu_backend(&e);
        if (!b) b = finch_cpu_isa_backend(0); /* FINCH_CPU names no set here: the baseline */
        __atomic_store_n(&be, b, __ATOMIC_RELEASE);
    }
    return b;
}

void finch_adamw_step(float *p, float *m, float *v, const float *g, size_t n,
                      const finch_adamw_range *ranges, int n_ranges, const finch_adamw_config *cfg,
                      double lr, int64_t t) {
    finch_adamw_step_scaled(p, m, v, g, n, ranges, n_ranges, cfg, lr, t, 1.0f);
}

void finch_adamw_step_scaled(float *p, float *m, float *v, const float *g, size_t n,
                             const finch_adamw_range *ranges, int n_ranges,
                             const finch_adamw_config *cfg, double lr, int64_t t,
                             float grad_scale) {
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
    const finch_backend *be = host_backend();
    for (int r = 0; r < n_ranges; r++) {
        finch_adamw_scalars s = finch_adamw_scalars_at(cfg, lr, t, ranges[r].decay);
        s.grad_scale = grad_scale;
        size_t o = ranges[r].begin;
        be->adamw_step(p + o, m + o, v + o, g + o, (int64_t)ranges[r].count, &s);
    }
}

double finch_adamw_step_consume(float *p, float *m, float *v, float *g, size_t n, bool decay,
                                const finch_adamw_config *cfg, double lr, int64_t t) {
    FINCH_ASSERT(p && m && v && g && cfg && t >= 1);
    const finch_backend *be = host_backend();
    const finch_adamw_scalars s = finch_adamw_scalars_at(cfg, lr, t, decay);
    if (be->adamw_step_consume) return be->adamw_step_consume(p, m, v, g, (int64_t)n, &s);
    const double sq = finch_grad_sumsq(g, n);
    be->adamw_step(p, m, v, g, (int64_t)n, &s);
    finch_grad_zero(g, n);
    return sq;
}
