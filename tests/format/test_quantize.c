/*
 * test_quantize.c: finch's reference quantizers against the PyPI gguf package's
 * (tests/reference/make_gguf_fixtures.py writes a fixed f32 input and the package's
 * quantization of it: the bytes must be equal), error bounds of dequant(quant(x)) derived
 * from each format's rounding rule, and the half-precision conversions on hand-derived
 * special values: subnormals, infinities, NaN, overflow and rounding ties.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h" /* read_file */

#include "core/quant.h" /* finch_dtype_info, finch_quantize_*, finch_f32_to_f16/bf16 */

#define FIXTURE_DIR FINCH_FIXTURES "/gguf/"

static float *read_f32(const char *name, size_t *n) {
    char path[512];
    snprintf(path, sizeof path, FIXTURE_DIR "%s", name);
    size_t bytes;
    float *x = (float *)read_file(path, &bytes);
    assert_int_equal(bytes % 4, 0);
    *n = bytes / 4;
    return x;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Quantizes x (n elements) with finch and compares with the package's bytes in file,
 * naming the first differing block. */
static void check_against_package(finch_dtype t, const float *x, size_t n, const char *file) {
    const finch_dtype_traits *tr = &finch_dtype_info[t];
    char path[512];
    snprintf(path, sizeof path, FIXTURE_DIR "%s", file);
    size_t want_bytes, got_bytes;
    uint8_t *want = read_file(path, &want_bytes);
    assert_true(finch_dtype_row_bytes(t, (int64_t)n, &got_bytes));
    assert_int_equal(got_bytes, want_bytes);
    uint8_t *got = malloc(got_bytes);
    assert_non_null(got);
    assert_non_null(tr->quant);
    tr->quant(got, x, (int64_t)n);
    for (size_t b = 0; b < got_bytes / (size_t)tr->block_bytes; b++) {
        const size_t at = b * (size_t)tr->block_bytes;
        const uint8_t *g = got + at, *w = want + at;
        if (memcmp(g, w, (size_t)tr->block_bytes) != 0) {
            int k = 0;
            while (g[k] == w[k]) k++;
            fail_msg("%s: block %zu differs from the gguf package at byte %d: 0x%02x vs 0x%02x "
                     "(input element %zu = %.9g)", tr->name, b, k, g[k], w[k],
                     b * (size_t)tr->block_elems, (double)x[b * (size_t)tr->block_elems]);
        }
    }
    free(got);
    free(want);
}

static void test_bytes_match_gguf_package(void **state) {
    (void)state;
    size_t n;
    float *x = read_f32("quant_input.f32", &n);
    assert_int_equal(n, 512);
    check_against_package(FINCH_DTYPE_Q8_0, x, n, "quant_input.q8_0");
    check_against_package(FINCH_DTYPE_Q4_0, x, n, "quant_input.q4_0");
    check_against_package(FINCH_DTYPE_Q4_1, x, n, "quant_input.q4_1");
    check_against_package(FINCH_DTYPE_Q5_0, x, n, "quant_input.q5_0");
    check_against_package(FINCH_DTYPE_Q5_1, x, n, "quant_input.q5_1");
    check_against_package(FINCH_DTYPE_BF16, x, n, "quant_input.bf16");
    check_against_package(FINCH_DTYPE_F16, x, n, "quant_input.f16");
    free(x);
}

/* The special values (zeros, inf, NaN, subnormals, overflow, ties) converted by numpy. */
static void test_conversions_match_gguf_package(void **state) {
    (void)state;
    size_t n;
    float *x = read_f32("conv_input.f32", &n);
    assert_int_equal(n, 63);
    check_against_package(FINCH_DTYPE_F16, x, n, "conv_input.f16");
    check_against_package(FINCH_DTYPE_BF16, x, n, "conv_input.bf16");
    free(x);
}

/* f32 -> f16 on values whose correct result follows from the IEEE rules by hand. */
static void test_f16_specials(void **state) {
    (void)state;
    static const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x00000000, 0x0000}, /* +0 */
        {0x80000000, 0x8000}, /* -0 */
        {0x3F800000, 0x3C00}, /* 1 */
        {0xC0000000, 0xC000}, /* -2 */
        {0x477FE000, 0x7BFF}, /* 65504, the largest half */
        {0x477FEFFF, 0x7BFF}, /* just below the midpoint to 65536 */
        {0x477FF000, 0x7C00}, /* 65520: tie, rounds to even, which is infinity */
        {0x47800000, 0x7C00}, /* 65536 */
        {0x7F7FFFFF, 0x7C00}, /* FLT_MAX */
        {0xFF7FFFFF, 0xFC00}, /* -FLT_MAX */
        {0x7F800000, 0x7C00}, /* inf */
        {0xFF800000, 0xFC00}, /* -inf */
        {0x38800000, 0x0400}, /* 2^-14, the smallest normal half */
        {0x387FE000, 0x0400}, /* 2^-14 - 2^-25: tie between 0x3FF and 0x400, even wins */
        {0x387FC000, 0x03FF}, /* 2^-14 - 2^-24: the largest subnormal */
        {0x33800000, 0x0001}, /* 2^-24: the smallest subnormal */
        {0x33000000, 0x0000}, /* 2^-25: tie between 0 and 2^-24, even wins */
        {0x33000001, 0x0001}, /* just above 2^-25 */
        {0x33C00000, 0x0002}, /* 3 * 2^-25: tie between 1 and 2, even wins */
        {0xB3C00000, 0x8002}, /* negative of the above */
        {0x00000001, 0x0000}, /* f32 subnormal underflows */
        {0x3F801000, 0x3C00}, /* 1 + 2^-11: tie, rounds down to even */
        {0x3F803000, 0x3C02}, /* 1 + 3 * 2^-11: tie, rounds up to even */
        {0x3F801001, 0x3C01}, /* just above the tie */
        {0x3F802000, 0x3C01}, /* 1 + 2^-10, exact */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = finch_f32_to_f16(bits_f32(cases[i].in));
        if (h != cases[i].out)
            fail_msg("f32 0x%08x -> f16 0x%04x, expected 0x%04x", cases[i].in, h, cases[i].out);
    }
    /* NaN stays a NaN of the same sign. The portable conversion gives 0x7E00 as ggml's
     * does; the F16C instruction keeps the top payload bits (numpy keeps them without
     * quieting: 0x7F800001 -> 0x7C01, which is why the fixture has quiet NaNs only). */
    const uint32_t nans[] = {0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFF800001};
    for (size_t i = 0; i < 5; i++) {
        uint16_t h = finch_f32_to_f16(bits_f32(nans[i]));
        assert_int_equal(h & 0x7E00, 0x7E00);
        assert_int_equal(h >> 15, nans[i] >> 31);
        assert_int_equal(finch_f32_to_f16_soft(bits_f32(nans[i])),
                         (nans[i] >> 31) ? 0xFE00 : 0x7E00);
    }
}

