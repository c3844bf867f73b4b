/*
 * test_quantize_kq.c: the quantizers `finch quantize` uses, on edge cases.
 *
 *   - Closed-form types (q8_0, q4_0, q4_1, q5_0, q5_1, bf16, f16): finch's bytes equal the
 *     PyPI gguf package's on tests/fixtures/quantize/quantize_edge.f32 (zeros, exact
 *     rounding ties, huge values and an fp16-overflowing scale, tiny values, one-signed rows,
 *     spikes, equal magnitudes of both signs, a constant row, an outlier); written by
 *     tests/reference/make_quantize_fixtures.py.
 *   - K-quants (q4_k, q5_k, q6_k), which the package cannot quantize: dequant(quant(x))
 *     through finch's dequantizer (bit-identical to ggml's) against x. Their error must be
 *     below a naive quantizer's in the same block format (sub-block scale from the extremes,
 *     min from the minimum, the 6- or 8-bit scale codes and the codes rounded to nearest),
 *     summed over each row and on random rows by a stated margin; every block's fp16 scales
 *     are finite (Q4_K/Q5_K's non-negative); a Q6_K block's own values are quantized back to
 *     within the fp16 rounding of d (its int8 scales, -128 included, recovered); rows that the
 *     format can represent exactly (all zero, constant) come back exactly.
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

#include "core/quant.h" /* finch_dtype_info, block structs, finch_f16_to_f32 */

#define DIR FINCH_FIXTURES "/quantize/"
#define ROWLEN 256

static float *edge_rows(int *n_rows) {
    size_t bytes;
    float *x = (float *)read_file(DIR "quantize_edge.f32", &bytes);
    assert_int_equal(bytes % (ROWLEN * 4), 0);
    *n_rows = (int)(bytes / (ROWLEN * 4));
    assert_true(*n_rows >= 10);
    return x;
}

