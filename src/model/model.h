/*
 * model.h: the loaded model (every family of the architecture table: LLaMA, Qwen2,
 * Gemma 3, GPT-2) and its forward pass.
 *
 * A finch_model keeps its files mapped and points into them: a GGUF file, or the
 * safetensors shards of a Hugging Face folder (model/load_hf.c). Base weights stay in
 * their storage types (finch_weight views) and are dequantized tile by tile by the
 * kernels. Every projection is a finch_linear (model/linear.h).
 *
 * Q/K row order: the forward pass applies RoPE to interleaved pairs (x[2i], x[2i+1]),
 * llama.cpp's convention, which is what GGUF llama files store (FORMATS.md 4). Hugging
 * Face checkpoints store q_proj/k_proj rows in rotate-half order (pairs (x[i], x[i+D/2])),
 * so load_hf.c permutes the rows of each head of Q (per query head) and K (per KV head),
 * and of their biases, into GGUF order at load:
 *
 *     GGUF row h*D + 2i = HF row h*D + i,   GGUF row h*D + 2i + 1 = HF row h*D + D/2 + i
 *
 * A row permutation is exact in any storage type. Those rows live in owned memory
 * (owned_rows); everything else stays mapped. GPT-2 has no RoPE and keeps every row where
 * it is; its Hugging Face Conv1D weights ([in, out]) are transposed into owned_rows, and
 * its fused q/k/v projection (c_attn, attn_qkv) is three views of consecutive row blocks. So the
 * forward pass, training, adapter files (which permute LoRA B rows of q/k to HF order on write) and
 * export see one layout whatever the model was loaded from.
 *
 * Shapes: T tokens, C hidden, H heads, KVH KV heads, D head dim, F FFN width, V vocab.
 */
#ifndef FINCH_MODEL_H
#define FINCH_MODEL_H

#include "core/core.h"
#include "io/io.h"           /* finch_gguf */
#include "kernels/kernels.h" /* finch_weight, finch_backend, finch_workspace */
#include "model/linear.h"    /* finch_linear */

/* ---- the architecture table (arch.c) -------------------------------------------------- */

typedef enum { FINCH_ACT_SILU, FINCH_ACT_GELU_TANH } finch_act;

/* What a family's blocks do beyond LLaMA's pre-norm attention + SwiGLU. */
typedef struct {
    const char *name;    /* general.architecture / model_type */
    bool gguf;           /* read from GGUF files (checked against llama.cpp) */
    finch_act act;       /* the gated FFN's activation */
    bool neox_rows;      /* the GGUF keeps q/k rows in rotate-half order: permuted at load */
    bool qk_norm;        /* RMSNorm over each head of q and k before RoPE */
    bool scale_q;        /* llama.cpp scales q by 1/sqrt(D) before attention (gemma3), not
                            the scores: where llamacpp numerics round q to f16 */
    bool post_norms;     /* RMSNorm on the attention and FFN outputs before the residual adds */
    bool embed_scale;    /* embeddings scaled by sqrt(n_embd) */
    int swa_pattern;     /* n > 0: blocks l with l % n < n - 1 use the sliding window (GGUF;
                            a Hugging Face folder's config.json says which blocks do) */
    float swa_rope_base; /* the RoPE base of those blocks */
    bool norm_one;       /* norms multiply by the file's weight, Hugging Face's 1 + w */
    bool layer_norm;     /* LayerNorm with bias for every norm (eps: cfg.rms_eps), not RMSNorm */
    bool learned_pos;    /* learned absolute positions added to the embeddings; no RoPE */
    bool plain_ffn;      /* down(act(up(x))): no gate linear */
    bool fused_qkv;      /* q/k/v stored as one fused projection (split into three at load);
                            Hugging Face weights stored [in, out] (GPT-2's Conv1D) */
} finch_arch;

/* The row of a family, or NULL; the names (of those read from GGUF), comma-separated. */
const finch_arch *finch_arch_find(const char *name);
void finch_arch_names(char *buf, size_t n, bool gguf);

/* The Hugging Face (rotate-half) row that lands at finch's row r of a q or k projection
 * with head dim D (FORMATS.md 4.1). */
