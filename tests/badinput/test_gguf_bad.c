/*
 * test_gguf_bad.c: the GGUF reader on hostile and broken files. Table-driven: each case
 * builds a small file in memory, opens it with finch_gguf_open_memory and asserts the
 * status, that the message names the file and the byte offset, and a fragment saying what
 * is wrong. Then every truncation of a valid file (a built one and the gguf package's
 * fixture), and a few cases through real paths (a directory, a missing file, an empty file,
 * a truncated file).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h" /* read_file */

#include "io/io.h"

#define NAME "bad.gguf"

/* ---- building files ----------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} gbuf;

static void put(gbuf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void le(gbuf *b, uint64_t v, int n) {
    for (int k = 0; k < n; k++) {
        uint8_t c = (uint8_t)(v >> (8 * k));
        put(b, &c, 1);
    }
}
static void u8(gbuf *b, uint8_t v) { le(b, v, 1); }
static void u32(gbuf *b, uint32_t v) { le(b, v, 4); }
static void u64(gbuf *b, uint64_t v) { le(b, v, 8); }
static void str(gbuf *b, const char *s) {
    u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void zeros(gbuf *b, size_t n) {
    for (size_t i = 0; i < n; i++) u8(b, 0);
}
static void pad(gbuf *b, size_t align) { zeros(b, (align - b->n % align) % align); }

static void header(gbuf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    u32(b, version);
    u64(b, n_tensors);
    u64(b, n_kv);
}

static void kv_u32(gbuf *b, const char *key, uint32_t v) {
    str(b, key);
    u32(b, FINCH_GGUF_UINT32);
    u32(b, v);
}

static void kv_str(gbuf *b, const char *key, const char *v) {
    str(b, key);
    u32(b, FINCH_GGUF_STRING);
    str(b, v);
}

static void tinfo(gbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                  uint64_t offset) {
    str(b, name);
    u32(b, n_dims);
    for (uint32_t k = 0; k < n_dims; k++) u64(b, ne[k]);
    u32(b, type);
    u64(b, offset);
}

/* A file with one tensor info and data_bytes of data after the padding. */
static void one_tensor(gbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset, size_t data_bytes) {
    header(b, 3, 1, 0);
    tinfo(b, name, n_dims, ne, type, offset);
    pad(b, 32);
    zeros(b, data_bytes);
}

/* A valid file: four pairs of different types, two tensors, data, trailing padding. */
static size_t valid_data_end; /* end of the last tensor's data in valid_file */
static void valid_file(gbuf *b) {
    header(b, 3, 2, 4);
    kv_str(b, "general.architecture", "llama");
    kv_u32(b, "llama.block_count", 1);
    str(b, "tokenizer.ggml.tokens");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, FINCH_GGUF_STRING);
    u64(b, 2);
    str(b, "a");
    str(b, "bc");
    str(b, "x.flag");
    u32(b, FINCH_GGUF_BOOL);
    u8(b, 1);
    tinfo(b, "a", 2, (const uint64_t[]){32, 2}, FINCH_DTYPE_F32, 0);
    tinfo(b, "b", 1, (const uint64_t[]){32}, FINCH_DTYPE_Q8_0, 256);
    pad(b, 32);
    for (int i = 0; i < 256 + 34; i++) u8(b, (uint8_t)(i * 7 + 1));
    valid_data_end = b->n;
    pad(b, 32);
}

/* Offsets in files made by one_kv (header, then key "a.b"): */
#define KV_AT "offset 0x18:"    /* the key */
#define TYPE_AT "offset 0x23:"  /* its value type: 0x18 + 8 + 3 */
#define VALUE_AT "offset 0x27:" /* its value */
/* and in files made by one_tensor (name "t"): */
#define NDIMS_AT "offset 0x21:" /* n_dims: 0x18 + 8 + 1 */

static void one_kv(gbuf *b) { header(b, 3, 0, 1); }

/* ---- the cases ---------------------------------------------------------------------- */

