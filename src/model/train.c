/*
 * train.c: the forward pass for training, keeping what backward needs, and its backward,
 * for B rows of T tokens (N = B*T rows in every (N, ...) buffer), for every family of the
 * architecture table (arch.c; what a row switches on is marked [field]):
 *
 *   forward, per layer l                         kept for backward
 *     xn1 = norm(x_l) (attn_norm)                x_l, xn1, rstd1 (the norm's stats)
 *     q, k, v = linears(xn1)                     (qp, kp before their norms)
 *     q, k = rmsnorm per head [qk_norm]          rstdq, rstdk
 *     rope(q), rope(k) (the block's base)        q, k (rotated), v
 *     ao = attention(q, k, v | seg, window)      att (B, H, T, 2): row stats, ao
 *     xm = x_l + o(ao)  (+ rmsnorm(o(ao)) [post_norms])  xm (op, rstdo)
 *     xn2 = norm(xm) (ffn_norm)                  xn2, rstd2
 *     h = act(gate(xn2)) * up(xn2)               gate, up, h   (act: silu or gelu [act])
 *       (h = gelu(up(xn2)) [plain_ffn])          up, h
 *     x_{l+1} = xm + down(h)  (+ rmsnorm(down(h)) [post_norms])  (fp, rstdf2)
 *   logits = head(norm(x_L) (output_norm))       x_L, xnf, rstdf
 * x_0 is the embeddings, times sqrt(C) [embed_scale], plus the learned position embeddings
 * [learned_pos] (no RoPE then). norm is RMSNorm * w, or LayerNorm * w + b [layer_norm]
 * (its stats: rstd, or (mean, rstd) per row).
 *
 * Virtual tokens (model.h): prompt tuning's K rows stand before each row's tokens (rows of
 * K + T, the virtual ones without targets, positions 0..K-1 and the real ones from K);
 * prefix tuning's P keys and values join every block's attention (finch_attn_prefix),
 * the real tokens' positions starting at P. Their gradients sum over the batch.
 *
 * With packed rows, seg keeps attention within each example and pos restarts per example,
 * so a packed row computes what its examples would alone. Sliding-window blocks
 * [swa_pattern] pass their window to attention, which counts positions as an inference
 * cache holds them (a prefix's keys first), so rows may be longer than the window.
 *
 * The head runs only on the rows that have a target (xg, gathered from xnf): the others
 * contribute neither loss nor gradient, and with completion-only loss they are most rows.
 *
 * Recomputing (FINCH_ACTS_RECOMPUTE, what training runs) keeps one block's xn1, xn2 and h:
 * backward recomputes each from what it kept (x_l, xm and their stats; gate and up) just
 * before the products that read it, with the same kernels, so the same bits. Two norms
 * and one activation per block buy a third of the memory per token (SmolLM2: 23 of 34 KB
 * per token and block kept).
 *
 * Gradient checkpointing (FINCH_ACTS_CHECKPOINT) keeps x_l of every block and one
 * block's worth of the rest: backward first runs block l's forward again (block_forward,
 * same inputs, masks and kernels, so the same bits), then its backward.
 *
 * Backward runs the same list in reverse, each line commented with the forward line it
 * undoes. Residual gradients (dx) accumulate over the two consumers of x; everything else
 * is written. What trains is what a method marked: the linears' attachments, biases and
 * weights (through finch_linear_backward), the norm weights and the embeddings whose
 * gradient pointers are set. Nothing else's gradient is computed.
 */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>

/* Target rows the head computes at once: its logits (HEAD_ROWS, V) are the only vocabulary-
 * wide buffer (25 MB for a 49k vocabulary). */
enum { HEAD_ROWS = 128 };