/* The portable f32 -> f16 and the one the build uses (F16C when targeted) agree on a dense
 * sweep of every exponent, sign and rounding position (NaNs: both NaN, same sign). */
static void test_f16_paths_agree(void **state) {
    (void)state;
    for (uint64_t u = 0; u <= UINT32_MAX; u += 251) {
        float f = bits_f32((uint32_t)u);
        uint16_t a = finch_f32_to_f16(f), b = finch_f32_to_f16_soft(f);
        if (isnan(f)) {
            assert_true((a & 0x7C00) == 0x7C00 && (a & 0x3FF) && a >> 15 == b >> 15);
            continue;
        }
        if (a != b) fail_msg("f32 0x%08x: f16 0x%04x, portable 0x%04x", (uint32_t)u, a, b);
    }
}

/* f16 -> f32 is exact: every half converts and comes back unchanged (NaN stays NaN). */
static void test_f16_round_trip_all(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = finch_f16_to_f32((uint16_t)h);
        bool is_nan = (h & 0x7C00) == 0x7C00 && (h & 0x03FF);
        if (is_nan) {
            assert_true(isnan(f));
            continue;
        }
        if (finch_f32_to_f16(f) != h) fail_msg("f16 0x%04x -> %.9g -> 0x%04x", h, (double)f,
                                               finch_f32_to_f16(f));
    }
    assert_true(finch_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(finch_f16_to_f32(0x03FF) == 0x3FFp-24f);
    assert_true(finch_f16_to_f32(0x7BFF) == 65504.0f);
    assert_true(finch_f16_to_f32(0xC000) == -2.0f);
    assert_true(isinf(finch_f16_to_f32(0xFC00)) && finch_f16_to_f32(0xFC00) < 0);
    assert_int_equal(f32_bits(finch_f16_to_f32(0x8000)), 0x80000000u);
}

