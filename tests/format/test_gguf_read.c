/*
 * test_gguf_read.c: reads GGUF files written by the PyPI gguf package
 * (tests/reference/make_gguf_fixtures.py) and checks every key/value pair and tensor info
 * against what the script wrote, and every tensor's dequantization against the package's
 * own (gguf.quants.dequantize), bit for bit.
 *
 * Bit-exactness holds for every type: the package computes in f32 with numpy, one IEEE
 * operation at a time, in the same order as ggml (d * q, d * q + m, (d * sc) * q - dmin * m),
 * and finch's dequantizers do the same without contracting to fused multiply-adds.
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

#include "core/quant.h" /* finch_dtype_info */
#include "io/io.h"

#define FIXTURE_DIR FINCH_FIXTURES "/gguf/"

static finch_gguf *open_fixture(const char *name) {
    char path[512];
    snprintf(path, sizeof path, FIXTURE_DIR "%s", name);
    finch_gguf *g = NULL;
    finch_err err = {0};
    finch_status st = finch_gguf_open(path, &g, &err);
    if (st != FINCH_OK) fail_msg("%s: %s", path, err.msg);
    return g;
}

/* The pair at index i, checked to have this key and type and to be what find_kv finds. */
static const finch_gguf_kv *kv_check(const finch_gguf *g, int64_t i, const char *key,
                                     finch_gguf_type type) {
    const finch_gguf_kv *kv = finch_gguf_kv_at(g, i);
    assert_string_equal(kv->key, key);
    assert_int_equal(kv->type, type);
    assert_ptr_equal(finch_gguf_find_kv(g, key), kv);
    return kv;
}

static void assert_str_view(finch_str s, const char *want) {
    assert_int_equal(s.len, strlen(want));
    if (s.len) assert_memory_equal(s.ptr, want, s.len);
}

static const finch_gguf_kv *arr_check(const finch_gguf *g, int64_t i, const char *key,
                                      finch_gguf_type elem, uint64_t n) {
    const finch_gguf_kv *kv = kv_check(g, i, key, FINCH_GGUF_ARRAY);
    assert_int_equal(kv->arr_type, elem);
    assert_int_equal(kv->arr_n, n);
    return kv;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; k--) v = (v << 8) | p[k];
    return v;
}

static void test_header(void **state) {
    (void)state;
    finch_gguf *g = open_fixture("all_types.gguf");
    assert_int_equal(finch_gguf_version(g), 3);
    assert_int_equal(finch_gguf_alignment(g), 32);
    assert_int_equal(finch_gguf_n_kv(g), 25);
    assert_int_equal(finch_gguf_n_tensors(g), 16);
    assert_true(strstr(finch_gguf_path(g), "all_types.gguf") != NULL);
    finch_gguf_close(g);
}

