/*
 * swiglu.c: the SwiGLU activation h = silu(gate) * up, silu(x) = x / (1 + e^-x), and
 * the residual add.
 */
#include "kernels/cpu/cpu.h"

#include <math.h>

void finch_cpu_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* silu(g) = g s(g), s the logistic function, silu'(g) = s (1 + g (1 - s)):
 *   dgate = dh up silu'(gate),  dup = dh silu(gate). */
void finch_cpu_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], d = dh[i], s = 1.0f / (1.0f + expf(-g));
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

void finch_cpu_add(float *y, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
