/*
 * swiglu.c: the gated activations h = act(gate) * up: SwiGLU (silu(x) = x / (1 + e^-x),
 * LLaMA) and GeGLU (gelu, tanh form, Gemma); the residual add and scaling.
 * SwiGLU takes e^x from vexp.h, 16 or 8 lanes at a time (libm's expf, one element per
 * call, was most of its time); an element's bits do not depend on whether it falls in a
 * vector or the tail, so neither on the threads.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/vexp.h"

#include <math.h>

#if defined(FINCH_VEXP16)
#define VL 16
typedef __m512 vf;
#define VLOAD _mm512_loadu_ps
#define VSTORE _mm512_storeu_ps
#define VSET _mm512_set1_ps
#define VADD _mm512_add_ps
#define VSUB _mm512_sub_ps
#define VMUL _mm512_mul_ps
#define VDIV _mm512_div_ps
#define VEXP finch_exp16
#elif defined(FINCH_VEXP8)
#define VL 8
typedef __m256 vf;
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VSET _mm256_set1_ps
#define VADD _mm256_add_ps
#define VSUB _mm256_sub_ps
#define VMUL _mm256_mul_ps
#define VDIV _mm256_div_ps
#define VEXP finch_exp8
#else
#define VL 1
#endif

/* Elements per task of the parallel loops: a multiple of every VL. */
enum { RUN = 1024 };

void finch_cpu_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    const int64_t runs = (n + RUN - 1) / RUN;
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t c = 0; c < runs; c++) {
        const int64_t e = c * RUN + RUN < n ? c * RUN + RUN : n;
        int64_t i = c * RUN;
#if VL > 1
        const vf one = VSET(1.0f), zero = VSET(0.0f);
        for (; i + VL <= e; i += VL) {
            vf g = VLOAD(gate + i);
            VSTORE(h + i, VMUL(VDIV(g, VADD(one, VEXP(VSUB(zero, g)))), VLOAD(up + i)));
        }
#endif
        for (; i < e; i++) h[i] = gate[i] / (1.0f + finch_exp_lane(0.0f - gate[i])) * up[i];
    }
}

/* llama.cpp's SwiGLU on an AVX-512 build (ggml_vec_swiglu_f32 per row): 16 lanes at a
 * time with expf_ggml, the row's last F % 16 elements with libm's expf. */
void finch_cpu_swiglu_llamacpp(float *h, const float *gate, const float *up, int64_t T, int64_t F) {
    const int64_t n_vec = F / 16 * 16;
#pragma omp parallel for schedule(static) if (T * F > 16384)
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < F; i++) {
            const int64_t k = t * F + i;
            float g = gate[k], e = i < n_vec ? finch_expf_ggml(0.0f - g) : expf(-g);
            h[k] = g / (1.0f + e) * up[k];
        }
}

/* silu(g) = g s(g), s the logistic function, silu'(g) = s (1 + g (1 - s)):
 *   dgate = dh up silu'(gate),  dup = dh silu(gate). */
void finch_cpu_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n) {
    const int64_t runs = (n + RUN - 1) / RUN;
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t c = 0; c < runs; c++) {
        const int64_t e = c * RUN + RUN < n ? c * RUN + RUN : n;
        int64_t i = c * RUN;
#if VL > 1
        const vf one = VSET(1.0f), zero = VSET(0.0f);
        for (; i + VL <= e; i += VL) {
            vf g = VLOAD(gate + i), d = VLOAD(dh + i);
            vf s = VDIV(one, VADD(one, VEXP(VSUB(zero, g))));
            vf u = VLOAD(up + i);
            VSTORE(dup + i, VMUL(VMUL(d, g), s));
            VSTORE(dgate + i, VMUL(VMUL(VMUL(d, u), s), VADD(one, VMUL(g, VSUB(one, s)))));
        }
#endif
        for (; i < e; i++) {
            float g = gate[i], d = dh[i], s = 1.0f / (1.0f + finch_exp_lane(0.0f - g));
            dup[i] = d * g * s;
            dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
        }
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

/* GELU as llama.cpp's CPU build computes it (ggml_vec_gelu_f32 with GGML_GELU_FP16): x is
 * rounded to f16 and looks up a table of f16 values, table[h] = f16(gelu(f32(h))), with
 * gelu(x) = 0.5 x (1 + tanhf(sqrt(2/pi) x (1 + 0.044715 x^2))) in f32; x <= -10 gives 0
 * and x >= 10 gives x itself. ggml's compiler contracts 1 + 0.044715 x * x into one fused
 * multiply-add (checked on all 65,536 entries against ggml's own op, see
 * tests/reference/make_gelu_llamacpp_fixture.py), so finch_fmaf here. The table is a pure
 * function of h: each entry is computed where it is needed, with no global table. */
static inline float gelu_f16_table(float x) {
    float h = finch_f16_to_f32(finch_f32_to_f16(x));
    float u = 0.79788456080286535587989211986876f * h * finch_fmaf(0.044715f * h, h, 1.0f);
    return finch_f16_to_f32(finch_f32_to_f16(0.5f * h * (1.0f + tanhf(u))));
}

void finch_cpu_gelu_llamacpp(float *y, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = x[i];
        y[i] = g <= -10.0f ? 0.0f : g >= 10.0f ? g : gelu_f16_table(g);
    }
}

/* ggml_vec_geglu_f32: the table's gelu(gate) times up in f32, gate * up from 10 up. */
void finch_cpu_geglu_llamacpp(float *h, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        h[i] = g <= -10.0f ? 0.0f : g >= 10.0f ? g * up[i] : gelu_f16_table(g) * up[i];
    }
}
