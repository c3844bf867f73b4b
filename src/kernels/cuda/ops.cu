/*
 * ops.cu: the elementwise, per-row and per-column ops on the device: RMSNorm, RoPE,
 * SwiGLU, GeGLU, LayerNorm and GELU (GPT-2), the residual add and scalings, the sites'
 * column ops and dropout, the embedding's gradient, f16 rounding, fused softmax +
 * cross-entropy and AdamW.
 *
 * Each is written in the host kernel's order of f32 operations (the build has
 * --fmad=false, as the host has -ffp-contract=off), and sums over a row accumulate in
 * double where the host's do, so the results differ from the CPU's only by the device's
 * expf (within 2 ulp of the host's), the order of a block's partial sums, and cos/sin of
 * the same double angles. Column sums (RMSNorm's weight gradient, col_dot, the embedding
 * gradient, LayerNorm's) give each column to one thread that adds the rows in order: the
 * host's bits, and no atomics, so every run gives the same bits. AdamW, dropout (the same
 * hash) and the f16 rounding are the host's bit for bit.
 */
#include "kernels/cuda/cuda.h"

#include <cuda_fp16.h>
#include <math.h>

namespace {

constexpr int ROW_THREADS = 256;

/* The sum of v over the block (ROW_THREADS threads), returned to every thread. */
template <typename F> __device__ F block_sum(F v, F *sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    F s = 0;
    for (int i = 0; i < (int)blockDim.x / 32; i++) s += sh[i];
    return s;
}

__device__ float block_max(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int i = 0; i < (int)blockDim.x / 32; i++) m = fmaxf(m, sh[i]);
    return m;
}

/* ---- RMSNorm ---- */

__global__ void rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int64_t T,
                            int64_t C, float eps) {
    __shared__ double sh[32];
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const float *xt = x + t * C;
        double ss = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += (double)xt[c] * xt[c];
        ss = block_sum(ss, sh);
        float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        if (rstd && threadIdx.x == 0) rstd[t] = r;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[t * C + c] = xt[c] * r * w[c];
    }
}

/* dw_c += sum over t, in order, of dy x r: column c to one thread. */
__global__ void rmsnorm_bwd_w(float *dw, const float *dy, const float *rstd, const float *x,
                              int64_t T, int64_t C) {
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C;
         c += (int64_t)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int64_t t = 0; t < T; t++) acc += dy[t * C + c] * x[t * C + c] * rstd[t];
        dw[c] += acc;
    }
}

/* dx_i = r w_i dy_i - (r^3 / C sum_j dy_j w_j x_j) x_i */
__global__ void rmsnorm_bwd_x(float *dx, const float *dy, const float *rstd, const float *x,
                              const float *w, int64_t T, int64_t C) {
    __shared__ double sh[32];
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const float *xt = x + t * C, *dyt = dy + t * C;
        double s = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += (double)dyt[c] * w[c] * xt[c];
        s = block_sum(s, sh);
        float r = rstd[t], k = (float)((double)r * r * r / (double)C * s);
        __syncthreads(); /* every thread has read its dy before dx (which may alias it) */
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            dx[t * C + c] = r * w[c] * dyt[c] - k * xt[c];
    }
}

/* ---- RoPE: adjacent pairs (x[2i], x[2i+1]) rotated by pos * theta^(-2i/D), the angle in
 * double as kernels/cpu/rope.c; dir -1 rotates back (the gradient). ---- */

__global__ void rope(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta,
                     float dir) {
    const int half = D / 2;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < T * half;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = e / half;
        int i = (int)(e % half);
        double ang = (double)pos[t] * pow((double)theta, -2.0 * i / D);
        float c = (float)cos(ang), s = (float)sin(ang) * dir;
        for (int h = 0; h < nh; h++) {
            float *p = x + (t * nh + h) * D + 2 * i;
            float a = p[0], b = p[1];
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
    }
}

/* ---- elementwise ---- */

