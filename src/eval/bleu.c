/*
 * bleu.c: corpus and sentence BLEU equal to sacrebleu 2.x with its defaults: the "13a"
 * tokenizer (mteval-v13a's), n-grams up to 4, counts clipped by the largest count among
 * the references, the closest reference length (the shorter on ties), brevity penalty;
 * corpus BLEU unsmoothed, sentence BLEU with 'exp' smoothing and effective order.
 *
 * Not here: sacrebleu's other tokenizers (zh, intl, char, ja-mecab...), lowercasing,
 * chrF and TER.
 * Sources: K. Papineni et al., "BLEU: a Method for Automatic Evaluation of Machine
 * Translation", ACL 2002; M. Post, "A Call for Clarity in Reporting BLEU Scores", WMT
 * 2018; sacrebleu 2.6.0 (metrics/bleu.py, tokenizers/tokenizer_13a.py and
 * tokenizer_re.py), read for the exact regexes, their order and compute_bleu's smoothing.
 */
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>

enum { MAX_ORDER = 4 };

/* A growing byte string. */
typedef struct {
    char *p;
    size_t n, cap;
    bool failed;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + n + 1) c *= 2;
        char *q = finch_mem_realloc(b->p, c);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void putc_(sbuf *b, char c) {
    put(b, &c, 1);
}

/* Python's str.replace(from, to) on s[0..n): one left-to-right pass, no rescanning. */
static sbuf replace_all(const char *s, size_t n, const char *from, const char *to) {
    sbuf o = {0};
    size_t fl = strlen(from), tl = strlen(to);
    put(&o, "", 0);
    for (size_t i = 0; i < n;) {
        if (i + fl <= n && !memcmp(s + i, from, fl)) {
            put(&o, to, tl);
            i += fl;
        } else
            putc_(&o, s[i++]);
    }
    return o;
}

/* The first regex's class: { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @ / */
static bool in_class1(unsigned char c) {
    return (c >= 0x7b && c <= 0x7e) || (c >= 0x5b && c <= 0x60) || (c >= 0x20 && c <= 0x26) ||
           (c >= 0x28 && c <= 0x2b) || (c >= 0x3a && c <= 0x40) || c == 0x2f;
}
static bool digit(char c) {
    return c >= '0' && c <= '9';
}
static bool dotcomma(char c) {
    return c == '.' || c == ',';
}

/* Swaps *a's contents for *b's, freeing *a's; b is emptied. */
static void take(sbuf *a, sbuf *b) {
    free(a->p);
    *a = *b;
    *b = (sbuf){0};
}

/* sacrebleu's 13a tokenizer applied to s (after rstrip); the tokens are written
 * space-separated into *out. A non-UTF-8-aware byte scan gives the same result as
 * Python's code-point regexes here, since every pattern character is ASCII. */
static finch_status tok13a(const char *s, sbuf *out, finch_err *err) {
    size_t n = strlen(s);
    while (n > 0) { /* str.rstrip(): Python whitespace at the end */
        size_t k = 0;
        for (size_t back = 1; back <= 3 && back <= n; back++)
            if (finch_utf8_space(s + n - back, s + n) == back) k = back;
        if (!k) break;
        n -= k;
    }
    sbuf a = replace_all(s, n, "<skipped>", ""), b;
    b = replace_all(a.p, a.n, "-\n", "");
    take(&a, &b);
    b = replace_all(a.p, a.n, "\n", " ");
    take(&a, &b);
    if (a.p && memchr(a.p, '&', a.n)) {
        static const char *const ent[4][2] = {
            {"&quot;", "\""}, {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}};
        for (int e = 0; e < 4; e++) {
            b = replace_all(a.p, a.n, ent[e][0], ent[e][1]);
            take(&a, &b);
        }
    }
    /* f' {line} ' then ([{-~[-` -&(-+:-@/]) -> ' \1 ' */
    putc_(&b, ' ');
    for (size_t i = 0; i < a.n; i++) {
        if (in_class1((unsigned char)a.p[i])) {
            putc_(&b, ' ');
            putc_(&b, a.p[i]);
            putc_(&b, ' ');
        } else
            putc_(&b, a.p[i]);
    }
    putc_(&b, ' ');
    take(&a, &b);
    /* ([^0-9])([\.,]) -> '\1 \2 ' */
    for (size_t i = 0; i < a.n;) {
        if (i + 1 < a.n && !digit(a.p[i]) && dotcomma(a.p[i + 1])) {
            char r[4] = {a.p[i], ' ', a.p[i + 1], ' '};
            put(&b, r, 4);
            i += 2;
        } else
            putc_(&b, a.p[i++]);
    }
    take(&a, &b);
    /* ([\.,])([^0-9]) -> ' \1 \2' */
    for (size_t i = 0; i < a.n;) {
        if (i + 1 < a.n && dotcomma(a.p[i]) && !digit(a.p[i + 1])) {
            char r[4] = {' ', a.p[i], ' ', a.p[i + 1]};
            put(&b, r, 4);
            i += 2;
        } else
            putc_(&b, a.p[i++]);
    }
    take(&a, &b);
    /* ([0-9])(-) -> '\1 \2 ' */
    for (size_t i = 0; i < a.n;) {
        if (i + 1 < a.n && digit(a.p[i]) && a.p[i + 1] == '-') {
            char r[4] = {a.p[i], ' ', '-', ' '};
            put(&b, r, 4);
            i += 2;
        } else
            putc_(&b, a.p[i++]);
    }
    take(&a, &b);
    put(&a, "", 0);
    if (a.failed) {
        free(a.p);
        return finch_err_set(err, FINCH_E_NOMEM, "BLEU tokenizer: out of memory");
    }
    *out = a;
    return FINCH_OK;
}