static void bad_magic(gbuf *b) {
    valid_file(b);
    memcpy(b->p, "GGML", 4);
}
static void version0(gbuf *b) { header(b, 0, 0, 0); }
static void version1(gbuf *b) { header(b, 1, 0, 0); }
static void version4(gbuf *b) { header(b, 4, 0, 0); }
static void version_swapped(gbuf *b) { header(b, 0x03000000, 0, 0); }
static void huge_tensor_count(gbuf *b) {
    header(b, 3, (uint64_t)1 << 60, 0);
    zeros(b, 100);
}
static void huge_kv_count(gbuf *b) {
    header(b, 3, 0, (uint64_t)1 << 60);
    zeros(b, 100);
}
static void max_counts(gbuf *b) {
    header(b, 3, UINT64_MAX, UINT64_MAX);
    zeros(b, 100);
}
static void counts_just_too_big(gbuf *b) {
    header(b, 3, 2, 2); /* needs at least 2*32 + 2*14 bytes */
    zeros(b, 2 * 32 + 2 * 14 - 1);
}
static void key_past_end(gbuf *b) {
    one_kv(b);
    u64(b, 1000);
    put(b, "abc", 3);
    zeros(b, 3); /* 14 bytes follow the header: enough for one pair by the count check */
}
static void key_too_long(gbuf *b) {
    one_kv(b);
    u64(b, 65536);
    zeros(b, 65536 + 20);
}
static void empty_key(gbuf *b) {
    one_kv(b);
    kv_u32(b, "", 1);
}
static void key_with_nul(gbuf *b) {
    one_kv(b);
    u64(b, 3);
    put(b, "a\0b", 3);
    u32(b, FINCH_GGUF_UINT8);
    u8(b, 1);
}
static void string_past_end(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_STRING);
    u64(b, 50);
    put(b, "xy", 2);
}
static void string_too_long(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_STRING);
    u64(b, (1u << 30) + 1);
    zeros(b, 16);
}
static void array_past_end(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, FINCH_GGUF_INT32);
    u64(b, 1000);
    zeros(b, 8);
}
static void array_too_long(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, FINCH_GGUF_UINT8);
    u64(b, (1u << 30) + 1);
    zeros(b, 16);
}
static void string_array_past_end(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, FINCH_GGUF_STRING);
    u64(b, 1000);
    str(b, "x");
}
static void string_array_element_past_end(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, FINCH_GGUF_STRING);
    u64(b, 2);
    str(b, "ab");
    u64(b, 99);
    zeros(b, 10);
}
static void nested_array(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, FINCH_GGUF_ARRAY);
    u64(b, 1);
    u32(b, FINCH_GGUF_UINT8);
    u64(b, 1);
    u8(b, 0);
}
static void unknown_value_type(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, 13);
    u64(b, 0);
}
static void unknown_element_type(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, 99);
    u64(b, 0);
}
static void bool_value_2(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_BOOL);
    u8(b, 2);
}
static void bool_array_2(gbuf *b) {
    one_kv(b);
    str(b, "a.b");
    u32(b, FINCH_GGUF_ARRAY);
    u32(b, FINCH_GGUF_BOOL);
    u64(b, 3);
    u8(b, 1);
    u8(b, 0);
    u8(b, 2);
}
static void duplicate_key(gbuf *b) {
    header(b, 3, 0, 3);
    kv_u32(b, "a.b", 1);
    kv_u32(b, "a.c", 1);
    kv_str(b, "a.b", "again");
}
static void alignment_u64(gbuf *b) {
    one_kv(b);
    str(b, "general.alignment");
    u32(b, FINCH_GGUF_UINT64);
    u64(b, 32);
}
static void alignment_48(gbuf *b) {
    one_kv(b);
    kv_u32(b, "general.alignment", 48);
}
static void alignment_0(gbuf *b) {
    one_kv(b);
    kv_u32(b, "general.alignment", 0);
}
static void alignment_4(gbuf *b) {
    one_kv(b);
    kv_u32(b, "general.alignment", 4);
}
static const uint64_t ne32[1] = {32};
static void tensor_type_99(gbuf *b) { one_tensor(b, "t", 1, ne32, 99, 0, 128); }
static void tensor_type_4(gbuf *b) { one_tensor(b, "t", 1, ne32, 4, 0, 128); }
static void tensor_type_31(gbuf *b) { one_tensor(b, "t", 1, ne32, 31, 0, 128); }
static void tensor_type_max(gbuf *b) { one_tensor(b, "t", 1, ne32, UINT32_MAX, 0, 128); }
static void n_dims_5(gbuf *b) {
    one_tensor(b, "t", 5, (const uint64_t[]){1, 1, 1, 1, 1}, FINCH_DTYPE_F32, 0, 32);
}
static void n_dims_0(gbuf *b) {
    header(b, 3, 1, 0);
    str(b, "t");
    u32(b, 0);
    u32(b, FINCH_DTYPE_F32);
    u64(b, 0);
    zeros(b, 64);
}
static void n_dims_huge(gbuf *b) {
    header(b, 3, 1, 0);
    str(b, "t");
    u32(b, UINT32_MAX);
    zeros(b, 64);
}
static void dim_negative(gbuf *b) {
    one_tensor(b, "t", 2, (const uint64_t[]){4, UINT64_MAX}, FINCH_DTYPE_F32, 0, 32);
}
static void dims_overflow(gbuf *b) {
    one_tensor(b, "t", 3, (const uint64_t[]){32, (uint64_t)1 << 32, (uint64_t)1 << 32},
               FINCH_DTYPE_F32, 0, 32);
}
static void bytes_overflow(gbuf *b) {
    one_tensor(b, "t", 1, (const uint64_t[]){(uint64_t)1 << 62}, FINCH_DTYPE_F32, 0, 32);
}
static void block_multiple(gbuf *b) {
    one_tensor(b, "t", 2, (const uint64_t[]){33, 2}, FINCH_DTYPE_Q4_0, 0, 64);
}
static void k_block_multiple(gbuf *b) {
    one_tensor(b, "t", 2, (const uint64_t[]){576, 2}, FINCH_DTYPE_Q4_K, 0, 64);
}
static void misaligned_offset(gbuf *b) { one_tensor(b, "t", 1, ne32, FINCH_DTYPE_F32, 16, 256); }
static void misaligned_64(gbuf *b) {
    header(b, 3, 1, 1);
    kv_u32(b, "general.alignment", 64);
    tinfo(b, "t", 1, ne32, FINCH_DTYPE_F32, 32);
    pad(b, 64);
    zeros(b, 256);
}
static void data_past_eof(gbuf *b) {
    one_tensor(b, "t", 1, (const uint64_t[]){64}, FINCH_DTYPE_F32, 0, 128);
}
static void offset_past_eof(gbuf *b) {
    one_tensor(b, "t", 1, ne32, FINCH_DTYPE_F32, (uint64_t)1 << 63, 128);
}
static void offset_wraps(gbuf *b) {
    one_tensor(b, "t", 1, ne32, FINCH_DTYPE_F32, UINT64_MAX - 31, 128);
}
static void overlap(gbuf *b) {
    header(b, 3, 2, 0);
    tinfo(b, "a", 1, (const uint64_t[]){16}, FINCH_DTYPE_F32, 0);
    tinfo(b, "b", 1, (const uint64_t[]){16}, FINCH_DTYPE_F32, 32);
    pad(b, 32);
    zeros(b, 128);
}
static void overlap_out_of_order(gbuf *b) {
    header(b, 3, 3, 0);
    tinfo(b, "a", 1, (const uint64_t[]){8}, FINCH_DTYPE_F32, 192);
    tinfo(b, "b", 1, (const uint64_t[]){8}, FINCH_DTYPE_F32, 64);
    tinfo(b, "c", 1, (const uint64_t[]){64}, FINCH_DTYPE_F32, 0); /* 0..256 covers a and b */
    pad(b, 32);
    zeros(b, 256);
}
static void duplicate_tensor(gbuf *b) {
    header(b, 3, 2, 0);
    tinfo(b, "t", 1, ne32, FINCH_DTYPE_F32, 0);
    tinfo(b, "t", 1, ne32, FINCH_DTYPE_F32, 128);
    pad(b, 32);
    zeros(b, 256);
}
static void tensor_name_64(gbuf *b) {
    one_tensor(b, "0123456789012345678901234567890123456789012345678901234567890123", 1, ne32,
               FINCH_DTYPE_F32, 0, 128);
}
static void tensor_name_nul(gbuf *b) {
    header(b, 3, 1, 0);
    u64(b, 2);
    put(b, "t\0", 2);
    u32(b, 1);
    u64(b, 32);
    u32(b, FINCH_DTYPE_F32);
    u64(b, 0);
    pad(b, 32);
    zeros(b, 128);
}
static void no_data_padding(gbuf *b) {
    header(b, 3, 1, 0);
    tinfo(b, "t", 1, ne32, FINCH_DTYPE_F32, 0); /* ends at 0x39, data would start at 0x40 */
}

