/*
 * test_matmul_kquant.c: matmul_q8 on K-quant weights (Q4_K, Q6_K) gives, bit for bit, what
 * a plain scalar statement of llama.cpp's arithmetic gives (written out below: the Q8_K
 * quantization of each token, the Q4_K product per super-block for single tokens and per
 * 64-value chunk for tokens taken four at a time, the Q6_K product in 8 f32 lanes), and the
 * Q8_K blocks themselves equal the statement's. Built against each instruction set's copy of
 * kernels/cpu/ (BUILD_PER_ISA), so every vector kernel meets the scalar order. (The blocks
 * are compared on their own because a product cannot see the four-token tie rule: taking
 * max of the other sign negates both q and d.)
 *
 * Inputs aim at the edges: weight blocks of random bytes (every scale and min bit) with
 * f16 scales of both signs and zero; activation blocks that are zero, hold the largest
 * magnitude both positive and negative (the four-token tie rule), sit exactly halfway
 * between integers after scaling (round half to even), mix subnormals with tiny normals,
 * or reach 1e30 and 3e38; T = 1 .. 9 (tokens four at a time and one at a time) and row
 * counts around the kernels' groups of 4; 1 and 2 threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_weights.h" /* randn */

#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "core/quant.h"
#include "kernels/cpu/cpu.h" /* finch_cpu_matmul_q8, finch_cpu_quantize_q8_k of this set */
#include "test_util.h"       /* test_require_isa */

static const char *isa = FINCH_ISA_STR(FINCH_ISA);

/* ---- the scalar statement ----------------------------------------------------------- */

/* Q8_K: max = the first value of largest magnitude (with four_rows, +|max| when it occurs),
 * q = min(127, round-half-even(-127 x / max)), bsums of 16, d = 1 / iscale. */
static void ref_quantize(finch_block_q8_k *y, const float *x, int64_t n, bool four_rows) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
        memset(&y[b], 0, sizeof y[b]);
        if (amax == 0) continue;
        for (int j = 0; four_rows && j < QK_K; j++)
            if (x[j] == amax) max = amax;
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            float q = nearbyintf(iscale * x[j]);
            y[b].qs[j] = (int8_t)(q < 127 ? q : 127);
            y[b].bsums[j / 16] = (int16_t)(y[b].bsums[j / 16] + y[b].qs[j]);
        }
        y[b].d = 1 / iscale;
    }
}

/* Q4_K: isum and imin per 64-value chunk, added to two f32 accumulators by fma per chunk
 * (per_chunk) or per super-block. */
static float ref_q4_k(const finch_block_q4_k *w, const finch_block_q8_k *x, int64_t nb,
                      bool per_chunk) {
    float acc = 0, acc_min = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *s = w[b].scales;
        int sc[8], mn[8];
        for (int j = 0; j < 8; j++) {
            sc[j] = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
            mn[j] = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        const float d = finch_f16_to_f32(w[b].d) * x[b].d;
        const float dmin = finch_f16_to_f32(w[b].dmin) * x[b].d;
        int32_t isum = 0, imin = 0;
        for (int c = 0; c < 4; c++) {
            for (int l = 0; l < 32; l++) {
                isum += sc[2 * c] * (w[b].qs[32 * c + l] & 15) * x[b].qs[64 * c + l];
                isum += sc[2 * c + 1] * (w[b].qs[32 * c + l] >> 4) * x[b].qs[64 * c + 32 + l];
            }
            for (int k = 0; k < 2; k++)
                imin += mn[2 * c + k] * (x[b].bsums[4 * c + 2 * k] + x[b].bsums[4 * c + 2 * k + 1]);
            if (per_chunk || c == 3) {
                acc = fmaf((float)isum, d, acc);
                acc_min = fmaf((float)imin, dmin, acc_min);
                isum = imin = 0;
            }
        }
    }
    return acc - acc_min;
}

/* Q6_K: value i (6 bits less 32 by way of the bsums) to lane (i mod 32) / 4; lane l takes
 * away 32 (sc_2l bsum_2l + sc_2l+1 bsum_2l+1); 8 f32 accumulators, summed as hsum_float_8. */
static float ref_q6_k(const finch_block_q6_k *w, const finch_block_q8_k *x, int64_t nb) {
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        int32_t lane[8] = {0};
        for (int i = 0; i < QK_K; i++) {
            const int h = i / 128, k = (i % 128) / 32, l = i % 32; /* half, quarter, position */
            const uint8_t ql = w[b].ql[64 * h + 32 * (k & 1) + l];
            const int u =
                ((k < 2 ? ql : ql >> 4) & 15) | (((w[b].qh[32 * h + l] >> (2 * k)) & 3) << 4);
            lane[l / 4] += w[b].scales[i / 16] * u * x[b].qs[i];
        }
        const float d = x[b].d * finch_f16_to_f32(w[b].d);
        for (int l = 0; l < 8; l++) {
            lane[l] -= 32 * (w[b].scales[2 * l] * x[b].bsums[2 * l] +
                             w[b].scales[2 * l + 1] * x[b].bsums[2 * l + 1]);
            acc[l] = fmaf(d, (float)lane[l], acc[l]);
        }
    }
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* y (T, R): Q4_K takes the first T - T mod 4 tokens four at a time (chunk order, four_rows
 * quantization), the rest one at a time; Q6_K every token alone. */
