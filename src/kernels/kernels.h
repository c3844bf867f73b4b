/*
 * kernels.h: the math, behind a backend table so a CUDA backend can replace the CPU one.
 *
 * Shapes use the shared letters: T tokens, C hidden, H query heads, KVH key/value heads,
 * D head dim, F FFN width, V vocabulary. Matrices are row-major. A weight is stored as
 * [rows = out features][cols = in features] in its storage type (FORMATS.md 1.5) and is
 * never converted whole: matmuls dequantize a tile at a time.
 *
 * kernels/ref/ holds naive double-accumulating versions of every op; tests compare each
 * backend against them.
 */
#ifndef FINCH_KERNELS_H
#define FINCH_KERNELS_H

#include "core/core.h"

/* A weight matrix in its storage type (a view: data is borrowed, usually the mapping). */
typedef struct {
    finch_dtype type; /* storage type */
    int64_t rows;     /* output features */
    int64_t cols;     /* input features (a multiple of the type's block size) */
    size_t row_bytes; /* bytes of one stored row */
    const void *data; /* rows * row_bytes bytes */
} finch_weight;

/* dst (n, w->cols) = rows r0 .. r0+n-1 of w, dequantized to f32. */
static inline void finch_weight_rows_f32(const finch_weight *w, int64_t r0, int64_t n, float *dst) {
    for (int64_t r = 0; r < n; r++)
        finch_dtype_info[w->type].dequant(
            dst + r * w->cols, (const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes, w->cols);
}

/* Scratch, allocated once per session or run and reused by every op: a slice per thread
 * and one shared buffer for activations quantized by matmul_q8. */
typedef struct {
    float *buf;        /* n_threads * per_thread floats, 64-byte aligned */
    size_t per_thread; /* floats per thread (a multiple of 16) */
    int n_threads;     /* threads it was sized for */
    void *act;         /* shared: quantized rows of x for matmul_q8 (may be NULL) */
    size_t act_bytes;  /* its size */
    bool bf16;         /* the matmuls multiply in bf16 (--bf16) */
    uint16_t *a16;     /* shared with bf16: an operand rounded to bf16, a16_elems values */
    size_t a16_elems;
    uint16_t *b16; /* shared with bf16: matmul_backward_weight's x packed, b16_elems values */
    size_t b16_elems;
} finch_workspace;

/* Floats of scratch per thread that the ops need for weights up to max_cols wide and
 * attention over up to n_ctx positions. */
size_t finch_workspace_need(int64_t max_cols, int64_t n_ctx);

/* Bytes of the shared buffer matmul_q8 needs for T rows up to max_cols wide. */
size_t finch_workspace_act_need(int64_t T, int64_t max_cols);

/* Allocates n_threads slices of per_thread floats and an act_bytes shared buffer. */
finch_status finch_workspace_init(finch_workspace *ws, size_t per_thread, int n_threads,
                                  size_t act_bytes, finch_err *err);
void finch_workspace_free(finch_workspace *ws);

/* Turns on bf16 products for matmul, matmul_backward_input and matmul_backward_weight
 * with this workspace (mixed precision: W and the activations rounded to bf16, sums in
 * f32), for up to T rows against weights up to max_dim rows or columns wide, of which
 * those whose weight gradient is taken have inputs up to max_in wide. */
finch_status finch_workspace_bf16(finch_workspace *ws, int64_t T, int64_t max_dim, int64_t max_in,
                                  finch_err *err);

/* A dropout keep mask: element i is kept when finch_mix64(base + i) >= threshold, and kept
 * elements are scaled by scale = 1 / (1 - p). A function of (base + i) alone, so backward
 * regenerates what forward used without storing it. */
typedef struct {
    uint64_t base, threshold;
    float scale;
} finch_dropout;

/* The mask of probability p (in [0, 1)) for one step seed and one stream (a site). */
finch_dropout finch_dropout_make(uint64_t seed, uint64_t stream, float p);

/* 64-bit words of one row of n elements' mask bits (dropout_bits). */
static inline int64_t finch_mask_words(int64_t n) {
    return (n + 63) / 64;
}

/* Keys and values that every query of training attention sees before its own row's
 * (prefix tuning): n of them, row p of each at k + p * stride and v + p * stride (KVH*D
 * values, keys already rotated or never rotated); their gradients are added (+=) to dk,
 * dv (same layout) when those are not NULL. */
typedef struct {
    const float *k, *v;
    float *dk, *dv;
    int64_t n, stride;
} finch_attn_prefix;

/* The scalars of one AdamW step over a range (optim/adamw.c forms them from the config,
 * the learning rate and the step number in torch's way: doubles rounded to float). */
typedef struct {
    float decay;         /* 1 - lr * weight_decay, or 1 for a range without decay */
    float b1, one_b1;    /* beta1 and 1 - beta1 */
    float b2, one_b2;    /* beta2 and 1 - beta2 */
    float bc2_sqrt;      /* sqrt(1 - beta2^t) */
    float eps;           /* epsilon */
    float neg_step_size; /* -lr / (1 - beta1^t) */
    float grad_scale;    /* g is multiplied by it first: gradient clipping's coefficient, or 1 */
} finch_adamw_scalars;

/* Optional abilities of ops a backend has, asked through finch_backend_supports. */
typedef enum {
    FINCH_FEATURE_WEIGHT_TYPE = 0, /* arg: a finch_dtype that matmul, matmul_backward_input
                                      and embed read */
    FINCH_FEATURE_ATTN_PREFIX = 1, /* attention_forward_train / _backward take pre != NULL */
    FINCH_FEATURE_BF16 = 2,        /* the matmuls honour ws->bf16 (mixed precision) */
    FINCH_FEATURE_COUNT
} finch_feature;

/* What matmul_split computes beside y = x W^T from the same pass over W, each part
 * optional: ym (T, w->rows) = y + alpha (x at the elements bits selects) . W^T (bits NULL:
 * none), and p (np, w->rows) = a (np, w->cols) . W^T (np 0: none). */
typedef struct {
    float *ym;
    const uint64_t *bits;
    float alpha;
    float *p;
    const float *a;
    int64_t np;
} finch_split;

/* The op table. Every member is a pure function of its arguments; outputs never alias
 * inputs unless stated. All CPU ops run on finch_threads_get() threads and give the same
 * bits for the same thread count (a device's, the same bits on every run).
 *
 * Pointers handed to the ops live where the backend computes: host memory for the CPU
 * backend, device memory for a device backend (device true), there from alloc and filled
 * by copy_in; a finch_weight's data too. Host-side arguments stay on the host: the
 * finch_weight and finch_attn_prefix structs themselves, finch_dropout, the workspace
 * struct (a device backend reads only its flags) and every scalar. A member left NULL is an
 * op the backend does not have; the CPU backend fills every member. */
typedef struct {
    const char *name;

    /* y (T, w->rows) = x (T, w->cols) . W^T. */
    void (*matmul)(float *y, const float *x, const finch_weight *w, int64_t T, finch_workspace *ws);

    /* As matmul, with llama.cpp's inference numerics: rows of x are quantized to 8 bits
     * per block (Q8_0/Q8_1) and multiplied with quantized weights by integer dot
     * products; types without such a kernel fall back to matmul. Needs ws->act. */
    void (*matmul_q8)(float *y, const float *x, const finch_weight *w, int64_t T,
                      finch_workspace *ws);

    /* x (T, C) = rows ids (T) of the embedding table emb (V rows of C), dequantized. */
    void (*embed)(float *x, const int32_t *ids, int64_t T, const finch_weight *emb);

    /* y (T, C) = x / sqrt(mean(x^2) + eps) * w (C); rstd (T) receives the 1/sqrt(...)
     * factors when not NULL. y may alias x. */
    void (*rmsnorm_forward)(float *y, float *rstd, const float *x, const float *w, int64_t T,
                            int64_t C, float eps);

    /* In-place rotary embedding of x (T, nh, D) at positions pos (T), rotating adjacent
     * pairs (x[2i], x[2i+1]) by pos * theta^(-2i/D) (llama.cpp's NORM mode; weights read
     * from GGUF are in the matching row order, FORMATS.md 4). */
    void (*rope_forward)(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta);

    /* Causal grouped-query attention over a cache. q (T, H*D) holds queries at positions
     * pos0 .. pos0+T-1; k, v (pos0+T, KVH*D) hold keys and values of positions 0 ..
     * pos0+T-1. out (T, H*D) = softmax(q k^T / sqrt(D)) v per head, query head h using
     * KV head h / (H/KVH). window > 0: a query at position p sees only keys at positions
     * above p - window (sliding-window attention); 0: all. */
    void (*attention_forward)(float *out, const float *q, const float *k, const float *v, int64_t T,
                              int64_t pos0, int H, int KVH, int D, int64_t window,
                              finch_workspace *ws);

    /* attention_forward over an f16 cache as llama.cpp computes it without flash attention
     * (AVX-512 build): queries and the softmax probabilities rounded to f16, the scores
     * multiplied by scale (1 / sqrt(D), or 1 where the caller scaled q before, as llama.cpp's
     * Gemma 3 graph does), the products summed in ggml's order (tinyBLAS's 16 lanes for
     * T >= 2, ggml_vec_dot_f16's 4 x 16 for T = 1), the exponentials ggml's. With neox,
     * each head of q and k holds rotate-half pairs side by side (a NEOX model's rows as
     * finch loads them) and K q runs over llama.cpp's order (element i, then i + D/2 ...
     * as the first half, then the second). k, v are (pos0+T, KVH*D) IEEE half floats. */
    void (*attention_forward_f16)(float *out, const float *q, const uint16_t *k, const uint16_t *v,
                                  int64_t T, int64_t pos0, int H, int KVH, int D, float scale,
                                  bool neox, int64_t window, finch_workspace *ws);

    /* layernorm_forward as llama.cpp computes it (ggml_norm, then its mul by w and add of b;
     * AVX-512 build): the mean from a double sum, the variance from f32 squares summed in
     * runs of 16 and in double, each step rounded as ggml rounds it. y may alias x. */
    void (*layernorm_llamacpp)(float *y, const float *x, const float *w, const float *b, int64_t T,
                               int64_t C, float eps);

    /* rope_forward as llama.cpp computes it: theta_i = pos theta^(-2/D)^i by repeated f32
     * multiplication from pos (powf for the ratio), cosf and sinf in f32, and each pair
     * rotated with one fused multiply-add per output (a' = fma(a, c, -(b s)),
     * b' = fma(a, s, b c), as ggml's compiler contracts it). */
    void (*rope_llamacpp)(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta);

    /* dst (n) = src rounded to IEEE half (nearest even). */
    void (*to_f16)(uint16_t *dst, const float *src, int64_t n);

    /* rmsnorm_forward as llama.cpp computes it (ggml's rms_norm, then its mul by w): the
     * squares rounded to f32 and summed in double in column order, their mean rounded to
     * f32, scale = 1 / sqrtf(mean + eps) in f32, y = (x * scale) * w. y may alias x. */
    void (*rmsnorm_llamacpp)(float *y, const float *x, const float *w, int64_t T, int64_t C,
                             float eps);

    /* swiglu_forward as llama.cpp's AVX-512 build computes it, row by row of F: in each
     * row the first F - F % 16 elements take silu from ggml's exp approximation
     * (expf_ggml in cpu/swiglu.c), the rest from libm's expf, each as g / (1 + e^-g) * up. h may
     * alias gate. */
    void (*swiglu_llamacpp)(float *h, const float *gate, const float *up, int64_t T, int64_t F);

    /* gelu_forward as llama.cpp's CPU build computes it: x rounded to f16 indexes ggml's
     * f16 table of gelu values (each entry f16(gelu(h)) in f32 with one fused multiply-add,
     * as ggml is compiled); x <= -10 gives 0, x >= 10 gives x. y may alias x. */
    void (*gelu_llamacpp)(float *y, const float *x, int64_t n);

    /* geglu_forward as llama.cpp computes it (ggml_vec_geglu_f32): gelu_llamacpp(gate) * up
     * in f32; gate >= 10 gives gate * up. h may alias gate. */
    void (*geglu_llamacpp)(float *h, const float *gate, const float *up, int64_t n);

    /* h (n) = silu(gate) * up, elementwise. h may alias gate. */
    void (*swiglu_forward)(float *h, const float *gate, const float *up, int64_t n);

    /* y (n) += x (n). */
    void (*add)(float *y, const float *x, int64_t n);

    /* x (n) *= a. */
    void (*scale)(float *x, int64_t n, float a);

    /* h (n) = gelu(gate) * up, gelu the tanh approximation (Gemma's GeGLU). h may alias
     * gate. */
    void (*geglu_forward)(float *h, const float *gate, const float *up, int64_t n);

    /* General f32 product C (M, N) = alpha op(A) op(B) + beta C, row-major, op(X) = X or
     * X^T as ta/tb say; lda/ldb/ldc are row strides. For small adapter matrices. */
    void (*gemm)(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

    /* y (T, n) = x (T, n) with column j scaled by s[j]; y may alias x. */
    void (*scale_cols)(float *y, const float *x, const float *s, int64_t T, int64_t n);

    /* ds (n) += the column sums of a (T, n) * b (T, n), elementwise (of a alone when b is
     * NULL): bias gradients, gradients of column scales. */
    void (*col_dot)(float *ds, const float *a, const float *b, int64_t T, int64_t n);

    /* y (n) = x (n) with the mask applied (dropped elements 0, kept ones scaled). y may
     * alias x. */
    void (*dropout_forward)(float *y, const float *x, int64_t n, const finch_dropout *d);

    /* dx (n) += g (n) through the same mask. */
    void (*dropout_backward)(float *dx, const float *g, int64_t n, const finch_dropout *d);

    /* LoRA's input side in backward (peft/lora.c), from du (T, r), A (r, in) and the input
     * x (T, in) seen through d's mask (x itself when d is NULL): dA (r, in) += du^T xd and,
     * when dx is not NULL, dx (T, in) += du A through the mask (a kept element gains
     * d->scale (du A), a dropped one is unchanged), in one pass that never stores xd or
     * du A. Each element of dA and dx is summed by one thread in an order that does not
     * depend on the thread count. May be NULL: dropout_forward, gemm and dropout_backward
     * then run in turn. */
    void (*lora_down_backward)(float *dA, float *dx, const float *du, const float *x,
                               const float *A, int64_t T, int64_t in, int64_t r,
                               const finch_dropout *d);

    /* DoRA's output (peft/dora.c) in one pass, its low-rank term formed there: with
     * lora = u (T, r) . bt (r, n), zl (T, n) = c zl + lora, then y += lora + s[j] zl,
     * elementwise (s per column), in that order. */
    void (*dora_combine)(float *y, float *zl, const float *u, const float *bt, int64_t r, float c,
                         const float *s, int64_t T, int64_t n);

    /* DoRA's backward (peft/dora.c) in one pass over g (T, n): dm (n) += the column sums of
     * g * zl (as col_dot), gs = s1[j] g and, when h is not NULL, h = s2[j] g (h may alias zl). */
    void (*dora_backward)(float *dm, float *gs, float *h, const float *g, const float *zl,
                          const float *s1, const float *s2, int64_t T, int64_t n);

    /* The elements mask d drops among T rows of n, as bits: bit j % 64 of word
     * t * finch_mask_words(n) + j / 64 is set when element t * n + j is dropped. */
    void (*dropout_bits)(uint64_t *bits, int64_t T, int64_t n, const finch_dropout *d);

    /* y (T, w->rows) += alpha (x (T, w->cols) at the elements bits selects, 0 elsewhere) . W^T,
     * the products summed only over those elements: with the bits of a sparse dropout mask,
     * what turns x W^T into the product with the dropped-out input. W is dequantized tile by
     * tile, as matmul does; ws sized as for matmul. */
    void (*matmul_masked)(float *y, const float *x, const uint64_t *bits, float alpha,
                          const finch_weight *w, int64_t T, finch_workspace *ws);

    /* y (T, w->rows) = x . W^T (as matmul) and the products sp asks for (finch_split: as
     * matmul_masked adds to y, as matmul of a), in one pass over W's tiles where it can. May
     * be NULL: the ops then run one after another. */
    void (*matmul_split)(float *y, const float *x, const finch_split *sp, const finch_weight *w,
                         int64_t T, finch_workspace *ws);

    /* dx (T, w->cols) += alpha (dy (T, w->rows) . W) at the elements bits selects; the others
     * are untouched. ws sized as for matmul. */
    void (*matmul_backward_masked)(float *dx, const float *dy, const uint64_t *bits, float alpha,
                                   const finch_weight *w, int64_t T, finch_workspace *ws);

    /* ---- training: backward ops, each the gradient of the forward of the same name.
     * Parameter gradients accumulate (+=); activation gradients are written (=). ---- */

    /* dx (T, w->cols) = dy (T, w->rows) . W, W in any storage type matmul reads, never
     * converted whole: each thread dequantizes chunks of rows of its band of columns into
     * its workspace slice. Needs ws sized as for matmul (finch_workspace_need(w->cols, _)). */
    void (*matmul_backward_input)(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                  finch_workspace *ws);

    /* dw (rows, cols) += dy (T, rows)^T . x (T, cols): the gradient of an f32 weight; in
     * bf16 products when ws (may be NULL) asks. */
    void (*matmul_backward_weight)(float *dw, const float *dy, const float *x, int64_t T,
                                   int64_t rows, int64_t cols, finch_workspace *ws);

    /* Rows ids (T) of demb (V, C) += the matching rows of dx (T, C) (f32 table). */
    void (*embed_backward)(float *demb, const float *dx, const int32_t *ids, int64_t T, int64_t C);

    /* dx (T, C) = and dw (C) += the gradients of rmsnorm_forward, given dy (T, C), the
     * rstd (T) forward saved, x (T, C) and w (C). dx may alias dy. dw may be NULL (the
     * norm weight does not train): then only dx is computed. */
    void (*rmsnorm_backward)(float *dx, float *dw, const float *dy, const float *rstd,
                             const float *x, const float *w, int64_t T, int64_t C);

    /* In-place gradient of rope_forward on dx (T, nh, D): the inverse rotation (by
     * -pos * theta^(-2i/D)) of the same adjacent pairs. */
    void (*rope_backward)(float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta);

    /* Causal grouped-query attention for training, without a cache: B rows of T tokens;
     * q (B*T, H*D), k, v (B*T, KVH*D), out (B*T, H*D). seg (B*T) numbers the segments of
     * each row (packed examples): token t attends to the tokens j <= t of the run of
     * equal seg values holding t, and only those (work outside that range is skipped);
     * NULL is one segment per row. With pre (NULL: none), every token also attends to
     * pre->n keys and values before its row's own (prefix tuning), at positions 0 ..
     * pre->n - 1 before each segment's first token. window > 0: a query at position p sees
     * only keys at positions above p - window (sliding-window attention, positions counted
     * from the segment's prefix); 0: all. stats (B, H, T, 2) receives each query row's
     * softmax maximum and 1 / sum, from which backward has the probabilities again (nothing
     * T x T is kept). ws: as finch_workspace_need sizes it for D. */
    void (*attention_forward_train)(float *out, float *stats, const float *q, const float *k,
                                    const float *v, const int32_t *seg,
                                    const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                    int KVH, int D, int64_t window, finch_workspace *ws);

    /* dq (B*T, H*D), dk, dv (B*T, KVH*D) = the gradients of attention_forward_train given
     * dout (B*T, H*D), its output out, the stats it saved, its inputs and the same seg, pre
     * and window; dk and dv
     * sum over the query heads of each group; the prefix's gradients, summed over every
     * row and query, are added to pre->dk, pre->dv when those are set. sps (B, H, T) is
     * scratch. ws as for the forward. */
    void (*attention_backward)(float *dq, float *dk, float *dv, float *sps, const float *dout,
                               const float *out, const float *stats, const float *q, const float *k,
                               const float *v, const int32_t *seg, const finch_attn_prefix *pre,
                               int64_t B, int64_t T, int H, int KVH, int D, int64_t window,
                               finch_workspace *ws);

    /* dgate (n), dup (n) = the gradients of swiglu_forward given dh (n), gate, up.
     * dgate may alias dh. */
    void (*swiglu_backward)(float *dgate, float *dup, const float *dh, const float *gate,
                            const float *up, int64_t n);

    /* dgate (n), dup (n) = the gradients of geglu_forward given dh (n), gate, up. dgate may
     * alias dh. */
    void (*geglu_backward)(float *dgate, float *dup, const float *dh, const float *gate,
                           const float *up, int64_t n);

    /* Fused softmax + cross-entropy over logits (N, V) with targets (N), -1 meaning
     * masked. Returns the mean of -log softmax(logits)[target] over unmasked rows (0 when
     * all are masked). When dlogits (N, V) is not NULL it receives (=) grad_scale *
     * (softmax - onehot(target)), zero on masked rows; grad_scale 0 means 1/unmasked.
     * dlogits may alias logits. */
    double (*softmax_xent)(float *dlogits, const float *logits, const int32_t *targets, int64_t N,
                           int64_t V, float grad_scale);

    /* ---- GPT-2's ops (LayerNorm with bias, the plain GELU MLP), forward and backward ---- */

    /* y (T, C) = (x - mu) r w + b, mu the row's mean, r = 1 / sqrt(mean((x - mu)^2) + eps)
     * (torch.nn.LayerNorm); stats (T, 2) receives mu and r when not NULL. y may alias x. */
    void (*layernorm_forward)(float *y, float *stats, const float *x, const float *w,
                              const float *b, int64_t T, int64_t C, float eps);

    /* dx (T, C) = and dw, db (C) += the gradients of layernorm_forward given dy (T, C), the
     * stats it saved, x and w. dx may alias dy; dw and db may be NULL (not trained). */
    void (*layernorm_backward)(float *dx, float *dw, float *db, const float *dy, const float *stats,
                               const float *x, const float *w, int64_t T, int64_t C);

    /* y (n) = gelu(x), the tanh approximation (GPT-2's gelu_new). y may alias x. */
    void (*gelu_forward)(float *y, const float *x, int64_t n);

    /* dx (n) = dy (n) gelu'(x). dx may alias dy. */
    void (*gelu_backward)(float *dx, const float *dy, const float *x, int64_t n);

    /* One AdamW step over n elements, in torch's order of float operations (optim/adamw.c):
     *   g = g * grad_scale (clipping, as torch's in-place scaling before the step: the same
     *   product; g itself is left as it was);
     *   p = p * decay;  m = m * b1 + one_b1 * g;  v = v * b2 + one_b2 * g * g;
     *   p = p + neg_step_size * m / (sqrt(v) / bc2_sqrt + eps).
     * p, m, v (n) updated in place; g (n) read. */
    void (*adamw_step)(float *p, float *m, float *v, const float *g, int64_t n,
                       const finch_adamw_scalars *s);
    /* The same step reading g once for the fused optimizer: g zeroed after use, and the
     * sum of its squares (before grad_scale, in double) returned. The sum runs over 64
     * parts of g whose bounds depend on n alone, each in 16 lanes added in lane order,
     * the parts in order: the same bits on any thread count. NULL where a backend has
     * none (optim/adamw.c then makes the three passes). */
    double (*adamw_step_consume)(float *p, float *m, float *v, float *g, int64_t n,
                                 const finch_adamw_scalars *s);

    /* ---- the device part: the memory the ops' pointers live in ---- */

    /* Whether the ops read and write device memory (false: host memory). */
    bool device;

    /* Whether the backend's ops offer feature f (arg as finch_feature says); NULL: every
     * feature. Ask through finch_backend_supports. */
    bool (*supports)(finch_feature f, int arg);

    /* bytes of the backend's memory, 64-byte aligned (256 on a device), or NULL with
     * FINCH_E_NOMEM and a message naming what in err. Release with free (NULL-safe). */
    void *(*alloc)(size_t bytes, const char *what, finch_err *err);
    void (*free)(void *p);

    /* bytes from host memory src into the backend's dst (copy_in), or from the backend's
     * src into host memory dst (copy_out), in order with the ops issued before them.
     * copy_in returns once src may be reused, copy_out once dst holds the bytes; a device
     * error they meet (a fault of an earlier op too) is FINCH_E_IO. */
    finch_status (*copy_in)(void *dst, const void *src, size_t bytes, finch_err *err);
    finch_status (*copy_out)(void *dst, const void *src, size_t bytes, finch_err *err);

    /* bytes of the backend's memory at p set to zero, or copied from src to dst (both the
     * backend's memory, not overlapping), in order with the ops issued. */
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);

    /* Waits until every op issued has finished; reports a device error one of them met
     * (FINCH_E_IO). Trivial on the CPU, whose ops return finished. */
    finch_status (*sync)(finch_err *err);

    /* Collectives of the devices of a job's processes among themselves (NCCL), or NULL:
     * the host sums over MPI. Rank 0 makes an id (group_id, up to FINCH_GROUP_ID_MAX
     * bytes), the job hands it to every rank, and each joins as rank of n (group_join,
     * which waits for them all); group_sum then replaces x (n floats of the backend's
     * memory) with its sum over the group, in order with the ops. FINCH_E_IO with the
     * reason when they fail. */
    finch_status (*group_id)(void *id, finch_err *err);
    finch_status (*group_join)(const void *id, int rank, int n, finch_err *err);
    finch_status (*group_sum)(float *x, int64_t n, finch_err *err);
} finch_backend;

/* A copy (be->copy_in or be->copy_out) made where no status can be returned (a pass):
 * its failure, a device error, is kept in *first unless one is kept already, for the
 * caller's status call (finch_kept_status). */
static inline void finch_copy_kept(finch_status (*copy)(void *, const void *, size_t, finch_err *),
                                   void *dst, const void *src, size_t bytes, finch_err *first) {
    finch_err e;
    if (copy(dst, src, bytes, &e) && !first->code) *first = e;
}

/* FINCH_OK, or the failure kept by finch_copy_kept (copied into err). */
static inline finch_status finch_kept_status(const finch_err *first, finch_err *err) {
    if (first->code && err) *err = *first;
    return first->code;
}

/* Bytes of a group id (finch_backend.group_id). */
#define FINCH_GROUP_ID_MAX 128

/* Whether be offers feature f for arg (finch_feature). */
static inline bool finch_backend_supports(const finch_backend *be, finch_feature f, int arg) {
    return !be->supports || be->supports(f, arg);
}

/* The CPU backend's device part and AdamW (kernels/host.c), the same in every instruction
 * set's table: finch_aalloc/finch_afree, memcpy, memset, nothing to wait for, and the AdamW loop.
 */
void *finch_host_alloc(size_t bytes, const char *what, finch_err *err);
void finch_host_free(void *p);
finch_status finch_host_copy(void *dst, const void *src, size_t bytes, finch_err *err);
void finch_host_zero(void *p, size_t bytes);
void finch_host_copy_within(void *dst, const void *src, size_t bytes);
finch_status finch_host_sync(finch_err *err);

/* The CUDA backend (kernels/cuda/, in a build with FINCH_HAVE_CUDA): the first CUDA device
 * (under mpirun the local rank's turn of the devices), one cuBLAS handle (no TF32) and a 64 MiB
 * scratch buffer (a matmul's dequantized band of rows), made on the first call and kept for the
 * life of the process. Its ops are issued on the default stream from one host thread at a time and
 * return before they finish (sync and copy_out wait); each gives the same bits on every run. It has
 * every op but llama.cpp's numerics (matmul_q8, attention_forward_f16, rmsnorm_llamacpp,
 * swiglu_llamacpp: NULL), and no attention prefix or bf16 products (supports). NULL with
 * FINCH_E_UNSUPPORTED and a message when finch was
 * built without CUDA, when no CUDA device is present or the driver cannot be used. */
const finch_backend *finch_cuda_backend(finch_err *err);

/* The CPU backend for this machine (kernels/cpu_select.c): the widest instruction set
 * compiled in that the CPU and OS support, or the one the environment variable FINCH_CPU
 * names (generic, avx2, avx512, avx512vnni; native in a -march=native build), which fails
 * with FINCH_E_USAGE when it is unknown or this CPU lacks it. */
const finch_backend *finch_cpu_backend(finch_err *err);

/* The instruction sets compiled in (widest last) and whether this CPU runs each. */
int finch_cpu_isa_count(void);
const char *finch_cpu_isa_name(int i);
bool finch_cpu_isa_supported(int i);
/* The backend compiled for set i, whether or not this CPU runs it. */
const finch_backend *finch_cpu_isa_backend(int i);

/* Naive references (kernels/ref/ref.c): same contracts as the table, double accumulation,
 * single-threaded, no workspace. */
void finch_ref_matmul(float *y, const float *x, const finch_weight *w, int64_t T);
void finch_ref_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T,
                               int64_t C, float eps);
