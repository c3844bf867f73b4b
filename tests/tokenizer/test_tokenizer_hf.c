/*
 * test_tokenizer_hf.c: tokenizers built from Hugging Face tokenizer.json files against the
 * `tokenizers` library itself. tests/fixtures/tokenizer-hf (made by
 * tests/reference/make_hf_tokenizer_fixtures.py) holds tiny trained BPEs in five styles
 * (GPT-2, GPT-2 with add_prefix_space, Llama-3, Qwen2, SmolLM2 with string merges and
 * stripping added tokens) and the ids the library gives on varied texts: finch must give
 * the same ids, with and without the post-processor's BOS, and decode them to the
 * library's text. finch's NFC is checked against the library's NFC normalizer on every
 * character that decomposes and on random mixes of combining marks.
 *
 * With FINCH_HF_SMOLLM2 naming a folder the script wrote (a tokenizer.json equivalent to
 * the default SmolLM2 GGUF's tokenizer), every line of smollm2_ids.jsonl must also give
 * the llama.cpp ids (those finch gives from the GGUF).
 */
#include "tok_test.h"

#include "tokenizer/internal.h" /* finch_nfc */

#define HF_FIXTURES FINCH_FIXTURES "/tokenizer-hf/"

static json_t *g_ids;

static finch_tokenizer *hf_load(const char *name, bool with_config) {
    char json_path[512], cfg_path[512];
    snprintf(json_path, sizeof json_path, HF_FIXTURES "%s.tokenizer.json", name);
    snprintf(cfg_path, sizeof cfg_path, HF_FIXTURES "%s.tokenizer_config.json", name);
    finch_tokenizer *tok;
    finch_err err;
    if (finch_tokenizer_from_hf_json(json_path, with_config ? cfg_path : NULL, &tok, &err))
        fail_msg("%s", err.msg);
    assert_non_null(tok);
    return tok;
}

/* Every fixture text through one tokenizer: ids, ids with the post-processor, decoding. */
static void check_against_library(const char *name, bool with_config) {
    finch_tokenizer *tok = hf_load(name, with_config);
    json_t *texts = json_object_get(g_ids, "texts");
    json_t *rows = json_object_get(json_object_get(g_ids, "tokenizers"), name);
    assert_non_null(rows);
    assert_int_equal(json_array_size(texts), json_array_size(rows));
    int bad = 0;
    for (size_t i = 0; i < json_array_size(texts); i++) {
        const char *text = json_string_value(json_array_get(texts, i));
        size_t len = json_string_length(json_array_get(texts, i));
        json_t *row = json_array_get(rows, i);
        int64_t n_want, n_want_add;
        int32_t *want = tt_ids(json_object_get(row, "ids"), &n_want);
        int32_t *want_add = tt_ids(json_object_get(row, "ids_add"), &n_want_add);
        int32_t *got, *got_add;
        int64_t n_got, n_got_add;
        finch_err err;
        if (finch_tokenize(tok, text, len, FINCH_TOK_PARSE_SPECIAL, &got, &n_got, &err) ||
            finch_tokenize(tok, text, len, FINCH_TOK_PARSE_SPECIAL |
                           FINCH_TOK_ADD_SPECIAL, &got_add, &n_got_add, &err))
            fail_msg("%s: %s", name, err.msg);
        bool ok = tt_same_ids(want, n_want, got, n_got) &&
                  tt_same_ids(want_add, n_want_add, got_add, n_got_add);
        char *dec;
        size_t dlen;
        if (finch_detokenize(tok, got, n_got, FINCH_TOK_PARSE_SPECIAL, &dec, &dlen, &err))
            fail_msg("%s: %s", name, err.msg);
        json_t *want_dec = json_object_get(row, "decoded");
        bool dec_ok = dlen == json_string_length(want_dec) &&
                      memcmp(dec, json_string_value(want_dec), dlen) == 0;
        if ((!ok || !dec_ok) && bad++ < 5) {
            tt_print_hf_mismatch(name, i, text, len, want, n_want, got, n_got, dec_ok ? NULL : dec,
                                 dlen);
            tt_print_ids(stderr, "tokenizers +special", want_add, n_want_add);
            tt_print_ids(stderr, "finch      +special", got_add, n_got_add);
        }
        free(dec);
        free(want);
        free(want_add);
        free(got);
        free(got_add);
    }
    finch_tokenizer_free(tok);
    if (bad) fail_msg("%s: %d of %zu texts differ from the tokenizers library", name, bad,
                      json_array_size(texts));
}

