/*
 * tokens.c: examples to token ids with a loss mask, and batches of them: padded rows, or
 * packed rows whose examples keep their own positions and segment numbers so attention
 * does not cross from one example into the next.
 */
#include "data/data.h"

#include <stdlib.h>

static finch_status tokenize_one(const finch_tokenizer *tok, const finch_text_example *ex,
                                 int32_t max_len, bool train_on_prompt, finch_token_example *out,
                                 finch_err *err) {
    int32_t *p = NULL, *c = NULL;
    int64_t np = 0, nc = 0;
    finch_status st = finch_tokenize(tok, ex->prompt, strlen(ex->prompt),
                                     FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, &p, &np, err);
    if (!st) st = finch_tokenize(tok, ex->completion, strlen(ex->completion), 0, &c, &nc, err);
    if (st) {
        free(p);
        return st;
    }
    int32_t eos = finch_tokenizer_eos(tok);
    int64_t n = np + nc + (eos >= 0);
    out->truncated = n > max_len;
    if (n > max_len) n = max_len;
    out->n = (int32_t)n;
    out->ids = finch_mem_alloc((size_t)(n ? n : 1) * sizeof *out->ids);
    out->mask = finch_mem_alloc((size_t)(n ? n : 1));
    if (!out->ids || !out->mask) {
        free(out->ids);
        free(out->mask);
        free(p);
        free(c);
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory tokenizing line %lld",
                             (long long)ex->line);
    }
    for (int64_t i = 0; i < n; i++) {
        bool in_prompt = i < np;
        out->ids[i] = in_prompt ? p[i] : i - np < nc ? c[i - np] : eos;
        out->mask[i] = (uint8_t)(!in_prompt || train_on_prompt);
    }
    free(p);
    free(c);
    return FINCH_OK;
}

/* Whether example te has a target: some position after the first with mask 1. */
static int64_t count_targets(const finch_token_example *te) {
    int64_t targets = 0;
    for (int32_t k = 1; k < te->n; k++) targets += te->mask[k];
    return targets;
}

finch_status finch_tokenize_dataset(const finch_tokenizer *tok, const finch_dataset *d,
                                    int32_t max_len, bool train_on_prompt, finch_token_set *out,
                                    finch_err *err) {
    if (max_len < 2)
        return finch_err_set(err, FINCH_E_USAGE, "max sequence length %d: must be at least 2",
                             max_len);
    finch_token_set s = {.pairs = d->n > 0 && d->ex[0].rejected};
    const int per = s.pairs ? 2 : 1; /* token examples per text example */
    s.ex = finch_mem_calloc((size_t)d->n * (size_t)per + 1, sizeof *s.ex);
    if (!s.ex) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < d->n; i++) {
        finch_token_example te[2] = {{0}};
        finch_text_example side = d->ex[i];
        FINCH_ASSERT(!side.rejected == !s.pairs);
        finch_status st = tokenize_one(tok, &side, max_len, train_on_prompt, &te[0], err);
        if (!st && s.pairs) {
            side.completion = side.rejected;
            if ((st = tokenize_one(tok, &side, max_len, train_on_prompt, &te[1], err))) {
                free(te[0].ids);
                free(te[0].mask);
            }
        }
        if (st) {
            finch_token_set_release(&s);
            return st;
        }
        int64_t targets[2] = {count_targets(&te[0]), s.pairs ? count_targets(&te[1]) : 1};
        if (targets[0] == 0 || targets[1] == 0) {
            s.n_dropped++;
            for (int k = 0; k < per; k++) {
                free(te[k].ids);
                free(te[k].mask);
            }
            continue;
        }
        if (s.pairs && te[0].n == te[1].n &&
            !memcmp(te[0].ids, te[1].ids, (size_t)te[0].n * sizeof *te[0].ids))
            s.n_identical++;
        for (int k = 0; k < per; k++) {
            s.n_truncated += te[k].truncated;
            s.n_tokens += te[k].n;
            s.n_targets += targets[k];
            s.ex[s.n++] = te[k];
        }
    }
    if (s.n == 0) {
        finch_token_set_release(&s);
        return finch_err_set(err, FINCH_E_RANGE,
                             "no example has a completion token within the first %d tokens: raise "
                             "the maximum sequence length",
                             max_len);
    }
    *out = s;
    return FINCH_OK;
}

