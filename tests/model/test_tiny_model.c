/*
 * test_tiny_model.c: the forward pass of two tiny random LLaMA models (f32, GQA; one with
 * a separate output head, one tied) against a float64 PyTorch implementation of the
 * Hugging Face LLaMA math (tests/reference/make_tiny_model.py; fixtures in
 * tests/fixtures/model/). The GGUF stores Q/K rows permuted as llama.cpp's converter
 * does while the reference uses HF order with rotate-half RoPE, so agreement also proves
 * the RoPE convention.
 *
 * Each sequence is fed in the manifest's chunks through one session, so incremental
 * decoding with the KV cache is checked against the full-sequence reference.
 *
 * Tolerances: exact numerics, 1e-5 absolute on logits of magnitude <= ~3 (f32 rounding
 * through two layers); llamacpp numerics (f16 KV cache, f16-rounded queries and attention
 * probabilities) 5e-3.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finch.h"

#define DIR FINCH_FIXTURES "/model/"

static float *read_f32(const char *name, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, DIR "%s", name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open fixture %s", path);
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    if (fread(v, sizeof *v, n, f) != n) fail_msg("fixture %s is shorter than %zu floats", path, n);
    fclose(f);
    return v;
}

static void check_model(json_t *m, finch_numerics numerics, double tol) {
    const char *name = json_string_value(json_object_get(m, "name"));
    char path[1024];
    snprintf(path, sizeof path, DIR "%s.gguf", name);
    finch_model *model;
    finch_err err;
    if (finch_model_load(path, &model, &err)) fail_msg("%s", err.msg);
    finch_model_config cfg;
    finch_model_config_get(model, &cfg);
    assert_int_equal(cfg.n_layer, json_integer_value(json_object_get(m, "n_layer")));
    assert_int_equal(cfg.n_head_kv, json_integer_value(json_object_get(m, "n_head_kv")));
    assert_int_equal(cfg.tied_output, json_is_true(json_object_get(m, "tied")));
    const int V = cfg.n_vocab;
    size_t i;
    json_t *seq;
    json_array_foreach(json_object_get(m, "sequences"), i, seq) {
        json_t *jids = json_object_get(seq, "ids");
        int n = (int)json_array_size(jids);
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        for (int k = 0; k < n; k++) ids[k] = (int32_t)json_integer_value(json_array_get(jids, k));
        float *ref = read_f32(json_string_value(json_object_get(seq, "file")), (size_t)n * V);
        float *got = malloc((size_t)n * V * sizeof *got);
        finch_session *s;
        if (finch_session_new(model, n, numerics, &s, &err)) fail_msg("%s", err.msg);
        size_t c;
        json_t *chunk;
        json_array_foreach(json_object_get(seq, "chunks"), c, chunk) {
            int a = (int)json_integer_value(json_array_get(chunk, 0));
            int b = (int)json_integer_value(json_array_get(chunk, 1));
            assert_int_equal(finch_session_pos(s), a);
            if (finch_session_decode(s, ids + a, b - a, got + (size_t)a * V, NULL, &err))
                fail_msg("%s", err.msg);
        }
        double worst = 0;
        size_t at = 0;
        for (size_t k = 0; k < (size_t)n * V; k++) {
            double e = fabs((double)got[k] - ref[k]);
            if (e > worst) worst = e, at = k;
        }
        printf("  %s %s (%s numerics): max |finch - torch| = %.3g at position %zu, id %zu\n", name,
               json_string_value(json_object_get(seq, "tag")),
               numerics == FINCH_NUMERICS_EXACT ? "exact" : "llamacpp", worst, at / V, at % V);
        if (worst > tol)
            fail_msg("%s: logit [%zu, %zu] = %.7g, reference %.7g (tolerance %g)", name, at / V,
                     at % V, got[at], ref[at], tol);
        finch_session_free(s);
        free(got);
        free(ref);
        free(ids);
    }
    finch_model_free(model);
}

static json_t *manifest;

static int load_manifest(void **state) {
    (void)state;
    json_error_t e;
    manifest = json_load_file(DIR "tiny_llama.json", 0, &e);
    if (!manifest) fprintf(stderr, "tiny_llama.json: line %d: %s\n", e.line, e.text);
    return manifest ? 0 : -1;
}

static int free_manifest(void **state) {
    (void)state;
    json_decref(manifest);
    return 0;
}

static void test_exact_matches_torch(void **state) {
    (void)state;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(manifest, "models"), i, m) check_model(m, FINCH_NUMERICS_EXACT, 1e-5);
}

static void test_llamacpp_numerics_close_to_torch(void **state) {
    (void)state;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(manifest, "models"), i, m) check_model(m, FINCH_NUMERICS_LLAMACPP, 5e-3);
}

static void test_session_limits(void **state) {
    (void)state;
    finch_model *model;
    finch_err err;
    if (finch_model_load(DIR "tiny_llama.gguf", &model, &err)) fail_msg("%s", err.msg);
    finch_session *s;
    assert_int_equal(finch_session_new(model, 0, FINCH_NUMERICS_EXACT, &s, &err), FINCH_E_RANGE);
    assert_int_equal(finch_session_new(model, 1 << 20, FINCH_NUMERICS_EXACT, &s, &err), FINCH_E_RANGE);
    assert_non_null(strstr(err.msg, "training context"));
    assert_int_equal(finch_session_new(model, 4, FINCH_NUMERICS_EXACT, &s, &err), FINCH_OK);
    int32_t ids[5] = {1, 2, 3, 4, 5}, bad = 97;
    assert_int_equal(finch_session_decode(s, &bad, 1, NULL, NULL, &err), FINCH_E_RANGE);
    assert_non_null(strstr(err.msg, "token id 97"));
    assert_int_equal(finch_session_decode(s, ids, 5, NULL, NULL, &err), FINCH_E_RANGE);
    assert_int_equal(finch_session_decode(s, ids, 4, NULL, NULL, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(s, ids, 1, NULL, NULL, &err), FINCH_E_RANGE);
    assert_non_null(strstr(err.msg, "4 of 4 context positions"));
    finch_session_free(s);
    /* prompt + new tokens beyond the training context (128) */
    finch_gen_options opt = finch_gen_defaults();
    opt.max_tokens = 128;
    assert_int_equal(finch_generate(model, "hi", &opt, NULL, NULL, &err), FINCH_E_RANGE);
    assert_non_null(strstr(err.msg, "exceeds the context"));
    opt.max_tokens = -1;
    assert_int_equal(finch_generate(model, "hi", &opt, NULL, NULL, &err), FINCH_E_USAGE);
    opt.max_tokens = 4;
    assert_int_equal(finch_generate(model, "", &opt, NULL, NULL, &err), FINCH_E_USAGE);
    assert_non_null(strstr(err.msg, "prompt is empty"));
    finch_model_free(model);
}

int main(void) {
    finch_threads_set(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_matches_torch),
        cmocka_unit_test(test_llamacpp_numerics_close_to_torch),
        cmocka_unit_test(test_session_limits),
    };
    return cmocka_run_group_tests(tests, load_manifest, free_manifest);
}
