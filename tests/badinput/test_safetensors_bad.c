/*
 * test_safetensors_bad.c: the safetensors reader on hostile and broken files.
 * Table-driven: each case is a header (JSON text) and a data-section length, built into a
 * file in memory and opened with finch_st_open_memory; the status, that the message names
 * the file and a byte offset, and a fragment saying what is wrong are asserted. Then every
 * truncation of a valid file and of its header alone, and a few cases through real paths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h" /* read_file */

#include "io/io.h"

#define NAME "bad.safetensors"
#define F32(off) "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" off

/* 8-byte length, header, data_len bytes of data. *size gets the total. */
static uint8_t *build(uint64_t header_len, const char *header, size_t header_bytes,
                      size_t data_len, size_t *size) {
    *size = 8 + header_bytes + data_len;
    uint8_t *p = calloc(1, *size);
    assert_non_null(p);
    for (int k = 0; k < 8; k++) p[k] = (uint8_t)(header_len >> (8 * k));
    memcpy(p + 8, header, header_bytes);
    for (size_t i = 0; i < data_len; i++) p[8 + header_bytes + i] = (uint8_t)i;
    return p;
}

static void expect_fail(const uint8_t *p, size_t n, finch_status code, const char *fragment,
                        const char *label) {
    finch_st *st = NULL;
    finch_err err = {0};
    finch_status s = finch_st_open_memory(p, n, NAME, &st, &err);
    if (s != code) fail_msg("%s: status %d, expected %d (%s)", label, s, code, err.msg);
    assert_null(st);
    if (strncmp(err.msg, NAME ": offset 0x", strlen(NAME ": offset 0x")) != 0)
        fail_msg("%s: message does not name the file and offset: %s", label, err.msg);
    if (fragment && !strstr(err.msg, fragment))
        fail_msg("%s: message lacks '%s': %s", label, fragment, err.msg);
}

typedef struct {
    const char *label;
    const char *header;
    size_t data_len;
    finch_status code;
    const char *fragment;
} header_case;

