/*
 * test_qwen2_mistral.c: Qwen2 and Mistral as GGUF files. Tiny random models made by
 * transformers and converted as llama.cpp's convert_hf_to_gguf.py converts them
 * (tests/reference/make_qwen2_mistral_gguf.py): tiny_qwen2.gguf (architecture qwen2, q/k/v
 * biases, q/k rows in Hugging Face order for rotate-half RoPE, tied head) and
 * tiny_mistral.gguf (architecture llama, q/k rows interleaved, no sliding window in the
 * file). Checks, on four fixed sequences fed in two chunks (the KV cache in between):
 *  - finch's exact logits equal transformers' float64 forward within TOL_HF of the
 *    sequence's largest |logit| (measured up to 5.1e-7 relative, f32 rounding through
 *    two blocks; transformers' own float32 forward is 1.5e-6 away);
 *  - they equal llama.cpp's (f32 KV cache) within TOL_CPP absolute and have its argmax at
 *    every position (measured up to 1.3e-6); llamacpp numerics (f16 cache and
 *    probabilities) within 5e-3 of them;
 *  - Mistral's sliding window (16) is in config.json only: like llama.cpp, finch attends to
 *    every earlier position, so on the 24-token sequence it follows llama.cpp past position
 *    16, where transformers (which applies the window) is far away;
 *  - the training forward's cross-entropy equals the one of transformers' logits;
 *  - a LoRA run and a BitFit run of finch_train learn on each file, and the adapter merged
 *    into the GGUF gives the logits of base + adapter (the qwen2 file's q/k rows and
 *    biases stay in its own order); full fine-tuning writes the same model as a GGUF and
 *    as a Hugging Face folder.
 * tests/grad/test_sites.c checks every method's gradients on tiny_qwen2.gguf.
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
#include "model_util.h"  /* seq_ids, run_in, check_train_loss */

#define DIR FINCH_FIXTURES "/model/"
#define TOL_HF 1e-5  /* relative to the sequence's largest |logit| */
#define TOL_CPP 1e-5 /* absolute, logits up to 3.4 */

static json_t *manifest;
static char tmp[] = "/tmp/finch_qwen2_XXXXXX";

static finch_model *load(const char *file) {
    char path[1024];
    snprintf(path, sizeof path, DIR "%s", file);
    finch_model *m;
    finch_err err;
    if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    return m;
}

static const char *str(json_t *o, const char *key) {
    return json_string_value(json_object_get(o, key));
}

static int64_t num(json_t *o, const char *key) {
    return json_integer_value(json_object_get(o, key));
}

/* The model's fixture logits: transformers' and llama.cpp's, at the manifest's offsets. */
static float *read_logits(json_t *model, size_t *n) {
    char path[1024];
    snprintf(path, sizeof path, DIR "%s", str(model, "logits"));
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open fixture %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f) / sizeof(float);
    fseek(f, 0, SEEK_SET);
    float *v = malloc(*n * sizeof *v);
    assert_non_null(v);
    assert_int_equal(fread(v, sizeof *v, *n, f), *n);
    fclose(f);
    return v;
}

/* The largest |a - b| over positions [from, to) of two (n, V) arrays; *at its index. */
static double max_diff(const float *a, const float *b, int from, int to, int V, size_t *at) {
    double worst = 0;
    *at = (size_t)from * V;
    for (size_t k = (size_t)from * V; k < (size_t)to * V; k++) {
        double d = fabs((double)a[k] - b[k]);
        if (d > worst) worst = d, *at = k;
    }
    return worst;
}

static int argmax(const float *row, int V) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (row[v] > row[best]) best = v;
    return best;
}

static void test_config(void **state) {
    (void)state;
    finch_model *q = load("tiny_qwen2.gguf"), *m = load("tiny_mistral.gguf");
    finch_model_config a, b;
    finch_model_config_get(q, &a);
    finch_model_config_get(m, &b);
    assert_string_equal(a.arch, "qwen2");
    assert_string_equal(b.arch, "llama");
    assert_true(a.tied_output && !b.tied_output);
    assert_int_equal(a.n_head_kv, 2);
    assert_int_equal(b.n_head_kv, 2);
    assert_int_equal(a.head_dim, 16);
    assert_true(a.rope_theta == 1e6f && b.rope_theta == 1e4f);
    assert_int_equal(b.sliding_window, 0); /* the window of config.json is not in the file */
    assert_int_equal(b.n_ctx_train, 128);
    for (int l = 0; l < 2; l++) {
        assert_non_null(q->layers[l].wq.bias);
        assert_non_null(q->layers[l].wk.bias);
        assert_non_null(q->layers[l].wv.bias);
        assert_null(q->layers[l].wo.bias);
        assert_null(m->layers[l].wq.bias);
    }
    assert_non_null(finch_model_tokenizer(q));
    finch_model_free(q);
    finch_model_free(m);
}