static void test_bf16_specials(void **state) {
    (void)state;
    static const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x3F800000, 0x3F80}, /* 1 */
        {0x80000000, 0x8000}, /* -0 */
        {0x3F808000, 0x3F80}, /* 1 + 2^-8: tie, rounds down to even */
        {0x3F818000, 0x3F82}, /* 1 + 3 * 2^-8: tie, rounds up to even */
        {0x3F808001, 0x3F81}, /* just above the tie */
        {0x3F80FFFF, 0x3F81}, /* rounds up */
        {0x7F7FFFFF, 0x7F80}, /* FLT_MAX rounds to infinity */
        {0x7F800000, 0x7F80}, /* inf */
        {0xFF800000, 0xFF80}, /* -inf */
        {0x00018000, 0x0002}, /* subnormal tie, rounds up to even */
        {0x00028000, 0x0002}, /* subnormal tie, stays even */
        {0x7FC00000, 0x7FC0}, /* quiet NaN */
        {0x7F800001, 0x7FC0}, /* signalling NaN is quieted, not rounded to infinity */
        {0xFF800001, 0xFFC0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = finch_f32_to_bf16(bits_f32(cases[i].in));
        if (h != cases[i].out)
            fail_msg("f32 0x%08x -> bf16 0x%04x, expected 0x%04x", cases[i].in, h, cases[i].out);
    }
    for (uint32_t h = 0; h < 65536; h++) {
        float f = finch_bf16_to_f32((uint16_t)h);
        assert_int_equal(f32_bits(f), h << 16);
        if (!isnan(f)) assert_int_equal(finch_f32_to_bf16(f), h);
    }
}

/* Standard normal draws (Box-Muller on finch_rng), scaled per block. */
static void normal_blocks(float *x, int n_blocks, uint64_t seed) {
    finch_rng r;
    finch_rng_seed(&r, seed);
    for (int b = 0; b < n_blocks; b++) {
        float scale = powf(10.0f, -3.0f + 5.0f * finch_rng_float(&r));
        for (int j = 0; j < QK; j++) {
            double u1 = 1.0 - finch_rng_float(&r), u2 = finch_rng_float(&r);
            x[b * QK + j] = scale * (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        }
    }
}

/*
 * Bounds per block. A scale d stored as fp16 is off by at most dd = max(e |d|, 2^-25)
 * (e = 2^-11 relative for normal halves, half the subnormal step 2^-24 below 2^-14), and
 * that error is multiplied by the quant |q|; the rounding rule adds its own part:
 *   q8_0:  |x - y| <= d/2 + 127 dd                        (d = max|x| / 127)
 *   q4_0:  |x - y| <= d   + 8 dd    (the extreme's opposite, q = 16, is clipped to 15)
 *   q5_0:  |x - y| <= d   + 16 dd
 *   q4_1:  |x - y| <= d/2 + 15 dd + dm                    (d = (max - min) / 15)
 *   q5_1:  |x - y| <= d/2 + 31 dd + dm                    (d = (max - min) / 31)
 * with dm the fp16 error of the minimum, plus a few ulps for the f32 arithmetic.
 */
static double fp16_error(double v) { return fmax(fabs(v) / 2048, 0x1p-25); }

static void test_error_bounds(void **state) {
    (void)state;
    enum { NB = 256 };
    static float x[NB * QK], y[NB * QK];
    static uint8_t q[NB * 34];
    normal_blocks(x, NB, 42);
    const finch_dtype types[] = {FINCH_DTYPE_Q8_0, FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q5_0,
                                 FINCH_DTYPE_Q4_1, FINCH_DTYPE_Q5_1};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const finch_dtype t = types[ti];
        const finch_dtype_traits *tr = &finch_dtype_info[t];
        tr->quant(q, x, NB * QK);
        tr->dequant(y, q, NB * QK);
        double worst = 0;
        for (int b = 0; b < NB; b++) {
            const float *xb = x + b * QK, *yb = y + b * QK;
            double amax = 0, mn = INFINITY, mx = -INFINITY;
            for (int j = 0; j < QK; j++) {
                amax = fmax(amax, fabs(xb[j]));
                mn = fmin(mn, xb[j]);
                mx = fmax(mx, xb[j]);
            }
            double d, bound;
            switch (t) {
            case FINCH_DTYPE_Q8_0: d = amax / 127, bound = d / 2 + 127 * fp16_error(d); break;
            case FINCH_DTYPE_Q4_0: d = amax / 8, bound = d + 8 * fp16_error(d); break;
            case FINCH_DTYPE_Q5_0: d = amax / 16, bound = d + 16 * fp16_error(d); break;
            case FINCH_DTYPE_Q4_1:
                d = (mx - mn) / 15, bound = d / 2 + 15 * fp16_error(d) + fp16_error(mn);
                break;
            default: d = (mx - mn) / 31, bound = d / 2 + 31 * fp16_error(d) + fp16_error(mn);
            }
            bound += 4 * amax * 0x1p-23;
            for (int j = 0; j < QK; j++) {
                double err = fabs((double)xb[j] - yb[j]);
                worst = fmax(worst, err / bound);
                if (err > bound)
                    fail_msg("%s: block %d element %d: x %.9g, dequant %.9g, error %.3g > %.3g",
                             tr->name, b, j, (double)xb[j], (double)yb[j], err, bound);
            }
        }
        /* the bound is not vacuous: some element comes close to it */
        assert_true(worst > 0.4);
    }
}

