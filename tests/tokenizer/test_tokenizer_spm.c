/*
 * test_tokenizer_spm.c: the SentencePiece tokenizer (tokenizer.ggml.model "llama") on tiny
 * vocabularies, and bad SentencePiece vocabularies.
 *
 * 1. tests/fixtures/tokenizer/tiny_spm_<setting>.gguf (made by
 *    tests/reference/make_spm_fixtures.py) are one small vocabulary under three settings:
 *    "prefix" (add_space_prefix and add_bos_token true), "noprefix" (both false,
 *    add_eos_token true) and "defaults" (no add_* keys and no special ids, so llama.cpp's
 *    defaults). Its scores show the merge order (the best score first wherever it is, ties
 *    to the leftmost pair, re-queued pairs after a merge), the byte fallback (to <0xXX>, and
 *    to the one-byte text for the byte 0xC3, which has no <0xC3>), a control token that
 *    plain text merges into (<s>), control tokens with overlapping texts, user-defined,
 *    unknown, unused and undefined tokens. tiny_spm_ids.json holds llama.cpp's ids for each
 *    string without and with special parsing and with add_special, what they decode to, and
 *    the end-of-generation set; all must match.
 * 2. Bad vocabularies written with the GGUF writer: each must be refused with the status and
 *    a message naming the file, the key and the token or entry.
 * 3. Decoding and encoding edges: the leading space, empty text, NUL bytes, long runs.
 */
#include "tok_test.h"

#include <math.h>
#include <unistd.h>

/* ---- tiny vocabularies against llama.cpp -------------------------------------------- */

static void test_tiny_vocabularies(void **state) {
    (void)state;
    json_error_t je;
    json_t *fx = json_load_file(TOK_FIXTURES "tiny_spm_ids.json", 0, &je);
    if (!fx) fail_msg("tiny_spm_ids.json:%d: %s", je.line, je.text);
    const char *name;
    json_t *setting;
    int checked = 0, bad = 0;
    json_object_foreach(json_object_get(fx, "settings"), name, setting) {
        char path[1024];
        snprintf(path, sizeof path, TOK_FIXTURES "tiny_spm_%s.gguf", name);
        finch_tokenizer *tok = tt_load(path);
        assert_string_equal(finch_tokenizer_model_name(tok), "llama");
        assert_int_equal(finch_tokenizer_n_merges(tok), 0);

        int64_t n_eog;
        int32_t *eog = tt_ids(json_object_get(setting, "eog"), &n_eog);
        for (int32_t id = 0, k = 0; id < finch_tokenizer_n_vocab(tok); id++) {
            bool want = k < n_eog && eog[k] == id;
            k += want;
            if (finch_tokenizer_is_eog(tok, id) != want)
                fail_msg("%s: is_eog(%d) is %d, llama.cpp says %d", name, id,
                         finch_tokenizer_is_eog(tok, id), want);
        }
        free(eog);

        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(setting, "cases"), i, c) {
            json_t *jt = json_object_get(c, "text");
            size_t len;
            char *text = jt ? strdup(json_string_value(jt))
                            : tt_unhex(json_string_value(json_object_get(c, "hex")), &len);
            if (jt) len = json_string_length(jt);
            static const struct {
                const char *ids, *dec;
                int flags;
            } modes[] = {{"ids", "dec", 0},
                         {"ids_special", "dec_special", FINCH_TOK_PARSE_SPECIAL},
                         {"ids_add_special", "dec_add_special", FINCH_TOK_ADD_SPECIAL}};
            for (size_t m = 0; m < 3; m++) {
                int64_t nw, n;
                int32_t *want = tt_ids(json_object_get(c, modes[m].ids), &nw), *got;
                size_t want_len, dlen;
                char *want_dec =
                    tt_unhex(json_string_value(json_object_get(c, modes[m].dec)), &want_len);
                char *dec = NULL;
                finch_err err;
                if (finch_tokenize(tok, text, len, modes[m].flags, &got, &n, &err))
                    fail_msg("%s: %s", name, err.msg);
                bool same = tt_same_ids(got, n, want, nw);
                int dflags = modes[m].flags & FINCH_TOK_PARSE_SPECIAL;
                if (finch_detokenize(tok, want, nw, dflags, &dec, &dlen, &err))
                    fail_msg("%s: %s", name, err.msg);
                bool same_dec = dlen == want_len && memcmp(dec, want_dec, dlen) == 0;
                if (!same || !same_dec) {
                    fprintf(stderr, "%s, %s: ", name, modes[m].ids);
                    tt_print_bytes(stderr, text, len, 100);
                    fputc('\n', stderr);
                    tt_print_ids(stderr, "llama.cpp", want, nw);
                    tt_print_ids(stderr, "finch    ", got, n);
                    fprintf(stderr, "    llama.cpp decodes to ");
                    tt_print_bytes(stderr, want_dec, want_len, 100);
                    fprintf(stderr, ", finch to ");
                    tt_print_bytes(stderr, dec, dlen, 100);
                    fputc('\n', stderr);
                    bad++;
                }
                checked++;
                free(want);
                free(got);
                free(want_dec);
                free(dec);
            }
            free(text);
        }
        finch_tokenizer_free(tok);
    }
    json_decref(fx);
    printf("%d tokenizations and decodings of tiny SentencePiece vocabularies checked, %d "
           "differ\n",
           checked, bad);
    assert_true(checked >= 3 * 30 * 3);
    assert_int_equal(bad, 0);
}

