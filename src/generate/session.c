/*
 * session.c: the public inference session (finch_session_*) and generation
 * (finch_generate): prompt processing in chunks, then one token at a time with the KV
 * cache, streaming text as complete UTF-8 and holding back what may be the start of a
 * stop string.
 */
#define _GNU_SOURCE /* memmem */
#include "generate/generate.h"
#include "model/model.h"         /* finch_kv_session, finch_model_forward */
#include "tokenizer/tokenizer.h" /* finch_tokenizer_piece */

#include <stdlib.h>

struct finch_session {
    const finch_model *m;
    finch_kv_session kv;
};

finch_status finch_session_new(const finch_model *m, int n_ctx, finch_numerics numerics,
                               finch_session **out, finch_err *err) {
    if (n_ctx < 1 || n_ctx > m->cfg.n_ctx_train)
        return finch_err_set(err, FINCH_E_RANGE,
                             "context of %d positions: must be between 1 and %d (the model's "
                             "training context)",
                             n_ctx, m->cfg.n_ctx_train);
    finch_session *s = finch_calloc(1, sizeof *s, "session", err);
    if (!s) return FINCH_E_NOMEM;
    s->m = m;
    finch_status st = finch_kv_session_init(
        &s->kv, m, n_ctx, n_ctx < FINCH_INFER_CHUNK ? n_ctx : FINCH_INFER_CHUNK, numerics, err);
    if (st) {
        free(s);
        return st;
    }
    *out = s;
    return FINCH_OK;
}

void finch_session_free(finch_session *s) {
    if (!s) return;
    finch_kv_session_release(&s->kv);
    free(s);
}

int finch_session_pos(const finch_session *s) {
    return s->kv.pos > s->kv.start ? s->kv.pos - s->kv.start : 0;
}

void finch_session_reset(finch_session *s) {
    s->kv.pos = 0;
}

finch_status finch_session_decode(finch_session *s, const int32_t *ids, int n_ids, float *logits,
                                  float *last_logits, finch_err *err) {
    const int V = s->m->cfg.n_vocab;
    if (n_ids < 1) return finch_err_set(err, FINCH_E_USAGE, "decode: no tokens given");
    if (s->m->virt.n != s->kv.start)
        return finch_err_set(err, FINCH_E_USAGE,
                             "decode: the model's virtual tokens changed (a prompt or prefix "
                             "adapter was attached or detached) since the session was made");
    const int used = finch_session_pos(s), room = s->kv.n_ctx - s->kv.start;
    if (n_ids > room - used)
        return finch_err_set(err, FINCH_E_RANGE,
                             "decode: %d tokens do not fit: %d of %d context positions used", n_ids,
                             used, room);
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return finch_err_set(err, FINCH_E_RANGE, "decode: token id %d at %d is outside 0..%d",
                                 ids[i], i, V - 1);
    for (int done = 0; done < n_ids;) {
        int T = n_ids - done < s->kv.n_batch ? n_ids - done : s->kv.n_batch;
        finch_model_forward(s->m, &s->kv, ids + done, T, logits != NULL);
        if (logits) memcpy(logits + (size_t)done * V, s->kv.logits, (size_t)T * V * sizeof(float));
        done += T;
        if (done == n_ids && last_logits)
            memcpy(last_logits, s->kv.logits + (logits ? (size_t)(T - 1) * V : 0),
                   (size_t)V * sizeof(float));
    }
    return finch_kv_session_status(&s->kv, err);
}

finch_gen_options finch_gen_defaults(void) {
    return (finch_gen_options){.max_tokens = 128,
                               .temperature = 0.0f,
                               .top_k = 0,
                               .top_p = 1.0f,
                               .seed = 0,
                               .n_ctx = 0,
                               .stop = NULL};
}

/* ---- streaming text with stop strings ----------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    const char *const *stop;
    finch_piece_fn fn;
    void *user;
    bool stopped; /* a stop string was seen or the callback asked to stop */
} stream;

/* Length of the longest prefix of b[0..n) that ends on a UTF-8 character boundary. */
static size_t utf8_complete(const char *b, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)b[i - 1] & 0xc0) == 0x80) i--, back++;
    if (i == 0) return n;
    unsigned char c = (unsigned char)b[i - 1];
    size_t want = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return (back + 1 >= want) ? n : i - 1;
}

static bool emit(stream *s, size_t n) {
    if (n == 0) return true;
    if (s->fn && s->fn(s->buf, n, s->user)) s->stopped = true;
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
    return !s->stopped;
}

