/*
 * exact.c: SQuAD-style exact match and token F1: lowercase (ASCII letters), drop ASCII
 * punctuation, drop the words a/an/the, split on whitespace; F1 over clipped token
 * counts; the best over references. Two empty answers match (SQuAD v2's rule).
 *
 * Not here: Unicode case folding (non-ASCII letters keep their case); for the article
 * rule every non-ASCII character but Unicode whitespace counts as a word character
 * (Python's \w differs on non-ASCII punctuation and symbols, e.g. "—a—").
 * Sources: the SQuAD v1.1/v2.0 evaluation scripts (normalize_answer, compute_f1).
 */
#include "eval/eval.h"

#include <stdlib.h>

static bool is_punct(unsigned char c) {
    return (c >= 0x21 && c <= 0x2f) || (c >= 0x3a && c <= 0x40) || (c >= 0x5b && c <= 0x60) ||
           (c >= 0x7b && c <= 0x7e);
}
static bool is_word(unsigned char c) {
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

/* Whether the character starting at a[i] is a word character (Python's \w, taking every
 * non-ASCII character but Unicode whitespace as one). */
static bool word_at(const char *a, size_t i, size_t m) {
    return is_word((unsigned char)a[i]) && !finch_utf8_space(a + i, a + m);
}

/* The same for the character that ends just before a[i] (i > 0). */
static bool word_before(const char *a, size_t i, size_t m) {
    size_t j = i - 1;
    while (j > 0 && ((unsigned char)a[j] & 0xc0) == 0x80) j--;
    return word_at(a, j, m);
}

/* The normalised text of s, malloc'd (NULL with err on failure). */
static char *normalize(const char *s, finch_err *err) {
    size_t n = strlen(s);
    char *a = finch_alloc(n + 1, "exact match", err), *b = finch_alloc(n + 1, "exact match", err);
    if (!a || !b) {
        free(a), free(b);
        return NULL;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_punct(c)) continue;
        a[m++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    a[m] = 0;
    static const char *const art[] = {"a", "an", "the"};
    size_t k = 0;
    for (size_t i = 0; i < m;) {
        bool done = false;
        if (i == 0 || !word_before(a, i, m))
            for (int w = 0; w < 3 && !done; w++) {
                size_t l = strlen(art[w]);
                if (i + l <= m && !memcmp(a + i, art[w], l) &&
                    (i + l == m || !word_at(a, i + l, m))) {
                    b[k++] = ' ';
                    i += l;
                    done = true;
                }
            }
        if (!done) b[k++] = a[i++];
    }
    b[k] = 0;
    free(a);
    return b;
}

finch_status finch_exact_match(const char *pred, const char *const *refs, int n_refs, double *em,
                               double *f1, finch_err *err) {
    FINCH_ASSERT(pred && refs && n_refs >= 1);
    finch_toks t = {0};
    char **norm = finch_calloc((size_t)n_refs + 1, sizeof *norm, "exact match", err);
    int32_t *cnt = NULL;
    finch_status st = FINCH_OK;
    if (!norm) return err->code;
    for (int k = 0; k <= n_refs; k++) {
        if (!(norm[k] = normalize(k ? refs[k - 1] : pred, err))) {
            st = err->code;
            goto done;
        }
        if ((st = finch_toks_push_words(&t, norm[k], strlen(norm[k]), err))) goto done;
    }
    if ((st = finch_toks_intern(&t, err))) goto done;
    if (!(cnt = finch_calloc((size_t)t.n_ids + 1, sizeof *cnt, "exact match", err))) {
        st = err->code;
        goto done;
    }
    double best_em = 0, best_f1 = 0;
    size_t np = finch_toks_len(&t, 0);
    for (int k = 1; k <= n_refs; k++) {
        size_t nr = finch_toks_len(&t, (size_t)k);
        bool same = np == nr;
        for (size_t i = 0; same && i < np; i++) same = t.ids[t.off[0] + i] == t.ids[t.off[k] + i];
        double e = same ? 1 : 0, f;
        if (!np || !nr) {
            f = same ? 1 : 0;
        } else {
            int64_t common = 0;
            for (size_t i = t.off[k]; i < t.off[k + 1]; i++) cnt[t.ids[i]]++;
            for (size_t i = t.off[0]; i < t.off[1]; i++)
                if (cnt[t.ids[i]] > 0) cnt[t.ids[i]]--, common++;
            for (size_t i = t.off[k]; i < t.off[k + 1]; i++) cnt[t.ids[i]] = 0;
            double p = (double)common / (double)np, r = (double)common / (double)nr;
            f = common ? 2 * p * r / (p + r) : 0;
        }
        if (e > best_em) best_em = e;
        if (f > best_f1) best_f1 = f;
    }
    *em = best_em;
    *f1 = best_f1;
done:
    for (int k = 0; k <= n_refs; k++) free(norm[k]);
    free(norm);
    free(cnt);
    finch_toks_free(&t);
    return st;
}