struct finch_train_acts {
    int B, T;    /* T: the rows' length inside, with prompt tuning's virtual tokens */
    int T_in, K; /* the rows' length the caller gives, and the virtual tokens before them */
    int64_t P;   /* prefix tuning's virtual tokens (attention's prefix) */
    int32_t *ids_in, *tg_in, *seg_in; /* (B, T) the caller's rows with the virtual tokens */
    /* per layer, (N, ...) each */
    float **x, **xn1, **rstd1, **q, **k, **v, **att, **ao, **xm, **xn2, **rstd2, **gate, **up, **h;
    /* per layer, only for the families that have them (arch.c): q, k before their
     * per-head norms and those norms' factors; the attention and FFN outputs before their
     * post norms and those norms' factors */
    float **qp, **kp, **rstdq, **rstdk, **op, **rstdo, **fp, **rstdf2;
    float *xf, *xnf, *rstdf;          /* final norm: x_L (N, C) is x[L]; xnf (N, C), rstdf (N) */
    float *logits;                    /* (HEAD_ROWS, V): one chunk of the head's rows, then their
                                         gradient (the head never holds all Nt rows at once) */
    float *xg;                        /* (Nt, C) the rows of xnf with a target */
    int32_t *tg, *rows;               /* (Nt) their targets and row indices */
    int64_t Nt;                       /* rows with a target in the last forward */
    const int32_t *ids_cur, *seg_cur; /* the last forward's ids and segments, for backward */
    finch_linear_ctx ctx;             /* the last forward's dropout seed and mode */
    /* gradients and scratch */
    float *dx, *dt, *dxn, *dao, *dq, *dk, *dv, *dh, *dup;
    float *ds;    /* (B, H, T) attention backward's scratch */
    float *dad;   /* (N, C) a block module's input gradient */
    int32_t *pos; /* (N) */
    /* what the ops read of the rows: the caller's ids and segments, pos, tg and rows; on a
     * device, copies in its memory (iarena), else the host arrays themselves */
    const int32_t *d_ids, *d_seg, *d_pos, *d_tg, *d_rows;
    int32_t *iarena;
    finch_weight xnf_rows; /* xnf as an f32 table: the target rows gathered by embed */
    const finch_backend *be;
    finch_err dev_err; /* the first failed copy to the device (a device error) */
    bool ckpt;         /* gradient checkpointing: one layer's buffers, recomputed in backward */
    bool recompute;    /* xn1, xn2 and h: one layer's buffers, recomputed in backward */
    float *arena;
    finch_workspace ws;
    void (*on_grads)(void *user, int block); /* finch_train_acts_on_grads */
    void *on_grads_user;
};

void finch_train_acts_on_grads(finch_train_acts *a, void (*fn)(void *user, int block), void *user) {
    a->on_grads = fn;
    a->on_grads_user = user;
}

finch_status finch_train_acts_new(const finch_model *m, int B, int T, finch_train_acts **out,
                                  finch_err *err) {
    return finch_train_acts_create(m, B, T, 0, out, err);
}