static void test_logits(void **state) {
    (void)state;
    size_t i, j;
    json_t *e, *seq;
    json_array_foreach(json_object_get(manifest, "models"), i, e) {
        const char *name = str(e, "name");
        finch_model *m = load(str(e, "gguf"));
        const int V = (int)num(e, "n_vocab");
        size_t n_ref;
        float *ref = read_logits(e, &n_ref);
        json_array_foreach(json_object_get(e, "sequences"), j, seq) {
            int n;
            int32_t *ids = seq_ids(seq, &n);
            const int hf_n = (int)num(seq, "hf_positions");
            const float *hf = ref + num(seq, "hf"), *cpp = ref + num(seq, "llamacpp");
            assert_true((size_t)(num(seq, "llamacpp") + (int64_t)n * V) <= n_ref);
            float *got = run_in(m, ids, n, V, FINCH_NUMERICS_EXACT);
            float *approx = run_in(m, ids, n, V, FINCH_NUMERICS_LLAMACPP);
            double scale = json_real_value(json_object_get(seq, "max_abs_logit"));
            size_t at = 0, at_c = 0, at_a = 0;
            double d_hf = max_diff(got, hf, 0, hf_n, V, &at);
            double d_cpp = max_diff(got, cpp, 0, n, V, &at_c);
            double d_approx = max_diff(approx, cpp, 0, n, V, &at_a);
            printf("  %s %s: |finch - transformers| %.3g (%.2g of the logit scale %.2f, %d "
                   "positions), |finch - llama.cpp| %.3g, llamacpp numerics %.3g\n",
                   name, str(seq, "tag"), d_hf, d_hf / scale, scale, hf_n, d_cpp, d_approx);
            if (d_hf > TOL_HF * scale)
                fail_msg("%s %s: logit [%zu, %zu] = %.7g, transformers %.7g", name, str(seq, "tag"),
                         at / V, at % V, got[at], hf[at]);
            if (d_cpp > TOL_CPP)
                fail_msg("%s %s: logit [%zu, %zu] = %.7g, llama.cpp %.7g", name, str(seq, "tag"),
                         at_c / V, at_c % V, got[at_c], cpp[at_c]);
            assert_true(d_approx < 5e-3);
            for (int t = 0; t < n; t++)
                if (argmax(got + (size_t)t * V, V) != argmax(cpp + (size_t)t * V, V))
                    fail_msg("%s %s: position %d: argmax %d, llama.cpp %d", name, str(seq, "tag"),
                             t, argmax(got + (size_t)t * V, V), argmax(cpp + (size_t)t * V, V));
            /* past Mistral's window transformers attends to 16 positions, llama.cpp and
             * finch to all of them */
            if (hf_n < n) {
                double past = max_diff(got, hf, hf_n, n, V, &at);
                printf("    past the window: |finch - transformers| %.3g\n", past);
                assert_true(past > 0.1);
            }
            free(got);
            free(approx);
            free(ids);
        }
        free(ref);
        finch_model_free(m);
    }
}

/* The training forward's mean cross-entropy equals the one of transformers' logits. */
static void test_train_forward(void **state) {
    (void)state;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(manifest, "models"), i, e) {
        finch_model *m = load(str(e, "gguf"));
        json_t *seq = json_array_get(json_object_get(e, "sequences"), 2);
        int n;
        int32_t *ids = seq_ids(seq, &n);
        size_t n_ref;
        float *all = read_logits(e, &n_ref);
        check_train_loss(m, ids, n, all + num(seq, "hf"), str(e, "name"), 1e-5);
        free(all);
        free(ids);
        finch_model_free(m);
    }
}

static double first_loss, last_loss;
static void on_progress(const finch_train_progress *p, void *user) {
    (void)user;
    if (p->step == 1) first_loss = p->loss;
    last_loss = p->loss;
}

/* Runs method (LoRA: on every projection, without dropout) for 12 steps on file with the
 * data set setup writes, into out; returns the model (the base again). */
static finch_model *train(const char *file, const char *method, const char *out) {
    finch_model *m = load(file);
    finch_train_options o = finch_train_defaults();
    char data[400];
    snprintf(data, sizeof data, "%s/train.jsonl", tmp);
    o.data.path = data;
    o.data.max_seq_len = 32;
    o.out_dir = out;
    o.method = method;
    o.learning_rate = 2e-2;
    o.batch_size = 4;
    o.max_steps = 12;
    o.log_steps = 1;
    finch_err err;
    if (!strcmp(method, "lora") &&
        (finch_train_set_option(&o, "target-modules", "all-linear", &err) ||
         finch_train_set_option(&o, "lora-dropout", "0", &err)))
        fail_msg("%s", err.msg);
    if (finch_train(m, &o, on_progress, NULL, NULL, &err)) fail_msg("%s: %s", file, err.msg);
    printf("  %s %s: loss %.4f -> %.4f in 12 steps\n", file, method, first_loss, last_loss);
    assert_true(last_loss < 0.9 * first_loss);
    return m;
}