void finch_token_set_release(finch_token_set *s) {
    for (int64_t i = 0; i < s->n; i++) {
        free(s->ex[i].ids);
        free(s->ex[i].mask);
    }
    free(s->ex);
    memset(s, 0, sizeof *s);
}

finch_status finch_batch_init(finch_batch *b, int32_t B, int32_t T, finch_err *err) {
    memset(b, 0, sizeof *b);
    if (B < 1 || T < 2)
        return finch_err_set(err, FINCH_E_USAGE, "batch %d x %d: need at least 1 x 2", B, T);
    size_t n;
    if (!finch_size_mul((size_t)B, (size_t)T, &n) || !finch_size_mul(n, sizeof(int32_t), &n))
        return finch_err_set(err, FINCH_E_RANGE, "batch %d x %d is too large", B, T);
    b->B = B;
    b->T = T;
    int32_t **bufs[] = {&b->ids, &b->targets, &b->pos, &b->seg};
    for (size_t i = 0; i < 4; i++)
        if (!(*bufs[i] = finch_alloc(n, "batch", err))) {
            finch_batch_release(b);
            return FINCH_E_NOMEM;
        }
    return FINCH_OK;
}

void finch_batch_release(finch_batch *b) {
    free(b->ids);
    free(b->targets);
    free(b->pos);
    free(b->seg);
    memset(b, 0, sizeof *b);
}

/* Writes example e at row offset `at` of row r as segment seg. */
static void place(finch_batch *b, int32_t r, int32_t at, const finch_token_example *e,
                  int32_t seg) {
    int32_t *ids = b->ids + (size_t)r * b->T, *tg = b->targets + (size_t)r * b->T;
    for (int32_t k = 0; k < e->n; k++) {
        ids[at + k] = e->ids[k];
        b->pos[(size_t)r * b->T + at + k] = k;
        b->seg[(size_t)r * b->T + at + k] = seg;
        /* position k predicts id k+1 of the same example when that id is a target */
        tg[at + k] = (k + 1 < e->n && e->mask[k + 1]) ? e->ids[k + 1] : -1;
        b->n_targets += tg[at + k] >= 0;
    }
    b->n_tokens += e->n;
}

void finch_batch_fill(finch_batch *b, const finch_token_set *s, const int64_t *order, int64_t *next,
                      int64_t *epoch, bool pack, int32_t pad_id) {
    const size_t n = (size_t)b->B * b->T;
    if (pad_id < 0) pad_id = 0; /* a vocabulary without EOS: padding has no target anyway */
    for (size_t i = 0; i < n; i++)
        b->ids[i] = pad_id, b->targets[i] = -1, b->pos[i] = 0, b->seg[i] = 0;
    b->n_targets = b->n_tokens = 0;
    for (int32_t r = 0; r < b->B; r++) {
        int32_t at = 0, seg = 0;
        for (;;) {
            const finch_token_example *e = &s->ex[order[*next]];
            FINCH_ASSERT(e->n <= b->T);
            if (at + e->n > b->T) break;
            place(b, r, at, e, ++seg);
            at += e->n;
            if (++*next == s->n) *next = 0, ++*epoch;
            if (!pack) break;
        }
    }
}

finch_status finch_token_set_append(finch_token_set *dst, finch_token_set *src, finch_err *err) {
    if (src->n == 0) return FINCH_OK;
    FINCH_ASSERT(dst->n == 0 || dst->pairs == src->pairs);
    finch_token_example *ex = finch_mem_realloc(dst->ex, (size_t)(dst->n + src->n) * sizeof *ex);
    if (!ex) return finch_err_set(err, FINCH_E_NOMEM, "out of memory joining the datasets");
    memcpy(ex + dst->n, src->ex, (size_t)src->n * sizeof *ex);
    dst->ex = ex;
    dst->n += src->n;
    dst->pairs = src->pairs;
    dst->n_truncated += src->n_truncated;
    dst->n_dropped += src->n_dropped;
    dst->n_tokens += src->n_tokens;
    dst->n_targets += src->n_targets;
    dst->n_identical += src->n_identical;
    free(src->ex);
    memset(src, 0, sizeof *src);
    return FINCH_OK;
}