int64_t finch_qk_hf_row(int64_t r, int D);
/* Its inverse: finch's row that holds Hugging Face row hf. */
int64_t finch_qk_row(int64_t hf, int D);

/* A module on a block's residual stream (bottleneck adapters), at one of three places of
 * a sublayer (attention or FFN) whose output h joins the stream x:
 *   ON_OUTPUT   x + h + f(h)          (Houlsby)
 *   AFTER_ADD   z + f(z), z = x + h   (sequential, Pfeiffer)
 *   PARALLEL    x + h + f(x)          (parallel, He et al.)
 * forward adds f(in) to out (T, C) (out may be in); training keeps what backward needs.
 * backward writes din (T, C) = the gradient of f(in) . dout with respect to in and adds its
 * parameters' gradients. */
typedef enum { FINCH_MODULE_ON_OUTPUT, FINCH_MODULE_AFTER_ADD, FINCH_MODULE_PARALLEL } finch_place;

typedef struct finch_block_module finch_block_module;
struct finch_block_module {
    finch_place place;
    void *state;
    void (*forward)(const finch_block_module *b, float *out, const float *in, int64_t T,
                    const finch_linear_ctx *ctx);
    void (*backward)(const finch_block_module *b, float *din, const float *dout, int64_t T,
                     const finch_linear_ctx *ctx);
};

/* One transformer block. Norm weights are f32 (C; the q/k norms D); their gradients are
 * set when a method trains them, else NULL. The q/k and post norms are NULL unless the
 * architecture has them. */
typedef struct {
    const float *attn_norm, *ffn_norm;
    float *d_attn_norm, *d_ffn_norm;
    const float *q_norm, *k_norm;                /* (D) */
    const float *post_attn_norm, *post_ffn_norm; /* (C) */
    float *d_q_norm, *d_k_norm, *d_post_attn_norm, *d_post_ffn_norm;
    const float *attn_norm_b, *ffn_norm_b; /* (C) LayerNorm biases [layer_norm], else NULL */
    float *d_attn_norm_b, *d_ffn_norm_b;
    finch_linear wq, wk, wv, wo;       /* q (H*D, C), k/v (KVH*D, C), o (C, H*D) */
    finch_linear w_gate, w_up, w_down; /* gate/up (F, C), down (C, F); no gate [plain_ffn]: its
                                          w.data is NULL */
    const finch_block_module *attn_module, *ffn_module; /* NULL: none */
    bool sliding; /* attends within cfg.sliding_window, RoPE base arch->swa_rope_base: from the
                     family's swa_pattern (GGUF) or config.json's layer_types */
} finch_layer;

/* Virtual tokens a method puts before every sequence at positions 0..n-1, the real tokens
 * following from position n (FORMATS.md 2.1c): prompt tuning's rows entering block 0
 * (embd; not scaled by embed_scale), or prefix tuning's keys and values at every block
 * (kv), which enter the cache as they are (keys in finch's pair order, never rotated).
 * Their gradients accumulate (+=) in d_embd, d_kv when those are set. */
typedef struct {
    int n;
    const float *embd; /* (n, C), or NULL */
    float *d_embd;
    const float *kv; /* (n, L * 2 * KVH * D), or NULL: token p's keys for block l at
                        (p, 2 l * KVH * D), its values at (p, (2 l + 1) * KVH * D) */
    float *d_kv;
    /* When kv is computed from the method's own parameters (prefix tuning's projection):
     * refresh recomputes it before a forward pass, and backward turns d_kv into those
     * parameters' gradients and clears it after a backward pass. NULL: kv is the
     * parameter itself. */
    void (*refresh)(void *self);
    void (*backward)(void *self);
    void *self;
} finch_virtual;

typedef struct finch_placement finch_placement;