static void test_closed_form_match_gguf_package(void **state) {
    (void)state;
    int rows;
    float *x = edge_rows(&rows);
    static const struct {
        finch_dtype t;
        const char *file;
    } cases[] = {{FINCH_DTYPE_Q8_0, "q8_0"}, {FINCH_DTYPE_Q4_0, "q4_0"}, {FINCH_DTYPE_Q4_1, "q4_1"},
                 {FINCH_DTYPE_Q5_0, "q5_0"}, {FINCH_DTYPE_Q5_1, "q5_1"}, {FINCH_DTYPE_BF16, "bf16"},
                 {FINCH_DTYPE_F16, "f16"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const finch_dtype_traits *tr = &finch_dtype_info[cases[c].t];
        char path[512];
        snprintf(path, sizeof path, DIR "quantize_edge.%s", cases[c].file);
        size_t want_bytes, rb;
        uint8_t *want = read_file(path, &want_bytes);
        assert_true(finch_dtype_row_bytes(cases[c].t, ROWLEN, &rb));
        assert_int_equal(want_bytes, rb * (size_t)rows);
        uint8_t *got = malloc(want_bytes);
        assert_non_null(got);
        for (int r = 0; r < rows; r++) {
            tr->quant(got + (size_t)r * rb, x + (size_t)r * ROWLEN, ROWLEN);
            for (size_t k = 0; k < rb; k++)
                if (got[(size_t)r * rb + k] != want[(size_t)r * rb + k])
                    fail_msg("%s: row %d (see versions.json) byte %zu: finch 0x%02x, gguf 0x%02x",
                             tr->name, r, k, got[(size_t)r * rb + k], want[(size_t)r * rb + k]);
        }
        free(got);
        free(want);
    }
    free(x);
}

/* ---- K-quants ------------------------------------------------------------------------- */

static int nearest(float v) {
    return (int)floorf(v + 0.5f);
}
static int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* The naive quantizer's squared error on one 256-block, in the format of t: per sub-block
 * scale (max - min) / nmax and min min(0, x_min) (Q4_K/Q5_K), or max|x| / 32 (Q6_K); the
 * scales coded against the largest as 6 (8) bits; codes rounded to nearest. */
static double naive_err(finch_dtype t, const float *x) {
    const bool k6 = t == FINCH_DTYPE_Q6_K;
    const int sub = k6 ? 16 : 32, nsub = ROWLEN / sub, nmax = t == FINCH_DTYPE_Q4_K ? 15 : 31;
    float s[16], mn[16], smax = 0, mmax = 0;
    for (int j = 0; j < nsub; j++) {
        float lo = 0, hi = 0, am = 0;
        for (int i = 0; i < sub; i++) {
            lo = fminf(lo, x[sub * j + i]);
            hi = fmaxf(hi, x[sub * j + i]);
            am = fmaxf(am, fabsf(x[sub * j + i]));
        }
        s[j] = k6 ? am / 32.0f : (hi - lo) / (float)nmax;
        mn[j] = -lo;
        smax = fmaxf(smax, s[j]);
        mmax = fmaxf(mmax, mn[j]);
    }
    const float d = finch_f16_to_f32(finch_f32_to_f16(smax / (k6 ? 127.0f : 63.0f)));
    const float dm = finch_f16_to_f32(finch_f32_to_f16(mmax / 63.0f));
    double e = 0;
    for (int j = 0; j < nsub; j++) {
        const int c = d > 0 ? clampi(nearest(s[j] / d), 0, k6 ? 127 : 63) : 0;
        const int m = dm > 0 ? clampi(nearest(mn[j] / dm), 0, 63) : 0;
        const float S = d * (float)c, M = k6 ? 0.0f : dm * (float)m;
        for (int i = 0; i < sub; i++) {
            const float v = x[sub * j + i];
            int q = S > 0 ? nearest((v + M) / S) : 0;
            q = k6 ? clampi(q, -32, 31) : clampi(q, 0, nmax);
            const double r = (double)S * q - M - v;
            e += r * r;
        }
    }
    return e;
}

/* finch's squared error on a 256-block after the round trip, and the block checks. */
static double kquant_err(finch_dtype t, const float *x) {
    uint8_t blk[256];
    float y[ROWLEN];
    const finch_dtype_traits *tr = &finch_dtype_info[t];
    assert_non_null(tr->quant);
    tr->quant(blk, x, ROWLEN);
    tr->dequant(y, blk, ROWLEN);
    if (t == FINCH_DTYPE_Q6_K) {
        const finch_block_q6_k *b = (const finch_block_q6_k *)blk;
        assert_true(isfinite(finch_f16_to_f32(b->d))); /* either sign: scales go to -128 */
    } else { /* Q4_K and Q5_K share the head: d, dmin */
        const finch_block_q4_k *b = (const finch_block_q4_k *)blk;
        const float d = finch_f16_to_f32(b->d), dmin = finch_f16_to_f32(b->dmin);
        assert_true(isfinite(d) && d >= 0);
        assert_true(isfinite(dmin) && dmin >= 0);
    }
    double e = 0;
    for (int i = 0; i < ROWLEN; i++) {
        assert_true(isfinite(y[i]));
        const double r = (double)y[i] - x[i];
        e += r * r;
    }
    return e;
}

static const finch_dtype KTYPES[] = {FINCH_DTYPE_Q4_K, FINCH_DTYPE_Q5_K, FINCH_DTYPE_Q6_K};

static void test_kquant_edge_rows(void **state) {
    (void)state;
    int rows;
    float *x = edge_rows(&rows);
    for (size_t k = 0; k < 3; k++) {
        const finch_dtype t = KTYPES[k];
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * ROWLEN;
            /* the fp16-overflowing row has no finite K-quant encoding (d beyond 65504) */
            float am = 0, lo = 0, hi = 0;
            for (int i = 0; i < ROWLEN; i++) {
                am = fmaxf(am, fabsf(xr[i]));
                lo = fminf(lo, xr[i]);
                hi = fmaxf(hi, xr[i]);
            }
            if (am > 1e6f) continue;
            const double got = kquant_err(t, xr), naive = naive_err(t, xr);
            double ss = 0;
            for (int i = 0; i < ROWLEN; i++) ss += (double)xr[i] * xr[i];
            printf("  %s row %2d: RMS error %.4g, naive %.4g (RMS of x %.4g)\n",
                   finch_dtype_info[t].name, r, sqrt(got / ROWLEN), sqrt(naive / ROWLEN),
                   sqrt(ss / ROWLEN));
            if (got > naive * (1 + 1e-9) + 1e-30)
                fail_msg("%s row %d: error %.6g above the naive quantizer's %.6g",
                         finch_dtype_info[t].name, r, got, naive);
            /* representable exactly: all zero; a one-valued row with Q4_K/Q5_K's min */
            if (am == 0) assert_true(got == 0);
        }
    }
    free(x);
}

/* Random rows as weights look: gaussian, sub-blocks of varied spread, a few outliers. */
static void random_rows(float *x, int rows, unsigned seed) {
    srand(seed);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < ROWLEN; j += 16) {
            const double spread = 0.01 + 0.05 * (double)rand() / RAND_MAX;
            for (int i = j; i < j + 16; i++) {
                double u1 = ((double)rand() + 1) / ((double)RAND_MAX + 2);
                double u2 = (double)rand() / RAND_MAX;
                double v = spread * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
                if (rand() % 97 == 0) v *= 6; /* an outlier */
                x[(size_t)r * ROWLEN + i] = (float)v;
            }
        }
}