finch_status finch_train_acts_create(const finch_model *m, int B, int T, unsigned flags,
                                     finch_train_acts **out, finch_err *err) {
    const finch_model_config *c = &m->cfg;
    const int nv = m->virt.n, K = m->virt.embd ? nv : 0;
    if (B < 1 || T < 2 || T > c->n_ctx_train - nv)
        return finch_err_set(err, FINCH_E_USAGE, "batch %d x %d: need B >= 1 and 2 <= T <= %d%s", B,
                             T, c->n_ctx_train - nv,
                             nv ? " (the model's context less the virtual tokens)" : "");
    const int T_in = T;
    T += K;
    const bool qkn = m->arch->qk_norm, post = m->arch->post_norms;
    const size_t N = (size_t)B * T, C = c->n_embd, HD = (size_t)c->n_head * c->head_dim,
                 KD = (size_t)c->n_head_kv * c->head_dim, F = c->n_ff, V = c->n_vocab,
                 L = c->n_layer,
                 ATT = (size_t)B * c->n_head * T; /* attention's per-row statistics */
    finch_train_acts *a = finch_calloc(1, sizeof *a, "training activations", err);
    if (!a) return FINCH_E_NOMEM;
    a->B = B;
    a->be = m->be;
    a->T = T;
    a->T_in = T_in;
    a->K = K;
    a->P = m->virt.kv ? nv : 0;
    a->ckpt = flags & FINCH_ACTS_CHECKPOINT;
    a->recompute = !a->ckpt && (flags & FINCH_ACTS_RECOMPUTE);
    /* with checkpointing every layer's entry of a table but x's is the same buffer; with
     * recomputing, so is every layer's entry of xn1's, xn2's and h's */
    struct {
        float ***p;
        size_t n;
    } per_layer[] = {{&a->x, N * C},
                     {&a->xn1, N * C},
                     {&a->rstd1, 2 * N},
                     {&a->q, N * HD},
                     {&a->k, N * KD},
                     {&a->v, N * KD},
                     {&a->att, 2 * ATT},
                     {&a->ao, N * HD},
                     {&a->xm, N * C},
                     {&a->xn2, N * C},
                     {&a->rstd2, 2 * N},
                     {&a->gate, m->arch->plain_ffn ? 0 : N * F},
                     {&a->up, N * F},
                     {&a->h, N * F},
                     {&a->qp, qkn ? N * HD : 0},
                     {&a->kp, qkn ? N * KD : 0},
                     {&a->rstdq, qkn ? N * c->n_head : 0},
                     {&a->rstdk, qkn ? N * c->n_head_kv : 0},
                     {&a->op, post ? N * C : 0},
                     {&a->rstdo, post ? N : 0},
                     {&a->fp, post ? N * C : 0},
                     {&a->rstdf2, post ? N : 0}};
    struct {
        float **p;
        size_t n;
    } single[] = {
        {&a->xnf, N * C},  {&a->rstdf, 2 * N}, {&a->logits, (N < HEAD_ROWS ? N : HEAD_ROWS) * V},
        {&a->dx, N * C},   {&a->dt, N * C},    {&a->dxn, N * C},
        {&a->dao, N * HD}, {&a->dq, N * HD},   {&a->dk, N * KD},
        {&a->dv, N * KD},  {&a->dh, N * F},    {&a->dup, N * F},
        {&a->xf, N * C},   {&a->xg, N * C},    {&a->ds, ATT},
        {&a->dad, N * C}};
    const size_t n_pl = sizeof per_layer / sizeof per_layer[0],
                 n_s = sizeof single / sizeof single[0];
    /* one arena: sizes (rounded to 16 floats) summed with overflow checks, then slices */
    size_t total = 0, sz;
    bool ok = true;
    bool one[sizeof per_layer / sizeof per_layer[0]];
    for (size_t i = 0; i < n_pl && ok; i++) {
        float **const *t = per_layer[i].p;
        one[i] =
            i > 0 && (a->ckpt || (a->recompute && (t == &a->xn1 || t == &a->xn2 || t == &a->h)));
        ok = finch_size_mul((per_layer[i].n + 15) & ~(size_t)15, one[i] ? 1 : L, &sz) &&
             finch_size_add(total, sz, &total);
    }
    for (size_t i = 0; i < n_s && ok; i++)
        ok = finch_size_add(total, (single[i].n + 15) & ~(size_t)15, &total);
    if (!ok || !finch_size_mul(total, sizeof(float), &sz)) {
        free(a);
        return finch_err_set(err, FINCH_E_RANGE, "activations for a %d x %d batch overflow", B, T);
    }
    a->arena = m->be->alloc(sz, "training activations", err);
    float *p = a->arena;
    for (size_t i = 0; i < n_pl && p; i++) {
        *per_layer[i].p = finch_calloc(L + 1, sizeof(float *), "activation table", err);
        if (!*per_layer[i].p) p = NULL;
        const size_t n = (per_layer[i].n + 15) & ~(size_t)15;
        for (size_t l = 0; l < L && p; l++) {
            (*per_layer[i].p)[l] = p;
            if (!one[i] || l + 1 == L) p += n;
        }
    }
    for (size_t i = 0; i < n_s && p; i++) {
        *single[i].p = p;
        p += (single[i].n + 15) & ~(size_t)15;
    }
    a->pos = p ? finch_alloc(N * sizeof(int32_t), "positions", err) : NULL;
    a->tg = a->pos ? finch_alloc(N * sizeof(int32_t), "targets", err) : NULL;
    a->rows = a->tg ? finch_alloc(N * sizeof(int32_t), "target rows", err) : NULL;
    bool ok_in = true;
    if (K && a->rows) {
        a->ids_in = finch_alloc(N * sizeof(int32_t), "ids", err);
        a->tg_in = a->ids_in ? finch_alloc(N * sizeof(int32_t), "targets", err) : NULL;
        a->seg_in = a->tg_in ? finch_alloc(N * sizeof(int32_t), "segments", err) : NULL;
        ok_in = a->seg_in != NULL;
    }
    if (a->rows && ok_in && m->be->device) {
        FINCH_ASSERT(!K); /* virtual tokens stay on the host (finch_model_place) */
        a->iarena = m->be->alloc(5 * N * sizeof(int32_t), "token rows", err);
        ok_in = a->iarena != NULL;
    }
    const int64_t max_cols = finch_widest_input(c);
    if (!a->rows || !ok_in ||
        finch_workspace_init(&a->ws, finch_workspace_need(max_cols, T + a->P), finch_threads_get(),
                             0, err)) {
        finch_train_acts_free(a);
        return err ? err->code : FINCH_E_NOMEM;
    }
    *out = a;
    return FINCH_OK;
}

finch_status finch_train_acts_bf16(finch_train_acts *a, const finch_model *m, finch_err *err) {
    const finch_model_config *c = &m->cfg;
    /* operands up to the vocabulary or the widest input wide; the inputs of the weights
     * full fine-tuning trains up to the widest input (the output projection's is H x D) */
    const int64_t in = finch_widest_input(c), dim = c->n_vocab > in ? c->n_vocab : in;
    return finch_model_bf16_products(m, &a->ws, (int64_t)a->B * a->T, dim, in, err);
}

