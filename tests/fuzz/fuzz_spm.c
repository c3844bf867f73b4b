/*
 * fuzz_spm.c: libFuzzer target for the SentencePiece tokenizer (tokenizer.ggml.model
 * "llama"). The tokenizer is built once, from Gemma 3 270M's vocabulary when it is there
 * ($FINCH_CACHE, else ~/.cache/finch), otherwise from a small built-in vocabulary (byte
 * tokens, scored pieces, control and user-defined tokens, a space prefix). Each input is
 *
 *   - tokenized without special parsing, with it, and with add_special: the call must
 *     succeed and every id must be inside the vocabulary;
 *   - decoded again (special tokens rendered when they were parsed): the call must succeed,
 *     and when the input is valid UTF-8 without '<' (every control, user-defined-with-a-
 *     prefix and byte token is spelled with one, and plain text may merge into them) and
 *     without U+2581 (which decodes as a space), the bytes must come back unchanged.
 *
 * Any failed check aborts, which libFuzzer reports as a crash. Built as fuzz_spm with
 * -fsanitize=fuzzer when FINCH_FUZZ is on, and always as fuzz_spm_replay, which runs the
 * committed corpus (tests/fuzz/corpus/spm/) as a test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/tokenizer.h" /* finch_tokenizer_from_gguf */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static finch_tokenizer *tok;

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_spm: %s: %s\n", what, msg);
    abort();
}

/* A SentencePiece vocabulary with the 256 byte tokens, scored pieces, control tokens and a
 * user-defined token, written with the GGUF writer to a temporary file. */
static finch_tokenizer *builtin_vocabulary(void) {
    static const char *const extra[] = {"<unk>",
                                        "<s>",
                                        "</s>",
                                        "<start_of_turn>",
                                        "<end_of_turn>",
                                        "<tool>",
                                        "\xe2\x96\x81",
                                        "\xe2\x96\x81t",
                                        "he",
                                        "\xe2\x96\x81the",
                                        "in",
                                        "er",
                                        "12",
                                        "\xe2\x96\x81\xe2\x96\x81",
                                        "a",
                                        "e",
                                        "h",
                                        "i",
                                        "n",
                                        "r",
                                        "t",
                                        "1",
                                        "2",
                                        "\xc3\xa9",
                                        "\xe6\x97\xa5"};
    static const int32_t extra_types[] = {2, 3, 3, 3, 3, 4, 1, 1, 1, 1, 1, 1, 1,
                                          1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    enum { N_EXTRA = sizeof extra / sizeof extra[0], N = N_EXTRA + 256 };
    static char names[256][8];
    const char *tokens[N];
    int32_t types[N];
    float scores[N];
    for (int i = 0; i < N_EXTRA; i++) {
        tokens[i] = extra[i];
        types[i] = extra_types[i];
        scores[i] = extra_types[i] == 1 ? -(float)i : 0.0f;
    }
    for (int b = 0; b < 256; b++) {
        snprintf(names[b], sizeof names[b], "<0x%02X>", b);
        tokens[N_EXTRA + b] = names[b];
        types[N_EXTRA + b] = 6;
        scores[N_EXTRA + b] = 0.0f;
    }
    finch_err err;
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    if (!w) die("writer", err.msg);
    if (finch_gguf_set_str(w, "tokenizer.ggml.model", "llama", &err) ||
        finch_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tokens, N, &err) ||
        finch_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types, N, &err) ||
        finch_gguf_set_arr_f32(w, "tokenizer.ggml.scores", scores, N, &err) ||
        finch_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", true, &err))
        die("writer", err.msg);
    char path[] = "/tmp/fuzz_spm_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) die("mkstemp", path);
    close(fd);
    if (finch_gguf_writer_save(w, path, &err)) die("save", err.msg);
    finch_gguf_writer_free(w);
    finch_gguf *g;
    finch_tokenizer *t;
    if (finch_gguf_open(path, &g, &err)) die("open", err.msg);
    if (finch_tokenizer_from_gguf(g, &t, &err) || !t) die("built-in vocabulary", err.msg);
    finch_gguf_close(g);
    unlink(path);
    return t;
}

static void init(void) {
    char path[4096];
    const char *cache = getenv("FINCH_CACHE"), *home = getenv("HOME");
    if (cache)
        snprintf(path, sizeof path, "%s/gemma-3-270m-q4_k_m.gguf", cache);
    else
        snprintf(path, sizeof path, "%s/.cache/finch/gemma-3-270m-q4_k_m.gguf", home ? home : "");
    finch_err err;
    finch_gguf *g;
    if (access(path, R_OK) == 0) {
        if (finch_gguf_open(path, &g, &err)) die("open", err.msg);
        if (finch_tokenizer_from_gguf(g, &tok, &err) || !tok) die("model vocabulary", err.msg);
        finch_gguf_close(g);
    } else {
        tok = builtin_vocabulary();
    }
}

/* Strict UTF-8 (RFC 3629). */
static bool valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t k;
        uint8_t lo = 0x80, hi = 0xbf;
        if (b < 0x80) {
            k = 1;
        } else if (b >= 0xc2 && b <= 0xdf) {
            k = 2;
        } else if (b >= 0xe0 && b <= 0xef) {
            k = 3;
            if (b == 0xe0) lo = 0xa0;
            if (b == 0xed) hi = 0x9f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            k = 4;
            if (b == 0xf0) lo = 0x90;
            if (b == 0xf4) hi = 0x8f;
        } else {
            return false;
        }
        if (i + k > n) return false;
        if (k > 1 && (s[i + 1] < lo || s[i + 1] > hi)) return false;
        for (size_t j = 2; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return false;
        i += k;
    }
    return true;
}

/* Whether decoding must give the input back (see the file comment). */
static bool must_round_trip(const uint8_t *data, size_t size) {
    if (size == 0) return true; /* data may be NULL */
    if (!valid_utf8(data, size) || memchr(data, '<', size)) return false;
    for (size_t i = 0; i + 2 < size; i++)
        if (data[i] == 0xe2 && data[i + 1] == 0x96 && data[i + 2] == 0x81) return false;
    return true;
}

static void check(const uint8_t *data, size_t size, int flags, bool round_trip) {
    finch_err err;
    int32_t *ids;
    int64_t n;
    finch_status st = finch_tokenize(tok, (const char *)data, size, flags, &ids, &n, &err);
    if (st == FINCH_E_NOMEM) return;
    if (st) die("finch_tokenize", err.msg);
    int32_t V = finch_tokenizer_n_vocab(tok);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) die("finch_tokenize", "id outside the vocabulary");
    char *text;
    size_t len;
    st = finch_detokenize(tok, ids, n, flags & FINCH_TOK_PARSE_SPECIAL, &text, &len, &err);
    if (st && st != FINCH_E_NOMEM) die("finch_detokenize", err.msg);
    if (!st && round_trip && (len != size || (size && memcmp(text, data, size) != 0)))
        die("round trip", "decode(encode(x)) != x");
    if (!st) free(text);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) init();
    bool round_trip = must_round_trip(data, size);
    check(data, size, 0, round_trip);
    check(data, size, FINCH_TOK_PARSE_SPECIAL, round_trip);
    check(data, size, FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, false);
    return 0;
}
