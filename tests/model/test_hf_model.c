/*
 * test_hf_model.c: Hugging Face model folders as finch input. The folders in
 * tests/fixtures/hf/ were written by transformers' save_pretrained (made by
 * tests/reference/make_hf_fixtures.py): a sharded f32 llama (3 shards + index) saved from
 * tests/fixtures/model/tiny_llama.gguf, a tied bf16 llama from tiny_llama_tied.gguf, and a
 * random f16 qwen2 with q/k/v biases.
 *
 * Checks:
 *  - inference logits equal transformers' (float32 eager forward on the same rounded
 *    weights) within 1e-5 absolute (logits of magnitude <= ~4; f32 rounding through two
 *    layers; measured <= 2.1e-6); each sequence is fed in two chunks, so the KV cache is
 *    exercised too; llamacpp numerics within 5e-3;
 *  - the f32 folder gives bit-identical logits to the GGUF it was saved from: the Q/K row
 *    permutation at load reproduces the GGUF's rows exactly;
 *  - the training forward (model/train.c) gives the cross-entropy of transformers' logits
 *    (1e-5), so the q/k/v biases reach training too;
 *  - the configuration finch reports comes from config.json.
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
#include <unistd.h>

#include "finch.h"
#include "model/model.h" /* finch_model_train_step */
#include "model_util.h"     /* seq_ids, run_in, check_train_loss */
#include "test_gguf_edit.h" /* lcg_weight, gguf_edit_save */

#define DIR FINCH_FIXTURES "/hf/"
#define TOL 1e-5

static json_t *manifest;

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

static finch_model *load(const char *rel) {
    char path[1024];
    snprintf(path, sizeof path, FINCH_FIXTURES "/%s", rel);
    finch_model *m;
    finch_err err;
    if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    return m;
}

static float *run(finch_model *m, const int32_t *ids, int n, int V) {
    return run_in(m, ids, n, V, FINCH_NUMERICS_EXACT);
}

static void check_logits(finch_numerics numerics, double tol) {
    size_t i, j;
    json_t *e, *seq;
    json_array_foreach(json_object_get(manifest, "models"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        char rel[256];
        snprintf(rel, sizeof rel, "hf/%s", name);
        finch_model *m = load(rel);
        finch_model_config cfg;
        finch_model_config_get(m, &cfg);
        const int V = cfg.n_vocab;
        json_array_foreach(json_object_get(e, "sequences"), j, seq) {
            int n;
            int32_t *ids = seq_ids(seq, &n);
            float *ref = read_f32(json_string_value(json_object_get(seq, "logits")), (size_t)n * V);
            float *got = run_in(m, ids, n, V, numerics);
            double worst = 0;
            size_t at = 0;
            for (size_t k = 0; k < (size_t)n * V; k++) {
                double d = fabs((double)got[k] - ref[k]);
                if (d > worst) worst = d, at = k;
            }
            printf("  %s %s (%s numerics): max |finch - transformers| = %.3g (logits up to "
                   "%.2f)\n",
                   name, json_string_value(json_object_get(seq, "tag")),
                   numerics == FINCH_NUMERICS_EXACT  ? "exact"
                   : numerics == FINCH_NUMERICS_BF16 ? "bf16"
                                                     : "llamacpp",
                   worst, json_real_value(json_object_get(seq, "max_abs")));
            if (worst > tol)
                fail_msg("%s: logit [%zu, %zu] = %.7g, transformers %.7g (tolerance %g)", name,
                         at / V, at % V, got[at], ref[at], tol);
            free(got);
            free(ref);
            free(ids);
        }
        finch_model_free(m);
    }
}

static void test_logits_match_transformers(void **state) {
    (void)state;
    check_logits(FINCH_NUMERICS_EXACT, TOL);
}

/* llamacpp numerics: f16 KV cache and f16-rounded queries and probabilities, as in
 * test_tiny_model.c (5e-3); f16/bf16/f32 weights go through the exact matmul there. */
static void test_llamacpp_numerics_close(void **state) {
    (void)state;
    check_logits(FINCH_NUMERICS_LLAMACPP, 5e-3);
}

/* bf16 numerics: a prompt's products (more than 3 tokens at once: the halves of s7 and
 * s16) round W and x to bf16 (8 significant bits) and sum in f32; the logits stay within
 * 3e-2 of transformers' f32. Single tokens take exact numerics' products: the same bits
 * token by token, and the prompt at once differs from exact (the bf16 products ran). */
static void test_bf16_numerics_close(void **state) {
    (void)state;
    check_logits(FINCH_NUMERICS_BF16, 3e-2);
    finch_model *m = load("hf/tiny_llama");
    const int V = m->cfg.n_vocab, n = 16;
    int32_t ids[16] = {5, 88, 23, 61, 2, 40, 77, 13, 96, 31, 9, 70, 44, 44, 19, 64};
    float *one[2], *all[2];
    const finch_numerics modes[2] = {FINCH_NUMERICS_EXACT, FINCH_NUMERICS_BF16};
    for (int k = 0; k < 2; k++) {
        one[k] = run_one_by_one(m, ids, n, V, modes[k]);
        all[k] = run_in(m, ids, n, V, modes[k]);
    }
    assert_memory_equal(one[0], one[1], (size_t)n * V * sizeof(float));
    double diff = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) diff = fmax(diff, fabs(all[0][i] - all[1][i]));
    printf("  tiny_llama 16 tokens at once: max |bf16 - exact| = %.3g\n", diff);
    assert_true(diff > 0);
    for (int k = 0; k < 2; k++) free(one[k]), free(all[k]);
    finch_model_free(m);
}

