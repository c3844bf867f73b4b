/*
 * tok_test.h: helpers the tokenizer tests share: reading the committed fixtures
 * (tests/fixtures/tokenizer, made by tests/reference/make_tokenizer_fixtures.py), turning
 * JSON id lists into arrays, and printing byte strings and id lists in failure messages.
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
        if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
    fputs(n > max ? "\"..." : "\"", f);
}

static inline void tt_print_ids(FILE *f, const char *label, const int32_t *ids, int64_t n) {
    fprintf(f, "    %s (%lld):", label, (long long)n);
    for (int64_t i = 0; i < n; i++) fprintf(f, " %d", ids[i]);
    fputc('\n', f);
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

#endif /* FINCH_TOK_TEST_H */
