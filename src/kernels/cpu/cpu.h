/*
 * cpu.h: the CPU backend's ops, gathered into one op table by backend.c. Contracts are
 * those of the matching finch_backend members (kernels/kernels.h).
 *
 * Every file of kernels/cpu/ is compiled once per instruction set (CMakeLists.txt: generic,
 * avx2, avx512, avx512vnni on x86-64; one set elsewhere), with FINCH_ISA naming it. The
 * names below then get the set's suffix (finch_cpu_matmul_avx2, finch_backend_cpu_avx2),
 * so the copies link side by side and kernels/cpu_select.c picks one table at run time.
 */
#ifndef FINCH_KERNELS_CPU_H
#define FINCH_KERNELS_CPU_H

#include "kernels/kernels.h"
#include "core/quant.h" /* QK */

#include <math.h>
#include <string.h>

/* Without FINCH_ISA (kernels/workspace.c, kernels/cpu_select.c) only the sizes and inline
 * helpers below are meant to be used. */
#ifdef FINCH_ISA
#define FINCH_ISA_CAT2(a, b) a##_##b
#define FINCH_ISA_CAT(a, b) FINCH_ISA_CAT2(a, b)
#define FINCH_ISA_NAME(n) FINCH_ISA_CAT(n, FINCH_ISA)
#define FINCH_ISA_STR2(x) #x
#define FINCH_ISA_STR(x) FINCH_ISA_STR2(x)
#define finch_backend_cpu FINCH_ISA_NAME(finch_backend_cpu)
#define finch_cpu_matmul FINCH_ISA_NAME(finch_cpu_matmul)
#define finch_cpu_row_dot FINCH_ISA_NAME(finch_cpu_row_dot)
#define finch_cpu_row_dot_blocks FINCH_ISA_NAME(finch_cpu_row_dot_blocks)
#define finch_cpu_row_dequant FINCH_ISA_NAME(finch_cpu_row_dequant)
#define finch_cpu_sgemm_nn FINCH_ISA_NAME(finch_cpu_sgemm_nn)
#define finch_bf16_pack_a FINCH_ISA_NAME(finch_bf16_pack_a)
#define finch_bf16_pack_b_nn FINCH_ISA_NAME(finch_bf16_pack_b_nn)
#define finch_bf16_pack_b_rows FINCH_ISA_NAME(finch_bf16_pack_b_rows)
#define finch_cpu_gemm_bf16 FINCH_ISA_NAME(finch_cpu_gemm_bf16)
#define finch_bf16_amx FINCH_ISA_NAME(finch_bf16_amx)
#define finch_cpu_matmul_q8 FINCH_ISA_NAME(finch_cpu_matmul_q8)
#define finch_cpu_quantize_q8_k FINCH_ISA_NAME(finch_cpu_quantize_q8_k)
#define finch_cpu_attention_forward_f16 FINCH_ISA_NAME(finch_cpu_attention_forward_f16)
#define finch_cpu_to_f16 FINCH_ISA_NAME(finch_cpu_to_f16)
#define finch_cpu_embed FINCH_ISA_NAME(finch_cpu_embed)
#define finch_cpu_rmsnorm_forward FINCH_ISA_NAME(finch_cpu_rmsnorm_forward)
#define finch_cpu_rmsnorm_llamacpp FINCH_ISA_NAME(finch_cpu_rmsnorm_llamacpp)
#define finch_cpu_swiglu_llamacpp FINCH_ISA_NAME(finch_cpu_swiglu_llamacpp)
#define finch_cpu_gelu_llamacpp FINCH_ISA_NAME(finch_cpu_gelu_llamacpp)
#define finch_cpu_rope_llamacpp FINCH_ISA_NAME(finch_cpu_rope_llamacpp)
#define finch_cpu_layernorm_llamacpp FINCH_ISA_NAME(finch_cpu_layernorm_llamacpp)
#define finch_cpu_geglu_llamacpp FINCH_ISA_NAME(finch_cpu_geglu_llamacpp)
#define finch_cpu_rope_forward FINCH_ISA_NAME(finch_cpu_rope_forward)
#define finch_cpu_attention_forward FINCH_ISA_NAME(finch_cpu_attention_forward)
#define finch_cpu_swiglu_forward FINCH_ISA_NAME(finch_cpu_swiglu_forward)
#define finch_cpu_add FINCH_ISA_NAME(finch_cpu_add)
#define finch_cpu_adamw_step FINCH_ISA_NAME(finch_cpu_adamw_step)
#define finch_cpu_adamw_step_consume FINCH_ISA_NAME(finch_cpu_adamw_step_consume)
#define finch_cpu_scale FINCH_ISA_NAME(finch_cpu_scale)
#define finch_cpu_geglu_forward FINCH_ISA_NAME(finch_cpu_geglu_forward)
#define finch_cpu_geglu_backward FINCH_ISA_NAME(finch_cpu_geglu_backward)
#define finch_cpu_scale_cols FINCH_ISA_NAME(finch_cpu_scale_cols)
#define finch_cpu_col_dot FINCH_ISA_NAME(finch_cpu_col_dot)
#define finch_cpu_dora_combine FINCH_ISA_NAME(finch_cpu_dora_combine)
#define finch_cpu_dora_backward FINCH_ISA_NAME(finch_cpu_dora_backward)
#define finch_cpu_dropout_forward FINCH_ISA_NAME(finch_cpu_dropout_forward)
#define finch_cpu_dropout_backward FINCH_ISA_NAME(finch_cpu_dropout_backward)
#define finch_cpu_dropout_bits FINCH_ISA_NAME(finch_cpu_dropout_bits)
#define finch_cpu_lora_down_backward FINCH_ISA_NAME(finch_cpu_lora_down_backward)
#define finch_cpu_matmul_masked FINCH_ISA_NAME(finch_cpu_matmul_masked)
#define finch_cpu_matmul_split FINCH_ISA_NAME(finch_cpu_matmul_split)
#define finch_cpu_matmul_backward_masked FINCH_ISA_NAME(finch_cpu_matmul_backward_masked)
#define finch_cpu_gemm FINCH_ISA_NAME(finch_cpu_gemm)
#define finch_cpu_matmul_backward_input FINCH_ISA_NAME(finch_cpu_matmul_backward_input)
#define finch_cpu_matmul_backward_weight FINCH_ISA_NAME(finch_cpu_matmul_backward_weight)
#define finch_cpu_embed_backward FINCH_ISA_NAME(finch_cpu_embed_backward)
#define finch_cpu_rmsnorm_backward FINCH_ISA_NAME(finch_cpu_rmsnorm_backward)
#define finch_cpu_rope_backward FINCH_ISA_NAME(finch_cpu_rope_backward)
#define finch_cpu_attention_forward_train FINCH_ISA_NAME(finch_cpu_attention_forward_train)
#define finch_cpu_attention_backward FINCH_ISA_NAME(finch_cpu_attention_backward)
#define finch_cpu_swiglu_backward FINCH_ISA_NAME(finch_cpu_swiglu_backward)
#define finch_cpu_softmax_xent FINCH_ISA_NAME(finch_cpu_softmax_xent)
#define finch_cpu_layernorm_forward FINCH_ISA_NAME(finch_cpu_layernorm_forward)
#define finch_cpu_layernorm_backward FINCH_ISA_NAME(finch_cpu_layernorm_backward)
#define finch_cpu_gelu_forward FINCH_ISA_NAME(finch_cpu_gelu_forward)
#define finch_cpu_gelu_backward FINCH_ISA_NAME(finch_cpu_gelu_backward)
#endif