typedef struct {
    const char *name;
    void (*build)(gbuf *b);
    finch_status status;
    const char *fragment; /* what is wrong */
    const char *where;    /* "offset 0x..:" expected, or NULL for just "offset 0x" */
} bad_case;

static const bad_case bad_cases[] = {
    {"bad magic", bad_magic, FINCH_E_FORMAT, "not a GGUF file", "offset 0x0:"},
    {"version 0", version0, FINCH_E_FORMAT, "unsupported GGUF version 0, expected 2 or 3",
     "offset 0x4:"},
    {"version 1", version1, FINCH_E_FORMAT, "version 1 is no longer supported", "offset 0x4:"},
    {"version 4", version4, FINCH_E_FORMAT, "unsupported GGUF version 4", "offset 0x4:"},
    {"byte-swapped version", version_swapped, FINCH_E_FORMAT, "big-endian", "offset 0x4:"},
    {"tensor count 2^60", huge_tensor_count, FINCH_E_FORMAT,
     "header claims 1152921504606846976 tensors", "offset 0x8:"},
    {"kv count 2^60", huge_kv_count, FINCH_E_FORMAT, "1152921504606846976 key/value pairs",
     "offset 0x8:"},
    {"counts at the maximum", max_counts, FINCH_E_FORMAT, "header claims", "offset 0x8:"},
    {"counts one byte too many", counts_just_too_big, FINCH_E_FORMAT, "more than the 91 bytes",
     "offset 0x8:"},
    {"key length past the end", key_past_end, FINCH_E_FORMAT, "truncated: key needs 1000 bytes",
     "offset 0x20:"},
    {"key longer than 65535", key_too_long, FINCH_E_FORMAT, "key of 65536 bytes, at most 65535",
     KV_AT},
    {"empty key", empty_key, FINCH_E_FORMAT, "empty key", KV_AT},
    {"key with a NUL", key_with_nul, FINCH_E_FORMAT, "contains a NUL byte", KV_AT},
    {"string past the end", string_past_end, FINCH_E_FORMAT,
     "truncated: string value needs 50 bytes, 2 left", NULL},
    {"string longer than 2^30", string_too_long, FINCH_E_FORMAT,
     "string value of 1073741825 bytes, at most 1073741824", VALUE_AT},
    {"array count past the end", array_past_end, FINCH_E_FORMAT,
     "truncated: array data needs 4000 bytes, 8 left", NULL},
    {"array longer than 2^30", array_too_long, FINCH_E_FORMAT,
     "array of 1073741825 elements, at most 1073741824", NULL},
    {"string array count past the end", string_array_past_end, FINCH_E_FORMAT,
     "array of 1000 strings needs at least 8000 bytes", NULL},
    {"string array element past the end", string_array_element_past_end, FINCH_E_FORMAT,
     "truncated: array string needs 99 bytes", NULL},
    {"nested array", nested_array, FINCH_E_FORMAT, "key 'a.b': nested arrays", VALUE_AT},
    {"unknown value type", unknown_value_type, FINCH_E_FORMAT, "key 'a.b': unknown value type 13",
     TYPE_AT},
    {"unknown array element type", unknown_element_type, FINCH_E_FORMAT,
     "unknown array element type 99", VALUE_AT},
    {"bool value 2", bool_value_2, FINCH_E_FORMAT, "bool value 2, expected 0 or 1", VALUE_AT},
    {"bool array element 2", bool_array_2, FINCH_E_FORMAT, "bool array element 2 is 2", NULL},
    {"duplicate key", duplicate_key, FINCH_E_FORMAT, "duplicate key 'a.b'", NULL},
    {"alignment as uint64", alignment_u64, FINCH_E_FORMAT,
     "'general.alignment' has type uint64, expected uint32", NULL},
    {"alignment 48", alignment_48, FINCH_E_FORMAT, "is 48, expected a power of two",
     "offset 0x35:"},
    {"alignment 0", alignment_0, FINCH_E_FORMAT, "is 0, expected a power of two", NULL},
    {"alignment 4", alignment_4, FINCH_E_FORMAT, "is 4, expected a power of two of at least 8",
     NULL},
    {"tensor type 99", tensor_type_99, FINCH_E_FORMAT,
     "tensor 't': unknown or retired tensor type id 99", NULL},
    {"retired tensor type 4", tensor_type_4, FINCH_E_FORMAT, "tensor type id 4", NULL},
    {"retired tensor type 31", tensor_type_31, FINCH_E_FORMAT, "tensor type id 31", NULL},
    {"tensor type 2^32-1", tensor_type_max, FINCH_E_FORMAT, "tensor type id 4294967295", NULL},
    {"5 dimensions", n_dims_5, FINCH_E_FORMAT, "tensor 't': 5 dimensions, expected 1 to 4",
     NDIMS_AT},
    {"0 dimensions", n_dims_0, FINCH_E_FORMAT, "0 dimensions", NDIMS_AT},
    {"2^32-1 dimensions", n_dims_huge, FINCH_E_FORMAT, "4294967295 dimensions", NDIMS_AT},
    {"negative dimension", dim_negative, FINCH_E_FORMAT, "dimension 1 is -1, expected >= 0",
     "offset 0x2d:"},
    {"element count overflow", dims_overflow, FINCH_E_FORMAT, "element count overflows int64",
     NULL},
    {"byte size overflow", bytes_overflow, FINCH_E_FORMAT, "byte size overflows", NULL},
    {"row not a multiple of 32", block_multiple, FINCH_E_FORMAT,
     "row length 33 is not a multiple of the q4_0 block size 32", NULL},
    {"row not a multiple of 256", k_block_multiple, FINCH_E_FORMAT,
     "row length 576 is not a multiple of the q4_k block size 256", NULL},
    {"misaligned offset", misaligned_offset, FINCH_E_FORMAT,
     "data offset 0x10 is not a multiple of the alignment 32", NULL},
    {"misaligned for alignment 64", misaligned_64, FINCH_E_FORMAT,
     "data offset 0x20 is not a multiple of the alignment 64", NULL},
    {"data past the end", data_past_eof, FINCH_E_FORMAT, "lies past the end of the file", NULL},
    {"offset past the end", offset_past_eof, FINCH_E_FORMAT, "lies past the end of the file",
     NULL},
    {"offset + size wraps", offset_wraps, FINCH_E_FORMAT, "lies past the end of the file", NULL},
    {"overlapping tensors", overlap, FINCH_E_FORMAT,
     "tensor 'b': data at 0x20 overlaps tensor 'a'", NULL},
    {"overlap found out of order", overlap_out_of_order, FINCH_E_FORMAT,
     "data at 0x40 overlaps tensor 'c'", NULL},
    {"duplicate tensor name", duplicate_tensor, FINCH_E_FORMAT, "duplicate tensor name 't'",
     NULL},
    {"tensor name of 64 bytes", tensor_name_64, FINCH_E_FORMAT,
     "tensor name of 64 bytes, at most 63", "offset 0x18:"},
    {"tensor name with a NUL", tensor_name_nul, FINCH_E_FORMAT, "contains a NUL byte", NULL},
    {"no padding before the data", no_data_padding, FINCH_E_FORMAT,
     "padding to the data section needs 7 bytes, 0 left", "offset 0x39:"},
};

