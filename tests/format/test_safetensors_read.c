/*
 * test_safetensors_read.c: the safetensors reader on files written by the PyPI safetensors
 * package (tests/reference/make_safetensors_fixtures.py). Every file listed in
 * expected.json is opened from its path and from memory; every tensor's dtype, shape, size,
 * raw bytes and decoded values are compared, as are the metadata, the name order, lookup,
 * and the alignment the reference writer promises.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "test_util.h" /* read_file */

#include "io/io.h"

#define DIR FINCH_FIXTURES "/safetensors/"

static json_t *load_expected(void) {
    json_error_t jerr;
    json_t *e = json_load_file(DIR "expected.json", 0, &jerr);
    if (!e) fail_msg("expected.json: %s", jerr.text);
    return e;
}

static int hexval(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

/* The value of element i of t as a double (floats and small integers). */
static double element(const finch_st_tensor *t, uint64_t i) {
    const uint8_t *p = t->data + i * (uint64_t)finch_st_dtype_size(t->dtype);
    switch (t->dtype) {
    case FINCH_ST_F64: { double v; memcpy(&v, p, 8); return v; }
    case FINCH_ST_F32: { float v; memcpy(&v, p, 4); return v; }
    case FINCH_ST_F16: { uint16_t v; memcpy(&v, p, 2); return finch_f16_to_f32(v); }
    case FINCH_ST_BF16: { uint16_t v; memcpy(&v, p, 2); return finch_bf16_to_f32(v); }
    case FINCH_ST_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case FINCH_ST_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case FINCH_ST_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case FINCH_ST_U16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case FINCH_ST_I8: return (int8_t)p[0];
    case FINCH_ST_U8:
    case FINCH_ST_BOOL: return p[0];
    default: fail_msg("no decoder for %s", finch_st_dtype_name(t->dtype));
    }
    return 0;
}

static void check_tensor(const finch_st *st, const char *name, const json_t *want) {
    const finch_st_tensor *t = finch_st_find(st, name);
    if (!t) fail_msg("%s: tensor '%s' not found", finch_st_path(st), name);
    assert_string_equal(t->name, name);
    assert_string_equal(finch_st_dtype_name(t->dtype),
                        json_string_value(json_object_get(want, "dtype")));
    assert_int_equal(t->type, finch_st_dtype_to_finch(t->dtype));
    const json_t *shape = json_object_get(want, "shape");
    assert_int_equal(t->n_dims, (int)json_array_size(shape));
    uint64_t elems = 1;
    for (int k = 0; k < FINCH_ST_MAX_DIMS; k++) {
        int64_t d = k < t->n_dims ? json_integer_value(json_array_get(shape, (size_t)k)) : 1;
        assert_int_equal(t->shape[k], d);
        elems *= (uint64_t)d;
    }
    assert_int_equal(t->n_elems, elems);
    const char *hex = json_string_value(json_object_get(want, "hex"));
    size_t nbytes = strlen(hex) / 2;
    assert_int_equal(t->nbytes, nbytes);
    assert_int_equal(t->nbytes, elems * (uint64_t)finch_st_dtype_size(t->dtype));
    assert_non_null(t->data);
    for (size_t i = 0; i < nbytes; i++)
        assert_int_equal(t->data[i], hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
    /* the reference writer's layout aligns every tensor to its element size */
    assert_int_equal((uintptr_t)t->data % (uintptr_t)finch_st_dtype_size(t->dtype), 0);

    const json_t *values = json_object_get(want, "values");
    if (json_is_null(values)) return;
    assert_int_equal(json_array_size(values), elems);
    for (uint64_t i = 0; i < elems; i++) {
        const json_t *v = json_array_get(values, (size_t)i);
        if (t->dtype == FINCH_ST_I64 || t->dtype == FINCH_ST_U64) {
            uint64_t bits;
            memcpy(&bits, t->data + 8 * i, 8);
            uint64_t want_bits = t->dtype == FINCH_ST_I64
                                     ? (uint64_t)strtoll(json_string_value(v), NULL, 10)
                                     : strtoull(json_string_value(v), NULL, 10);
            assert_int_equal(bits, want_bits);
        } else {
            double want_v = json_number_value(v);
            if (element(t, i) != want_v)
                fail_msg("%s[%llu]: %.17g, expected %.17g", name, (unsigned long long)i,
                         element(t, i), want_v);
        }
    }
}

static void check_file(const finch_st *st, const json_t *want) {
    const json_t *tensors = json_object_get(want, "tensors");
    assert_int_equal(finch_st_n_tensors(st), json_object_size(tensors));
    const char *name;
    json_t *t;
    json_object_foreach((json_t *)tensors, name, t) check_tensor(st, name, t);
    for (int64_t i = 1; i < finch_st_n_tensors(st); i++)
        assert_true(strcmp(finch_st_tensor_at(st, i - 1)->name, finch_st_tensor_at(st, i)->name) < 0);
    for (int64_t i = 0; i < finch_st_n_tensors(st); i++)
        assert_ptr_equal(finch_st_find(st, finch_st_tensor_at(st, i)->name),
                         finch_st_tensor_at(st, i));
    assert_null(finch_st_find(st, "no.such.tensor"));
    assert_null(finch_st_find(st, ""));

    const json_t *meta = json_object_get(want, "metadata");
    assert_int_equal(finch_st_n_meta(st), json_object_size(meta));
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)meta, key, v) {
        const char *got = finch_st_get_meta(st, key);
        if (!got) fail_msg("metadata '%s' missing", key);
        assert_string_equal(got, json_string_value(v));
    }
    for (int64_t i = 1; i < finch_st_n_meta(st); i++) {
        const char *a, *b;
        finch_st_meta_at(st, i - 1, &a, NULL);
        finch_st_meta_at(st, i, &b, NULL);
        assert_true(strcmp(a, b) < 0);
    }
    assert_null(finch_st_get_meta(st, "no.such.key"));
}

