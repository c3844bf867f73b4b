/*
 * matmul_q8.c: y (T, rows) = x (T, cols) . W^T computed as llama.cpp computes it on the
 * CPU: each row of x is first quantized to 8 bits in blocks of 32 (Q8_0, or Q8_1 which
 * also keeps d * sum(q)), then every block product is an integer dot product scaled by
 * the two block scales:
 *
 *   Q4_0 x Q8_0:  sum_b  d_w d_x  sum_j (q_w - 8) q_x
 *   Q4_1 x Q8_1:  sum_b  d_w d_x  sum_j q_w q_x  +  m_w s_x
 *   Q5_0 x Q8_0, Q5_1 x Q8_1: as Q4_0, Q4_1 with 5-bit q_w
 *   Q8_0 x Q8_0:  sum_b  d_w d_x  sum_j q_w q_x
 *
 * This is the llamacpp numerics mode (FINCH_NUMERICS_LLAMACPP). For Q4_0, Q4_1, Q5_0 and Q8_0
 * the sums run in the order of ggml's x86 AVX2 code (which its AVX-512 builds run too, and
 * llamafile's tinyBLAS matches): 8 lanes, each adding d_w d_x times 4 products per block by a
 * fused multiply-add, reduced at the end; on every instruction set, so the bits are
 * llama.cpp's. Q5_1 sums block after block. K-quants (Q4_K, Q6_K) meet x quantized to Q8_K
 * (blocks of 256) in the orders described at their kernels; f32 and f16 weights go through
 * finch_dot_ggml's order (cpu.h). Integer dot products are cheaper than expanding blocks to
 * f32 when the weights are in cache. Other storage types use the exact matmul. Training never
 * uses it (its gradients need the exact product).
 *
 * The quantized rows of x live in the workspace's shared buffer (finch_workspace.act).
 */
#include "kernels/cpu/cpu.h"
#include "core/quant.h" /* block structs */

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef finch_q8_act act_block;

enum { ROW_CHUNK = 16 };

/* The 5-bit value j (0 .. 31) of a Q5_0 / Q5_1 block: low nibble, bit j of qh above it. */
static inline int q5_at(const uint8_t *qs, uint32_t qh, int j) {
    int lo = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
    return lo | (int)(((qh >> j) & 1) << 4);
}

/* llama.cpp's x86 quantize_row_q8_0/q8_1: scale 127 / max|x|, round half to even. */
static void quantize_act_row(act_block *y, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            int q = (int)nearbyintf(x[j] * id);
            y[b].qs[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = finch_f16_to_f32(finch_f32_to_f16(d));
        y[b].s = finch_f16_to_f32(finch_f32_to_f16(d * (float)sum));
    }
}

/* The sum of 8 lanes in the order of ggml's hsum_float_8 (and finch_cpu_hsum8): the upper
 * half added to the lower, then lanes 0 + 2 and 1 + 3, then those two. */
static inline float lanes_sum8(const float *a) {
    float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

#if defined(__AVX2__) && defined(__FMA__)
/* sum of a_j * b_j as 8 int32 lanes, a unsigned, b signed. The products of our operands
 * (|a| <= 128, |b| <= 127) never saturate maddubs' 16-bit pairs, so the VNNI instruction
 * gives the same integers in one step. */
static inline __m256 dot_u8_i8(__m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b));
#elif defined(__AVXVNNI__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b));
#else
    __m256i p16 = _mm256_maddubs_epi16(a, b);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

/* sum of a_j * b_j, both signed: |a| * sign(b, a) */
static inline __m256 dot_i8_i8(__m256i a, __m256i b) {
    return dot_u8_i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

static float vdot_q4_0(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q4_0 *w = row;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i q = _mm256_sub_epi8(finch_cpu_nibbles32(w[b].qs), _mm256_set1_epi8(8));
        __m256i y = _mm256_loadu_si256((const __m256i *)x[b].qs);
        __m256 d = _mm256_set1_ps(finch_f16_to_f32(w[b].d) * x[b].d);
        acc = _mm256_fmadd_ps(d, dot_i8_i8(q, y), acc);
    }
    return finch_cpu_hsum8(acc);
}

static float vdot_q4_1(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q4_1 *w = row;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int64_t b = 0; b < nb; b++) {
        __m256i y = _mm256_loadu_si256((const __m256i *)x[b].qs);
        __m256 d = _mm256_set1_ps(finch_f16_to_f32(w[b].d) * x[b].d);
        acc = _mm256_fmadd_ps(d, dot_u8_i8(finch_cpu_nibbles32(w[b].qs), y), acc);
        summs += finch_f16_to_f32(w[b].m) * x[b].s;
    }
    return finch_cpu_hsum8(acc) + summs;
}

