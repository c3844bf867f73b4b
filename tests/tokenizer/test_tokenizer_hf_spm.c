/*
 * test_tokenizer_hf_spm.c: SentencePiece-style tokenizer.json files against the
 * `tokenizers` library. tests/fixtures/tokenizer-hf (made by
 * tests/reference/make_spm_json_fixtures.py) holds a Llama-2 style BPE with byte fallback
 * (Prepend + Replace normalizer), the same model with Metaspace (prepend_scheme first, split
 * false), a T5-style Unigram (Metaspace, byte fallback) and the same without byte
 * fallback (unknown characters give one fused unknown token), the BPE as Gemma 3's
 * tokenizer.json is laid out (Replace normalizer alone), and the ids the library gives on
 * 1,077 varied lines: finch must give the same ids on every line,
 * and decode them back to the line wherever the library does. Two Unigram files with the
 * Precompiled normalizer (made by tests/reference/make_spm_precompiled_fixtures.py from a
 * SentencePiece model with NFKC-style rules, converted by transformers' T5Converter: T5's
 * Sequence[Precompiled, Strip, Replace " {2,}"] and ALBERT's Replace to one space) are
 * checked the same way on 1,049 lines of NFKC-affected text. Broken files (bad scores, no
 * unknown token, an unknown model type, malformed Metaspace) must be refused with a
 * message naming the field.
 */
#include "tok_test.h"

#include <unistd.h> /* unlink */

#define HF_FIXTURES FINCH_FIXTURES "/tokenizer-hf/"

static json_t *g_ids, *g_pre_ids; /* spm_ids.json, spm_precompiled_ids.json */

static void check_ids(json_t *ids, const char *name) {
    char path[512];
    snprintf(path, sizeof path, HF_FIXTURES "%s.tokenizer.json", name);
    finch_tokenizer *tok;
    finch_err err;
    if (finch_tokenizer_from_hf_json(path, NULL, &tok, &err)) fail_msg("%s", err.msg);
    json_t *texts = json_object_get(ids, "texts");
    json_t *rows = json_object_get(json_object_get(ids, "tokenizers"), name);
    assert_non_null(rows);
    assert_int_equal(json_array_size(texts), json_array_size(rows));
    int bad = 0, same = 0, trips = 0;
    for (size_t i = 0; i < json_array_size(texts); i++) {
        const char *text = json_string_value(json_array_get(texts, i));
        size_t len = json_string_length(json_array_get(texts, i));
        json_t *row = json_array_get(rows, i);
        int64_t n_want, n_got;
        int32_t *want = tt_ids(json_object_get(row, "ids"), &n_want), *got;
        if (finch_tokenize(tok, text, len, FINCH_TOK_PARSE_SPECIAL, &got, &n_got, &err))
            fail_msg("%s: %s", name, err.msg);
        bool ok = tt_same_ids(want, n_want, got, n_got);
        char *dec;
        size_t dlen;
        if (finch_detokenize(tok, got, n_got, FINCH_TOK_PARSE_SPECIAL, &dec, &dlen, &err))
            fail_msg("%s: %s", name, err.msg);
        bool trip = json_is_true(json_object_get(row, "round_trip"));
        bool dec_ok = !trip || (dlen == len && memcmp(dec, text, len) == 0);
        same += ok;
        trips += trip && dec_ok;
        if ((!ok || !dec_ok) && bad++ < 5)
            tt_print_hf_mismatch(name, i, text, len, want, n_want, got, n_got, dec_ok ? NULL : dec,
                                 dlen);
        free(dec);
        free(want);
        free(got);
    }
    finch_tokenizer_free(tok);
    fprintf(stderr, "%s: %d of %zu lines give the library's ids, %d round trips\n", name, same,
            json_array_size(texts), trips);
    if (bad)
        fail_msg("%s: %d of %zu texts differ from the tokenizers library", name, bad,
                 json_array_size(texts));
    assert_true(same >= 1000);
}

static void check_against_library(const char *name) {
    check_ids(g_ids, name);
}

static void test_bpe_byte_fallback(void **state) {
    (void)state;
    check_against_library("spm_bpe");
}

static void test_bpe_metaspace(void **state) {
    (void)state;
    check_against_library("spm_bpe_meta");
}

static void test_unigram(void **state) {
    (void)state;
    check_against_library("spm_unigram");
}

static void test_unigram_unknown(void **state) {
    (void)state;
    check_against_library("spm_unigram_unk");
}

/* Gemma 3 style: Replace(" ", "▁") alone, Split(" ") that splits nothing, nothing prepended
 * or stripped (spm_gemma_ids.json: the spm_bpe model so configured, on the same lines) */
static void test_bpe_gemma(void **state) {
    (void)state;
    json_error_t je;
    json_t *ids = json_load_file(HF_FIXTURES "spm_gemma_ids.json", JSON_ALLOW_NUL, &je);
    if (!ids) fail_msg("spm_gemma_ids.json:%d: %s", je.line, je.text);
    check_ids(ids, "spm_bpe_gemma");
    json_decref(ids);
}

