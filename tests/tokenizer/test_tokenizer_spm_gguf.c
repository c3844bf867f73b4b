/*
 * test_tokenizer_spm_gguf.c: SentencePiece-style tokenizer.json files written as GGUF
 * "llama" vocabularies (gguf_kv.c) and read back by finch's GGUF SentencePiece tokenizer
 * (spm.c, llama.cpp's algorithm): the ids must be the tokenizers library's.
 *
 *   - With tokenizer.model (tests/fixtures/hf_spm, made by
 *     tests/reference/make_spm_model_fixtures.py: a SentencePiece BPE model and the
 *     tokenizer.json transformers converts from it): the GGUF's scores are the model's
 *     pieces' scores (-1000 for the added <unk> <s> </s>), its types the pieces' types
 *     (the added tokens control), and on 614 lines the GGUF gives SentencePiece's own ids
 *     (as llama.cpp would), which are the library's but where a line starts with a space
 *     (the library's Metaspace "first" puts no marker there, SentencePiece does). Without
 *     tokenizer.model the derived scores must give the same ids.
 *   - Without tokenizer.model, the Llama 2 (Prepend + Replace), Metaspace and Gemma 3
 *     layouts of tests/fixtures/tokenizer-hf (the library's ids on 1,077 lines): every line.
 *     (Metaspace "first" against spm_bpe's ids: see test_derived_scores). The Unigram file
 *     is refused (llama.cpp joins its pieces greedily).
 *   - Broken tokenizer.model files (cut short, a wrong wire type, a length past the end,
 *     a piece count or piece text that does not match tokenizer.json) and a normalizer
 *     llama.cpp cannot run are refused with a message naming the file and the offset.
 */
#include "tok_test.h"
#include "test_util.h" /* read_file */

#include <unistd.h> /* unlink */

#define SPM_DIR FINCH_FIXTURES "/hf_spm/"
#define TINY SPM_DIR "tiny_llama_spm/"
#define HF_FIXTURES FINCH_FIXTURES "/tokenizer-hf/"

static char tmp_gguf[] = "/tmp/finch_spm_gguf_XXXXXX";

/* The GGUF tokenizer.json (with tokenizer.model at model_path, or NULL) becomes. */
static finch_status to_gguf(const char *json_path, const char *model_path, finch_tokenizer **out,
                            finch_gguf **g_out, finch_err *err) {
    finch_tokenizer *hf;
    finch_status st = finch_tokenizer_from_hf_json(json_path, NULL, &hf, err);
    if (st) fail_msg("%s", err->msg);
    finch_gguf_writer *w = finch_gguf_writer_new(err);
    assert_non_null(w);
    const int32_t ids[4] = {-1, -1, -1, -1};
    st = finch_tokenizer_gguf_kvs(hf, 0, ids, model_path, w, err);
    finch_tokenizer_free(hf);
    if (!st) st = finch_gguf_writer_save(w, tmp_gguf, err);
    finch_gguf_writer_free(w);
    if (st) return st;
    finch_gguf *g;
    if (finch_gguf_open(tmp_gguf, &g, err)) fail_msg("%s", err->msg);
    if (finch_tokenizer_from_gguf(g, out, err)) fail_msg("%s", err->msg);
    if (g_out)
        *g_out = g;
    else
        finch_gguf_close(g);
    return FINCH_OK;
}