static const header_case cases[] = {
    {"not JSON", "{\"a\":", 0, FINCH_E_FORMAT, "not valid JSON"},
    {"garbage", "hello", 0, FINCH_E_FORMAT, "not valid JSON"},
    {"empty header", "", 0, FINCH_E_FORMAT, "not valid JSON"},
    {"trailing garbage", "{} x", 0, FINCH_E_FORMAT, "not valid JSON"},
    {"not UTF-8", "{\"a\xff\":{" F32("[0,4]") "}}", 4, FINCH_E_FORMAT, "not valid JSON"},
    {"NUL in a name", "{\"a\\u0000b\":{" F32("[0,4]") "}}", 4, FINCH_E_FORMAT, "not valid JSON"},
    {"array", "[1, 2]", 0, FINCH_E_FORMAT, "not an object"},
    {"string", "\"x\"", 0, FINCH_E_FORMAT, "not valid JSON"},
    {"entry a number", "{\"a\":5}", 0, FINCH_E_FORMAT, "tensor 'a': entry is not an object"},
    {"dtype missing", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, FINCH_E_FORMAT,
     "tensor 'a': field 'dtype' is missing"},
    {"dtype a number", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "'dtype' is not a string"},
    {"dtype unknown", "{\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "unknown dtype 'F17'"},
    {"dtype lower case", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "unknown dtype 'f32'"},
    {"dtype sub-byte", "{\"a\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1,
     FINCH_E_UNSUPPORTED, "not supported"},
    {"shape missing", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, FINCH_E_FORMAT,
     "field 'shape' is missing"},
    {"shape an object", "{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "field 'shape' is not an array"},
    {"shape negative", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "dimension 0 is not a non-negative integer"},
    {"shape fractional", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "dimension 1 is not"},
    {"shape a string", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "dimension 0 is not"},
    {"shape element count overflow",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "element count overflows at dimension 1"},
    {"shape byte size overflow",
     "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "overflow a size"},
    {"shape integer too big for JSON",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "not valid JSON"},
    {"shape 9 dims",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "9 dimensions, at most 8"},
    {"offsets missing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, FINCH_E_FORMAT,
     "'data_offsets' is missing"},
    {"offsets one number", "{\"a\":{" F32("[0]") "}}", 4, FINCH_E_FORMAT,
     "'data_offsets' is malformed"},
    {"offsets three numbers", "{\"a\":{" F32("[0,4,8]") "}}", 4, FINCH_E_FORMAT,
     "'data_offsets' is malformed"},
    {"offsets negative", "{\"a\":{" F32("[-4,0]") "}}", 4, FINCH_E_FORMAT,
     "'data_offsets' is malformed"},
    {"offsets strings", "{\"a\":{" F32("[\"0\",\"4\"]") "}}", 4, FINCH_E_FORMAT,
     "'data_offsets' is malformed"},
    {"offsets reversed", "{\"a\":{" F32("[4,0]") "}}", 4, FINCH_E_FORMAT, "begin 4 > end 0"},
    {"offsets out of range", "{\"a\":{" F32("[0,4]") "}}", 3, FINCH_E_FORMAT,
     "end 4 is past the data section (3 bytes"},
    {"offsets far out of range", "{\"a\":{" F32("[9223372036854775803,9223372036854775807]") "}}",
     4, FINCH_E_FORMAT, "past the data section"},
    {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     FINCH_E_FORMAT, "holds 4 bytes, but 2 elements of F32 need 8"},
    {"empty tensor with bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,4]}}",
     4, FINCH_E_FORMAT, "holds 4 bytes, but 0 elements"},
    {"overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{"
                "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, FINCH_E_FORMAT, "tensor 'b': data [4, 12) overlaps tensor 'a'"},
    {"same range twice", "{\"a\":{" F32("[0,4]") "},\"b\":{" F32("[0,4]") "}}", 4,
     FINCH_E_FORMAT, "overlaps tensor"},
    {"empty tensor inside another",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"e\":{"
     "\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
     8, FINCH_E_FORMAT, "tensor 'e': data [4, 4) overlaps tensor 'a'"},
    {"hole between", "{\"a\":{" F32("[0,4]") "},\"b\":{" F32("[8,12]") "}}", 12,
     FINCH_E_FORMAT, "bytes [4, 8) belong to no tensor (a hole before tensor 'b')"},
    {"hole at start", "{\"a\":{" F32("[4,8]") "}}", 8, FINCH_E_FORMAT,
     "bytes [0, 4) belong to no tensor"},
    {"trailing bytes", "{\"a\":{" F32("[0,4]") "}}", 8, FINCH_E_FORMAT,
     "4 bytes after the last tensor"},
    {"no tensors, trailing bytes", "{}", 3, FINCH_E_FORMAT, "3 bytes after the last tensor"},
    {"metadata an array", "{\"__metadata__\":[1]}", 0, FINCH_E_FORMAT,
     "'__metadata__' is not an object"},
    {"metadata a string", "{\"__metadata__\":\"pt\"}", 0, FINCH_E_FORMAT,
     "'__metadata__' is not an object"},
    {"metadata value a number", "{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", 0,
     FINCH_E_FORMAT, "value of 'n' is not a string"},
    {"metadata value an object", "{\"__metadata__\":{\"x\":{\"y\":\"z\"}}}", 0, FINCH_E_FORMAT,
     "value of 'x' is not a string"},
    {"duplicate tensor", "{\"a\":{" F32("[0,4]") "},\"a\":{" F32("[4,8]") "}}", 8,
     FINCH_E_FORMAT, "duplicate"},
    {"duplicate metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, FINCH_E_FORMAT,
     "duplicate"},
    {"duplicate field", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],"
                        "\"data_offsets\":[0,4]}}",
     4, FINCH_E_FORMAT, "duplicate"},
};

static void test_header_cases(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const header_case *c = &cases[i];
        size_t n, hn = strlen(c->header);
        uint8_t *p = build(hn, c->header, hn, c->data_len, &n);
        expect_fail(p, n, c->code, c->fragment, c->label);
        free(p);
    }
}

/* Where a tensor's error is reported: at its key in the header. */
static void test_offset_points_at_key(void **state) {
    (void)state;
    const char *h = "{\"a\":{" F32("[0,4]") "},\"bad\":{\"dtype\":\"X\",\"shape\":[1],"
                    "\"data_offsets\":[4,8]}}";
    size_t n, hn = strlen(h);
    uint8_t *p = build(hn, h, hn, 8, &n);
    char want[64];
    snprintf(want, sizeof want, NAME ": offset 0x%zx: tensor 'bad'",
             (size_t)(8 + (strstr(h, "\"bad\"") - h)));
    expect_fail(p, n, FINCH_E_FORMAT, want, "offset of the key");
    free(p);
}

/* Headers that must be accepted: empty object, whitespace around, metadata null,
 * unknown fields in an entry (the reference reader ignores them). */
static void test_valid_edges(void **state) {
    (void)state;
    static const char *const ok[] = {
        "{}",
        "  {}   ",
        "{\"__metadata__\":null}",
        "{\"__metadata__\":{}}",
        "{\"a\":{" F32("[0,4]") ",\"extra\":[1]}}",
        "{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},\"a\":{" F32("[0,4]") "}}",
    };
    static const size_t data[] = {0, 0, 0, 0, 4, 4};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        size_t n, hn = strlen(ok[i]);
        uint8_t *p = build(hn, ok[i], hn, data[i], &n);
        finch_st *st = NULL;
        finch_err err = {0};
        if (finch_st_open_memory(p, n, NAME, &st, &err) != FINCH_OK)
            fail_msg("'%s': %s", ok[i], err.msg);
        finch_st_close(st);
        free(p);
    }
}

static void test_header_length(void **state) {
    (void)state;
    size_t n;
    uint8_t *p = build(FINCH_ST_MAX_HEADER + 1ull, "{}", 2, 0, &n);
    expect_fail(p, n, FINCH_E_FORMAT, "header length 100000001 is over the limit", "limit");
    free(p);
    p = build(UINT64_MAX, "{}", 2, 0, &n);
    expect_fail(p, n, FINCH_E_FORMAT, "over the limit", "u64 max");
    free(p);
    p = build(1ull << 63, "{}", 2, 0, &n);
    expect_fail(p, n, FINCH_E_FORMAT, "over the limit", "2^63");
    free(p);
    p = build(100, "{}", 2, 0, &n);
    expect_fail(p, n, FINCH_E_FORMAT, "header length 100 is past the end of the file", "past end");
    free(p);
    p = build(1, "{}", 2, 0, &n); /* header "{" then "}" as data */
    expect_fail(p, n, FINCH_E_FORMAT, "not valid JSON", "short length");
    free(p);
    for (size_t len = 0; len < 8; len++) {
        uint8_t small[8] = {2, 0, 0, 0, 0, 0, 0, 0};
        expect_fail(len ? small : NULL, len, FINCH_E_FORMAT, "shorter than the 8-byte", "tiny");
    }
}

/* Every prefix of a valid file fails cleanly, and so does every prefix of its header given
 * as the whole header. */
static void test_truncations(void **state) {
    (void)state;
    size_t size;
    uint8_t *file = read_file(FINCH_FIXTURES "/safetensors/basic.safetensors", &size);
    size_t hn = 0;
    for (int k = 7; k >= 0; k--) hn = hn << 8 | file[k];
    for (size_t len = 0; len < size; len++) {
        uint8_t *p = malloc(len ? len : 1);
        memcpy(p, file, len);
        char label[64];
        snprintf(label, sizeof label, "prefix %zu of %zu", len, size);
        expect_fail(p, len, FINCH_E_FORMAT, NULL, label);
        free(p);
    }
    for (size_t k = 0; k < hn; k++) {
        size_t n;
        uint8_t *p = build(k, (const char *)file + 8, k, 0, &n);
        char label[64];
        snprintf(label, sizeof label, "header cut at %zu of %zu", k, hn);
        expect_fail(p, n, FINCH_E_FORMAT, NULL, label);
        free(p);
    }
    /* the full header with a data section one byte short, and one byte long */
    uint8_t *longer = malloc(size + 1);
    memcpy(longer, file, size);
    longer[size] = 0;
    expect_fail(longer, size + 1, FINCH_E_FORMAT, "1 bytes after the last tensor", "one extra");
    expect_fail(longer, size - 1, FINCH_E_FORMAT, "past the data section", "one short");
    free(longer);
    free(file);
}

static void test_paths(void **state) {
    (void)state;
    finch_st *st = NULL;
    finch_err err = {0};
    assert_int_equal(finch_st_open(FINCH_FIXTURES "/safetensors", &st, &err), FINCH_E_IO);
    assert_null(st);
    assert_int_equal(finch_st_open(FINCH_FIXTURES "/safetensors/missing.safetensors", &st, &err),
                     FINCH_E_IO);
    assert_non_null(strstr(err.msg, "missing.safetensors"));
    const char *tmp = FINCH_BINARY_DIR "/test_safetensors_bad.tmp";
    FILE *f = fopen(tmp, "wb");
    assert_non_null(f);
    fwrite("\x10\0\0\0\0\0\0\0{\"a\":", 1, 13, f);
    fclose(f);
    assert_int_equal(finch_st_open(tmp, &st, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, tmp));
    f = fopen(tmp, "wb");
    fclose(f);
    assert_int_equal(finch_st_open(tmp, &st, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "shorter than"));
    remove(tmp);
    finch_st_close(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_cases),   cmocka_unit_test(test_offset_points_at_key),
        cmocka_unit_test(test_valid_edges),    cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_truncations),    cmocka_unit_test(test_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