#if defined(__AVX2__)
#include <immintrin.h>
/* The sum of 8 lanes: the upper half added to the lower, then lanes 0 + 2 and 1 + 3, then
 * those two (ggml's hsum_float_8 order). */
static inline float finch_cpu_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 packed bytes -> 32 values 0 .. 15: element j the low nibble of byte j, element j + 16
 * its high nibble (the Q4_0 .. Q5_1 layout). */
static inline __m256i finch_cpu_nibbles32(const uint8_t *qs) {
    __m128i b = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}
#endif

/* Rows of a matmul tile plus its staging rows (matmul.c): the workspace holds this many
 * rows of the widest weight per thread, and TILE_PAD more. A dequantized tile's rows are
 * stored TILE_PAD floats longer than they are: widths are multiples of 32 floats (an even
 * number of 64-byte lines), so at their own width the column panel the GEMM kernel walks
 * down would fall into a fraction of the L1 sets and miss (Zen 3: 68 against 84 GFLOP/s
 * at 512 x 64 x 576); 16 more floats make the stride an odd number of lines. */
enum { FINCH_CPU_TILE_ROWS = 64, FINCH_CPU_TILE_PAD = 16, FINCH_CPU_STAGE_ROWS = 16 };

/* Eight floats as one value (an AVX register, two SSE or NEON ones) for the kernels written
 * on vector extensions. GCC and clang warn that such a value returned without AVX would pass
 * differently between objects; the helpers are static and inlined, so none crosses a call. */
