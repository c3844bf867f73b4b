/*
 * tok_test.h: helpers the tokenizer tests share: reading the committed fixtures
 * (tests/fixtures/tokenizer, made by tests/reference/make_tokenizer_fixtures.py and
 * make_spm_fixtures.py), turning JSON id lists into arrays, printing byte strings and id
 * lists in failure messages, and checking a tokenizer against the lines of a real model's
 * reference file (<model>_ids.jsonl).
 */
#ifndef FINCH_TOK_TEST_H
#define FINCH_TOK_TEST_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "tokenizer/tokenizer.h"

#define TOK_FIXTURES FINCH_FIXTURES "/tokenizer/"

/* A JSON array of integers as a malloc'd int32 array (never NULL). */
static inline int32_t *tt_ids(const json_t *arr, int64_t *n) {
    *n = (int64_t)json_array_size(arr);
    int32_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    assert_non_null(ids);
    for (int64_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

/* Decodes hex digits into a malloc'd buffer. */
static inline char *tt_unhex(const char *hex, size_t *len) {
    size_t n = strlen(hex) / 2;
    char *out = malloc(n + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (char)v;
    }
    out[n] = 0;
    *len = n;
    return out;
}

/* Prints bytes as a C string literal, at most max bytes of them. */
static inline void tt_print_bytes(FILE *f, const char *s, size_t n, size_t max) {
    fputc('"', f);
    for (size_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
    fputs(n > max ? "\"..." : "\"", f);
}

static inline void tt_print_ids(FILE *f, const char *label, const int32_t *ids, int64_t n) {
    fprintf(f, "    %s (%lld):", label, (long long)n);
    for (int64_t i = 0; i < n; i++) fprintf(f, " %d", ids[i]);
    fputc('\n', f);
}

/* Prints a line on which finch differs from the tokenizers library: the tokenizer's name,
 * the line's number and text, both id lists, and finch's decoding when dec is not NULL. */
static inline void tt_print_hf_mismatch(const char *name, size_t i, const char *text, size_t len,
                                        const int32_t *want, int64_t n_want, const int32_t *got,
                                        int64_t n_got, const char *dec, size_t dlen) {
    fprintf(stderr, "%s, text %zu ", name, i);
    tt_print_bytes(stderr, text, len, 80);
    fputc('\n', stderr);
    tt_print_ids(stderr, "tokenizers", want, n_want);
    tt_print_ids(stderr, "finch     ", got, n_got);
    if (dec) {
        fputs("    decoded: ", stderr);
        tt_print_bytes(stderr, dec, dlen, 80);
        fputc('\n', stderr);
    }
}

static inline bool tt_same_ids(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

/* Opens a GGUF and builds its tokenizer, failing the test with the message otherwise. */
static inline finch_tokenizer *tt_load(const char *path) {
    finch_err err;
    finch_gguf *g;
    finch_tokenizer *tok;
    if (finch_gguf_open(path, &g, &err)) fail_msg("%s", err.msg);
    if (finch_tokenizer_from_gguf(g, &tok, &err)) fail_msg("%s", err.msg);
    finch_gguf_close(g);
    assert_non_null(tok);
    return tok;
}

/* ---- reference lines: <model>_ids.jsonl --------------------------------------------- */

/* One line of a reference file: a text and llama.cpp's ids for it. */
typedef struct {
    char *text; /* the bytes to tokenize */
    size_t len;
    char *decoded; /* what decoding the ids must give (text itself when it round-trips) */
    size_t dlen;
    int flags;    /* FINCH_TOK_PARSE_SPECIAL, FINCH_TOK_ADD_SPECIAL or 0 */
    int32_t *ids; /* llama.cpp's ids */
    int64_t n_ids;
    int lineno; /* line of the fixture file */
} tt_ref_line;

/* Reads a reference file: a {"meta": ...} line (returned in *meta when meta is not NULL,
 * else dropped), then objects with "text" (or "hex"), "special", optional "add", "ids" and,
 * when the ids do not decode back to the text, "decoded_hex". *n_lossy counts those. Returns
 * 0, or -1 after printing why. */
static inline int tt_ref_load(const char *path, tt_ref_line **out, size_t *n_out, size_t *n_lossy,
                              json_t **meta) {
    FILE *f = fopen(path, "r");
    if (!f) return fprintf(stderr, "cannot open %s\n", path), -1;
    tt_ref_line *lines = NULL;
    size_t n = 0, cap = 0, lossy = 0, bufcap = 0;
    char *buf = NULL;
    ssize_t got;
    int lineno = 0;
    while ((got = getline(&buf, &bufcap, f)) > 0) {
        lineno++;
        json_error_t je;
        json_t *o = json_loadb(buf, (size_t)got, JSON_ALLOW_NUL, &je);
        if (!o) return fprintf(stderr, "%s:%d: %s\n", path, lineno, je.text), -1;
        if (json_object_get(o, "meta")) {
            if (meta) *meta = json_incref(json_object_get(o, "meta"));
            json_decref(o);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            lines = realloc(lines, cap * sizeof *lines);
            assert_non_null(lines);
        }
        tt_ref_line *l = &lines[n++];
        memset(l, 0, sizeof *l);
        l->lineno = lineno;
        l->flags = (json_is_true(json_object_get(o, "special")) ? FINCH_TOK_PARSE_SPECIAL : 0) |
                   (json_is_true(json_object_get(o, "add")) ? FINCH_TOK_ADD_SPECIAL : 0);
        json_t *text = json_object_get(o, "text"), *dec = json_object_get(o, "decoded_hex");
        if (text) {
            l->len = json_string_length(text);
            l->text = malloc(l->len + 1);
            memcpy(l->text, json_string_value(text), l->len + 1);
        } else {
            l->text = tt_unhex(json_string_value(json_object_get(o, "hex")), &l->len);
        }
        if (dec) {
            l->decoded = tt_unhex(json_string_value(dec), &l->dlen);
            lossy++;
        } else {
            l->decoded = l->text;
            l->dlen = l->len;
        }
        l->ids = tt_ids(json_object_get(o, "ids"), &l->n_ids);
        json_decref(o);
    }
    free(buf);
    fclose(f);
    *out = lines;
    *n_out = n;
    *n_lossy = lossy;
    return n > 0 ? 0 : -1;
}

static inline void tt_ref_free(tt_ref_line *lines, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (lines[i].decoded != lines[i].text) free(lines[i].decoded);
        free(lines[i].text);
        free(lines[i].ids);
    }
    free(lines);
}

/* Tokenizes every line with its flags and decodes the ids again (special tokens rendered
 * when they were parsed), counting (and, when verbose, printing the first ten of) the lines
 * whose ids differ from llama.cpp's or that do not decode to the line's decoded bytes.
 * Returns the number of bad lines; *round_trips (when not NULL) gets the number of lines
 * that decode back to their own text. Thread-safe. */
static inline int tt_ref_check(const finch_tokenizer *tok, const tt_ref_line *lines, size_t n,
                               bool verbose, size_t *round_trips) {
    int bad = 0;
    size_t rt = 0;
    for (size_t i = 0; i < n; i++) {
        const tt_ref_line *l = &lines[i];
        finch_err err;
        int32_t *ids;
        int64_t n_ids;
        if (finch_tokenize(tok, l->text, l->len, l->flags, &ids, &n_ids, &err)) {
            if (verbose) fprintf(stderr, "line %d: %s\n", l->lineno, err.msg);
            bad++;
            continue;
        }
        char *dec = NULL;
        size_t dlen = 0;
        bool same = tt_same_ids(ids, n_ids, l->ids, l->n_ids);
        int dflags = l->flags & FINCH_TOK_PARSE_SPECIAL;
        bool round = !finch_detokenize(tok, ids, n_ids, dflags, &dec, &dlen, &err) &&
                     dlen == l->dlen && memcmp(dec, l->decoded, dlen) == 0;
        if (round && dlen == l->len && memcmp(dec, l->text, dlen) == 0) rt++;
        if (!same || !round) {
            if (verbose && bad < 10) {
                fprintf(stderr, "line %d (flags %d): ", l->lineno, l->flags);
                tt_print_bytes(stderr, l->text, l->len, 200);
                fputc('\n', stderr);
                if (!same) {
                    tt_print_ids(stderr, "llama.cpp", l->ids, l->n_ids);
                    tt_print_ids(stderr, "finch    ", ids, n_ids);
                }
                if (!round) {
                    fprintf(stderr, "    decodes to ");
                    tt_print_bytes(stderr, dec ? dec : "", dlen, 200);
                    fprintf(stderr, ", llama.cpp to ");
                    tt_print_bytes(stderr, l->decoded, l->dlen, 200);
                    fputc('\n', stderr);
                }
            }
            bad++;
        }
        free(dec);
        free(ids);
    }
    if (round_trips) *round_trips = rt;
    return bad;
}

#endif /* FINCH_TOK_TEST_H */
