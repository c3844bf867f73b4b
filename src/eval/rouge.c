/*
 * rouge.c: ROUGE-1, ROUGE-2, ROUGE-L (sentence-level LCS) and ROUGE-Lsum (summary-level
 * LCS over newline-separated sentences), equal to Google's rouge-score package.
 *
 * Tokenization is rouge-score's: Python's lowercase, every run of characters other than
 * [a-z0-9] becomes a separator, so all non-ASCII text is dropped (except U+0130 and
 * U+212A, whose lowercase forms contain 'i' and 'k'); with stemming, tokens longer than 3
 * bytes go through the Porter stemmer (porter.c). N-gram counts are clipped (a repeated
 * word matches at most as often as the reference has it). With several references each
 * ROUGE type keeps the reference with the highest F1 (the first on ties), as score_multi.
 *
 * Not here: nltk sentence splitting for Lsum (rouge-score's split_summaries option), the
 * bootstrap aggregator (finch_score_set_compute takes plain means).
 * Sources: C.-Y. Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", 2004;
 * rouge-score 0.1.2 (tokenize.py, rouge_scorer.py), read for its exact behaviour: the
 * LCS backtrack order and the hit counting that prevents double counting in Lsum.
 */
#include "eval/eval.h"

#include <stdlib.h>

/* Buffers a text's tokens live in: the normalised text and the stemmed tokens. */
typedef struct {
    char *norm, *stems;
} text_buf;

/* Appends the rouge-score tokens of text[0..len) to the current sequence of t. */
static finch_status tokenize(finch_toks *t, const char *text, size_t len, int stem, text_buf *tb,
                             finch_err *err) {
    size_t cap;
    if (!finch_size_mul(len, 9, &cap) || !finch_size_add(cap, 16, &cap))
        return finch_err_set(err, FINCH_E_RANGE, "text of %zu bytes is too long", len);
    tb->norm = finch_alloc(len + 1, "rouge tokens", err);
    tb->stems = stem ? finch_alloc(cap, "rouge stems", err) : NULL;
    if (!tb->norm || (stem && !tb->stems)) return err->code;
    const unsigned char *p = (const unsigned char *)text;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c >= 'A' && c <= 'Z')
            tb->norm[n++] = (char)(c + 32);
        else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            tb->norm[n++] = (char)c;
        else if (c == 0xc4 && i + 1 < len && p[i + 1] == 0xb0) { /* U+0130 -> "i\u0307" */
            tb->norm[n++] = 'i';
            tb->norm[n++] = ' ';
            i += 1;
        } else if (c == 0xe2 && i + 2 < len && p[i + 1] == 0x84 && p[i + 2] == 0xaa) {
            tb->norm[n++] = 'k'; /* KELVIN SIGN -> k */
            i += 2;
        } else
            tb->norm[n++] = ' ';
    }
    size_t sn = 0;
    for (size_t i = 0; i < n;) {
        if (tb->norm[i] == ' ') {
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && tb->norm[j] != ' ') j++;
        const char *s = tb->norm + i;
        size_t k = j - i;
        if (stem && k > 3) {
            k = finch_porter_stem(tb->stems + sn, s, k);
            s = tb->stems + sn;
            sn += k;
        }
        if (k && finch_toks_push(t, s, k, err)) return err->code;
        i = j;
    }
    return FINCH_OK;
}

static double fmeasure(double p, double r) {
    return p + r > 0 ? 2 * p * r / (p + r) : 0;
}

/* Clipped matches of the grams (ids, -1 for none) of sequence a against sequence b;
 * cnt is a zeroed scratch array of the id count, left zeroed. */
