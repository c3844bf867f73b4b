/*
 * eval.h: what the files of eval/ share: token sequences interned to ids, n-gram ids,
 * Python's notion of whitespace, and the Porter stemmer. The metrics themselves are
 * public (include/finch.h, "Evaluation metrics").
 */
#ifndef FINCH_EVAL_H
#define FINCH_EVAL_H

#include "core/core.h" /* finch_err_set, finch_alloc, finch_size_* */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Stems the lowercase ASCII word in[0..n) as nltk's PorterStemmer (NLTK_EXTENSIONS
 * mode) does; out has room for n + 8 bytes and may equal in. Returns the stem's length. */
size_t finch_porter_stem(char *out, const char *in, size_t n);

/* Bytes of the whitespace character at s (what Python's str.split() splits on: ASCII
 * \t\n\v\f\r, \x1c-\x1f, space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
 * U+202F, U+205F, U+3000), or 0 when s (before end) does not start with one. */
size_t finch_utf8_space(const char *s, const char *end);

/* Sequences of tokens (byte strings, borrowed), then interned: equal strings get equal
 * ids, and n-grams of any order get ids the same way. */
typedef struct {
    const char **s; /* token bytes (borrowed) */
    size_t *len;    /* token lengths */
    size_t n, cap;  /* tokens */
    size_t *off;    /* sequence k is tokens off[k] .. off[k+1] */
    size_t n_seq, seq_cap;
    int32_t *ids; /* after finch_toks_intern: ids[n], in [0, n_ids) */
    int32_t n_ids;
} finch_toks;

/* Starts a new, empty sequence. */
finch_status finch_toks_begin(finch_toks *t, finch_err *err);
/* Appends a token to the current sequence. */
finch_status finch_toks_push(finch_toks *t, const char *s, size_t len, finch_err *err);
/* Assigns ids to all tokens. */
finch_status finch_toks_intern(finch_toks *t, finch_err *err);
void finch_toks_free(finch_toks *t);

static inline size_t finch_toks_len(const finch_toks *t, size_t k) {
    return t->off[k + 1] - t->off[k];
}

/* Given ids of the (order-1)-grams starting at each token (prev, -1 where none) fills
 * next with ids of order-grams (-1 where the sequence ends too soon); *n_ids the count. */
finch_status finch_toks_ngrams(const finch_toks *t, const int32_t *prev, int order, int32_t *next,
                               int32_t *n_ids, finch_err *err);

#endif /* FINCH_EVAL_H */