/* Every pair the script wrote, in file order, with its exact value. */
static void test_every_kv(void **state) {
    (void)state;
    finch_gguf *g = open_fixture("all_types.gguf");
    const finch_gguf_kv *kv;
    int64_t i = 0;

    assert_str_view(kv_check(g, i++, "general.architecture", FINCH_GGUF_STRING)->v.str,
                    "finchtest");
    assert_int_equal(kv_check(g, i++, "test.u8", FINCH_GGUF_UINT8)->v.u, 200);
    assert_int_equal(kv_check(g, i++, "test.i8", FINCH_GGUF_INT8)->v.i, -100);
    assert_int_equal(kv_check(g, i++, "test.u16", FINCH_GGUF_UINT16)->v.u, 60000);
    assert_int_equal(kv_check(g, i++, "test.i16", FINCH_GGUF_INT16)->v.i, -30000);
    assert_int_equal(kv_check(g, i++, "test.u32", FINCH_GGUF_UINT32)->v.u, 4000000000u);
    assert_int_equal(kv_check(g, i++, "test.i32", FINCH_GGUF_INT32)->v.i, -2000000000);
    assert_true(kv_check(g, i++, "test.f32", FINCH_GGUF_FLOAT32)->v.f == 3.140625);
    assert_true(kv_check(g, i++, "test.bool_true", FINCH_GGUF_BOOL)->v.b);
    assert_false(kv_check(g, i++, "test.bool_false", FINCH_GGUF_BOOL)->v.b);
    assert_str_view(kv_check(g, i++, "test.string", FINCH_GGUF_STRING)->v.str,
                    "h\xc3\xa9llo, gguf \xe2\x9c\x93");
    assert_str_view(kv_check(g, i++, "test.string_empty", FINCH_GGUF_STRING)->v.str, "");
    assert_true(kv_check(g, i++, "test.u64", FINCH_GGUF_UINT64)->v.u == 9223372036854775813ull);
    assert_true(kv_check(g, i++, "test.i64", FINCH_GGUF_INT64)->v.i == -4611686018427387911ll);
    assert_true(kv_check(g, i++, "test.f64", FINCH_GGUF_FLOAT64)->v.f == 2.718281828459045);

    kv = arr_check(g, i++, "test.arr_u8", FINCH_GGUF_UINT8, 3);
    assert_int_equal(kv->arr_data[0], 0);
    assert_int_equal(kv->arr_data[1], 1);
    assert_int_equal(kv->arr_data[2], 255);
    kv = arr_check(g, i++, "test.arr_i16", FINCH_GGUF_INT16, 2);
    assert_int_equal((int16_t)le(kv->arr_data, 2), -5);
    assert_int_equal((int16_t)le(kv->arr_data + 2, 2), 300);
    kv = arr_check(g, i++, "test.arr_i32", FINCH_GGUF_INT32, 4);
    assert_int_equal((int32_t)le(kv->arr_data, 4), 1);
    assert_int_equal((int32_t)le(kv->arr_data + 4, 4), -2);
    assert_int_equal((int32_t)le(kv->arr_data + 8, 4), INT32_MAX);
    assert_int_equal((int32_t)le(kv->arr_data + 12, 4), INT32_MIN);
    kv = arr_check(g, i++, "test.arr_u64", FINCH_GGUF_UINT64, 1);
    assert_true(le(kv->arr_data, 8) == UINT64_MAX);
    kv = arr_check(g, i++, "test.arr_i64", FINCH_GGUF_INT64, 2);
    assert_true((int64_t)le(kv->arr_data, 8) == -1);
    assert_true((int64_t)le(kv->arr_data + 8, 8) == (int64_t)1 << 40);
    kv = arr_check(g, i++, "test.arr_f32", FINCH_GGUF_FLOAT32, 3);
    const float want_f32[3] = {0.5f, -1.25f, 1024.0625f};
    for (int k = 0; k < 3; k++) {
        uint32_t bits = (uint32_t)le(kv->arr_data + 4 * k, 4);
        float f;
        memcpy(&f, &bits, 4);
        assert_true(f == want_f32[k]);
    }
    kv = arr_check(g, i++, "test.arr_f64", FINCH_GGUF_FLOAT64, 2);
    const double want_f64[2] = {0.1, -2.5};
    for (int k = 0; k < 2; k++) {
        uint64_t bits = le(kv->arr_data + 8 * k, 8);
        double f;
        memcpy(&f, &bits, 8);
        assert_true(f == want_f64[k]);
    }
    kv = arr_check(g, i++, "test.arr_bool", FINCH_GGUF_BOOL, 3);
    assert_int_equal(kv->arr_data[0], 1);
    assert_int_equal(kv->arr_data[1], 0);
    assert_int_equal(kv->arr_data[2], 1);
    kv = arr_check(g, i++, "test.arr_str", FINCH_GGUF_STRING, 4);
    assert_null(kv->arr_data);
    assert_non_null(kv->arr_str);
    assert_str_view(kv->arr_str[0], "alpha");
    assert_str_view(kv->arr_str[1], "");
    assert_str_view(kv->arr_str[2], "\xc3\xbcn\xc3\xaf");
    assert_str_view(kv->arr_str[3], "a b c");
    assert_int_equal(kv_check(g, i++, "general.quantization_version", FINCH_GGUF_UINT32)->v.u, 2);

    assert_int_equal(i, finch_gguf_n_kv(g));
    assert_null(finch_gguf_find_kv(g, "test.missing"));
    assert_null(finch_gguf_find_kv(g, "test"));
    assert_null(finch_gguf_find_kv(g, ""));
    finch_gguf_close(g);
}

