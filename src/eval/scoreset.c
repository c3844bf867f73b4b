/*
 * scoreset.c: sets of (prediction, references) read from text files (one per line) or
 * JSON Lines, and their scores over the whole set (finch score).
 *
 * Not here: the metrics (rouge.c, bleu.c, exact.c). Sources: the JSON Lines convention
 * (one JSON value per line); jansson for the parsing.
 */
#include "eval/eval.h"

#include <jansson.h>
#include <stdlib.h>

struct finch_score_set {
    size_t n, cap;
    char **pred;  /* n predictions */
    char ***refs; /* refs[i][0..n_refs[i]) */
    int *n_refs;
};

void finch_score_set_free(finch_score_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->pred[i]);
        for (int k = 0; k < s->n_refs[i]; k++) free(s->refs[i][k]);
        free(s->refs[i]);
    }
    free(s->pred);
    free(s->refs);
    free(s->n_refs);
    free(s);
}

size_t finch_score_set_size(const finch_score_set *s) {
    return s->n;
}

static char *dup_n(const char *p, size_t n, finch_err *err) {
    char *d = finch_alloc(n + 1, "score set text", err);
    if (d) {
        memcpy(d, p, n);
        d[n] = 0;
    }
    return d;
}

/* Appends an example with room for n_refs references (filled by the caller). */
static finch_status add(finch_score_set *s, int n_refs, finch_err *err) {
    if (s->n == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 64;
        char **p = finch_mem_realloc(s->pred, c * sizeof *p);
        if (p) s->pred = p;
        char ***r = finch_mem_realloc(s->refs, c * sizeof *r);
        if (r) s->refs = r;
        int *k = finch_mem_realloc(s->n_refs, c * sizeof *k);
        if (k) s->n_refs = k;
        if (!p || !r || !k) return finch_err_set(err, FINCH_E_NOMEM, "score set: out of memory");
        s->cap = c;
    }
    s->refs[s->n] = finch_calloc((size_t)n_refs, sizeof(char *), "references", err);
    if (!s->refs[s->n]) return err->code;
    s->pred[s->n] = NULL;
    s->n_refs[s->n] = n_refs;
    s->n++;
    return FINCH_OK;
}

/* The lines of a mapped file: count, and the i-th line (without \n and a trailing \r). */
static size_t count_lines(const finch_mapped_file *f) {
    size_t n = 0;
    for (size_t i = 0; i < f->size; i++)
        if (f->data[i] == '\n') n++;
    if (f->size && f->data[f->size - 1] != '\n') n++;
    return n;
}

static const char *next_line(const finch_mapped_file *f, size_t *pos, size_t *len) {
    const char *p = (const char *)f->data + *pos;
    size_t end = *pos;
    while (end < f->size && f->data[end] != '\n') end++;
    *len = end - *pos;
    if (*len && p[*len - 1] == '\r') (*len)--;
    *pos = end + 1;
    return p;
}

finch_status finch_score_set_load_lines(const char *pred_path, const char *const *ref_paths,
                                        int n_ref_paths, finch_score_set **out, finch_err *err) {
    FINCH_ASSERT(n_ref_paths >= 1);
    int nf = n_ref_paths + 1;
    finch_mapped_file *f = finch_calloc((size_t)nf, sizeof *f, "score files", err);
    size_t *pos = finch_calloc((size_t)nf, sizeof *pos, "score files", err);
    finch_score_set *s = finch_calloc(1, sizeof *s, "score set", err);
    finch_status st = FINCH_OK;
    if (!f || !pos || !s) {
        st = err->code;
        goto fail;
    }
    for (int k = 0; k < nf; k++)
        if ((st = finch_file_map(k ? ref_paths[k - 1] : pred_path, &f[k], err))) goto fail;
    size_t n = count_lines(&f[0]);
    if (!n) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s is empty: expected one prediction per line",
                           pred_path);
        goto fail;
    }
    for (int k = 1; k < nf; k++) {
        size_t m = count_lines(&f[k]);
        if (m != n) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s has %zu lines but %s has %zu: predictions and references "
                               "must pair up line by line",
                               pred_path, n, ref_paths[k - 1], m);
            goto fail;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if ((st = add(s, n_ref_paths, err))) goto fail;
        for (int k = 0; k < nf; k++) {
            size_t len;
            const char *p = next_line(&f[k], &pos[k], &len);
            char *d = dup_n(p, len, err);
            if (!d) {
                st = err->code;
                goto fail;
            }
            if (k == 0)
                s->pred[i] = d;
            else
                s->refs[i][k - 1] = d;
        }
    }
    for (int k = 0; k < nf; k++) finch_file_unmap(&f[k]);
    free(f);
    free(pos);
    *out = s;
    return FINCH_OK;
fail:
    if (f)
        for (int k = 0; k < nf; k++) finch_file_unmap(&f[k]);
    free(f);
    free(pos);
    finch_score_set_free(s);
    return st;
}