#define FOR_N(i, n)                                                                                \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

__global__ void swiglu_fwd(float *h, const float *gate, const float *up, int64_t n) {
    FOR_N(i, n) {
        float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

__global__ void swiglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                           const float *up, int64_t n) {
    FOR_N(i, n) {
        float g = gate[i], d = dh[i], s = 1.0f / (1.0f + expf(-g));
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

__global__ void add_k(float *y, const float *x, int64_t n) {
    FOR_N(i, n) y[i] += x[i];
}

__global__ void scale_k(float *x, int64_t n, float a) {
    FOR_N(i, n) x[i] *= a;
}

__global__ void scale_cols_k(float *y, const float *x, const float *s, int64_t T, int64_t n) {
    FOR_N(i, T * n) y[i] = x[i] * s[i % n];
}

__global__ void col_dot_k(float *ds, const float *a, const float *b, int64_t T, int64_t n) {
    FOR_N(c, n) {
        float acc = 0.0f;
        for (int64_t t = 0; t < T; t++) acc += b ? a[t * n + c] * b[t * n + c] : a[t * n + c];
        ds[c] += acc;
    }
}

/* Column c of every row ids[t], in t order: repeated ids add up as on the host. */
__global__ void embed_bwd(float *demb, const float *dx, const int32_t *ids, int64_t T, int64_t C) {
    FOR_N(c, C) {
        for (int64_t t = 0; t < T; t++) demb[(int64_t)ids[t] * C + c] += dx[t * C + c];
    }
}

__global__ void adamw(float *p, float *m, float *v, const float *g, int64_t n,
                      finch_adamw_scalars s) {
    FOR_N(i, n) {
        float gi = g[i] * s.grad_scale;
        float pi = p[i] * s.decay;
        float mi = m[i] * s.b1 + s.one_b1 * gi;
        float vi = v[i] * s.b2 + s.one_b2 * gi * gi;
        float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
        p[i] = pi + s.neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

/* ---- softmax + cross-entropy ---- */

/* *count = the unmasked targets (one block). */
__global__ void xent_count(long long *count, const int32_t *targets, int64_t N) {
    __shared__ long long sh[32];
    long long n = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) n += targets[i] >= 0;
    n = block_sum(n, sh);
    if (threadIdx.x == 0) *count = n;
}

/* One block per row: m = max, sum = sum e^(l - m) in double, loss = log sum - (l_t - m)
 * into loss[i - i0]; dl = e^(l - m) (float)(scale / sum), minus scale at the target. */
__global__ void xent_rows(double *loss, float *dlogits, const float *logits, const int32_t *targets,
                          int64_t i0, int64_t i1, int64_t V, const long long *count,
                          float grad_scale) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    for (int64_t i = i0 + blockIdx.x; i < i1; i += gridDim.x) {
        const float *l = logits + i * V;
        float *dl = dlogits ? dlogits + i * V : nullptr;
        int32_t tg = targets[i];
        if (tg < 0) {
            if (dl)
                for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dl[j] = 0.0f;
            if (threadIdx.x == 0) loss[i - i0] = 0.0;
            continue;
        }
        float mx = -INFINITY, lt = l[tg];
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
        mx = block_max(mx, shf);
        double sum = 0;
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) sum += expf(l[j] - mx);
        sum = block_sum(sum, shd); /* its barriers: every thread has read lt */
        if (threadIdx.x == 0) loss[i - i0] = log(sum) - ((double)lt - mx);
        if (dl) {
            long long n = *count;
            float scale = grad_scale != 0.0f ? grad_scale : (n ? (float)(1.0 / (double)n) : 0.0f);
            float f = (float)((double)scale / sum);
            for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
                float e = expf(l[j] - mx) * f;
                dl[j] = j == tg ? e - scale : e;
            }
        }
        __syncthreads(); /* shared sums reused by the next row */
    }
}

/* ---- GeGLU and GELU (tanh form): gelu(g) = g s, s = 1 / (1 + e^(-2u)),
 * u = sqrt(2/pi) (g + 0.044715 g^3), as kernels/cpu/swiglu.c ---- */

#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

__device__ __forceinline__ float gelu_s(float g) {
    return 1.0f / (1.0f + expf(-2.0f * GELU_C * (g + GELU_A * g * g * g)));
}

__device__ __forceinline__ float gelu_d(float g, float s) {
    return s + 2.0f * g * s * (1.0f - s) * GELU_C * (1.0f + 3.0f * GELU_A * g * g);
}

__global__ void geglu_fwd(float *h, const float *gate, const float *up, int64_t n) {
    FOR_N(i, n) {
        float g = gate[i];
        h[i] = g * gelu_s(g) * up[i];
    }
}

__global__ void geglu_bwd(float *dgate, float *dup, const float *dh, const float *gate,
                          const float *up, int64_t n) {
    FOR_N(i, n) {
        float g = gate[i], d = dh[i], s = gelu_s(g);
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * gelu_d(g, s);
    }
}

__global__ void gelu_fwd(float *y, const float *x, int64_t n) {
    FOR_N(i, n) {
        float g = x[i];
        y[i] = g * gelu_s(g);
    }
}

__global__ void gelu_bwd(float *dx, const float *dy, const float *x, int64_t n) {
    FOR_N(i, n) {
        float g = x[i];
        dx[i] = dy[i] * gelu_d(g, gelu_s(g));
    }
}

__global__ void to_f16_k(uint16_t *dst, const float *src, int64_t n) {
    FOR_N(i, n) dst[i] = __half_as_ushort(__float2half_rn(src[i]));
}

/* ---- dropout: element i kept when mix64(base + i) >= threshold (core.h's finch_mix64,
 * the same constants) ---- */

__device__ __forceinline__ bool kept(finch_dropout d, int64_t i) {
    uint64_t z = d.base + (uint64_t)i;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (z ^ (z >> 31)) >= d.threshold;
}

__global__ void dropout_fwd(float *y, const float *x, int64_t n, finch_dropout d) {
    FOR_N(i, n) y[i] = kept(d, i) ? x[i] * d.scale : 0.0f;
}

__global__ void dropout_bwd(float *dx, const float *g, int64_t n, finch_dropout d) {
    FOR_N(i, n) if (kept(d, i)) dx[i] = dx[i] + g[i] * d.scale;
}

/* ---- LayerNorm (GPT-2): y = (x - mu) r w + b, sums in double, as kernels/cpu/norm.c ---- */

__global__ void layernorm_fwd(float *y, float *stats, const float *x, const float *w,
                              const float *b, int64_t T, int64_t C, float eps) {
    __shared__ double sh[32];
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const float *xt = x + t * C;
        double s = 0, ss = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xt[c];
        const double mu = block_sum(s, sh) / (double)C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += (xt[c] - mu) * (xt[c] - mu);
        ss = block_sum(ss, sh);
        const float m = (float)mu, r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        if (stats && threadIdx.x == 0) stats[2 * t] = m, stats[2 * t + 1] = r;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            y[t * C + c] = (xt[c] - m) * r * w[c] + b[c];
    }
}

