/*
 * test_safetensors_roundtrip.c: the safetensors writer. Files the PyPI package wrote are
 * read, copied tensor by tensor into a finch writer and saved: the bytes must be identical
 * (same order, same header, same padding). A write -> read round trip covers every dtype, a
 * scalar, an empty tensor and metadata. finch_written.safetensors (made by this test when
 * FINCH_WRITE_FIXTURES=1, then checked with the package by
 * make_safetensors_fixtures.py --verify) must still be what the writer produces, and its
 * recorded verdict must be ok. Usage errors of the writer are checked last.
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
#define TMP FINCH_BINARY_DIR "/test_safetensors_roundtrip.tmp.safetensors"

/* Opens src and saves all its tensors and metadata to dst with the finch writer. */
static void copy_file(const char *src, const char *dst) {
    finch_err err = {0};
    finch_st *st = NULL;
    if (finch_st_open(src, &st, &err) != FINCH_OK) fail_msg("%s", err.msg);
    finch_st_writer *w = finch_st_writer_new(&err);
    assert_non_null(w);
    for (int64_t i = 0; i < finch_st_n_tensors(st); i++) {
        const finch_st_tensor *t = finch_st_tensor_at(st, i);
        if (finch_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, t->data, &err))
            fail_msg("%s", err.msg);
    }
    for (int64_t i = 0; i < finch_st_n_meta(st); i++) {
        const char *k, *v;
        finch_st_meta_at(st, i, &k, &v);
        assert_int_equal(finch_st_writer_set_meta(w, k, v, &err), FINCH_OK);
    }
    if (finch_st_writer_save(w, dst, &err) != FINCH_OK) fail_msg("%s", err.msg);
    finch_st_writer_free(w);
    finch_st_close(st);
}

static void assert_same_bytes(const char *a, const char *b) {
    size_t na, nb;
    uint8_t *pa = read_file(a, &na), *pb = read_file(b, &nb);
    if (na != nb) fail_msg("%s: %zu bytes, %s: %zu bytes", a, na, b, nb);
    for (size_t i = 0; i < na; i++)
        if (pa[i] != pb[i]) fail_msg("%s and %s differ at byte %zu", a, b, i);
    free(pa);
    free(pb);
}

/* With at most one metadata pair (the package's metadata order is a hash map's), finch
 * writes exactly the package's bytes. */
static void test_same_bytes_as_package(void **state) {
    (void)state;
    static const char *const files[] = {"basic.safetensors", "adapter_model.safetensors",
                                        "empty.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char src[1024];
        snprintf(src, sizeof src, DIR "%s", files[i]);
        copy_file(src, TMP);
        assert_same_bytes(src, TMP);
    }
    remove(TMP);
}

/* meta.safetensors: several metadata pairs, compared by value after a round trip. */
static void test_metadata_roundtrip(void **state) {
    (void)state;
    copy_file(DIR "meta.safetensors", TMP);
    finch_err err = {0};
    finch_st *a = NULL, *b = NULL;
    assert_int_equal(finch_st_open(DIR "meta.safetensors", &a, &err), FINCH_OK);
    if (finch_st_open(TMP, &b, &err) != FINCH_OK) fail_msg("%s", err.msg);
    assert_int_equal(finch_st_n_meta(a), 5);
    assert_int_equal(finch_st_n_meta(b), 5);
    for (int64_t i = 0; i < 5; i++) {
        const char *ka, *va, *kb, *vb;
        finch_st_meta_at(a, i, &ka, &va);
        finch_st_meta_at(b, i, &kb, &vb);
        assert_string_equal(ka, kb);
        assert_string_equal(va, vb);
    }
    assert_string_equal(finch_st_get_meta(b, "unicode"), "na\xc3\xafve \xe2\x80\x94 \xe2\x9c\x93");
    assert_string_equal(finch_st_get_meta(b, "json_like"), "{\"a\": [1, 2]}");
    finch_st_close(a);
    finch_st_close(b);
    remove(TMP);
}