/* Quantizing a dequantized row gives the same bytes again (the scale is recovered
 * exactly from the extreme element, and every value sits on the grid). */
static void test_requantize_is_stable(void **state) {
    (void)state;
    enum { NB = 64 };
    static float x[NB * QK], y[NB * QK];
    static uint8_t q1[NB * 34], q2[NB * 34];
    normal_blocks(x, NB, 7);
    const finch_dtype types[] = {FINCH_DTYPE_Q8_0, FINCH_DTYPE_Q4_0, FINCH_DTYPE_Q5_0};
    for (size_t ti = 0; ti < 3; ti++) {
        const finch_dtype_traits *tr = &finch_dtype_info[types[ti]];
        tr->quant(q1, x, NB * QK);
        tr->dequant(y, q1, NB * QK);
        tr->quant(q2, y, NB * QK);
        assert_memory_equal(q1, q2, (size_t)(NB * tr->block_bytes));
    }
}

/* Hand-computed blocks: the exact bytes follow from the formulas in FORMATS.md 2. */
static void test_hand_blocks(void **state) {
    (void)state;
    float x[QK];
    /* q8_0: max|x| = 127 gives d = 1 (fp16 0x3C00) and q = roundf(x), halves away from 0 */
    for (int j = 0; j < QK; j++) x[j] = (float)j - 15.5f;
    x[0] = 127.0f;
    finch_block_q8_0 b8;
    finch_quantize_q8_0(&b8, x, QK);
    assert_int_equal(b8.d, 0x3C00);
    assert_int_equal(b8.qs[0], 127);
    assert_int_equal(b8.qs[1], -15);  /* -14.5 -> -15 */
    assert_int_equal(b8.qs[15], -1);  /* -0.5 -> -1 */
    assert_int_equal(b8.qs[16], 1);   /* 0.5 -> 1 */
    assert_int_equal(b8.qs[31], 16);  /* 15.5 -> 16 */

    /* q4_0: signed extreme -8 gives d = 1, q = trunc(x + 8.5); x = 7.9 would be 16 -> 15 */
    for (int j = 0; j < QK; j++) x[j] = (float)(j % 16) - 8.0f;
    x[0] = -8.0f;
    x[16] = 7.9f;
    finch_block_q4_0 b4;
    finch_quantize_q4_0(&b4, x, QK);
    assert_int_equal(b4.d, 0x3C00);
    assert_int_equal(b4.qs[0], 0x0F << 4 | 0x00); /* weight 0: q 0; weight 16: clipped 15 */
    assert_int_equal(b4.qs[5], 0x05 << 4 | 0x05);

    /* q5_0: d = -(-16)/16 = 1; q = x + 16; the fifth bit of weight j is bit j of qh */
    for (int j = 0; j < QK; j++) x[j] = (float)(j - 16);
    finch_block_q5_0 b5;
    finch_quantize_q5_0(&b5, x, QK);
    assert_int_equal(b5.d, 0x3C00);
    assert_int_equal(b5.qs[0], 0x00 | (0x10 & 0x0F) << 4); /* q 0 and q 16 */
    assert_int_equal(b5.qh[0] | b5.qh[1] << 8, 0x0000);   /* weights 0..15: q < 16 */
    assert_int_equal(b5.qh[2] | b5.qh[3] << 8, 0xFFFF);   /* weights 16..31: q >= 16 */

    /* q4_1 of a constant block: d = 0, every q = 0, m = the constant */
    for (int j = 0; j < QK; j++) x[j] = 0.75f;
    finch_block_q4_1 b41;
    finch_quantize_q4_1(&b41, x, QK);
    assert_int_equal(b41.d, 0);
    assert_int_equal(b41.m, finch_f32_to_f16(0.75f));
    for (int j = 0; j < QK / 2; j++) assert_int_equal(b41.qs[j], 0);

    /* all-zero q5_1 and q8_0 blocks: no division by zero, all zero */
    memset(x, 0, sizeof x);
    finch_block_q5_1 b51;
    memset(&b51, 0xAB, sizeof b51);
    finch_quantize_q5_1(&b51, x, QK);
    const uint8_t zero[sizeof(finch_block_q8_0)] = {0};
    assert_memory_equal(&b51, zero, sizeof b51);
    finch_quantize_q8_0(&b8, x, QK);
    assert_memory_equal(&b8, zero, sizeof b8);
}