/* The tensor infos as written; offsets are the ones the gguf package's GGUFReader reports
 * (data_offset - 1792, the data section start). */
typedef struct {
    const char *name;
    finch_dtype type;
    int n_dims;
    int64_t ne[4];
    uint64_t offset;
} tensor_want;

static const tensor_want all_tensors[] = {
    {"tensor.f32", FINCH_DTYPE_F32, 2, {8, 3, 1, 1}, 0},
    {"tensor.f16", FINCH_DTYPE_F16, 2, {16, 2, 1, 1}, 96},
    {"tensor.bf16", FINCH_DTYPE_BF16, 2, {16, 2, 1, 1}, 160},
    {"tensor.q8_0", FINCH_DTYPE_Q8_0, 2, {64, 2, 1, 1}, 224},
    {"tensor.q4_0", FINCH_DTYPE_Q4_0, 2, {64, 2, 1, 1}, 384},
    {"tensor.q4_1", FINCH_DTYPE_Q4_1, 2, {32, 3, 1, 1}, 480},
    {"tensor.q5_0", FINCH_DTYPE_Q5_0, 2, {64, 2, 1, 1}, 544},
    {"tensor.q5_1", FINCH_DTYPE_Q5_1, 2, {64, 2, 1, 1}, 640},
    {"tensor.q2_k", FINCH_DTYPE_Q2_K, 2, {256, 2, 1, 1}, 736},
    {"tensor.q3_k", FINCH_DTYPE_Q3_K, 2, {256, 2, 1, 1}, 928},
    {"tensor.q4_k", FINCH_DTYPE_Q4_K, 2, {256, 2, 1, 1}, 1152},
    {"tensor.q5_k", FINCH_DTYPE_Q5_K, 2, {256, 2, 1, 1}, 1440},
    {"tensor.q6_k", FINCH_DTYPE_Q6_K, 2, {256, 2, 1, 1}, 1792},
    {"tensor.1d", FINCH_DTYPE_F32, 1, {5, 1, 1, 1}, 2240},
    {"tensor.3d", FINCH_DTYPE_F32, 3, {4, 3, 2, 1}, 2272},
    {"tensor.4d", FINCH_DTYPE_F16, 4, {8, 3, 2, 1}, 2368},
};
#define N_TENSORS (sizeof all_tensors / sizeof all_tensors[0])
#define DATA_START 1792

static void test_tensor_infos(void **state) {
    (void)state;
    size_t size;
    uint8_t *file = read_file(FIXTURE_DIR "all_types.gguf", &size);
    finch_gguf *g;
    finch_err err = {0};
    assert_int_equal(finch_gguf_open_memory(file, size, "all_types.gguf", &g, &err), FINCH_OK);
    assert_int_equal(finch_gguf_n_tensors(g), N_TENSORS);
    for (size_t i = 0; i < N_TENSORS; i++) {
        const tensor_want *w = &all_tensors[i];
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, (int64_t)i);
        assert_string_equal(t->name, w->name);
        assert_ptr_equal(finch_gguf_find_tensor(g, w->name), t);
        assert_int_equal(t->type, w->type);
        assert_int_equal(t->n_dims, w->n_dims);
        for (int k = 0; k < 4; k++) assert_int_equal(t->ne[k], w->ne[k]);
        assert_int_equal(t->offset, w->offset);
        const finch_dtype_traits *tr = &finch_dtype_info[w->type];
        size_t nbytes = (size_t)(w->ne[0] / tr->block_elems * tr->block_bytes) *
                        (size_t)(w->ne[1] * w->ne[2] * w->ne[3]);
        assert_int_equal(t->nbytes, nbytes);
        assert_ptr_equal(t->data, file + DATA_START + w->offset);
    }
    assert_null(finch_gguf_find_tensor(g, "tensor"));
    assert_null(finch_gguf_find_tensor(g, "tensor.q8_1"));
    finch_gguf_close(g);
    free(file);
}

/* Compares bit patterns (NaN included) and names the first mismatch. */
static void assert_bits_equal(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &want[i], 4);
        if (a != b)
            fail_msg("%s: element %zu: finch %.9g (0x%08x), gguf package %.9g (0x%08x)", what, i,
                     (double)got[i], a, (double)want[i], b);
    }
}