static void clipped(const finch_toks *t, const int32_t *g, size_t a, size_t b, int32_t *cnt,
                    int64_t *match, int64_t *na, int64_t *nb) {
    *match = *na = *nb = 0;
    for (size_t i = t->off[b]; i < t->off[b + 1]; i++)
        if (g[i] >= 0) cnt[g[i]]++, (*nb)++;
    for (size_t i = t->off[a]; i < t->off[a + 1]; i++)
        if (g[i] >= 0) {
            (*na)++;
            if (cnt[g[i]] > 0) cnt[g[i]]--, (*match)++;
        }
    for (size_t i = t->off[b]; i < t->off[b + 1]; i++)
        if (g[i] >= 0) cnt[g[i]] = 0;
}

static finch_prf ngram_score(const finch_toks *t, const int32_t *g, size_t pred, size_t ref,
                             int32_t *cnt) {
    int64_t m, np, nr;
    clipped(t, g, pred, ref, cnt, &m, &np, &nr);
    double p = (double)m / (double)(np > 1 ? np : 1), r = (double)m / (double)(nr > 1 ? nr : 1);
    return (finch_prf){p, r, fmeasure(p, r)};
}

/* The LCS table of sequences r (rows) and c (columns), (|r|+1) x (|c|+1). */
static int32_t *lcs_table(const finch_toks *t, size_t r, size_t c, finch_err *err) {
    size_t R = finch_toks_len(t, r), C = finch_toks_len(t, c), cells;
    if (!finch_size_mul(R + 1, C + 1, &cells) || cells > ((size_t)1 << 28))
        return finch_err_set(err, FINCH_E_RANGE,
                             "ROUGE-L: %zu x %zu tokens is too long for the LCS table", R, C),
               NULL;
    int32_t *tab = finch_calloc(cells, sizeof *tab, "LCS table", err);
    if (!tab) return NULL;
    const int32_t *x = t->ids + t->off[r], *y = t->ids + t->off[c];
    for (size_t i = 1; i <= R; i++)
        for (size_t j = 1; j <= C; j++) {
            int32_t up = tab[(i - 1) * (C + 1) + j], left = tab[i * (C + 1) + j - 1];
            tab[i * (C + 1) + j] =
                x[i - 1] == y[j - 1] ? tab[(i - 1) * (C + 1) + j - 1] + 1 : (up > left ? up : left);
        }
    return tab;
}

static finch_status lcs_score(const finch_toks *t, size_t pred, size_t ref, finch_prf *out,
                              finch_err *err) {
    size_t R = finch_toks_len(t, ref), C = finch_toks_len(t, pred);
    if (!R || !C) {
        *out = (finch_prf){0, 0, 0};
        return FINCH_OK;
    }
    int32_t *tab = lcs_table(t, ref, pred, err);
    if (!tab) return err->code;
    double l = tab[R * (C + 1) + C];
    free(tab);
    double p = l / (double)C, r = l / (double)R;
    *out = (finch_prf){p, r, fmeasure(p, r)};
    return FINCH_OK;
}

/* Summary-level LCS: ref sentences rs[0..nr), candidate sentences cs[0..nc) (sequence
 * indices). cr, cc: zeroed scratch counts (left zeroed); mark: scratch of the longest
 * reference sentence's length. */