static float vdot_q8_0(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q8_0 *w = row;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i y = _mm256_loadu_si256((const __m256i *)x[b].qs);
        __m256 d = _mm256_set1_ps(finch_f16_to_f32(w[b].d) * x[b].d);
        acc = _mm256_fmadd_ps(d, dot_i8_i8(q, y), acc);
    }
    return finch_cpu_hsum8(acc);
}
/* Q5_0 x Q8_0 as ggml's AVX2 code and llamafile's tinyBLAS sum it (llama.cpp's x86 builds
 * run one or the other, in the same order): as Q4_0 with 5-bit values less 16. */
static float vdot_q5_0(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q5_0 *w = row;
    __m256 acc = _mm256_setzero_ps();
    int8_t q[QK];
    for (int64_t b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        for (int j = 0; j < QK; j++) q[j] = (int8_t)(q5_at(w[b].qs, qh, j) - 16);
        __m256i wq = _mm256_loadu_si256((const __m256i *)q);
        __m256i y = _mm256_loadu_si256((const __m256i *)x[b].qs);
        __m256 d = _mm256_set1_ps(finch_f16_to_f32(w[b].d) * x[b].d);
        acc = _mm256_fmadd_ps(d, dot_i8_i8(wq, y), acc);
    }
    return finch_cpu_hsum8(acc);
}

/* Four rows at once: the same per-row arithmetic in the same order (so the same bits as
 * the one-row kernels), with four independent accumulation chains to hide latency. */
static void vdot4_q4_0(const uint8_t *row, size_t rb, const act_block *x, int64_t nb, float *y) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        __m256i yq = _mm256_loadu_si256((const __m256i *)x[b].qs);
        for (int r = 0; r < 4; r++) {
            const finch_block_q4_0 *w = (const finch_block_q4_0 *)(row + r * rb) + b;
            __m256i q = _mm256_sub_epi8(finch_cpu_nibbles32(w->qs), _mm256_set1_epi8(8));
            __m256 d = _mm256_set1_ps(finch_f16_to_f32(w->d) * x[b].d);
            acc[r] = _mm256_fmadd_ps(d, dot_i8_i8(q, yq), acc[r]);
        }
    }
    for (int r = 0; r < 4; r++) y[r] = finch_cpu_hsum8(acc[r]);
}

static void vdot4_q4_1(const uint8_t *row, size_t rb, const act_block *x, int64_t nb, float *y) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    float summs[4] = {0, 0, 0, 0};
    for (int64_t b = 0; b < nb; b++) {
        __m256i yq = _mm256_loadu_si256((const __m256i *)x[b].qs);
        for (int r = 0; r < 4; r++) {
            const finch_block_q4_1 *w = (const finch_block_q4_1 *)(row + r * rb) + b;
            __m256 d = _mm256_set1_ps(finch_f16_to_f32(w->d) * x[b].d);
            acc[r] = _mm256_fmadd_ps(d, dot_u8_i8(finch_cpu_nibbles32(w->qs), yq), acc[r]);
            summs[r] += finch_f16_to_f32(w->m) * x[b].s;
        }
    }
    for (int r = 0; r < 4; r++) y[r] = finch_cpu_hsum8(acc[r]) + summs[r];
}

static void vdot4_q8_0(const uint8_t *row, size_t rb, const act_block *x, int64_t nb, float *y) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        __m256i yq = _mm256_loadu_si256((const __m256i *)x[b].qs);
        for (int r = 0; r < 4; r++) {
            const finch_block_q8_0 *w = (const finch_block_q8_0 *)(row + r * rb) + b;
            __m256i q = _mm256_loadu_si256((const __m256i *)w->qs);
            __m256 d = _mm256_set1_ps(finch_f16_to_f32(w->d) * x[b].d);
            acc[r] = _mm256_fmadd_ps(d, dot_i8_i8(q, yq), acc[r]);
        }
    }
    for (int r = 0; r < 4; r++) y[r] = finch_cpu_hsum8(acc[r]);
}

/* Many tokens: four rows are unpacked once into 8-bit values and f32 scales, then meet
 * every token's activations. Per (row, token) the arithmetic and its order are those of
 * vdot4_*, so results do not depend on T. */
typedef struct {
    int8_t *q;    /* (4, K) unpacked weights: q - 8 (Q4_0), q (Q4_1, unsigned), q (Q8_0),
                   q - 16 (Q5_0) */
    float *d, *m; /* (4, nb) block scales and mins (m only for Q4_1) */
    bool is_signed;
    bool has_min;
} unpacked4;

