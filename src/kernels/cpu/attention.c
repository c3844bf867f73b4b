/*
 * attention.c: causal grouped-query attention over a key/value cache.
 *   out[t, h] = sum_j softmax_j(q[t,h] . k[j,g] / sqrt(D)) v[j,g],  j <= pos0 + t,
 *   g = h / (H / KVH); with a sliding window W only the W latest positions (j > pos0 + t - W).
 * One (token, head) pair per task; its scores live in the thread's workspace slice.
 * Training attention (no cache, segments for packed rows, a prefix, a sliding window) and
 * its backward follow the inference ops: tiled as flash attention is (Dao et al., 2022:
 * blocks of queries against tiles of keys, an online softmax in the forward, the
 * probabilities recomputed in the backward from each row's maximum and sum), with tasks of
 * (row, head, block of queries) or (row, KV head, block of keys), each output owned by one
 * task that sums in a fixed order: the same bits at any thread count.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/vexp.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1
#endif

/* a . b over D elements (8 lanes, then a fixed horizontal sum). */
static inline float dot_f32(const float *a, const float *b, int D) {
    int d = 0;
    float s = 0;
#ifdef HAVE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; d + 8 <= D; d += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
    s = finch_cpu_hsum8(acc);
#endif
    for (; d < D; d++) s += a[d] * b[d];
    return s;
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

/* From this many new tokens on, attention_forward runs the tiled kernels below: one query
 * at a time, each key costs a 64-wide dot product and its horizontal sum, a scalar expf and
 * an axpy (Xeon, SmolLM2 pp512: 27 % of prompt processing's time). */
enum { TILED_MIN_T = 8 };

void finch_cpu_attention_forward(float *out, const float *q, const float *k, const float *v,
                                 int64_t T, int64_t pos0, int H, int KVH, int D, int64_t window,
                                 finch_workspace *ws) {
    if (T >= TILED_MIN_T && ws && ws->per_thread >= finch_cpu_attention_need(D)) {
        /* many queries (a prompt): training's tiled forward, the cached positions as the
         * prefix every new query sees (the window counts from the query's position in
         * both, so the keys seen are the same) */
        const int64_t kvs = (int64_t)KVH * D;
        const finch_attn_prefix pre = {.k = k, .v = v, .n = pos0, .stride = kvs};
        finch_cpu_attention_forward_train(out, NULL, q, k + pos0 * kvs, v + pos0 * kvs, NULL,
                                          pos0 ? &pre : NULL, 1, T, H, KVH, D, window, ws);
        return;
    }
    const int group = H / KVH;
    const int64_t kv_stride = (int64_t)KVH * D;
    const float scale = 1.0f / sqrtf((float)D);
    FINCH_ASSERT(ws && ws->per_thread >= (size_t)(pos0 + T));
#pragma omp parallel for schedule(dynamic, 1) num_threads(ws->n_threads) if (T * H > 1)
    for (int64_t th = 0; th < T * H; th++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *att = ws->buf + (size_t)tid * ws->per_thread;
        int64_t t = th / H;
        int h = (int)(th % H), g = h / group;
        int64_t n_kv = pos0 + t + 1, j0 = window > 0 && n_kv > window ? n_kv - window : 0;
        const float *qt = q + (t * H + h) * D;
        float mx = -INFINITY;
        for (int64_t j = j0; j < n_kv; j++) {
            float s = dot_f32(qt, k + j * kv_stride + (int64_t)g * D, D) * scale;
            att[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0;
        for (int64_t j = j0; j < n_kv; j++) {
            att[j] = expf(att[j] - mx);
            sum += att[j];
        }
        float inv = 1.0f / sum;
        float *ot = out + (t * H + h) * D;
        for (int d = 0; d < D; d++) ot[d] = 0;
        for (int64_t j = j0; j < n_kv; j++)
            axpy_f32(ot, att[j] * inv, v + j * kv_stride + (int64_t)g * D, D);
    }
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
 * leaves an inference cache's window).
 *
 * The kernels are blocked as flash attention is: BQ query rows of one head against tiles
 * of BK keys, each score tile a small matrix product (mm) of the queries with the tile's
 * keys packed transposed, then the probabilities times the values as another; a tile no
 * query of the block sees is never computed, and entries outside a query's range inside
 * a computed tile are masked. */

enum { BQ = FINCH_CPU_ATT_BQ, BK = FINCH_CPU_ATT_BK };

/* a * b + c as one fused step where the target has FMA (the vector lanes' arithmetic),
 * else as two roundings (the generic set's, -ffp-contract=off). */
static inline float madd(float a, float b, float c) {
#ifdef __FMA__
    return fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

#if defined(__AVX512F__)
#define VW 16
typedef __m512 vf;
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, x) _mm512_storeu_ps(p, x)
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#elif defined(HAVE_AVX2)
#define VW 8
typedef __m256 vf;
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, x) _mm256_storeu_ps(p, x)
#define VSET1(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#endif

/* C (m, n) = A (m, kk) . B (kk, n), or += with acc. A[i, k] is at A[i * ars + k * acs], so
 * A may be a row-major block or the transpose of one; B and C are row-major with row
 * strides ldb and ldc. Every element of C is one chain of multiply-adds (madd) over k in
 * order from 0 or from its old value, whichever block of registers computes it: 8 rows by
 * 2 vectors of VW lanes (AVX-512), 4 rows by 2 vectors, 4 rows by one, then single rows and
 * single columns. So an entry has the same bits in any tile, and at any thread count. */
static void mm(float *C, int64_t ldc, const float *A, int64_t ars, int64_t acs, const float *B,
               int64_t ldb, int m, int n, int kk, bool acc) {
    int i = 0;
#if defined(VW) && VW == 16
    /* 8 rows by 2 vectors (16 of the 32 registers accumulate), when those cover n */
    for (; i + 8 <= m && n % (2 * VW) == 0; i += 8) {
        const float *a = A + i * ars;
        float *c = C + i * ldc;
        for (int j = 0; j < n; j += 2 * VW) {
            vf c0[8], c1[8];
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                c0[r] = acc ? VLOAD(c + r * ldc + j) : VZERO();
                c1[r] = acc ? VLOAD(c + r * ldc + j + VW) : VZERO();
            }
            const float *ak = a, *bk = B + j;
            for (int k = 0; k < kk; k++, ak += acs, bk += ldb) {
                vf b0 = VLOAD(bk), b1 = VLOAD(bk + VW);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    vf x = VSET1(ak[r * ars]);
                    c0[r] = VFMA(x, b0, c0[r]);
                    c1[r] = VFMA(x, b1, c1[r]);
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                VSTORE(c + r * ldc + j, c0[r]);
                VSTORE(c + r * ldc + j + VW, c1[r]);
            }
        }
    }
#endif
#ifdef VW
    for (; i + 4 <= m; i += 4) {
        const float *a = A + i * ars;
        float *c = C + i * ldc;
        int j = 0;
        for (; j + 2 * VW <= n; j += 2 * VW) {
            vf c00 = VZERO(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
               c31 = c00;
            if (acc) {
                c00 = VLOAD(c + j), c01 = VLOAD(c + j + VW);
                c10 = VLOAD(c + ldc + j), c11 = VLOAD(c + ldc + j + VW);
                c20 = VLOAD(c + 2 * ldc + j), c21 = VLOAD(c + 2 * ldc + j + VW);
                c30 = VLOAD(c + 3 * ldc + j), c31 = VLOAD(c + 3 * ldc + j + VW);
            }
            const float *ak = a, *bk = B + j;
            for (int k = 0; k < kk; k++, ak += acs, bk += ldb) {
                vf b0 = VLOAD(bk), b1 = VLOAD(bk + VW), x = VSET1(ak[0]);
                c00 = VFMA(x, b0, c00), c01 = VFMA(x, b1, c01);
                x = VSET1(ak[ars]);
                c10 = VFMA(x, b0, c10), c11 = VFMA(x, b1, c11);
                x = VSET1(ak[2 * ars]);
                c20 = VFMA(x, b0, c20), c21 = VFMA(x, b1, c21);
                x = VSET1(ak[3 * ars]);
                c30 = VFMA(x, b0, c30), c31 = VFMA(x, b1, c31);
            }
            VSTORE(c + j, c00), VSTORE(c + j + VW, c01);
            VSTORE(c + ldc + j, c10), VSTORE(c + ldc + j + VW, c11);
            VSTORE(c + 2 * ldc + j, c20), VSTORE(c + 2 * ldc + j + VW, c21);
            VSTORE(c + 3 * ldc + j, c30), VSTORE(c + 3 * ldc + j + VW, c31);
        }
        for (; j + VW <= n; j += VW) {
            vf c0 = VZERO(), c1 = c0, c2 = c0, c3 = c0;
            if (acc)
                c0 = VLOAD(c + j), c1 = VLOAD(c + ldc + j), c2 = VLOAD(c + 2 * ldc + j),
                c3 = VLOAD(c + 3 * ldc + j);
            const float *ak = a, *bk = B + j;
            for (int k = 0; k < kk; k++, ak += acs, bk += ldb) {
                vf b0 = VLOAD(bk);
                c0 = VFMA(VSET1(ak[0]), b0, c0);
                c1 = VFMA(VSET1(ak[ars]), b0, c1);
                c2 = VFMA(VSET1(ak[2 * ars]), b0, c2);
                c3 = VFMA(VSET1(ak[3 * ars]), b0, c3);
            }
            VSTORE(c + j, c0), VSTORE(c + ldc + j, c1), VSTORE(c + 2 * ldc + j, c2);
            VSTORE(c + 3 * ldc + j, c3);
        }
        for (; j < n; j++)
            for (int r = 0; r < 4; r++) {
                float s = acc ? c[r * ldc + j] : 0;
                for (int k = 0; k < kk; k++) s = madd(a[r * ars + k * acs], B[k * ldb + j], s);
                c[r * ldc + j] = s;
            }
    }
    for (; i < m; i++) {
        const float *a = A + i * ars;
        float *c = C + i * ldc;
        int j = 0;
        for (; j + VW <= n; j += VW) {
            vf c0 = acc ? VLOAD(c + j) : VZERO();
            const float *ak = a, *bk = B + j;
            for (int k = 0; k < kk; k++, ak += acs, bk += ldb) c0 = VFMA(VSET1(*ak), VLOAD(bk), c0);
            VSTORE(c + j, c0);
        }
        for (; j < n; j++) {
            float s = acc ? c[j] : 0;
            for (int k = 0; k < kk; k++) s = madd(a[k * acs], B[k * ldb + j], s);
            c[j] = s;
        }
    }
#endif
    for (; i < m; i++)
        for (int j = 0; j < n; j++) {
            float s = acc ? C[i * ldc + j] : 0;
            for (int k = 0; k < kk; k++) s = madd(A[i * ars + k * acs], B[k * ldb + j], s);
            C[i * ldc + j] = s;
        }
}

/* kt (D, BK) = the n (<= BK) rows src + j * stride of D values, transposed, with zero
 * columns from n to BK: a tile of keys (or values) laid out for mm's B. */
static void pack_t(float *kt, const float *src, int64_t stride, int n, int D) {
    int j = 0;
#ifdef HAVE_AVX2
    /* 8 keys by 8 features at a time: an 8 x 8 transpose in registers */
    for (; j + 8 <= n; j += 8) {
        int d = 0;
        for (; d + 8 <= D; d += 8) {
            const float *s0 = src + j * stride + d;
            __m256 r0 = _mm256_loadu_ps(s0), r1 = _mm256_loadu_ps(s0 + stride),
                   r2 = _mm256_loadu_ps(s0 + 2 * stride), r3 = _mm256_loadu_ps(s0 + 3 * stride),
                   r4 = _mm256_loadu_ps(s0 + 4 * stride), r5 = _mm256_loadu_ps(s0 + 5 * stride),
                   r6 = _mm256_loadu_ps(s0 + 6 * stride), r7 = _mm256_loadu_ps(s0 + 7 * stride);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                   t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                   t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                   t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                   u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                   u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                   u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *o = kt + d * BK + j;
            _mm256_storeu_ps(o, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(o + BK, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(o + 2 * BK, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(o + 3 * BK, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(o + 4 * BK, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(o + 5 * BK, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(o + 6 * BK, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(o + 7 * BK, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
        for (; d < D; d++)
            for (int u = 0; u < 8; u++) kt[d * BK + j + u] = src[(j + u) * stride + d];
    }
#endif
    for (; j < n; j++)
        for (int d = 0; d < D; d++) kt[d * BK + j] = src[j * stride + d];
    for (int d = 0; d < D; d++)
        for (int j = n; j < BK; j++) kt[d * BK + j] = 0;
}

/* p[j] = e^(p[j] - mx) for j < n; returns their sum (16 lanes, then 8, summed, then the
 * tail in order). Every element has finch_exp_lane's bits whether it falls in a lane or in
 * the tail. */
static inline float exp_run(float *p, int64_t n, float mx) {
    int64_t j = 0;
    float sum = 0;
#ifdef HAVE_AVX2
    __m256 m = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
#if defined(__AVX512F__)
    if (n >= 16) {
        const __m512 m16 = _mm512_set1_ps(mx);
        __m512 acc16 = _mm512_setzero_ps();
        for (; j + 16 <= n; j += 16) {
            __m512 e = finch_exp16(_mm512_sub_ps(_mm512_loadu_ps(p + j), m16));
            _mm512_storeu_ps(p + j, e);
            acc16 = _mm512_add_ps(acc16, e);
        }
        acc = _mm256_add_ps(_mm512_castps512_ps256(acc16), _mm512_extractf32x8_ps(acc16, 1));
    }
#endif
    for (; j + 8 <= n; j += 8) {
        __m256 e = finch_exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), m));
        _mm256_storeu_ps(p + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = finch_cpu_hsum8(acc);
#endif
    for (; j < n; j++) sum += (p[j] = finch_exp_lane(p[j] - mx));
    return sum;
}

/* p[j] = e^(p[j] s - mx) f for j < n in one pass: scale_by, exp_run and scale_by in turn,
 * element by element the same operations, so the same bits. */
static inline void prob_run(float *p, int64_t n, float s, float mx, float f) {
    int64_t j = 0;
#ifdef HAVE_AVX2
#if defined(__AVX512F__)
    const __m512 s16 = _mm512_set1_ps(s), m16 = _mm512_set1_ps(mx), f16 = _mm512_set1_ps(f);
    for (; j + 16 <= n; j += 16) {
        const __m512 x = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p + j), s16), m16);
        _mm512_storeu_ps(p + j, _mm512_mul_ps(finch_exp16(x), f16));
    }
#endif
    const __m256 s8 = _mm256_set1_ps(s), m8 = _mm256_set1_ps(mx), f8 = _mm256_set1_ps(f);
    for (; j + 8 <= n; j += 8) {
        const __m256 x = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p + j), s8), m8);
        _mm256_storeu_ps(p + j, _mm256_mul_ps(finch_exp8(x), f8));
    }
#endif
    for (; j < n; j++) p[j] = finch_exp_lane(p[j] * s - mx) * f;
}

/* p[j] *= f for j < n (8 lanes, then the tail: the same product either way). */
static inline void scale_by(float *p, int64_t n, float f) {
    int64_t j = 0;
#ifdef HAVE_AVX2
    __m256 ff = _mm256_set1_ps(f);
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), ff));
#endif
    for (; j < n; j++) p[j] *= f;
}

/* p[j] *= f for j < n; returns the largest result. */
static inline float scale_max(float *p, int64_t n, float f) {
    int64_t j = 0;
    float mx = -INFINITY;
#ifdef HAVE_AVX2
    __m256 ff = _mm256_set1_ps(f), m = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= n; j += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(p + j), ff);
        _mm256_storeu_ps(p + j, x);
        m = _mm256_max_ps(m, x);
    }
    float l[8];
    _mm256_storeu_ps(l, m);
    for (int u = 0; u < 8; u++) mx = l[u] > mx ? l[u] : mx;
#endif
    for (; j < n; j++) {
        p[j] *= f;
        mx = p[j] > mx ? p[j] : mx;
    }
    return mx;
}