/* Adds text; emits what can no longer be part of a stop string. final flushes all. */
static finch_status stream_push(stream *s, const char *p, size_t n, bool final, finch_err *err) {
    if (s->len + n + 1 > s->cap) {
        size_t cap = (s->len + n + 1) * 2;
        char *b = finch_mem_realloc(s->buf, cap);
        if (!b) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
    size_t keep_from = s->len; /* text before this is safe to emit */
    for (const char *const *st = s->stop; st && *st; st++) {
        size_t sl = strlen(*st);
        if (!sl) continue;
        char *hit = memmem(s->buf, s->len, *st, sl);
        if (hit) {
            emit(s, (size_t)(hit - s->buf));
            s->stopped = true;
            return FINCH_OK;
        }
        /* the longest suffix of buf that is a proper prefix of the stop string */
        for (size_t k = sl - 1; k > 0; k--)
            if (k <= s->len && !memcmp(s->buf + s->len - k, *st, k)) {
                if (s->len - k < keep_from) keep_from = s->len - k;
                break;
            }
    }
    if (final)
        keep_from = s->len;
    else
        keep_from = utf8_complete(s->buf, keep_from);
    emit(s, keep_from);
    return FINCH_OK;
}

finch_status finch_generate(const finch_model *m, const char *prompt, const finch_gen_options *opt,
                            finch_piece_fn on_piece, void *user, finch_err *err) {
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: the model has no tokenizer", m->path);
    if (opt->max_tokens < 0)
        return finch_err_set(err, FINCH_E_USAGE, "max tokens %d: must be >= 0", opt->max_tokens);
    if (!(opt->temperature >= 0) || opt->top_k < 0 || !(opt->top_p > 0 && opt->top_p <= 1))
        return finch_err_set(err, FINCH_E_USAGE,
                             "sampling settings: temperature %g must be >= 0, top-k %d >= 0, "
                             "top-p %g in (0, 1]",
                             opt->temperature, opt->top_k, opt->top_p);
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    finch_status st =
        finch_tokenize(m->tok, prompt, strlen(prompt),
                       FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, &ids, &n_ids, err);
    if (st) return st;
    finch_session *s = NULL;
    float *logits = NULL, *probs = NULL;
    int32_t *idx = NULL;
    stream out = {.stop = opt->stop, .fn = on_piece, .user = user};
    const int V = m->cfg.n_vocab;
    if (n_ids == 0) {
        st = finch_err_set(err, FINCH_E_USAGE, "the prompt is empty: give some text to continue");
        goto done;
    }
    int64_t n_ctx = opt->n_ctx > 0 ? opt->n_ctx : n_ids + opt->max_tokens;
    if (n_ids + opt->max_tokens > n_ctx || n_ctx > m->cfg.n_ctx_train) {
        st = finch_err_set(err, FINCH_E_RANGE,
                           "prompt of %lld tokens + %d new tokens exceeds the context (%lld; the "
                           "model was trained for %d)",
                           (long long)n_ids, opt->max_tokens, (long long)n_ctx, m->cfg.n_ctx_train);
        goto done;
    }
    if ((st = finch_session_new(m, (int)n_ctx, opt->numerics, &s, err))) goto done;
    logits = finch_alloc((size_t)V * sizeof(float), "logits", err);
    probs = finch_alloc((size_t)V * sizeof(float), "sampler", err);
    idx = finch_alloc((size_t)V * sizeof(int32_t), "sampler", err);
    if (!logits || !probs || !idx) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    if ((st = finch_session_decode(s, ids, (int)n_ids, NULL, logits, err))) goto done;
    finch_rng rng;
    finch_rng_seed(&rng, opt->seed);
    char piece[256];
    for (int i = 0; i < opt->max_tokens && !out.stopped; i++) {
        int32_t tok =
            finch_sample(logits, V, opt->temperature, opt->top_k, opt->top_p, &rng, probs, idx);
        if (finch_tokenizer_is_eog(m->tok, tok)) break;
        int64_t n = finch_tokenizer_piece(m->tok, tok, false, piece, sizeof piece);
        if (n > (int64_t)sizeof piece) n = sizeof piece; /* no real token is this long */
        if (n > 0 && (st = stream_push(&out, piece, (size_t)n, false, err))) goto done;
        if (out.stopped || i + 1 == opt->max_tokens) break;
        if ((st = finch_session_decode(s, &tok, 1, NULL, logits, err))) goto done;
    }
    if (!out.stopped) st = stream_push(&out, "", 0, true, err);
done:
    free(out.buf);
    free(idx);
    free(probs);
    free(logits);
    finch_session_free(s);
    free(ids);
    return st;
}
