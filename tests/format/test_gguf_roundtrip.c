/*
 * test_gguf_roundtrip.c: the GGUF writer. Every value type and several tensor types go
 * through writer -> file -> reader unchanged; the layout is the one llama.cpp demands
 * (offsets contiguous, padded to the alignment, padding after the last tensor); and a
 * document copied from a file the PyPI gguf package wrote is saved byte for byte as the
 * package wrote it. Misuse of the writer is FINCH_E_USAGE with a message.
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

#include "core/quant.h" /* finch_dtype_info */
#include "io/io.h"

#define FIXTURE_DIR FINCH_FIXTURES "/gguf/"

/* A fresh directory per test run for the files written. */
typedef struct {
    char dir[256];
    char path[300];
} scratch;

static int scratch_setup(void **state) {
    scratch *s = calloc(1, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/finch_gguf_rt_XXXXXX");
    if (!mkdtemp(s->dir)) return -1;
    snprintf(s->path, sizeof s->path, "%s/out.gguf", s->dir);
    *state = s;
    return 0;
}

static int scratch_teardown(void **state) {
    scratch *s = *state;
    unlink(s->path);
    rmdir(s->dir);
    free(s);
    return 0;
}

static finch_gguf *reopen(const char *path) {
    finch_gguf *g = NULL;
    finch_err err = {0};
    if (finch_gguf_open(path, &g, &err) != FINCH_OK) fail_msg("reading back: %s", err.msg);
    return g;
}

/* The error of the last call made through EXPECT_OK / EXPECT_USAGE. */
static finch_err e;

static void expect_ok(finch_status st, const char *call) {
    if (st != FINCH_OK) fail_msg("%s: %s", call, e.msg);
}

static void expect_usage(finch_status st, const char *call, const char *fragment) {
    if (st != FINCH_E_USAGE) fail_msg("%s: status %d, expected usage", call, st);
    if (!strstr(e.msg, fragment)) fail_msg("%s: message '%s' lacks '%s'", call, e.msg, fragment);
}

#define EXPECT_OK(call) expect_ok((call), #call)
#define EXPECT_USAGE(call, fragment) expect_usage((call), #call, fragment)

static void assert_view(finch_str s, const char *want) {
    assert_int_equal(s.len, strlen(want));
    if (s.len) assert_memory_equal(s.ptr, want, s.len);
}

static void test_every_setter(void **state) {
    scratch *s = *state;
    finch_err err = {0};
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    assert_non_null(w);
    const char *strs[] = {"<s>", "", "h\xc3\xa9", "a b"};
    const int32_t ints[] = {0, -1, INT32_MAX, INT32_MIN};
    const float floats[] = {0.5f, -0.0f, 1e-30f, 3.4e38f};
    EXPECT_OK(finch_gguf_set_str(w, "general.architecture", "llama", &e));
    EXPECT_OK(finch_gguf_set_u32(w, "llama.block_count", 30, &e));
    EXPECT_OK(finch_gguf_set_u32(w, "u32.max", UINT32_MAX, &e));
    EXPECT_OK(finch_gguf_set_i32(w, "i32.min", INT32_MIN, &e));
    EXPECT_OK(finch_gguf_set_u64(w, "u64.max", UINT64_MAX, &e));
    EXPECT_OK(finch_gguf_set_f32(w, "llama.rope.freq_base", 100000.0f, &e));
    EXPECT_OK(finch_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true, &e));
    EXPECT_OK(finch_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", false, &e));
    EXPECT_OK(finch_gguf_set_str(w, "empty", "", &e));
    EXPECT_OK(finch_gguf_set_arr_str(w, "tokenizer.ggml.tokens", strs, 4, &e));
    EXPECT_OK(finch_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", ints, 4, &e));
    EXPECT_OK(finch_gguf_set_arr_f32(w, "tokenizer.ggml.scores", floats, 4, &e));
    EXPECT_OK(finch_gguf_set_arr_i32(w, "empty.array", NULL, 0, &e));
    EXPECT_OK(finch_gguf_set_arr_str(w, "empty.strings", NULL, 0, &e));
    assert_int_equal(finch_gguf_writer_save(w, s->path, &err), FINCH_OK);
    finch_gguf_writer_free(w);

    finch_gguf *g = reopen(s->path);
    assert_int_equal(finch_gguf_n_kv(g), 14);
    assert_int_equal(finch_gguf_n_tensors(g), 0);
    assert_int_equal(finch_gguf_version(g), 3);
    const finch_gguf_kv *kv;
    const char *order[] = {"general.architecture", "llama.block_count", "u32.max", "i32.min",
                           "u64.max", "llama.rope.freq_base", "tokenizer.ggml.add_bos_token",
                           "tokenizer.ggml.add_eos_token", "empty", "tokenizer.ggml.tokens",
                           "tokenizer.ggml.token_type", "tokenizer.ggml.scores", "empty.array",
                           "empty.strings"};
    for (int i = 0; i < 14; i++) assert_string_equal(finch_gguf_kv_at(g, i)->key, order[i]);

    /* the stored types are the ones llama.cpp checks (FORMATS.md 1.8) */
    kv = finch_gguf_find_kv(g, "general.architecture");
    assert_int_equal(kv->type, FINCH_GGUF_STRING);
    assert_view(kv->v.str, "llama");
    kv = finch_gguf_find_kv(g, "llama.block_count");
    assert_int_equal(kv->type, FINCH_GGUF_UINT32);
    assert_int_equal(kv->v.u, 30);
    assert_true(finch_gguf_find_kv(g, "u32.max")->v.u == UINT32_MAX);
    kv = finch_gguf_find_kv(g, "i32.min");
    assert_int_equal(kv->type, FINCH_GGUF_INT32);
    assert_true(kv->v.i == INT32_MIN);
    kv = finch_gguf_find_kv(g, "u64.max");
    assert_int_equal(kv->type, FINCH_GGUF_UINT64);
    assert_true(kv->v.u == UINT64_MAX);
    kv = finch_gguf_find_kv(g, "llama.rope.freq_base");
    assert_int_equal(kv->type, FINCH_GGUF_FLOAT32);
    assert_true(kv->v.f == 100000.0);
    kv = finch_gguf_find_kv(g, "tokenizer.ggml.add_bos_token");
    assert_int_equal(kv->type, FINCH_GGUF_BOOL);
    assert_true(kv->v.b);
    assert_false(finch_gguf_find_kv(g, "tokenizer.ggml.add_eos_token")->v.b);
    assert_view(finch_gguf_find_kv(g, "empty")->v.str, "");

    kv = finch_gguf_find_kv(g, "tokenizer.ggml.tokens");
    assert_int_equal(kv->type, FINCH_GGUF_ARRAY);
    assert_int_equal(kv->arr_type, FINCH_GGUF_STRING);
    assert_int_equal(kv->arr_n, 4);
    for (int i = 0; i < 4; i++) assert_view(kv->arr_str[i], strs[i]);
    kv = finch_gguf_find_kv(g, "tokenizer.ggml.token_type");
    assert_int_equal(kv->arr_type, FINCH_GGUF_INT32);
    assert_int_equal(kv->arr_n, 4);
    assert_memory_equal(kv->arr_data, ints, sizeof ints); /* little-endian host */
    kv = finch_gguf_find_kv(g, "tokenizer.ggml.scores");
    assert_int_equal(kv->arr_type, FINCH_GGUF_FLOAT32);
    assert_memory_equal(kv->arr_data, floats, sizeof floats);
    kv = finch_gguf_find_kv(g, "empty.array");
    assert_int_equal(kv->arr_type, FINCH_GGUF_INT32);
    assert_int_equal(kv->arr_n, 0);
    kv = finch_gguf_find_kv(g, "empty.strings");
    assert_int_equal(kv->arr_type, FINCH_GGUF_STRING);
    assert_int_equal(kv->arr_n, 0);
    finch_gguf_close(g);
}

/* Copies a document (every pair through set_kv, every tensor with its bytes). */
static finch_gguf_writer *copy_document(const finch_gguf *g) {
    finch_err err = {0};
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    assert_non_null(w);
    for (int64_t i = 0; i < finch_gguf_n_kv(g); i++)
        if (finch_gguf_set_kv(w, finch_gguf_kv_at(g, i), &err) != FINCH_OK) fail_msg("%s", err.msg);
    for (int64_t i = 0; i < finch_gguf_n_tensors(g); i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        if (finch_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err))
            fail_msg("%s", err.msg);
    }
    return w;
}

/* The writer reproduces the gguf package's file byte for byte: same header, pairs,
 * infos, offsets, padding between and after tensors. */
static void check_same_bytes(scratch *s, const char *fixture) {
    char path[512];
    snprintf(path, sizeof path, FIXTURE_DIR "%s", fixture);
    finch_gguf *g = reopen(path);
    finch_gguf_writer *w = copy_document(g);
    finch_err err = {0};
    assert_int_equal(finch_gguf_writer_save(w, s->path, &err), FINCH_OK);
    finch_gguf_writer_free(w);
    finch_gguf_close(g);
    size_t n_want, n_got;
    uint8_t *want = read_file(path, &n_want), *got = read_file(s->path, &n_got);
    size_t n = n_want < n_got ? n_want : n_got;
    for (size_t i = 0; i < n; i++)
        if (want[i] != got[i])
            fail_msg("%s: first difference at byte 0x%zx: finch 0x%02x, gguf package 0x%02x",
                     fixture, i, got[i], want[i]);
    assert_int_equal(n_got, n_want);
    free(want);
    free(got);
}

static void test_copy_is_byte_identical(void **state) {
    check_same_bytes(*state, "all_types.gguf");
}

static void test_copy_keeps_alignment_64(void **state) {
    check_same_bytes(*state, "aligned64.gguf");
    finch_gguf *g = reopen(((scratch *)*state)->path);
    assert_int_equal(finch_gguf_alignment(g), 64);
    finch_gguf_close(g);
}

static size_t pad32(size_t n) { return (n + 31) / 32 * 32; }

/* Tensors of several types and shapes, then the layout and every byte read back. */
static void test_tensors_and_layout(void **state) {
    scratch *s = *state;
    static float f32[3 * 40];
    static uint16_t f16[2 * 7];
    static uint8_t q4_0[3 * 18 * 2], q8_0[34], q6_k[210 * 2], bf16[2 * 5 * 3 * 2];
    for (size_t i = 0; i < sizeof f32 / 4; i++) f32[i] = (float)i * 0.25f - 3.0f;
    for (size_t i = 0; i < 14; i++) f16[i] = finch_f32_to_f16((float)i);
    for (size_t i = 0; i < sizeof q4_0; i++) q4_0[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof q8_0; i++) q8_0[i] = (uint8_t)(i * 13);
    for (size_t i = 0; i < sizeof q6_k; i++) q6_k[i] = (uint8_t)(i * 29);
    for (size_t i = 0; i < sizeof bf16; i++) bf16[i] = (uint8_t)(i + 1);
    struct {
        const char *name;
        finch_dtype type;
        int n_dims;
        int64_t ne[4];
        const void *data;
        size_t nbytes;
    } ts[] = {
        {"token_embd.weight", FINCH_DTYPE_F32, 2, {40, 3}, f32, sizeof f32},
        {"odd.f16", FINCH_DTYPE_F16, 2, {7, 2}, f16, sizeof f16},
        {"blk.0.attn_q.weight", FINCH_DTYPE_Q4_0, 2, {64, 3}, q4_0, sizeof q4_0},
        {"empty", FINCH_DTYPE_F32, 2, {16, 0}, NULL, 0},
        {"blk.0.ffn_down.weight", FINCH_DTYPE_Q6_K, 1, {512}, q6_k, sizeof q6_k},
        {"one.q8_0", FINCH_DTYPE_Q8_0, 1, {32}, q8_0, sizeof q8_0},
        {"four.d", FINCH_DTYPE_BF16, 4, {2, 5, 3, 1}, bf16, 60},
        {"a_name_of_exactly_sixty_three_bytes_...........................", FINCH_DTYPE_F32,
         1, {1}, f32, 4},
    };
    const int n = sizeof ts / sizeof ts[0];
    assert_int_equal(strlen(ts[n - 1].name), 63);

    finch_err err = {0};
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    EXPECT_OK(finch_gguf_set_str(w, "general.architecture", "llama", &e));
    for (int i = 0; i < n; i++)
        if (finch_gguf_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne, ts[i].data,
                                  &err))
            fail_msg("%s", err.msg);
    assert_int_equal(finch_gguf_writer_save(w, s->path, &err), FINCH_OK);
    finch_gguf_writer_free(w);

    size_t size;
    uint8_t *file = read_file(s->path, &size);
    finch_gguf *g;
    assert_int_equal(finch_gguf_open_memory(file, size, "rt.gguf", &g, &err), FINCH_OK);
    assert_int_equal(finch_gguf_n_tensors(g), n);
    uint64_t offset = 0;
    size_t data_start = 0;
    for (int i = 0; i < n; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        assert_string_equal(t->name, ts[i].name);
        assert_int_equal(t->type, ts[i].type);
        assert_int_equal(t->n_dims, ts[i].n_dims);
        for (int k = 0; k < 4; k++)
            assert_int_equal(t->ne[k], k < ts[i].n_dims ? ts[i].ne[k] : 1);
        assert_int_equal(t->nbytes, ts[i].nbytes);
        /* contiguous, each padded to 32, in the order added */
        assert_int_equal(t->offset, offset);
        if (i == 0) data_start = (size_t)(t->data - file);
        assert_ptr_equal(t->data, file + data_start + offset);
        if (ts[i].nbytes) assert_memory_equal(t->data, ts[i].data, ts[i].nbytes);
        /* the padding after each tensor is zeros */
        for (size_t k = ts[i].nbytes; k < pad32(ts[i].nbytes); k++)
            assert_int_equal(t->data[k], 0);
        offset += pad32(ts[i].nbytes);
    }
    assert_int_equal(data_start % 32, 0);
    assert_int_equal(size, data_start + offset); /* padding after the last tensor too */
    finch_gguf_close(g);
    free(file);
}

