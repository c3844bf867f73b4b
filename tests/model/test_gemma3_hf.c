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
 *    soft-capping.
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

#include "io/io.h"
#include "peft/method.h"

static char dir[] = "/tmp/finch_gemma3_hf_XXXXXX";
static finch_model *model;
static const int32_t ids[] = {5, 17, 33, 42, 8, 90, 61, 3, 7, 3, 91, 60, 60, 12, 35, 81, 2, 49, 18,
                              94, 27, 66, 5, 40};
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
           "%.3g)\n", d, moved);
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
    free(tuned);
    free(base);
    free(saved);
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_full_outputs)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