struct finch_model {
    char *path;        /* what was loaded (a GGUF file or a folder), for messages */
    finch_gguf *gguf;  /* the mapped GGUF file; NULL for a Hugging Face folder */
    finch_st **shards; /* a Hugging Face folder's mapped safetensors files */
    int n_shards;
    finch_hf_config *hf;        /* its config.json; NULL for a GGUF file */
    void *owned_rows;           /* Q/K weights permuted to GGUF row order (HF, rotate-half) */
    void *owned_nf4;            /* projections quantized to NF4 by finch_model_load_in_4bit */
    finch_model_config cfg;     /* hyperparameters */
    finch_tokenizer *tok;       /* NULL when the file has none */
    finch_weight tok_embd;      /* (V, C) */
    const float *output_norm;   /* (C) */
    float *d_output_norm;       /* its gradient when it trains, else NULL */
    const float *output_norm_b; /* (C) the final LayerNorm's bias [layer_norm], else NULL */
    float *d_output_norm_b;
    finch_weight pos_embd;   /* (n_ctx_train, C) learned positions [learned_pos]; data NULL else */
    float *d_pos_embd;       /* their gradient when they train (pos_embd then f32) */
    float *d_tok_embd;       /* (V, C) gradient when the embeddings train (tok_embd is
                                then f32), else NULL */
    finch_linear output;     /* (V, C); a view of tok_embd when tied */
    finch_layer *layers;     /* n_layer blocks */
    float *owned_f32;        /* norm weights converted from f16/bf16, if any, and
                                biases (f32, q/k permuted) */
    const finch_backend *be; /* the backend every op goes through */
    finch_placement *placed; /* the host views while the model is on a device (device.c) */
    const finch_arch *arch;  /* its family's row */
    finch_virtual virt;      /* set while a prompt or prefix method is attached */
};

/* Places the model on be when be is a device (else nothing): every tensor the passes read
 * copied into be's memory once and the views pointed at the copies, m->be set to be
 * (device.c). finch_model_unplace puts the host views and backend back and frees the
 * copies; finch_model_free does too. */
finch_status finch_model_place(finch_model *m, const finch_backend *be, finch_err *err);
void finch_model_unplace(finch_model *m);

/* The backend `--device` names: "cpu" (or NULL) the CPU table this machine runs, "cuda"
 * the CUDA backend, or NULL with why not. */
const finch_backend *finch_device_backend(const char *device, finch_err *err);

/* The widest input of the model's products: C, F or the attention output's H x D. */
static inline int64_t finch_widest_input(const finch_model_config *c) {
    const int64_t hd = (int64_t)c->n_head * c->head_dim,
                  w = c->n_ff > c->n_embd ? c->n_ff : c->n_embd;
    return hd > w ? hd : w;
}

/* Turns on bf16 products in ws (finch_workspace_bf16's sizes), or says why m's backend
 * cannot: what both train --bf16 and bf16 numerics ask for. */
static inline finch_status finch_model_bf16_products(const finch_model *m, finch_workspace *ws,
                                                     int64_t T, int64_t max_dim, int64_t max_in,
                                                     finch_err *err) {
    if (!finch_backend_supports(m->be, FINCH_FEATURE_BF16, 0))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "bf16 products: the %s backend has none; compute in f32 (exact "
                             "numerics, or train without --bf16)",
                             m->be->name);
    return finch_workspace_bf16(ws, T, max_dim, max_in, err);
}

/* Block l's RoPE base and sliding window (0: attends to every earlier position). */
static inline float finch_layer_theta(const finch_model *m, int l) {
    return m->layers[l].sliding ? m->arch->swa_rope_base : m->cfg.rope_theta;
}
static inline int64_t finch_layer_window(const finch_model *m, int l) {
    return m->layers[l].sliding ? m->cfg.sliding_window : 0;
}

/* y (T, C) = the family's norm of x (T, C): RMSNorm * w, or LayerNorm * w + b [layer_norm];
 * stats (T, 2) when not NULL receives what backward needs (RMSNorm uses the first T). */
static inline void finch_norm_forward(const finch_model *m, float *y, float *stats, const float *x,
                                      const float *w, const float *b, int64_t T) {
    if (m->arch->layer_norm)
        m->be->layernorm_forward(y, stats, x, w, b, T, m->cfg.n_embd, m->cfg.rms_eps);
    else
        m->be->rmsnorm_forward(y, stats, x, w, T, m->cfg.n_embd, m->cfg.rms_eps);
}
/* Its backward: dx (T, C) =, dw and db += when not NULL. */
static inline void finch_norm_backward(const finch_model *m, float *dx, float *dw, float *db,
                                       const float *dy, const float *stats, const float *x,
                                       const float *w, int64_t T) {
    if (m->arch->layer_norm)
        m->be->layernorm_backward(dx, dw, db, dy, stats, x, w, T, m->cfg.n_embd);
    else
        m->be->rmsnorm_backward(dx, dw, dy, stats, x, w, T, m->cfg.n_embd);
}

