/*
 * test_gemma3_hf.c: full fine-tuning's outputs for a Gemma 3 model, on the tiny Gemma 3
 * (tests/reference/make_tiny_gemma3.py), its every tensor moved off the base:
 *  - model.gguf loads and gives the tuned model's logits (q/k rows and the per-head q/k
 *    norms back in the rotate-half order of gemma3 GGUFs);
 *  - model.safetensors holds every tensor under transformers' Gemma3ForCausalLM key, each
 *    equal to model.gguf's (which keeps Hugging Face's q/k row order) but for the norms,
 *    which transformers stores as w where GGUF holds 1 + w; nothing else;
 *  - config.json describes it for transformers' gemma3_text (4.50 or later): window,
 *    pattern, layer types, both RoPE bases, head_dim as the score scale, GeGLU, no
 *    soft-capping;
 *  - the folder loads back (model/load_hf.c) and gives the tuned model's logits, and every
 *    method trains on it as on model.gguf (the same loss and gradients);
 * and the tiny gemma3_text folders transformers itself saved (f32 tied, one file; bf16
 * untied, three shards, sliding_window_pattern instead of layer_types; made by
 * tests/reference/make_gemma3_hf_fixtures.py) give transformers' float64 logits.
 * tests/interop/check_gemma3_hf.py runs an independent numpy forward of the folder (the
 * installed transformers, 4.46, predates Gemma 3) against finch's logits.
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
#include "io/io.h"
#include "model/model.h" /* finch_model_train_step */
#include "peft/method.h"
#include "model_util.h" /* seq_ids, run_in, check_train_loss */

static char dir[] = "/tmp/finch_gemma3_hf_XXXXXX";
static finch_model *model;
static const int32_t ids[] = {5,  17, 33, 42, 8, 90, 61, 3,  7,  3,  91, 60,
                              60, 12, 35, 81, 2, 49, 18, 94, 27, 66, 5,  40};
enum { N = sizeof ids / sizeof ids[0] };

static float *logits_of(finch_model *m) {
    finch_kv_session s;
    finch_err err;
    assert_int_equal(finch_kv_session_init(&s, m, 64, 64, FINCH_NUMERICS_EXACT, &err), FINCH_OK);
    finch_model_forward(m, &s, ids, N, true);
    const size_t n = (size_t)N * (size_t)m->cfg.n_vocab;
    float *l = malloc(n * sizeof *l);
    assert_non_null(l);
    memcpy(l, s.logits, n * sizeof *l);
    finch_kv_session_release(&s);
    return l;
}

/* The Hugging Face key of a gemma3 GGUF tensor (transformers' modeling_gemma3 names), and
 * whether it is a norm; NULL for none. */
static const char *hf_key(const char *g, char *buf, size_t n, bool *norm) {
    static const struct {
        const char *gguf, *hf;
        bool norm;
    } map[] = {{"attn_norm.weight", "input_layernorm.weight", true},
               {"attn_q.weight", "self_attn.q_proj.weight", false},
               {"attn_k.weight", "self_attn.k_proj.weight", false},
               {"attn_v.weight", "self_attn.v_proj.weight", false},
               {"attn_output.weight", "self_attn.o_proj.weight", false},
               {"attn_q_norm.weight", "self_attn.q_norm.weight", true},
               {"attn_k_norm.weight", "self_attn.k_norm.weight", true},
               {"post_attention_norm.weight", "post_attention_layernorm.weight", true},
               {"ffn_norm.weight", "pre_feedforward_layernorm.weight", true},
               {"post_ffw_norm.weight", "post_feedforward_layernorm.weight", true},
               {"ffn_gate.weight", "mlp.gate_proj.weight", false},
               {"ffn_up.weight", "mlp.up_proj.weight", false},
               {"ffn_down.weight", "mlp.down_proj.weight", false}};
    int l, k;
    *norm = false;
    if (!strcmp(g, "token_embd.weight")) return snprintf(buf, n, "model.embed_tokens.weight"), buf;
    if (!strcmp(g, "output_norm.weight")) {
        *norm = true;
        return snprintf(buf, n, "model.norm.weight"), buf;
    }
    if (sscanf(g, "blk.%d.%n", &l, &k) != 1) return NULL;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(g + k, map[i].gguf)) {
            *norm = map[i].norm;
            return snprintf(buf, n, "model.layers.%d.%s", l, map[i].hf), buf;
        }
    return NULL;
}