/* dw_c += sum_t dy xh, db_c += sum_t dy: column c to one thread, rows in order. */
__global__ void layernorm_bwd_wb(float *dw, float *db, const float *dy, const float *stats,
                                 const float *x, int64_t T, int64_t C) {
    FOR_N(c, C) {
        float aw = 0.0f, ab = 0.0f;
        for (int64_t t = 0; t < T; t++) {
            const float m = stats[2 * t], r = stats[2 * t + 1], g = dy[t * C + c];
            aw += g * ((x[t * C + c] - m) * r);
            ab += g;
        }
        if (dw) dw[c] += aw;
        if (db) db[c] += ab;
    }
}

/* dx = r (g - mean(g) - xh mean(g xh)), g = dy w, xh = (x - mu) r */
__global__ void layernorm_bwd_x(float *dx, const float *dy, const float *stats, const float *x,
                                const float *w, int64_t T, int64_t C) {
    __shared__ double sh[32];
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const float *xt = x + t * C, *dyt = dy + t * C;
        const float m = stats[2 * t], r = stats[2 * t + 1];
        double sg = 0, sgx = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            double g = (double)dyt[c] * w[c];
            sg += g;
            sgx += g * ((xt[c] - m) * r);
        }
        sg = block_sum(sg, sh);
        sgx = block_sum(sgx, sh);
        const float mg = (float)(sg / (double)C), mgx = (float)(sgx / (double)C);
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            dx[t * C + c] = r * (dyt[c] * w[c] - mg - (xt[c] - m) * r * mgx);
    }
}