static void test_bad_cases(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        gbuf b = {0};
        c->build(&b);
        finch_gguf *g = (finch_gguf *)&b; /* sentinel: must stay untouched on failure */
        finch_err err = {0};
        finch_status st = finch_gguf_open_memory(b.p, b.n, NAME, &g, &err);
        if (st != c->status)
            fail_msg("%s: status %s, expected %s (%s)", c->name, finch_status_str(st),
                     finch_status_str(c->status), err.msg);
        assert_ptr_equal(g, (finch_gguf *)&b);
        const char *where = c->where ? c->where : "offset 0x";
        if (strncmp(err.msg, NAME ": ", strlen(NAME) + 2) != 0 || !strstr(err.msg, where) ||
            !strstr(err.msg, c->fragment))
            fail_msg("%s: message '%s' lacks '%s: ', '%s' or '%s'", c->name, err.msg, NAME, where,
                     c->fragment);
        free(b.p);
    }
}

/* ---- valid edge cases --------------------------------------------------------------- */

static finch_gguf *open_ok(gbuf *b) {
    finch_gguf *g = NULL;
    finch_err err = {0};
    if (finch_gguf_open_memory(b->p, b->n, NAME, &g, &err) != FINCH_OK)
        fail_msg("valid file rejected: %s", err.msg);
    return g;
}

