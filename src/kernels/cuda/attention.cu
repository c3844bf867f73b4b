/*
 * attention.cu: causal grouped-query attention on the device: over a cache for inference
 * (f32 keys and values), and for training with the segments of packed rows and sliding
 * windows of kernels/cpu/attention.c, and its
 * statistics: stats (B, H, T, 2) = each query row's softmax maximum and 1 / sum, from
 * which the backward has every probability again, so nothing T x T is stored.
 *
 * One warp per row: lane l holds dimensions l, l + 32, ... of the head (D <= 256), dot
 * products are summed across the warp by shuffles, and the forward runs an online softmax
 * (the running maximum rescales the running sum and output), one pass over the keys.
 * The backward runs in two passes so that every output has one owner and one summation
 * order (no atomics; the same bits every run):
 *   1. a warp per (row, query head, query): sp = sum_j P_j dP_j (into sps), then
 *      dq = sum_j dS_j k_j, with dP_j = dout . v_j, dS_j = P_j (dP_j - sp) / sqrt(D);
 *   2. a warp per (row, KV head, key j): over the group's query heads and the queries that
 *      see key j, dk_j = sum dS q, dv_j = sum P dout.
 * The results differ from the CPU's by summation order and the exponential (expf here, a
 * polynomial there): within f32 rounding, not the same bits.
 *
 * Not done: the prefix of keys and values (prefix tuning; pre must be NULL:
 * supports(FINCH_FEATURE_ATTN_PREFIX) is false), tiles of keys in shared memory (each warp
 * reads its keys from L2), and head dims above 256.
 */
#include "kernels/cuda/cuda.h"

#include <math.h>

namespace {

constexpr int WARPS = 4; /* rows per block */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The dot product of two head vectors held NPL values per lane. */
template <int NPL> __device__ __forceinline__ float dot_lanes(const float *a, const float *b) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; i++) s += a[i] * b[i];
    return warp_sum(s);
}

/* This lane's values of a head vector p (D floats), zero past D. */
template <int NPL> __device__ __forceinline__ void load_lanes(float *dst, const float *p, int D) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < NPL; i++) dst[i] = lane + 32 * i < D ? p[lane + 32 * i] : 0.0f;
}

template <int NPL> __device__ __forceinline__ void store_lanes(float *p, const float *src, int D) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < NPL; i++)
        if (lane + 32 * i < D) p[lane + 32 * i] = src[i];
}

/* One query (its lanes qv) over keys j0 .. j1 - 1 of kb, vb (rows kvs apart) by online
 * softmax: acc receives this lane's part of the output, *m the scores' maximum and the
 * return value 1 / (the sum of the exponentials). */
template <int NPL>
__device__ __forceinline__ float attend_keys(float *acc, float *m, const float *qv, const float *kb,
                                             const float *vb, int64_t kvs, int64_t j0, int64_t j1,
                                             int D, float scale) {
    float kv[NPL], mx = -INFINITY, l = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; i++) acc[i] = 0.0f;
    for (int64_t j = j0; j < j1; j++) {
        load_lanes<NPL>(kv, kb + j * kvs, D);
        float s = dot_lanes<NPL>(qv, kv) * scale;
        float mn = fmaxf(mx, s), c = expf(mx - mn), p = expf(s - mn);
        l = l * c + p;
        load_lanes<NPL>(kv, vb + j * kvs, D);
#pragma unroll
        for (int i = 0; i < NPL; i++) acc[i] = acc[i] * c + p * kv[i];
        mx = mn;
    }
    float inv = 1.0f / l;
#pragma unroll
    for (int i = 0; i < NPL; i++) acc[i] *= inv;
    *m = mx;
    return inv;
}

/* start[b T + t] = the first token of the segment holding token t of row b (0 without
 * segments): a thread per token, scanning back while seg repeats. */
