/*
 * test_tokenizer_unit.c: the tokenizer on tiny vocabularies, and bad vocabularies.
 *
 * 1. tests/fixtures/tokenizer/tiny_<pre>.gguf are one small byte-level BPE vocabulary
 *    under six pre-tokenizer names (smollm, gpt-2, llama3, qwen2, default, falcon); its
 *    merges show rank order (abc -> a bc, pqr -> pq r), leftmost-first merging (aaaaa ->
 *    aa aa a), a merge whose result is not a token (xy -> x y), missing byte characters
 *    ('Q' and the lead byte of 'é' are dropped), whitespace and digit runs (which show
 *    where each pre-tokenizer cuts), llama3's whole-piece rule (zzz), control tokens with
 *    overlapping texts ([ab] and b][cd]) and a user-defined token. tiny_ids.json holds
 *    llama.cpp's ids for each string, with and without special parsing and with
 *    add_special; all must match.
 * 2. Bad vocabularies written with the GGUF writer: each must be refused with the status
 *    and a message naming the file and the key.
 * 3. Argument checks of finch_tokenize and finch_detokenize.
 */
#include "tok_test.h"

#include <unistd.h>

/* ---- tiny vocabularies against llama.cpp -------------------------------------------- */

static void test_tiny_vocabularies(void **state) {
    (void)state;
    json_error_t je;
    json_t *fx = json_load_file(TOK_FIXTURES "tiny_ids.json", 0, &je);
    if (!fx) fail_msg("tiny_ids.json:%d: %s", je.line, je.text);
    json_t *pres = json_object_get(fx, "pres");
    const char *pre;
    json_t *cases;
    int checked = 0, bad = 0;
    json_object_foreach(pres, pre, cases) {
        char path[1024];
        snprintf(path, sizeof path, TOK_FIXTURES "tiny_%s.gguf", pre);
        finch_tokenizer *tok = tt_load(path);
        assert_string_equal(finch_tokenizer_pre_name(tok), pre);
        size_t i;
        json_t *c;
        json_array_foreach(cases, i, c) {
            const char *text = json_string_value(json_object_get(c, "text"));
            size_t len = json_string_length(json_object_get(c, "text"));
            static const struct {
                const char *key;
                int flags;
            } modes[] = {{"ids", 0},
                         {"ids_special", FINCH_TOK_PARSE_SPECIAL},
                         {"ids_add_special", FINCH_TOK_ADD_SPECIAL}};
            for (size_t m = 0; m < 3; m++) {
                int64_t nw, n;
                int32_t *want = tt_ids(json_object_get(c, modes[m].key), &nw), *got;
                finch_err err;
                if (finch_tokenize(tok, text, len, modes[m].flags, &got, &n, &err))
                    fail_msg("%s: %s", pre, err.msg);
                if (!tt_same_ids(got, n, want, nw)) {
                    fprintf(stderr, "%s, %s: ", pre, modes[m].key);
                    tt_print_bytes(stderr, text, len, 100);
                    fputc('\n', stderr);
                    tt_print_ids(stderr, "llama.cpp", want, nw);
                    tt_print_ids(stderr, "finch    ", got, n);
                    bad++;
                }
                checked++;
                free(want);
                free(got);
            }
        }
        finch_tokenizer_free(tok);
    }
    json_decref(fx);
    printf("%d tokenizations of tiny vocabularies checked, %d differ\n", checked, bad);
    assert_true(checked >= 6 * 20 * 3);
    assert_int_equal(bad, 0);
}

/* Decoding on the tiny vocabulary: round trips where every byte has a token, and what
 * the missing characters and invalid UTF-8 turn into. */