static void test_valid_edges(void **state) {
    (void)state;
    gbuf b = {0};
    valid_file(&b);
    finch_gguf *g = open_ok(&b);
    assert_int_equal(finch_gguf_n_kv(g), 4);
    assert_int_equal(finch_gguf_n_tensors(g), 2);
    finch_gguf_close(g);
    /* version 2 shares the layout */
    b.p[4] = 2;
    g = open_ok(&b);
    assert_int_equal(finch_gguf_version(g), 2);
    finch_gguf_close(g);
    free(b.p);

    /* no tensors: no padding needed; nothing at all after the header */
    b = (gbuf){0};
    header(&b, 3, 0, 1);
    kv_u32(&b, "a.b", 7);
    g = open_ok(&b);
    finch_gguf_close(g);
    free(b.p);
    b = (gbuf){0};
    header(&b, 3, 0, 0);
    g = open_ok(&b);
    assert_int_equal(finch_gguf_n_kv(g), 0);
    finch_gguf_close(g);
    free(b.p);

    /* an empty tensor at the same offset as another; a gap between tensors; and an
     * empty tensor with huge row length at the very end of the file */
    b = (gbuf){0};
    header(&b, 3, 4, 0);
    tinfo(&b, "a", 1, (const uint64_t[]){8}, FINCH_DTYPE_F32, 0);
    tinfo(&b, "empty", 2, (const uint64_t[]){8, 0}, FINCH_DTYPE_F32, 0);
    tinfo(&b, "after_gap", 1, (const uint64_t[]){32}, FINCH_DTYPE_Q8_0, 64);
    tinfo(&b, "empty_end", 2, (const uint64_t[]){(uint64_t)1 << 40, 0}, FINCH_DTYPE_F32, 128);
    pad(&b, 32);
    zeros(&b, 128);
    g = open_ok(&b);
    assert_int_equal(finch_gguf_find_tensor(g, "empty")->nbytes, 0);
    assert_int_equal(finch_gguf_find_tensor(g, "empty_end")->ne[0], (int64_t)1 << 40);
    assert_int_equal(finch_gguf_find_tensor(g, "after_gap")->nbytes, 34);
    finch_gguf_close(g);
    free(b.p);
}