static const int32_t probe[] = {5, 17, 33, 42, 8, 90, 61, 3};
enum { N_PROBE = 8, V = 97 };

/* A short run of method on file learns; the adapter merged into the GGUF gives the logits
 * of the base with the adapter attached. */
static void train_and_merge(const char *file, const char *method, int run_no) {
    char out[400], merged_path[400];
    snprintf(out, sizeof out, "%s/run%d", tmp, run_no);
    finch_model *m = train(file, method, out);
    finch_adapter *a;
    finch_err err;
    if (finch_adapter_load(m, out, &a, &err)) fail_msg("%s", err.msg);
    if (finch_adapter_attach(m, a, 1.0f, &err)) fail_msg("%s", err.msg);
    float *with = run_in(m, probe, N_PROBE, V, FINCH_NUMERICS_EXACT);
    finch_adapter_detach(m, a);
    float *base = run_in(m, probe, N_PROBE, V, FINCH_NUMERICS_EXACT);
    snprintf(merged_path, sizeof merged_path, "%s/merged%d.gguf", tmp, run_no);
    if (finch_merge(m, &a, NULL, 1, "f32", merged_path, &err)) fail_msg("%s", err.msg);
    finch_model *mm;
    if (finch_model_load(merged_path, &mm, &err)) fail_msg("%s", err.msg);
    float *got = run_in(mm, probe, N_PROBE, V, FINCH_NUMERICS_EXACT);
    size_t at;
    double moved = max_diff(with, base, 0, N_PROBE, V, &at);
    double d = max_diff(got, with, 0, N_PROBE, V, &at);
    printf("  %s %s: the adapter moves logits by %.3f; merged vs base + adapter %.2g\n", file,
           method, moved, d);
    assert_true(moved > 0.05);
    assert_true(d < 1e-4);
    free(with);
    free(base);
    free(got);
    finch_model_free(mm);
    finch_adapter_free(a);
    finch_model_free(m);
}

static const char *const files[] = {"tiny_qwen2.gguf", "tiny_mistral.gguf"};

/* LoRA on every projection and BitFit (the qwen2 file's q/k biases, biases added to the
 * Mistral file) on each file. */
static void test_train_and_merge(void **state) {
    (void)state;
    const char *methods[] = {"lora", "bitfit"};
    for (int i = 0; i < 4; i++) train_and_merge(files[i % 2], methods[i / 2], i);
}

/* Full fine-tuning on each file writes the tuned model twice, as a GGUF (q/k rows and
 * biases back in the file's order: Hugging Face order for qwen2, interleaved for llama)
 * and as a Hugging Face folder (Hugging Face order, config.json naming the family): both
 * load to the same logits, bit for bit, away from the base's. */
static void test_full_fine_tuning_files(void **state) {
    (void)state;
    for (int i = 0; i < 2; i++) {
        char out[400], path[500];
        snprintf(out, sizeof out, "%s/full%d", tmp, i);
        finch_model *m = train(files[i], "full", out);
        float *base = run_in(m, probe, N_PROBE, V, FINCH_NUMERICS_EXACT);
        finch_model *g, *hf;
        finch_err err;
        snprintf(path, sizeof path, "%s/model.gguf", out);
        if (finch_model_load(path, &g, &err) || finch_model_load(out, &hf, &err))
            fail_msg("%s", err.msg);
        assert_string_equal(g->cfg.arch, m->cfg.arch);
        assert_string_equal(hf->cfg.arch, m->cfg.arch);
        float *a = run_in(g, probe, N_PROBE, V, FINCH_NUMERICS_EXACT);
        float *b = run_in(hf, probe, N_PROBE, V, FINCH_NUMERICS_EXACT);
        size_t at;
        double moved = max_diff(a, base, 0, N_PROBE, V, &at);
        double d = max_diff(a, b, 0, N_PROBE, V, &at);
        printf("  %s full: tuning moves logits by %.3f; model.gguf vs the folder %.2g\n", files[i],
               moved, d);
        assert_true(moved > 0.05);
        assert_true(d == 0);
        free(base);
        free(a);
        free(b);
        finch_model_free(g);
        finch_model_free(hf);
        finch_model_free(m);
    }
}

static int setup(void **state) {
    (void)state;
    return model_fixture_setup(DIR "tiny_qwen2_mistral.json", &manifest, tmp);
}

static int teardown(void **state) {
    (void)state;
    return model_fixture_teardown(manifest, tmp);
}

int main(void) {
    finch_threads_set(1); /* a tiny model: threads would only spin against other tests */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_logits),
        cmocka_unit_test(test_train_forward),
        cmocka_unit_test(test_train_and_merge),
        cmocka_unit_test(test_full_fine_tuning_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
