/*
 * text.c: the text plumbing of the metrics: Python's whitespace set and the str.split()
 * that BLEU and exact match apply after their own normalization, token sequences and
 * their interning to dense ids, and n-gram ids built order by order from pairs (id of the
 * shorter n-gram, next token).
 *
 * Not here: tokenization rules (rouge.c, bleu.c, exact.c each have their own).
 * Sources: Python's str.isspace (the Unicode White_Space property plus \x1c-\x1f).
 */
#include "eval/eval.h"

#include <stdlib.h>

size_t finch_utf8_space(const char *s, const char *end) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = (size_t)(end - s);
    if (!n) return 0;
    if (p[0] < 0x80)
        return (p[0] >= 0x09 && p[0] <= 0x0d) || (p[0] >= 0x1c && p[0] <= 0x20) ? 1 : 0;
    if (n >= 2 && p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0)) return 2;
    if (n < 3) return 0;
    if (p[0] == 0xe1 && p[1] == 0x9a && p[2] == 0x80) return 3; /* U+1680 */
    if (p[0] == 0xe2 && p[1] == 0x80 &&
        (p[2] <= 0x8a || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf) && p[2] >= 0x80)
        return 3;                                               /* U+2000-200A, 2028, 2029, 202F */
    if (p[0] == 0xe2 && p[1] == 0x81 && p[2] == 0x9f) return 3; /* U+205F */
    if (p[0] == 0xe3 && p[1] == 0x80 && p[2] == 0x80) return 3; /* U+3000 */
    return 0;
}

static finch_status grow(void **p, size_t *cap, size_t need, size_t elem, const char *what,
                         finch_err *err) {
    if (need <= *cap) return FINCH_OK;
    size_t c = *cap ? *cap : 16, bytes;
    while (c < need) c *= 2;
    if (!finch_size_mul(c, elem, &bytes))
        return finch_err_set(err, FINCH_E_NOMEM, "%s: %zu entries is too many", what, c);
    void *q = finch_mem_realloc(*p, bytes);
    if (!q) return finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory (%zu bytes)", what, bytes);
    *p = q;
    *cap = c;
    return FINCH_OK;
}

finch_status finch_toks_begin(finch_toks *t, finch_err *err) {
    if (grow((void **)&t->off, &t->seq_cap, t->n_seq + 2, sizeof *t->off, "token sequences", err))
        return err->code;
    if (t->n_seq == 0) t->off[0] = 0;
    t->n_seq++;
    t->off[t->n_seq] = t->n;
    return FINCH_OK;
}

finch_status finch_toks_push(finch_toks *t, const char *s, size_t len, finch_err *err) {
    FINCH_ASSERT(t->n_seq > 0);
    size_t cap = t->cap;
    if (grow((void **)&t->s, &cap, t->n + 1, sizeof *t->s, "tokens", err)) return err->code;
    cap = t->cap;
    if (grow((void **)&t->len, &cap, t->n + 1, sizeof *t->len, "tokens", err)) return err->code;
    t->cap = cap;
    t->s[t->n] = s;
    t->len[t->n] = len;
    t->n++;
    t->off[t->n_seq] = t->n;
    return FINCH_OK;
}

finch_status finch_toks_push_words(finch_toks *t, const char *s, size_t n, finch_err *err) {
    if (finch_toks_begin(t, err)) return err->code;
    const char *end = s + n;
    for (const char *p = s; p < end;) {
        size_t k = finch_utf8_space(p, end);
        if (k) {
            p += k;
            continue;
        }
        const char *q = p;
        while (q < end && !finch_utf8_space(q, end)) q++;
        if (finch_toks_push(t, p, (size_t)(q - p), err)) return err->code;
        p = q;
    }
    return FINCH_OK;
}

void finch_toks_free(finch_toks *t) {
    free(t->s);
    free(t->len);
    free(t->off);
    free(t->ids);
    *t = (finch_toks){0};
}

/* Sorting token indices by their bytes: qsort has no context argument, so the sort
 * works on records that carry the token. */
typedef struct {
    const char *s;
    size_t len, idx;
} tok_rec;

static int cmp_tok(const void *a, const void *b) {
    const tok_rec *x = a, *y = b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = m ? memcmp(x->s, y->s, m) : 0;
    if (c) return c;
    return (x->len > y->len) - (x->len < y->len);
}

finch_status finch_toks_intern(finch_toks *t, finch_err *err) {
    tok_rec *r = finch_calloc(t->n ? t->n : 1, sizeof *r, "token interning", err);
    int32_t *ids = finch_calloc(t->n ? t->n : 1, sizeof *ids, "token ids", err);
    if (!r || !ids) {
        free(r);
        free(ids);
        return err->code;
    }
    for (size_t i = 0; i < t->n; i++) r[i] = (tok_rec){t->s[i], t->len[i], i};
    qsort(r, t->n, sizeof *r, cmp_tok);
    int32_t next = -1;
    for (size_t i = 0; i < t->n; i++) {
        if (i == 0 || cmp_tok(&r[i - 1], &r[i])) next++;
        ids[r[i].idx] = next;
    }
    free(r);
    free(t->ids);
    t->ids = ids;
    t->n_ids = next + 1;
    return FINCH_OK;
}

typedef struct {
    uint64_t key;
    size_t idx;
} key_rec;

static int cmp_key(const void *a, const void *b) {
    const key_rec *x = a, *y = b;
    return (x->key > y->key) - (x->key < y->key);
}

finch_status finch_toks_ngrams(const finch_toks *t, const int32_t *prev, int order, int32_t *next,
                               int32_t *n_ids, finch_err *err) {
    FINCH_ASSERT(order >= 2 && t->ids);
    key_rec *r = finch_calloc(t->n ? t->n : 1, sizeof *r, "n-gram ids", err);
    if (!r) return err->code;
    size_t m = 0;
    for (size_t k = 0; k < t->n_seq; k++)
        for (size_t i = t->off[k]; i < t->off[k + 1]; i++) {
            next[i] = -1;
            if (prev[i] < 0 || i + (size_t)order > t->off[k + 1]) continue;
            uint64_t key = (uint64_t)(uint32_t)prev[i] << 32 | (uint32_t)t->ids[i + order - 1];
            r[m++] = (key_rec){key, i};
        }
    qsort(r, m, sizeof *r, cmp_key);
    int32_t id = -1;
    for (size_t i = 0; i < m; i++) {
        if (i == 0 || r[i - 1].key != r[i].key) id++;
        next[r[i].idx] = id;
    }
    free(r);
    *n_ids = id + 1;
    return FINCH_OK;
}
