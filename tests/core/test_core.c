/*
 * test_core.c: half-precision conversions (the portable code against the CPU's F16C
 * instructions and against exact arithmetic), bfloat16 rounding, checked size
 * arithmetic, the random generator, and atomic file commits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

/* Every half value converts to the float it denotes: sign * 2^(e-15) * (1 + m/1024), or
 * the subnormal m * 2^-24; and back to itself. */
static void test_f16_every_value(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        int e = (h >> 10) & 31, m = h & 1023;
        float f = finch_f16_to_f32_soft((uint16_t)h);
        assert_true(finch_f16_to_f32((uint16_t)h) == f || (isnan(f) && isnan(finch_f16_to_f32((uint16_t)h))));
        if (e == 31) {
            assert_true(m ? isnan(f) : isinf(f));
            continue;
        }
        double want = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m, -24);
        if (h & 0x8000) want = -want;
        assert_true((double)f == want);
        assert_int_equal(finch_f32_to_f16_soft(f), h);
    }
}

/* Rounding to half: ties to even, overflow to inf, underflow through subnormals to 0;
 * the portable code agrees with F16C on a sweep of floats. */
static void test_f16_rounding(void **state) {
    (void)state;
    assert_int_equal(finch_f32_to_f16_soft(1.0f + 1.0f / 2048), 0x3c00);          /* tie: even */
    assert_int_equal(finch_f32_to_f16_soft(1.0f + 3.0f / 2048), 0x3c02);          /* tie: even */
    assert_int_equal(finch_f32_to_f16_soft(65504.0f), 0x7bff);                     /* max */
    assert_int_equal(finch_f32_to_f16_soft(65520.0f), 0x7c00);                     /* to inf */
    assert_int_equal(finch_f32_to_f16_soft(ldexpf(1.0f, -25)), 0x0000);            /* tie to 0 */
    assert_int_equal(finch_f32_to_f16_soft(ldexpf(1.5f, -25)), 0x0001);
    assert_int_equal(finch_f32_to_f16_soft(-ldexpf(3.0f, -25)), 0x8002);           /* tie: even */
    assert_true((finch_f32_to_f16_soft(NAN) & 0x7c00) == 0x7c00 && (finch_f32_to_f16_soft(NAN) & 0x3ff));
    finch_rng r;
    finch_rng_seed(&r, 11);
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)finch_rng_u64(&r);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) continue;
        assert_int_equal(finch_f32_to_f16_soft(f), finch_f32_to_f16(f));
    }
}

static void test_bf16(void **state) {
    (void)state;
    assert_int_equal(finch_f32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1) */
    assert_int_equal(finch_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);
    assert_int_equal(finch_f32_to_bf16(1.0f + ldexpf(3.0f, -8)), 0x3f82);
    assert_true(isnan(finch_bf16_to_f32(finch_f32_to_bf16(NAN))));
    assert_true(finch_bf16_to_f32(0xc040) == -3.0f);
}

static void test_sizes(void **state) {
    (void)state;
    size_t out = 7;
    assert_false(finch_size_mul(SIZE_MAX / 2 + 1, 2, &out));
    assert_int_equal(out, 7);
    assert_true(finch_size_mul(1u << 20, 1u << 10, &out));
    assert_int_equal(out, (size_t)1 << 30);
    assert_false(finch_size_add(SIZE_MAX, 1, &out));
    size_t rb;
    assert_true(finch_dtype_row_bytes(FINCH_DTYPE_Q4_1, 576, &rb));
    assert_int_equal(rb, 18 * 20);
    assert_false(finch_dtype_row_bytes(FINCH_DTYPE_Q4_K, 576, &rb)); /* not whole blocks */
    assert_null(finch_dtype_get(4));                                 /* retired Q4_2 */
    assert_null(finch_dtype_get(1000));
}

static void test_rng(void **state) {
    (void)state;
    finch_rng a, b;
    finch_rng_seed(&a, 42);
    finch_rng_seed(&b, 42);
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        assert_true(finch_rng_u64(&a) == finch_rng_u64(&b));
        float f = finch_rng_float(&a);
        finch_rng_float(&b);
        assert_true(f >= 0.0f && f < 1.0f);
        sum += f;
    }
    assert_true(fabs(sum / 100000 - 0.5) < 0.01);
}

static finch_status write_text(FILE *f, void *user, finch_err *err) {
    return finch_fwrite(f, user, strlen(user), "test", err);
}

static finch_status write_fail(FILE *f, void *user, finch_err *err) {
    (void)user;
    fputs("partial", f);
    return finch_err_set(err, FINCH_E_IO, "simulated failure");
}

/* A failed write leaves the previous file intact and no temp file behind. */
static void test_file_commit(void **state) {
    (void)state;
    char dir[] = "/tmp/finch_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    finch_err err;
    assert_int_equal(finch_file_commit(path, write_text, "first", &err), FINCH_OK);
    assert_int_equal(finch_file_commit(path, write_fail, NULL, &err), FINCH_E_IO);
    finch_mapped_file f;
    assert_int_equal(finch_file_map(path, &f, &err), FINCH_OK);
    assert_int_equal(f.size, 5);
    assert_memory_equal(f.data, "first", 5);
    finch_file_unmap(&f);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "test $(ls %s | wc -l) -eq 1", dir);
    assert_int_equal(system(cmd), 0);
    /* mapping a directory or a missing file is a clear I/O error */
    assert_int_equal(finch_file_map(dir, &f, &err), FINCH_E_IO);
    assert_non_null(strstr(err.msg, "is a directory"));
    snprintf(path, sizeof path, "%s/missing", dir);
    assert_int_equal(finch_file_map(path, &f, &err), FINCH_E_IO);
    assert_non_null(strstr(err.msg, "missing"));
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_err_prefix(void **state) {
    (void)state;
    finch_err err;
    finch_err_set(&err, FINCH_E_FORMAT, "line %d: bad", 3);
    finch_err_prefix(&err, "reading %s", "x.jsonl");
    assert_string_equal(err.msg, "reading x.jsonl: line 3: bad");
    assert_int_equal(err.code, FINCH_E_FORMAT);
    assert_string_equal(finch_status_str(FINCH_E_FORMAT), "format");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_every_value), cmocka_unit_test(test_f16_rounding),
        cmocka_unit_test(test_bf16),            cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_rng),             cmocka_unit_test(test_file_commit),
        cmocka_unit_test(test_err_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