static void test_full_outputs(void **state) {
    (void)state;
    finch_peft *p = NULL;
    finch_err err = {0};
    finch_rng rng;
    finch_rng_seed(&rng, 8);
    if (finch_peft_new(model, "full", NULL, 0, &rng, true, &p, &err)) fail_msg("%s", err.msg);
    assert_int_equal(finch_peft_attach(p, model, 1.0f, 64, &err), FINCH_OK);
    /* every tensor off the base, the norms' per-dimension values too */
    for (int64_t i = 0; i < p->params.total; i++)
        p->params.data[i] += 0.05f * (finch_rng_float(&rng) - 0.5f);
    float *tuned = logits_of(model);
    if (finch_peft_save(p, model, dir, &err)) fail_msg("%s", err.msg);
    finch_peft_detach(p, model);
    finch_peft_free(p);
    float *base = logits_of(model);

    char path[512];
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    finch_model *m2;
    if (finch_model_load(path, &m2, &err)) fail_msg("%s", err.msg);
    float *saved = logits_of(m2);
    finch_model_free(m2);
    double d = 0, moved = 0;
    for (int64_t i = 0; i < (int64_t)N * model->cfg.n_vocab; i++) {
        d = fmax(d, fabs(saved[i] - tuned[i]));
        moved = fmax(moved, fabs(base[i] - tuned[i]));
    }
    printf("  model.gguf against the tuned model in memory: %.3g (tuning moved the logits by "
           "%.3g)\n",
           d, moved);
    assert_true(d < 1e-5 && moved > 0.1);

    /* the folder's tensors against model.gguf's */
    finch_gguf *g;
    finch_st *st;
    if (finch_gguf_open(path, &g, &err)) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (finch_st_open(path, &st, &err)) fail_msg("%s", err.msg);
    int64_t matched = 0;
    for (int64_t i = 0; i < finch_gguf_n_tensors(g); i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        char key[160];
        bool norm;
        const char *k = hf_key(t->name, key, sizeof key, &norm);
        if (!k) fail_msg("model.gguf: unexpected tensor %s", t->name);
        const finch_st_tensor *s = finch_st_find(st, k);
        if (!s) fail_msg("model.safetensors: no %s (for %s)", k, t->name);
        assert_int_equal(t->type, FINCH_DTYPE_F32);
        assert_int_equal(s->dtype, FINCH_ST_F32);
        int64_t n = 1;
        for (int j = 0; j < t->n_dims; j++) n *= t->ne[j];
        assert_int_equal((int64_t)s->n_elems, n);
        assert_int_equal(s->shape[0], t->ne[t->n_dims - 1]); /* torch order: rows first */
        const float *a = (const float *)t->data, *b = (const float *)s->data;
        for (int64_t j = 0; j < n; j++)
            if (b[j] != a[j] - (norm ? 1.0f : 0.0f))
                fail_msg("%s[%lld]: %.9g, model.gguf's %s %.9g%s", k, (long long)j, b[j], t->name,
                         a[j], norm ? " (less 1 expected)" : "");
        matched++;
    }
    assert_int_equal(matched, finch_st_n_tensors(st));
    printf("  model.safetensors: %lld tensors, each model.gguf's (norms less 1)\n",
           (long long)matched);
    finch_st_close(st);
    finch_gguf_close(g);

    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    assert_non_null(c);
    assert_string_equal(json_string_value(json_object_get(c, "model_type")), "gemma3_text");
    assert_string_equal(json_string_value(json_array_get(json_object_get(c, "architectures"), 0)),
                        "Gemma3ForCausalLM");
    assert_int_equal(json_integer_value(json_object_get(c, "sliding_window")), 16);
    assert_int_equal(json_integer_value(json_object_get(c, "sliding_window_pattern")), 6);
    assert_int_equal(json_integer_value(json_object_get(c, "head_dim")), 32);
    assert_int_equal(json_integer_value(json_object_get(c, "query_pre_attn_scalar")), 32);
    assert_int_equal(json_integer_value(json_object_get(c, "num_hidden_layers")), 6);
    assert_true(json_number_value(json_object_get(c, "rope_theta")) == 1e6);
    assert_true(json_number_value(json_object_get(c, "rope_local_base_freq")) == 1e4);
    assert_true(json_is_true(json_object_get(c, "tie_word_embeddings")));
    assert_true(json_is_null(json_object_get(c, "final_logit_softcapping")));
    assert_string_equal(json_string_value(json_object_get(c, "hidden_activation")),
                        "gelu_pytorch_tanh");
    json_t *types = json_object_get(c, "layer_types");
    assert_int_equal(json_array_size(types), 6);
    for (int l = 0; l < 6; l++)
        assert_string_equal(json_string_value(json_array_get(types, (size_t)l)),
                            l == 5 ? "full_attention" : "sliding_attention");
    json_decref(c);

    /* the folder loads as a gemma3_text model (norms plus 1, q/k rows and norms back to
     * finch's order) and gives the tuned logits: (1 + w) - 1 + 1 is exact in f32 for
     * 1 + w >= 0.5, so the only tolerance is for a norm below that */
    finch_model *m3;
    if (finch_model_load(dir, &m3, &err)) fail_msg("%s", err.msg);
    assert_string_equal(m3->cfg.arch, "gemma3");
    assert_int_equal(m3->cfg.sliding_window, 16);
    for (int l = 0; l < 6; l++) assert_int_equal(m3->layers[l].sliding, l != 5);
    float *folder = logits_of(m3);
    finch_model_free(m3);
    d = 0;
    for (int64_t i = 0; i < (int64_t)N * model->cfg.n_vocab; i++)
        d = fmax(d, fabs(folder[i] - tuned[i]));
    printf("  the folder loaded back against the tuned model in memory: %.3g\n", d);
    assert_true(d < 1e-6);
    free(folder);
    free(tuned);
    free(base);
    free(saved);
}