/* T5 style: Precompiled (SentencePiece's compiled rules), Strip right, Replace " {2,}" */
static void test_precompiled(void **state) {
    (void)state;
    check_ids(g_pre_ids, "spm_precompiled");
}

/* ALBERT style: Precompiled, then Replace " {2,}" by one space */
static void test_precompiled_albert(void **state) {
    (void)state;
    check_ids(g_pre_ids, "spm_precompiled_albert");
}

/* The fixture file name with one edit: the first occurrence of from replaced by to. */
static void check_refused(const char *name, const char *from, const char *to, finch_status want,
                          const char *fragment) {
    char src[512], dst[] = "/tmp/finch-spm-json-XXXXXX";
    snprintf(src, sizeof src, HF_FIXTURES "%s.tokenizer.json", name);
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    static char buf[1 << 18];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *at = strstr(buf, from);
    if (!at) fail_msg("%s: no '%s' to replace", name, from);
    int fd = mkstemp(dst);
    assert_true(fd >= 0);
    f = fdopen(fd, "wb");
    fwrite(buf, 1, (size_t)(at - buf), f);
    fputs(to, f);
    fputs(at + strlen(from), f);
    fclose(f);
    finch_tokenizer *tok = NULL;
    finch_err err = {0};
    finch_status st = finch_tokenizer_from_hf_json(dst, NULL, &tok, &err);
    unlink(dst);
    assert_null(tok);
    if (st != want || !strstr(err.msg, fragment))
        fail_msg("%s with '%s' -> '%s': status %d, message '%s'; expected %d and '%s'", name, from,
                 to, st, err.msg, want, fragment);
}

static void test_refusals(void **state) {
    (void)state;
    static const char first_piece[] = "\"<unk>\",\n        0.0\n";
    check_refused("spm_unigram", first_piece, "\"<unk>\",\n        \"x\"\n", FINCH_E_FORMAT,
                  "model.vocab[0][1]");
    check_refused("spm_unigram", first_piece, "\"<unk>\"\n", FINCH_E_FORMAT, "model.vocab[0]");
    check_refused("spm_unigram", "\"unk_id\": 0", "\"unk_id\": null", FINCH_E_UNSUPPORTED,
                  "model.unk_id");
    check_refused("spm_unigram", "\"unk_id\": 0", "\"unk_id\": 100000", FINCH_E_FORMAT,
                  "model.unk_id");
    check_refused("spm_unigram", "\"type\": \"Unigram\"", "\"type\": \"WordPiece\"",
                  FINCH_E_UNSUPPORTED, "model.type");
    check_refused("spm_unigram", "\"prepend_scheme\": \"always\"",
                  "\"prepend_scheme\": \"sometimes\"", FINCH_E_FORMAT,
                  "pre_tokenizer.prepend_scheme");
    check_refused("spm_unigram", "\"replacement\": \"▁\"", "\"replacement\": \"_\"",
                  FINCH_E_UNSUPPORTED, "pre_tokenizer.replacement");
    check_refused("spm_unigram", "\"split\": true", "\"split\": 1", FINCH_E_FORMAT,
                  "pre_tokenizer.split");
    check_refused("spm_bpe", "\"unk_token\": \"<unk>\"", "\"unk_token\": \"<nope>\"",
                  FINCH_E_FORMAT, "unk_token");
    check_refused("spm_bpe", "\"type\": \"Strip\"", "\"type\": \"Lowercase\"", FINCH_E_UNSUPPORTED,
                  "decoder.decoders[3]");
    check_refused("spm_bpe", "\"prepend\": \"▁\"", "\"prepend\": \"_\"", FINCH_E_UNSUPPORTED,
                  "normalizer.normalizers[0].prepend");
}

int main(void) {
    json_error_t je;
    g_ids = json_load_file(HF_FIXTURES "spm_ids.json", JSON_ALLOW_NUL, &je);
    if (!g_ids) {
        fprintf(stderr, "spm_ids.json:%d: %s\n", je.line, je.text);
        return 1;
    }
    g_pre_ids = json_load_file(HF_FIXTURES "spm_precompiled_ids.json", JSON_ALLOW_NUL, &je);
    if (!g_pre_ids) {
        fprintf(stderr, "spm_precompiled_ids.json:%d: %s\n", je.line, je.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe_byte_fallback), cmocka_unit_test(test_bpe_metaspace),
        cmocka_unit_test(test_unigram),           cmocka_unit_test(test_unigram_unknown),
        cmocka_unit_test(test_precompiled),       cmocka_unit_test(test_precompiled_albert),
        cmocka_unit_test(test_refusals),          cmocka_unit_test(test_bpe_gemma),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(g_ids);
    json_decref(g_pre_ids);
    return rc;
}
