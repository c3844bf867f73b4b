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

void finch_cpu_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