/* How many of the texts give ids rows[i] (a list, or an object's "ids") from tok. */
static int count_same(const finch_tokenizer *tok, const json_t *texts, const json_t *rows,
                      const char *name, const char *ref) {
    int same = 0, shown = 0;
    for (size_t i = 0; i < json_array_size(texts); i++) {
        const json_t *t = json_array_get(texts, i), *row = json_array_get(rows, i);
        if (json_is_object(row)) row = json_object_get(row, "ids");
        int64_t n_want, n_got;
        int32_t *want = tt_ids(row, &n_want), *got;
        finch_err err;
        if (finch_tokenize(tok, json_string_value(t), json_string_length(t),
                           FINCH_TOK_PARSE_SPECIAL, &got, &n_got, &err))
            fail_msg("%s: %s", name, err.msg);
        if (tt_same_ids(want, n_want, got, n_got))
            same++;
        else if (shown++ < 5)
            tt_print_hf_mismatch(name, i, json_string_value(t), json_string_length(t), want, n_want,
                                 got, n_got, NULL, 0);
        free(want);
        free(got);
    }
    fprintf(stderr, "%s: %d of %zu lines give %s ids\n", name, same, json_array_size(texts), ref);
    return same;
}

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!j) fail_msg("%s: %s", path, je.text);
    return j;
}

static void test_with_tokenizer_model(void **state) {
    (void)state;
    json_t *ids = load_json(SPM_DIR "ids.json");
    const json_t *texts = json_object_get(ids, "texts"), *rows = json_object_get(ids, "tokenizers");
    const json_t *want_scores = json_object_get(ids, "scores");
    finch_tokenizer *tok;
    finch_gguf *g;
    finch_err err;
    assert_int_equal(to_gguf(TINY "tokenizer.json", TINY "tokenizer.model", &tok, &g, &err),
                     FINCH_OK);
    /* the pieces' scores; the types of a Llama 2 vocabulary */
    const finch_gguf_kv *sc = finch_gguf_find_kv(g, "tokenizer.ggml.scores");
    const finch_gguf_kv *ty = finch_gguf_find_kv(g, "tokenizer.ggml.token_type");
    assert_non_null(sc);
    assert_non_null(ty);
    assert_int_equal(sc->arr_n, json_array_size(want_scores));
    for (size_t i = 0; i < sc->arr_n; i++) {
        float score;
        int32_t type;
        memcpy(&score, sc->arr_data + 4 * i, 4);
        memcpy(&type, ty->arr_data + 4 * i, 4);
        const float want =
            i < 3 ? -1000.0f : (float)json_number_value(json_array_get(want_scores, i));
        if (score != want) fail_msg("score %zu: %g, want %g", i, score, want);
        /* <unk> <s> </s> are added special tokens: control, as the converter makes them */
        const int32_t want_type = i < 3 ? 3 : i < 259 ? 6 : 1;
        if (type != want_type) fail_msg("type %zu: %d, want %d", i, type, want_type);
    }
    const finch_gguf_kv *pre = finch_gguf_find_kv(g, "tokenizer.ggml.add_space_prefix");
    assert_non_null(pre);
    finch_gguf_close(g);
    finch_tokenizer *hf;
    if (finch_tokenizer_from_hf_json(TINY "tokenizer.json", NULL, &hf, &err))
        fail_msg("%s", err.msg);
    const json_t *sp_rows = json_object_get(ids, "sentencepiece");
    const int n = (int)json_array_size(texts);
    /* the library and SentencePiece differ where a text starts with a space (Metaspace
     * "first" adds no marker there, SentencePiece's dummy prefix does): llama.cpp follows
     * SentencePiece, so the GGUF must give SentencePiece's ids on every line and the
     * library's where the two agree */
    int agree = 0;
    for (int i = 0; i < n; i++)
        agree += json_equal(json_array_get(rows, i), json_array_get(sp_rows, i));
    assert_true(agree >= n - 8);
    assert_int_equal(count_same(hf, texts, rows, "tokenizer.json", "the tokenizers library's"), n);
    for (int k = 0; k < 2; k++) {
        if (k) {
            finch_tokenizer_free(tok);
            assert_int_equal(to_gguf(TINY "tokenizer.json", NULL, &tok, NULL, &err), FINCH_OK);
        }
        const char *name = k ? "GGUF, derived scores" : "GGUF, tokenizer.model's scores";
        assert_int_equal(count_same(tok, texts, sp_rows, name, "SentencePiece's"), n);
        int both = 0;
        for (int i = 0; i < n; i++) {
            const json_t *t = json_array_get(texts, i);
            int32_t *got;
            int64_t n_got, n_want;
            if (finch_tokenize(tok, json_string_value(t), json_string_length(t),
                               FINCH_TOK_PARSE_SPECIAL, &got, &n_got, &err))
                fail_msg("%s", err.msg);
            int32_t *want = tt_ids(json_array_get(rows, i), &n_want);
            both += tt_same_ids(want, n_want, got, n_got);
            free(want);
            free(got);
        }
        fprintf(stderr,
                "%s: the library's ids on %d of %d lines (it agrees with SentencePiece "
                "on %d)\n",
                name, both, n, agree);
        assert_int_equal(both, agree);
    }
    finch_tokenizer_free(tok);
    finch_tokenizer_free(hf);
    json_decref(ids);
}