static void test_gpt2(void **state) {
    (void)state;
    check_against_library("gpt2", false);
}

static void test_gpt2_prefix_space(void **state) {
    (void)state;
    check_against_library("gpt2_prefix", false);
}

static void test_llama3(void **state) {
    (void)state;
    check_against_library("llama3", true);
    /* the post-processor alone says BOS is added */
    check_against_library("llama3", false);
}

static void test_qwen2(void **state) {
    (void)state;
    check_against_library("qwen2", true);
}

static void test_smollm(void **state) {
    (void)state;
    check_against_library("smollm", true);
}

/* What tokenizer_config.json and the post-processor set. */
static void test_config(void **state) {
    (void)state;
    finch_tokenizer *tok = hf_load("llama3", true);
    int32_t bos = finch_tokenizer_bos(tok), eos = finch_tokenizer_eos(tok);
    assert_string_equal(finch_tokenizer_token_text(tok, bos), "<|begin_of_text|>");
    assert_string_equal(finch_tokenizer_token_text(tok, eos), "<|eot_id|>");
    assert_true(finch_tokenizer_is_eog(tok, eos));
    assert_null(finch_tokenizer_chat_template(tok));
    assert_string_equal(finch_tokenizer_pre_name(tok), "Split+ByteLevel");
    finch_tokenizer_free(tok);

    tok = hf_load("qwen2", true);
    assert_int_equal(finch_tokenizer_bos(tok), -1);
    assert_string_equal(finch_tokenizer_token_text(tok, finch_tokenizer_eos(tok)), "<|im_end|>");
    /* of the named templates, "default" */
    const char *t = finch_tokenizer_chat_template(tok);
    assert_non_null(t);
    assert_non_null(strstr(t, "<|im_start|>"));
    assert_int_equal(finch_chat_detect(t, strlen(t)), FINCH_CHAT_CHATML);
    finch_tokenizer_free(tok);

    tok = hf_load("smollm", true);
    assert_string_equal(finch_tokenizer_pre_name(tok), "Digits+ByteLevel");
    assert_string_equal(finch_tokenizer_token_text(tok, finch_tokenizer_bos(tok)),
                        "<|im_start|>");
    /* the non-special added token decodes to its text even without special tokens */
    int32_t *ids;
    int64_t n;
    finch_err err;
    assert_int_equal(finch_tokenize(tok, "<tool>", 6, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 1);
    char *dec;
    size_t dlen;
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &dlen, &err), FINCH_OK);
    assert_string_equal(dec, "<tool>");
    free(dec);
    free(ids);
    /* a special token is plain text unless special tokens are parsed */
    assert_int_equal(finch_tokenize(tok, "<|im_end|>", 10, 0, &ids, &n, &err), FINCH_OK);
    assert_true(n > 1);
    free(ids);
    finch_tokenizer_free(tok);
}

/* finch_nfc against the library's NFC normalizer (tokenizer-hf/nfc.json), then on
 * invalid UTF-8 (kept as it is) and text that needs no change (not copied). */