__global__ void seg_starts(int32_t *start, const int32_t *seg, int64_t B, int64_t T) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < B * T;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = e / T, t = e % T;
        if (seg)
            while (t > 0 && seg[b * T + t - 1] == seg[b * T + t]) t--;
        else
            t = 0;
        start[e] = (int32_t)t;
    }
}

/* The first row key query t (its segment starting at s0) sees under window W. */
__device__ __forceinline__ int64_t first_key(int64_t s0, int64_t t, int64_t W) {
    return W > 0 && t - W + 1 > s0 ? t - W + 1 : s0;
}

template <int NPL>
__global__ void attn_fwd(float *out, float *stats, const float *q, const float *k, const float *v,
                         const int32_t *start, int64_t B, int64_t T, int H, int KVH, int D,
                         int64_t W, float scale) {
    const int64_t task = blockIdx.x * (int64_t)WARPS + threadIdx.x / 32;
    if (task >= B * H * T) return;
    const int64_t b = task / ((int64_t)H * T), t = task % T;
    const int h = (int)(task / T % H), g = h / (H / KVH);
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D;
    float qv[NPL], acc[NPL], m;
    load_lanes<NPL>(qv, q + (b * T + t) * qs + (int64_t)h * D, D);
    const float *kb = k + b * T * kvs + (int64_t)g * D, *vb = v + b * T * kvs + (int64_t)g * D;
    const float inv = attend_keys<NPL>(acc, &m, qv, kb, vb, kvs,
                                       first_key(start[b * T + t], t, W), t + 1, D, scale);
    store_lanes<NPL>(out + (b * T + t) * qs + (int64_t)h * D, acc, D);
    if (threadIdx.x % 32 == 0) {
        float *st = stats + ((b * H + h) * T + t) * 2;
        st[0] = m;
        st[1] = inv;
    }
}

/* Inference over a cache: query t (position pos0 + t) of head h sees keys j0 .. pos0 + t of
 * k, v (pos0 + T rows), j0 = pos0 + t + 1 - W under a window W > 0. */
template <int NPL>
__global__ void attn_cache_fwd(float *out, const float *q, const float *k, const float *v,
                               int64_t T, int64_t pos0, int H, int KVH, int D, int64_t W,
                               float scale) {
    const int64_t task = blockIdx.x * (int64_t)WARPS + threadIdx.x / 32;
    if (task >= T * H) return;
    const int64_t t = task / H, n = pos0 + t + 1;
    const int h = (int)(task % H), g = h / (H / KVH);
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D;
    float qv[NPL], acc[NPL], m;
    load_lanes<NPL>(qv, q + t * qs + (int64_t)h * D, D);
    attend_keys<NPL>(acc, &m, qv, k + (int64_t)g * D, v + (int64_t)g * D, kvs,
                     W > 0 && n > W ? n - W : 0, n, D, scale);
    store_lanes<NPL>(out + t * qs + (int64_t)h * D, acc, D);
}