static void unpack4(finch_dtype t, const uint8_t *row, size_t rb, int64_t nb, unpacked4 *u) {
    for (int r = 0; r < 4; r++)
        for (int64_t b = 0; b < nb; b++) {
            int8_t *q = u->q + (r * nb + b) * QK;
            const uint8_t *blk = row + r * rb;
            if (t == FINCH_DTYPE_Q8_0) {
                const finch_block_q8_0 *w = (const finch_block_q8_0 *)blk + b;
                memcpy(q, w->qs, QK);
                u->d[r * nb + b] = finch_f16_to_f32(w->d);
            } else if (t == FINCH_DTYPE_Q5_0) {
                const finch_block_q5_0 *w = (const finch_block_q5_0 *)blk + b;
                uint32_t qh;
                memcpy(&qh, w->qh, 4);
                for (int j = 0; j < QK; j++) q[j] = (int8_t)(q5_at(w->qs, qh, j) - 16);
                u->d[r * nb + b] = finch_f16_to_f32(w->d);
            } else {
                /* Q4_0 and Q4_1 share the nibble layout; Q4_0 is offset by 8 */
                const uint8_t *qs = t == FINCH_DTYPE_Q4_0 ? ((const finch_block_q4_0 *)blk)[b].qs
                                                          : ((const finch_block_q4_1 *)blk)[b].qs;
                int off = t == FINCH_DTYPE_Q4_0 ? 8 : 0;
                for (int j = 0; j < QK / 2; j++) {
                    q[j] = (int8_t)((qs[j] & 15) - off);
                    q[j + QK / 2] = (int8_t)((qs[j] >> 4) - off);
                }
                if (t == FINCH_DTYPE_Q4_0) {
                    u->d[r * nb + b] = finch_f16_to_f32(((const finch_block_q4_0 *)blk)[b].d);
                } else {
                    u->d[r * nb + b] = finch_f16_to_f32(((const finch_block_q4_1 *)blk)[b].d);
                    u->m[r * nb + b] = finch_f16_to_f32(((const finch_block_q4_1 *)blk)[b].m);
                }
            }
        }
    u->is_signed = t != FINCH_DTYPE_Q4_1;
    u->has_min = t == FINCH_DTYPE_Q4_1;
}

static void vdot4_unpacked(const unpacked4 *u, const act_block *x, int64_t nb, float *y) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    float summs[4] = {0, 0, 0, 0};
    for (int64_t b = 0; b < nb; b++) {
        __m256i yq = _mm256_loadu_si256((const __m256i *)x[b].qs);
        for (int r = 0; r < 4; r++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(u->q + (r * nb + b) * QK));
            __m256 d = _mm256_set1_ps(u->d[r * nb + b] * x[b].d);
            acc[r] = _mm256_fmadd_ps(d, u->is_signed ? dot_i8_i8(q, yq) : dot_u8_i8(q, yq), acc[r]);
            if (u->has_min) summs[r] += u->m[r * nb + b] * x[b].s;
        }
    }
    for (int r = 0; r < 4; r++) y[r] = finch_cpu_hsum8(acc[r]) + summs[r];
}
#define HAVE_VDOT4 1
#else
/* Without AVX2, the arithmetic of the kernels above lane by lane, so that every instruction
 * set gives the same bits: lane l of 8 holds the integer sum of a block's products 4l ..
 * 4l+3 (maddubs + madd), adds d_w d_x times it by a fused multiply-add, block after block,
 * and the lanes are reduced in finch_cpu_hsum8's order. */

/* w (32 values, q_j as ints) . x's block into acc: the lane sums, scaled by d. */
static void lanes_fma(float *acc, const int *q, const int8_t *x, float d) {
    for (int l = 0; l < 8; l++) {
        int sum = 0;
        for (int j = 4 * l; j < 4 * l + 4; j++) sum += q[j] * x[j];
        acc[l] = finch_fmaf(d, (float)sum, acc[l]);
    }
}

/* 32 4-bit values of a block (j low nibble, j+16 high), minus off. */
static void nibbles(int *q, const uint8_t *qs, int off) {
    for (int j = 0; j < QK / 2; j++) {
        q[j] = (qs[j] & 15) - off;
        q[j + QK / 2] = (qs[j] >> 4) - off;
    }
}

static float vdot_q4_0(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q4_0 *w = row;
    float acc[8] = {0};
    int q[QK];
    for (int64_t b = 0; b < nb; b++) {
        nibbles(q, w[b].qs, 8);
        lanes_fma(acc, q, x[b].qs, finch_f16_to_f32(w[b].d) * x[b].d);
    }
    return lanes_sum8(acc);
}
static float vdot_q4_1(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q4_1 *w = row;
    float acc[8] = {0}, summs = 0;
    int q[QK];
    for (int64_t b = 0; b < nb; b++) {
        nibbles(q, w[b].qs, 0);
        lanes_fma(acc, q, x[b].qs, finch_f16_to_f32(w[b].d) * x[b].d);
        summs += finch_f16_to_f32(w[b].m) * x[b].s;
    }
    return lanes_sum8(acc) + summs;
}
static float vdot_q8_0(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q8_0 *w = row;
    float acc[8] = {0};
    int q[QK];
    for (int64_t b = 0; b < nb; b++) {
        for (int j = 0; j < QK; j++) q[j] = w[b].qs[j];
        lanes_fma(acc, q, x[b].qs, finch_f16_to_f32(w[b].d) * x[b].d);
    }
    return lanes_sum8(acc);
}
/* Q5_0 x Q8_0 as ggml's AVX2 code and llamafile's tinyBLAS (which llama.cpp's x86 builds run
 * for it) sum it: like Q4_0, 8 lanes of 4 products each, d_w d_x times a lane's integer sum
 * added by a fused multiply-add block after block, the lanes reduced at the end. */