void finch_ref_rope_forward(float *x, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_ref_attention_forward(float *out, const float *q, const float *k, const float *v,
                                 int64_t T, int64_t pos0, int H, int KVH, int D, int64_t window);
void finch_ref_geglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_ref_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                              const float *up, int64_t n);
void finch_ref_swiglu_forward(float *h, const float *gate, const float *up, int64_t n);
void finch_ref_matmul_backward_input(float *dx, const float *dy, const finch_weight *w, int64_t T);
void finch_ref_matmul_backward_weight(float *dw, const float *dy, const float *x, int64_t T,
                                      int64_t rows, int64_t cols);
void finch_ref_embed_backward(float *demb, const float *dx, const int32_t *ids, int64_t T,
                              int64_t C);
void finch_ref_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *rstd,
                                const float *x, const float *w, int64_t T, int64_t C);
void finch_ref_rope_backward(float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta);
void finch_ref_attention_forward_train(float *out, float *att, const float *q, const float *k,
                                       const float *v, const int32_t *seg,
                                       const finch_attn_prefix *pre, int64_t B, int64_t T, int H,
                                       int KVH, int D, int64_t window);
void finch_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                  const float *att, const float *q, const float *k, const float *v,
                                  const int32_t *seg, const finch_attn_prefix *pre, int64_t B,
                                  int64_t T, int H, int KVH, int D, int64_t window);