finch_status finch_score_set_load_jsonl(const char *path, finch_score_set **out, finch_err *err) {
    finch_mapped_file f = {0};
    finch_score_set *s = NULL;
    json_t *j = NULL;
    finch_status st = finch_file_map(path, &f, err);
    if (st) return st;
    if (!(s = finch_calloc(1, sizeof *s, "score set", err))) {
        st = err->code;
        goto fail;
    }
    size_t pos = 0, line = 0;
    while (pos < f.size) {
        size_t len;
        const char *p = next_line(&f, &pos, &len);
        line++;
        size_t b = 0;
        while (b < len && (p[b] == ' ' || p[b] == '\t')) b++;
        if (b == len) continue;
        json_error_t je;
        if ((st = finch_json_loadb(p, len, JSON_DECODE_ANY, path, &j, &je, err))) goto fail;
        if (!j) {
            st = finch_err_set(err, FINCH_E_FORMAT, "%s:%zu: not valid JSON: %s", path, line,
                               je.text);
            goto fail;
        }
        if (!json_is_object(j)) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s:%zu: not a JSON object (expected {\"prediction\": ..., "
                               "\"reference\": ...})",
                               path, line);
            goto fail;
        }
        json_t *pj = json_object_get(j, "prediction"), *rj = json_object_get(j, "reference");
        const char *miss = !pj ? "prediction" : !rj ? "reference" : NULL;
        if (miss) {
            st = finch_err_set(err, FINCH_E_FORMAT, "%s:%zu: no field \"%s\"", path, line, miss);
            goto fail;
        }
        if (!json_is_string(pj)) {
            st = finch_err_set(err, FINCH_E_FORMAT, "%s:%zu: field \"prediction\" is not a string",
                               path, line);
            goto fail;
        }
        size_t nr = json_is_array(rj) ? json_array_size(rj) : 1;
        if (!json_is_string(rj) && !json_is_array(rj)) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s:%zu: field \"reference\" is neither a string nor a list of "
                               "strings",
                               path, line);
            goto fail;
        }
        if (nr == 0 || nr > 100000) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s:%zu: field \"reference\" has %zu entries, expected 1 to "
                               "100000",
                               path, line, nr);
            goto fail;
        }
        for (size_t k = 0; k < nr; k++)
            if (!json_is_string(json_is_array(rj) ? json_array_get(rj, k) : rj)) {
                st = finch_err_set(err, FINCH_E_FORMAT,
                                   "%s:%zu: field \"reference\": entry %zu is not a string", path,
                                   line, k + 1);
                goto fail;
            }
        if ((st = add(s, (int)nr, err))) goto fail;
        size_t i = s->n - 1;
        if (!(s->pred[i] = dup_n(json_string_value(pj), json_string_length(pj), err))) {
            st = err->code;
            goto fail;
        }
        for (size_t k = 0; k < nr; k++) {
            json_t *r = json_is_array(rj) ? json_array_get(rj, k) : rj;
            if (!(s->refs[i][k] = dup_n(json_string_value(r), json_string_length(r), err))) {
                st = err->code;
                goto fail;
            }
        }
        json_decref(j);
        j = NULL;
    }
    if (!s->n) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s has no examples: expected JSON Lines with "
                           "\"prediction\" and \"reference\"",
                           path);
        goto fail;
    }
    finch_file_unmap(&f);
    *out = s;
    return FINCH_OK;
fail:
    json_decref(j);
    finch_file_unmap(&f);
    finch_score_set_free(s);
    return st;
}

finch_status finch_score_set_compute(const finch_score_set *s, int stem, finch_scores *out,
                                     finch_err *err) {
    finch_scores r = {0};
    for (size_t i = 0; i < s->n; i++) {
        finch_prf p[FINCH_ROUGE_COUNT];
        double em, f1;
        const char *const *refs = (const char *const *)s->refs[i];
        if (finch_rouge(s->pred[i], refs, s->n_refs[i], stem, p, err) ||
            finch_exact_match(s->pred[i], refs, s->n_refs[i], &em, &f1, err))
            return finch_err_prefix(err, "example %zu", i + 1);
        for (int k = 0; k < FINCH_ROUGE_COUNT; k++) {
            r.rouge[k].precision += p[k].precision;
            r.rouge[k].recall += p[k].recall;
            r.rouge[k].f1 += p[k].f1;
        }
        r.exact_match += em;
        r.token_f1 += f1;
    }
    double n = (double)s->n;
    for (int k = 0; k < FINCH_ROUGE_COUNT; k++) {
        r.rouge[k].precision /= n;
        r.rouge[k].recall /= n;
        r.rouge[k].f1 /= n;
    }
    r.exact_match /= n;
    r.token_f1 /= n;
    if (finch_bleu_corpus((const char *const *)s->pred, (const char *const *const *)s->refs,
                          s->n_refs, s->n, &r.bleu, err))
        return err->code;
    *out = r;
    return FINCH_OK;
}
