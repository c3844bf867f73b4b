/*
 * fuzz_tokenizer.c: libFuzzer target for the tokenizer. The tokenizer is built once, from
 * the real SmolLM2 vocabulary when it is there ($FINCH_MODEL, else $FINCH_CACHE or
 * ~/.cache/finch), otherwise from a small built-in byte-level vocabulary. Each input is
 *
 *   - tokenized without special parsing, with it, and with add_special: the call must
 *     succeed and every id must be inside the vocabulary;
 *   - when it is valid UTF-8 and every byte of it has a token (a few bytes have none in
 *     SmolLM2's vocabulary, and llama.cpp drops them too), decoded again with the same
 *     special setting: the bytes must come back unchanged;
 *   - read as a chat template: detected, and rendered when its family is known, which runs
 *     the search for a default system message over arbitrary text.
 *
 * Any failed check aborts, which libFuzzer reports as a crash. Built as fuzz_tokenizer
 * with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as fuzz_tokenizer_replay, which
 * runs the committed corpus (tests/fuzz/corpus/tokenizer/) as a test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/tokenizer.h" /* finch_tokenizer_from_gguf, finch_chat_* */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static finch_tokenizer *tok;
static bool covered[256]; /* the byte has a token that decodes to it alone */

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_tokenizer: %s: %s\n", what, msg);
    abort();
}

/* A byte-level vocabulary with every byte character, a few merges, control tokens and a
 * user-defined token, written with the GGUF writer to a temporary file. */
static finch_tokenizer *builtin_vocabulary(void) {
    static const char *const extra[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>",
                                        "Ġt", "he", "Ġthe", "in", "Ġa", "er", "12"};
    static const int32_t extra_types[] = {3, 3, 3, 4, 1, 1, 1, 1, 1, 1, 1};
    static const char *const merges[] = {"Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "1 2"};
    enum { N_EXTRA = sizeof extra / sizeof extra[0], N = N_EXTRA + 256 };
    static char chars[256][4];
    const char *tokens[N];
    int32_t types[N];
    for (int i = 0; i < N_EXTRA; i++) {
        tokens[i] = extra[i];
        types[i] = extra_types[i];
    }
    for (int b = 0; b < 256; b++) {
        /* GPT-2's table: printable bytes stand for themselves, the others for U+0100.. */
        static int next = 256;
        int c = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? b : next++;
        if (c < 0x80) {
            chars[b][0] = (char)c;
        } else {
            chars[b][0] = (char)(0xc0 | c >> 6);
            chars[b][1] = (char)(0x80 | (c & 0x3f));
        }
        tokens[N_EXTRA + b] = chars[b];
        types[N_EXTRA + b] = 1;
    }
    finch_err err;
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    if (!w) die("writer", err.msg);
    if (finch_gguf_set_str(w, "tokenizer.ggml.model", "gpt2", &err) ||
        finch_gguf_set_str(w, "tokenizer.ggml.pre", "smollm", &err) ||
        finch_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tokens, N, &err) ||
        finch_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types, N, &err) ||
        finch_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges,
                               sizeof merges / sizeof merges[0], &err) ||
        finch_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1, &err) ||
        finch_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2, &err) ||
        finch_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true, &err))
        die("writer", err.msg);
    char path[] = "/tmp/fuzz_tokenizer_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) die("mkstemp", path);
    close(fd);
    if (finch_gguf_writer_save(w, path, &err)) die("save", err.msg);
    finch_gguf_writer_free(w);
    finch_gguf *g;
    finch_tokenizer *t;
    if (finch_gguf_open(path, &g, &err)) die("open", err.msg);
    if (finch_tokenizer_from_gguf(g, &t, &err)) die("built-in vocabulary", err.msg);
    finch_gguf_close(g);
    unlink(path);
    return t;
}