/* The first index of the segment holding t in a row's seg (NULL: the whole row). */
static inline int64_t seg_start(const int32_t *sg, int64_t t) {
    if (!sg) return 0;
    while (t > 0 && sg[t - 1] == sg[t]) t--;
    return t;
}

/* The end (one past the last index) of the segment holding j in a row of T (sg NULL: T). */
static inline int64_t seg_end(const int32_t *sg, int64_t j, int64_t T) {
    if (!sg) return T;
    while (j + 1 < T && sg[j + 1] == sg[j]) j++;
    return j + 1;
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

/* The ranges of n queries t0.. of a row (segment starts followed from *s0, the start of
 * t0's segment, which is left at the last query's): query i sees row keys [lo[i], hi[i]]
 * (hi[i] = t0 + i) and prefix keys [pl[i], ph[i]] (ph[i] = P - 1). lo never decreases
 * along the queries. */
static void query_ranges(int64_t *lo, int64_t *hi, int64_t *pl, int64_t *ph, int64_t *s0,
                         const int32_t *sg, int64_t t0, int n, int64_t P, int64_t W) {
    for (int i = 0; i < n; i++) {
        int64_t t = t0 + i;
        if (sg && t > 0 && sg[t] != sg[t - 1]) *s0 = t;
        row_range(&lo[i], &pl[i], *s0, t, P, W);
        hi[i] = t;
        ph[i] = P - 1;
    }
}

/* The thread's slice of ws: kt and vt (D, BK), s and dp (BQ, BK). */
static float *tiles_of(finch_workspace *ws, int D) {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    FINCH_ASSERT(ws && ws->per_thread >= finch_cpu_attention_need(D));
    return ws->buf + (size_t)tid * ws->per_thread;
}

/* One key source of a query block: the keys k + j * stride (values v + j * stride) for
 * j in [c0, c1); query i of the block sees [a[i], b[i]] of them. */
typedef struct {
    const float *k, *v;
    int64_t stride, c0, c1;
    const int64_t *a, *b;
} keys;

/* The rows [*r0, *r1) of n queries that see a key of the tile [c, c + nk), given that a[i]
 * never decreases and b[i] never decreases (row keys); false when none does. */
static bool rows_seeing(int *r0, int *r1, const keys *ks, int n, int64_t c, int nk) {
    int i0 = 0, i1 = n;
    while (i0 < n && ks->b[i0] < c) i0++;
    while (i1 > i0 && ks->a[i1 - 1] > c + nk - 1) i1--;
    *r0 = i0;
    *r1 = i1;
    return i0 < i1;
}

/* The visible part [*ja, *jb] of a tile [c, c + nk) for query range [a, b]; false when
 * empty. */
static inline bool visible(int *ja, int *jb, int64_t a, int64_t b, int64_t c, int nk) {
    int64_t x = a > c ? a - c : 0, y = b - c < nk - 1 ? b - c : nk - 1;
    *ja = (int)x;
    *jb = (int)y;
    return x <= y;
}

/* Forward over one key tile [c, c + nk) of ks for the queries [r0, r1) of a block (q and o
 * at their first row, rows qs apart): scores s = q . k^T / sqrt(D), then the online
 * softmax: each query's running maximum m and sum l move to the tile's maximum, its output
 * row is rescaled by e^(m_old - m_new), and the tile's probabilities e^(s - m_new) times
 * the tile's values are added to it. */
static void fwd_tile(float *o, float *m, float *l, const float *q, int64_t qs, const keys *ks,
                     int64_t c, int nk, int r0, int r1, int D, float scale, float *kt, float *s) {
    pack_t(kt, ks->k + c * ks->stride, ks->stride, nk, D);
    const int nc = (nk + 15) & ~15;
    mm(s, BK, q + r0 * qs, qs, 1, kt, BK, r1 - r0, nc, D, false);
    for (int i = r0; i < r1; i++) {
        float *si = s + (i - r0) * BK;
        int ja, jb;
        if (!visible(&ja, &jb, ks->a[i], ks->b[i], c, nk)) {
            memset(si, 0, (size_t)nk * sizeof(float));
            continue;
        }
        float mx = scale_max(si + ja, jb + 1 - ja, scale), mn = m[i] > mx ? m[i] : mx;
        float sum = exp_run(si + ja, jb + 1 - ja, mn);
        memset(si, 0, (size_t)ja * sizeof(float));
        memset(si + jb + 1, 0, (size_t)(nk - 1 - jb) * sizeof(float));
        if (m[i] != mn) {
            float alpha = m[i] == -INFINITY ? 0 : finch_exp_lane(m[i] - mn);
            scale_by(o + i * qs, D, alpha);
            l[i] *= alpha;
            m[i] = mn;
        }
        l[i] += sum;
    }
    mm(o + r0 * qs, qs, s, BK, 1, ks->v + c * ks->stride, ks->stride, r1 - r0, D, nk, true);
}

/* Forward: one task per (row b, query head h, block of BQ queries), the blocks with the
 * most keys first (dynamic scheduling then balances the causal triangle). The prefix's
 * tiles come first, then the row's keys from the lowest any query of the block sees. Each
 * query's maximum and 1 / sum go to stats (B, H, T, 2): backward has its probabilities
 * again from them, so memory stays linear in T. Inference passes stats NULL. */
void finch_cpu_attention_forward_train(float *out, float *stats, const float *q, const float *k,
                                       const float *v, const int32_t *seg,
                                       const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                       int KVH, int D, int64_t window, finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D, nblk = (T + BQ - 1) / BQ;
    const int64_t P = pre ? pre->n : 0;
    const float scale = 1.0f / sqrtf((float)D);
    const int n_threads = ws ? ws->n_threads : 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads) if (B * H * nblk > 1)
    for (int64_t task = 0; task < B * H * nblk; task++) {
        int64_t b = task / (H * nblk), t0 = (nblk - 1 - task % nblk) * BQ;
        int n = (int)(t0 + BQ < T ? BQ : T - t0);
        int h = (int)(task / nblk % H), g = h / group;
        const int32_t *sg = seg ? seg + b * T : NULL;
        float *kt = tiles_of(ws, D), *s = kt + 2 * BK * D;
        int64_t lo[BQ], hi[BQ], pl[BQ], ph[BQ], s0 = seg_start(sg, t0);
        float m[BQ], l[BQ];
        query_ranges(lo, hi, pl, ph, &s0, sg, t0, n, P, window);
        const float *qb = q + (b * T + t0) * qs + (int64_t)h * D;
        float *ob = out + (b * T + t0) * qs + (int64_t)h * D;
        for (int i = 0; i < n; i++) {
            m[i] = -INFINITY;
            l[i] = 0;
            memset(ob + i * qs, 0, (size_t)D * sizeof(float));
        }
        int64_t pmin = P;
        for (int i = 0; i < n; i++) pmin = pl[i] < pmin ? pl[i] : pmin;
        const keys kp = {P ? pre->k + (int64_t)g * D : NULL,
                         P ? pre->v + (int64_t)g * D : NULL,
                         P ? pre->stride : 0,
                         pmin,
                         P,
                         pl,
                         ph},
                   kr = {k + b * T * kvs + (int64_t)g * D,
                         v + b * T * kvs + (int64_t)g * D,
                         kvs,
                         lo[0],
                         t0 + n,
                         lo,
                         hi};
        for (int64_t c = kp.c0; c < kp.c1; c += BK)
            fwd_tile(ob, m, l, qb, qs, &kp, c, (int)(kp.c1 - c < BK ? kp.c1 - c : BK), 0, n, D,
                     scale, kt, s);
        for (int64_t c = kr.c0; c < kr.c1; c += BK) {
            int nk = (int)(kr.c1 - c < BK ? kr.c1 - c : BK), r0, r1;
            if (rows_seeing(&r0, &r1, &kr, n, c, nk))
                fwd_tile(ob, m, l, qb, qs, &kr, c, nk, r0, r1, D, scale, kt, s);
        }
        float *st = stats ? stats + ((b * H + h) * T + t0) * 2 : NULL;
        for (int i = 0; i < n; i++) {
            float inv = 1.0f / l[i];
            scale_by(ob + i * qs, D, inv);
            if (st) {
                st[2 * i] = m[i];
                st[2 * i + 1] = inv;
            }
        }
    }
}

