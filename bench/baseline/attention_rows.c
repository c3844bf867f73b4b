/*
 * attention_rows.c: finch's training attention as it was before the tiled kernel
 * (src/kernels/cpu/attention.c at commit 2f8675a), kept only as bench_attention's
 * baseline: one query row at a time, a dot product per key and an axpy per value, the
 * backward's second pass entry by entry. Compiled for x86-64-v4 as the library's avx512
 * copy of it was; only its AVX2 paths ever ran there too.
 */
#include "kernels/cpu/cpu.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "attention_rows.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* a . b over D elements (8 lanes, then a fixed horizontal sum). */
static inline float dot_f32(const float *a, const float *b, int D) {
    int d = 0;
    float s = 0;
#ifdef HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; d + 8 <= D; d += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
    s = hsum8(acc);
#endif
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

#ifdef HAVE_AVX2
/* e^x in 8 lanes, Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-5
 * polynomial, 2^n into the exponent bits; within 2 ulp of expf over the clamped range
 * [-88.38, 88.38] (the softmax only feeds it scores minus their maximum, <= 0). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)),
                      _mm256_set1_ps(-88.3762626647949f));
    __m256 fx = _mm256_floor_ps(
        _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}
#endif

/* p[j] = e^(p[j] - mx) for j < n; returns their sum (8 lanes, then the tail). */
static inline float exp_sum(float *p, int64_t n, float mx) {
    int64_t j = 0;
    float sum = 0;
#ifdef HAVE_AVX2
    __m256 m = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), m));
        _mm256_storeu_ps(p + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum8(acc);
#endif
    for (; j < n; j++) sum += (p[j] = expf(p[j] - mx));
    return sum;
}

/* s[i] = a . b_i for the n rows b_i = b + i * stride (D elements each): four rows at a
 * time share the loads of a; each row sums as dot_f32 does (8 lanes, then hsum8). */
static inline void dots_f32(float *s, const float *a, const float *b, int64_t stride, int64_t n,
                            int D) {
    int64_t i = 0;
#ifdef HAVE_AVX2
    if (D % 8 == 0)
        for (; i + 4 <= n; i += 4) {
            const float *b0 = b + i * stride, *b1 = b0 + stride, *b2 = b1 + stride,
                        *b3 = b2 + stride;
            __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
            for (int d = 0; d < D; d += 8) {
                __m256 x = _mm256_loadu_ps(a + d);
                c0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(b0 + d), c0);
                c1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(b1 + d), c1);
                c2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(b2 + d), c2);
                c3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(b3 + d), c3);
            }
            s[i] = hsum8(c0);
            s[i + 1] = hsum8(c1);
            s[i + 2] = hsum8(c2);
            s[i + 3] = hsum8(c3);
        }
#endif
    for (; i < n; i++) s[i] = dot_f32(a, b + i * stride, D);
}