/* Every dtype, shapes of every rank, written in an order the writer must rearrange. */
static void test_all_dtypes(void **state) {
    (void)state;
    finch_err err = {0};
    finch_st_writer *w = finch_st_writer_new(&err);
    uint8_t bytes[FINCH_ST_DTYPE_COUNT][64];
    for (int d = 0; d < FINCH_ST_DTYPE_COUNT; d++)
        for (int i = 0; i < 64; i++) bytes[d][i] = (uint8_t)(d * 31 + i * 7);
    const int64_t shapes[3][FINCH_ST_MAX_DIMS] = {{2, 3}, {5}, {1, 1, 1, 1, 1, 1, 1, 2}};
    const int ranks[3] = {2, 1, 8};
    for (int d = 0; d < FINCH_ST_DTYPE_COUNT; d++) {
        char name[64];
        snprintf(name, sizeof name, "t.%02d.%s", FINCH_ST_DTYPE_COUNT - d,
                 finch_st_dtype_name((finch_st_dtype)d));
        assert_int_equal(finch_st_writer_add(w, name, (finch_st_dtype)d, ranks[d % 3],
                                             shapes[d % 3], bytes[d], &err),
                         FINCH_OK);
    }
    assert_int_equal(finch_st_writer_add(w, "scalar", FINCH_ST_F64, 0, NULL, bytes[0], &err), FINCH_OK);
    const int64_t empty[3] = {4, 0, 2};
    assert_int_equal(finch_st_writer_add(w, "empty", FINCH_ST_BF16, 3, empty, NULL, &err), FINCH_OK);
    assert_int_equal(finch_st_writer_set_meta(w, "format", "pt", &err), FINCH_OK);
    assert_int_equal(finch_st_writer_set_meta(w, "b", "first", &err), FINCH_OK);
    assert_int_equal(finch_st_writer_set_meta(w, "b", "second", &err), FINCH_OK);
    if (finch_st_writer_save(w, TMP, &err) != FINCH_OK) fail_msg("%s", err.msg);
    finch_st_writer_free(w);

    finch_st *st = NULL;
    if (finch_st_open(TMP, &st, &err) != FINCH_OK) fail_msg("%s", err.msg);
    assert_int_equal(finch_st_n_tensors(st), FINCH_ST_DTYPE_COUNT + 2);
    assert_int_equal(finch_st_n_meta(st), 2);
    assert_string_equal(finch_st_get_meta(st, "b"), "second");
    for (int d = 0; d < FINCH_ST_DTYPE_COUNT; d++) {
        char name[64];
        snprintf(name, sizeof name, "t.%02d.%s", FINCH_ST_DTYPE_COUNT - d,
                 finch_st_dtype_name((finch_st_dtype)d));
        const finch_st_tensor *t = finch_st_find(st, name);
        assert_non_null(t);
        assert_int_equal(t->dtype, d);
        assert_int_equal(t->n_dims, ranks[d % 3]);
        for (int k = 0; k < ranks[d % 3]; k++) assert_int_equal(t->shape[k], shapes[d % 3][k]);
        assert_int_equal(t->nbytes, (t->n_elems * (uint64_t)finch_st_dtype_size(t->dtype)));
        assert_memory_equal(t->data, bytes[d], t->nbytes);
        assert_int_equal((uintptr_t)t->data % (uintptr_t)finch_st_dtype_size(t->dtype), 0);
    }
    const finch_st_tensor *s = finch_st_find(st, "scalar");
    assert_int_equal(s->n_dims, 0);
    assert_int_equal(s->nbytes, 8);
    assert_memory_equal(s->data, bytes[0], 8);
    const finch_st_tensor *e = finch_st_find(st, "empty");
    assert_int_equal(e->nbytes, 0);
    assert_int_equal(e->shape[1], 0);
    finch_st_close(st);

    size_t n;
    uint8_t *file = read_file(TMP, &n);
    uint64_t header = 0;
    for (int k = 7; k >= 0; k--) header = header << 8 | file[k];
    assert_int_equal(header % 8, 0);
    assert_int_equal(file[8], '{');
    assert_true(file[8 + header - 1] == '}' || file[8 + header - 1] == ' ');
    free(file);
    remove(TMP);
}

/* finch_written.safetensors: written by this test on request, read back by the package. */
static void test_package_reads_ours(void **state) {
    (void)state;
    const char *fixture = DIR "finch_written.safetensors";
    const char *write = getenv("FINCH_WRITE_FIXTURES");
    if (write && write[0] == '1') copy_file(DIR "basic.safetensors", fixture);
    copy_file(DIR "basic.safetensors", TMP);
    assert_same_bytes(fixture, TMP);
    remove(TMP);
    json_error_t jerr;
    json_t *verdict = json_load_file(DIR "finch_written.check.json", 0, &jerr);
    if (!verdict)
        fail_msg("finch_written.check.json: %s (run make_safetensors_fixtures.py --verify)",
                 jerr.text);
    assert_true(json_is_true(json_object_get(verdict, "ok")));
    size_t size;
    free(read_file(fixture, &size));
    assert_int_equal(json_integer_value(json_object_get(verdict, "size")), size);
    json_decref(verdict);
}

static void test_writer_usage_errors(void **state) {
    (void)state;
    finch_err err = {0};
    finch_st_writer *w = finch_st_writer_new(&err);
    const float x[4] = {1, 2, 3, 4};
    const int64_t s4[1] = {4}, neg[2] = {2, -1}, big[2] = {INT64_MAX, 4};
    const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 4};
    assert_int_equal(finch_st_writer_add(w, "a", FINCH_ST_F32, 1, s4, x, &err), FINCH_OK);
    assert_int_equal(finch_st_writer_add(w, "a", FINCH_ST_F32, 1, s4, x, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "added twice"));
    assert_int_equal(finch_st_writer_add(w, "", FINCH_ST_F32, 1, s4, x, &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_add(w, "__metadata__", FINCH_ST_F32, 1, s4, x, &err),
                     FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_add(w, "bad\xff", FINCH_ST_F32, 1, s4, x, &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_add(w, "n", FINCH_ST_F32, 2, neg, x, &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_add(w, "o", FINCH_ST_F32, 2, big, x, &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_add(w, "r", FINCH_ST_F32, 9, nine, x, &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_add(w, "d", (finch_st_dtype)77, 1, s4, x, &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_add(w, "z", FINCH_ST_F32, 1, s4, NULL, &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_set_meta(w, "k", "\xc3", &err), FINCH_E_USAGE);
    assert_int_equal(finch_st_writer_save(w, FINCH_BINARY_DIR "/no/such/dir/x.safetensors", &err),
                     FINCH_E_IO);
    finch_st_writer_free(w);
    finch_st_writer_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bytes_as_package),
        cmocka_unit_test(test_metadata_roundtrip),
        cmocka_unit_test(test_all_dtypes),
        cmocka_unit_test(test_package_reads_ours),
        cmocka_unit_test(test_writer_usage_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