/* Fills m (zeroed, m->path set) from the Hugging Face folder m->path: config.json,
 * model.safetensors or model.safetensors.index.json and its shards, tokenizer.json (with
 * tokenizer_config.json) when present. On failure m holds what was opened so far, for
 * finch_model_free. */
finch_status finch_model_load_hf(finch_model *m, finch_err *err);

/* The most tokens one inference forward call takes: sessions run prompts in chunks of
 * this many, and attached adapters size their scratch for it. */
enum { FINCH_INFER_CHUNK = 512 };

/* The key/value cache and activation buffers of one inference session, sized for n_ctx
 * positions and chunks of up to n_batch tokens. */
typedef struct {
    int n_ctx, n_batch; /* n_ctx counts the model's virtual tokens too */
    int pos;            /* positions filled; 0: nothing, not even the virtual tokens */
    int start;          /* the model's virtual tokens when the session was made */
    finch_numerics numerics;
    void *k, *v; /* per layer: (n_ctx, KVH*D), layer-major; f16 in llamacpp numerics */
    float *x, *xn, *q, *kk, *vv, *att, *gate, *up; /* (n_batch, ...) activations */
    float *logits;                                 /* (n_batch, V), host memory */
    int32_t *pos_ids;                              /* (n_batch) */
    finch_workspace ws;
    /* On a device (the model's backend when the session was made) the cache and the
     * activations are in its memory, with the head's logits (d_logits), the positions and
     * the ids copied in (d_pos, d_ids); elsewhere d_logits is logits and the others NULL. */
    const finch_backend *be;
    float *d_logits;
    int32_t *d_pos, *d_ids;
    finch_err dev_err; /* the first failed copy (a device error) */
} finch_kv_session;

/* Allocates a session's cache and buffers, for n_ctx positions after the model's virtual
 * tokens. */
finch_status finch_kv_session_init(finch_kv_session *s, const finch_model *m, int n_ctx,
                                   int n_batch, finch_numerics numerics, finch_err *err);
void finch_kv_session_release(finch_kv_session *s);
/* FINCH_OK, or the device error a copy of the session's met (forwards return none). */
finch_status finch_kv_session_status(const finch_kv_session *s, finch_err *err);

/* Runs T <= n_batch tokens at positions s->pos.., appending to the cache; at pos 0 the
 * model's virtual tokens enter the cache first (a rewound session: pos = 0, or
 * start + n to keep the first n real tokens). Writes the logits of all T positions to
 * s->logits when all_logits is true, else only the last position's (to s->logits row
 * 0). The caller has checked ids and capacity. */
void finch_model_forward(const finch_model *m, finch_kv_session *s, const int32_t *ids, int T,
                         bool all_logits);

/* ---- the model's tensors by name (gguf_out.c) ------------------------------------------ */

/* The kinds of tensor a model holds: what a name table row, a trainable-weight site
 * (peft/weights.c) and the GGUF writer below speak of. */
typedef enum {
    FINCH_W_EMBD,
    FINCH_W_NORM_ATTN,
    FINCH_W_LINEAR,
    FINCH_W_BIAS,
    FINCH_W_NORM_Q,         /* per-head q norm [qk_norm] */
    FINCH_W_NORM_K,         /* per-head k norm [qk_norm] */
    FINCH_W_NORM_POST_ATTN, /* [post_norms] */
    FINCH_W_NORM_FFN,
    FINCH_W_NORM_POST_FFN, /* [post_norms] */
    FINCH_W_NORM_OUT,
    FINCH_W_HEAD,
    FINCH_W_NORM_ATTN_B, /* LayerNorm biases [layer_norm] */
    FINCH_W_NORM_FFN_B,
    FINCH_W_NORM_OUT_B,
    FINCH_W_POS /* learned position embeddings [learned_pos] */
} finch_wkind;
#define FINCH_W_KIND_COUNT (FINCH_W_POS + 1) /* not in the enum: switches name every kind */