/* o (D) += p * v (D) */
static inline void axpy_f32(float *o, float p, const float *v, int D) {
    int d = 0;
#ifdef HAVE_AVX2
    __m256 pp = _mm256_set1_ps(p);
    for (; d + 8 <= D; d += 8)
        _mm256_storeu_ps(o + d,
                         _mm256_fmadd_ps(pp, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
#endif
    for (; d < D; d++) o[d] += p * v[d];
}

/* Training attention: B rows of T tokens, causal within each row and, with seg, within
 * each segment: token t attends to tokens j <= t of the run of equal seg values that
 * holds t, and to nothing before it, so packed examples never see each other.
 *
 * A window W > 0 (the block's sliding window) keeps, as the inference kernel does, only
 * keys at positions above the query's position less W. Positions count from the prefix:
 * a segment starting at s0 is the sequence [prefix keys 0..P-1, tokens s0..] that an
 * inference session holds in its cache (virtual tokens first, model/forward.c), so query t
 * is at position P + t - s0 and sees
 *   row keys j   with max(s0, t - W + 1) <= j <= t,
 *   prefix keys j with P + (t - s0) - W + 1 <= j < P
 * (the prefix drops out of the window once a segment is W - P tokens in, exactly as it
 * leaves an inference cache's window). Work outside those ranges is never done. */

/* Query rows per task: small enough that (row, head, block) tasks balance over threads
 * when B * H is small, large enough that each task's start-up is noise. */
#define ROWS 16

/* The first index of the segment holding t in a row's seg (NULL: the whole row). */
static inline int64_t seg_start(const int32_t *sg, int64_t t) {
    if (!sg) return 0;
    while (t > 0 && sg[t - 1] == sg[t]) t--;
    return t;
}

/* e^x exactly as exp8 computes a lane (the same operations, one at a time). */
static inline float exp_lane(float x) {
    x = fmaxf(fminf(x, 88.3762626647949f), -88.3762626647949f);
    float fx = floorf(fmaf(x, 1.44269504088896341f, 0.5f));
    x = fmaf(-fx, 0.693359375f, x);
    x = fmaf(-fx, -2.12194440e-4f, x);
    float y = 1.9875691500e-4f;
    y = fmaf(y, x, 1.3981999507e-3f);
    y = fmaf(y, x, 8.3334519073e-3f);
    y = fmaf(y, x, 4.1665795894e-2f);
    y = fmaf(y, x, 1.6666665459e-1f);
    y = fmaf(y, x, 5.0000001201e-1f);
    y = fmaf(y, x * x, x + 1.0f);
    int32_t n = ((int32_t)fx + 127) << 23;
    float p;
    memcpy(&p, &n, sizeof p);
    return y * p;
}

/* e^x for element u of a run of n that exp_sum exponentiated: its 8-lane part or its
 * tail, so that a probability recomputed alone has the bits the row's softmax gave it. */
static inline float exp_at(float x, int64_t u, int64_t n) {
#ifdef HAVE_AVX2
    if (u < (n & ~(int64_t)7)) return exp_lane(x);
#else
    (void)u, (void)n;
#endif
    return expf(x);
}

/* The keys query t (of the segment starting at s0) sees under window W (0: none): row keys
 * [*lo, t] and prefix keys [*pl, P). */
static inline void row_range(int64_t *lo, int64_t *pl, int64_t s0, int64_t t, int64_t P,
                             int64_t W) {
    *lo = s0;
    *pl = 0;
    if (W > 0) {
        if (t - W + 1 > s0) *lo = t - W + 1;
        int64_t f = P + (t - s0) - W + 1;
        *pl = f < 0 ? 0 : f > P ? P : f;
    }
}

/* One query row's probabilities into at (S = P + T floats: the prefix keys, then the
 * row's keys, zero outside [pl, P) and [lo, t], row_range's), its softmax's maximum and
 * 1 / sum into st[0], st[1]. Prefix keys come first in every sum, so with none the
 * arithmetic is the same as without the prefix. Each run (prefix, row) is exponentiated
 * from its first visible key, which exp_at's u and n count from. */
static void row_probs(float *at, float *st, const float *qt, const float *pk, int64_t pstride,
                      int64_t P, int64_t pl, const float *kb, int64_t kvs, int64_t lo, int64_t t,
                      int64_t T, int D, float scale) {
    float *ak = at + P, mx = -INFINITY;
    if (P > pl) dots_f32(at + pl, qt, pk + pl * pstride, pstride, P - pl, D);
    dots_f32(ak + lo, qt, kb + lo * kvs, kvs, t + 1 - lo, D);
    for (int64_t j = pl; j < P; j++) {
        at[j] *= scale;
        if (at[j] > mx) mx = at[j];
    }
    for (int64_t j = lo; j <= t; j++) {
        ak[j] *= scale;
        if (ak[j] > mx) mx = ak[j];
    }
    float inv = 1.0f / (exp_sum(at + pl, P - pl, mx) + exp_sum(ak + lo, t + 1 - lo, mx));
    for (int64_t j = pl; j < P; j++) at[j] *= inv;
    for (int64_t j = lo; j <= t; j++) ak[j] *= inv;
    memset(at, 0, (size_t)pl * sizeof(float));
    memset(ak, 0, (size_t)lo * sizeof(float));
    memset(ak + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
    st[0] = mx;
    st[1] = inv;
}

/* The thread's slice of ws as two rows of S floats. */
static float *rows_of(finch_workspace *ws, int64_t S) {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    FINCH_ASSERT(ws && ws->per_thread >= (size_t)(2 * S));
    return ws->buf + (size_t)tid * ws->per_thread;
}

/* Forward: one task per (row b, query head h, block of ROWS queries); the segment start
 * is found once per block and then followed along it. Each query row's probabilities live
 * in the thread's workspace while they weight the values; what backward needs to have
 * them again is the row's maximum and 1 / sum (stats: (B, H, T, 2)), so memory stays
 * linear in T. */
void bench_rows_attention_forward_train(float *out, float *stats, const float *q, const float *k,
                                        const float *v, const int32_t *seg,
                                        const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                        int KVH, int D, int64_t window, finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D, nblk = (T + ROWS - 1) / ROWS;
    const int64_t P = pre ? pre->n : 0, S = P + T;
    const float scale = 1.0f / sqrtf((float)D);
    const int n_threads = ws ? ws->n_threads : 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads) if (B * H * nblk > 1)
    for (int64_t task = 0; task < B * H * nblk; task++) {
        int64_t b = task / (H * nblk), t0 = task % nblk * ROWS, t1 = t0 + ROWS < T ? t0 + ROWS : T;
        int h = (int)(task / nblk % H), g = h / group;
        const int32_t *sg = seg ? seg + b * T : NULL;
        const float *kb = k + b * T * kvs + (int64_t)g * D, *vb = v + b * T * kvs + (int64_t)g * D;
        const float *pk = P ? pre->k + (int64_t)g * D : NULL,
                    *pv = P ? pre->v + (int64_t)g * D : NULL;
        float *at = rows_of(ws, S), *ak = at + P;
        int64_t s0 = seg_start(sg, t0);
        for (int64_t t = t0; t < t1; t++) {
            if (sg && t > t0 && sg[t] != sg[t - 1]) s0 = t;
            int64_t lo, pl;
            row_range(&lo, &pl, s0, t, P, window);
            const float *qt = q + (b * T + t) * qs + (int64_t)h * D;
            row_probs(at, stats + ((b * H + h) * T + t) * 2, qt, pk, P ? pre->stride : 0, P, pl, kb,
                      kvs, lo, t, T, D, scale);
            float *ot = out + (b * T + t) * qs + (int64_t)h * D;
            memset(ot, 0, (size_t)D * sizeof(float));
            for (int64_t j = pl; j < P; j++) axpy_f32(ot, at[j], pv + j * pre->stride, D);
            for (int64_t j = lo; j <= t; j++) axpy_f32(ot, ak[j], vb + j * kvs, D);
        }
    }
}

/* The end (one past the last index) of the segment holding j in a row of T (sg NULL: T). */
static inline int64_t seg_end(const int32_t *sg, int64_t j, int64_t T) {
    if (!sg) return T;
    while (j + 1 < T && sg[j + 1] == sg[j]) j++;
    return j + 1;
}

/* dk_j (D) += sum_{i < n} ds[i * S] q_i and dv_j (D) += sum_{i < n} att[i * S] dout_i, where
 * ds and att point down a column of rows S apart (a key's entries in consecutive query rows) and
 * q_i = q + i * qs, dout_i likewise: the gradient of one key over a run of queries, summed in order
 * into accumulators held in registers, 32 features at a time. */
static void key_grads_add(float *dkj, float *dvj, const float *ds, const float *att, const float *q,
                          const float *dout, int64_t n, int64_t S, int64_t qs, int D) {
    int d = 0;
#ifdef HAVE_AVX2
    for (; d + 32 <= D; d += 32) {
        __m256 k0 = _mm256_loadu_ps(dkj + d), k1 = _mm256_loadu_ps(dkj + d + 8),
               k2 = _mm256_loadu_ps(dkj + d + 16), k3 = _mm256_loadu_ps(dkj + d + 24),
               v0 = _mm256_loadu_ps(dvj + d), v1 = _mm256_loadu_ps(dvj + d + 8),
               v2 = _mm256_loadu_ps(dvj + d + 16), v3 = _mm256_loadu_ps(dvj + d + 24);
        const float *qp = q + d, *dp = dout + d;
        for (int64_t i = 0; i < n; i++, qp += qs, dp += qs) {
            __m256 s = _mm256_set1_ps(ds[i * S]), p = _mm256_set1_ps(att[i * S]);
            k0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(qp), k0);
            k1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(qp + 8), k1);
            k2 = _mm256_fmadd_ps(s, _mm256_loadu_ps(qp + 16), k2);
            k3 = _mm256_fmadd_ps(s, _mm256_loadu_ps(qp + 24), k3);
            v0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(dp), v0);
            v1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(dp + 8), v1);
            v2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(dp + 16), v2);
            v3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(dp + 24), v3);
        }
        _mm256_storeu_ps(dkj + d, k0);
        _mm256_storeu_ps(dkj + d + 8, k1);
        _mm256_storeu_ps(dkj + d + 16, k2);
        _mm256_storeu_ps(dkj + d + 24, k3);
        _mm256_storeu_ps(dvj + d, v0);
        _mm256_storeu_ps(dvj + d + 8, v1);
        _mm256_storeu_ps(dvj + d + 16, v2);
        _mm256_storeu_ps(dvj + d + 24, v3);
    }