typedef float finch_v8 __attribute__((vector_size(8 * sizeof(float))));
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
static inline finch_v8 finch_load8(const float *p) {
    finch_v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void finch_store8(float *p, finch_v8 v) {
    memcpy(p, &v, sizeof v);
}

/* Sixteen floats as one value (an AVX-512 register, two AVX ones), the same way. */
typedef float finch_v16 __attribute__((vector_size(16 * sizeof(float))));
static inline finch_v16 finch_load16(const float *p) {
    finch_v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void finch_store16(float *p, finch_v16 v) {
    memcpy(p, &v, sizeof v);
}

/* Generation reads every weight once per token, from memory: one stored row's dot product is
 * too short for the hardware prefetcher to run ahead of it, so the row loops ask for the
 * bytes FINCH_CPU_PREFETCH_AHEAD past each row while they work on it (a weight's rows are
 * contiguous), into L2 (prefetcht2; prefetcht1 measured the same). Into L1 (prefetcht0)
 * the requests held the line fill buffers that the dot product's own loads wait for.
 * Xeon with AVX-512, two threads, Gemma 3's Q8_0 head (262144 rows of 640): 15.9 GB/s
 * into L1 4 KB ahead, 18.5 into L2 2 KB ahead (1 KB 17.1, 4 KB 17.4); no prefetch 10.1. */
enum { FINCH_CPU_PREFETCH_AHEAD = 2048 };
static inline void finch_cpu_prefetch_row(const uint8_t *row, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64)
        __builtin_prefetch(row + FINCH_CPU_PREFETCH_AHEAD + o, 0, 1);
}

/* Training attention's tiles (attention.c): blocks of BQ query rows against tiles of BK keys;
 * a thread's workspace holds a tile of keys and one of values transposed (D, BK each) and
 * the probabilities and their gradients (BQ, BK each). */
enum { FINCH_CPU_ATT_BQ = 64, FINCH_CPU_ATT_BK = 32 };
static inline size_t finch_cpu_attention_need(int64_t D) {
    return 2 * (size_t)FINCH_CPU_ATT_BK * (size_t)D +
           2 * (size_t)FINCH_CPU_ATT_BQ * FINCH_CPU_ATT_BK;
}

/* matmul_q8's quantized activation block: Q8_0 plus s = d * sum(q) (Q8_1 when s is used). */
typedef struct {
    float d; /* scale, already rounded through fp16 as llama.cpp stores it */
    float s; /* d * sum(qs), rounded through fp16 */
    int8_t qs[QK];
} finch_q8_act;

/* a * b + c rounded once, as fmaf: the FMA instruction where the target has one (llamacpp
 * numerics' fused steps in matmul_q8.c and swiglu.c), else in double without a libm call:
 * the product is exact in double, the sum is rounded to odd (RN, then its last bit set
 * where the TwoSum error is not zero) and then to f32, which rounds as one step would. */
static inline float finch_fmaf(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
    return fmaf(a, b, c);
#else
    double p = (double)a * (double)b, s = p + (double)c, bb = s - p;
    double e = (p - (s - bb)) + ((double)c - bb);
    uint64_t u;
    memcpy(&u, &s, sizeof u);
    if (e != 0 && e == e && !(u & 1)) { /* e is NaN when s is infinite */
        u += (e > 0) == (s > 0) ? 1 : (uint64_t)-1;
        memcpy(&s, &u, sizeof s);
    }
    return (float)s;
#endif
}

/* e^x as ggml computes it in its vectorised SiLU and soft max on AVX-512 (ggml_v_expf, after Arm's
 * optimized-routines expf): n = x log2(e) rounded to an integer by adding and subtracting
 * 1.5 * 2^23, r = x - n ln2 with ln2 in two parts, e^r by a degree-5 polynomial in r
 * evaluated with fused multiply-adds (Estrin's scheme, the constant 1 added in the first
 * fma), then scaled by 2^n (exactly, but for a subnormal result rounded once); |n| > 192
 * gives 0 or infinity. finch_fmaf and ldexpf are correctly rounded wherever they run, so
 * every instruction set gets the same bits. ggml's AVX2 and SSE builds add the 1 after the
 * polynomial instead (k + k p(r), k = 2^n), which rounds differently: finch follows the
 * AVX-512 build, the one its fixtures were made with. */
static inline float finch_expf_ggml(float x) {
    const float shift = 0x1.8p23f;
    float z = finch_fmaf(x, 0x1.715476p+0f, shift);
    float n = z - shift;
    float r = finch_fmaf(-n, 0x1.7f7d1cp-20f, finch_fmaf(-n, 0x1.62e4p-1f, x));
    float r2 = r * r;
    float hi = finch_fmaf(finch_fmaf(0x1.0e4020p-7f, r, 0x1.573e2ep-5f), r2,
                          finch_fmaf(0x1.555e66p-3f, r, 0x1.fffdb6p-2f));
    float p = finch_fmaf(hi, r2, finch_fmaf(0x1.ffffecp-1f, r, 1.0f));
    if (n != n) return n;
    if (fabsf(n) > 192.0f) return n > 0 ? INFINITY : 0.0f;
    return ldexpf(p, (int)n);
}

/* 16 lanes summed as GCC's _mm512_reduce_add_ps does: the upper 8 onto the lower 8, then
 * 4 onto 4, then lanes 0 + 2 and 1 + 3, then those two. */
static inline float finch_reduce16(const float *a) {
    float b[8], c[4];
    for (int i = 0; i < 8; i++) b[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) c[i] = b[i] + b[i + 4];
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* sum_i a_i b_i in the order of llama.cpp's f16 and f32 products (ggml_vec_dot_f16,
 * ggml_vec_dot_f32 and tinyBLAS share it). With several tokens and n_full (the
 * length ggml sees) a multiple of 16, llamafile's tinyBLAS: lane i mod 16 adds a_i b_i by a fused
 * multiply-add, then reduce16. Otherwise ggml_vec_dot_f16: over the first n - n mod 64 values four
 * vectors of 16 lanes take the runs of 16 in turn (value i in vector (i / 16) mod 4), the
 * vectors are added 0 + 2, 1 + 3, then those two, then reduce16; the rest are added one by
 * one in double, each product rounded to f32 first. A run may end early where the rest
 * would be zero products (masked or unused cache cells): those change no sum. */
static inline float finch_dot_ggml(const float *a, const float *b, int64_t n, int64_t n_full,
                                   bool one_token) {
    float acc[4][16] = {{0}};
    const bool tiny = !one_token && n_full % 16 == 0;
    const int64_t nv = tiny ? n : n_full - n_full % 64, nacc = tiny ? 1 : 4;
    for (int64_t i = 0; i < (n < nv ? n : nv); i++) {
        float *l = &acc[(i / 16) % nacc][i % 16];
        *l = finch_fmaf(a[i], b[i], *l);
    }
    if (!tiny)
        for (int l = 0; l < 16; l++) acc[0][l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    double sum = finch_reduce16(acc[0]);
    for (int64_t i = nv; i < n; i++) sum += (double)(a[i] * b[i]);
    return (float)sum;
}

/* n rounded up to 32, and the values of B (K, N) packed for the bf16 product. */
static inline int64_t finch_bf16_pad(int64_t n) {
    return (n + 31) & ~(int64_t)31;
}
static inline size_t finch_bf16_b_size(int64_t K, int64_t N) {
    return (size_t)finch_bf16_pad(K) * (size_t)finch_bf16_pad(N);
}

void finch_cpu_matmul(float *y, const float *x, const finch_weight *w, int64_t T,
                      finch_workspace *ws);
/* Stored rows (quant_rows.c): row_dot, the fused dot of one row of n values of type t with
 * an f32 vector (NULL where the type has none; row_dot_blocks then expands a block at a
 * time); row_dequant, a dequantizer whose values are core/quant.c's bit for bit. */
typedef float (*finch_cpu_dot_fn)(const void *row, const float *x, int64_t n);
finch_cpu_dot_fn finch_cpu_row_dot(finch_dtype t);
float finch_cpu_row_dot_blocks(finch_dtype t, const void *row, const float *x, int64_t n);
finch_dequant_fn finch_cpu_row_dequant(finch_dtype t);
/* C (M, N) = A (M, K) . B (K, N), or += when accumulate; row-major with row strides lda,
 * ldb, ldc; single-threaded, the same bits every run (gemm.c). */
void finch_cpu_sgemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                        const float *B, int64_t ldb, float *C, int64_t ldc, bool accumulate);
/* bf16 products (gemm_bf16.c): operands rounded to bf16 and packed, sums in f32.
 * pack_a: A (M, K) (or its transpose, trans: src is
 * (K, M)) into pad(M) x pad(K) values, zeros around. pack_b_nn: B (K, N) row-major into
 * VNNI panels of finch_bf16_b_size(K, N) values, zeros around; pack_b_rows: n rows of W
 * (each K values: B = W^T) as columns n0.. of such panels with pad(K) = Kp (the caller
 * zeroes columns it leaves out). gemm_bf16: C (M, N) = A . B (+= when acc), A packed with
 * row stride lda (its padded width), B packed; single-threaded. finch_bf16_amx: whether
 * the AMX path runs (else the same rounded operands go through finch_cpu_sgemm_nn). */
void finch_bf16_pack_a(uint16_t *dst, const float *src, int64_t M, int64_t K, int64_t lds,
                       bool trans);
void finch_bf16_pack_b_nn(uint16_t *dst, const float *B, int64_t K, int64_t N, int64_t ldb);
void finch_bf16_pack_b_rows(uint16_t *dst, int64_t Kp, int64_t n0, const float *W, int64_t n,
                            int64_t K, int64_t ldw);
void finch_cpu_gemm_bf16(int64_t M, int64_t N, int64_t K, const uint16_t *A, int64_t lda,
                         const uint16_t *Bp, float *C, int64_t ldc, bool acc);
bool finch_bf16_amx(void);
void finch_cpu_matmul_q8(float *y, const float *x, const finch_weight *w, int64_t T,
                         finch_workspace *ws);
/* x (n values, a multiple of QK_K) as n / QK_K Q8_K blocks, quantized as matmul_q8 quantizes
 * a token for K-quant weights; four_rows: the rule of tokens taken four at a time. */
void finch_cpu_quantize_q8_k(finch_block_q8_k *y, const float *x, int64_t n, bool four_rows);
void finch_cpu_attention_forward_f16(float *out, const float *q, const uint16_t *k,
                                     const uint16_t *v, int64_t T, int64_t pos0, int H, int KVH,
                                     int D, float scale, bool neox, int64_t window,
                                     finch_workspace *ws);
void finch_cpu_rope_llamacpp(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_cpu_layernorm_llamacpp(float *y, const float *x, const float *w, const float *b,
                                  int64_t T, int64_t C, float eps);
void finch_cpu_to_f16(uint16_t *dst, const float *src, int64_t n);
void finch_cpu_embed(float *x, const int32_t *ids, int64_t T, const finch_weight *emb);
void finch_cpu_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T,
                               int64_t C, float eps);
void finch_cpu_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_cpu_attention_forward(float *out, const float *q, const float *k, const float *v,
                                 int64_t T, int64_t pos0, int H, int KVH, int D, int64_t window,
                                 finch_workspace *ws);
void finch_cpu_swiglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_cpu_rmsnorm_llamacpp(float *y, const float *x, const float *w, int64_t T, int64_t C,
                                float eps);
void finch_cpu_swiglu_llamacpp(float *h, const float *gate, const float *up, int64_t T, int64_t F);
void finch_cpu_gelu_llamacpp(float *y, const float *x, int64_t n);
void finch_cpu_geglu_llamacpp(float *h, const float *gate, const float *up, int64_t n);
void finch_cpu_add(float *y, const float *x, int64_t n);
void finch_cpu_adamw_step(float *p, float *m, float *v, const float *g, int64_t n,
                          const finch_adamw_scalars *s);
double finch_cpu_adamw_step_consume(float *p, float *m, float *v, float *g, int64_t n,
                                    const finch_adamw_scalars *s);
void finch_cpu_scale(float *x, int64_t n, float a);
void finch_cpu_geglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_cpu_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                              const float *up, int64_t n);
void finch_cpu_layernorm_forward(float *y, float *stats, const float *x, const float *w,
                                 const float *b, int64_t T, int64_t C, float eps);