static void test_tiny_decode(void **state) {
    (void)state;
    finch_tokenizer *tok = tt_load(TOK_FIXTURES "tiny_gpt-2.gguf");
    finch_err err;
    static const char *const texts[] = {"hello world", "  \n\t x", "<tool>it's 123",
                                        "a\xc2\xa0"
                                        "b"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *ids;
        int64_t n;
        char *dec;
        size_t len;
        assert_int_equal(finch_tokenize(tok, texts[i], strlen(texts[i]), 0, &ids, &n, &err), 0);
        assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &len, &err), FINCH_OK);
        assert_string_equal(dec, texts[i]);
        free(ids);
        free(dec);
    }
    /* 'Q' has no token and neither has the lead byte of 'é' (C3): both vanish */
    int32_t *ids;
    int64_t n;
    char *dec;
    size_t len;
    assert_int_equal(finch_tokenize(tok, "aQ\xc3\xa9", 4, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &len, &err), FINCH_OK);
    assert_string_equal(dec, "a\xa9");
    free(ids);
    free(dec);
    /* an invalid byte is read as U+FFFD, as llama.cpp reads it */
    assert_int_equal(finch_tokenize(tok, "a\xff", 2, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &len, &err), FINCH_OK);
    assert_string_equal(dec, "a\xef\xbf\xbd");
    free(ids);
    free(dec);
    /* control tokens appear in the text only when asked for; user-defined ones always */
    const int32_t special[] = {1, 3, 0};
    assert_int_equal(finch_detokenize(tok, special, 3, 0, &dec, &len, &err), FINCH_OK);
    assert_string_equal(dec, "<tool>");
    free(dec);
    assert_int_equal(finch_detokenize(tok, special, 3, FINCH_TOK_PARSE_SPECIAL, &dec, &len, &err),
                     FINCH_OK);
    assert_string_equal(dec, "<|im_start|><tool><|endoftext|>");
    free(dec);
    /* eos (</s>, id 7) and the <|endoftext|>/<|im_end|> names end generation */
    assert_true(finch_tokenizer_is_eog(tok, 7));
    assert_true(finch_tokenizer_is_eog(tok, 0));
    assert_true(finch_tokenizer_is_eog(tok, 2));
    assert_false(finch_tokenizer_is_eog(tok, 1));
    assert_false(finch_tokenizer_is_eog(tok, 6));
    assert_int_equal(finch_tokenizer_bos(tok), 6);
    assert_int_equal(finch_tokenizer_eos(tok), 7);
    finch_tokenizer_free(tok);
}

