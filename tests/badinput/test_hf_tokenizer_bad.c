/*
 * test_hf_tokenizer_bad.c: the tokenizer.json / tokenizer_config.json reader on broken,
 * hostile and unsupported files. Table-driven: each case writes a small tokenizer.json
 * (and maybe a config) to a temporary folder, loads it with finch_tokenizer_from_hf_json
 * and asserts the status, that the message names the file, and a fragment saying what is
 * wrong (the field, or the line and column of a JSON syntax error). A valid file built the
 * same way must load, so the cases differ from a good file in one thing only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tokenizer/tokenizer.h"

static char g_dir[64];
static char g_json[128], g_cfg[128];

/* A model over "a", "b", "ab" with the merge "a b". */
#define MODEL_OK "{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}"
#define PRE_OK "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}"

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

/* {"model": model, "pre_tokenizer": pre <extra>} */
static void write_tokenizer(const char *model, const char *pre, const char *extra) {
    size_t n = strlen(model) + strlen(pre) + strlen(extra) + 64;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "{\"model\": %s, \"pre_tokenizer\": %s%s}", model, pre, extra);
    write_text(g_json, s);
    free(s);
}

/* Loads g_json (and g_cfg when cfg is not NULL: its text) and checks the failure. */
static void expect_fail(const char *cfg, finch_status want, const char *fragment,
                        const char *case_name) {
    if (cfg) write_text(g_cfg, cfg);
    finch_tokenizer *tok = (finch_tokenizer *)1;
    finch_err err = {0};
    finch_status st = finch_tokenizer_from_hf_json(g_json, cfg ? g_cfg : NULL, &tok, &err);
    if (st != want || !strstr(err.msg, fragment) || !strstr(err.msg, g_dir))
        fail_msg("%s: status %d (want %d), message '%s' (want '%s' and the path)", case_name,
                 (int)st, (int)want, err.msg, fragment);
    assert_null(tok);
}

static void expect_ok(const char *cfg) {
    if (cfg) write_text(g_cfg, cfg);
    finch_tokenizer *tok;
    finch_err err;
    if (finch_tokenizer_from_hf_json(g_json, cfg ? g_cfg : NULL, &tok, &err))
        fail_msg("a valid file fails: %s", err.msg);
    finch_tokenizer_free(tok);
}

static void test_valid_base(void **state) {
    (void)state;
    write_tokenizer(MODEL_OK, PRE_OK, "");
    expect_ok(NULL);
    write_tokenizer(MODEL_OK, PRE_OK, ", \"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", "
                                      "\"special\": true}]");
    expect_ok("{\"bos_token\": {\"content\": \"<s>\"}, \"add_bos_token\": true}");
    /* transformers writes model_max_length as int(1e30) */
    expect_ok("{\"model_max_length\": 1000000000000000019884624838656}");

    /* ids 3 and 4 given by neither the vocabulary nor the added tokens: placeholders that
     * decode to nothing */
    write_tokenizer(MODEL_OK, PRE_OK, ", \"added_tokens\": [{\"id\": 5, \"content\": \"<s>\", "
                                      "\"special\": true}]");
    finch_tokenizer *tok;
    finch_err err;
    if (finch_tokenizer_from_hf_json(g_json, NULL, &tok, &err)) fail_msg("%s", err.msg);
    assert_int_equal(finch_tokenizer_n_vocab(tok), 6);
    assert_string_equal(finch_tokenizer_token_text(tok, 3), "[PAD3]");
    assert_string_equal(finch_tokenizer_token_text(tok, 5), "<s>");
    assert_int_equal(finch_tokenizer_piece(tok, 4, true, NULL, 0), 0);
    assert_int_equal(finch_tokenizer_piece(tok, 5, true, NULL, 0), 3);
    int32_t *ids;
    int64_t n;
    assert_int_equal(finch_tokenize(tok, "ab<s>", 5, FINCH_TOK_PARSE_SPECIAL, &ids, &n, &err),
                     FINCH_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 5);
    free(ids);
    assert_null(finch_tokenizer_chat_template(tok));
    finch_tokenizer_free(tok);

    /* a config without chat_template: chat_template.jinja beside it */
    char jinja[160];
    snprintf(jinja, sizeof jinja, "%s/chat_template.jinja", g_dir);
    write_text(jinja, "{{ messages }}");
    write_text(g_cfg, "{\"eos_token\": \"<s>\"}");
    if (finch_tokenizer_from_hf_json(g_json, g_cfg, &tok, &err)) fail_msg("%s", err.msg);
    assert_string_equal(finch_tokenizer_chat_template(tok), "{{ messages }}");
    finch_tokenizer_free(tok);
    /* the config's own template wins */
    write_text(g_cfg, "{\"chat_template\": \"{{ x }}\"}");
    if (finch_tokenizer_from_hf_json(g_json, g_cfg, &tok, &err)) fail_msg("%s", err.msg);
    assert_string_equal(finch_tokenizer_chat_template(tok), "{{ x }}");
    finch_tokenizer_free(tok);
    unlink(jinja);
}