void finch_ref_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                               const float *up, int64_t n);
void finch_ref_scale_cols(float *y, const float *x, const float *s, int64_t T, int64_t n);
void finch_ref_col_dot(float *ds, const float *a, const float *b, int64_t T, int64_t n);
void finch_ref_dropout_forward(float *y, const float *x, int64_t n, const finch_dropout *d);
void finch_ref_dropout_backward(float *dx, const float *g, int64_t n, const finch_dropout *d);
void finch_ref_dropout_bits(uint64_t *bits, int64_t T, int64_t n, const finch_dropout *d);
void finch_ref_matmul_masked(float *y, const float *x, const uint64_t *bits, float alpha,
                             const finch_weight *w, int64_t T);
void finch_ref_dora_backward(float *dm, float *gs, float *h, const float *g, const float *zl,
                             const float *s1, const float *s2, int64_t T, int64_t n);
void finch_ref_lora_down_backward(float *dA, float *dx, const float *du, const float *x,
                                  const float *A, int64_t T, int64_t in, int64_t r,
                                  const finch_dropout *d);
void finch_ref_dora_combine(float *y, float *zl, const float *u, const float *bt, int64_t r,
                            float c, const float *s, int64_t T, int64_t n);
void finch_ref_matmul_backward_masked(float *dx, const float *dy, const uint64_t *bits, float alpha,
                                      const finch_weight *w, int64_t T);
void finch_ref_layernorm_forward(float *y, float *stats, const float *x, const float *w,
                                 const float *b, int64_t T, int64_t C, float eps);
void finch_ref_layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                  const float *stats, const float *x, const float *w, int64_t T,
                                  int64_t C);
void finch_ref_gelu_forward(float *y, const float *x, int64_t n);
void finch_ref_gelu_backward(float *dx, const float *dy, const float *x, int64_t n);
double finch_ref_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                              int64_t N, int64_t V, float grad_scale);

#endif /* FINCH_KERNELS_H */