static float vdot_q5_0(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q5_0 *w = row;
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        const float d = finch_f16_to_f32(w[b].d) * x[b].d;
        for (int l = 0; l < 8; l++) {
            int sum = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++)
                sum += (q5_at(w[b].qs, qh, j) - 16) * x[b].qs[j];
            acc[l] = finch_fmaf(d, (float)sum, acc[l]);
        }
    }
    return lanes_sum8(acc);
}

#endif

static float vdot_q5_1(const void *row, const act_block *x, int64_t nb) {
    const finch_block_q5_1 *w = row;
    float s = 0;
    for (int64_t b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int acc = 0;
        for (int j = 0; j < QK; j++) acc += q5_at(w[b].qs, qh, j) * x[b].qs[j];
        s += finch_f16_to_f32(w[b].d) * x[b].d * (float)acc + finch_f16_to_f32(w[b].m) * x[b].s;
    }
    return s;
}

/* K-quants: x is quantized to Q8_K (256 values per block, one f32 scale, the sums of each
 * 16 values in bsums) as ggml's quantize_row_q8_K does: max = the first value of largest
 * magnitude, iscale = -127 / max, q = min(127, round-half-even(iscale x)), d = 1 / iscale
 * (so max itself becomes -127 and d is negative when max is positive). ggml's
 * quantize_mat_q8_K_4x8, which quantizes the rows its repacked products take four at a
 * time (four_rows), takes max positive when any value equals +|max|: the two differ only
 * when both +|max| and -|max| occur. */
#if defined(__AVX2__) && defined(__FMA__)
/* The same values 8 at a time: max|x| by vector max (a NaN is skipped, as the scalar
 * comparison skips it), then the first position holding it; the products iscale x are the
 * scalar ones and cvtps rounds them in the current mode, as nearbyintf does. */
void finch_cpu_quantize_q8_k(finch_block_q8_k *y, const float *x, int64_t n, bool four_rows) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 vmax = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) /* max_ps returns its second operand on a NaN */
            vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), vmax);
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        if (amax == 0) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const __m256 va = _mm256_set1_ps(amax);
        float max = 0;
        bool plus = false; /* +amax occurs */
        for (int j = 0; j < QK_K; j += 8) {
            __m256 v = _mm256_loadu_ps(x + j);
            int at = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v), va, _CMP_EQ_OQ));
            if (at && max == 0) max = x[j + __builtin_ctz((unsigned)at)];
            plus |= _mm256_movemask_ps(_mm256_cmp_ps(v, va, _CMP_EQ_OQ)) != 0;
            if (max != 0 && !four_rows) break;
        }
        if (four_rows && plus) max = amax;
        const float iscale = -127.0f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i lim = _mm256_set1_epi32(127), bias = _mm256_set1_epi8(-128);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_min_epi32(
                    _mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k))), lim);
            /* the packs interleave 4-value groups across the 128-bit lanes: put them back */
            __m256i p =
                _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(y[b].qs + j), p);
            /* the two 16-value sums: bytes offset by 128 to unsigned, summed 8 at a time */
            __m256i s = _mm256_sad_epu8(_mm256_xor_si256(p, bias), _mm256_setzero_si256());
            y[b].bsums[j / 16] =
                (int16_t)(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) - 16 * 128);
            y[b].bsums[j / 16 + 1] =
                (int16_t)(_mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3) - 16 * 128);
        }
        y[b].d = 1 / iscale;
    }
}
#else
void finch_cpu_quantize_q8_k(finch_block_q8_k *y, const float *x, int64_t n, bool four_rows) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
        if (amax == 0) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        if (four_rows)
            for (int j = 0; j < QK_K; j++)
                if (x[j] == amax) max = amax;
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            int q = (int)nearbyintf(iscale * x[j]);
            y[b].qs[j] = (int8_t)(q < 127 ? q : 127);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += y[b].qs[16 * g + j];
            y[b].bsums[g] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}
#endif

/* A K-quant product: nr rows (1 .. 4) from row, row_bytes apart, each with one token's x
 * (nb blocks) into y[0 .. nr-1]. Each row's value is the same whichever nr it comes with. */
typedef void (*kdot_fn)(const uint8_t *row, size_t row_bytes, int nr, const finch_block_q8_k *x,
                        int64_t nb, float *y);

/* Q4_K x Q8_K as llama.cpp runs it on an AVX2 CPU: there it repacks Q4_K weights whose row
 * count is a multiple of 8 into q4_K_8x8 and multiplies with ggml_gemv_q4_K_8x8_q8_K (one
 * token) and ggml_gemm_q4_K_8x8_q8_K (four tokens at a time, the first T - T mod 4 of a
 * batch). Per row, over the 64-value chunks c (sub-blocks 2c and 2c+1) of super-block b,
 * with exact integers
 *
 *   isum_c = sc_2c sum_{i in 2c} q_i x_i + sc_2c+1 sum_{i in 2c+1} q_i x_i
 *   imin_c = m_2c bsum32_2c + m_2c+1 bsum32_2c+1
 *
 * gemv adds isum_b = sum_c isum_c and imin_b to two f32 accumulators once per super-block,
 *
 *   acc = fma(isum_b, d_w d_x, acc)    acc_min = fma(imin_b, dmin_w d_x, acc_min),
 *
 * gemm adds each chunk's isum_c and imin_c the same way; the result is acc - acc_min. (Rows
 * not repacked take ggml_vec_dot_q4_K_q8_K's order in llama.cpp; finch uses these for them
 * too.) The vector code below computes the same integers (their order does not matter) and
 * does the same f32 steps in the same order. */