static void test_json_syntax(void **state) {
    (void)state;
    write_text(g_json, "{\"model\": {\"type\": \"BPE\",\n  \"vocab\": {\"a\" 0}}}");
    expect_fail(NULL, FINCH_E_FORMAT, ":2:", "syntax error: line");
    expect_fail(NULL, FINCH_E_FORMAT, "malformed JSON", "syntax error");
    write_text(g_json, "");
    expect_fail(NULL, FINCH_E_FORMAT, "malformed JSON", "empty file");
    write_text(g_json, "[1, 2]");
    expect_fail(NULL, FINCH_E_FORMAT, "expected an object", "top-level array");
    write_text(g_json, "{\"model\": {\"vocab\": {\"a\\u0000b\": 0}}}");
    expect_fail(NULL, FINCH_E_FORMAT, "malformed JSON", "NUL in a string");
    write_text(g_json, "{\"model\": 1, \"model\": 2}");
    expect_fail(NULL, FINCH_E_FORMAT, "duplicate", "duplicate key");
    /* nesting deep enough to exhaust a recursive parser's stack */
    size_t depth = 200000;
    char *deep = malloc(2 * depth + 1);
    assert_non_null(deep);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = 0;
    write_text(g_json, deep);
    free(deep);
    expect_fail(NULL, FINCH_E_FORMAT, "malformed JSON", "deep nesting");
}

static void test_missing_file(void **state) {
    (void)state;
    unlink(g_json);
    expect_fail(NULL, FINCH_E_IO, "cannot open", "missing file");
    assert_int_equal(mkdir(g_json, 0700), 0);
    expect_fail(NULL, FINCH_E_IO, "not a regular file", "a directory");
    rmdir(g_json);
}

static void test_model(void **state) {
    (void)state;
    static const struct {
        const char *model, *fragment;
        finch_status st;
    } cases[] = {
        {"[]", "field 'model' is an array", FINCH_E_FORMAT},
        {"{\"type\": \"WordPiece\", \"vocab\": {}}", "'model.type' is 'WordPiece'",
         FINCH_E_UNSUPPORTED},
        {"{\"type\": \"Unigram\", \"vocab\": []}",
         "'pre_tokenizer.type' is 'ByteLevel': a SentencePiece-style file", FINCH_E_UNSUPPORTED},
        {"{\"vocab\": {\"a\": 0}, \"merges\": []}", "'model.type' is '(missing)'",
         FINCH_E_UNSUPPORTED},
        {"{\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": 0, \"<0x41>\": 1}, "
         "\"merges\": []}", "'model.byte_fallback' is true and token 1 is the byte token",
         FINCH_E_UNSUPPORTED},
        {"{\"type\": \"BPE\", \"byte_fallback\": 1, \"vocab\": {\"a\": 0}, \"merges\": []}",
         "'model.byte_fallback' is a number", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {\"a\": 0}, \"merges\": []}",
         "model.dropout", FINCH_E_UNSUPPORTED},
        {"{\"type\": \"BPE\", \"continuing_subword_prefix\": \"##\", \"vocab\": {\"a\": 0}, "
         "\"merges\": []}", "continuing_subword_prefix", FINCH_E_UNSUPPORTED},
        {"{\"type\": \"BPE\", \"vocab\": [\"a\"], \"merges\": []}", "'model.vocab' is an array",
         FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}", "'model.vocab' is empty",
         FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": \"0\"}, \"merges\": []}",
         "model.vocab['a']' is a string", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}", "is -1, outside",
         FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 4000000000}, \"merges\": []}", "outside",
         FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 1.5}, \"merges\": []}", "is 1.5, not an integer id",
         FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}",
         "id 0 is given to both", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 9000000}, \"merges\": []}",
         "ids reach 9000000 but only 2 tokens", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}}",
         "'model.merges' is missing", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a c\"]}",
         "'model.merges[0]': 'c' is not a token", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
         "\"merges\": [\"a b\", [\"x\", \"b\"]]}", "'model.merges[1]': 'x' is not a token",
         FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"ab\"]}",
         "has no space", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [7]}",
         "'model.merges[0]' is a number", FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
         "\"merges\": [[\"a\", \"b\", \"c\"]]}", "'model.merges[0]' is an array",
         FINCH_E_FORMAT},
        {"{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}",
         "merged text 'ab' is not a token", FINCH_E_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_tokenizer(cases[i].model, PRE_OK, "");
        expect_fail(NULL, cases[i].st, cases[i].fragment, cases[i].model);
    }
}