/* Pass 1: per query row, sp and dq. */
template <int NPL>
__global__ void attn_bwd_q(float *dq, float *sps, const float *dout, const float *stats,
                           const float *q, const float *k, const float *v, const int32_t *start,
                           int64_t B, int64_t T, int H, int KVH, int D, int64_t W, float scale) {
    const int64_t task = blockIdx.x * (int64_t)WARPS + threadIdx.x / 32;
    if (task >= B * H * T) return;
    const int64_t b = task / ((int64_t)H * T), t = task % T;
    const int h = (int)(task / T % H), g = h / (H / KVH);
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D;
    const float *st = stats + ((b * H + h) * T + t) * 2;
    const float mx = st[0], inv = st[1];
    float qv[NPL], dov[NPL], kv[NPL], acc[NPL];
    load_lanes<NPL>(qv, q + (b * T + t) * qs + (int64_t)h * D, D);
    load_lanes<NPL>(dov, dout + (b * T + t) * qs + (int64_t)h * D, D);
    const float *kb = k + b * T * kvs + (int64_t)g * D, *vb = v + b * T * kvs + (int64_t)g * D;
    const int64_t lo = first_key(start[b * T + t], t, W);
    float sp = 0.0f;
    for (int64_t j = lo; j <= t; j++) {
        load_lanes<NPL>(kv, kb + j * kvs, D);
        float p = expf(dot_lanes<NPL>(qv, kv) * scale - mx) * inv;
        load_lanes<NPL>(kv, vb + j * kvs, D);
        sp += p * dot_lanes<NPL>(dov, kv);
    }
#pragma unroll
    for (int i = 0; i < NPL; i++) acc[i] = 0.0f;
    for (int64_t j = lo; j <= t; j++) {
        float kj[NPL];
        load_lanes<NPL>(kj, kb + j * kvs, D);
        float p = expf(dot_lanes<NPL>(qv, kj) * scale - mx) * inv;
        load_lanes<NPL>(kv, vb + j * kvs, D);
        float ds = p * (dot_lanes<NPL>(dov, kv) - sp) * scale;
#pragma unroll
        for (int i = 0; i < NPL; i++) acc[i] += ds * kj[i];
    }
    store_lanes<NPL>(dq + (b * T + t) * qs + (int64_t)h * D, acc, D);
    if (threadIdx.x % 32 == 0) sps[(b * H + h) * T + t] = sp;
}

/* Pass 2: per key row j of KV head g, the queries that see it: t >= j in its segment (the
 * run of equal seg values), t < j + W under a window. */
template <int NPL>
__global__ void attn_bwd_kv(float *dk, float *dv, const float *sps, const float *dout,
                            const float *stats, const float *q, const float *k, const float *v,
                            const int32_t *seg, int64_t B, int64_t T, int H, int KVH, int D,
                            int64_t W, float scale) {
    const int64_t task = blockIdx.x * (int64_t)WARPS + threadIdx.x / 32;
    if (task >= B * KVH * T) return;
    const int64_t b = task / ((int64_t)KVH * T), j = task % T;
    const int g = (int)(task / T % KVH), group = H / KVH;
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D;
    float kj[NPL], vj[NPL], x[NPL], dka[NPL], dva[NPL];
    load_lanes<NPL>(kj, k + (b * T + j) * kvs + (int64_t)g * D, D);
    load_lanes<NPL>(vj, v + (b * T + j) * kvs + (int64_t)g * D, D);
#pragma unroll
    for (int i = 0; i < NPL; i++) dka[i] = dva[i] = 0.0f;
    int64_t t1 = T; /* one past the last query that sees key j */
    if (W > 0 && j + W < t1) t1 = j + W;
    for (int hh = 0; hh < group; hh++) {
        const int h = g * group + hh;
        for (int64_t t = j; t < t1; t++) {
            if (seg && seg[b * T + t] != seg[b * T + j]) break;
            const float *st = stats + ((b * H + h) * T + t) * 2;
            load_lanes<NPL>(x, q + (b * T + t) * qs + (int64_t)h * D, D);
            float p = expf(dot_lanes<NPL>(x, kj) * scale - st[0]) * st[1];
            float qx[NPL];
#pragma unroll
            for (int i = 0; i < NPL; i++) qx[i] = x[i];
            load_lanes<NPL>(x, dout + (b * T + t) * qs + (int64_t)h * D, D);
            float ds = p * (dot_lanes<NPL>(x, vj) - sps[(b * H + h) * T + t]) * scale;
#pragma unroll
            for (int i = 0; i < NPL; i++) {
                dka[i] += ds * qx[i];
                dva[i] += p * x[i];
            }
        }
    }
    store_lanes<NPL>(dk + (b * T + j) * kvs + (int64_t)g * D, dka, D);
    store_lanes<NPL>(dv + (b * T + j) * kvs + (int64_t)g * D, dva, D);
}

unsigned task_blocks(int64_t n) {
    return (unsigned)((n + WARPS - 1) / WARPS);
}