/* The tiny model with heads of 64 (key_length) and its projections in Q8_0: H x D = 256
 * is wider than the hidden size (64) and the FFN (96), so the output projection has the
 * widest input, wider than scratch sized for C or F stages a tile of. New projection values
 * from a 64-bit LCG. */
static void write_wide_heads(const char *path) {
    finch_gguf *g;
    finch_err err;
    if (finch_gguf_open(FINCH_FIXTURES "/model/tiny_llama.gguf", &g, &err)) fail_msg("%s", err.msg);
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    assert_non_null(w);
    for (int64_t i = 0; i < finch_gguf_n_kv(g); i++) {
        const finch_gguf_kv *kv = finch_gguf_kv_at(g, i);
        if (strcmp(kv->key, "llama.attention.key_length") &&
            strcmp(kv->key, "llama.attention.value_length") &&
            strcmp(kv->key, "llama.rope.dimension_count"))
            assert_int_equal(finch_gguf_set_kv(w, kv, &err), FINCH_OK);
    }
    assert_int_equal(finch_gguf_set_u32(w, "llama.attention.key_length", 64, &err), FINCH_OK);
    assert_int_equal(finch_gguf_set_u32(w, "llama.attention.value_length", 64, &err), FINCH_OK);
    assert_int_equal(finch_gguf_set_u32(w, "llama.rope.dimension_count", 64, &err), FINCH_OK);
    const int64_t nt = finch_gguf_n_tensors(g);
    void **bufs = calloc((size_t)nt, sizeof *bufs);
    assert_non_null(bufs);
    uint64_t seed = 7;
    for (int64_t i = 0; i < nt; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        int64_t ne[2] = {t->ne[0], t->ne[1]};
        if (strstr(t->name, "attn_q.") || strstr(t->name, "attn_k.") || strstr(t->name, "attn_v."))
            ne[1] *= 4; /* heads of 16 become heads of 64 */
        else if (strstr(t->name, "attn_output."))
            ne[0] *= 4;
        if (ne[0] != t->ne[0] || ne[1] != t->ne[1]) {
            float *v = malloc((size_t)(ne[0] * ne[1]) * sizeof(float));
            assert_non_null(v);
            for (int64_t k = 0; k < ne[0] * ne[1]; k++) v[k] = lcg_weight(&seed);
            bufs[i] = v;
        }
        const float *src = bufs[i] ? (const float *)bufs[i] : (const float *)t->data;
        if (t->n_dims == 2 && strstr(t->name, "blk.")) { /* projections as Q8_0 */
            const finch_dtype_traits *q = &finch_dtype_info[FINCH_DTYPE_Q8_0];
            void *qd = malloc((size_t)(ne[0] * ne[1] / q->block_elems * q->block_bytes));
            assert_non_null(qd);
            q->quant(qd, src, ne[0] * ne[1]);
            free(bufs[i]);
            bufs[i] = qd;
            assert_int_equal(
                finch_gguf_add_tensor(w, t->name, FINCH_DTYPE_Q8_0, t->n_dims, ne, qd, &err),
                FINCH_OK);
        } else {
            assert_int_equal(
                finch_gguf_add_tensor(w, t->name, FINCH_DTYPE_F32, t->n_dims, ne, src, &err),
                FINCH_OK);
        }
    }
    gguf_edit_save(w, path, bufs, nt, g);
}

/* Heads wider than C and F: 40 tokens at once (halves of 20, past the few-token paths, so
 * tiles of every product) give the logits of one token at a time (the row dots) to 1e-5;
 * bf16 numerics stay within 3e-2 of them; the training forward's loss is the one of those
 * logits. */