static void test_package_files(void **state) {
    (void)state;
    json_t *expected = load_expected();
    int files = 0;
    const char *file;
    json_t *want;
    json_object_foreach(expected, file, want) {
        if (!json_is_object(want)) continue; /* "package": the version that wrote them */
        char path[1024];
        snprintf(path, sizeof path, DIR "%s", file);
        finch_err err = {0};
        finch_st *st = NULL;
        if (finch_st_open(path, &st, &err) != FINCH_OK) fail_msg("%s", err.msg);
        assert_string_equal(finch_st_path(st), path);
        check_file(st, want);
        finch_st_close(st);

        size_t size;
        uint8_t *bytes = read_file(path, &size);
        if (finch_st_open_memory(bytes, size, file, &st, &err) != FINCH_OK) fail_msg("%s", err.msg);
        check_file(st, want);
        finch_st_close(st);
        free(bytes);
        files++;
    }
    assert_int_equal(files, 4);
    json_decref(expected);
}

/* The PEFT adapter: names as FORMATS.md 2.1b gives them, A [r, in], B [out, r]. */
static void test_peft_adapter(void **state) {
    (void)state;
    finch_err err = {0};
    finch_st *st = NULL;
    if (finch_st_open(DIR "adapter_model.safetensors", &st, &err) != FINCH_OK) fail_msg("%s", err.msg);
    assert_string_equal(finch_st_get_meta(st, "format"), "pt");
    const finch_st_tensor *a =
        finch_st_find(st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    const finch_st_tensor *b =
        finch_st_find(st, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->type, FINCH_DTYPE_F32);
    assert_int_equal(a->n_dims, 2);
    assert_int_equal(a->shape[0], 4);
    assert_int_equal(a->shape[1], 16);
    assert_int_equal(b->shape[0], 16);
    assert_int_equal(b->shape[1], 4);
    assert_int_equal(finch_st_n_tensors(st), 8);
    finch_st_close(st);
}

static void test_scalar_and_empty(void **state) {
    (void)state;
    finch_err err = {0};
    finch_st *st = NULL;
    if (finch_st_open(DIR "basic.safetensors", &st, &err) != FINCH_OK) fail_msg("%s", err.msg);
    const finch_st_tensor *s = finch_st_find(st, "scalar");
    assert_int_equal(s->n_dims, 0);
    assert_int_equal(s->n_elems, 1);
    assert_int_equal(s->nbytes, 4);
    float v;
    memcpy(&v, s->data, 4);
    assert_true(v == 2.5f);
    const finch_st_tensor *e = finch_st_find(st, "empty");
    assert_int_equal(e->n_dims, 2);
    assert_int_equal(e->shape[0], 0);
    assert_int_equal(e->shape[1], 3);
    assert_int_equal(e->n_elems, 0);
    assert_int_equal(e->nbytes, 0);
    finch_st_close(st);
}

static void test_dtype_table(void **state) {
    (void)state;
    assert_string_equal(finch_st_dtype_name(FINCH_ST_BF16), "BF16");
    assert_string_equal(finch_st_dtype_name((finch_st_dtype)99), "unknown");
    assert_int_equal(finch_st_dtype_size(FINCH_ST_F64), 8);
    assert_int_equal(finch_st_dtype_size(FINCH_ST_BOOL), 1);
    assert_int_equal(finch_st_dtype_size((finch_st_dtype)-1), 0);
    assert_int_equal(finch_st_dtype_to_finch(FINCH_ST_F16), FINCH_DTYPE_F16);
    assert_int_equal(finch_st_dtype_to_finch(FINCH_ST_I64), FINCH_DTYPE_I64);
    assert_int_equal(finch_st_dtype_to_finch(FINCH_ST_U8), FINCH_DTYPE_COUNT);
    for (int k = 1; k < FINCH_ST_DTYPE_COUNT; k++)
        assert_true(finch_st_dtype_size((finch_st_dtype)k) >= finch_st_dtype_size((finch_st_dtype)(k - 1)));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_package_files),
        cmocka_unit_test(test_peft_adapter),
        cmocka_unit_test(test_scalar_and_empty),
        cmocka_unit_test(test_dtype_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