/* Backward's view of one key tile [c, c + nk) of ks for nr queries (q and dout at their
 * first row, rows qs apart; st their statistics, 2 apart): kt and vt packed (unless the
 * caller's tiles hold them already, pack false), then
 *   p  (nr, BK) = P = e^(q . k / sqrt(D) - max) / sum, 0 where a query does not see a key,
 *   dp (nr, BK) = dP = dout . v.
 * The scores are mm's (the forward's bits) and the exponentials exp_run's. */
static void bwd_tile(float *p, float *dp, const float *q, const float *dout, int64_t qs,
                     const float *st, int nr, const int64_t *a, const int64_t *b, const keys *ks,
                     int64_t c, int nk, int D, float scale, float *kt, float *vt, bool pack) {
    if (pack) {
        pack_t(kt, ks->k + c * ks->stride, ks->stride, nk, D);
        pack_t(vt, ks->v + c * ks->stride, ks->stride, nk, D);
    }
    const int nc = (nk + 15) & ~15;
    mm(p, BK, q, qs, 1, kt, BK, nr, nc, D, false);
    mm(dp, BK, dout, qs, 1, vt, BK, nr, nc, D, false);
    for (int i = 0; i < nr; i++) {
        float *pi = p + i * BK;
        int ja, jb;
        if (!visible(&ja, &jb, a[i], b[i], c, nk)) {
            memset(pi, 0, (size_t)nk * sizeof(float));
            continue;
        }
        prob_run(pi + ja, jb + 1 - ja, scale, st[2 * i], st[2 * i + 1]);
        memset(pi, 0, (size_t)ja * sizeof(float));
        memset(pi + jb + 1, 0, (size_t)(nk - 1 - jb) * sizeof(float));
    }
}

