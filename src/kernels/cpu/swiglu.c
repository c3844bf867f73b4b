/*
 * swiglu.c: the gated activations h = act(gate) * up: SwiGLU (silu(x) = x / (1 + e^-x),
 * LLaMA) and GeGLU (gelu, tanh form, Gemma); GPT-2's plain GELU; the residual add and
 * scaling; and llama.cpp's forms of them for its numerics.
 *
 * The training activations run 16 or 8 lanes at a time with e^x from vexp.h (libm's expf,
 * one element per call, was most of their time). Each formula is written once, for a
 * float and for a vector of them (GCC's vector types take the scalar constants as
 * vectors, operation by operation), and the elements past the last whole vector take
 * finch_exp_lane: an element's bits do not depend on where it falls, so neither on the
 * threads.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/vexp.h"

#include <math.h>

#if defined(FINCH_VEXP16)
#define VL 16
typedef __m512 vf;
#define VLOAD _mm512_loadu_ps
#define VSTORE _mm512_storeu_ps
#define VEXP finch_exp16
#elif defined(FINCH_VEXP8)
#define VL 8
typedef __m256 vf;
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VEXP finch_exp8
#else
#define VL 1
#endif

/* gelu(g) = 0.5 g (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3), computed as g s with
 * s = 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)), which keeps its precision where tanh u is
 * near -1; gelu'(g) = s + 2 g s (1 - s) du/dg, du/dg = sqrt(2/pi) (1 + 3 0.044715 g^2).
 * silu(g) = g s with s = 1 / (1 + e^-g), silu'(g) = s (1 + g (1 - s)). */
#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f
#define SILU_S(g, EXP) (1.0f / (1.0f + EXP(0.0f - (g))))
#define SILU_D(g, s) ((s) * (1.0f + (g) * (1.0f - (s))))
#define GELU_S(g, EXP) (1.0f / (1.0f + EXP(-2.0f * GELU_C * ((g) + GELU_A * (g) * (g) * (g)))))
#define GELU_D(g, s)                                                                               \
    ((s) + 2.0f * (g) * (s) * (1.0f - (s)) * GELU_C * (1.0f + 3.0f * GELU_A * (g) * (g)))

/* Elements per task of the parallel loops: a multiple of every VL. */
enum { RUN = 1024 };

/* One run [i, e) of each activation: whole vectors, then one element at a time. */
static void swiglu_run(float *h, const float *gate, const float *up, int64_t i, int64_t e) {
#if VL > 1
    for (; i + VL <= e; i += VL) {
        const vf g = VLOAD(gate + i);
        VSTORE(h + i, g / (1.0f + VEXP(0.0f - g)) * VLOAD(up + i));
    }
#endif
    for (; i < e; i++) h[i] = gate[i] / (1.0f + finch_exp_lane(0.0f - gate[i])) * up[i];
}

/*   dgate = dh up silu'(gate),  dup = dh silu(gate) */
static void swiglu_back_run(float *dgate, float *dup, const float *dh, const float *gate,
                            const float *up, int64_t i, int64_t e) {
#if VL > 1
    for (; i + VL <= e; i += VL) {
        const vf g = VLOAD(gate + i), d = VLOAD(dh + i), s = SILU_S(g, VEXP);
        const vf u = VLOAD(up + i);
        VSTORE(dup + i, d * g * s);
        VSTORE(dgate + i, d * u * SILU_D(g, s));
    }
#endif
    for (; i < e; i++) {
        const float g = gate[i], d = dh[i], s = SILU_S(g, finch_exp_lane), u = up[i];
        dup[i] = d * g * s;
        dgate[i] = d * u * SILU_D(g, s);
    }
}

/* h = gelu(gate) up, or y = gelu(x) without up (up NULL) */
static void gelu_run(float *h, const float *gate, const float *up, int64_t i, int64_t e) {
#if VL > 1
    for (; i + VL <= e; i += VL) {
        const vf g = VLOAD(gate + i);
        vf y = g * GELU_S(g, VEXP);
        if (up) y = y * VLOAD(up + i);
        VSTORE(h + i, y);
    }
#endif
    for (; i < e; i++) {
        const float g = gate[i], y = g * GELU_S(g, finch_exp_lane);
        h[i] = up ? y * up[i] : y;
    }
}

/* dgate = dh up gelu'(gate) and dup = dh gelu(gate); without up (NULL) dgate = dh gelu'(gate) */
static void gelu_back_run(float *dgate, float *dup, const float *dh, const float *gate,
                          const float *up, int64_t i, int64_t e) {
#if VL > 1
    for (; i + VL <= e; i += VL) {
        const vf g = VLOAD(gate + i), d = VLOAD(dh + i), s = GELU_S(g, VEXP);
        if (up) {
            const vf u = VLOAD(up + i);
            VSTORE(dup + i, d * g * s);
            VSTORE(dgate + i, d * u * GELU_D(g, s));
        } else {
            VSTORE(dgate + i, d * GELU_D(g, s));
        }
    }
#endif
    for (; i < e; i++) {
        const float g = gate[i], d = dh[i], s = GELU_S(g, finch_exp_lane);
        if (up) {
            const float u = up[i];
            dup[i] = d * g * s;
            dgate[i] = d * u * GELU_D(g, s);
        } else {
            dgate[i] = d * GELU_D(g, s);
        }
    }
}

/* A forward run function over n elements, RUN at a time across the threads. */
static void forward_runs(void (*run)(float *, const float *, const float *, int64_t, int64_t),
                         float *h, const float *gate, const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i += RUN) run(h, gate, up, i, i + RUN < n ? i + RUN : n);
}

/* The same for a backward run function. */
static void backward_runs(void (*run)(float *, float *, const float *, const float *, const float *,
                                      int64_t, int64_t),
                          float *dgate, float *dup, const float *dh, const float *gate,
                          const float *up, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 16384)
    for (int64_t i = 0; i < n; i += RUN)
        run(dgate, dup, dh, gate, up, i, i + RUN < n ? i + RUN : n);
}

void finch_cpu_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    forward_runs(swiglu_run, h, gate, up, n);
}

void finch_cpu_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n) {
    backward_runs(swiglu_back_run, dgate, dup, dh, gate, up, n);
}

void finch_cpu_geglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    forward_runs(gelu_run, h, gate, up, n);
}

void finch_cpu_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                              const float *up, int64_t n) {
    backward_runs(gelu_back_run, dgate, dup, dh, gate, up, n);
}

/* GPT-2's MLP activation, the same tanh form and formulas as geglu without the up factor. */
void finch_cpu_gelu_forward(float *y, const float *x, int64_t n) {
    forward_runs(gelu_run, y, x, NULL, n);
}

void finch_cpu_gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
    backward_runs(gelu_back_run, dx, NULL, dy, x, NULL, n);
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

void finch_cpu_add(float *y, const float *x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void finch_cpu_scale(float *x, int64_t n, float a) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) x[i] *= a;
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