#endif
    /* the rest (all of it without AVX2): one feature at a time, the same order */
    for (; d < D; d++) {
        float k = dkj[d], v = dvj[d];
        for (int64_t i = 0; i < n; i++) {
            k += ds[i * S] * q[i * qs + d];
            v += att[i * S] * dout[i * qs + d];
        }
        dkj[d] = k;
        dvj[d] = v;
    }
}

/* Queries per sweep of pass 2: the columns of ds and att and the q and dout rows of a
 * sweep (about 20 KB for D = 64) stay in L1 while each key of the block reads them. */
#define SWEEP 32

/* Query i's probability of a key and that entry's dS, as pass 1 computed them: the score
 * from the same dot product, its exponential from the same path of the row's softmax (u of
 * a run of n), then the row's statistics st (maximum, 1 / sum) and sp = sum_j P_j dP_j. */
static inline void entry(float *p, float *dsv, const float *qi, const float *kj, const float *di,
                         const float *vj, const float *st, float sp, int64_t u, int64_t n, int D,
                         float scale) {
    float sc = dot_f32(qi, kj, D) * scale;
    *p = exp_at(sc - st[0], u, n) * st[1];
    *dsv = *p * (dot_f32(di, vj, D) - sp) * scale;
}

/* With P a row of probabilities and S = q k^T / sqrt(D) its scores:
 *   dv_j += P_j dout,  dP_j = dout . v_j,  dS_j = P_j (dP_j - sum_i P_i dP_i),
 *   dq = sum_j dS_j k_j / sqrt(D),  dk_j += dS_j q / sqrt(D).
 * Two passes, so that every output has one owner and each sum runs in a fixed order
 * whatever the thread count (no float atomics):
 *   1. per (row, query head, block of queries): each query row's probabilities again (from
 *      the forward's statistics' own computation: the same bits), its dS, dq, and
 *      sp = sum_i P_i dP_i into sps (B, H, T);
 *   2. per (row, KV head, block of keys): dk and dv of those keys (key_grads_add),
 *      summing over the group's query heads, then over the queries t >= j of the key's
 *      segment (and window: t < j + W) in sweeps of SWEEP rows, each sweep's P and dS
 *      entries recomputed (entry); and per (KV head, block of prefix keys): their
 *      gradients summed over every row, head of the group and query, in that order (a
 *      sweep whose queries all have the block outside their window adds nothing).
 * Nothing T x T is stored: pass 2 recomputes the score and dP dot products of pass 1. */