/* The names of a kind's tensor (NULL for the linears and their biases, named by
 * finch_linear_gguf_stem): printf formats taking the block number (or nothing), in
 * Hugging Face files (hf; hf_post for families with post norms, which call the FFN's norm
 * pre_feedforward_layernorm; gpt2 for GPT-2's transformer.* keys) and in GGUF. */
typedef struct {
    const char *hf, *hf_post, *gguf, *gpt2;
} finch_tensor_names;
extern const finch_tensor_names finch_tensor_name_table[FINCH_W_KIND_COUNT];

/* The GGUF stem of block linear i (finch_layer_linear's order): "attn_q", ..., "ffn_down". */
const char *finch_linear_gguf_stem(int i);

/* One tensor of the model as llama.cpp's converter writes it: its GGUF name and shape, and
 * where its rows are. Row r (ne[0] elements, in storage type type) of the GGUF tensor is at
 * data + r' * row_bytes, r' = r, or finch_qk_row(r, qk_head_dim) when qk_head_dim > 0 (q/k
 * rows in finch's order written in the family's rotate-half GGUF order). */
typedef struct {
    char name[FINCH_GGUF_MAX_NAME + 1];
    finch_dtype type;
    int n_dims;
    int64_t ne[4]; /* ne[0] fastest; missing dims 1 */
    size_t row_bytes;
    const uint8_t *data;
    int qk_head_dim;
    float *owned; /* a permuted vector's copy, owned by the list */
} finch_gguf_src;

/* GGUF row r of s (see finch_gguf_src). */
static inline const uint8_t *finch_gguf_src_row(const finch_gguf_src *s, int64_t r) {
    return s->data +
           (size_t)(s->qk_head_dim > 0 ? finch_qk_row(r, s->qk_head_dim) : r) * s->row_bytes;
}

/* Writes rows [r0, r1) of s into dst (rows of type to, consecutive): copied when to is
 * s->type, else each row dequantized into row (ne[0] floats of scratch) and quantized.
 * to must have a quantizer and s->type a dequantizer unless they are equal. */
void finch_gguf_src_convert(const finch_gguf_src *s, int64_t r0, int64_t r1, finch_dtype to,
                            void *dst, float *row);

/* The model's tensors as llama.cpp's converter writes them for its family (FORMATS.md 3.2):
 * GGUF names, q/k rows (and biases, q/k norms) back in the family's GGUF order, GPT-2's q, k
 * and v as the one attn_qkv they are views of, no output.weight when the head is tied
 * (GPT-2: always a copy, as the converter writes it). Each entry points at the model's
 * current tensors (attached trainable copies included), which must outlive the list.
 * *out is the caller's (finch_gguf_src_list_free). */
finch_status finch_model_gguf_tensors(const finch_model *m, finch_gguf_src **out, int64_t *n,
                                      finch_err *err);
void finch_gguf_src_list_free(finch_gguf_src *list, int64_t n);

/* Writes the metadata llama.cpp needs to run m (FORMATS.md 3.1, 5.1): general.architecture,
 * general.type, general.name, the family's hyperparameter keys as convert_hf_to_gguf.py
 * writes them, general.file_type = ftype, general.quantization_version, and the tokenizer
 * (finch_tokenizer_gguf_kvs; special ids config.json names fill those tokenizer_config.json
 * leaves out). A model without a tokenizer, or whose tokenizer has no GGUF form, is
 * FINCH_E_UNSUPPORTED with a message saying why. */
finch_status finch_model_gguf_kvs(const finch_model *m, uint32_t ftype, finch_gguf_writer *w,
                                  finch_err *err);

/* ---- training -------------------------------------------------------------------------- */

/* The linears of block l in a fixed order (q, k, v, o, gate, up, down): the projections
 * methods target, by index (finch_target in peft/). */
enum { FINCH_LAYER_LINEARS = 7 };
finch_linear *finch_layer_linear(finch_layer *ly, int i);

/* What one training step keeps from forward for backward, sized for B rows of T tokens
 * (model/train.c lists each buffer with its shape), and the gradient buffers. */