static void test_heads_wider_than_ffn(void **state) {
    (void)state;
    char path[] = "/tmp/finch_wide_heads_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_wide_heads(path);
    finch_model *m;
    finch_err err;
    if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    assert_int_equal(m->cfg.head_dim, 64);
    const int V = m->cfg.n_vocab, n = 40;
    int32_t ids[40];
    for (int t = 0; t < n; t++) ids[t] = (t * 37 + 11) % V;
    float *one = run_one_by_one(m, ids, n, V, FINCH_NUMERICS_EXACT);
    float *all = run_in(m, ids, n, V, FINCH_NUMERICS_EXACT),
          *b16 = run_in(m, ids, n, V, FINCH_NUMERICS_BF16);
    double d_all = 0, d_b16 = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) {
        d_all = fmax(d_all, fabs(all[i] - one[i]));
        d_b16 = fmax(d_b16, fabs(b16[i] - one[i]));
    }
    printf("  heads of 64: max |at once - one by one| = %.3g, bf16 %.3g\n", d_all, d_b16);
    assert_true(d_all < 1e-5);
    assert_true(d_b16 < 3e-2);
    check_train_loss(m, ids, n, one, "heads of 64", 1e-4);
    free(one);
    free(all);
    free(b16);
    finch_model_free(m);
    unlink(path);
}

static void test_f32_folder_equals_its_gguf(void **state) {
    (void)state;
    finch_model *hf = load("hf/tiny_llama"), *gg = load("model/tiny_llama.gguf");
    finch_model_config a, b;
    finch_model_config_get(hf, &a);
    finch_model_config_get(gg, &b);
    assert_int_equal(a.n_layer, b.n_layer);
    assert_int_equal(a.n_head_kv, b.n_head_kv);
    assert_int_equal(a.n_params, b.n_params);
    assert_true(a.rms_eps == b.rms_eps && a.rope_theta == b.rope_theta);
    int32_t ids[16] = {5, 88, 23, 61, 2, 40, 77, 13, 96, 31, 9, 70, 44, 44, 19, 64};
    float *x = run(hf, ids, 16, a.n_vocab), *y = run(gg, ids, 16, b.n_vocab);
    assert_memory_equal(x, y, 16 * (size_t)a.n_vocab * sizeof *x);
    free(x);
    free(y);
    finch_model_free(hf);
    finch_model_free(gg);
}

static void test_config_from_json(void **state) {
    (void)state;
    finch_model *m = load("hf/tiny_qwen2/");
    finch_model_config c;
    finch_model_config_get(m, &c);
    assert_string_equal(c.arch, "qwen2");
    assert_string_equal(c.name, "tiny_qwen2");
    assert_int_equal(c.n_layer, 2);
    assert_int_equal(c.n_embd, 64);
    assert_int_equal(c.n_ff, 96);
    assert_int_equal(c.n_head, 4);
    assert_int_equal(c.n_head_kv, 2);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.n_vocab, 97);
    assert_int_equal(c.n_ctx_train, 128);
    assert_true(c.rope_theta == 1e6f && c.rms_eps == 1e-6f);
    assert_int_equal(c.tied_output, 1);
    assert_null(finch_model_tokenizer(m)); /* the folder has no tokenizer.json */
    /* 97*64 embedding + 64 norm + 2 layers of (2 norms, q, k, v, o, biases, mlp) */
    const int64_t layer = 2 * 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 64 + 2 * 32 + 3 * 96 * 64;
    assert_int_equal(c.n_params, 97 * 64 + 64 + 2 * layer);
    assert_int_equal(c.weight_bytes, 2 * c.n_params);
    finch_model_free(m);
}

/* The training forward's mean cross-entropy equals the one of transformers' logits. */
static void test_train_forward_matches(void **state) {
    (void)state;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(manifest, "models"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        char rel[256];
        snprintf(rel, sizeof rel, "hf/%s", name);
        finch_model *m = load(rel);
        json_t *seq = json_array_get(json_object_get(e, "sequences"), 2);
        int n;
        int32_t *ids = seq_ids(seq, &n);
        const int V = m->cfg.n_vocab;
        float *ref = read_f32(json_string_value(json_object_get(seq, "logits")), (size_t)n * V);
        check_train_loss(m, ids, n, ref, name, TOL);
        free(ref);
        free(ids);
        finch_model_free(m);
    }
}

static int load_manifest(void **state) {
    (void)state;
    json_error_t e;
    manifest = json_load_file(DIR "manifest.json", 0, &e);
    if (!manifest) fprintf(stderr, "manifest.json: line %d: %s\n", e.line, e.text);
    return manifest ? 0 : -1;
}

static int free_manifest(void **state) {
    (void)state;
    json_decref(manifest);
    return 0;
}

int main(void) {
    finch_threads_set(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_match_transformers),
        cmocka_unit_test(test_llamacpp_numerics_close),
        cmocka_unit_test(test_bf16_numerics_close),
        cmocka_unit_test(test_heads_wider_than_ffn),
        cmocka_unit_test(test_f32_folder_equals_its_gguf),
        cmocka_unit_test(test_config_from_json),
        cmocka_unit_test(test_train_forward_matches),
    };
    return cmocka_run_group_tests(tests, load_manifest, free_manifest);
}