static void test_pre_tokenizer(void **state) {
    (void)state;
    static const struct {
        const char *pre, *fragment;
        finch_status st;
    } cases[] = {
        {"null", "has no ByteLevel step", FINCH_E_UNSUPPORTED},
        {"{\"type\": \"Metaspace\", \"replacement\": \"_\"}",
         "'pre_tokenizer.replacement' is '_': finch implements only U+2581", FINCH_E_UNSUPPORTED},
        {"{\"type\": \"Whitespace\"}", "'pre_tokenizer.type' is 'Whitespace'",
         FINCH_E_UNSUPPORTED},
        {"{\"add_prefix_space\": true}", "'pre_tokenizer.type' is missing", FINCH_E_FORMAT},
        {"\"ByteLevel\"", "'pre_tokenizer' is a string", FINCH_E_FORMAT},
        {"{\"type\": \"Sequence\", \"pretokenizers\": {}}", "pretokenizers' is an object",
         FINCH_E_FORMAT},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [" PRE_OK ", {\"type\": \"Digits\"}]}",
         "'pre_tokenizer.pretokenizers[1]': a Digits step after ByteLevel",
         FINCH_E_UNSUPPORTED},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
         "{\"Regex\": \"(\"}, \"behavior\": \"Isolated\", \"invert\": false}, " PRE_OK "]}",
         "does not compile at offset", FINCH_E_FORMAT},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
         "{\"Regex\": \"a\"}, \"behavior\": \"Removed\", \"invert\": false}, " PRE_OK "]}",
         "behavior' is 'Removed'", FINCH_E_UNSUPPORTED},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
         "{\"Regex\": \"a\"}, \"behavior\": \"Isolated\", \"invert\": true}, " PRE_OK "]}",
         "invert' is true", FINCH_E_UNSUPPORTED},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
         "{\"Regex\": 5}, \"behavior\": \"Isolated\"}, " PRE_OK "]}",
         "needs one string member", FINCH_E_FORMAT},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\"}, "
         "{\"type\": \"ByteLevel\", \"add_prefix_space\": true}]}",
         "add_prefix_space' is true after other steps", FINCH_E_UNSUPPORTED},
        {"{\"type\": \"ByteLevel\", \"use_regex\": \"yes\"}", "use_regex' is a string",
         FINCH_E_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_tokenizer(MODEL_OK, cases[i].pre, "");
        expect_fail(NULL, cases[i].st, cases[i].fragment, cases[i].pre);
    }
}