void finch_train_acts_free(finch_train_acts *a) {
    if (!a) return;
    float **tables[] = {a->x,     a->xn1,   a->rstd1, a->q,     a->k,  a->v,     a->att, a->ao,
                        a->xm,    a->xn2,   a->rstd2, a->gate,  a->up, a->h,     a->qp,  a->kp,
                        a->rstdq, a->rstdk, a->op,    a->rstdo, a->fp, a->rstdf2};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) free(tables[i]);
    a->be->free(a->arena);
    a->be->free(a->iarena);
    free(a->pos);
    free(a->tg);
    free(a->rows);
    free(a->ids_in);
    free(a->tg_in);
    free(a->seg_in);
    finch_workspace_free(&a->ws);
    free(a);
}

static void backward_pass(const finch_model *m, finch_train_acts *a);

/* n ids from the host's src into the device's dst, which it returns; the first failure (a
 * device error) is kept for finch_train_acts_status. */
static const int32_t *upload(finch_train_acts *a, int32_t *dst, const int32_t *src, int64_t n) {
    finch_copy_kept(a->be->copy_in, dst, src, (size_t)n * sizeof *src, &a->dev_err);
    return dst;
}

finch_status finch_train_acts_status(const finch_train_acts *a, finch_err *err) {
    return finch_kept_status(&a->dev_err, err);
}
static double head_pass(const finch_model *m, finch_train_acts *a, const float *row_scale,
                        double *row_logp, float grad_scale, bool backward);

/* sum (N, C) = h + x, the sublayer's output h (in sum) joining the stream x, through the
 * block's module b at its place (model.h). */
static void join(const finch_block_module *b, float *sum, const float *x, int64_t N, int64_t C,
                 const finch_linear_ctx *ctx) {
    if (b && b->place == FINCH_MODULE_ON_OUTPUT) b->forward(b, sum, sum, N, ctx);
    if (b && b->place == FINCH_MODULE_PARALLEL) b->forward(b, sum, x, N, ctx);
    ctx->be->add(sum, x, N * C);
    if (b && b->place == FINCH_MODULE_AFTER_ADD) b->forward(b, sum, sum, N, ctx);
}

/* Undoes join: a->dx holds the gradient of the sum and becomes that of x (but for a
 * parallel module's part, left in a->dad for the caller to add once dx has served);
 * returns the gradient of h. */
static const float *join_backward(const finch_block_module *b, finch_train_acts *a, int64_t N,
                                  int64_t C, const finch_linear_ctx *ctx) {
    if (!b) return a->dx;
    b->backward(b, a->dad, a->dx, N, ctx);
    switch (b->place) {
    case FINCH_MODULE_AFTER_ADD: /* d(x + h) = dy + J^T dy, for both */
        ctx->be->add(a->dx, a->dad, N * C);
        return a->dx;
    case FINCH_MODULE_ON_OUTPUT: /* dh = dy + J^T dy, dx = dy */
        ctx->be->add(a->dad, a->dx, N * C);
        return a->dad;
    case FINCH_MODULE_PARALLEL: /* dh = dy, dx = dy + J^T dy (added later) */
        return a->dx;
    }
    return a->dx;
}

/* Block l's slice of prefix tuning's keys and values (P of them), for attention. */
static finch_attn_prefix prefix_of(const finch_model *m, int l, int64_t P) {
    const finch_virtual *vt = &m->virt;
    if (!P) return (finch_attn_prefix){0};
    const int64_t KD = (int64_t)m->cfg.n_head_kv * m->cfg.head_dim, off = 2 * l * KD;
    return (finch_attn_prefix){.k = vt->kv + off,
                               .v = vt->kv + off + KD,
                               .dk = vt->d_kv ? vt->d_kv + off : NULL,
                               .dv = vt->d_kv ? vt->d_kv + off + KD : NULL,
                               .n = P,
                               .stride = 2 * m->cfg.n_layer * KD};
}

/* Block l's h = act(gate) * up, or act(up) [plain_ffn]. */
static void ffn_act(const finch_model *m, finch_train_acts *a, int l) {
    const int64_t n = (int64_t)a->B * a->T * m->cfg.n_ff;
    if (m->arch->plain_ffn)
        m->be->gelu_forward(a->h[l], a->up[l], n);
    else if (m->arch->act == FINCH_ACT_GELU_TANH)
        m->be->geglu_forward(a->h[l], a->gate[l], a->up[l], n);
    else
        m->be->swiglu_forward(a->h[l], a->gate[l], a->up[l], n);
}

/* Block l's forward from x[l] into x[l + 1] (xf after the last), keeping what its
 * backward needs in the layer's buffers; backward calls it again for each block under
 * checkpointing, with the same inputs, masks and kernels, so it recomputes the same bits. */
