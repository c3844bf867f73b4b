/*
 * swiglu.c: the gated activations h = act(gate) * up: SwiGLU (silu(x) = x / (1 + e^-x),
 * LLaMA) and GeGLU (gelu, tanh form, Gemma); the residual add and scaling.
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

void finch_cpu_scale(float *x, int64_t n, float a) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) x[i] *= a;
}

/* gelu(g) = 0.5 g (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3), computed as g s with
 * s = 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)), which keeps its precision where tanh u is
 * near -1; gelu'(g) = s + 2 g s (1 - s) du/dg, du/dg = sqrt(2/pi) (1 + 3 0.044715 g^2). */
#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

void finch_cpu_geglu_forward(float *h, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-2.0f * GELU_C * (g + GELU_A * g * g * g)));
        h[i] = g * s * up[i];
    }
}

void finch_cpu_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                              const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], d = dh[i];
        float s = 1.0f / (1.0f + expf(-2.0f * GELU_C * (g + GELU_A * g * g * g)));
        float dgelu = s + 2.0f * g * s * (1.0f - s) * GELU_C * (1.0f + 3.0f * GELU_A * g * g);
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * dgelu;
    }
}

/* GPT-2's MLP activation, the same tanh form and formulas as geglu without the up factor. */
void finch_cpu_gelu_forward(float *y, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = x[i], s = 1.0f / (1.0f + expf(-2.0f * GELU_C * (g + GELU_A * g * g * g)));
        y[i] = g * s;
    }
}

void finch_cpu_gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = x[i];
        float s = 1.0f / (1.0f + expf(-2.0f * GELU_C * (g + GELU_A * g * g * g)));
        dx[i] = dy[i] * (s + 2.0f * g * s * (1.0f - s) * GELU_C * (1.0f + 3.0f * GELU_A * g * g));
    }
}