#if defined(__AVX2__) && defined(__FMA__)
/* The 16-bit pair (2i, 2i+1) of each 128-bit lane, for shuffle_epi8 to broadcast value i
 * of 8 int16 in both lanes. */
#define PICK16(i) _mm_set1_epi16((short)(0x0100 + 0x0202 * (i)))

/* [sum v0, sum v1, sum v2, sum v3] of four vectors of 8 int32 */
static inline __m128i hsum4_i32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* The 6-bit scales (bytes 0 .. 7) and mins (8 .. 15) of a Q4_K block's 8 sub-blocks from its
 * 12 packed bytes a | b | c: sub-blocks 0-3 take the low 6 bits of a (scales) and b (mins),
 * 4-7 a nibble of c with the top 2 bits of a or b above it. */
static inline __m128i q4_k_scales_mins(const uint8_t *s) {
    uint32_t a, b, c;
    memcpy(&a, s, 4);
    memcpy(&b, s + 4, 4);
    memcpy(&c, s + 8, 4);
    const uint32_t lo6 = 0x3f3f3f3f, lo4 = 0x0f0f0f0f, lo2 = 0x03030303;
    return _mm_setr_epi32((int)(a & lo6), (int)((c & lo4) | ((a >> 6) & lo2) << 4), (int)(b & lo6),
                          (int)(((c >> 4) & lo4) | ((b >> 6) & lo2) << 4));
}

/* isum_c and imin_c (c = 0 .. 3) of one super-block. */
static inline void q4_k_isums(const finch_block_q4_k *w, const finch_block_q8_k *x, int32_t *isum,
                              int32_t *imin) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m128i sm = q4_k_scales_mins(w->scales);
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    __m256i v[4];
    for (int c = 0; c < 4; c++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * c));
        __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(q, m4),
                                          _mm256_loadu_si256((const __m256i *)(x->qs + 64 * c)));
        __m256i hi =
            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                                 _mm256_loadu_si256((const __m256i *)(x->qs + 64 * c + 32)));
        __m256i s0 = _mm256_shuffle_epi8(sc, _mm256_broadcastsi128_si256(PICK16(2 * c)));
        __m256i s1 = _mm256_shuffle_epi8(sc, _mm256_broadcastsi128_si256(PICK16(2 * c + 1)));
        v[c] = _mm256_add_epi32(_mm256_madd_epi16(lo, s0), _mm256_madd_epi16(hi, s1));
    }
    _mm_storeu_si128((__m128i *)isum, hsum4_i32(v[0], v[1], v[2], v[3]));
    /* lane k of pm: m_k (bsum_2k + bsum_2k+1); imin_c = lanes 2c + 2c+1 */
    __m128i mn = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
    __m256i mins = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
    __m256i pm = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x->bsums), mins);
    pm = _mm256_permute4x64_epi64(_mm256_hadd_epi32(pm, pm), _MM_SHUFFLE(3, 1, 2, 0));
    _mm_storeu_si128((__m128i *)imin, _mm256_castsi256_si128(pm));
}

/* nr rows, super-block after super-block: the token's block is read from memory once for
 * all of them, and the rows' f32 chains are independent. */
static void dot_q4_k(const uint8_t *row, size_t rb, int nr, const finch_block_q8_k *x, int64_t nb,
                     bool per_chunk, float *y) {
    float acc[4] = {0, 0, 0, 0}, acc_min[4] = {0, 0, 0, 0};
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < nr; r++) {
            const finch_block_q4_k *w = (const finch_block_q4_k *)(row + r * rb) + b;
            const float d = finch_f16_to_f32(w->d) * x[b].d;
            const float dmin = finch_f16_to_f32(w->dmin) * x[b].d;
            int32_t isum[4], imin[4];
            q4_k_isums(w, x + b, isum, imin);
            if (per_chunk) {
                for (int c = 0; c < 4; c++) {
                    acc[r] = finch_fmaf((float)isum[c], d, acc[r]);
                    acc_min[r] = finch_fmaf((float)imin[c], dmin, acc_min[r]);
                }
            } else {
                acc[r] = finch_fmaf((float)(isum[0] + isum[1] + isum[2] + isum[3]), d, acc[r]);
                acc_min[r] =
                    finch_fmaf((float)(imin[0] + imin[1] + imin[2] + imin[3]), dmin, acc_min[r]);
            }
        }
    for (int r = 0; r < nr; r++) y[r] = acc[r] - acc_min[r];
}
#else