static void test_api_checks(void **state) {
    (void)state;
    finch_tokenizer *tok = tt_load(TOK_FIXTURES "tiny_smollm.gguf");
    finch_err err;
    int32_t *ids;
    int64_t n;
    char *text;
    size_t len;
    assert_int_equal(finch_tokenize(tok, "", 0, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(finch_tokenize(tok, NULL, 0, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(finch_tokenize(tok, NULL, 3, 0, &ids, &n, &err), FINCH_E_USAGE);
    assert_int_equal(finch_tokenize(tok, "a", 1, 8, &ids, &n, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "flags"));
    /* the length is what counts: a NUL byte is text like any other */
    assert_int_equal(finch_tokenize(tok, "a\0b", 3, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 3);
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &text, &len, &err), FINCH_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(text, "a\0b", 3);
    free(ids);
    free(text);
    const int32_t bad[] = {5, 70000};
    assert_int_equal(finch_detokenize(tok, bad, 2, 0, &text, &len, &err), FINCH_E_RANGE);
    assert_non_null(strstr(err.msg, "70000"));
    const int32_t neg[] = {-1};
    assert_int_equal(finch_detokenize(tok, neg, 1, 0, &text, &len, &err), FINCH_E_RANGE);
    assert_int_equal(finch_detokenize(tok, NULL, 0, 0, &text, &len, &err), FINCH_OK);
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    free(text);
    finch_tokenizer_free(tok);
}

/* ---- bad vocabularies --------------------------------------------------------------- */

/* What to break in the otherwise valid vocabulary write_vocab writes. */
typedef enum {
    BREAK_NOTHING,
    NO_MODEL,
    MODEL_BERT,
    MODEL_NOT_STRING,
    NO_PRE,
    PRE_UNKNOWN,
    NO_TOKENS,
    TOKENS_NOT_STRINGS,
    NO_TOKEN_TYPES,
    TYPES_TOO_SHORT,
    TYPES_NOT_INT32,
    NO_MERGES,
    MERGE_UNKNOWN_PART,
    MERGE_NO_SPACE,
    BOS_OUT_OF_RANGE,
    BOS_NOT_INTEGER,
    ADD_BOS_WITHOUT_BOS,
    EOT_OUT_OF_RANGE,
} breakage;

static finch_status write_vocab(const char *path, breakage b, finch_err *err) {
    static const char *const tokens[] = {"<|endoftext|>", "h",     "e", "l", "o", "he", "ll",
                                         "hell",          "hello", "Ġ"};
    static const int32_t types[] = {3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    static const char *const merges[] = {"h e", "l l", "he ll", "hell o"};
    static const char *const bad_merge[] = {"h e", "l zz"};
    static const char *const no_space[] = {"h e", "hell"};
    finch_gguf_writer *w = finch_gguf_writer_new(err);
    if (!w) return err->code;
    finch_status st = finch_gguf_set_str(w, "general.architecture", "llama", err);
    if (!st && b == MODEL_NOT_STRING)
        st = finch_gguf_set_u32(w, "tokenizer.ggml.model", 2, err);
    else if (!st && b != NO_MODEL)
        st = finch_gguf_set_str(w, "tokenizer.ggml.model", b == MODEL_BERT ? "bert" : "gpt2", err);
    if (!st && b != NO_PRE)
        st = finch_gguf_set_str(w, "tokenizer.ggml.pre", b == PRE_UNKNOWN ? "klingon" : "gpt-2",
                                err);
    if (!st && b == TOKENS_NOT_STRINGS)
        st = finch_gguf_set_arr_i32(w, "tokenizer.ggml.tokens", types, 10, err);
    else if (!st && b != NO_TOKENS)
        st = finch_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tokens, 10, err);
    if (!st && b == TYPES_NOT_INT32) {
        const float f[10] = {0};
        st = finch_gguf_set_arr_f32(w, "tokenizer.ggml.token_type", f, 10, err);
    } else if (!st && b != NO_TOKEN_TYPES) {
        st = finch_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types,
                                    b == TYPES_TOO_SHORT ? 3 : 10, err);
    }
    if (!st && b == MERGE_UNKNOWN_PART)
        st = finch_gguf_set_arr_str(w, "tokenizer.ggml.merges", bad_merge, 2, err);
    else if (!st && b == MERGE_NO_SPACE)
        st = finch_gguf_set_arr_str(w, "tokenizer.ggml.merges", no_space, 2, err);
    else if (!st && b != NO_MERGES)
        st = finch_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, 4, err);
    if (!st && b == BOS_NOT_INTEGER)
        st = finch_gguf_set_str(w, "tokenizer.ggml.bos_token_id", "0", err);
    else if (!st && b != ADD_BOS_WITHOUT_BOS)
        st = finch_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", b == BOS_OUT_OF_RANGE ? 10 : 0,
                                err);
    if (!st) st = finch_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 0, err);
    if (!st && b == EOT_OUT_OF_RANGE)
        st = finch_gguf_set_u32(w, "tokenizer.ggml.eot_token_id", 4000000000u, err);
    if (!st && b == ADD_BOS_WITHOUT_BOS)
        st = finch_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true, err);
    if (!st) st = finch_gguf_writer_save(w, path, err);
    finch_gguf_writer_free(w);
    return st;
}

