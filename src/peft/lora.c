/*
 * lora.c: LoRA (Hu et al. 2021) on finch_linear, with PEFT's conventions:
 *
 *   forward   u = xd A^T (T, r),  y += w s u B^T            xd = dropout(x), s = alpha/r
 *   backward  du = w s dy B (T, r)
 *             dB += w s dy^T u,   dA += du^T xd,   dx += mask * (du A)
 *
 * Dropout draws its keep mask from a hash of (step seed, layer, target, element), so
 * backward regenerates exactly the mask forward used without storing it; kept elements
 * are scaled by 1/(1-p) as torch.nn.Dropout does. Inference never drops.
 */
#include "peft/peft.h"

#include <math.h>
#include <stdlib.h>
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif

static const char *const peft_names[FINCH_TARGET_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
static const char *const gguf_names[FINCH_TARGET_COUNT] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
static const char *const short_names[FINCH_TARGET_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};

const char *finch_target_peft_name(finch_target t) { return peft_names[t]; }
const char *finch_target_gguf_name(finch_target t) { return gguf_names[t]; }

finch_status finch_target_parse(const char *list, uint32_t *mask, finch_err *err) {
    uint32_t m = 0;
    const char *p = list;
    if (!strcmp(list, "all-linear")) {
        *mask = (1u << FINCH_TARGET_COUNT) - 1;
        return FINCH_OK;
    }
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = -1;
        for (int t = 0; t < FINCH_TARGET_COUNT && found < 0; t++)
            if ((strlen(short_names[t]) == n && !strncmp(p, short_names[t], n)) ||
                (strlen(peft_names[t]) == n && !strncmp(p, peft_names[t], n)))
                found = t;
        if (found < 0)
            return finch_err_set(err, FINCH_E_USAGE,
                                 "target module '%.*s': use q, k, v, o, gate, up, down (or "
                                 "q_proj, ...), comma-separated, or all-linear",
                                 (int)n, p);
        m |= 1u << found;
        p += n;
        if (*p == ',') p++;
    }
    if (!m) return finch_err_set(err, FINCH_E_USAGE, "target modules: the list is empty");
    *mask = m;
    return FINCH_OK;
}

finch_linear *finch_model_target(finch_model *m, int l, finch_target t) {
    finch_layer *ly = &m->layers[l];
    finch_linear *lins[FINCH_TARGET_COUNT] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo,
                                              &ly->w_gate, &ly->w_up, &ly->w_down};
    return lins[t];
}

finch_status finch_lora_new(const finch_model *m, const finch_lora_config *cfg, finch_rng *rng,
                            bool with_grads, finch_lora **out, finch_err *err) {
    if (cfg->r < 1 || cfg->r > 4096)
        return finch_err_set(err, FINCH_E_USAGE, "LoRA rank %d: must be between 1 and 4096", cfg->r);
    if (!(cfg->alpha > 0))
        return finch_err_set(err, FINCH_E_USAGE, "LoRA alpha %g: must be > 0", cfg->alpha);
    if (!(cfg->dropout >= 0 && cfg->dropout < 1))
        return finch_err_set(err, FINCH_E_USAGE, "LoRA dropout %g: must be in [0, 1)", cfg->dropout);
    if (!cfg->targets || cfg->targets >> FINCH_TARGET_COUNT)
        return finch_err_set(err, FINCH_E_USAGE, "LoRA targets: none chosen");
    finch_lora *l = finch_calloc(1, sizeof *l, "LoRA adapter", err);
    if (!l) return FINCH_E_NOMEM;
    l->cfg = *cfg;
    l->scale = cfg->rslora ? cfg->alpha / sqrtf((float)cfg->r) : cfg->alpha / (float)cfg->r;
    int n_t = __builtin_popcount(cfg->targets);
    l->sites = finch_calloc((size_t)m->cfg.n_layer * n_t, sizeof *l->sites, "LoRA sites", err);
    if (!l->sites) goto nomem;
    /* one arena: sizes first, then slices */
    for (int ly = 0; ly < m->cfg.n_layer; ly++)
        for (int t = 0; t < FINCH_TARGET_COUNT; t++) {
            if (!(cfg->targets >> t & 1)) continue;
            const finch_linear *lin = finch_model_target((finch_model *)m, ly, (finch_target)t);
            finch_lora_site *s = &l->sites[l->n_sites++];
            *s = (finch_lora_site){.layer = ly, .target = (finch_target)t, .in = lin->w.cols,
                                   .out = lin->w.rows, .r = cfg->r, .scale = l->scale,
                                   .dropout = cfg->dropout};
            l->n_params += (int64_t)cfg->r * (s->in + s->out);
        }
    l->params = finch_calloc((size_t)l->n_params, sizeof(float), "LoRA parameters", err);
    if (!l->params) goto nomem;
    if (with_grads && !(l->grads = finch_calloc((size_t)l->n_params, sizeof(float), "LoRA gradients", err)))
        goto nomem;
    int64_t off = 0;
    for (int i = 0; i < l->n_sites; i++) {
        finch_lora_site *s = &l->sites[i];
        s->A = l->params + off;
        s->B = s->A + (int64_t)s->r * s->in;
        if (l->grads) s->dA = l->grads + off, s->dB = s->dA + (int64_t)s->r * s->in;
        off += (int64_t)s->r * (s->in + s->out);
        float bound = 1.0f / sqrtf((float)s->in);
        for (int64_t k = 0; k < (int64_t)s->r * s->in; k++)
            s->A[k] = (2.0f * finch_rng_float(rng) - 1.0f) * bound;
    }
    *out = l;
    return FINCH_OK;
nomem:
    finch_lora_free(l);
    return FINCH_E_NOMEM;
}