/* ---- truncation ----------------------------------------------------------------------- */

/* Every prefix of file shorter than data_end fails with a message naming the file and the
 * offset; longer prefixes (only trailing padding missing) are valid. */
static void check_truncations(const uint8_t *file, size_t size, size_t data_end) {
    for (size_t len = 0; len <= size; len++) {
        /* an exact-size copy, so AddressSanitizer sees any read past len */
        uint8_t *copy = malloc(len ? len : 1);
        assert_non_null(copy);
        memcpy(copy, file, len);
        finch_gguf *g = NULL;
        finch_err err = {0};
        finch_status st = finch_gguf_open_memory(len ? copy : NULL, len, "trunc.gguf", &g, &err);
        if (len < data_end) {
            if (st != FINCH_E_FORMAT)
                fail_msg("truncated at %zu of %zu: status %s", len, size, finch_status_str(st));
            if (!strstr(err.msg, "trunc.gguf: offset 0x"))
                fail_msg("truncated at %zu: message '%s'", len, err.msg);
        } else {
            if (st != FINCH_OK) fail_msg("prefix of %zu bytes rejected: %s", len, err.msg);
            finch_gguf_close(g);
        }
        free(copy);
    }
}

static void test_truncate_built_file(void **state) {
    (void)state;
    gbuf b = {0};
    valid_file(&b);
    assert_true(valid_data_end < b.n); /* the file has trailing padding */
    check_truncations(b.p, b.n, valid_data_end);
    free(b.p);
}