static void test_writer_rejects_misuse(void **state) {
    (void)state;
    finch_err err = {0};
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    float data[64] = {0};
    const int64_t ne32[2] = {32, 2}, ne33[1] = {33}, neneg[2] = {4, -1};
    const int64_t ne5[5] = {1, 1, 1, 1, 1};
    EXPECT_OK(finch_gguf_set_u32(w, "a.b", 1, &e));
    EXPECT_USAGE(finch_gguf_set_u32(w, "a.b", 2, &e), "key 'a.b' is already set");
    EXPECT_USAGE(finch_gguf_set_str(w, "a.b", "x", &e), "already set");
    EXPECT_USAGE(finch_gguf_set_u32(w, "", 2, &e), "key of 0 bytes");
    EXPECT_USAGE(finch_gguf_set_u64(w, "general.alignment", 64, &e), "must be a uint32 power");
    EXPECT_USAGE(finch_gguf_set_u32(w, "general.alignment", 48, &e), "must be a uint32 power");
    EXPECT_USAGE(finch_gguf_set_u32(w, "general.alignment", 0, &e), "power of two");
    EXPECT_USAGE(finch_gguf_set_u32(w, "general.alignment", 4, &e), "of at least 8");

    EXPECT_OK(finch_gguf_add_tensor(w, "t", FINCH_DTYPE_F32, 2, ne32, data, &e));
    const char *name64 = "0123456789012345678901234567890123456789012345678901234567890123";
    EXPECT_USAGE(finch_gguf_add_tensor(w, "t", FINCH_DTYPE_F32, 2, ne32, data, &e),
                 "tensor 't' is already added");
    EXPECT_USAGE(finch_gguf_add_tensor(w, "", FINCH_DTYPE_F32, 2, ne32, data, &e), "has 0 bytes");
    EXPECT_USAGE(finch_gguf_add_tensor(w, name64, FINCH_DTYPE_F32, 2, ne32, data, &e),
                 "has 64 bytes, expected 1 to 63");
    EXPECT_USAGE(finch_gguf_add_tensor(w, "q", FINCH_DTYPE_Q4_0, 1, ne33, data, &e),
                 "row length 33 is not a multiple of the q4_0 block size 32");
    EXPECT_USAGE(finch_gguf_add_tensor(w, "q", FINCH_DTYPE_F32, 5, ne5, data, &e),
                 "5 dimensions");
    EXPECT_USAGE(finch_gguf_add_tensor(w, "q", FINCH_DTYPE_F32, 0, ne5, data, &e),
                 "0 dimensions");
    EXPECT_USAGE(finch_gguf_add_tensor(w, "q", FINCH_DTYPE_F32, 2, neneg, data, &e),
                 "dimension 1");
    EXPECT_USAGE(finch_gguf_add_tensor(w, "q", (finch_dtype)4, 1, ne32, data, &e),
                 "unknown type 4");
    finch_gguf_writer_free(w);
    finch_gguf_writer_free(NULL);
}