/* dp becomes dS = P (dP - sp) / sqrt(D) for the tile's nr queries (sp: theirs). */
static void tile_ds(float *dp, const float *p, const float *sp, int nr, int nk, float scale) {
    for (int i = 0; i < nr; i++) {
        float *d = dp + i * BK;
        const float *pi = p + i * BK;
        int j = 0;
#ifdef HAVE_AVX2
        __m256 s = _mm256_set1_ps(sp[i]), f = _mm256_set1_ps(scale);
        for (; j + 8 <= nk; j += 8)
            _mm256_storeu_ps(d + j,
                             _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(pi + j),
                                                         _mm256_sub_ps(_mm256_loadu_ps(d + j), s)),
                                           f));
#endif
        for (; j < nk; j++) d[j] = pi[j] * (d[j] - sp[i]) * scale;
    }
}

/* The gradients of one block of nk keys (packed into kt, vt when pack) from nr queries
 * seeing them as [a[i], b[i]]: dv (nk rows, stride ldk) += P^T dout, dk += dS^T q. */
static void key_tile_grads(float *dk, float *dv, int64_t ldk, const float *q, const float *dout,
                           int64_t qs, const float *st, const float *sp, int nr, const int64_t *a,
                           const int64_t *b, const keys *ks, int64_t c, int nk, int D, float scale,
                           float *kt, float *vt, float *p, float *dp, bool pack) {
    bwd_tile(p, dp, q, dout, qs, st, nr, a, b, ks, c, nk, D, scale, kt, vt, pack);
    tile_ds(dp, p, sp, nr, nk, scale);
    mm(dv, ldk, p, 1, BK, dout, qs, nk, D, nr, true);
    mm(dk, ldk, dp, 1, BK, q, qs, nk, D, nr, true);
}