void launched() {
    FINCH_CU_LAUNCHED();
}

unsigned row_blocks(int64_t T) {
    return (unsigned)(T < 65535 ? (T > 0 ? T : 1) : 65535);
}

} // namespace

void finch_cuda_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T,
                                int64_t C, float eps) {
    if (T <= 0) return;
    rmsnorm_fwd<<<row_blocks(T), ROW_THREADS>>>(y, rstd, x, w, T, C, eps);
    launched();
}

void finch_cuda_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *rstd,
                                 const float *x, const float *w, int64_t T, int64_t C) {
    if (T <= 0) return;
    /* the weight's gradient first: it reads dy, which dx may overwrite */
    if (dw) rmsnorm_bwd_w<<<finch_cuda_blocks(C, 128), 128>>>(dw, dy, rstd, x, T, C);
    launched();
    rmsnorm_bwd_x<<<row_blocks(T), ROW_THREADS>>>(dx, dy, rstd, x, w, T, C);
    launched();
}

void finch_cuda_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta) {
    if (T <= 0 || D < 2) return;
    rope<<<finch_cuda_blocks(T * (D / 2), 128), 128>>>(x, pos, T, nh, D, theta, 1.0f);
    launched();
}

void finch_cuda_rope_backward(float *dx, const int32_t *pos, int64_t T, int nh, int D,
                              float theta) {
    if (T <= 0 || D < 2) return;
    rope<<<finch_cuda_blocks(T * (D / 2), 128), 128>>>(dx, pos, T, nh, D, theta, -1.0f);
    launched();
}

void finch_cuda_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    if (n <= 0) return;
    swiglu_fwd<<<finch_cuda_blocks(n, 256), 256>>>(h, gate, up, n);
    launched();
}

void finch_cuda_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                                const float *up, int64_t n) {
    if (n <= 0) return;
    swiglu_bwd<<<finch_cuda_blocks(n, 256), 256>>>(dgate, dup, dh, gate, up, n);
    launched();
}

void finch_cuda_add(float *y, const float *x, int64_t n) {
    if (n <= 0) return;
    add_k<<<finch_cuda_blocks(n, 256), 256>>>(y, x, n);
    launched();
}

void finch_cuda_scale(float *x, int64_t n, float a) {
    if (n <= 0) return;
    scale_k<<<finch_cuda_blocks(n, 256), 256>>>(x, n, a);
    launched();
}

void finch_cuda_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n) {
    if (T <= 0 || n <= 0) return;
    scale_cols_k<<<finch_cuda_blocks(T * n, 256), 256>>>(y, x, s, T, n);
    launched();
}

void finch_cuda_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n) {
    if (T <= 0 || n <= 0) return;
    col_dot_k<<<finch_cuda_blocks(n, 128), 128>>>(ds, a, b, T, n);
    launched();
}

void finch_cuda_embed_backward(float *demb, const float *dx, const int32_t *ids, int64_t T,
                               int64_t C) {
    if (T <= 0 || C <= 0) return;
    embed_bwd<<<finch_cuda_blocks(C, 128), 128>>>(demb, dx, ids, T, C);
    launched();
}