static void ref_matmul(float *y, const float *x, const finch_weight *w, int64_t T) {
    const int64_t R = w->rows, K = w->cols, nb = K / QK_K;
    const bool q4 = w->type == FINCH_DTYPE_Q4_K;
    const int64_t T4 = q4 ? T - T % 4 : 0;
    finch_block_q8_k *xq = malloc((size_t)nb * sizeof *xq);
    assert_non_null(xq);
    for (int64_t t = 0; t < T; t++) {
        ref_quantize(xq, x + t * K, K, t < T4);
        for (int64_t r = 0; r < R; r++) {
            const void *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
            y[t * R + r] = q4 ? ref_q4_k(row, xq, nb, t < T4) : ref_q6_k(row, xq, nb);
        }
    }
    free(xq);
}

/* ---- inputs ------------------------------------------------------------------------- */

/* An f16 scale: zero, or +-2^e times a random mantissa, e from -14 to 1. */
static uint16_t rand_scale(finch_rng *r) {
    if (finch_rng_u64(r) % 16 == 0) return 0;
    float v = (0.5f + finch_rng_float(r)) * ldexpf(1.0f, (int)(finch_rng_u64(r) % 16) - 14);
    return finch_f32_to_f16(finch_rng_u64(r) % 2 ? -v : v);
}

/* R rows of random bytes with finite f16 scales in place of d (and dmin). */
static void *rand_weight(finch_rng *r, finch_dtype t, int64_t R, int64_t K, finch_weight *w) {
    size_t rb;
    assert_true(finch_dtype_row_bytes(t, K, &rb));
    uint8_t *data = malloc(rb * (size_t)R);
    assert_non_null(data);
    for (size_t i = 0; i < rb * (size_t)R; i++) data[i] = (uint8_t)finch_rng_u64(r);
    for (int64_t b = 0; b < R * K / QK_K; b++) {
        uint16_t d = rand_scale(r), m = rand_scale(r);
        if (t == FINCH_DTYPE_Q4_K) {
            finch_block_q4_k *blk = (finch_block_q4_k *)data + b;
            memcpy(&blk->d, &d, 2);
            memcpy(&blk->dmin, &m, 2);
        } else {
            memcpy(&((finch_block_q6_k *)data + b)->d, &d, 2);
        }
    }
    *w = (finch_weight){.type = t, .rows = R, .cols = K, .row_bytes = rb, .data = data};
    return data;
}

/* One activation block of 256 values, of the kind picked by kind. */
static void rand_block(finch_rng *r, float *x, int kind) {
    const float a = 1.0f + 4.0f * finch_rng_float(r);
    for (int j = 0; j < QK_K; j++) x[j] = a * 0.3f * randn(r);
    const int p = (int)(finch_rng_u64(r) % QK_K), q = (int)(finch_rng_u64(r) % QK_K);
    switch (kind) {
    case 0: /* all zero, some of them -0 */
        for (int j = 0; j < QK_K; j++) x[j] = j % 3 ? 0.0f : -0.0f;
        break;
    case 1: /* the largest magnitude both negative and positive, in random order */
        for (int j = 0; j < QK_K; j++) x[j] = fminf(fmaxf(x[j], -0.9f * a), 0.9f * a);
        x[p] = -a;
        x[q] = a;
        break;
    case 2: /* -127 first (so iscale is 1, or -1 with +127 too), the rest k + 1/2 */
        for (int j = 0; j < QK_K; j++) x[j] = (float)((int)(finch_rng_u64(r) % 254) - 127) + 0.5f;
        x[0] = -127.0f;
        if (p % 2) x[q ? q : 1] = 127.0f;
        break;
    case 3: /* tiny normals with subnormals among them */
        for (int j = 0; j < QK_K; j++) x[j] *= j % 2 ? 1e-30f : 1e-40f;
        break;
    case 4: /* huge values */
        for (int j = 0; j < QK_K; j++) x[j] *= 1e30f;
        x[p] = p % 2 ? FLT_MAX : -FLT_MAX;
        break;
    case 5: /* repeated largest magnitude, one sign */
        x[p] = x[q] = p % 2 ? 3 * a : -3 * a;
        break;
    case 6: /* a single nonzero value */
        for (int j = 0; j < QK_K; j++) x[j] = 0;
        x[p] = a - 3.0f;
        break;
    default: /* plain normal values */
        break;
    }
}

