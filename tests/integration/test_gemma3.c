/*
 * test_gemma3.c: the second real model, Google's Gemma 3 270M (Q4_K_M GGUF, fetched by
 * scripts/setup.sh --with-gemma3), against llama.cpp (llama-cpp-python; fixtures made by
 * tests/reference/make_gemma3_fixtures.py): on four prompts (text, code, chat turns),
 *  - finch's token ids (BOS first, special tokens parsed) equal llama.cpp's;
 *  - at every position finch's exact logits pick llama.cpp's argmax where llama.cpp's own
 *    top1-top2 margin is at least TOL, and one of its top 3 below it; on the ids compared
 *    (llama.cpp's top 8 and 64 fixed ones) they are within TOL;
 *  - greedy decoding gives llama.cpp's 32 tokens, and may part from them only at a step
 *    where llama.cpp's own margin between its two best tokens is below TOL (the noise
 *    bound stated below: there either pick is within the two engines' rounding).
 * llama.cpp quantizes activations to 8 bits inside its quantized matmuls and keeps an
 * f16 KV cache; finch's exact numerics do neither, so the logits differ by that noise
 * (TOL, measured and stated below). Against an exact float64 forward of the dequantized
 * weights (tests/reference/gemma3_exact.py, written from llama.cpp's gemma3 graph) there
 * is no such slack: the same argmax everywhere and logits within EXACT_TOL.
 *
 * Without the model the test fails, saying how to fetch it (FINCH_ALLOW_NO_MODEL=1 skips).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finch.h"

#define FIXTURE FINCH_FIXTURES "/model/gemma3_llamacpp.json"
#define BITS_FIXTURE FINCH_FIXTURES "/model/gemma3_llamacpp_bits.json"
/* llama.cpp's 8-bit activations and f16 cache against f32: the float64 reference itself
 * differs from llama.cpp by up to 2.84 on these prompts, finch by up to 3.35 */
#define TOL 3.5
/* finch's llamacpp numerics against llama.cpp where their bits part (measured 1.14: once
 * one Q6_K product of a longer batch differs in its last bit, Gemma's large logits carry
 * it on) */
#define LLAMACPP_TOL 1.5
/* finch's f32 against the float64 reference (measured 1.8e-4) */
#define EXACT_TOL 1e-3

static json_t *fx, *bits;
static finch_model *model;
static int32_t n_vocab;