/* A failed save leaves no file behind and names the path. */
static void test_save_to_missing_directory(void **state) {
    (void)state;
    finch_err err = {0};
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    const char *path = "/nonexistent-finch-dir/out.gguf";
    assert_int_equal(finch_gguf_writer_save(w, path, &err), FINCH_E_IO);
    assert_non_null(strstr(err.msg, path));
    finch_gguf_writer_free(w);
}

/* general.alignment set through the writer changes the layout. */
static void test_custom_alignment(void **state) {
    scratch *s = *state;
    finch_err err = {0};
    static float a[3], b[5];
    const int64_t na[1] = {3}, nb[1] = {5};
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    EXPECT_OK(finch_gguf_set_u32(w, "general.alignment", 128, &e));
    EXPECT_OK(finch_gguf_add_tensor(w, "a", FINCH_DTYPE_F32, 1, na, a, &e));
    EXPECT_OK(finch_gguf_add_tensor(w, "b", FINCH_DTYPE_F32, 1, nb, b, &e));
    assert_int_equal(finch_gguf_writer_save(w, s->path, &err), FINCH_OK);
    finch_gguf_writer_free(w);
    size_t size;
    uint8_t *file = read_file(s->path, &size);
    finch_gguf *g;
    assert_int_equal(finch_gguf_open_memory(file, size, "a128.gguf", &g, &err), FINCH_OK);
    assert_int_equal(finch_gguf_alignment(g), 128);
    assert_int_equal(finch_gguf_tensor_at(g, 1)->offset, 128);
    assert_int_equal((size_t)(finch_gguf_tensor_at(g, 0)->data - file) % 128, 0);
    assert_int_equal(size % 128, 0);
    finch_gguf_close(g);
    free(file);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_setter, scratch_setup, scratch_teardown),
        cmocka_unit_test_setup_teardown(test_copy_is_byte_identical, scratch_setup,
                                        scratch_teardown),
        cmocka_unit_test_setup_teardown(test_copy_keeps_alignment_64, scratch_setup,
                                        scratch_teardown),
        cmocka_unit_test_setup_teardown(test_tensors_and_layout, scratch_setup, scratch_teardown),
        cmocka_unit_test(test_writer_rejects_misuse),
        cmocka_unit_test(test_save_to_missing_directory),
        cmocka_unit_test_setup_teardown(test_custom_alignment, scratch_setup, scratch_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