static float dot_q4_k_row(const void *row, const finch_block_q8_k *x, int64_t nb, bool per_chunk) {
    const finch_block_q4_k *w = row;
    float acc = 0, acc_min = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qs = w[b].qs;
        const int8_t *q8 = x[b].qs;
        const float d = finch_f16_to_f32(w[b].d) * x[b].d;
        const float dmin = finch_f16_to_f32(w[b].dmin) * x[b].d;
        int32_t isum = 0, imin = 0;
        for (int c = 0; c < 4; c++, qs += 32, q8 += 64) {
            int lo = 0, hi = 0, sc0, m0, sc1, m1;
            for (int l = 0; l < 32; l++) {
                lo += (qs[l] & 15) * q8[l];
                hi += (qs[l] >> 4) * q8[l + 32];
            }
            finch_k_scale_min(2 * c, w[b].scales, &sc0, &m0);
            finch_k_scale_min(2 * c + 1, w[b].scales, &sc1, &m1);
            isum += sc0 * lo + sc1 * hi;
            imin += m0 * (x[b].bsums[4 * c] + x[b].bsums[4 * c + 1]) +
                    m1 * (x[b].bsums[4 * c + 2] + x[b].bsums[4 * c + 3]);
            if (per_chunk) {
                acc = finch_fmaf((float)isum, d, acc);
                acc_min = finch_fmaf((float)imin, dmin, acc_min);
                isum = imin = 0;
            }
        }
        if (!per_chunk) {
            acc = finch_fmaf((float)isum, d, acc);
            acc_min = finch_fmaf((float)imin, dmin, acc_min);
        }
    }
    return acc - acc_min;
}

static void dot_q4_k(const uint8_t *row, size_t rb, int nr, const finch_block_q8_k *x, int64_t nb,
                     bool per_chunk, float *y) {
    for (int r = 0; r < nr; r++) y[r] = dot_q4_k_row(row + r * rb, x, nb, per_chunk);
}
#endif

static void kdot_q4_k(const uint8_t *row, size_t rb, int nr, const finch_block_q8_k *x, int64_t nb,
                      float *y) {
    dot_q4_k(row, rb, nr, x, nb, false, y);
}

static void kdot4_q4_k(const uint8_t *row, size_t rb, int nr, const finch_block_q8_k *x, int64_t nb,
                       float *y) {
    dot_q4_k(row, rb, nr, x, nb, true, y);
}

/* Q6_K x Q8_K as ggml_vec_dot_q6_K_q8_K's AVX2 code (which its AVX-512 builds run) sums it:
 * 8 integer lanes per super-block; value i (6-bit q_i, 0 .. 63, scale sc_{i/16}) goes to lane
 * (i mod 32) / 4, and lane l takes away 32 (sc_2l bsum_2l + sc_2l+1 bsum_2l+1) for the
 * values' offset of 32 (16-value sums, a different grouping). Each lane is added to its own
 * f32 accumulator by a fused multiply-add with d = d_x d_w, the lanes summed at the end. */
#if defined(__AVX2__) && defined(__FMA__)
/* The 8 integer lanes of one super-block: maddubs + madd put the products of values
 * 4l .. 4l+3 of every 32 into int32 lane l, each 32 with its two 16-value scales (low and
 * high 128-bit half). */
static inline __m256i q6_k_lanes(const finch_block_q6_k *w, const finch_block_q8_k *x) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
    __m256i lanes = _mm256_setzero_si256();
    for (int n = 0; n < 2; n++) {
        const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * n));
        const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * n + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * n));
        /* values 32k + l of this half: a nibble of ql, bits 2k, 2k+1 of qh[l] above it */
        const __m256i u[4] = {
            _mm256_or_si256(_mm256_and_si256(ql0, m4),
                            _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2)),
            _mm256_or_si256(_mm256_and_si256(ql1, m4),
                            _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                            _mm256_and_si256(qh, m2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)),
        };
        /* this half's 8 scales as int16 in both 128-bit lanes */
        const __m256i sc = _mm256_broadcastsi128_si256(
            _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(w->scales + 8 * n))));
        for (int k = 0; k < 4; k++) {
            __m256i p = _mm256_maddubs_epi16(
                u[k], _mm256_loadu_si256((const __m256i *)(x->qs + 128 * n + 32 * k)));
            __m256i s = _mm256_shuffle_epi8(sc, _mm256_set_m128i(PICK16(2 * k + 1), PICK16(2 * k)));
            lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p, s));
        }
    }
    /* lane l of the madd: sc_2l bsum_2l + sc_2l+1 bsum_2l+1 */
    __m256i corr =
        _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x->bsums),
                          _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales)));
    return _mm256_sub_epi32(lanes, _mm256_slli_epi32(corr, 5));
}