void finch_cuda_adamw_step(float *p, float *m, float *v, const float *g, int64_t n,
                           const finch_adamw_scalars *s) {
    if (n <= 0) return;
    adamw<<<finch_cuda_blocks(n, 256), 256>>>(p, m, v, g, n, *s);
    launched();
}

/* The rows' losses go to the scratch buffer a chunk at a time and are added on the host in
 * row order; the count of unmasked rows sits in front of them. */
double finch_cuda_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                               int64_t N, int64_t V, float grad_scale) {
    if (N <= 0) return 0.0;
    enum { CHUNK = 4096 };
    long long *count = (long long *)finch_cuda.scratch;
    double *loss = (double *)finch_cuda.scratch + 1, host[CHUNK], total = 0;
    xent_count<<<1, ROW_THREADS>>>(count, targets, N);
    launched();
    for (int64_t i0 = 0; i0 < N; i0 += CHUNK) {
        int64_t i1 = N - i0 < CHUNK ? N : i0 + CHUNK;
        xent_rows<<<row_blocks(i1 - i0), ROW_THREADS>>>(loss, dlogits, logits, targets, i0, i1, V,
                                                        count, grad_scale);
        launched();
        FINCH_CU(
            cudaMemcpy(host, loss, (size_t)(i1 - i0) * sizeof(double), cudaMemcpyDeviceToHost));
        for (int64_t i = 0; i < i1 - i0; i++) total += host[i];
    }
    long long n = 0;
    FINCH_CU(cudaMemcpy(&n, count, sizeof n, cudaMemcpyDeviceToHost));
    return n ? total / (double)n : 0.0;
}

void finch_cuda_geglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    if (n <= 0) return;
    geglu_fwd<<<finch_cuda_blocks(n, 256), 256>>>(h, gate, up, n);
    launched();
}

void finch_cuda_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n) {
    if (n <= 0) return;
    geglu_bwd<<<finch_cuda_blocks(n, 256), 256>>>(dgate, dup, dh, gate, up, n);
    launched();
}

void finch_cuda_gelu_forward(float *y, const float *x, int64_t n) {
    if (n <= 0) return;
    gelu_fwd<<<finch_cuda_blocks(n, 256), 256>>>(y, x, n);
    launched();
}

void finch_cuda_gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
    if (n <= 0) return;
    gelu_bwd<<<finch_cuda_blocks(n, 256), 256>>>(dx, dy, x, n);
    launched();
}

void finch_cuda_to_f16(uint16_t *dst, const float *src, int64_t n) {
    if (n <= 0) return;
    to_f16_k<<<finch_cuda_blocks(n, 256), 256>>>(dst, src, n);
    launched();
}

void finch_cuda_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d) {
    if (n <= 0) return;
    dropout_fwd<<<finch_cuda_blocks(n, 256), 256>>>(y, x, n, *d);
    launched();
}

void finch_cuda_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d) {
    if (n <= 0) return;
    dropout_bwd<<<finch_cuda_blocks(n, 256), 256>>>(dx, g, n, *d);
    launched();
}

void finch_cuda_layernorm_forward(float *y, float *stats, const float *x, const float *w,
                                  const float *b, int64_t T, int64_t C, float eps) {
    if (T <= 0) return;
    layernorm_fwd<<<row_blocks(T), ROW_THREADS>>>(y, stats, x, w, b, T, C, eps);
    launched();
}

void finch_cuda_layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                   const float *stats, const float *x, const float *w, int64_t T,
                                   int64_t C) {
    if (T <= 0) return;
    /* the parameters' gradients first: they read dy, which dx may overwrite */
    if (dw || db) layernorm_bwd_wb<<<finch_cuda_blocks(C, 128), 128>>>(dw, db, dy, stats, x, T, C);
    launched();
    layernorm_bwd_x<<<row_blocks(T), ROW_THREADS>>>(dx, dy, stats, x, w, T, C);
    launched();
}