static void init(void) {
    char path[4096];
    const char *env = getenv("FINCH_MODEL"), *cache = getenv("FINCH_CACHE");
    const char *home = getenv("HOME");
    if (env) snprintf(path, sizeof path, "%s", env);
    else if (cache) snprintf(path, sizeof path, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else snprintf(path, sizeof path, "%s/.cache/finch/SmolLM2-135M-Instruct.Q4_1.gguf",
                  home ? home : "");
    finch_err err;
    finch_gguf *g;
    if (access(path, R_OK) == 0) {
        if (finch_gguf_open(path, &g, &err)) die("open", err.msg);
        if (finch_tokenizer_from_gguf(g, &tok, &err) || !tok) die("model vocabulary", err.msg);
        finch_gguf_close(g);
    } else {
        tok = builtin_vocabulary();
    }
    char piece[8];
    for (int32_t id = 0; id < finch_tokenizer_n_vocab(tok); id++)
        if (finch_tokenizer_piece(tok, id, false, piece, sizeof piece) == 1)
            covered[(uint8_t)piece[0]] = true;
}

/* Strict UTF-8 (RFC 3629). */
static bool valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t k;
        uint8_t lo = 0x80, hi = 0xbf;
        if (b < 0x80) k = 1;
        else if (b >= 0xc2 && b <= 0xdf) k = 2;
        else if (b >= 0xe0 && b <= 0xef) {
            k = 3;
            if (b == 0xe0) lo = 0xa0;
            if (b == 0xed) hi = 0x9f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            k = 4;
            if (b == 0xf0) lo = 0x90;
            if (b == 0xf4) hi = 0x8f;
        } else
            return false;
        if (i + k > n) return false;
        if (k > 1 && (s[i + 1] < lo || s[i + 1] > hi)) return false;
        for (size_t j = 2; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return false;
        i += k;
    }
    return true;
}

static void check_tokenize(const uint8_t *data, size_t size, int flags, bool round_trip) {
    finch_err err;
    int32_t *ids;
    int64_t n;
    finch_status st = finch_tokenize(tok, (const char *)data, size, flags, &ids, &n, &err);
    if (st == FINCH_E_NOMEM) return;
    if (st) die("finch_tokenize", err.msg);
    int32_t V = finch_tokenizer_n_vocab(tok);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) die("finch_tokenize", "id outside the vocabulary");
    if (round_trip) {
        char *text;
        size_t len;
        st = finch_detokenize(tok, ids, n, flags & FINCH_TOK_PARSE_SPECIAL, &text, &len, &err);
        if (st && st != FINCH_E_NOMEM) die("finch_detokenize", err.msg);
        if (!st && (len != size || (size && memcmp(text, data, size) != 0)))
            die("round trip", "decode(encode(x)) != x");
        if (!st) free(text);
    }
    free(ids);
}

static void check_template(const uint8_t *data, size_t size) {
    char *t = malloc(size + 1);
    if (!t) return;
    if (size) memcpy(t, data, size);
    t[size] = 0;
    finch_chat_family_id fam = finch_chat_detect(t, strlen(t));
    if (!finch_chat_family_name(fam)) die("finch_chat_family_name", "NULL");
    static const finch_chat_msg msgs[] = {{"system", " sys "}, {"user", "hi"},
                                          {"assistant", "yo"}, {"user", "bye\n"}};
    for (int skip = 0; skip < 2; skip++) {
        char *out = NULL;
        finch_err err;
        finch_status st = finch_chat_render(fam, t, msgs + skip, 4 - skip, 1, &out, &err);
        if (st == FINCH_OK && !out) die("finch_chat_render", "no text");
        if (st != FINCH_OK && out) die("finch_chat_render", "text on failure");
        free(out);
    }
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) init();
    bool round_trip = valid_utf8(data, size);
    for (size_t i = 0; round_trip && i < size; i++) round_trip = covered[data[i]];
    check_tokenize(data, size, 0, round_trip);
    check_tokenize(data, size, FINCH_TOK_PARSE_SPECIAL, round_trip);
    check_tokenize(data, size, FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, false);
    check_template(data, size);
    return 0;
}