void bench_rows_attention_backward(float *dq, float *dk, float *dv, float *sps, const float *dout,
                                   const float *stats, const float *q, const float *k,
                                   const float *v, const int32_t *seg, const finch_attn_prefix *pre,
                                   int64_t B, int64_t T, int H, int KVH, int D, int64_t window,
                                   finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D, nblk = (T + ROWS - 1) / ROWS;
    const int64_t P = pre ? pre->n : 0, S = P + T;
    const int64_t pblk = pre && pre->dk ? (P + ROWS - 1) / ROWS : 0;
    const float scale = 1.0f / sqrtf((float)D);
    const int n_threads = ws ? ws->n_threads : 1;
#pragma omp parallel num_threads(n_threads) if (B * H * nblk > 1)
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * H * nblk; task++) {
            int64_t b = task / (H * nblk), t0 = task % nblk * ROWS,
                    t1 = t0 + ROWS < T ? t0 + ROWS : T;
            int h = (int)(task / nblk % H), g = h / group;
            const int32_t *sg = seg ? seg + b * T : NULL;
            const float *kb = k + b * T * kvs + (int64_t)g * D,
                        *vb = v + b * T * kvs + (int64_t)g * D;
            const float *pk = P ? pre->k + (int64_t)g * D : NULL,
                        *pv = P ? pre->v + (int64_t)g * D : NULL;
            float *at = rows_of(ws, S), *dst = at + S, *ak = at + P, *dsk = dst + P;
            int64_t s0 = seg_start(sg, t0);
            for (int64_t t = t0; t < t1; t++) {
                if (sg && t > t0 && sg[t] != sg[t - 1]) s0 = t;
                int64_t lo, pl;
                row_range(&lo, &pl, s0, t, P, window);
                float st[2];
                row_probs(at, st, q + (b * T + t) * qs + (int64_t)h * D, pk, P ? pre->stride : 0, P,
                          pl, kb, kvs, lo, t, T, D, scale);
                const float *dot = dout + (b * T + t) * qs + (int64_t)h * D;
                float *dqt = dq + (b * T + t) * qs + (int64_t)h * D;
                double sp = 0;
                if (P > pl) dots_f32(dst + pl, dot, pv + pl * pre->stride, pre->stride, P - pl, D);
                dots_f32(dsk + lo, dot, vb + lo * kvs, kvs, t + 1 - lo, D);
                for (int64_t j = pl; j < P; j++) sp += (double)at[j] * dst[j];
                for (int64_t j = lo; j <= t; j++) sp += (double)ak[j] * dsk[j];
                float spf = (float)sp;
                sps[(b * H + h) * T + t] = spf;
                for (int64_t j = pl; j < P; j++) dst[j] = at[j] * (dst[j] - spf) * scale;
                for (int64_t j = lo; j <= t; j++) dsk[j] = ak[j] * (dsk[j] - spf) * scale;
                memset(dqt, 0, (size_t)D * sizeof(float));
                for (int64_t j = pl; j < P; j++) axpy_f32(dqt, dst[j], pk + j * pre->stride, D);
                for (int64_t j = lo; j <= t; j++) axpy_f32(dqt, dsk[j], kb + j * kvs, D);
            }
        }
        /* the implicit barrier: sps is complete */
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * KVH * nblk + KVH * pblk; task++) {
            float pl[SWEEP * ROWS], dl[SWEEP * ROWS]; /* a sweep's entries, ROWS keys a row */
            if (task >= B * KVH * nblk) {             /* a block of prefix keys, over every row */
                int64_t pt = task - B * KVH * nblk, j0 = pt % pblk * ROWS,
                        j1 = j0 + ROWS < P ? j0 + ROWS : P;
                int g = (int)(pt / pblk);
                for (int64_t b = 0; b < B; b++)
                    for (int h = g * group; h < (g + 1) * group; h++) {
                        const int32_t *sg = seg ? seg + b * T : NULL;
                        const float *qh = q + b * T * qs + (int64_t)h * D,
                                    *dh = dout + b * T * qs + (int64_t)h * D;
                        const float *sth = stats + (b * H + h) * T * 2;
                        const float *sph = sps + (b * H + h) * T;
                        int64_t s0 = 0; /* the segment start of query c0 + i */
                        for (int64_t c0 = 0; c0 < T; c0 += SWEEP) {
                            int64_t n = c0 + SWEEP < T ? SWEEP : T - c0;
                            bool seen = false; /* a query of the sweep sees a key of the block */
                            for (int64_t i = 0; i < n; i++) {
                                int64_t t = c0 + i, lo, f;
                                if (sg && t > 0 && sg[t] != sg[t - 1]) s0 = t;
                                row_range(&lo, &f, s0, t, P, window);
                                seen |= f < j1;
                                /* keys below f are outside the query's window: no share */
                                for (int64_t j = j0; j < j1; j++)
                                    if (j < f)
                                        pl[i * ROWS + j - j0] = dl[i * ROWS + j - j0] = 0;
                                    else
                                        entry(&pl[i * ROWS + j - j0], &dl[i * ROWS + j - j0],
                                              qh + t * qs, pre->k + j * pre->stride + g * D,
                                              dh + t * qs, pre->v + j * pre->stride + g * D,
                                              sth + t * 2, sph[t], j - f, P - f, D, scale);
                            }
                            for (int64_t j = j0; j < j1 && seen; j++)
                                key_grads_add(pre->dk + j * pre->stride + (int64_t)g * D,
                                              pre->dv + j * pre->stride + (int64_t)g * D,
                                              dl + j - j0, pl + j - j0, qh + c0 * qs, dh + c0 * qs,
                                              n, ROWS, qs, D);
                        }
                    }
                continue;
            }
            int64_t b = task / (KVH * nblk), j0 = task % nblk * ROWS,
                    j1 = j0 + ROWS < T ? j0 + ROWS : T;
            int g = (int)(task / nblk % KVH);
            const int32_t *sg = seg ? seg + b * T : NULL;
            const float *kb = k + b * T * kvs + (int64_t)g * D,
                        *vb = v + b * T * kvs + (int64_t)g * D;
            float *dkb = dk + b * T * kvs + (int64_t)g * D,
                  *dvb = dv + b * T * kvs + (int64_t)g * D;
            /* the queries that see key j: t in [j, e[j - j0]), the rest of j's segment
             * within the window; the segment starts at st0[j - j0] */
            int64_t e[ROWS], st0[ROWS];
            for (int64_t j = j0; j < j1; j++) {
                bool same = j > j0 && !(sg && sg[j] != sg[j - 1]);
                e[j - j0] = same ? e[j - j0 - 1] : seg_end(sg, j, T);
                st0[j - j0] = same ? st0[j - j0 - 1] : seg_start(sg, j);
                memset(dkb + j * kvs, 0, (size_t)D * sizeof(float));
                memset(dvb + j * kvs, 0, (size_t)D * sizeof(float));
            }
            if (window > 0)
                for (int64_t j = j0; j < j1; j++)
                    if (e[j - j0] > j + window) e[j - j0] = j + window;
            for (int h = g * group; h < (g + 1) * group; h++) {
                const float *qh = q + b * T * qs + (int64_t)h * D,
                            *dh = dout + b * T * qs + (int64_t)h * D;
                const float *sth = stats + (b * H + h) * T * 2;
                const float *sph = sps + (b * H + h) * T;
                for (int64_t c0 = j0; c0 < e[j1 - 1 - j0]; c0 += SWEEP) {
                    for (int64_t j = j0; j < j1; j++) {
                        int64_t lo = c0 > j ? c0 : j,
                                hi = c0 + SWEEP < e[j - j0] ? c0 + SWEEP : e[j - j0];
                        for (int64_t i = lo; i < hi; i++) {
                            /* query i's run of keys starts at r (row_range's lo) */
                            int64_t r = st0[j - j0];
                            if (window > 0 && i - window + 1 > r) r = i - window + 1;
                            entry(&pl[(i - c0) * ROWS + j - j0], &dl[(i - c0) * ROWS + j - j0],
                                  qh + i * qs, kb + j * kvs, dh + i * qs, vb + j * kvs, sth + i * 2,
                                  sph[i], j - r, i + 1 - r, D, scale);
                        }
                    }
                    for (int64_t j = j0; j < j1; j++) {
                        int64_t lo = c0 > j ? c0 : j,
                                hi = c0 + SWEEP < e[j - j0] ? c0 + SWEEP : e[j - j0];
                        if (lo < hi)
                            key_grads_add(dkb + j * kvs, dvb + j * kvs,
                                          dl + (lo - c0) * ROWS + j - j0,
                                          pl + (lo - c0) * ROWS + j - j0, qh + lo * qs,
                                          dh + lo * qs, hi - lo, ROWS, qs, D);
                    }
                }
            }
        }
    }
}
