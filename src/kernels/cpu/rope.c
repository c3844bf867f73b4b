/*
 * rope.c: rotary position embedding on adjacent pairs (llama.cpp's NORM mode):
 *   a' = a cos(p θ_i) - b sin(p θ_i),  b' = a sin(p θ_i) + b cos(p θ_i),
 *   (a, b) = (x[2i], x[2i+1]),  θ_i = theta^(-2i/D).
 * Angles are computed in double, so the rotation is exact to f32 rounding (llama.cpp
 * builds θ_i by repeated f32 multiplication; the difference is in the last bits).
 */
#include "kernels/cpu/cpu.h"

#include <math.h>

/* th[i] = theta^(-2i/D), i < D/2: once per call rather than per token. */
static void freqs(double *th, int D, float theta) {
    for (int i = 0; i < D / 2; i++) th[i] = pow((double)theta, -2.0 * i / D);
}

void finch_cpu_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta) {
    double th[D / 2 > 0 ? D / 2 : 1];
    freqs(th, D, theta);
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        for (int i = 0; i < D / 2; i++) {
            double ang = (double)pos[t] * th[i];
            float c = (float)cos(ang), s = (float)sin(ang);
            for (int h = 0; h < nh; h++) {
                float *p = x + (t * nh + h) * D + 2 * i;
                float a = p[0], b = p[1];
                p[0] = a * c - b * s;
                p[1] = a * s + b * c;
            }
        }
    }
}

/* The forward is a rotation by +angle, an orthogonal map, so its gradient is the rotation
 * by -angle:  da = a' c + b' s,  db = -a' s + b' c. */
void finch_cpu_rope_backward(float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta) {
    double th[D / 2 > 0 ? D / 2 : 1];
    freqs(th, D, theta);
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        for (int i = 0; i < D / 2; i++) {
            double ang = (double)pos[t] * th[i];
            float c = (float)cos(ang), s = (float)sin(ang);
            for (int h = 0; h < nh; h++) {
                float *p = dx + (t * nh + h) * D + 2 * i;
                float a = p[0], b = p[1];
                p[0] = a * c + b * s;
                p[1] = b * c - a * s;
            }
        }
    }
}

/* llama.cpp's RoPE (ggml_rope_cache_init and rotate_pairs): the angle of pair i starts at
 * pos and is multiplied by theta^(-2/D) (powf) once per pair, in f32; finch's adjacent
 * pairs are the pairs of llama.cpp's NORM and NEOX modes alike. The products fuse as ggml's
 * compiler fuses them (checked against llama.cpp's rope output). */
void finch_cpu_rope_llamacpp(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta) {
    const float ratio = powf(theta, -2.0f / (float)D);
#pragma omp parallel for schedule(static) if (T > 4)
    for (int64_t t = 0; t < T; t++) {
        float ang = (float)pos[t];
        for (int i = 0; i < D / 2; i++, ang *= ratio) {
            const float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < nh; h++) {
                float *p = x + (t * nh + h) * D + 2 * i;
                const float a = p[0], b = p[1];
                p[0] = finch_fmaf(a, c, -(b * s));
                p[1] = finch_fmaf(a, s, b * c);
            }
        }
    }
}