/* What the tiny vocabulary's settings and pieces are. */
static void test_tiny_metadata(void **state) {
    (void)state;
    finch_tokenizer *tok = tt_load(TOK_FIXTURES "tiny_spm_defaults.gguf");
    /* llama.cpp's SentencePiece defaults: bos 1, eos 2, BOS added, a space prefix */
    assert_int_equal(finch_tokenizer_bos(tok), 1);
    assert_int_equal(finch_tokenizer_eos(tok), 2);
    assert_string_equal(finch_tokenizer_pre_name(tok), "default");
    finch_err err;
    int32_t *ids;
    int64_t n;
    assert_int_equal(finch_tokenize(tok, "", 0, FINCH_TOK_ADD_SPECIAL, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    free(ids);
    assert_int_equal(finch_tokenize(tok, "", 0, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 0);
    free(ids);

    char buf[16];
    int32_t id_hello = -1, id_byte41 = -1, id_c3 = -1, id_unused = -1, id_undef = -1;
    for (int32_t id = 0; id < finch_tokenizer_n_vocab(tok); id++) {
        const char *t = finch_tokenizer_token_text(tok, id);
        if (strcmp(t, "\xe2\x96\x81hello") == 0) id_hello = id;
        if (strcmp(t, "<0x41>") == 0) id_byte41 = id;
        if (strcmp(t, "\xc3") == 0) id_c3 = id;
        if (strcmp(t, "<unused0>") == 0) id_unused = id;
        if (strcmp(t, "<undef>") == 0) id_undef = id;
    }
    assert_true(id_hello >= 0 && id_byte41 >= 0 && id_c3 >= 0 && id_unused >= 0 && id_undef >= 0);
    /* U+2581 is a space; a byte token its byte; unused and undefined tokens nothing */
    assert_int_equal(finch_tokenizer_piece(tok, id_hello, false, buf, sizeof buf), 6);
    assert_memory_equal(buf, " hello", 6);
    assert_int_equal(finch_tokenizer_piece(tok, id_byte41, false, buf, sizeof buf), 1);
    assert_int_equal(buf[0], 'A');
    assert_int_equal(finch_tokenizer_piece(tok, id_c3, false, buf, sizeof buf), 1);
    assert_int_equal((uint8_t)buf[0], 0xc3);
    assert_int_equal(finch_tokenizer_piece(tok, id_unused, true, buf, sizeof buf), 0);
    assert_int_equal(finch_tokenizer_piece(tok, id_undef, true, buf, sizeof buf), 0);
    assert_int_equal(finch_tokenizer_piece(tok, 1, true, buf, sizeof buf), 3);
    assert_memory_equal(buf, "<s>", 3);
    assert_int_equal(finch_tokenizer_piece(tok, 1, false, buf, sizeof buf), 0);

    /* the space prefix is dropped from the first token only, and not after a BOS */
    char *text;
    size_t len;
    const int32_t two[] = {id_hello, id_hello};
    assert_int_equal(finch_detokenize(tok, two, 2, 0, &text, &len, &err), FINCH_OK);
    assert_string_equal(text, "hello hello");
    free(text);
    const int32_t bos_first[] = {1, id_hello};
    assert_int_equal(finch_detokenize(tok, bos_first, 2, 0, &text, &len, &err), FINCH_OK);
    assert_string_equal(text, " hello");
    free(text);
    finch_tokenizer_free(tok);

    /* without add_space_prefix nothing is dropped */
    tok = tt_load(TOK_FIXTURES "tiny_spm_noprefix.gguf");
    assert_int_equal(finch_detokenize(tok, two, 2, 0, &text, &len, &err), FINCH_OK);
    assert_string_equal(text, " hello hello");
    free(text);
    finch_tokenizer_free(tok);
}

/* Encoding edges: NUL bytes are text, long runs of one character and of mixed text round
 * trip (every byte has a token, and with add_space_prefix the added space goes again). */
static void test_edges(void **state) {
    (void)state;
    static const char *const files[] = {"tiny_spm_prefix.gguf", "tiny_spm_noprefix.gguf"};
    for (size_t f = 0; f < 2; f++) {
        char path[1024];
        snprintf(path, sizeof path, TOK_FIXTURES "%s", files[f]);
        finch_tokenizer *tok = tt_load(path);
        finch_err err;
        int32_t *ids;
        int64_t n;
        char *dec;
        size_t dlen;
        assert_int_equal(finch_tokenize(tok, "a\0b", 3, 0, &ids, &n, &err), FINCH_OK);
        assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &dlen, &err), FINCH_OK);
        assert_int_equal(dlen, 3);
        assert_memory_equal(dec, "a\0b", 3);
        free(ids);
        free(dec);

        const size_t big = 1 << 17;
        char *run = malloc(big);
        const char fill[] = {'a', ' ', '7', '\n', 'q', '\xff'};
        for (size_t k = 0; k <= sizeof fill; k++) {
            for (size_t i = 0; i < big; i++)
                run[i] = k < sizeof fill ? fill[k] : "hello world, abc aaaa 123\n\t"[i % 27];
            if (finch_tokenize(tok, run, big, 0, &ids, &n, &err)) fail_msg("%s", err.msg);
            assert_true(n > 0);
            assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &dlen, &err), FINCH_OK);
            assert_int_equal(dlen, big);
            assert_memory_equal(dec, run, big);
            free(ids);
            free(dec);
        }
        free(run);
        finch_tokenizer_free(tok);
    }
}