/* The GGUF of tokenizer-hf/<name>.tokenizer.json (derived scores) gives the library's ids
 * for file want on every line. */
static void derived(const char *ids_file, const char *name, const char *want) {
    char path[512];
    snprintf(path, sizeof path, HF_FIXTURES "%s.tokenizer.json", name);
    json_t *ids = load_json(ids_file);
    const json_t *texts = json_object_get(ids, "texts");
    const json_t *rows = json_object_get(json_object_get(ids, "tokenizers"), want);
    assert_non_null(rows);
    finch_tokenizer *tok;
    finch_err err;
    if (to_gguf(path, NULL, &tok, NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(count_same(tok, texts, rows, name, "the tokenizers library's"),
                     (int)json_array_size(texts));
    finch_tokenizer_free(tok);
    json_decref(ids);
}

static void test_derived_scores(void **state) {
    (void)state;
    derived(HF_FIXTURES "spm_ids.json", "spm_bpe", "spm_bpe");
    /* the same model with Metaspace "first": where a line starts with a space the library
     * puts no marker in front, llama.cpp (as SentencePiece) does, as the legacy Prepend
     * normalizer of spm_bpe does: the GGUF gives spm_bpe's ids on every line */
    derived(HF_FIXTURES "spm_ids.json", "spm_bpe_meta", "spm_bpe");
    derived(HF_FIXTURES "spm_gemma_ids.json", "spm_bpe_gemma", "spm_bpe_gemma");
    /* Unigram: llama.cpp's greedy joining agreed with the library on 303 of 1,077 lines */
    finch_tokenizer *hf;
    finch_err err;
    if (finch_tokenizer_from_hf_json(HF_FIXTURES "spm_unigram.tokenizer.json", NULL, &hf, &err))
        fail_msg("%s", err.msg);
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    const int32_t ids[4] = {-1, -1, -1, -1};
    assert_int_equal(finch_tokenizer_gguf_kvs(hf, 0, ids, NULL, w, &err), FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "Unigram"));
    finch_gguf_writer_free(w);
    finch_tokenizer_free(hf);
}

/* tokenizer.model's bytes, edited by edit, must be refused with a message holding want. */
static void refused_model(void (*edit)(uint8_t *p, size_t *n), const char *want) {
    size_t n;
    uint8_t *orig = read_file(TINY "tokenizer.model", &n);
    assert_non_null(orig);
    uint8_t *p = malloc(n + 64);
    assert_non_null(p);
    memcpy(p, orig, n);
    edit(p, &n);
    char path[] = "/tmp/finch_spm_model_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, n), (ssize_t)n);
    close(fd);
    finch_tokenizer *tok;
    finch_err err;
    finch_status st = to_gguf(TINY "tokenizer.json", path, &tok, NULL, &err);
    if (st == FINCH_OK) fail_msg("accepted a broken tokenizer.model (%s)", want);
    fprintf(stderr, "refused: %s\n", err.msg);
    assert_int_equal(st, FINCH_E_FORMAT);
    if (!strstr(err.msg, path) || !strstr(err.msg, want))
        fail_msg("message '%s' lacks '%s' or the path", err.msg, want);
    unlink(path);
    free(p);
    free(orig);
}

static void cut_short(uint8_t *p, size_t *n) {
    (void)p;
    *n = *n / 2;
}
static void wrong_wire(uint8_t *p, size_t *n) {
    (void)n;
    p[0] = (uint8_t)(1 << 3 | 5); /* pieces as a 32-bit value */
}
static void long_length(uint8_t *p, size_t *n) {
    (void)n;
    /* the first piece's length varint (after key 0x0a) made huge: five bytes 0xff.. */
    memmove(p + 6, p + 2, *n - 2);
    memcpy(p + 1, "\xff\xff\xff\xff\x0f", 5);
    *n += 4;
}
static void group(uint8_t *p, size_t *n) {
    p[*n] = (uint8_t)(7 << 3 | 3); /* a start-group field at the end */
    *n += 1;
}
static void extra_piece(uint8_t *p, size_t *n) {
    /* a 641st piece "zz" (tokenizer.json has 640 tokens) */
    memcpy(p + *n, "\x0a\x04\x0a\x02zz", 6);
    *n += 6;
}
static void other_text(uint8_t *p, size_t *n) {
    /* the last byte piece <0xFF> respelled <0xFE>: a piece tokenizer.json does not have */
    static const char ff[] = "<0xFF>";
    for (size_t i = 0; i + 6 <= *n; i++)
        if (!memcmp(p + i, ff, 6)) {
            p[i + 4] = 'E';
            return;
        }
    fail_msg("no <0xFF> piece");
}
static void empty_file(uint8_t *p, size_t *n) {
    (void)p;
    *n = 0;
}

static void test_bad_tokenizer_model(void **state) {
    (void)state;
    refused_model(cut_short, "at byte");
    refused_model(wrong_wire, "at byte 0");
    refused_model(long_length, "runs past");
    refused_model(group, "wire type 3");
    refused_model(extra_piece, "641 pieces");
    refused_model(other_text, "<0xFE>");
    refused_model(empty_file, "no pieces");
    /* a parse straight from memory: a varint that never ends */
    const uint8_t bad[12] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0xff,
                             0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    finch_spm_model m;
    finch_err err;
    assert_int_equal(finch_spm_model_parse(bad, sizeof bad, "mem", &m, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "at byte 1"));
    assert_int_equal(m.n, 0);
}

/* spm_bpe_meta with a Strip normalizer, which llama.cpp's tokenizer would not run. */
static void test_refused_normalizer(void **state) {
    (void)state;
    json_t *j = load_json(HF_FIXTURES "spm_bpe_meta.tokenizer.json");
    json_t *strip =
        json_pack("{s:s, s:b, s:b}", "type", "Strip", "strip_left", 1, "strip_right", 1);
    assert_int_equal(json_object_set_new(j, "normalizer", strip), 0);
    char path[] = "/tmp/finch_spm_strip_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(json_dump_file(j, path, 0), 0);
    json_decref(j);
    finch_tokenizer *hf;
    finch_err err;
    if (finch_tokenizer_from_hf_json(path, NULL, &hf, &err)) fail_msg("%s", err.msg);
    unlink(path);
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    const int32_t ids[4] = {-1, -1, -1, -1};
    assert_int_equal(finch_tokenizer_gguf_kvs(hf, 0, ids, NULL, w, &err), FINCH_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "normalizer"));
    finch_gguf_writer_free(w);
    finch_tokenizer_free(hf);
}

static int setup(void **state) {
    (void)state;
    int fd = mkstemp(tmp_gguf);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(tmp_gguf);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_with_tokenizer_model),
        cmocka_unit_test(test_derived_scores),
        cmocka_unit_test(test_bad_tokenizer_model),
        cmocka_unit_test(test_refused_normalizer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