/* The gguf package's file: 25 pairs of every type and 16 tensors; its last tensor's data
 * ends at 1792 + 2368 + 96 = 4256, the file size (no trailing padding needed there). */
static void test_truncate_fixture(void **state) {
    (void)state;
    size_t size;
    uint8_t *file = read_file(FINCH_FIXTURES "/gguf/all_types.gguf", &size);
    assert_int_equal(size, 4256);
    check_truncations(file, size, 4256);
    free(file);
}

/* ---- real paths ----------------------------------------------------------------------- */

static void expect_open_fails(const char *path, finch_status status, const char *fragment) {
    finch_gguf *g = NULL;
    finch_err err = {0};
    finch_status st = finch_gguf_open(path, &g, &err);
    if (st != status)
        fail_msg("%s: status %s, expected %s (%s)", path, finch_status_str(st),
                 finch_status_str(status), err.msg);
    assert_null(g);
    if (!strstr(err.msg, path) || !strstr(err.msg, fragment))
        fail_msg("%s: message '%s' lacks the path or '%s'", path, err.msg, fragment);
}

static void test_real_paths(void **state) {
    (void)state;
    expect_open_fails(FINCH_FIXTURES "/gguf", FINCH_E_IO, "directory");
    expect_open_fails(FINCH_FIXTURES "/gguf/no-such-file.gguf", FINCH_E_IO, "cannot open");

    char dir[] = "/tmp/finch_gguf_bad_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char empty[64], trunc[64], v1[64];
    snprintf(empty, sizeof empty, "%s/empty.gguf", dir);
    snprintf(trunc, sizeof trunc, "%s/trunc.gguf", dir);
    snprintf(v1, sizeof v1, "%s/v1.gguf", dir);

    FILE *f = fopen(empty, "wb");
    assert_non_null(f);
    fclose(f);
    expect_open_fails(empty, FINCH_E_FORMAT, "offset 0x0: file is empty");

    size_t size;
    uint8_t *file = read_file(FINCH_FIXTURES "/gguf/all_types.gguf", &size);
    f = fopen(trunc, "wb");
    assert_non_null(f);
    fwrite(file, 1, 1000, f);
    fclose(f);
    expect_open_fails(trunc, FINCH_E_FORMAT, "offset 0x");

    file[4] = 1;
    f = fopen(v1, "wb");
    assert_non_null(f);
    fwrite(file, 1, size, f);
    fclose(f);
    expect_open_fails(v1, FINCH_E_FORMAT, "offset 0x4: GGUF version 1 is no longer supported");

    free(file);
    unlink(empty);
    unlink(trunc);
    unlink(v1);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_cases),
        cmocka_unit_test(test_valid_edges),
        cmocka_unit_test(test_truncate_built_file),
        cmocka_unit_test(test_truncate_fixture),
        cmocka_unit_test(test_real_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