/* ---- bad vocabularies --------------------------------------------------------------- */

/* What to break in the otherwise valid vocabulary write_vocab writes: <unk>, <s>, </s>, the
 * 256 byte tokens <0x00>..<0xFF> (ids 3..258), then "▁", "a", "▁a" (ids 259..261). */
typedef enum {
    BREAK_NOTHING,
    NO_SCORES,
    SCORES_SHORT,
    SCORES_NOT_F32,
    SCORE_NAN,
    TYPE_TOO_BIG,
    TYPE_NEGATIVE,
    BYTE_MISSPELLED,
    NO_BYTE_TOKENS,
    BYTE_0X80_MISSING,
    EMPTY_TOKEN,
    HUGE_TOKEN,
    BOS_OUT_OF_RANGE,
    ADD_BOS_WITHOUT_BOS,
    NO_TOKEN_TYPES,
} breakage;

enum { N_BASE = 3 + 256 + 3 };

static finch_status write_vocab(const char *path, breakage b, finch_err *err) {
    static char bytes[256][8];
    const char *tokens[N_BASE];
    int32_t types[N_BASE];
    float scores[N_BASE];
    static const char *const head[] = {"<unk>", "<s>", "</s>"};
    static const char *const tail[] = {"\xe2\x96\x81", "a",
                                       "\xe2\x96\x81"
                                       "a"};
    for (int i = 0; i < 3; i++) {
        tokens[i] = head[i];
        types[i] = i == 0 ? 2 : 3;
        scores[i] = 0;
        tokens[259 + i] = tail[i];
        types[259 + i] = 1;
        scores[259 + i] = -1.0f - (float)i;
    }
    for (int v = 0; v < 256; v++) {
        snprintf(bytes[v], sizeof bytes[v], "<0x%02X>", v);
        tokens[3 + v] = bytes[v];
        types[3 + v] = 6;
        scores[3 + v] = 0;
    }
    int n = b == ADD_BOS_WITHOUT_BOS ? 1 : N_BASE; /* one token: no default bos (1) */
    if (b == TYPE_TOO_BIG) types[5] = 7;
    if (b == TYPE_NEGATIVE) types[5] = -1;
    if (b == BYTE_MISSPELLED) tokens[3 + 0x41] = "<0xG1>";
    if (b == NO_BYTE_TOKENS)
        for (int v = 0; v < 256; v++) tokens[3 + v] = "a", types[3 + v] = 5;
    if (b == BYTE_0X80_MISSING) tokens[3 + 0x80] = "<0x80 >", types[3 + 0x80] = 1;
    if (b == EMPTY_TOKEN) tokens[2] = "";
    static char huge[70001];
    memset(huge, 'x', sizeof huge - 1);
    if (b == HUGE_TOKEN) tokens[260] = huge;
    if (b == SCORE_NAN) scores[260] = NAN;

    finch_gguf_writer *w = finch_gguf_writer_new(err);
    if (!w) return err->code;
    finch_status st = finch_gguf_set_str(w, "general.architecture", "llama", err);
    if (!st) st = finch_gguf_set_str(w, "tokenizer.ggml.model", "llama", err);
    if (!st) st = finch_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tokens, n, err);
    if (!st && b != NO_TOKEN_TYPES)
        st = finch_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types, n, err);
    if (!st && b == SCORES_NOT_F32)
        st = finch_gguf_set_arr_i32(w, "tokenizer.ggml.scores", types, n, err);
    else if (!st && b != NO_SCORES)
        st = finch_gguf_set_arr_f32(w, "tokenizer.ggml.scores", scores, b == SCORES_SHORT ? 3 : n,
                                    err);
    if (!st && b != ADD_BOS_WITHOUT_BOS) {
        st = finch_gguf_set_u32(w, "tokenizer.ggml.bos_token_id",
                                b == BOS_OUT_OF_RANGE ? 4000000000u : 1, err);
        if (!st) st = finch_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2, err);
    }
    if (!st) st = finch_gguf_writer_save(w, path, err);
    finch_gguf_writer_free(w);
    return st;
}

