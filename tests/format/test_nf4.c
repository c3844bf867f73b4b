/*
 * test_nf4.c: NF4 against bitsandbytes itself (tests/reference/make_nf4_fixtures.py, its
 * CPU path): for every case the packed bytes and absmax values of quantize_4bit, the
 * double quantization's 8-bit codes, nested absmax and offset, and every dequantized
 * value are compared bit for bit; so are the code book and the dynamic map. A
 * double quantization made by bitsandbytes' native library (whose 8-bit step can pick a
 * neighbour of the nearest code) must dequantize to bitsandbytes' values too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/quant.h" /* finch_block_nf4, finch_quantize_nf4, finch_nf4_* */
#include "io/io.h"      /* finch_st_open */

#define FIXTURE FINCH_FIXTURES "/nf4/bnb_nf4.safetensors"

static const finch_st_tensor *get(const finch_st *st, const char *name, finch_st_dtype dtype,
                                  uint64_t n) {
    const finch_st_tensor *t = finch_st_find(st, name);
    if (!t) fail_msg("%s: no tensor '%s'", FIXTURE, name);
    if (t->dtype != dtype || t->n_elems != n)
        fail_msg("%s: '%s' has %llu elements of %s, expected %llu of %s", FIXTURE, name,
                 (unsigned long long)t->n_elems, finch_st_dtype_name(t->dtype),
                 (unsigned long long)n, finch_st_dtype_name(dtype));
    return t;
}

/* f32 values of a fixture tensor (copied: the mapping need not be aligned) */
static float *f32_of(const finch_st_tensor *t) {
    float *v = malloc(t->n_elems * sizeof(float) + 1);
    assert_non_null(v);
    if (t->dtype == FINCH_ST_BF16) {
        for (uint64_t i = 0; i < t->n_elems; i++) {
            uint16_t h;
            memcpy(&h, t->data + 2 * i, 2);
            v[i] = finch_bf16_to_f32(h);
        }
    } else {
        memcpy(v, t->data, t->nbytes);
    }
    return v;
}

/* a and b (n floats) bit for bit; the first difference is reported */
static void expect_bits(const char *what, const float *a, const void *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float y;
        memcpy(&y, (const uint8_t *)b + 4 * i, 4);
        if (memcmp(&a[i], &y, 4))
            fail_msg("%s: element %lld: finch %.9g, bitsandbytes %.9g", what, (long long)i, a[i],
                     y);
    }
}

static void dequant_all(float *out, const finch_block_nf4 *b, int64_t n) {
    finch_dequant_nf4(out, b, n);
}