void finch_lora_free(finch_lora *l) {
    if (!l) return;
    free(l->sites);
    free(l->params);
    free(l->grads);
    free(l->scratch);
    free(l);
}

finch_lora_site *finch_lora_find(finch_lora *l, int layer, finch_target t) {
    for (int i = 0; i < l->n_sites; i++)
        if (l->sites[i].layer == layer && l->sites[i].target == t) return &l->sites[i];
    return NULL;
}

finch_status finch_lora_attach(finch_lora *l, finch_model *m, float weight, int64_t max_tokens,
                               finch_err *err) {
    size_t need = 0;
    for (int i = 0; i < l->n_sites; i++)
        need += (size_t)max_tokens * (2 * (size_t)l->sites[i].r +
                                      (l->cfg.dropout > 0 ? (size_t)l->sites[i].in : 0));
    float *scratch = finch_alloc(need * sizeof(float), "LoRA scratch", err);
    if (!scratch) return FINCH_E_NOMEM;
    free(l->scratch);
    l->scratch = scratch;
    for (int i = 0; i < l->n_sites; i++) {
        finch_lora_site *s = &l->sites[i];
        s->max_tokens = max_tokens;
        s->u = scratch;
        s->du = s->u + max_tokens * s->r;
        s->xd = l->cfg.dropout > 0 ? s->du + max_tokens * s->r : NULL;
        scratch += max_tokens * (2 * s->r + (s->xd ? s->in : 0));
        finch_status st = finch_linear_attach(finch_model_target(m, s->layer, s->target),
                                              &finch_lora_ops, s, weight, err);
        if (st) {
            finch_lora_detach(l, m);
            return st;
        }
    }
    return FINCH_OK;
}

void finch_lora_detach(finch_lora *l, finch_model *m) {
    for (int i = 0; i < l->n_sites; i++)
        finch_linear_detach(finch_model_target(m, l->sites[i].layer, l->sites[i].target), &l->sites[i]);
}

/* ---- dropout -------------------------------------------------------------------------- */


/* The keep mask of a site for one step: element i is kept when kept(&m, i). */
typedef struct {
    uint64_t base, threshold;
    float scale; /* 1 / (1 - p) */
} drop_mask;

static drop_mask mask_of(const finch_lora_site *s, uint64_t seed) {
    return (drop_mask){finch_mix64(seed ^ finch_mix64((uint64_t)s->layer * FINCH_TARGET_COUNT + s->target + 1)),
                       (uint64_t)((double)s->dropout * 18446744073709551616.0),
                       1.0f / (1.0f - s->dropout)};
}