/* Builds the tokenizer of a broken vocabulary: the status, and the message in err. */
static finch_status load_broken(breakage b, finch_tokenizer **tok, finch_err *err) {
    const char *path = "tok_vocab.gguf";
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
        finch_status status;
        const char *fragments[3]; /* each must be in the message */
    } cases[] = {
        {MODEL_BERT, FINCH_E_UNSUPPORTED, {"tok_vocab.gguf", "tokenizer.ggml.model", "bert"}},
        {MODEL_NOT_STRING, FINCH_E_FORMAT, {"tok_vocab.gguf", "tokenizer.ggml.model", "string"}},
        {PRE_UNKNOWN, FINCH_E_UNSUPPORTED, {"tok_vocab.gguf", "tokenizer.ggml.pre", "klingon"}},
        {NO_TOKENS, FINCH_E_FORMAT, {"tok_vocab.gguf", "tokenizer.ggml.tokens", "missing"}},
        {TOKENS_NOT_STRINGS, FINCH_E_FORMAT, {"tok_vocab.gguf", "tokenizer.ggml.tokens", "int32"}},
        {TYPES_TOO_SHORT, FINCH_E_FORMAT, {"tok_vocab.gguf", "tokenizer.ggml.token_type", "3"}},
        {TYPES_NOT_INT32,
         FINCH_E_FORMAT,
         {"tok_vocab.gguf", "tokenizer.ggml.token_type", "float32"}},
        {NO_MERGES, FINCH_E_FORMAT, {"tok_vocab.gguf", "tokenizer.ggml.merges", "missing"}},
        {MERGE_UNKNOWN_PART,
         FINCH_E_FORMAT,
         {"tok_vocab.gguf", "tokenizer.ggml.merges", "'zz' is not a token"}},
        {MERGE_NO_SPACE, FINCH_E_FORMAT, {"tok_vocab.gguf", "tokenizer.ggml.merges", "'hell'"}},
        {BOS_OUT_OF_RANGE, FINCH_E_FORMAT, {"tok_vocab.gguf", "tokenizer.ggml.bos_token_id", "10"}},
        {BOS_NOT_INTEGER,
         FINCH_E_FORMAT,
         {"tok_vocab.gguf", "tokenizer.ggml.bos_token_id", "integer"}},
        {ADD_BOS_WITHOUT_BOS, FINCH_E_FORMAT, {"tok_vocab.gguf", "add_bos_token", "bos_token_id"}},
        {EOT_OUT_OF_RANGE,
         FINCH_E_FORMAT,
         {"tok_vocab.gguf", "tokenizer.ggml.eot_token_id", "4000000000"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        finch_err err = {0};
        finch_tokenizer *tok;
        finch_status st = load_broken(cases[i].b, &tok, &err);
        if (st != cases[i].status)
            fail_msg("case %zu: status %s, expected %s (%s)", i, finch_status_str(st),
                     finch_status_str(cases[i].status), err.msg);
        assert_null(tok);
        assert_int_equal(err.code, cases[i].status);
        for (int k = 0; k < 3; k++)
            if (!strstr(err.msg, cases[i].fragments[k]))
                fail_msg("case %zu: message '%s' lacks '%s'", i, err.msg, cases[i].fragments[k]);
    }
}

static void test_lenient_vocabularies(void **state) {
    (void)state;
    finch_err err;
    finch_tokenizer *tok;
    /* no tokenizer.ggml.model: no tokenizer, and no error */
    assert_int_equal(load_broken(NO_MODEL, &tok, &err), FINCH_OK);
    assert_null(tok);
    /* no pre-tokenizer name: llama.cpp's "default" list */
    assert_int_equal(load_broken(NO_PRE, &tok, &err), FINCH_OK);
    assert_non_null(tok);
    assert_string_equal(finch_tokenizer_pre_name(tok), "default");
    finch_tokenizer_free(tok);
    /* no token types: every token is normal, so <|endoftext|> is plain text ... */
    assert_int_equal(load_broken(NO_TOKEN_TYPES, &tok, &err), FINCH_OK);
    int32_t *ids;
    int64_t n;
    assert_int_equal(finch_tokenize(tok, "hello", 5, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 8);
    free(ids);
    /* ... except that an end-of-generation name makes it a control token, as in llama.cpp */
    assert_int_equal(
        finch_tokenize(tok, "<|endoftext|>", 13, FINCH_TOK_PARSE_SPECIAL, &ids, &n, &err),
        FINCH_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 0);
    free(ids);
    assert_true(finch_tokenizer_is_eog(tok, 0));
    finch_tokenizer_free(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_vocabularies),    cmocka_unit_test(test_tiny_decode),
        cmocka_unit_test(test_api_checks),           cmocka_unit_test(test_bad_vocabularies),
        cmocka_unit_test(test_lenient_vocabularies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