static void check_case(const finch_st *st, const char *name, const float *map) {
    char k[128];
    snprintf(k, sizeof k, "%s.input", name);
    const finch_st_tensor *in = finch_st_find(st, k);
    assert_non_null(in);
    assert_int_equal(in->n_dims, 2);
    const int64_t rows = in->shape[0], cols = in->shape[1], n = rows * cols, nb = n / QK_NF4;
    assert_int_equal(cols % QK_NF4, 0);
    float *x = f32_of(in), *y = malloc((size_t)n * sizeof(float));
    finch_block_nf4 *b = malloc((size_t)nb * sizeof *b), *b2 = malloc((size_t)nb * sizeof *b);
    assert_true(y && b && b2);
    /* row by row, as a loader does */
    size_t rb;
    assert_true(finch_dtype_row_bytes(FINCH_DTYPE_NF4, cols, &rb));
    for (int64_t r = 0; r < rows; r++)
        finch_dtype_info[FINCH_DTYPE_NF4].quant((uint8_t *)b + r * rb, x + r * cols, cols);

    snprintf(k, sizeof k, "%s.packed", name);
    const finch_st_tensor *packed = get(st, k, FINCH_ST_U8, (uint64_t)n / 2);
    snprintf(k, sizeof k, "%s.absmax", name);
    const finch_st_tensor *absmax = get(st, k, FINCH_ST_F32, (uint64_t)nb);
    for (int64_t i = 0; i < nb; i++) {
        for (int j = 0; j < 32; j++)
            if (b[i].qs[j] != packed->data[32 * i + j])
                fail_msg("%s: block %lld byte %d: finch 0x%02x, bitsandbytes 0x%02x", name,
                         (long long)i, j, b[i].qs[j], packed->data[32 * i + j]);
        snprintf(k, sizeof k, "%s absmax of block %lld", name, (long long)i);
        expect_bits(k, &b[i].d, absmax->data + 4 * i, 1);
    }
    dequant_all(y, b, n);
    snprintf(k, sizeof k, "%s.dequant", name);
    expect_bits(k, y, get(st, k, FINCH_ST_F32, (uint64_t)n)->data, n);

    /* double quantization, the exact 8-bit rule: bytes and values */
    const int64_t ng = (nb + QK_NF4_NESTED - 1) / QK_NF4_NESTED;
    uint8_t *q8 = malloc((size_t)nb);
    float *nested = malloc((size_t)ng * sizeof(float)), off;
    assert_true(q8 && nested);
    memcpy(b2, b, (size_t)nb * sizeof *b);
    finch_nf4_double_quant(b2, nb, q8, nested, &off);
    snprintf(k, sizeof k, "%s.dq.offset", name);
    expect_bits(k, &off, get(st, k, FINCH_ST_F32, 1)->data, 1);
    snprintf(k, sizeof k, "%s.dq.absmax", name);
    const finch_st_tensor *tq8 = get(st, k, FINCH_ST_U8, (uint64_t)nb);
    for (int64_t i = 0; i < nb; i++)
        if (q8[i] != tq8->data[i])
            fail_msg("%s: 8-bit code of block %lld: finch %d, bitsandbytes %d", name, (long long)i,
                     q8[i], tq8->data[i]);
    snprintf(k, sizeof k, "%s.dq.nested_absmax", name);
    expect_bits(k, nested, get(st, k, FINCH_ST_F32, (uint64_t)ng)->data, ng);
    for (int64_t i = 0; i < nb; i++) assert_memory_equal(b2[i].qs, b[i].qs, 32);
    dequant_all(y, b2, n);
    snprintf(k, sizeof k, "%s.dq.dequant", name);
    expect_bits(k, y, get(st, k, FINCH_ST_F32, (uint64_t)n)->data, n);

    /* the native library's double quantization, dequantized as a loader does */
    float *am = malloc((size_t)nb * sizeof(float));
    assert_non_null(am);
    snprintf(k, sizeof k, "%s.dqlib.absmax", name);
    const uint8_t *lq8 = get(st, k, FINCH_ST_U8, (uint64_t)nb)->data;
    snprintf(k, sizeof k, "%s.dqlib.nested_absmax", name);
    float *lnested = f32_of(get(st, k, FINCH_ST_F32, (uint64_t)ng));
    snprintf(k, sizeof k, "%s.dqlib.offset", name);
    float *loff = f32_of(get(st, k, FINCH_ST_F32, 1));
    finch_nf4_dequant_absmax(am, lq8, nb, lnested, map, QK_NF4_NESTED, *loff);
    for (int64_t i = 0; i < nb; i++) b2[i].d = am[i];
    dequant_all(y, b2, n);
    snprintf(k, sizeof k, "%s.dqlib.dequant", name);
    expect_bits(k, y, get(st, k, FINCH_ST_F32, (uint64_t)n)->data, n);

    free(am);
    free(lnested);
    free(loff);
    free(q8);
    free(nested);
    free(x);
    free(y);
    free(b);
    free(b2);
}

static void test_nf4_against_bitsandbytes(void **state) {
    (void)state;
    finch_st *st;
    finch_err err;
    if (finch_st_open(FIXTURE, &st, &err)) fail_msg("%s", err.msg);
    expect_bits("nf4 code book", finch_nf4_code, get(st, "nf4_code", FINCH_ST_F32, 16)->data, 16);
    float *map = f32_of(get(st, "dynamic_map", FINCH_ST_F32, 256));
    expect_bits("dynamic map", finch_nf4_dynamic_map, map, 256);
    const char *cases = finch_st_get_meta(st, "cases");
    assert_non_null(cases);
    char list[256];
    snprintf(list, sizeof list, "%s", cases);
    int n_cases = 0;
    for (char *save, *c = strtok_r(list, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        check_case(st, c, map);
        n_cases++;
    }
    assert_int_equal(n_cases, 5);
    free(map);
    finch_st_close(st);
}

/* NF4 is finch's own type: no GGUF file may carry it, nor can one be written with it. */
static void test_nf4_not_a_gguf_type(void **state) {
    (void)state;
    assert_null(finch_dtype_get(FINCH_DTYPE_NF4));
    assert_non_null(finch_dtype_get(FINCH_DTYPE_Q4_1));
    size_t rb;
    assert_true(finch_dtype_row_bytes(FINCH_DTYPE_NF4, 128, &rb));
    assert_int_equal(rb, 72);
    assert_false(finch_dtype_row_bytes(FINCH_DTYPE_NF4, 96, &rb));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nf4_against_bitsandbytes),
        cmocka_unit_test(test_nf4_not_a_gguf_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