/* Dequantizes every row of t into a new buffer of ne[0]*ne[1]*ne[2]*ne[3] floats. */
static float *dequant_all(const finch_gguf_tensor *t, size_t *n_out) {
    const finch_dtype_traits *tr = &finch_dtype_info[t->type];
    assert_non_null(tr->dequant);
    size_t row_bytes;
    assert_true(finch_dtype_row_bytes(t->type, t->ne[0], &row_bytes));
    size_t rows = (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
    size_t n = rows * (size_t)t->ne[0];
    float *y = malloc(n * sizeof *y + 1);
    assert_non_null(y);
    for (size_t r = 0; r < rows; r++)
        tr->dequant(y + r * (size_t)t->ne[0], t->data + r * row_bytes, t->ne[0]);
    *n_out = n;
    return y;
}

static void check_dequant(const finch_gguf_tensor *t, const char *prefix) {
    char path[512];
    snprintf(path, sizeof path, FIXTURE_DIR "%s.%s.f32", prefix, t->name);
    size_t want_bytes, n;
    float *want = (float *)read_file(path, &want_bytes);
    float *got = dequant_all(t, &n);
    assert_int_equal(want_bytes, n * sizeof(float));
    assert_bits_equal(got, want, n, t->name);
    free(got);
    free(want);
}

static void test_dequant_matches_gguf_package(void **state) {
    (void)state;
    finch_gguf *g = open_fixture("all_types.gguf");
    for (int64_t i = 0; i < finch_gguf_n_tensors(g); i++)
        check_dequant(finch_gguf_tensor_at(g, i), "all_types");
    finch_gguf_close(g);
}

/* general.alignment = 64: data section and offsets follow it, data is still right. */
static void test_alignment_64(void **state) {
    (void)state;
    size_t size;
    uint8_t *file = read_file(FIXTURE_DIR "aligned64.gguf", &size);
    finch_gguf *g;
    finch_err err = {0};
    assert_int_equal(finch_gguf_open_memory(file, size, "aligned64.gguf", &g, &err), FINCH_OK);
    assert_int_equal(finch_gguf_alignment(g), 64);
    uint32_t a = 0;
    assert_int_equal(finch_gguf_get_u32(g, "general.alignment", true, &a, &err), FINCH_OK);
    assert_int_equal(a, 64);
    assert_int_equal(finch_gguf_n_tensors(g), 2);
    const finch_gguf_tensor *t0 = finch_gguf_tensor_at(g, 0), *t1 = finch_gguf_tensor_at(g, 1);
    assert_int_equal(t0->offset, 0);
    assert_int_equal(t1->offset, 128); /* 96 bytes padded to 64 */
    assert_int_equal((size_t)(t0->data - file) % 64, 0);
    check_dequant(t0, "all_types");
    check_dequant(t1, "all_types");
    finch_gguf_close(g);
    free(file);
}

static void test_typed_getters(void **state) {
    (void)state;
    finch_gguf *g = open_fixture("all_types.gguf");
    finch_err err = {0};
    uint32_t u = 7;
    int64_t i = 7;
    float f = 7;
    bool b = false;
    finch_str s = {0};
    const finch_gguf_kv *kv = NULL;

    /* integers of any width */
    assert_int_equal(finch_gguf_get_u32(g, "test.u8", true, &u, &err), FINCH_OK);
    assert_int_equal(u, 200);
    assert_int_equal(finch_gguf_get_u32(g, "test.u16", true, &u, &err), FINCH_OK);
    assert_int_equal(u, 60000);
    assert_int_equal(finch_gguf_get_u32(g, "test.u32", true, &u, &err), FINCH_OK);
    assert_int_equal(u, 4000000000u);
    assert_int_equal(finch_gguf_get_i64(g, "test.i8", true, &i, &err), FINCH_OK);
    assert_int_equal(i, -100);
    assert_int_equal(finch_gguf_get_i64(g, "test.i64", true, &i, &err), FINCH_OK);
    assert_true(i == -4611686018427387911ll);
    assert_int_equal(finch_gguf_get_i64(g, "test.u32", true, &i, &err), FINCH_OK);
    assert_int_equal(i, 4000000000ll);

    /* out of range: negative into u32, > u32, > i64 */
    u = 7;
    assert_int_equal(finch_gguf_get_u32(g, "test.i32", true, &u, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "'test.i32' is -2000000000, out of range for uint32"));
    assert_non_null(strstr(err.msg, "all_types.gguf: offset 0x"));
    assert_int_equal(u, 7);
    assert_int_equal(finch_gguf_get_u32(g, "test.u64", true, &u, &err), FINCH_E_FORMAT);
    assert_int_equal(finch_gguf_get_i64(g, "test.u64", true, &i, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "out of range for int64"));

    /* wrong types */
    assert_int_equal(finch_gguf_get_u32(g, "test.f32", true, &u, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "key 'test.f32' has type float32, expected an integer"));
    assert_int_equal(finch_gguf_get_u32(g, "test.bool_true", true, &u, &err), FINCH_E_FORMAT);
    assert_int_equal(finch_gguf_get_str(g, "test.u8", true, &s, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "has type uint8, expected string"));
    assert_int_equal(finch_gguf_get_bool(g, "test.u8", true, &b, &err), FINCH_E_FORMAT);
    assert_int_equal(finch_gguf_get_f32(g, "test.string", true, &f, &err), FINCH_E_FORMAT);
    assert_int_equal(finch_gguf_get_arr(g, "test.arr_i32", FINCH_GGUF_FLOAT32, true, &kv, &err),
                     FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "is an array of int32, expected array of float32"));
    assert_int_equal(finch_gguf_get_arr(g, "test.u8", FINCH_GGUF_UINT8, true, &kv, &err),
                     FINCH_E_FORMAT);

    /* floats, bools, strings, arrays */
    assert_int_equal(finch_gguf_get_f32(g, "test.f32", true, &f, &err), FINCH_OK);
    assert_true(f == 3.140625f);
    assert_int_equal(finch_gguf_get_f32(g, "test.f64", true, &f, &err), FINCH_OK);
    assert_true(f == (float)2.718281828459045);
    assert_int_equal(finch_gguf_get_bool(g, "test.bool_true", true, &b, &err), FINCH_OK);
    assert_true(b);
    assert_int_equal(finch_gguf_get_str(g, "general.architecture", true, &s, &err), FINCH_OK);
    assert_str_view(s, "finchtest");
    assert_int_equal(finch_gguf_get_arr(g, "test.arr_str", FINCH_GGUF_STRING, true, &kv, &err),
                     FINCH_OK);
    assert_ptr_equal(kv, finch_gguf_find_kv(g, "test.arr_str"));

    /* absent keys */
    u = 7;
    assert_int_equal(finch_gguf_get_u32(g, "llama.block_count", false, &u, &err), FINCH_OK);
    assert_int_equal(u, 7);
    assert_int_equal(finch_gguf_get_u32(g, "llama.block_count", true, &u, &err), FINCH_E_FORMAT);
    assert_non_null(strstr(err.msg, "all_types.gguf: missing required key 'llama.block_count'"));
    kv = NULL;
    assert_int_equal(finch_gguf_get_arr(g, "nope", FINCH_GGUF_STRING, false, &kv, &err),
                     FINCH_OK);
    assert_null(kv);
    finch_gguf_close(g);
}

static void test_type_names(void **state) {
    (void)state;
    assert_string_equal(finch_gguf_type_name(FINCH_GGUF_UINT32), "uint32");
    assert_string_equal(finch_gguf_type_name(FINCH_GGUF_ARRAY), "array");
    assert_string_equal(finch_gguf_type_name(FINCH_GGUF_FLOAT64), "float64");
    assert_string_equal(finch_gguf_type_name(13), "unknown");
    assert_string_equal(finch_gguf_type_name(UINT32_MAX), "unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_every_kv),
        cmocka_unit_test(test_tensor_infos),
        cmocka_unit_test(test_dequant_matches_gguf_package),
        cmocka_unit_test(test_alignment_64),
        cmocka_unit_test(test_typed_getters),
        cmocka_unit_test(test_type_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