static int setup(void **state) {
    (void)state;
    char dir[4096], path[4200];
    finch_err err;
    const char *cache = getenv("FINCH_CACHE"), *home = getenv("HOME");
    if (cache)
        snprintf(dir, sizeof dir, "%s", cache);
    else
        snprintf(dir, sizeof dir, "%s/.cache/finch", home ? home : ".");
    snprintf(path, sizeof path, "%s/gemma-3-270m-q4_k_m.gguf", dir);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "Gemma 3 270M is missing at %s: run scripts/setup.sh --with-gemma3\n",
                path);
        return getenv("FINCH_ALLOW_NO_MODEL") ? 0 : -1;
    }
    if (finch_model_load(path, &model, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    n_vocab = finch_tokenizer_n_vocab(finch_model_tokenizer(model));
    json_error_t je;
    fx = json_load_file(FIXTURE, 0, &je);
    if (!fx) return fprintf(stderr, "%s: line %d: %s\n", FIXTURE, je.line, je.text), -1;
    bits = json_load_file(BITS_FIXTURE, 0, &je);
    if (!bits) return fprintf(stderr, "%s: line %d: %s\n", BITS_FIXTURE, je.line, je.text), -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    json_decref(fx);
    json_decref(bits);
    finch_model_free(model);
    return 0;
}

static int argmax(const float *l, int n) {
    int best = 0;
    for (int v = 1; v < n; v++)
        if (l[v] > l[best]) best = v;
    return best;
}

static void test_tokens_and_logits(void **state) {
    (void)state;
    if (!model) skip();
    json_t *probe = json_object_get(fx, "probe_ids"), *p;
    size_t i;
    double worst_all = 0, worst_exact = 0;
    int full_greedy = 0;
    json_array_foreach(json_object_get(fx, "prompts"), i, p) {
        const char *text = json_string_value(json_object_get(p, "text"));
        json_t *want_ids = json_object_get(p, "ids");
        int32_t *ids;
        int64_t n;
        finch_err err;
        if (finch_tokenize(finch_model_tokenizer(model), text, strlen(text),
                           FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, &ids, &n, &err))
            fail_msg("%s", err.msg);
        if (n != (int64_t)json_array_size(want_ids))
            fail_msg("%s: %lld ids, llama.cpp %zu", text, (long long)n, json_array_size(want_ids));
        for (int64_t t = 0; t < n; t++)
            if (ids[t] != json_integer_value(json_array_get(want_ids, (size_t)t)))
                fail_msg("%s: id %lld is %d, llama.cpp %lld", text, (long long)t, ids[t],
                         (long long)json_integer_value(json_array_get(want_ids, (size_t)t)));
        float *logits = malloc((size_t)n * (size_t)n_vocab * sizeof *logits);
        finch_session *s;
        if (finch_session_new(model, (int)n + 40, FINCH_NUMERICS_EXACT, &s, &err))
            fail_msg("%s", err.msg);
        if (finch_session_decode(s, ids, (int)n, logits, NULL, &err)) fail_msg("%s", err.msg);
        double worst = 0;
        int ties = 0;
        for (int64_t t = 0; t < n; t++) {
            const float *l = logits + (size_t)t * n_vocab;
            json_t *ti = json_array_get(json_object_get(p, "top_ids"), (size_t)t);
            json_t *tl = json_array_get(json_object_get(p, "top_logits"), (size_t)t);
            json_t *pl = json_array_get(json_object_get(p, "probe_logits"), (size_t)t);
            int best = argmax(l, n_vocab), want = (int)json_integer_value(json_array_get(ti, 0));
            double margin =
                json_real_value(json_array_get(tl, 0)) - json_real_value(json_array_get(tl, 1));
            json_t *ex = json_object_get(p, "exact");
            if (best !=
                json_integer_value(json_array_get(json_object_get(ex, "argmax"), (size_t)t)))
                fail_msg("%s: position %lld: argmax %d, the float64 reference's %lld", text,
                         (long long)t, best,
                         (long long)json_integer_value(
                             json_array_get(json_object_get(ex, "argmax"), (size_t)t)));
            json_t *eti = json_array_get(json_object_get(ex, "top_ids"), (size_t)t);
            json_t *etl = json_array_get(json_object_get(ex, "top_logits"), (size_t)t);
            json_t *epl = json_array_get(json_object_get(ex, "probe_logits"), (size_t)t);
            for (size_t r = 0; r < json_array_size(eti); r++)
                worst_exact = fmax(worst_exact, fabs(l[json_integer_value(json_array_get(eti, r))] -
                                                     json_real_value(json_array_get(etl, r))));
            for (size_t r = 0; r < json_array_size(probe); r++)
                worst_exact =
                    fmax(worst_exact, fabs(l[json_integer_value(json_array_get(probe, r))] -
                                           json_real_value(json_array_get(epl, r))));
            if (best != want) {
                bool top3 = false;
                for (size_t r = 0; r < 3; r++)
                    top3 |= best == json_integer_value(json_array_get(ti, r));
                if (!(margin < TOL && top3))
                    fail_msg("%s: position %lld: argmax %d, llama.cpp %d (its margin %.3f)", text,
                             (long long)t, best, want, margin);
                ties++;
            }
            for (size_t r = 0; r < json_array_size(ti); r++)
                worst = fmax(worst, fabs(l[json_integer_value(json_array_get(ti, r))] -
                                         json_real_value(json_array_get(tl, r))));
            for (size_t r = 0; r < json_array_size(probe); r++)
                worst = fmax(worst, fabs(l[json_integer_value(json_array_get(probe, r))] -
                                         json_real_value(json_array_get(pl, r))));
        }
        print_message("  %-40.40s %2lld positions: max |finch - llama.cpp| %.3f, %d near ties\n",
                      text, (long long)n, worst, ties);
        worst_all = fmax(worst_all, worst);
        /* greedy: llama.cpp's continuation, token by token */
        json_t *greedy = json_object_get(p, "greedy_ids"),
               *margins = json_object_get(p, "greedy_margins");
        int32_t tok = argmax(logits + (size_t)(n - 1) * n_vocab, n_vocab);
        size_t g = 0;
        for (; g < json_array_size(greedy); g++) {
            if (tok != json_integer_value(json_array_get(greedy, g))) {
                double mg = json_real_value(json_array_get(margins, g));
                if (mg >= TOL)
                    fail_msg("%s: greedy token %zu is %d, llama.cpp %lld (its margin %.3f)", text,
                             g, tok, (long long)json_integer_value(json_array_get(greedy, g)), mg);
                print_message("  %-40.40s greedy: parts from llama.cpp at token %zu, a near tie "
                              "(its margin %.3f)\n",
                              text, g, mg);
                break;
            }
            if (finch_session_decode(s, &tok, 1, logits, NULL, &err)) fail_msg("%s", err.msg);
            tok = argmax(logits, n_vocab);
        }
        if (g == json_array_size(greedy)) {
            full_greedy++;
            print_message("  %-40.40s greedy: all %zu tokens equal\n", text, g);
        }
        finch_session_free(s);
        free(logits);
        free(ids);
    }
    print_message("  max |finch - llama.cpp| over every prompt: %.3f (tolerance %.1f); "
                  "max |finch - float64| %.2g (tolerance %.0e)\n",
                  worst_all, TOL, worst_exact, EXACT_TOL);
    assert_true(worst_exact <= EXACT_TOL);
    assert_true(worst_all <= TOL);
    assert_true(full_greedy >= 2); /* measured: the code and chat prompts, every token */
}

/* 64-bit FNV-1a of n floats' little-endian bytes (make_gemma3_llamacpp_bits.py's hash). */
static uint64_t fnv1a64(const float *x, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *b = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* finch's llamacpp numerics against llama.cpp (flash attention off) on the same prompts:
 *  - position 0 (attention over one key): every one of the 262,144 logits has llama.cpp's
 *    bits (the row's hash), on every prompt: the quantized products (Q5_0, Q8_0, and Q4_K,
 *    Q6_K against Q8_K activations), RMSNorm, GeGLU through ggml's f16 GELU table;
 *  - every position: llama.cpp's argmax; every row of the prompts of 6 and 17 tokens has
 *    llama.cpp's bits (attention in ggml's order, RoPE as ggml rounds it); on the batches
 *    of 14 and 20 tokens llama.cpp's build multiplies Q6_K by another kernel (a tiled
 *    matmul finch does not reproduce), and the rows part in their last bits, within
 *    LLAMACPP_TOL on the compared ids;
 *  - greedy decoding gives llama.cpp's 32 tokens on three prompts. */