typedef struct finch_train_acts finch_train_acts;

finch_status finch_train_acts_new(const finch_model *m, int B, int T, finch_train_acts **out,
                                  finch_err *err);
/* The same with flags: FINCH_ACTS_CHECKPOINT (gradient checkpointing) keeps each block's
 * input only, one block's buffers for the rest, and backward recomputes each block's
 * forward before its backward: the same gradients, bit for bit, for one more forward. */
/* FINCH_ACTS_RECOMPUTE keeps one block's normed inputs (xn1, xn2) and FFN activation (h),
 * which backward recomputes from what it keeps (x, xm and their stats, gate and up) before
 * their use: the same bits, for two norms and one activation more per block, and at
 * SmolLM2's shapes a third less memory per token. */
enum { FINCH_ACTS_CHECKPOINT = 1, FINCH_ACTS_RECOMPUTE = 2 };
finch_status finch_train_acts_create(const finch_model *m, int B, int T, unsigned flags,
                                     finch_train_acts **out, finch_err *err);
void finch_train_acts_free(finch_train_acts *a);
/* On a device: the first copy of a pass's rows to it that failed (a device error), kept
 * since passes return no status; FINCH_OK when none did. Buffers live in the memory of
 * the model's backend when the acts are made (a placed model's: the device's). */
finch_status finch_train_acts_status(const finch_train_acts *a, finch_err *err);
/* The base's products of the passes with a in bf16 (--bf16; kernels.h
 * finch_workspace_bf16). */
finch_status finch_train_acts_bf16(finch_train_acts *a, const finch_model *m, finch_err *err);

/* One forward and (when backward) backward pass over a batch: ids (B, T), targets (B, T)
 * (-1: no loss), pos (B, T) positions (restarting per row, or per example when packed),
 * seg (B, T) the example each token belongs to (NULL: one per row; attention stays within
 * a run of equal values, as the batcher numbers packed examples). Returns the mean
 * cross-entropy over the targets; with backward, the gradients of every trainable
 * parameter attached to the model's linears accumulate (+=) scaled by grad_scale (0:
 * 1 / number of targets, the mean's gradient) and dropout is active. Gradients go to
 * what a method made trainable: the linears' attachments, biases and weights, the norm
 * weights and the embeddings whose gradient pointers are set; the rest is frozen. */
double finch_model_train_step(const finch_model *m, finch_train_acts *a, const int32_t *ids,
                              const int32_t *targets, const int32_t *pos, const int32_t *seg,
                              float grad_scale, uint64_t dropout_seed, bool backward);

/* The two halves of finch_model_train_step, for objectives whose gradient depends on the
 * forward's result (DPO): the forward pass over a batch (arguments as above; dropout
 * active when training) keeps the head's input rows of the Nt positions with a target (the
 * logits are computed a chunk at a time, here and again in backward) and returns Nt;
 * when row_logp is not NULL it receives, per row b of the B, the sum over the row's
 * targets of log softmax(logits)[target] (0 for a row without targets). ids and seg must
 * stay unchanged until the backward call. */
int64_t finch_model_train_forward(const finch_model *m, finch_train_acts *a, const int32_t *ids,
                                  const int32_t *targets, const int32_t *pos, const int32_t *seg,
                                  uint64_t dropout_seed, bool training, double *row_logp);
/* The backward pass of the last forward, for the loss L whose derivative by row b's summed
 * target log-probability is row_scale[b] (B entries): the trainable parameters' gradients
 * accumulate (+=) as in finch_model_train_step. */
void finch_model_train_backward(const finch_model *m, finch_train_acts *a, const float *row_scale);

/* Has every backward pass with a call fn(user, l) once block l's backward is done (its
 * tensors' gradients have received all this pass adds to them; l from the last block down
 * to 0), then fn(user, -1) when the pass has ended (the embeddings', the head's and the
 * final norm's gradients too). What fn may change: the trainable values of block l and its
 * gradients (backward reads neither again in this pass); at -1, anything. fn NULL: no
 * calls. For an optimizer step fused into backward (train/loop.c). */
void finch_train_acts_on_grads(finch_train_acts *a, void (*fn)(void *user, int block), void *user);

#endif /* FINCH_MODEL_H */