static finch_status lsum_score(const finch_toks *t, const size_t *rs, size_t nr, const size_t *cs,
                               size_t nc, int32_t *cr, int32_t *cc, unsigned char *mark,
                               finch_prf *out, finch_err *err) {
    *out = (finch_prf){0, 0, 0};
    size_t m = 0, n = 0;
    for (size_t i = 0; i < nr; i++) m += finch_toks_len(t, rs[i]);
    for (size_t i = 0; i < nc; i++) n += finch_toks_len(t, cs[i]);
    if (!nr || !nc || !m || !n) return FINCH_OK;
    for (size_t i = 0; i < nr; i++)
        for (size_t k = t->off[rs[i]]; k < t->off[rs[i] + 1]; k++) cr[t->ids[k]]++;
    for (size_t i = 0; i < nc; i++)
        for (size_t k = t->off[cs[i]]; k < t->off[cs[i] + 1]; k++) cc[t->ids[k]]++;
    int64_t hits = 0;
    finch_status st = FINCH_OK;
    for (size_t i = 0; i < nr && !st; i++) {
        size_t R = finch_toks_len(t, rs[i]);
        const int32_t *x = t->ids + t->off[rs[i]];
        memset(mark, 0, R ? R : 1);
        for (size_t j = 0; j < nc; j++) {
            size_t C = finch_toks_len(t, cs[j]);
            if (!R || !C) continue;
            int32_t *tab = lcs_table(t, rs[i], cs[j], err);
            if (!tab) {
                st = err->code;
                break;
            }
            const int32_t *y = t->ids + t->off[cs[j]];
            size_t a = R, b = C; /* rouge-score's _backtrack_norec */
            while (a > 0 && b > 0) {
                if (x[a - 1] == y[b - 1]) {
                    mark[a - 1] = 1;
                    a--, b--;
                } else if (tab[a * (C + 1) + b - 1] > tab[(a - 1) * (C + 1) + b]) {
                    b--;
                } else {
                    a--;
                }
            }
            free(tab);
        }
        for (size_t k = 0; k < R && !st; k++)
            if (mark[k] && cc[x[k]] > 0 && cr[x[k]] > 0) hits++, cc[x[k]]--, cr[x[k]]--;
    }
    for (size_t i = 0; i < nr; i++)
        for (size_t k = t->off[rs[i]]; k < t->off[rs[i] + 1]; k++) cr[t->ids[k]] = 0;
    for (size_t i = 0; i < nc; i++)
        for (size_t k = t->off[cs[i]]; k < t->off[cs[i] + 1]; k++) cc[t->ids[k]] = 0;
    if (st) return st;
    double p = (double)hits / (double)n, r = (double)hits / (double)m;
    *out = (finch_prf){p, r, fmeasure(p, r)};
    return FINCH_OK;
}