/* With P a row of probabilities and S = q k^T / sqrt(D) its scores:
 *   dv_j += P_j dout,  dP_j = dout . v_j,  dS_j = P_j (dP_j - sum_i P_i dP_i),
 *   dq = sum_j dS_j k_j / sqrt(D),  dk_j += dS_j q / sqrt(D).
 * Since sum_j P_j dP_j = dout . sum_j P_j v_j = dout . out, each query's sp is one dot
 * product with the forward's output (flash attention 2's D), not a sweep over its keys.
 * Two passes, so that every output has one owner and each sum runs in a fixed order
 * whatever the thread count (no float atomics), the same tiles as the forward's:
 *   1. per (row, query head, block of BQ queries): sp = dout . out (into sps (B, H, T));
 *      then over the key tiles the block sees, P, dP and dS again and dq += dS k;
 *   2. per (row, KV head, block of BK keys): dk += dS^T q and dv += P^T dout over the
 *      group's query heads, then the tiles of BQ queries that see the block, P, dP and dS
 *      again; and per (KV head, block of prefix keys): the same summed over every row, head
 *      of the group and query tile, in that order.
 * Nothing T x T is stored: each pass recomputes its tiles' products. */
void finch_cpu_attention_backward(float *dq, float *dk, float *dv, float *sps, const float *dout,
                                  const float *out, const float *stats, const float *q,
                                  const float *k, const float *v, const int32_t *seg,
                                  const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                  int KVH, int D, int64_t window, finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t qs = (int64_t)H * D, kvs = (int64_t)KVH * D, nblk = (T + BQ - 1) / BQ,
                  kblk = (T + BK - 1) / BK;
    const int64_t P = pre ? pre->n : 0;
    const int64_t pblk = pre && pre->dk ? (P + BK - 1) / BK : 0;
    const float scale = 1.0f / sqrtf((float)D);
    const int n_threads = ws ? ws->n_threads : 1;
#pragma omp parallel num_threads(n_threads) if (B * H * nblk > 1)
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * H * nblk; task++) {
            int64_t b = task / (H * nblk), t0 = (nblk - 1 - task % nblk) * BQ;
            int n = (int)(t0 + BQ < T ? BQ : T - t0);
            int h = (int)(task / nblk % H), g = h / group;
            const int32_t *sg = seg ? seg + b * T : NULL;
            float *kt = tiles_of(ws, D), *vt = kt + BK * D, *p = vt + BK * D, *dp = p + BQ * BK;
            int64_t lo[BQ], hi[BQ], pl[BQ], ph[BQ], s0 = seg_start(sg, t0);
            query_ranges(lo, hi, pl, ph, &s0, sg, t0, n, P, window);
            const int64_t o0 = (b * T + t0) * qs + (int64_t)h * D;
            const float *qb = q + o0, *db = dout + o0, *ob = out + o0,
                        *st = stats + ((b * H + h) * T + t0) * 2;
            float *dqb = dq + o0, *spb = sps + (b * H + h) * T + t0;
            int64_t pmin = P;
            for (int i = 0; i < n; i++) pmin = pl[i] < pmin ? pl[i] : pmin;
            const keys ks[2] = {{P ? pre->k + (int64_t)g * D : NULL,
                                 P ? pre->v + (int64_t)g * D : NULL, P ? pre->stride : 0, pmin, P,
                                 pl, ph},
                                {k + b * T * kvs + (int64_t)g * D, v + b * T * kvs + (int64_t)g * D,
                                 kvs, lo[0], t0 + n, lo, hi}};
            float spf[BQ];
            for (int i = 0; i < n; i++) {
                /* one chain of madd over d, as mm sums each dP: with one key (out = v) sp
                 * equals that dP bit for bit and dS is exactly 0 */
                float acc = 0;
                for (int d = 0; d < D; d++) acc = madd(db[i * qs + d], ob[i * qs + d], acc);
                spb[i] = spf[i] = acc;
                memset(dqb + i * qs, 0, (size_t)D * sizeof(float));
            }
            for (int w = 0; w < 2; w++)
                for (int64_t c = ks[w].c0; c < ks[w].c1; c += BK) {
                    int nk = (int)(ks[w].c1 - c < BK ? ks[w].c1 - c : BK), r0 = 0, r1 = n;
                    if (w == 1 && !rows_seeing(&r0, &r1, &ks[w], n, c, nk)) continue;
                    int nr = r1 - r0;
                    bwd_tile(p, dp, qb + r0 * qs, db + r0 * qs, qs, st + 2 * r0, nr, ks[w].a + r0,
                             ks[w].b + r0, &ks[w], c, nk, D, scale, kt, vt, true);
                    tile_ds(dp, p, spf + r0, nr, nk, scale);
                    mm(dqb + r0 * qs, qs, dp, BK, 1, ks[w].k + c * ks[w].stride, ks[w].stride, nr,
                       D, nk, true);
                }
        }
        /* the implicit barrier: sps is complete */
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * KVH * kblk + KVH * pblk; task++) {
            float *kt = tiles_of(ws, D), *vt = kt + BK * D, *p = vt + BK * D, *dp = p + BQ * BK;
            int64_t lo[BQ], hi[BQ], pl[BQ], ph[BQ];
            if (task >= B * KVH * kblk) { /* a block of prefix keys, over every row */
                int64_t pt = task - B * KVH * kblk, j0 = pt % pblk * BK;
                int nk = (int)(j0 + BK < P ? BK : P - j0), g = (int)(pt / pblk);
                const keys kp = {
                    pre->k + (int64_t)g * D, pre->v + (int64_t)g * D, pre->stride, 0, P, pl, ph};
                bool packed = false; /* kt and vt hold the block */
                float *dkp = pre->dk + j0 * pre->stride + (int64_t)g * D,
                      *dvp = pre->dv + j0 * pre->stride + (int64_t)g * D;
                for (int64_t b = 0; b < B; b++)
                    for (int h = g * group; h < (g + 1) * group; h++) {
                        const int32_t *sg = seg ? seg + b * T : NULL;
                        int64_t s0 = 0;
                        for (int64_t c = 0; c < T; c += BQ) {
                            int n = (int)(c + BQ < T ? BQ : T - c);
                            query_ranges(lo, hi, pl, ph, &s0, sg, c, n, P, window);
                            bool seen = false; /* a query of the tile sees a key of the block */
                            for (int i = 0; i < n; i++) seen |= pl[i] < j0 + nk;
                            if (!seen) continue;
                            const int64_t o0 = (b * T + c) * qs + (int64_t)h * D;
                            key_tile_grads(dkp, dvp, pre->stride, q + o0, dout + o0, qs,
                                           stats + ((b * H + h) * T + c) * 2,
                                           sps + (b * H + h) * T + c, n, pl, ph, &kp, j0, nk, D,
                                           scale, kt, vt, p, dp, !packed);
                            packed = true;
                        }
                    }
                continue;
            }
            int64_t b = task / (KVH * kblk), j0 = task % kblk * BK;
            int nk = (int)(j0 + BK < T ? BK : T - j0), g = (int)(task / kblk % KVH);
            const int32_t *sg = seg ? seg + b * T : NULL;
            const keys kr = {k + b * T * kvs + (int64_t)g * D,
                             v + b * T * kvs + (int64_t)g * D,
                             kvs,
                             0,
                             T,
                             lo,
                             hi};
            float *dkb = dk + (b * T + j0) * kvs + (int64_t)g * D,
                  *dvb = dv + (b * T + j0) * kvs + (int64_t)g * D;
            for (int j = 0; j < nk; j++) {
                memset(dkb + j * kvs, 0, (size_t)D * sizeof(float));
                memset(dvb + j * kvs, 0, (size_t)D * sizeof(float));
            }
            /* the last query that sees a key of the block: the end of the last key's
             * segment, or of its window */
            int64_t jl = j0 + nk - 1, e = seg_end(sg, jl, T);
            if (window > 0 && e > jl + window) e = jl + window;
            const int64_t s00 = seg_start(sg, j0);
            bool packed = false; /* kt and vt hold the block */
            for (int h = g * group; h < (g + 1) * group; h++) {
                int64_t s0 = s00;
                for (int64_t c = j0; c < e; c += BQ) {
                    int n = (int)(c + BQ < e ? BQ : e - c), r0, r1;
                    query_ranges(lo, hi, pl, ph, &s0, sg, c, n, P, window);
                    if (!rows_seeing(&r0, &r1, &kr, n, j0, nk)) continue;
                    const int64_t o0 = (b * T + c + r0) * qs + (int64_t)h * D;
                    key_tile_grads(dkb, dvb, kvs, q + o0, dout + o0, qs,
                                   stats + ((b * H + h) * T + c + r0) * 2,
                                   sps + (b * H + h) * T + c + r0, r1 - r0, lo + r0, hi + r0, &kr,
                                   j0, nk, D, scale, kt, vt, p, dp, !packed);
                    packed = true;
                }
            }
        }
    }
}