void check_shapes(const finch_attn_prefix *pre, int H, int KVH, int D) {
    FINCH_ASSERT(!pre || pre->n == 0); /* no prefix on the device (the header says so) */
    FINCH_ASSERT(KVH > 0 && H % KVH == 0 && D > 0 && D <= 256);
}

int32_t *starts(const int32_t *seg, int64_t B, int64_t T) {
    FINCH_ASSERT((size_t)(B * T) * sizeof(int32_t) <= FINCH_CUDA_SCRATCH);
    int32_t *s = (int32_t *)finch_cuda.scratch;
    seg_starts<<<finch_cuda_blocks(B * T, 256), 256>>>(s, seg, B, T);
    FINCH_CU_LAUNCHED();
    return s;
}

} // namespace

/* Instantiates the kernel for the lanes' share of D and launches it. */
#define FINCH_ATTN_LAUNCH(kern, n_tasks, D, ...)                                                   \
    do {                                                                                           \
        unsigned nb_ = task_blocks(n_tasks);                                                       \
        if ((D) <= 32)                                                                             \
            kern<1><<<nb_, WARPS * 32>>>(__VA_ARGS__);                                             \
        else if ((D) <= 64)                                                                        \
            kern<2><<<nb_, WARPS * 32>>>(__VA_ARGS__);                                             \
        else if ((D) <= 128)                                                                       \
            kern<4><<<nb_, WARPS * 32>>>(__VA_ARGS__);                                             \
        else                                                                                       \
            kern<8><<<nb_, WARPS * 32>>>(__VA_ARGS__);                                             \
        FINCH_CU_LAUNCHED();                                                                       \
    } while (0)

void finch_cuda_attention_forward_train(float *out, float *stats, const float *q, const float *k,
                                        const float *v, const int32_t *seg,
                                        const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                        int KVH, int D, int64_t window, finch_workspace *ws) {
    (void)ws;
    check_shapes(pre, H, KVH, D);
    if (B <= 0 || T <= 0) return;
    const float scale = 1.0f / sqrtf((float)D);
    const int32_t *st = starts(seg, B, T);
    FINCH_ATTN_LAUNCH(attn_fwd, B * H * T, D, out, stats, q, k, v, st, B, T, H, KVH, D, window,
                      scale);
}

void finch_cuda_attention_backward(float *dq, float *dk, float *dv, float *sps, const float *dout,
                                   const float *out,
                                   const float *stats, const float *q, const float *k,
                                   const float *v, const int32_t *seg, const finch_attn_prefix *pre,
                                   int64_t B, int64_t T, int H, int KVH, int D, int64_t window,
                                   finch_workspace *ws) {
    (void)ws;
    (void)out; /* attn_bwd_q sums P dP over the keys itself */
    check_shapes(pre, H, KVH, D);
    if (B <= 0 || T <= 0) return;
    const float scale = 1.0f / sqrtf((float)D);
    const int32_t *st = starts(seg, B, T);
    FINCH_ATTN_LAUNCH(attn_bwd_q, B * H * T, D, dq, sps, dout, stats, q, k, v, st, B, T, H, KVH, D,
                      window, scale);
    FINCH_ATTN_LAUNCH(attn_bwd_kv, B * KVH * T, D, dk, dv, sps, dout, stats, q, k, v, seg, B, T, H,
                      KVH, D, window, scale);
}

void finch_cuda_attention_forward(float *out, const float *q, const float *k, const float *v,
                                  int64_t T, int64_t pos0, int H, int KVH, int D, int64_t window,
                                  finch_workspace *ws) {
    (void)ws;
    check_shapes(NULL, H, KVH, D);
    if (T <= 0) return;
    const float scale = 1.0f / sqrtf((float)D);
    FINCH_ATTN_LAUNCH(attn_cache_fwd, T * H, D, out, q, k, v, T, pos0, H, KVH, D, window, scale);
}