static void block_forward(const finch_model *m, finch_train_acts *a, int l, const int32_t *seg,
                          const finch_linear_ctx *ctxp) {
    const finch_model_config *c = &m->cfg;
    const finch_backend *be = m->be;
    const int64_t B = a->B, T = a->T, N = B * T, C = c->n_embd;
    const int H = c->n_head, KVH = c->n_head_kv, D = c->head_dim, L = c->n_layer;
    const float eps = c->rms_eps;
    const finch_arch *arch = m->arch;
    const int64_t P = a->P;
    finch_linear_ctx ctx = *ctxp;
    const finch_layer *ly = &m->layers[l];
    const float theta = finch_layer_theta(m, l);
    float *x = a->x[l];
    finch_norm_forward(m, a->xn1[l], a->rstd1[l], x, ly->attn_norm, ly->attn_norm_b, N);
    finch_linear_forward_train(arch->qk_norm ? a->qp[l] : a->q[l], a->xn1[l], &ly->wq, N, &ctx);
    finch_linear_forward_train(arch->qk_norm ? a->kp[l] : a->k[l], a->xn1[l], &ly->wk, N, &ctx);
    finch_linear_forward_train(a->v[l], a->xn1[l], &ly->wv, N, &ctx);
    if (arch->qk_norm) {
        be->rmsnorm_forward(a->q[l], a->rstdq[l], a->qp[l], ly->q_norm, N * H, D, eps);
        be->rmsnorm_forward(a->k[l], a->rstdk[l], a->kp[l], ly->k_norm, N * KVH, D, eps);
    }
    if (!arch->learned_pos) {
        be->rope_forward(a->q[l], a->d_pos, N, H, D, theta);
        be->rope_forward(a->k[l], a->d_pos, N, KVH, D, theta);
    }
    const finch_attn_prefix pre = prefix_of(m, l, P);
    be->attention_forward_train(a->ao[l], a->att[l], a->q[l], a->k[l], a->v[l], seg,
                                P ? &pre : NULL, B, T, H, KVH, D, finch_layer_window(m, l), &a->ws);
    finch_linear_forward_train(arch->post_norms ? a->op[l] : a->xm[l], a->ao[l], &ly->wo, N, &ctx);
    if (arch->post_norms)
        be->rmsnorm_forward(a->xm[l], a->rstdo[l], a->op[l], ly->post_attn_norm, N, C, eps);
    join(ly->attn_module, a->xm[l], x, N, C, &ctx);
    finch_norm_forward(m, a->xn2[l], a->rstd2[l], a->xm[l], ly->ffn_norm, ly->ffn_norm_b, N);
    if (!arch->plain_ffn) finch_linear_forward_train(a->gate[l], a->xn2[l], &ly->w_gate, N, &ctx);
    finch_linear_forward_train(a->up[l], a->xn2[l], &ly->w_up, N, &ctx);
    ffn_act(m, a, l);
    float *next = l + 1 < L ? a->x[l + 1] : a->xf;
    finch_linear_forward_train(arch->post_norms ? a->fp[l] : next, a->h[l], &ly->w_down, N, &ctx);
    if (arch->post_norms)
        be->rmsnorm_forward(next, a->rstdf2[l], a->fp[l], ly->post_ffn_norm, N, C, eps);
    join(ly->ffn_module, next, a->xm[l], N, C, &ctx);
}