#define h2f finch_f16_to_f32
#define f2h finch_f32_to_f16

void finch_cpu_to_f16(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = f2h(src[i]);
}

/* llama.cpp without flash attention: K q with q rounded to f16 (the queries as the caller
 * scaled them), the scores times scale, masked, exponentiated by ggml's e^x (AVX-512,
 * finch_expf_ggml) in runs of 16 cells from cell 0 whose reduce16 sums add up in double,
 * each probability times (float)(1 / sum) and rounded to f16, then V p, each output as
 * dot_f16_order over the cells. The cache's cells are the positions (no ring), so a cell's
 * lane is its position's. */
void finch_cpu_attention_forward_f16(float *out, const float *q, const uint16_t *k,
                                     const uint16_t *v, int64_t T, int64_t pos0, int H, int KVH,
                                     int D, float scale, bool neox, int64_t window,
                                     finch_workspace *ws) {
    const int group = H / KVH;
    const int64_t kv_stride = (int64_t)KVH * D, n_all = pos0 + T;
    const bool one = T == 1;
    /* llama.cpp's cells in a product over the cache: the used ones padded to 256 */
    const int64_t n_cells = (n_all + 255) / 256 * 256;
    FINCH_ASSERT(ws && ws->per_thread >= 2 * (size_t)(n_all + 16) + 2 * (size_t)D);
#pragma omp parallel for schedule(dynamic, 1) num_threads(ws->n_threads) if (T * H > 1)
    for (int64_t th = 0; th < T * H; th++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *qh = ws->buf + (size_t)tid * ws->per_thread, *kv = qh + D;
        float *att = kv + D, *vt = att + (n_all + 16);
        int64_t t = th / H;
        int h = (int)(th % H), g = h / group;
        int64_t n_kv = pos0 + t + 1, j0 = window > 0 && n_kv > window ? n_kv - window : 0;
        /* element e of llama.cpp's order is finch's element at[e] */
#define AT(e) (neox ? ((e) < D / 2 ? 2 * (e) : 2 * ((e)-D / 2) + 1) : (e))
        for (int d = 0; d < D; d++) qh[d] = h2f(f2h(q[(t * H + h) * D + AT(d)]));
        float mx = -INFINITY;
        for (int64_t j = j0; j < n_kv; j++) {
            const uint16_t *kj = k + j * kv_stride + (int64_t)g * D;
            for (int d = 0; d < D; d++) kv[d] = h2f(kj[AT(d)]);
            float s = finch_dot_ggml(kv, qh, D, D, one) * scale;
            att[j] = s;
            if (s > mx) mx = s;
        }
        const int64_t n_pad = (n_kv + 15) / 16 * 16;
        for (int64_t j = 0; j < n_pad; j++)
            att[j] = j >= j0 && j < n_kv ? finch_expf_ggml(att[j] - mx) : 0.0f;
        double sum = 0;
        for (int64_t j = 0; j < n_pad; j += 16) sum += (double)finch_reduce16(att + j);
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < n_kv; j++) att[j] = h2f(f2h(att[j] * inv));
        float *ot = out + (t * H + h) * D;
        for (int d = 0; d < D; d++) {
            for (int64_t j = 0; j < n_kv; j++) vt[j] = h2f(v[j * kv_stride + (int64_t)g * D + d]);
            ot[d] = finch_dot_ggml(vt, att, n_kv, n_cells, one);
        }
#undef AT
    }
}