static void test_llamacpp_numerics(void **state) {
    (void)state;
    if (!model) skip();
    json_t *probe = json_object_get(fx, "probe_ids"), *p;
    size_t i;
    double worst_all = 0;
    int bit_rows = 0, rows = 0, full_greedy = 0;
    json_array_foreach(json_object_get(fx, "prompts"), i, p) {
        json_t *bp = json_array_get(json_object_get(bits, "prompts"), i);
        const char *text = json_string_value(json_object_get(p, "text"));
        json_t *jids = json_object_get(p, "ids");
        const int n = (int)json_array_size(jids);
        assert_int_equal(json_array_size(json_object_get(bp, "row_hash")), n);
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        for (int t = 0; t < n; t++)
            ids[t] = (int32_t)json_integer_value(json_array_get(jids, (size_t)t));
        float *logits = malloc((size_t)n * (size_t)n_vocab * sizeof *logits);
        finch_session *s;
        finch_err err;
        if (finch_session_new(model, n + 40, FINCH_NUMERICS_LLAMACPP, &s, &err))
            fail_msg("%s", err.msg);
        if (finch_session_decode(s, ids, n, logits, NULL, &err)) fail_msg("%s", err.msg);
        double worst = 0;
        int same = 0;
        for (int t = 0; t < n; t++) {
            const float *l = logits + (size_t)t * n_vocab;
            char h[17];
            snprintf(h, sizeof h, "%016llx", (unsigned long long)fnv1a64(l, (size_t)n_vocab));
            bool equal = !strcmp(
                h, json_string_value(json_array_get(json_object_get(bp, "row_hash"), (size_t)t)));
            same += equal;
            if (t == 0 && !equal)
                fail_msg(
                    "%s: position 0: the logits' bits are not llama.cpp's (max %a, llama.cpp %a)",
                    text, l[argmax(l, n_vocab)],
                    json_real_value(json_array_get(json_object_get(bp, "row_max"), 0)));
            json_t *ti = json_array_get(json_object_get(p, "top_ids"), (size_t)t);
            json_t *tl = json_array_get(json_object_get(p, "top_logits"), (size_t)t);
            json_t *pl = json_array_get(json_object_get(p, "probe_logits"), (size_t)t);
            int best = argmax(l, n_vocab), want = (int)json_integer_value(json_array_get(ti, 0));
            if (best != want)
                fail_msg("%s: position %d: argmax %d, llama.cpp %d", text, t, best, want);
            for (size_t r = 0; r < json_array_size(ti); r++)
                worst = fmax(worst, fabs(l[json_integer_value(json_array_get(ti, r))] -
                                         json_real_value(json_array_get(tl, r))));
            for (size_t r = 0; r < json_array_size(probe); r++)
                worst = fmax(worst, fabs(l[json_integer_value(json_array_get(probe, r))] -
                                         json_real_value(json_array_get(pl, r))));
        }
        bit_rows += same;
        rows += n;
        worst_all = fmax(worst_all, worst);
        json_t *greedy = json_object_get(p, "greedy_ids");
        int32_t tok = argmax(logits + (size_t)(n - 1) * n_vocab, n_vocab);
        size_t g = 0;
        for (; g < json_array_size(greedy); g++) {
            if (tok != json_integer_value(json_array_get(greedy, g))) break;
            if (finch_session_decode(s, &tok, 1, logits, NULL, &err)) fail_msg("%s", err.msg);
            tok = argmax(logits, n_vocab);
        }
        full_greedy += g == json_array_size(greedy);
        print_message(
            "  %-40.40s %2d positions: %d bit-identical rows, max |finch - llama.cpp| %.3g, "
            "greedy equal for %zu of %zu tokens\n",
            text, n, same, worst, g, json_array_size(greedy));
        finch_session_free(s);
        free(logits);
        free(ids);
    }
    print_message("  llamacpp numerics: %d of %d rows bit-identical, max |finch - llama.cpp| %.3g "
                  "(tolerance %.2g), greedy equal on %d prompts\n",
                  bit_rows, rows, worst_all, LLAMACPP_TOL, full_greedy);
    assert_true(worst_all <= LLAMACPP_TOL);
    /* measured: 28 of 57 rows bit-identical (every row of two prompts); greedy equal on
     * every token of three prompts, the fourth parting at token 9 */
    assert_true(bit_rows >= 28);
    assert_true(full_greedy >= 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_tokens_and_logits),
                                       cmocka_unit_test(test_llamacpp_numerics)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