static void kdot_q6_k(const uint8_t *row, size_t rb, int nr, const finch_block_q8_k *x, int64_t nb,
                      float *y) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < nr; r++) {
            const finch_block_q6_k *w = (const finch_block_q6_k *)(row + r * rb) + b;
            const __m256 d = _mm256_set1_ps(x[b].d * finch_f16_to_f32(w->d));
            acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q6_k_lanes(w, x + b)), acc[r]);
        }
    for (int r = 0; r < nr; r++) y[r] = finch_cpu_hsum8(acc[r]);
}
#undef PICK16
#else
static float dot_q6_k_row(const void *row, const finch_block_q8_k *x, int64_t nb) {
    const finch_block_q6_k *w = row;
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        int32_t lane[8] = {0};
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = w[b].ql + 64 * n, *qh = w[b].qh + 32 * n;
            const int8_t *q8 = x[b].qs + 128 * n, *sc = w[b].scales + 8 * n;
            for (int l = 0; l < 32; l++) {
                int u0 = (ql[l] & 15) | ((qh[l] & 3) << 4);
                int u1 = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
                int u2 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                int u3 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                int s = l / 16;
                lane[l / 4] += sc[s] * u0 * q8[l] + sc[s + 2] * u1 * q8[l + 32] +
                               sc[s + 4] * u2 * q8[l + 64] + sc[s + 6] * u3 * q8[l + 96];
            }
        }
        const int8_t *sc = w[b].scales;
        const float d = x[b].d * finch_f16_to_f32(w[b].d);
        for (int l = 0; l < 8; l++) {
            lane[l] -= 32 * (sc[2 * l] * x[b].bsums[2 * l] + sc[2 * l + 1] * x[b].bsums[2 * l + 1]);
            acc[l] = finch_fmaf(d, (float)lane[l], acc[l]);
        }
    }
    return lanes_sum8(acc);
}

static void kdot_q6_k(const uint8_t *row, size_t rb, int nr, const finch_block_q8_k *x, int64_t nb,
                      float *y) {
    for (int r = 0; r < nr; r++) y[r] = dot_q6_k_row(row + r * rb, x, nb);
}
#endif

/* Per K-quant type: the product of one token, and where llama.cpp takes tokens four at a
 * time (repacked weights) the product of those (NULL: one for every token). */
static const struct {
    kdot_fn one, four;
} kdot_table[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_Q4_K] = {kdot_q4_k, kdot4_q4_k},
    [FINCH_DTYPE_Q6_K] = {kdot_q6_k, NULL},
};

/* y (T, R) for a K-quant weight: rows of x quantized to Q8_K in the shared buffer, then each
 * thread takes groups of KROWS weight rows (a few KiB, kept in cache) against every token, so
 * a token's activations are read once per group rather than once per row. */
enum { KROWS = 4 };

static void matmul_k(float *y, const float *x, const finch_weight *w, int64_t T,
                     finch_workspace *ws) {
    const int64_t R = w->rows, K = w->cols, nb = K / QK_K;
    kdot_fn one = kdot_table[w->type].one, four = kdot_table[w->type].four;
    const int64_t T4 = four ? T - T % 4 : 0; /* tokens llama.cpp takes four at a time */
    FINCH_ASSERT(K % QK_K == 0);
    FINCH_ASSERT(ws && ws->act_bytes >= (size_t)T * (size_t)nb * sizeof(finch_block_q8_k));
    finch_block_q8_k *xq = ws->act;
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; t++) finch_cpu_quantize_q8_k(xq + t * nb, x + t * K, K, t < T4);
    const uint8_t *W = w->data;
    const int64_t n_groups = (R + KROWS - 1) / KROWS;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < n_groups; g++) {
        const int64_t r0 = g * KROWS;
        const int nr = R - r0 < KROWS ? (int)(R - r0) : KROWS;
        float yr[KROWS];
        finch_cpu_prefetch_row(W + (size_t)r0 * w->row_bytes, (size_t)nr * w->row_bytes);
        for (int64_t t = 0; t < T; t++) {
            (t < T4 ? four : one)(W + (size_t)r0 * w->row_bytes, w->row_bytes, nr, xq + t * nb, nb,
                                  yr);
            for (int k = 0; k < nr; k++) y[t * R + r0 + k] = yr[k];
        }
    }
}

typedef float (*vdot_fn)(const void *row, const act_block *x, int64_t nb);
typedef void (*vdot4_fn)(const uint8_t *row, size_t row_bytes, const act_block *x, int64_t nb,
                         float *y);

#ifdef HAVE_VDOT4
static const vdot4_fn vdot4_table[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_Q4_0] = vdot4_q4_0,
    [FINCH_DTYPE_Q4_1] = vdot4_q4_1,
    [FINCH_DTYPE_Q8_0] = vdot4_q8_0,
};
#else
static const vdot4_fn vdot4_table[FINCH_DTYPE_COUNT];
#endif

static const vdot_fn vdot_table[FINCH_DTYPE_COUNT] = {
    [FINCH_DTYPE_Q4_0] = vdot_q4_0, [FINCH_DTYPE_Q4_1] = vdot_q4_1, [FINCH_DTYPE_Q5_0] = vdot_q5_0,
    [FINCH_DTYPE_Q5_1] = vdot_q5_1, [FINCH_DTYPE_Q8_0] = vdot_q8_0,
};