static void test_nfc(void **state) {
    (void)state;
    json_error_t je;
    json_t *cases = json_load_file(HF_FIXTURES "nfc.json", 0, &je);
    if (!cases) fail_msg("nfc.json:%d: %s", je.line, je.text);
    int bad = 0, changed = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *text = json_string_value(json_object_get(c, "text"));
        json_t *want = json_object_get(c, "nfc");
        size_t len = strlen(text), n;
        char *out;
        finch_err err;
        if (finch_nfc(text, len, &out, &n, &err)) fail_msg("%s", err.msg);
        const char *got = out ? out : text;
        size_t got_len = out ? n : len;
        changed += got_len != len || memcmp(got, text, len) != 0;
        if ((got_len != json_string_length(want) ||
             memcmp(got, json_string_value(want), got_len) != 0) && bad++ < 5) {
            fprintf(stderr, "NFC case %zu: ", i);
            tt_print_bytes(stderr, text, len, 120);
            fputs("\n  tokenizers ", stderr);
            tt_print_bytes(stderr, json_string_value(want), json_string_length(want), 120);
            fputs("\n  finch      ", stderr);
            tt_print_bytes(stderr, got, got_len, 120);
            fputc('\n', stderr);
        }
        free(out);
    }
    fprintf(stderr, "NFC: %zu cases, %d changed by normalizing\n", json_array_size(cases),
            changed);
    assert_true(changed > 100);
    json_decref(cases);
    if (bad) fail_msg("%d NFC cases differ from the tokenizers library", bad);

    char *out;
    size_t n;
    finch_err err;
    /* e + U+0301 with an invalid byte between: nothing composes across it */
    const char bad_utf8[] = "e\xff\xcc\x81 e\xcc\x81";
    assert_int_equal(finch_nfc(bad_utf8, sizeof bad_utf8 - 1, &out, &n, &err), FINCH_OK);
    assert_non_null(out);
    assert_int_equal(n, 7);
    assert_memory_equal(out, "e\xff\xcc\x81 \xc3\xa9", 7);
    free(out);
    assert_int_equal(finch_nfc("plain \xc3\xa9t\xc3\xa9", 10, &out, &n, &err), FINCH_OK);
    assert_null(out);
    /* CJK and Hangul syllables are stable: no copy */
    const char *cjk = "\xe4\xb8\xad\xe6\x96\x87 \xea\xb0\x81";
    assert_int_equal(finch_nfc(cjk, strlen(cjk), &out, &n, &err), FINCH_OK);
    assert_null(out);
}

/* The SmolLM2 tokenizer.json the reference script writes, against llama.cpp's ids. */
static void test_smollm2_full(void **state) {
    (void)state;
    const char *dir = getenv("FINCH_HF_SMOLLM2");
    if (!dir) {
        fprintf(stderr, "FINCH_HF_SMOLLM2 not set: skipping the full SmolLM2 comparison\n");
        skip();
    }
    char jp[512], cp[512];
    snprintf(jp, sizeof jp, "%s/tokenizer.json", dir);
    snprintf(cp, sizeof cp, "%s/tokenizer_config.json", dir);
    finch_tokenizer *tok;
    finch_err err;
    if (finch_tokenizer_from_hf_json(jp, cp, &tok, &err)) fail_msg("%s", err.msg);
    FILE *f = fopen(TOK_FIXTURES "smollm2_ids.jsonl", "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, same = 0, bad = 0;
    while (getline(&line, &cap, f) > 0) {
        if (lineno++ == 0) continue; /* meta */
        json_error_t je;
        json_t *o = json_loads(line, JSON_ALLOW_NUL, &je);
        assert_non_null(o);
        size_t len;
        char *text;
        json_t *t = json_object_get(o, "text");
        if (t) {
            len = json_string_length(t);
            text = malloc(len + 1);
            assert_non_null(text);
            memcpy(text, json_string_value(t), len + 1);
        } else {
            text = tt_unhex(json_string_value(json_object_get(o, "hex")), &len);
        }
        int64_t n_want, n_got;
        int32_t *want = tt_ids(json_object_get(o, "ids"), &n_want), *got;
        int flags = json_is_true(json_object_get(o, "special")) ? FINCH_TOK_PARSE_SPECIAL : 0;
        if (finch_tokenize(tok, text, len, flags, &got, &n_got, &err)) fail_msg("%s", err.msg);
        if (tt_same_ids(want, n_want, got, n_got)) {
            same++;
        } else if (bad++ < 5) {
            fprintf(stderr, "line %d: ", lineno);
            tt_print_bytes(stderr, text, len, 80);
            fputc('\n', stderr);
            tt_print_ids(stderr, "llama.cpp", want, n_want);
            tt_print_ids(stderr, "finch    ", got, n_got);
        }
        free(want);
        free(got);
        free(text);
        json_decref(o);
    }
    free(line);
    fclose(f);
    finch_tokenizer_free(tok);
    fprintf(stderr, "SmolLM2 from tokenizer.json: %d lines equal to llama.cpp, %d differ\n",
            same, bad);
    assert_int_equal(bad, 0);
    assert_true(same > 1000);
}

int main(void) {
    json_error_t je;
    g_ids = json_load_file(HF_FIXTURES "ids.json", JSON_ALLOW_NUL, &je);
    if (!g_ids) {
        fprintf(stderr, "ids.json:%d: %s\n", je.line, je.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2),   cmocka_unit_test(test_gpt2_prefix_space),
        cmocka_unit_test(test_llama3), cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_smollm), cmocka_unit_test(test_config),
        cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_smollm2_full),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(g_ids);
    return rc;
}