/* Adds one segment's statistics (hyp_len, ref_len, correct, total) to *acc. */
static finch_status segment_stats(const char *pred, const char *const *refs, int n_refs,
                                  finch_bleu *acc, finch_err *err) {
    FINCH_ASSERT(n_refs >= 1);
    finch_toks t = {0};
    sbuf *tok = finch_calloc((size_t)n_refs + 1, sizeof *tok, "BLEU segment", err);
    int32_t *g[MAX_ORDER] = {0};
    int32_t *cmax = NULL, *ctmp = NULL;
    finch_status st = FINCH_OK;
    if (!tok) return err->code;
    for (int k = 0; k <= n_refs; k++)
        if ((st = tok13a(k ? refs[k - 1] : pred, &tok[k], err)) ||
            (st = finch_toks_push_words(&t, tok[k].p, tok[k].n, err)))
            goto done;
    if ((st = finch_toks_intern(&t, err))) goto done;
    int32_t n_ids[MAX_ORDER] = {t.n_ids};
    g[0] = t.ids;
    size_t nc = (size_t)t.n_ids + 1;
    for (int o = 1; o < MAX_ORDER; o++) {
        if (!(g[o] = finch_calloc(t.n ? t.n : 1, sizeof *g[o], "BLEU n-grams", err))) {
            st = err->code;
            goto done;
        }
        if ((st = finch_toks_ngrams(&t, g[o - 1], o + 1, g[o], &n_ids[o], err))) goto done;
        if ((size_t)n_ids[o] + 1 > nc) nc = (size_t)n_ids[o] + 1;
    }
    cmax = finch_calloc(nc, sizeof *cmax, "BLEU counts", err);
    ctmp = finch_calloc(nc, sizeof *ctmp, "BLEU counts", err);
    if (!cmax || !ctmp) {
        st = err->code;
        goto done;
    }
    int64_t hyp_len = (int64_t)finch_toks_len(&t, 0), closest = -1, diff = -1;
    for (int k = 1; k <= n_refs; k++) {
        int64_t rl = (int64_t)finch_toks_len(&t, (size_t)k);
        int64_t d = rl > hyp_len ? rl - hyp_len : hyp_len - rl;
        if (diff < 0 || d < diff)
            diff = d, closest = rl;
        else if (d == diff && rl < closest)
            closest = rl;
    }
    acc->sys_len += hyp_len;
    acc->ref_len += closest;
    for (int o = 0; o < MAX_ORDER; o++) {
        const int32_t *x = g[o];
        for (int k = 1; k <= n_refs; k++) {
            for (size_t i = t.off[k]; i < t.off[k + 1]; i++)
                if (x[i] >= 0) ctmp[x[i]]++;
            for (size_t i = t.off[k]; i < t.off[k + 1]; i++)
                if (x[i] >= 0) {
                    if (ctmp[x[i]] > cmax[x[i]]) cmax[x[i]] = ctmp[x[i]];
                    ctmp[x[i]] = 0;
                }
        }
        for (size_t i = t.off[0]; i < t.off[1]; i++)
            if (x[i] >= 0) {
                acc->total[o]++;
                if (cmax[x[i]] > 0) cmax[x[i]]--, acc->correct[o]++;
            }
        for (size_t i = 0; i < t.n; i++)
            if (x[i] >= 0) cmax[x[i]] = 0;
    }
done:
    for (int k = 0; k <= n_refs; k++) free(tok[k].p);
    free(tok);
    for (int o = 1; o < MAX_ORDER; o++) free(g[o]);
    free(cmax);
    free(ctmp);
    finch_toks_free(&t);
    return st;
}

/* sacrebleu's compute_bleu on accumulated statistics. */
static void compute(finch_bleu *b, bool smooth_exp, bool effective_order) {
    b->bp = 1.0;
    if (b->sys_len < b->ref_len)
        b->bp = b->sys_len > 0 ? exp(1.0 - (double)b->ref_len / (double)b->sys_len) : 0.0;
    for (int n = 0; n < MAX_ORDER; n++) b->precisions[n] = 0;
    b->score = 0;
    bool any = false;
    for (int n = 0; n < MAX_ORDER; n++) any |= b->correct[n] != 0;
    if (!any) return;
    double smooth = 1.0;
    int eff = MAX_ORDER;
    for (int n = 0; n < MAX_ORDER; n++) {
        if (b->total[n] == 0) break;
        if (effective_order) eff = n + 1;
        if (b->correct[n] == 0) {
            if (smooth_exp) {
                smooth *= 2;
                b->precisions[n] = 100.0 / (smooth * (double)b->total[n]);
            }
        } else {
            b->precisions[n] = 100.0 * (double)b->correct[n] / (double)b->total[n];
        }
    }
    double s = 0;
    for (int n = 0; n < eff; n++)
        s += b->precisions[n] == 0.0 ? -9999999999.0 : log(b->precisions[n]);
    b->score = b->bp * exp(s / eff);
}

finch_status finch_bleu_corpus(const char *const *preds, const char *const *const *refs,
                               const int *n_refs, size_t n, finch_bleu *out, finch_err *err) {
    finch_bleu acc = {0};
    for (size_t i = 0; i < n; i++)
        if (segment_stats(preds[i], refs[i], n_refs[i], &acc, err))
            return finch_err_prefix(err, "BLEU: example %zu", i + 1);
    compute(&acc, false, false);
    *out = acc;
    return FINCH_OK;
}

finch_status finch_bleu_sentence(const char *pred, const char *const *refs, int n_refs,
                                 finch_bleu *out, finch_err *err) {
    finch_bleu acc = {0};
    if (segment_stats(pred, refs, n_refs, &acc, err)) return err->code;
    compute(&acc, true, true);
    *out = acc;
    return FINCH_OK;
}