/* T rows of K activations, block kinds mostly plain. */
static float *rand_acts(finch_rng *r, int64_t T, int64_t K) {
    float *x = malloc((size_t)(T * K) * sizeof *x);
    assert_non_null(x);
    for (int64_t b = 0; b < T * K / QK_K; b++)
        rand_block(r, x + b * QK_K, (int)(finch_rng_u64(r) % 12));
    return x;
}

/* Bits equal, any NaN matching any NaN (payloads are not compared). */
static bool same(float a, float b) {
    return !memcmp(&a, &b, sizeof a) || (a != a && b != b);
}

static void check(finch_rng *r, finch_dtype t, int64_t R, int64_t K, int64_t T) {
    finch_weight w;
    void *data = rand_weight(r, t, R, K, &w);
    float *x = rand_acts(r, T, K);
    float *y = malloc((size_t)(T * R) * sizeof *y), *yr = malloc((size_t)(T * R) * sizeof *yr);
    finch_workspace ws;
    finch_err err;
    assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2,
                                          finch_workspace_act_need(T, K), &err),
                     FINCH_OK);
    finch_cpu_matmul_q8(y, x, &w, T, &ws);
    ref_matmul(yr, x, &w, T);
    for (int64_t i = 0; i < T * R; i++)
        if (!same(y[i], yr[i]))
            fail_msg("%s %s R=%lld K=%lld T=%lld: y[%lld,%lld] = %a, scalar %a", isa,
                     finch_dtype_info[t].name, (long long)R, (long long)K, (long long)T,
                     (long long)(i / R), (long long)(i % R), y[i], yr[i]);
    finch_workspace_free(&ws);
    free(data);
    free(x);
    free(y);
    free(yr);
}

/* The Q8_K blocks of every activation kind, with both rules, byte for byte. */
static void test_quantize_q8_k(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 99);
    enum { NB = 64 };
    finch_block_q8_k got[NB], want[NB];
    for (int rep = 0; rep < 50; rep++)
        for (int four = 0; four < 2; four++) {
            float *x = rand_acts(&r, 1, NB * QK_K);
            finch_cpu_quantize_q8_k(got, x, NB * QK_K, four);
            ref_quantize(want, x, NB * QK_K, four);
            for (int b = 0; b < NB; b++)
                if (memcmp(&got[b], &want[b], sizeof got[b]))
                    fail_msg("%s: Q8_K block %d (four_rows %d) differs: d %a, scalar %a", isa, b,
                             four, got[b].d, want[b].d);
            free(x);
        }
}

static void test_kquant_bits(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 2024);
    const finch_dtype types[] = {FINCH_DTYPE_Q4_K, FINCH_DTYPE_Q6_K};
    const int64_t Rs[] = {1, 3, 4, 5, 8, 9}, Ks[] = {256, 512, 1024};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        for (size_t a = 0; a < sizeof Rs / sizeof *Rs; a++)
            for (size_t b = 0; b < sizeof Ks / sizeof *Ks; b++)
                for (int64_t T = 1; T <= 9; T++) check(&r, types[i], Rs[a], Ks[b], T);
}

/* Every activation block kind with every T, so each meets both quantizations. */
static void test_kquant_block_kinds(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 7);
    for (int rep = 0; rep < 12; rep++)
        for (int64_t T = 1; T <= 9; T++) {
            check(&r, FINCH_DTYPE_Q4_K, 6, 2048, T);
            check(&r, FINCH_DTYPE_Q6_K, 6, 2048, T);
        }
}

/* The same bits on 1 and 2 threads (threads split rows). */
static void test_kquant_threads(void **state) {
    (void)state;
    finch_rng r;
    finch_rng_seed(&r, 3);
    const finch_dtype types[] = {FINCH_DTYPE_Q4_K, FINCH_DTYPE_Q6_K};
    for (size_t i = 0; i < 2; i++)
        for (int64_t T = 1; T <= 9; T += 4) {
            const int64_t R = 37, K = 768;
            finch_weight w;
            void *data = rand_weight(&r, types[i], R, K, &w);
            float *x = rand_acts(&r, T, K);
            float y1[9 * 37], y2[9 * 37];
            finch_workspace ws;
            finch_err err;
            assert_int_equal(finch_workspace_init(&ws, finch_workspace_need(K, 1), 2,
                                                  finch_workspace_act_need(T, K), &err),
                             FINCH_OK);
            finch_threads_set(1);
            finch_cpu_matmul_q8(y1, x, &w, T, &ws);
            finch_threads_set(2);
            finch_cpu_matmul_q8(y2, x, &w, T, &ws);
            assert_memory_equal(y1, y2, (size_t)(T * R) * sizeof *y1);
            finch_workspace_free(&ws);
            free(data);
            free(x);
        }
}

int main(void) {
    test_require_isa(isa);
    finch_threads_set(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantize_q8_k),
        cmocka_unit_test(test_kquant_bits),
        cmocka_unit_test(test_kquant_block_kinds),
        cmocka_unit_test(test_kquant_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