int64_t finch_model_train_forward(const finch_model *m, finch_train_acts *a, const int32_t *ids,
                                  const int32_t *targets, const int32_t *pos, const int32_t *seg,
                                  uint64_t dropout_seed, bool training, double *row_logp) {
    const finch_model_config *c = &m->cfg;
    const finch_backend *be = m->be;
    const int64_t B = a->B, T = a->T, N = B * T, C = c->n_embd;
    const int L = c->n_layer;
    const finch_arch *arch = m->arch;
    static uint64_t passes; /* every pass of every finch_train_acts gets its own number */
    a->ctx = (finch_linear_ctx){.be = be,
                                .ws = &a->ws,
                                .training = training,
                                .dropout_seed = dropout_seed,
                                .pass = __atomic_add_fetch(&passes, 1, __ATOMIC_RELAXED)};
    finch_linear_ctx ctx = a->ctx;
    const finch_virtual *vt = &m->virt;
    const int64_t K = a->K, P = a->P;
    FINCH_ASSERT(vt->n == (K ? K : P));
    if (vt->refresh) vt->refresh(vt->self);
    if (K) {
        /* rows of K virtual tokens (no target, positions 0..K-1, in the segment of the
         * row's first token: rows hold one example each), then the caller's */
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++) {
                int64_t i = b * T + t, j = b * a->T_in + (t < K ? 0 : t - K);
                a->ids_in[i] = t < K ? 0 : ids[j];
                a->tg_in[i] = t < K ? -1 : targets[j];
                a->pos[i] = t < K ? (int32_t)t : pos[j] + (int32_t)K;
                if (seg) a->seg_in[i] = seg[j];
            }
        ids = a->ids_in;
        targets = a->tg_in;
        if (seg) seg = a->seg_in;
    } else {
        for (int64_t i = 0; i < N; i++) a->pos[i] = pos[i] + (int32_t)P;
    }
    const bool dev = be->device;
    a->d_ids = dev ? upload(a, a->iarena, ids, N) : ids;
    a->d_seg = dev && seg ? upload(a, a->iarena + N, seg, N) : seg;
    a->d_pos = dev ? upload(a, a->iarena + 2 * N, a->pos, N) : a->pos;

    /* ---- forward ---- */
    be->embed(a->x[0], a->d_ids, N, &m->tok_embd);
    if (arch->embed_scale) be->scale(a->x[0], N * C, sqrtf((float)C));
    for (int64_t b = 0; b < B && K; b++)
        memcpy(a->x[0] + b * T * C, vt->embd, (size_t)(K * C) * sizeof(float));
    if (arch->learned_pos) { /* every row, virtual ones too, gets its position's embedding */
        be->embed(a->dt, a->d_pos, N, &m->pos_embd);
        be->add(a->x[0], a->dt, N * C);
    }
    for (int l = 0; l < L; l++) block_forward(m, a, l, a->d_seg, &ctx);
    finch_norm_forward(m, a->xnf, a->rstdf, a->xf, m->output_norm, m->output_norm_b, N);
    int64_t Nt = 0;
    for (int64_t i = 0; i < N; i++)
        if (targets[i] >= 0) {
            a->tg[Nt] = targets[i];
            a->rows[Nt++] = (int32_t)i;
        }
    a->d_tg = dev ? upload(a, a->iarena + 3 * N, a->tg, Nt) : a->tg;
    a->d_rows = dev ? upload(a, a->iarena + 4 * N, a->rows, Nt) : a->rows;
    /* xg: the rows of xnf with a target */
    a->xnf_rows = (finch_weight){.type = FINCH_DTYPE_F32,
                                 .rows = N,
                                 .cols = C,
                                 .row_bytes = (size_t)C * sizeof(float),
                                 .data = a->xnf};
    be->embed(a->xg, a->d_rows, Nt, &a->xnf_rows);
    a->Nt = Nt;
    a->ids_cur = a->d_ids;
    a->seg_cur = a->d_seg;
    if (row_logp) {
        for (int64_t b = 0; b < B; b++) row_logp[b] = 0.0;
        head_pass(m, a, NULL, row_logp, 0.0f, false);
    }
    return Nt;
}

/* The head over the Nt target rows, HEAD_ROWS at a time: logits, then either the loss of
 * every row scaled by grad_scale, or per run of one row b's targets (a run may cross chunks,
 * so it adds up chunk by chunk) its log-probability into row_logp[b] (+=) and/or the
 * gradient of row_scale[b] log p (softmax_xent's gradient in place); with backward the
 * head's backward into a->dt (Nt, C). Returns the sum over chunks of each chunk's mean loss
 * times its rows (without row_scale and row_logp). */
static double head_pass(const finch_model *m, finch_train_acts *a, const float *row_scale,
                        double *row_logp, float grad_scale, bool backward) {
    const int64_t T = a->T, C = m->cfg.n_embd, V = m->cfg.n_vocab, Nt = a->Nt;
    const finch_backend *be = m->be;
    finch_linear_ctx ctx = a->ctx;
    double loss = 0;
    for (int64_t c0 = 0; c0 < Nt; c0 += HEAD_ROWS) {
        const int64_t c1 = c0 + HEAD_ROWS < Nt ? c0 + HEAD_ROWS : Nt;
        finch_linear_forward_train(a->logits, a->xg + c0 * C, &m->output, c1 - c0, &ctx);
        if (!row_scale && !row_logp)
            loss += be->softmax_xent(backward ? a->logits : NULL, a->logits, a->d_tg + c0, c1 - c0,
                                     V, grad_scale) *
                    (double)(c1 - c0);
        for (int64_t k = c0; k < c1 && (row_scale || row_logp);) {
            int64_t k0 = k, b = a->rows[k] / T;
            while (k < c1 && a->rows[k] / T == b) k++;
            float *l = a->logits + (k0 - c0) * V;
            if (row_logp)
                row_logp[b] -=
                    be->softmax_xent(NULL, l, a->d_tg + k0, k - k0, V, 0.0f) * (double)(k - k0);
            /* dlogits = -scale_b (onehot - softmax): the gradient of scale_b log p(target) */
            if (row_scale && row_scale[b] == 0.0f) /* the kernel takes 0 as 1/n */
                be->zero(l, (size_t)((k - k0) * V) * sizeof(float));
            else if (row_scale)
                be->softmax_xent(l, l, a->d_tg + k0, k - k0, V, -row_scale[b]);
        }
        if (backward)
            finch_linear_backward(a->dt + c0 * C, a->logits, a->xg + c0 * C, &m->output, c1 - c0,
                                  &ctx);
    }
    return loss;
}