/* Non-finite inputs produce some block without undefined behaviour (UBSan would flag a
 * float-to-int conversion out of range). */
static void test_non_finite_inputs(void **state) {
    (void)state;
    float x[QK];
    for (int j = 0; j < QK; j++) x[j] = (float)j;
    x[3] = NAN;
    x[9] = INFINITY;
    x[20] = -INFINITY;
    uint8_t buf[64];
    finch_quantize_q8_0(buf, x, QK);
    finch_quantize_q4_0(buf, x, QK);
    finch_quantize_q4_1(buf, x, QK);
    finch_quantize_q5_0(buf, x, QK);
    finch_quantize_q5_1(buf, x, QK);
}

static void test_plain_types(void **state) {
    (void)state;
    const float x[4] = {1.0f, -0.0f, 65504.0f, 0x1p-24f};
    float y[4];
    uint16_t h[4];
    finch_quantize_f32(y, x, 4);
    assert_memory_equal(x, y, sizeof x);
    finch_quantize_f16(h, x, 4);
    assert_int_equal(h[0], 0x3C00);
    assert_int_equal(h[1], 0x8000);
    assert_int_equal(h[2], 0x7BFF);
    assert_int_equal(h[3], 0x0001);
    finch_dequant_f16(y, h, 4);
    assert_memory_equal(x, y, sizeof x);
    finch_quantize_bf16(h, x, 4);
    assert_int_equal(h[0], 0x3F80);
    assert_int_equal(h[2], 0x4780); /* 65504 = 0x477FE000: the dropped half is > 0x8000 */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_match_gguf_package),
        cmocka_unit_test(test_conversions_match_gguf_package),
        cmocka_unit_test(test_f16_specials),
        cmocka_unit_test(test_f16_paths_agree),
        cmocka_unit_test(test_f16_round_trip_all),
        cmocka_unit_test(test_bf16_specials),
        cmocka_unit_test(test_error_bounds),
        cmocka_unit_test(test_requantize_is_stable),
        cmocka_unit_test(test_hand_blocks),
        cmocka_unit_test(test_non_finite_inputs),
        cmocka_unit_test(test_plain_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