void finch_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                  const float *stats, const float *x, const float *w, int64_t T,
                                  int64_t C);
void finch_cpu_gelu_forward(float *y, const float *x, int64_t n);
void finch_cpu_gelu_backward(float *dx, const float *dy, const float *x, int64_t n);
void finch_cpu_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n);
void finch_cpu_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n);
void finch_cpu_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d);
void finch_cpu_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d);
void finch_cpu_dropout_bits(uint64_t *bits, int64_t T, int64_t n, const finch_dropout *d);
void finch_cpu_lora_down_backward(float *dA, float *dx, const float *du, const float *x,
                                  const float *A, int64_t T, int64_t in, int64_t r,
                                  const finch_dropout *d);
void finch_cpu_matmul_split(float *y, const float *x, const finch_split *sp, const finch_weight *w,
                            int64_t T, finch_workspace *ws);
void finch_cpu_matmul_masked(float *y, const float *x, const uint64_t *bits, float alpha,
                             const finch_weight *w, int64_t T, finch_workspace *ws);
void finch_cpu_dora_backward(float *dm, float *gs, float *h, const float *g, const float *zl,
                             const float *s1, const float *s2, int64_t T, int64_t n);
void finch_cpu_dora_combine(float *y, float *zl, const float *u, const float *bt, int64_t r,
                            float c, const float *s, int64_t T, int64_t n);