finch_status finch_rouge(const char *pred, const char *const *refs, int n_refs, int stem,
                         finch_prf out[FINCH_ROUGE_COUNT], finch_err *err) {
    FINCH_ASSERT(pred && refs && n_refs >= 1);
    int n_text = n_refs + 1;
    finch_toks t = {0};
    finch_status st = FINCH_OK;
    /* buffers: per text, the whole text and its sentences */
    text_buf *tb = finch_calloc((size_t)n_text * 2, sizeof *tb, "rouge buffers", err);
    size_t *first_sent = finch_calloc((size_t)n_text + 1, sizeof *first_sent, "rouge", err);
    int32_t *bigram = NULL, *cnt = NULL, *cnt2 = NULL;
    unsigned char *mark = NULL;
    if (!tb || !first_sent) {
        st = err->code;
        goto done;
    }
    /* sequences 0..n_text-1: whole texts (pred first); then each text's sentences */
    for (int k = 0; k < n_text; k++) {
        const char *s = k == 0 ? pred : refs[k - 1];
        if ((st = finch_toks_begin(&t, err)) ||
            (st = tokenize(&t, s, strlen(s), stem, &tb[2 * k], err)))
            goto done;
    }
    for (int k = 0; k < n_text; k++) {
        const char *s = k == 0 ? pred : refs[k - 1];
        size_t len = strlen(s);
        first_sent[k] = t.n_seq;
        /* one buffer for all sentences: tokenize them one by one into the same arrays */
        text_buf *b = &tb[2 * k + 1];
        size_t cap;
        if (!finch_size_mul(len, 9, &cap) || !finch_size_add(cap, 16, &cap)) {
            st = finch_err_set(err, FINCH_E_RANGE, "text of %zu bytes is too long", len);
            goto done;
        }
        size_t used_n = 0, used_s = 0;
        b->norm = finch_alloc(len + 1, "rouge sentences", err);
        b->stems = stem ? finch_alloc(cap, "rouge sentences", err) : NULL;
        if (!b->norm || (stem && !b->stems)) {
            st = err->code;
            goto done;
        }
        for (size_t i = 0; i <= len;) {
            size_t j = i;
            while (j < len && s[j] != '\n') j++;
            if (j > i) {
                text_buf sub = {0};
                if ((st = finch_toks_begin(&t, err)) ||
                    (st = tokenize(&t, s + i, j - i, stem, &sub, err))) {
                    free(sub.norm);
                    free(sub.stems);
                    goto done;
                }
                /* move the sentence's token bytes into the text's buffers */
                for (size_t q = t.off[t.n_seq - 1]; q < t.n; q++) {
                    bool in_stems =
                        sub.stems && t.s[q] >= sub.stems && t.s[q] < sub.stems + (j - i) * 9 + 16;
                    char *dst = in_stems ? b->stems + used_s : b->norm + used_n;
                    memcpy(dst, t.s[q], t.len[q]);
                    t.s[q] = dst;
                    if (in_stems)
                        used_s += t.len[q];
                    else
                        used_n += t.len[q];
                }
                free(sub.norm);
                free(sub.stems);
            }
            i = j + 1;
        }
    }
    first_sent[n_text] = t.n_seq;
    if ((st = finch_toks_intern(&t, err))) goto done;
    bigram = finch_calloc(t.n ? t.n : 1, sizeof *bigram, "rouge bigrams", err);
    int32_t n_big = 0;
    if (!bigram) {
        st = err->code;
        goto done;
    }
    if ((st = finch_toks_ngrams(&t, t.ids, 2, bigram, &n_big, err))) goto done;
    size_t nc = (size_t)(t.n_ids > n_big ? t.n_ids : n_big) + 1, longest = 1;
    for (size_t k = 0; k < t.n_seq; k++)
        if (finch_toks_len(&t, k) > longest) longest = finch_toks_len(&t, k);
    cnt = finch_calloc(nc, sizeof *cnt, "rouge counts", err);
    cnt2 = finch_calloc(nc, sizeof *cnt2, "rouge counts", err);
    mark = finch_calloc(longest, 1, "rouge marks", err);
    if (!cnt || !cnt2 || !mark) {
        st = err->code;
        goto done;
    }
    finch_prf best[FINCH_ROUGE_COUNT];
    for (int k = 1; k < n_text; k++) {
        finch_prf s[FINCH_ROUGE_COUNT];
        s[FINCH_ROUGE_1] = ngram_score(&t, t.ids, 0, (size_t)k, cnt);
        s[FINCH_ROUGE_2] = ngram_score(&t, bigram, 0, (size_t)k, cnt);
        if ((st = lcs_score(&t, 0, (size_t)k, &s[FINCH_ROUGE_L], err))) goto done;
        size_t rs0 = first_sent[k], nr = first_sent[k + 1] - rs0;
        size_t cs0 = first_sent[0], ncs = first_sent[1] - cs0;
        size_t *idx = finch_calloc(nr + ncs + 1, sizeof *idx, "rouge sentences", err);
        if (!idx) {
            st = err->code;
            goto done;
        }
        for (size_t i = 0; i < nr; i++) idx[i] = rs0 + i;
        for (size_t i = 0; i < ncs; i++) idx[nr + i] = cs0 + i;
        st = lsum_score(&t, idx, nr, idx + nr, ncs, cnt, cnt2, mark, &s[FINCH_ROUGE_LSUM], err);
        free(idx);
        if (st) goto done;
        for (int r = 0; r < FINCH_ROUGE_COUNT; r++)
            if (k == 1 || s[r].f1 > best[r].f1) best[r] = s[r];
    }
    memcpy(out, best, sizeof best);
done:
    if (tb)
        for (int k = 0; k < 2 * n_text; k++) free(tb[k].norm), free(tb[k].stems);
    free(tb);
    free(first_sent);
    free(bigram);
    free(cnt);
    free(cnt2);
    free(mark);
    finch_toks_free(&t);
    return st;
}