/* Every method trains on the folder full fine-tuning wrote as on its model.gguf (the same
 * tuned model): the same loss and the same gradients of every trainable tensor, bit for
 * bit (the same f32 weights in the same order), from one forward and backward over a
 * 24-token row that runs past the window of 16. */
static void test_methods_train_on_folder(void **state) {
    (void)state;
    static const char *const methods[] = {"lora",   "dora",   "ia3",    "adapter", "prompt",
                                          "prefix", "bitfit", "freeze", "full"};
    char path[512];
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    finch_err err;
    finch_model *ms[2];
    if (finch_model_load(path, &ms[0], &err) || finch_model_load(dir, &ms[1], &err))
        fail_msg("%s", err.msg);
    int32_t tgt[N], pos[N];
    for (int t = 0; t < N; t++) tgt[t] = t + 1 < N ? ids[t + 1] : -1, pos[t] = t;
    for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++) {
        finch_peft *p[2] = {NULL, NULL};
        double loss[2] = {0, 0};
        for (int i = 0; i < 2; i++) {
            finch_rng rng;
            finch_rng_seed(&rng, 3);
            if (finch_peft_new(ms[i], methods[k], NULL, 0, &rng, true, &p[i], &err))
                fail_msg("%s on %s: %s", methods[k], i ? "the folder" : "model.gguf", err.msg);
            /* methods that start at the identity (LoRA's B = 0) get every parameter moved */
            finch_rng_seed(&rng, 4);
            for (int64_t j = 0; j < p[i]->params.total; j++)
                p[i]->params.data[j] += 0.02f * (finch_rng_float(&rng) - 0.5f);
            if (finch_peft_attach(p[i], ms[i], 1.0f, N, &err)) fail_msg("%s", err.msg);
            finch_train_acts *a;
            if (finch_train_acts_new(ms[i], 1, N, &a, &err)) fail_msg("%s", err.msg);
            loss[i] = finch_model_train_step(ms[i], a, ids, tgt, pos, NULL, 0, 1, true);
            finch_train_acts_free(a);
        }
        assert_int_equal(p[0]->params.total, p[1]->params.total);
        double dg = 0, gmax = 0;
        for (int64_t j = 0; j < p[0]->params.total; j++) {
            dg = fmax(dg, fabs(p[0]->params.grad[j] - p[1]->params.grad[j]));
            gmax = fmax(gmax, fabs(p[0]->params.grad[j]));
        }
        printf("  %-8s loss %.7f (GGUF) %.7f (folder); %lld parameters, gradients up to %.3g "
               "differ by %.3g\n",
               methods[k], loss[0], loss[1], (long long)p[0]->params.total, gmax, dg);
        assert_true(loss[0] == loss[1] && dg == 0 && gmax > 0);
        for (int i = 0; i < 2; i++) {
            finch_peft_detach(p[i], ms[i]);
            finch_peft_free(p[i]);
        }
    }
    finch_model_free(ms[0]);
    finch_model_free(ms[1]);
}