void finch_model_train_backward(const finch_model *m, finch_train_acts *a, const float *row_scale) {
    head_pass(m, a, row_scale, NULL, 0.0f, true); /* the logits again, chunk by chunk */
    backward_pass(m, a);
}

double finch_model_train_step(const finch_model *m, finch_train_acts *a, const int32_t *ids,
                              const int32_t *targets, const int32_t *pos, const int32_t *seg,
                              float grad_scale, uint64_t dropout_seed, bool backward) {
    const int64_t Nt =
        finch_model_train_forward(m, a, ids, targets, pos, seg, dropout_seed, backward, NULL);
    if (Nt == 0) return 0.0;
    /* the mean's gradient unless told otherwise, the same for every chunk */
    const float scale = grad_scale != 0.0f ? grad_scale : 1.0f / (float)Nt;
    double loss = head_pass(m, a, NULL, NULL, scale, backward) / (double)Nt;
    if (backward) backward_pass(m, a);
    return loss;
}

/* The backward pass from the gradient of the head's input rows (in a->dt, head_pass). */
static void backward_pass(const finch_model *m, finch_train_acts *a) {
    const finch_model_config *c = &m->cfg;
    const finch_backend *be = m->be;
    const int64_t B = a->B, T = a->T, N = B * T, C = c->n_embd, F = c->n_ff;
    const int H = c->n_head, KVH = c->n_head_kv, D = c->head_dim, L = c->n_layer;
    const finch_arch *arch = m->arch;
    const bool gelu = arch->act == FINCH_ACT_GELU_TANH;
    finch_linear_ctx ctx = a->ctx;
    const finch_virtual *vt = &m->virt;
    const int64_t K = a->K, P = a->P, Nt = a->Nt;
    const int32_t *ids = a->ids_cur, *seg = a->seg_cur;

    /* ---- backward (dx: the gradient of the residual stream) ---- */
    /* xg = the target rows of xnf (head_pass left dxg in dt): the other rows get none */
    be->zero(a->dxn, (size_t)(N * C) * sizeof(float));
    be->embed_backward(a->dxn, a->dt, a->d_rows, Nt, C);
    /* xnf = rmsnorm(x_L) */
    finch_norm_backward(m, a->dx, m->d_output_norm, m->d_output_norm_b, a->dxn, a->rstdf, a->xf,
                        m->output_norm, N);
    for (int l = L - 1; l >= 0; l--) {
        const finch_layer *ly = &m->layers[l];
        const float theta = finch_layer_theta(m, l);
        if (a->ckpt) block_forward(m, a, l, seg, &ctx);
        /* x_{l+1} = xm + down(h) (or + rmsnorm(down(h)) * post_ffn_norm): dxm = dx (kept in
         * dx), dh from down */
        const float *df = join_backward(ly->ffn_module, a, N, C, &ctx);
        if (arch->post_norms) {
            be->rmsnorm_backward(a->dt, ly->d_post_ffn_norm, df, a->rstdf2[l], a->fp[l],
                                 ly->post_ffn_norm, N, C);
            df = a->dt;
        }
        if (a->recompute) ffn_act(m, a, l);
        finch_linear_backward(a->dh, df, a->h[l], &ly->w_down, N, &ctx);
        if (ly->ffn_module && ly->ffn_module->place == FINCH_MODULE_PARALLEL)
            be->add(a->dx, a->dad, N * C);
        if (a->recompute)
            finch_norm_forward(m, a->xn2[l], a->rstd2[l], a->xm[l], ly->ffn_norm, ly->ffn_norm_b,
                               N);
        if (arch->plain_ffn) {
            /* h = gelu(up), up = linear(xn2) */
            be->gelu_backward(a->dup, a->dh, a->up[l], N * F);
            finch_linear_backward(a->dxn, a->dup, a->xn2[l], &ly->w_up, N, &ctx);
        } else {
            /* h = act(gate) * up */
            if (gelu)
                be->geglu_backward(a->dh, a->dup, a->dh, a->gate[l], a->up[l], N * F);
            else
                be->swiglu_backward(a->dh, a->dup, a->dh, a->gate[l], a->up[l], N * F);
            /* gate = linear(xn2), up = linear(xn2): dxn2 sums both */
            finch_linear_backward(a->dxn, a->dh, a->xn2[l], &ly->w_gate, N, &ctx);
            finch_linear_backward(a->dt, a->dup, a->xn2[l], &ly->w_up, N, &ctx);
            be->add(a->dxn, a->dt, N * C);
        }
        /* xn2 = norm(xm): dxm = dx + norm's gradient */
        finch_norm_backward(m, a->dt, ly->d_ffn_norm, ly->d_ffn_norm_b, a->dxn, a->rstd2[l],
                            a->xm[l], ly->ffn_norm, N);
        be->add(a->dx, a->dt, N * C);
        /* xm = x_l + o(ao) (or + rmsnorm(o(ao)) * post_attn_norm): dx_l gets dxm (already in
         * dx), dao from o */
        const float *dout = join_backward(ly->attn_module, a, N, C, &ctx);
        if (arch->post_norms) {
            be->rmsnorm_backward(a->dt, ly->d_post_attn_norm, dout, a->rstdo[l], a->op[l],
                                 ly->post_attn_norm, N, C);
            dout = a->dt;
        }
        finch_linear_backward(a->dao, dout, a->ao[l], &ly->wo, N, &ctx);
        if (ly->attn_module && ly->attn_module->place == FINCH_MODULE_PARALLEL)
            be->add(a->dx, a->dad, N * C);
        /* ao = attention(q, k, v) */
        const finch_attn_prefix pre = prefix_of(m, l, P);
        be->attention_backward(a->dq, a->dk, a->dv, a->ds, a->dao, a->ao[l], a->att[l], a->q[l],
                               a->k[l], a->v[l], seg, P ? &pre : NULL, B, T, H, KVH, D,
                               finch_layer_window(m, l), &a->ws);
        /* rope(q), rope(k) */
        if (!arch->learned_pos) {
            be->rope_backward(a->dq, a->d_pos, N, H, D, theta);
            be->rope_backward(a->dk, a->d_pos, N, KVH, D, theta);
        }
        /* q, k = per-head rmsnorm of the projections' outputs */
        if (arch->qk_norm) {
            be->rmsnorm_backward(a->dq, ly->d_q_norm, a->dq, a->rstdq[l], a->qp[l], ly->q_norm,
                                 N * H, D);
            be->rmsnorm_backward(a->dk, ly->d_k_norm, a->dk, a->rstdk[l], a->kp[l], ly->k_norm,
                                 N * KVH, D);
        }
        /* q, k, v = linears(xn1): dxn1 sums the three */
        if (a->recompute)
            finch_norm_forward(m, a->xn1[l], a->rstd1[l], a->x[l], ly->attn_norm, ly->attn_norm_b,
                               N);
        finch_linear_backward(a->dxn, a->dq, a->xn1[l], &ly->wq, N, &ctx);
        finch_linear_backward(a->dt, a->dk, a->xn1[l], &ly->wk, N, &ctx);
        be->add(a->dxn, a->dt, N * C);
        finch_linear_backward(a->dt, a->dv, a->xn1[l], &ly->wv, N, &ctx);
        be->add(a->dxn, a->dt, N * C);
        /* xn1 = norm(x_l): dx_l = dxm + norm's gradient */
        finch_norm_backward(m, a->dt, ly->d_attn_norm, ly->d_attn_norm_b, a->dxn, a->rstd1[l],
                            a->x[l], ly->attn_norm, N);
        be->add(a->dx, a->dt, N * C);
        /* block l's gradients are whole: a fused optimizer step may use them now */
        if (a->on_grads) a->on_grads(a->on_grads_user, l);
    }
    /* x_0 = the virtual rows, then embed(ids) (* sqrt(C)), + pos_embd[pos] */
    if (m->d_pos_embd) be->embed_backward(m->d_pos_embd, a->dx, a->d_pos, N, C);
    if (vt->backward) vt->backward(vt->self);
    for (int64_t b = 0; b < B && K; b++) {
        float *dv = a->dx + b * T * C;
        if (vt->d_embd) be->add(vt->d_embd, dv, K * C);
        memset(dv, 0, (size_t)(K * C) * sizeof(float));
    }
    if (m->d_tok_embd) {
        if (arch->embed_scale) be->scale(a->dx, N * C, sqrtf((float)C));
        be->embed_backward(m->d_tok_embd, a->dx, ids, N, C);
    }
    if (a->on_grads) a->on_grads(a->on_grads_user, -1);
}