static void test_other_sections(void **state) {
    (void)state;
    static const struct {
        const char *extra, *fragment;
        finch_status st;
    } cases[] = {
        {", \"normalizer\": {\"type\": \"NFKC\"}", "'normalizer.type' is 'NFKC'",
         FINCH_E_UNSUPPORTED},
        {", \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Lowercase\"}]}",
         "'normalizer.normalizers[0].type' is 'Lowercase'", FINCH_E_UNSUPPORTED},
        {", \"decoder\": {\"type\": \"WordPiece\"}", "'decoder.type' is 'WordPiece'",
         FINCH_E_UNSUPPORTED},
        {", \"post_processor\": {\"type\": \"BertProcessing\"}", "is 'BertProcessing'",
         FINCH_E_UNSUPPORTED},
        {", \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
         "[{\"SpecialToken\": {\"id\": \"<zz>\"}}, {\"Sequence\": {\"id\": \"A\"}}]}",
         "'<zz>' is not a token", FINCH_E_FORMAT},
        {", \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
         "[{\"SpecialToken\": {\"id\": \"a\"}}]}", "holds no Sequence", FINCH_E_FORMAT},
        {", \"added_tokens\": {}", "'added_tokens' is an object", FINCH_E_FORMAT},
        {", \"added_tokens\": [{\"id\": -3, \"content\": \"<s>\"}]", "'added_tokens[0].id' is -3",
         FINCH_E_FORMAT},
        {", \"added_tokens\": [{\"id\": 3}]", "'added_tokens[0].content' is missing",
         FINCH_E_FORMAT},
        {", \"added_tokens\": [{\"id\": 3, \"content\": \"<s>\"}, {\"id\": 3, \"content\": "
         "\"</s>\"}]", "'added_tokens[1].id': id 3 appears twice", FINCH_E_FORMAT},
        {", \"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"lstrip\": \"no\"}]",
         "'added_tokens[0].lstrip' is a string", FINCH_E_FORMAT},
        {", \"added_tokens\": [{\"id\": 16000000, \"content\": \"<s>\"}]", "ids reach 16000000",
         FINCH_E_FORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_tokenizer(MODEL_OK, PRE_OK, cases[i].extra);
        expect_fail(NULL, cases[i].st, cases[i].fragment, cases[i].extra);
    }
}

static void test_config(void **state) {
    (void)state;
    static const struct {
        const char *cfg, *fragment;
        finch_status st;
    } cases[] = {
        {"{\"bos_token\": ", "malformed JSON", FINCH_E_FORMAT},
        {"{\"bos_token\": \"<nope>\"}", "'bos_token' is '<nope>', which is not a token",
         FINCH_E_FORMAT},
        {"{\"eos_token\": 5}", "'eos_token' is a number", FINCH_E_FORMAT},
        {"{\"eos_token\": {\"special\": true}}", "'eos_token' is an object", FINCH_E_FORMAT},
        {"{\"add_bos_token\": true}", "BOS is to be added but no bos token", FINCH_E_FORMAT},
        {"{\"add_eos_token\": \"true\"}", "'add_eos_token' is a string", FINCH_E_FORMAT},
        {"{\"chat_template\": 3}", "'chat_template' is a number", FINCH_E_FORMAT},
        {"{\"chat_template\": [{\"name\": \"default\"}]}", "'chat_template[0]' is an object",
         FINCH_E_FORMAT},
    };
    write_tokenizer(MODEL_OK, PRE_OK, "");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_fail(cases[i].cfg, cases[i].st, cases[i].fragment, cases[i].cfg);
}

/* ---- Precompiled normalizer ------------------------------------------------------- */

/* A SentencePiece-style Unigram file whose normalizer is Sequence[Precompiled(map)]. */
#define SPM_MODEL                                                                              \
    "{\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\", 0.0], [\"\xe2\x96\x81\", "  \
    "-1.0], [\"b\", -2.0], [\"a\", -3.0]]}"
#define SPM_META "{\"type\": \"Metaspace\", \"replacement\": \"\xe2\x96\x81\", \"prepend_scheme\": \"always\", \"split\": true}"

/* A darts-clone charsmap (as its raw bytes) mapping "a" to "b": 512 units, the root's
 * children at 256 ^ byte, the node of "a" at 0x161 with its leaf at 256 (string offset
 * 0), strings "b\0". Units are little-endian u32 after the u32 trie size. */
enum { CM_UNITS = 512 };
typedef struct {
    uint32_t unit[CM_UNITS];
    char strings[8];
    size_t strings_len;
    uint32_t trie_size;
} charsmap;

static void charsmap_good(charsmap *m) {
    memset(m, 0, sizeof *m);
    m->trie_size = 4 * CM_UNITS;
    m->unit[0] = 256u << 10;                          /* root: children at 256 ^ c */
    m->unit[256 ^ 'a'] = 0x61u << 10 | 1u << 8 | 'a'; /* label 'a', has a leaf at 0x161 ^ 0x61 */
    m->unit[256] = 0x80000000u | 0;                   /* the leaf: string offset 0 */
    memcpy(m->strings, "b", 2);
    m->strings_len = 2;
}

/* Writes the tokenizer file around m, base64-encoded. */
static void write_charsmap(const charsmap *m) {
    size_t n = 4 + 4 * CM_UNITS + m->strings_len;
    uint8_t *raw = malloc(n);
    char *b64 = malloc(4 * (n / 3 + 1) + 1), *json = malloc(4 * n + 512);
    assert_true(raw && b64 && json);
    for (int k = 0; k < 4; k++) raw[k] = (uint8_t)(m->trie_size >> (8 * k));
    for (size_t i = 0; i < CM_UNITS; i++)
        for (int k = 0; k < 4; k++) raw[4 + 4 * i + k] = (uint8_t)(m->unit[i] >> (8 * k));
    memcpy(raw + 4 + 4 * CM_UNITS, m->strings, m->strings_len);
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? (uint32_t)raw[i + 1] << 8 : 0) |
                     (i + 2 < n ? raw[i + 2] : 0);
        b64[o++] = abc[v >> 18 & 63];
        b64[o++] = abc[v >> 12 & 63];
        b64[o++] = i + 1 < n ? abc[v >> 6 & 63] : '=';
        b64[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    b64[o] = 0;
    snprintf(json, 4 * n + 512,
             ", \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": "
             "\"Precompiled\", \"precompiled_charsmap\": \"%s\"}]}, \"decoder\": %s",
             b64, SPM_META);
    write_tokenizer(SPM_MODEL, SPM_META, json);
    free(raw);
    free(b64);
    free(json);
}

static void test_precompiled(void **state) {
    (void)state;
    charsmap m;
    charsmap_good(&m);
    write_charsmap(&m);
    finch_tokenizer *tok;
    finch_err err;
    if (finch_tokenizer_from_hf_json(g_json, NULL, &tok, &err)) fail_msg("%s", err.msg);
    int32_t *ids;
    int64_t n;
    assert_int_equal(finch_tokenize(tok, "a", 1, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(n, 2); /* "a" normalized to "b": "▁" "b" */
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    free(ids);
    finch_tokenizer_free(tok);

    static const char *const field = "'normalizer.normalizers[0].precompiled_charsmap'";
    char want[160];
    snprintf(want, sizeof want, "%s: trie size", field);
    m.trie_size = 0;
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, want, "trie size 0");
    m.trie_size = 6;
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "trie size 6", "trie size not a multiple of 4");
    m.trie_size = 4 * CM_UNITS + 4;
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "trie size 2052", "trie size past the end");

    charsmap_good(&m);
    m.unit[0] = 4096u << 10; /* the root's children far outside the array */
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "outside the 512 units", "root offset out of range");
    charsmap_good(&m);
    m.unit[256 ^ 'a'] = 0x7000u << 10 | 1u << 8 | 'a'; /* its leaf outside the array */
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "trie leaf", "leaf out of range");
    charsmap_good(&m);
    m.unit[256] = 0x80000000u | 100; /* a string offset past the strings */
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "string offset 100", "string offset out of range");
    charsmap_good(&m);
    memcpy(m.strings, "\xc3\xa9", 3); /* "é": offset 1 is inside the character */
    m.strings_len = 3;
    m.unit[256] = 0x80000000u | 1;
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "not a character start", "string offset mid-character");
    charsmap_good(&m);
    memcpy(m.strings, "\xff", 2);
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "not UTF-8", "strings not UTF-8");
    /* every child of the root leads back to the root's children: cycles */
    charsmap_good(&m);
    for (uint32_t c = 1; c < 256; c++) m.unit[256 ^ c] = c << 10 | c;
    write_charsmap(&m);
    expect_fail(NULL, FINCH_E_FORMAT, "more nodes than", "cyclic trie");

    static const struct {
        const char *map, *fragment;
    } text_cases[] = {
        {"\"AB$=\"", "character 2 (0x24) is not base64"},
        {"\"ABC\"", "not a multiple of 4"},
        {"\"AAA=\"", "too short"},
        {"3", "'normalizer.normalizers[0].precompiled_charsmap' is a number"},
    };
    for (size_t i = 0; i < sizeof text_cases / sizeof text_cases[0]; i++) {
        char extra[512];
        snprintf(extra, sizeof extra,
                 ", \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": "
                 "\"Precompiled\", \"precompiled_charsmap\": %s}]}, \"decoder\": %s",
                 text_cases[i].map, SPM_META);
        write_tokenizer(SPM_MODEL, SPM_META, extra);
        expect_fail(NULL, FINCH_E_FORMAT, text_cases[i].fragment, text_cases[i].map);
    }
    char extra[512];
    snprintf(extra, sizeof extra,
             ", \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"\\\\s+\"}, "
             "\"content\": \" \"}, \"decoder\": %s",
             SPM_META);
    write_tokenizer(SPM_MODEL, SPM_META, extra);
    expect_fail(NULL, FINCH_E_UNSUPPORTED, "'normalizer.pattern'", "a Replace regex");
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/finch-hftok-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_json, sizeof g_json, "%s/tokenizer.json", g_dir);
    snprintf(g_cfg, sizeof g_cfg, "%s/tokenizer_config.json", g_dir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(g_json);
    unlink(g_cfg);
    rmdir(g_dir);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_base),    cmocka_unit_test(test_json_syntax),
        cmocka_unit_test(test_missing_file),  cmocka_unit_test(test_model),
        cmocka_unit_test(test_pre_tokenizer), cmocka_unit_test(test_other_sections),
        cmocka_unit_test(test_config),        cmocka_unit_test(test_precompiled),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