/* ---- folders written by transformers (tests/reference/make_gemma3_hf_fixtures.py) ---- */

#define TF_DIR FINCH_FIXTURES "/hf_gemma3/"

static double *read_f64(const char *name, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, TF_DIR "%s", name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open fixture %s", path);
    double *v = malloc(n * sizeof *v);
    assert_non_null(v);
    if (fread(v, sizeof *v, n, f) != n) fail_msg("fixture %s is shorter than %zu doubles", path, n);
    fclose(f);
    return v;
}

/* Each folder's logits equal transformers' float64 ones within 1e-5 (logits up to ~2.2; f32
 * rounding through three blocks), fed in two chunks so that the KV cache is crossed; its
 * blocks slide as layer_types (or sliding_window_pattern) says; the training forward gives
 * the reference logits' cross-entropy. */
static void test_transformers_folders(void **state) {
    (void)state;
    json_error_t je;
    json_t *man = json_load_file(TF_DIR "manifest.json", 0, &je);
    if (!man) fail_msg("manifest.json: line %d: %s", je.line, je.text);
    size_t i, j;
    json_t *e, *seq;
    json_array_foreach(json_object_get(man, "models"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        char path[512];
        snprintf(path, sizeof path, TF_DIR "%s", name);
        finch_model *m;
        finch_err err;
        if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
        const int V = m->cfg.n_vocab;
        assert_string_equal(m->cfg.arch, "gemma3");
        assert_int_equal(V, 96);
        assert_int_equal(m->cfg.sliding_window, 4);
        assert_int_equal(m->cfg.tied_output, json_is_true(json_object_get(e, "tied")));
        json_t *types = json_object_get(e, "layer_types");
        assert_int_equal(json_array_size(types), m->cfg.n_layer);
        for (int l = 0; l < m->cfg.n_layer; l++)
            assert_int_equal(
                m->layers[l].sliding,
                !strcmp(json_string_value(json_array_get(types, (size_t)l)), "sliding_attention"));
        json_array_foreach(json_object_get(e, "sequences"), j, seq) {
            int n;
            int32_t *sids = seq_ids(seq, &n);
            double *ref =
                read_f64(json_string_value(json_object_get(seq, "logits")), (size_t)n * V);
            float *got = run_in(m, sids, n, V, FINCH_NUMERICS_EXACT);
            double worst = 0;
            size_t at = 0;
            for (size_t k = 0; k < (size_t)n * V; k++)
                if (fabs(got[k] - ref[k]) > worst) worst = fabs(got[k] - ref[k]), at = k;
            printf("  %s %s: max |finch - transformers float64| = %.3g (logits up to %.2f)\n", name,
                   json_string_value(json_object_get(seq, "tag")), worst,
                   json_real_value(json_object_get(seq, "max_abs")));
            if (worst > 1e-5)
                fail_msg("%s: logit [%zu, %zu] = %.7g, transformers %.7g", name, at / V, at % V,
                         got[at], ref[at]);
            if (j == 2) {
                float *reff = malloc((size_t)n * V * sizeof *reff);
                assert_non_null(reff);
                for (size_t k = 0; k < (size_t)n * V; k++) reff[k] = (float)ref[k];
                check_train_loss(m, sids, n, reff, name, 1e-5);
                free(reff);
            }
            free(got);
            free(ref);
            free(sids);
        }
        finch_model_free(m);
    }
    json_decref(man);
}

static int setup(void **state) {
    (void)state;
    finch_err err;
    if (!mkdtemp(dir)) return -1;
    return finch_model_load(FINCH_FIXTURES "/model/tiny_gemma3.gguf", &model, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    finch_model_free(model);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_full_outputs),
                                       cmocka_unit_test(test_methods_train_on_folder),
                                       cmocka_unit_test(test_transformers_folders)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