void finch_cpu_matmul_backward_masked(float *dx, const float *dy, const uint64_t *bits, float alpha,
                                      const finch_weight *w, int64_t T, finch_workspace *ws);
void finch_cpu_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void finch_cpu_matmul_backward_input(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                     finch_workspace *ws);
void finch_cpu_matmul_backward_weight(float *dw, const float *dy, const float *x, int64_t T,
                                      int64_t rows, int64_t cols, finch_workspace *ws);
void finch_cpu_embed_backward(float *demb, const float *dx, const int32_t *ids, int64_t T,
                              int64_t C);
void finch_cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *rstd,
                                const float *x, const float *w, int64_t T, int64_t C);
void finch_cpu_rope_backward(float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_cpu_attention_forward_train(float *out, float *att, const float *q, const float *k,
                                       const float *v, const int32_t *seg,
                                       const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                       int KVH, int D, int64_t window, finch_workspace *ws);
void finch_cpu_attention_backward(float *dq, float *dk, float *dv, float *ds, const float *dout,
                                  const float *out, const float *att, const float *q,
                                  const float *k, const float *v, const int32_t *seg,
                                  const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                  int KVH, int D, int64_t window, finch_workspace *ws);
void finch_cpu_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n);
double finch_cpu_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                              int64_t N, int64_t V, float grad_scale);

#endif /* FINCH_KERNELS_CPU_H */