static void test_kquant_beats_naive(void **state) {
    (void)state;
    enum { ROWS = 256 };
    static float x[ROWS * ROWLEN];
    random_rows(x, ROWS, 12345);
    /* margins: the least squares search must gain at least this much on such rows (the
     * measured gains are printed; a quantizer that only used the extremes gains nothing) */
    static const double max_ratio[] = {0.92, 0.92, 0.97};
    for (size_t k = 0; k < 3; k++) {
        const finch_dtype t = KTYPES[k];
        double got = 0, naive = 0, ss = 0;
        int worse = 0;
        for (int r = 0; r < ROWS; r++) {
            const float *xr = x + (size_t)r * ROWLEN;
            const double g = kquant_err(t, xr), n = naive_err(t, xr);
            got += g;
            naive += n;
            worse += g > n;
            for (int i = 0; i < ROWLEN; i++) ss += (double)xr[i] * xr[i];
        }
        const double ratio = sqrt(got / naive);
        printf("  %s: RMS error %.5g vs naive %.5g: ratio %.4f (limit %.2f); relative to the "
               "RMS of x %.4f; blocks worse than naive: %d of %d\n",
               finch_dtype_info[t].name, sqrt(got / (ROWS * ROWLEN)),
               sqrt(naive / (ROWS * ROWLEN)), ratio, max_ratio[k], sqrt(got / ss), worse, ROWS);
        assert_true(ratio <= max_ratio[k]);
        assert_true(worse <= ROWS / 20);
    }
}

/* Rows the formats hold up to the fp16 rounding of their super-scales (2^-11 relative):
 * whole quarter steps on Q6_K's grid (every code -32..31 used), and a constant row in
 * Q4_K/Q5_K (carried by the min alone). */
static void test_kquant_exact_rows(void **state) {
    (void)state;
    float x[ROWLEN], y[ROWLEN];
    uint8_t blk[256];
    for (int i = 0; i < ROWLEN; i++) x[i] = (float)((i * 7) % 64 - 32) / 4.0f;
    finch_quantize_q6_k(blk, x, ROWLEN);
    finch_dequant_q6_k(y, blk, ROWLEN);
    for (int i = 0; i < ROWLEN; i++) assert_true(fabsf(y[i] - x[i]) <= 8.0f * 0x1p-10f);
    for (int i = 0; i < ROWLEN; i++) x[i] = -0.5f;
    for (size_t k = 0; k < 2; k++) {
        finch_dtype_info[KTYPES[k]].quant(blk, x, ROWLEN);
        finch_dtype_info[KTYPES[k]].dequant(y, blk, ROWLEN);
        for (int i = 0; i < ROWLEN; i++) assert_true(fabsf(y[i] - x[i]) <= 0.5f * 0x1p-10f);
    }
}

/* Quantizing a K-quant's own output again adds little: its grid is found again, but the
 * super-scale is chosen afresh, so codes may shift. Measured on these rows: q4_k 8.8%,
 * q5_k 20%, q6_k 8% of the first pass's error; asserted at 30%. (On Gemma 3's Q6_K tensors,
 * made by llama.cpp, finch's Q6_K gives the same values back exactly: tests/interop.) */
static void test_kquant_requantize(void **state) {
    (void)state;
    enum { ROWS = 64 };
    static float x[ROWS * ROWLEN], y[ROWS * ROWLEN], z[ROWS * ROWLEN];
    static uint8_t q[ROWS * 210];
    random_rows(x, ROWS, 777);
    for (size_t k = 0; k < 3; k++) {
        const finch_dtype_traits *tr = &finch_dtype_info[KTYPES[k]];
        tr->quant(q, x, ROWS * ROWLEN);
        tr->dequant(y, q, ROWS * ROWLEN);
        tr->quant(q, y, ROWS * ROWLEN);
        tr->dequant(z, q, ROWS * ROWLEN);
        double e1 = 0, e2 = 0;
        for (int i = 0; i < ROWS * ROWLEN; i++) {
            e1 += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            e2 += ((double)z[i] - y[i]) * ((double)z[i] - y[i]);
        }
        printf("  %s: requantizing its own output adds %.3g%% of the first error (RMS %.3g)\n",
               tr->name, 100 * sqrt(e2 / e1), sqrt(e2 / (ROWS * ROWLEN)));
        assert_true(e2 <= 0.3 * 0.3 * e1);
    }
}

/* NaN and infinity give some valid block (no undefined conversion; UBSan checks). */
static void test_kquant_nonfinite(void **state) {
    (void)state;
    float x[ROWLEN];
    uint8_t blk[256];
    for (int i = 0; i < ROWLEN; i++) x[i] = (float)i / 100.0f;
    x[3] = NAN;
    x[100] = INFINITY;
    x[200] = -INFINITY;
    for (size_t k = 0; k < 3; k++) finch_dtype_info[KTYPES[k]].quant(blk, x, ROWLEN);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_closed_form_match_gguf_package),
        cmocka_unit_test(test_kquant_edge_rows),
        cmocka_unit_test(test_kquant_beats_naive),
        cmocka_unit_test(test_kquant_exact_rows),
        cmocka_unit_test(test_kquant_requantize),
        cmocka_unit_test(test_kquant_nonfinite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