/* f32 and f16 weights as llama.cpp multiplies them: f32 activations meet f32 weights, f16
 * weights meet activations rounded to f16 (ggml's vec_dot_type), every product in the order
 * of finch_dot_ggml: llamafile's tinyBLAS for two tokens or more when K is a multiple of 16,
 * ggml_vec_dot_f32 / _f16 otherwise. */
static void matmul_float(float *y, const float *x, const finch_weight *w, int64_t T,
                         finch_workspace *ws) {
    const int64_t R = w->rows, K = w->cols;
    const bool f16 = w->type == FINCH_DTYPE_F16, one = T < 2;
    FINCH_ASSERT(ws && ws->per_thread >= 2 * (size_t)K);
#pragma omp parallel for schedule(static) num_threads(ws->n_threads)
    for (int64_t r = 0; r < R; r++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *wr = ws->buf + (size_t)tid * ws->per_thread, *xr = wr + K;
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
        if (f16)
            for (int64_t k = 0; k < K; k++) wr[k] = finch_f16_to_f32(((const uint16_t *)row)[k]);
        else
            memcpy(wr, row, (size_t)K * sizeof(float));
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * K;
            if (f16) {
                for (int64_t k = 0; k < K; k++) xr[k] = finch_f16_to_f32(finch_f32_to_f16(xt[k]));
                xt = xr;
            }
            y[t * R + r] = finch_dot_ggml(wr, xt, K, K, one);
        }
    }
}

void finch_cpu_matmul_q8(float *y, const float *x, const finch_weight *w, int64_t T,
                         finch_workspace *ws) {
    if (w->type == FINCH_DTYPE_F32 || w->type == FINCH_DTYPE_F16) {
        matmul_float(y, x, w, T, ws);
        return;
    }
    if (kdot_table[w->type].one) {
        matmul_k(y, x, w, T, ws);
        return;
    }
    vdot_fn dot = vdot_table[w->type];
    if (!dot) {
        finch_cpu_matmul(y, x, w, T, ws);
        return;
    }
    const int64_t R = w->rows, K = w->cols, nb = K / QK;
    FINCH_ASSERT(ws && ws->act_bytes >= (size_t)T * (size_t)nb * sizeof(act_block));
    act_block *xq = ws->act;
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; t++) quantize_act_row(xq + t * nb, x + t * K, K);
    vdot4_fn dot4 = vdot4_table[w->type];
    const uint8_t *W = w->data;
    const int64_t n_chunks = (R + ROW_CHUNK - 1) / ROW_CHUNK;
#ifdef HAVE_VDOT4
    const bool unpackable = dot4 || w->type == FINCH_DTYPE_Q5_0;
    if (unpackable && T >= 4) {
        FINCH_ASSERT(ws->per_thread * sizeof(float) >=
                     4 * (size_t)K + 8 * (size_t)nb * sizeof(float));
        const int64_t n_groups = R / 4;
#pragma omp parallel for schedule(static) num_threads(ws->n_threads)
        for (int64_t g = 0; g < n_groups; g++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            float *scratch = ws->buf + (size_t)tid * ws->per_thread;
            unpacked4 u = {.d = scratch, .m = scratch + 4 * nb, .q = (int8_t *)(scratch + 8 * nb)};
            unpack4(w->type, W + (size_t)(4 * g) * w->row_bytes, w->row_bytes, nb, &u);
            float y4[4];
            for (int64_t t = 0; t < T; t++) {
                vdot4_unpacked(&u, xq + t * nb, nb, y4);
                for (int k = 0; k < 4; k++) y[t * R + 4 * g + k] = y4[k];
            }
        }
        for (int64_t r = 4 * n_groups; r < R; r++)
            for (int64_t t = 0; t < T; t++)
                y[t * R + r] = dot(W + (size_t)r * w->row_bytes, xq + t * nb, nb);
        return;
    }
#endif
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < n_chunks; c++) {
        int64_t r1 = (c + 1) * ROW_CHUNK < R ? (c + 1) * ROW_CHUNK : R;
        for (int64_t t = 0; t < T; t++) {
            int64_t r = c * ROW_CHUNK;
            float y4[4];
            for (; dot4 && r + 4 <= r1; r += 4) {
                if (t == 0) finch_cpu_prefetch_row(W + (size_t)r * w->row_bytes, 4 * w->row_bytes);
                dot4(W + (size_t)r * w->row_bytes, w->row_bytes, xq + t * nb, nb, y4);
                for (int k = 0; k < 4; k++) y[t * R + r + k] = y4[k];
            }
            for (; r < r1; r++) {
                if (t == 0) finch_cpu_prefetch_row(W + (size_t)r * w->row_bytes, w->row_bytes);
                y[t * R + r] = dot(W + (size_t)r * w->row_bytes, xq + t * nb, nb);
            }
        }
    }
}