static inline bool kept(const drop_mask *m, int64_t i) {
    return finch_mix64(m->base + (uint64_t)i) >= m->threshold;
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
/* The lanes of 16 elements from i that lie below n. */
static inline __mmask16 tail16(int64_t i, int64_t n) {
    return n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
}

/* kept() for elements i .. i+15 (those below n), 8 hashes per vector: the same finch_mix64
 * in 64-bit lanes. */
static inline __mmask8 kept8(const drop_mask *m, int64_t i) {
    __m512i z = _mm512_add_epi64(_mm512_set1_epi64((long long)(m->base + (uint64_t)i)),
                                 _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)),
                           _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ull));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)),
                           _mm512_set1_epi64((long long)0x94d049bb133111ebull));
    z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
    return _mm512_cmpge_epu64_mask(z, _mm512_set1_epi64((long long)m->threshold));
}

static inline __mmask16 kept16(const drop_mask *m, int64_t i, int64_t n) {
    return (__mmask16)(((unsigned)kept8(m, i + 8) << 8 | kept8(m, i)) & tail16(i, n));
}
#endif

/* ---- the attachment -------------------------------------------------------------------- */

static const float *lora_input(const finch_lora_site *s, const float *x, int64_t T,
                               const finch_linear_ctx *ctx) {
    if (!ctx->training || s->dropout <= 0) return x;
    drop_mask m = mask_of(s, ctx->dropout_seed);
    float *xd = s->xd;
    const int64_t n = T * s->in;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = kept16(&m, i, n);
        _mm512_mask_storeu_ps(xd + i, tail16(i, n),
                              _mm512_maskz_mul_ps(k, _mm512_maskz_loadu_ps(k, x + i),
                                                  _mm512_set1_ps(m.scale)));
    }
#else
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) xd[i] = kept(&m, i) ? x[i] * m.scale : 0.0f;
#endif
    return xd;
}

static void lora_forward(const finch_attachment *a, float *y, const float *x, int64_t T,
                         const finch_linear_ctx *ctx) {
    const finch_lora_site *s = a->state;
    const finch_backend *be = ctx->be;
    FINCH_ASSERT(T <= s->max_tokens);
    const float *xd = lora_input(s, x, T, ctx);
    be->gemm(false, true, T, s->r, s->in, 1.0f, xd, s->in, s->A, s->in, 0.0f, s->u, s->r);
    be->gemm(false, true, T, s->out, s->r, a->weight * s->scale, s->u, s->r, s->B, s->r, 1.0f,
             y, s->out);
}

static void lora_backward(const finch_attachment *a, float *dx, const float *dy, const float *x,
                          int64_t T, const finch_linear_ctx *ctx) {
    const finch_lora_site *s = a->state;
    const finch_backend *be = ctx->be;
    FINCH_ASSERT(T <= s->max_tokens && s->dA);
    /* the forward of this step left u = xd A^T in scratch only if nothing ran between;
     * recompute it (r is small) so backward never depends on call order */
    const float *xd = lora_input(s, x, T, ctx);
    const float ws = a->weight * s->scale;
    be->gemm(false, true, T, s->r, s->in, 1.0f, xd, s->in, s->A, s->in, 0.0f, s->u, s->r);
    be->gemm(false, false, T, s->r, s->out, ws, dy, s->out, s->B, s->r, 0.0f, s->du, s->r);
    be->gemm(true, false, s->out, s->r, T, ws, dy, s->out, s->u, s->r, 1.0f, s->dB, s->r);
    be->gemm(true, false, s->r, s->in, T, 1.0f, s->du, s->r, xd, s->in, 1.0f, s->dA, s->in);
    if (!dx) return;
    if (xd == x) {
        be->gemm(false, false, T, s->in, s->r, 1.0f, s->du, s->r, s->A, s->in, 1.0f, dx, s->in);
    } else {
        /* through dropout: the same mask and scale (xd's buffer is free again) */
        float *dxd = s->xd;
        be->gemm(false, false, T, s->in, s->r, 1.0f, s->du, s->r, s->A, s->in, 0.0f, dxd, s->in);
        drop_mask m = mask_of(s, ctx->dropout_seed);
        const int64_t n = T * s->in;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i += 16) {
            __mmask16 k = kept16(&m, i, n);
            __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dxd + i), _mm512_set1_ps(m.scale));
            _mm512_mask_storeu_ps(dx + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, dx + i), g));
        }
#else
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            if (kept(&m, i)) dx[i] += dxd[i] * m.scale;
#endif
    }
}

const finch_peft_ops finch_lora_ops = {
    .name = "lora",
    .forward = lora_forward,
    .backward = lora_backward,
};