static finch_status load_broken(breakage b, finch_tokenizer **tok, finch_err *err) {
    const char *path = "spm_vocab.gguf";
    if (write_vocab(path, b, err)) fail_msg("writing the test vocabulary: %s", err->msg);
    finch_gguf *g;
    if (finch_gguf_open(path, &g, err)) fail_msg("%s", err->msg);
    *tok = NULL;
    finch_status st = finch_tokenizer_from_gguf(g, tok, err);
    finch_gguf_close(g);
    unlink(path);
    return st;
}

static void test_bad_vocabularies(void **state) {
    (void)state;
    static const struct {
        breakage b;
        const char *fragments[3]; /* each must be in the message */
    } cases[] = {
        {NO_SCORES, {"spm_vocab.gguf", "tokenizer.ggml.scores", "missing"}},
        {SCORES_SHORT, {"tokenizer.ggml.scores", "has 3 entries", "expected 262"}},
        {SCORES_NOT_F32, {"spm_vocab.gguf", "tokenizer.ggml.scores", "float32"}},
        {SCORE_NAN, {"tokenizer.ggml.scores", "entry 260 (token 'a')", "NaN"}},
        {TYPE_TOO_BIG, {"spm_vocab.gguf", "tokenizer.ggml.token_type", "token 5 has type 7"}},
        {TYPE_NEGATIVE, {"tokenizer.ggml.token_type", "token 5 has type -1", "0 to 6"}},
        {BYTE_MISSPELLED, {"tokenizer.ggml.tokens", "token 68 '<0xG1>'", "<0xXX>"}},
        {NO_BYTE_TOKENS, {"tokenizer.ggml.tokens", "no token for byte 0x00", "'<0x00>'"}},
        {BYTE_0X80_MISSING, {"spm_vocab.gguf", "tokenizer.ggml.tokens", "byte 0x80"}},
        {EMPTY_TOKEN, {"spm_vocab.gguf", "tokenizer.ggml.tokens", "token 2 is an empty string"}},
        {HUGE_TOKEN, {"tokenizer.ggml.tokens", "token 260 is 70000 bytes long", "at most 65536"}},
        {BOS_OUT_OF_RANGE, {"spm_vocab.gguf", "tokenizer.ggml.bos_token_id", "4000000000"}},
        {ADD_BOS_WITHOUT_BOS, {"spm_vocab.gguf", "'llama'", "bos_token_id' is missing"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        finch_err err = {0};
        finch_tokenizer *tok;
        finch_status st = load_broken(cases[i].b, &tok, &err);
        if (st != FINCH_E_FORMAT)
            fail_msg("case %zu: status %s, expected %s (%s)", i, finch_status_str(st),
                     finch_status_str(FINCH_E_FORMAT), err.msg);
        assert_null(tok);
        printf("refused: %s\n", err.msg);
        for (int k = 0; k < 3; k++)
            if (!strstr(err.msg, cases[i].fragments[k]))
                fail_msg("case %zu: message '%s' lacks '%s'", i, err.msg, cases[i].fragments[k]);
    }
}

static void test_lenient_vocabularies(void **state) {
    (void)state;
    finch_err err;
    finch_tokenizer *tok;
    int32_t *ids;
    int64_t n;
    char *text;
    size_t len;
    /* the valid base vocabulary: "a a" is ▁a ▁a, "b" falls back to <0x62> */
    assert_int_equal(load_broken(BREAK_NOTHING, &tok, &err), FINCH_OK);
    assert_int_equal(finch_tokenize(tok, "a ab", 4, FINCH_TOK_ADD_SPECIAL, &ids, &n, &err),
                     FINCH_OK);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 261);
    assert_int_equal(ids[2], 261);
    assert_int_equal(ids[3], 3 + 'b');
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &text, &len, &err), FINCH_OK);
    assert_string_equal(text, " a ab");
    free(ids);
    free(text);
    finch_tokenizer_free(tok);
    /* no token types: every token is normal, so <0x62> is still the fallback for 'b' but
     * decodes to its own text, as in llama.cpp */
    assert_int_equal(load_broken(NO_TOKEN_TYPES, &tok, &err), FINCH_OK);
    assert_int_equal(finch_tokenize(tok, "b", 1, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 259);
    assert_int_equal(ids[1], 3 + 'b');
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &text, &len, &err), FINCH_OK);
    assert_string_equal(text, "<0x62>");
    free(ids);
    free(text);
    finch_tokenizer_free(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_vocabularies),
        cmocka_unit_test(test_tiny_metadata),
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_bad_vocabularies),
        cmocka_unit_test(test_lenient_vocabularies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
