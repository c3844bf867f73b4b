/*
 * test_gpt2.c: the GPT-2 family. A tiny random GPT2LMHeadModel saved by transformers
 * (tests/fixtures/model/tiny_gpt2/: Conv1D weights stored [in, out], fused c_attn, tied
 * head, the byte-level BPE tokenizer.json) and the GGUF that
 * tests/reference/make_gpt2_fixtures.py converted from it as convert_hf_to_gguf.py does
 * (architecture gpt2: attn_qkv, position_embd, LayerNorm biases, output.weight a copy of
 * token_embd). Checks:
 *  - both load as the gpt2 row with the config's shapes; `finch info`'s description;
 *  - finch's exact logits from either equal transformers' float64 forward within 1e-5
 *    absolute, with the same argmax, on four sequences (1 to 40 tokens) fed in two chunks;
 *  - against llama.cpp (f32 cache) on the GGUF: the same argmax everywhere and a difference
 *    within 3e-3 (llama.cpp's CPU GELU reads an f16 table: the fixture records 0.9-1.5e-3
 *    between llama.cpp and transformers);
 *  - the training forward's cross-entropy equals the one of transformers' logits;
 *  - the tokenizer from tokenizer.json and from the GGUF give the ids `tokenizers` and
 *    llama.cpp gave on 311 lines (GPT-2's pre-tokenizer edge cases, the quotes data set);
 *  - LoRA learns on each source; BitFit trains exactly GPT-2's biases (every linear's,
 *    c_attn's as its q, k and v thirds, and every LayerNorm's) and learns;
 *  - bad files are refused with a message naming the file and the problem.
 * tests/grad/test_sites.c checks every method's gradients on the GGUF.
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
#include "peft/peft.h"   /* finch_adapter_peft, finch_peft_save */
#include "model_util.h"  /* seq_ids, run_in, check_train_loss */
#include "peft/method.h" /* finch_peft, finch_params_find */
#include "io/io.h"       /* the GGUF writer, for broken copies of the fixture */

#define DIR FINCH_FIXTURES "/model/"
#define TOL_HF 1e-5  /* absolute; logits up to 3.1 */
#define TOL_CPP 3e-3 /* absolute: llama.cpp's f16 GELU table (see the top) */

static json_t *manifest;
static char tmp[] = "/tmp/finch_gpt2_XXXXXX";
static const char *const sources[] = {"tiny_gpt2", "tiny_gpt2.gguf"};

static finch_model *load(const char *file) {
    char path[1024];
    snprintf(path, sizeof path, DIR "%s", file);
    finch_model *m;
    finch_err err;
    if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    return m;
}

static int64_t num(json_t *o, const char *key) {
    return json_integer_value(json_object_get(o, key));
}

static float *read_logits(size_t *n) {
    FILE *f = fopen(DIR "tiny_gpt2.f32", "rb");
    if (!f) fail_msg("cannot open fixture tiny_gpt2.f32");
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f) / sizeof(float);
    fseek(f, 0, SEEK_SET);
    float *v = malloc(*n * sizeof *v);
    assert_non_null(v);
    assert_int_equal(fread(v, sizeof *v, *n, f), *n);
    fclose(f);
    return v;
}

static double max_diff(const float *a, const float *b, size_t n, size_t *at) {
    double worst = 0;
    *at = 0;
    for (size_t k = 0; k < n; k++) {
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

/* llamacpp numerics on the GGUF against llama.cpp with its defaults (f16 KV cache, no flash
 * attention; tiny_gpt2_llamacpp.f32 from tests/reference/make_gpt2_llamacpp_fixture.py),
 * each sequence one batch as there: every logit has llama.cpp's bits (LayerNorm, the f32
 * products, the attention and the GELU table in ggml's order and rounding; measured 0
 * differences), so within 1e-5 whatever the instruction set. */
static void test_llamacpp_numerics(void **state) {
    (void)state;
    const int V = (int)num(manifest, "n_vocab");
    FILE *f = fopen(DIR "tiny_gpt2_llamacpp.f32", "rb");
    if (!f) fail_msg("cannot open fixture tiny_gpt2_llamacpp.f32");
    float *ref = malloc(64 * 400 * sizeof *ref);
    size_t n_ref = fread(ref, sizeof *ref, 64 * 400, f), off = 0, i;
    fclose(f);
    finch_model *m = load("tiny_gpt2.gguf");
    json_t *seq;
    json_array_foreach(json_object_get(manifest, "sequences"), i, seq) {
        int n;
        int32_t *ids = seq_ids(seq, &n);
        assert_true(off + (size_t)n * V <= n_ref);
        float *got = malloc((size_t)n * V * sizeof *got);
        finch_session *s;
        finch_err err;
        if (finch_session_new(m, n, FINCH_NUMERICS_LLAMACPP, &s, &err)) fail_msg("%s", err.msg);
        if (finch_session_decode(s, ids, n, got, NULL, &err)) fail_msg("%s", err.msg);
        size_t at, same = 0;
        double d = max_diff(got, ref + off, (size_t)n * V, &at);
        for (size_t k = 0; k < (size_t)n * V; k++) same += !memcmp(&got[k], &ref[off + k], 4);
        printf(
            "  llamacpp numerics %s: |finch - llama.cpp| %.3g, %zu of %zu logits bit-identical\n",
            json_string_value(json_object_get(seq, "tag")), d, same, (size_t)n * V);
        if (d > 1e-5)
            fail_msg("logit [%zu, %zu] = %.9g, llama.cpp %.9g", at / V, at % V, got[at],
                     ref[off + at]);
        assert_int_equal(same, (size_t)n * V);
        off += (size_t)n * V;
        finch_session_free(s);
        free(got);
        free(ids);
    }
    assert_int_equal(off, n_ref);
    finch_model_free(m);
    free(ref);
}

static void collect(const char *line, void *user) {
    strncat((char *)user, line, 4000 - strlen((char *)user) - 2);
    strcat((char *)user, "\n");
}

static void test_config(void **state) {
    (void)state;
    for (int i = 0; i < 2; i++) {
        finch_model *m = load(sources[i]);
        finch_model_config c;
        finch_model_config_get(m, &c);
        assert_string_equal(c.arch, "gpt2");
        assert_true(m->arch->layer_norm && m->arch->learned_pos && m->arch->plain_ffn);
        assert_int_equal(c.n_vocab, num(manifest, "n_vocab"));
        assert_int_equal(c.n_embd, 64);
        assert_int_equal(c.n_ff, 256);
        assert_int_equal(c.n_layer, 2);
        assert_int_equal(c.n_head, 4);
        assert_int_equal(c.n_head_kv, 4);
        assert_int_equal(c.head_dim, 16);
        assert_int_equal(c.n_ctx_train, 64);
        assert_true(fabsf(c.rms_eps - 1e-5f) < 1e-12f);
        assert_int_equal(m->pos_embd.rows, 64);
        assert_non_null(m->output_norm_b);
        for (int l = 0; l < 2; l++) {
            const finch_layer *ly = &m->layers[l];
            assert_non_null(ly->attn_norm_b);
            assert_non_null(ly->ffn_norm_b);
            assert_null(ly->w_gate.w.data);
            const finch_linear *lins[] = {&ly->wq, &ly->wk,   &ly->wv,
                                          &ly->wo, &ly->w_up, &ly->w_down};
            for (int k = 0; k < 6; k++) assert_non_null(lins[k]->bias);
            /* q, k, v: consecutive thirds of the fused projection */
            assert_ptr_equal((const char *)ly->wk.w.data,
                             (const char *)ly->wq.w.data + 64 * ly->wq.w.row_bytes);
            assert_ptr_equal(ly->wv.bias, ly->wk.bias + 64);
        }
        assert_non_null(finch_model_tokenizer(m));
        char text[4000] = "";
        finch_model_describe(m, collect, text);
        printf("%s", text);
        assert_non_null(strstr(text, "gpt2"));
        assert_non_null(strstr(text, "LayerNorm"));
        finch_model_free(m);
    }
}

static void test_logits(void **state) {
    (void)state;
    const int V = (int)num(manifest, "n_vocab");
    size_t n_ref, i;
    float *ref = read_logits(&n_ref);
    json_t *seq;
    for (int src = 0; src < 2; src++) {
        finch_model *m = load(sources[src]);
        json_array_foreach(json_object_get(manifest, "sequences"), i, seq) {
            int n;
            int32_t *ids = seq_ids(seq, &n);
            const float *hf = ref + num(seq, "hf"), *cpp = ref + num(seq, "llamacpp");
            assert_true((size_t)(num(seq, "llamacpp") + (int64_t)n * V) <= n_ref);
            float *got = run_in(m, ids, n, V, FINCH_NUMERICS_EXACT);
            size_t at, at_c;
            double d_hf = max_diff(got, hf, (size_t)n * V, &at);
            double d_cpp = max_diff(got, cpp, (size_t)n * V, &at_c);
            const char *tag = json_string_value(json_object_get(seq, "tag"));
            printf("  %s %s: |finch - transformers| %.3g, |finch - llama.cpp| %.3g\n", sources[src],
                   tag, d_hf, d_cpp);
            if (d_hf > TOL_HF)
                fail_msg("%s %s: logit [%zu, %zu] = %.7g, transformers %.7g", sources[src], tag,
                         at / V, at % V, got[at], hf[at]);
            if (d_cpp > TOL_CPP)
                fail_msg("%s %s: logit [%zu, %zu] = %.7g, llama.cpp %.7g", sources[src], tag,
                         at_c / V, at_c % V, got[at_c], cpp[at_c]);
            for (int t = 0; t < n; t++) {
                int a = argmax(got + (size_t)t * V, V);
                if (a != argmax(hf + (size_t)t * V, V) || a != argmax(cpp + (size_t)t * V, V))
                    fail_msg("%s %s: position %d: argmax %d, transformers %d, llama.cpp %d",
                             sources[src], tag, t, a, argmax(hf + (size_t)t * V, V),
                             argmax(cpp + (size_t)t * V, V));
            }
            free(got);
            free(ids);
        }
        /* the training forward's loss on the 16-token sequence */
        seq = json_array_get(json_object_get(manifest, "sequences"), 2);
        int n;
        int32_t *ids = seq_ids(seq, &n);
        check_train_loss(m, ids, n, ref + num(seq, "hf"), sources[src], 1e-5);
        free(ids);
        finch_model_free(m);
    }
    free(ref);
}

static void test_tokenizer(void **state) {
    (void)state;
    for (int src = 0; src < 2; src++) {
        finch_model *m = load(sources[src]);
        const finch_tokenizer *tok = finch_model_tokenizer(m);
        size_t i;
        json_t *t;
        json_error_t je;
        json_t *texts = json_load_file(DIR "tiny_gpt2_texts.json", 0, &je);
        if (!texts) fail_msg("tiny_gpt2_texts.json: %s", je.text);
        assert_true(json_array_size(texts) >= 300);
        json_array_foreach(texts, i, t) {
            const char *text = json_string_value(json_object_get(t, "text"));
            json_t *want = json_object_get(t, "ids");
            int32_t *ids;
            int64_t n;
            finch_err err;
            if (finch_tokenize(tok, text, strlen(text), FINCH_TOK_PARSE_SPECIAL, &ids, &n, &err))
                fail_msg("%s", err.msg);
            assert_int_equal(n, (int64_t)json_array_size(want));
            for (int64_t k = 0; k < n; k++)
                assert_int_equal(ids[k], json_integer_value(json_array_get(want, k)));
            free(ids);
        }
        json_decref(texts);
        finch_model_free(m);
    }
}

static double first_loss, last_loss;
static void on_progress(const finch_train_progress *p, void *user) {
    (void)user;
    if (p->step == 1) first_loss = p->loss;
    last_loss = p->loss;
}

/* Runs method for 12 steps on the source with the data set setup writes, into out. */
static void train(const char *src, const char *method, const char *out) {
    finch_model *m = load(src);
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
    if (!strcmp(method, "lora") && finch_train_set_option(&o, "lora-dropout", "0", &err))
        fail_msg("%s", err.msg);
    if (finch_train(m, &o, on_progress, NULL, NULL, &err)) fail_msg("%s: %s", src, err.msg);
    printf("  %s %s: loss %.4f -> %.4f in 12 steps\n", src, method, first_loss, last_loss);
    assert_true(last_loss < 0.9 * first_loss);
    finch_model_free(m);
}

static void test_lora_learns(void **state) {
    (void)state;
    for (int src = 0; src < 2; src++) {
        char out[400];
        snprintf(out, sizeof out, "%s/lora%d", tmp, src);
        train(sources[src], "lora", out);
    }
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *n, f), *n);
    b[*n] = 0;
    fclose(f);
    return b;
}

/* Two config values agree: both absent, equal, or lists of the same names in any order
 * (peft keeps target_modules as a set). */
static bool same_value(json_t *a, json_t *b) {
    if (!a || !b) return !a && !b;
    if (!json_is_array(a) || !json_is_array(b)) return json_equal(a, b);
    if (json_array_size(a) != json_array_size(b)) return false;
    for (size_t x = 0; x < json_array_size(a); x++) {
        bool found = false;
        for (size_t y = 0; y < json_array_size(b); y++)
            found |= json_equal(json_array_get(a, x), json_array_get(b, y)) != 0;
        if (!found) return false;
    }
    return true;
}

/* Adapters made by peft on the transformers model (tests/reference/
 * make_gpt2_peft_fixtures.py: LoRA and DoRA on c_attn, c_proj, c_fc with fan_in_fan_out,
 * (IA)^3 on c_attn and mlp.c_proj): on either source finch's logits equal peft's (float64)
 * within 2e-5 (f32 through the adapted blocks; the adapters move the logits by 1.6 to 4),
 * and finch saves the adapter it loaded back to the same bytes and the same config fields
 * (peft_type, target_modules, fan_in_fan_out true). */
static void test_peft_adapters(void **state) {
    (void)state;
    const char *names[] = {"gpt2_lora", "gpt2_ia3", "gpt2_dora"};
    json_t *seq = json_array_get(json_object_get(manifest, "sequences"), 2);
    int n;
    int32_t *ids = seq_ids(seq, &n);
    const int V = (int)num(manifest, "n_vocab");
    for (int src = 0; src < 2; src++)
        for (int k = 0; k < 3; k++) {
            char dir[512], path[800], out[600];
            snprintf(dir, sizeof dir, FINCH_FIXTURES "/peft/%s", names[k]);
            snprintf(path, sizeof path, FINCH_FIXTURES "/peft/%s.f32", names[k]);
            size_t bytes;
            float *want = (float *)slurp(path, &bytes);
            assert_int_equal(bytes, (size_t)n * V * sizeof(float));
            finch_model *m = load(sources[src]);
            finch_adapter *a;
            finch_err err;
            if (finch_adapter_load(m, dir, &a, &err)) fail_msg("%s", err.msg);
            if (finch_adapter_attach(m, a, 1.0f, &err)) fail_msg("%s", err.msg);
            float *got = run_in(m, ids, n, V, FINCH_NUMERICS_EXACT);
            size_t at;
            double d = max_diff(got, want, (size_t)n * V, &at);
            printf("  %s + %s: |finch - peft| %.3g\n", sources[src], names[k], d);
            if (d > 2e-5)
                fail_msg("%s: logit [%zu, %zu] = %.7g, peft %.7g", names[k], at / V, at % V,
                         got[at], want[at]);
            finch_adapter_detach(m, a);
            /* written back: peft's own bytes, and its config's fields */
            snprintf(out, sizeof out, "%s/resaved_%s_%d", tmp, names[k], src);
            if (finch_peft_save(finch_adapter_peft(a), m, out, &err)) fail_msg("%s", err.msg);
            size_t n1, n2;
            snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
            char *orig = slurp(path, &n1);
            snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
            char *mine = slurp(path, &n2);
            assert_int_equal(n1, n2);
            assert_memory_equal(orig, mine, n1);
            free(orig);
            free(mine);
            json_error_t je;
            snprintf(path, sizeof path, "%s/adapter_config.json", dir);
            json_t *jo = json_load_file(path, 0, &je);
            snprintf(path, sizeof path, "%s/adapter_config.json", out);
            json_t *jm = json_load_file(path, 0, &je);
            assert_non_null(jo);
            assert_non_null(jm);
            const char *fields[] = {
                "peft_type", "target_modules", "fan_in_fan_out", "feedforward_modules",
                "r",         "lora_alpha",     "use_dora"};
            for (size_t f = 0; f < sizeof fields / sizeof *fields; f++)
                if (!same_value(json_object_get(jo, fields[f]), json_object_get(jm, fields[f])))
                    fail_msg("%s: adapter_config.json field %s differs from peft's", names[k],
                             fields[f]);
            json_decref(jo);
            json_decref(jm);
            finch_adapter_free(a);
            finch_model_free(m);
            free(got);
            free(want);
        }
    free(ids);
}

/* BitFit on GPT-2 trains exactly its biases: every linear's (c_attn's as one tensor), and
 * every LayerNorm's, nothing else; a run learns and its adapter gives the logits the
 * trained model gave. */
static void test_bitfit_biases(void **state) {
    (void)state;
    finch_model *m = load("tiny_gpt2.gguf");
    finch_rng rng;
    finch_rng_seed(&rng, 1);
    finch_peft *p;
    finch_err err;
    if (finch_peft_new(m, "bitfit", NULL, 0, &rng, true, &p, &err)) fail_msg("%s", err.msg);
    const char *stems[] = {"attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias",
                           "mlp.c_proj.bias",  "ln_1.bias",        "ln_2.bias"};
    const int64_t sizes[] = {192, 64, 256, 64, 64, 64};
    int64_t want_total = 64; /* ln_f */
    assert_int_equal(p->params.n, 2 * 6 + 1);
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 6; k++) {
            char name[128];
            snprintf(name, sizeof name, "transformer.h.%d.%s", l, stems[k]);
            const finch_param *q = finch_params_find(&p->params, name);
            if (!q) fail_msg("BitFit does not train %s", name);
            assert_int_equal(q->n, sizes[k]);
            want_total += sizes[k];
        }
    const finch_param *f = finch_params_find(&p->params, "transformer.ln_f.bias");
    assert_non_null(f);
    assert_int_equal(p->params.total, want_total);
    /* they start at the model's values: c_attn's thirds are q's, k's, v's biases */
    const finch_param *qkv = finch_params_find(&p->params, "transformer.h.1.attn.c_attn.bias");
    assert_memory_equal(p->params.data + qkv->off, m->layers[1].wq.bias, 64 * sizeof(float));
    assert_memory_equal(p->params.data + qkv->off + 128, m->layers[1].wv.bias, 64 * sizeof(float));
    assert_memory_equal(p->params.data + f->off, m->output_norm_b, 64 * sizeof(float));
    finch_peft_free(p);
    finch_model_free(m);
    char out[400];
    snprintf(out, sizeof out, "%s/bitfit", tmp);
    train("tiny_gpt2.gguf", "bitfit", out);
}

/* A run of method on the GGUF, then: the adapter merged into the GGUF gives the logits of
 * the base with the adapter attached (attn_qkv rows from the q, k, v parts; BitFit's
 * LayerNorm biases too); full fine-tuning's model.gguf and transformers folder give the
 * tuned model's logits. */
static void merge_check(const char *method, int run_no) {
    char out[400], merged[500];
    snprintf(out, sizeof out, "%s/merge%d", tmp, run_no);
    train("tiny_gpt2.gguf", method, out);
    finch_model *m = load("tiny_gpt2.gguf");
    json_t *seq = json_array_get(json_object_get(manifest, "sequences"), 2);
    int n;
    int32_t *ids = seq_ids(seq, &n);
    const int V = (int)num(manifest, "n_vocab");
    finch_err err;
    float *base = run_in(m, ids, n, V, FINCH_NUMERICS_EXACT), *with;
    finch_model *mm;
    if (!strcmp(method, "full")) {
        snprintf(merged, sizeof merged, "%s/model.gguf", out);
        if (finch_model_load(merged, &mm, &err)) fail_msg("%s", err.msg);
        with = run_in(mm, ids, n, V, FINCH_NUMERICS_EXACT);
        /* and as a transformers folder (Conv1D weights [in, out], c_attn fused): the same
         * logits bit for bit */
        finch_model *hf;
        if (finch_model_load(out, &hf, &err)) fail_msg("%s", err.msg);
        assert_string_equal(hf->cfg.arch, "gpt2");
        float *h = run_in(hf, ids, n, V, FINCH_NUMERICS_EXACT);
        assert_memory_equal(h, with, (size_t)n * V * sizeof(float));
        free(h);
        finch_model_free(hf);
    } else {
        finch_adapter *a;
        if (finch_adapter_load(m, out, &a, &err)) fail_msg("%s", err.msg);
        if (finch_adapter_attach(m, a, 1.0f, &err)) fail_msg("%s", err.msg);
        with = run_in(m, ids, n, V, FINCH_NUMERICS_EXACT);
        finch_adapter_detach(m, a);
        if (!strcmp(method, "lora")) {
            /* llama.cpp's LoRA for gpt2: one attn_qkv adapter per block (lora_b 3 C rows) */
            snprintf(merged, sizeof merged, "%s/lora.gguf", out);
            if (finch_adapter_export_gguf(m, a, merged, &err)) fail_msg("%s", err.msg);
            finch_gguf *g;
            if (finch_gguf_open(merged, &g, &err)) fail_msg("%s", err.msg);
            const finch_gguf_tensor *t = finch_gguf_find_tensor(g, "blk.1.attn_qkv.weight.lora_b");
            assert_non_null(t);
            assert_int_equal(t->ne[1], 192);
            assert_null(finch_gguf_find_tensor(g, "blk.1.attn_q.weight.lora_a"));
            assert_null(finch_gguf_find_tensor(g, "blk.1.attn_v.weight.lora_b"));
            assert_int_equal(finch_gguf_n_tensors(g), 2 * 2); /* c_attn's A and B per block */
            finch_gguf_close(g);
        }
        snprintf(merged, sizeof merged, "%s/merged.gguf", out);
        if (finch_merge(m, &a, NULL, 1, "f32", merged, &err)) fail_msg("%s", err.msg);
        finch_adapter_free(a);
        if (finch_model_load(merged, &mm, &err)) fail_msg("%s", err.msg);
    }
    float *got = run_in(mm, ids, n, V, FINCH_NUMERICS_EXACT);
    size_t at;
    double moved = max_diff(with, base, (size_t)n * V, &at);
    double d = max_diff(got, with, (size_t)n * V, &at);
    printf("  %s: moves logits by %.3f; the merged GGUF vs base + adapter %.2g\n", method, moved,
           d);
    assert_true(moved > 0.05);
    assert_true(d < 1e-4);
    free(base), free(with), free(got), free(ids);
    finch_model_free(mm);
    finch_model_free(m);
}

static void test_merge(void **state) {
    (void)state;
    const char *methods[] = {"lora", "bitfit", "ia3", "dora", "full"};
    for (int i = 0; i < 5; i++) merge_check(methods[i], i);
}

/* The load of path fails with a message holding each of the fragments. */
static void refused(const char *path, const char *const *frags, int n) {
    finch_model *m = NULL;
    finch_err err = {0};
    finch_status st = finch_model_load(path, &m, &err);
    if (st == FINCH_OK) fail_msg("%s loaded", path);
    assert_null(m);
    printf("  refused: %s\n", err.msg);
    for (int i = 0; i < n; i++)
        if (!strstr(err.msg, frags[i])) fail_msg("'%s' lacks '%s'", err.msg, frags[i]);
}

/* A copy of the fixture GGUF without the tensor skip (NULL: none), with key set to v
 * (NULL: none changed). */
static void broken_gguf(const char *out, const char *skip, const char *key, uint32_t v) {
    finch_gguf *g;
    finch_err err;
    if (finch_gguf_open(DIR "tiny_gpt2.gguf", &g, &err)) fail_msg("%s", err.msg);
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    assert_non_null(w);
    assert_int_equal(finch_gguf_set_kvs_from(w, g, key, &err), FINCH_OK);
    if (key) assert_int_equal(finch_gguf_set_u32(w, key, v, &err), FINCH_OK);
    for (int64_t i = 0; i < finch_gguf_n_tensors(g); i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        if (skip && !strcmp(t->name, skip)) continue;
        assert_int_equal(
            finch_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err), FINCH_OK);
    }
    if (finch_gguf_writer_save(w, out, &err)) fail_msg("%s", err.msg);
    finch_gguf_writer_free(w);
    finch_gguf_close(g);
}

/* A copy of the fixture folder whose config.json has field set to the JSON value v. */
static void broken_folder(const char *out, const char *field, const char *v) {
    char cmd[1400], path[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r " DIR "tiny_gpt2 %s", out, out);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/config.json", out);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je), *val = json_loads(v, JSON_DECODE_ANY, &je);
    assert_non_null(j);
    assert_non_null(val);
    json_object_set_new(j, field, val);
    assert_int_equal(json_dump_file(j, path, 0), 0);
    json_decref(j);
}

/* The original GPT-2 checkpoints name tensors as GPT2Model does (wte.weight, h.0.ln_1...,
 * no "transformer." prefix) and carry the attention's mask buffers (h.N.attn.bias,
 * h.N.attn.masked_bias): a copy of the fixture written that way gives the same logits. */
static void test_original_names(void **state) {
    (void)state;
    char dir[600], cmd[1400], path[700];
    snprintf(dir, sizeof dir, "%s/original", tmp);
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r " DIR "tiny_gpt2 %s", dir, dir);
    assert_int_equal(system(cmd), 0);
    finch_st *st;
    finch_err err;
    if (finch_st_open(DIR "tiny_gpt2/model.safetensors", &st, &err)) fail_msg("%s", err.msg);
    finch_st_writer *w = finch_st_writer_new(&err);
    assert_non_null(w);
    assert_int_equal(finch_st_writer_set_meta(w, "format", "pt", &err), FINCH_OK);
    for (int64_t i = 0; i < finch_st_n_tensors(st); i++) {
        const finch_st_tensor *t = finch_st_tensor_at(st, i);
        const char *name = t->name + (strncmp(t->name, "transformer.", 12) ? 0 : 12);
        assert_int_equal(finch_st_writer_add(w, name, t->dtype, t->n_dims, t->shape, t->data, &err),
                         FINCH_OK);
    }
    static float mask[64 * 64], masked = -1e4f;
    const int64_t mshape[4] = {1, 1, 64, 64}, one = 1;
    for (int l = 0; l < 2; l++) {
        char n[64];
        snprintf(n, sizeof n, "h.%d.attn.bias", l);
        assert_int_equal(finch_st_writer_add(w, n, FINCH_ST_F32, 4, mshape, mask, &err), FINCH_OK);
        snprintf(n, sizeof n, "h.%d.attn.masked_bias", l);
        assert_int_equal(finch_st_writer_add(w, n, FINCH_ST_F32, 1, &one, &masked, &err), FINCH_OK);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (finch_st_writer_save(w, path, &err)) fail_msg("%s", err.msg);
    finch_st_writer_free(w);
    finch_st_close(st);
    json_t *seq = json_array_get(json_object_get(manifest, "sequences"), 3);
    int n;
    int32_t *ids = seq_ids(seq, &n);
    const int V = (int)num(manifest, "n_vocab");
    finch_model *a = load("tiny_gpt2"), *b;
    if (finch_model_load(dir, &b, &err)) fail_msg("%s", err.msg);
    float *la = run_in(a, ids, n, V, FINCH_NUMERICS_EXACT),
          *lb = run_in(b, ids, n, V, FINCH_NUMERICS_EXACT);
    assert_memory_equal(la, lb, (size_t)n * V * sizeof(float));
    free(la), free(lb), free(ids);
    finch_model_free(a);
    finch_model_free(b);
}

/* Bad GPT-2 files are refused with a message naming the file and what is wrong. */
static void test_bad_input(void **state) {
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/bad.gguf", tmp);
    broken_gguf(path, "blk.1.attn_qkv.bias", NULL, 0);
    refused(path, (const char *[]){"bad.gguf", "missing tensor 'blk.1.attn_qkv.bias'"}, 2);
    broken_gguf(path, "position_embd.weight", NULL, 0);
    refused(path, (const char *[]){"bad.gguf", "missing tensor 'position_embd.weight'"}, 2);
    broken_gguf(path, "blk.0.ffn_norm.bias", NULL, 0);
    refused(path, (const char *[]){"bad.gguf", "missing tensor 'blk.0.ffn_norm.bias'"}, 2);
    /* positions the file does not hold, and absurd ones */
    broken_gguf(path, NULL, "gpt2.context_length", 1000);
    refused(path, (const char *[]){"bad.gguf", "position_embd.weight", "[64, 1000]"}, 3);
    broken_gguf(path, NULL, "gpt2.context_length", 0xffffffffu);
    refused(path, (const char *[]){"bad.gguf", "gpt2.context_length", "4294967295"}, 3);
    broken_gguf(path, NULL, "gpt2.feed_forward_length", 200);
    refused(path, (const char *[]){"bad.gguf", "blk.0.ffn_up.weight", "[64, 200]"}, 3);
    /* Hugging Face folders */
    snprintf(path, sizeof path, "%s/bad_folder", tmp);
    broken_folder(path, "n_positions", "1000");
    refused(path, (const char *[]){"model.safetensors", "transformer.wpe.weight", "[1000, 64]"}, 3);
    broken_folder(path, "n_positions", "1073741824");
    refused(path, (const char *[]){"config.json", "n_positions", "1073741824"}, 3);
    broken_folder(path, "n_layer", "3");
    refused(path, (const char *[]){"missing tensor 'transformer.h.2.ln_1.weight'"}, 1);
    broken_folder(path, "n_layer", "1");
    refused(path, (const char *[]){"unexpected tensor 'transformer.h.1."}, 1);
    broken_folder(path, "n_head", "5");
    refused(path, (const char *[]){"config.json", "n_head", "does not divide"}, 3);
    broken_folder(path, "activation_function", "\"relu\"");
    refused(path, (const char *[]){"config.json", "activation_function", "relu"}, 3);
    broken_folder(path, "n_inner", "100");
    refused(path, (const char *[]){"transformer.h.0.mlp.c_fc.weight", "[64, 256]", "[64, 100]"}, 3);
    broken_folder(path, "scale_attn_by_inverse_layer_idx", "true");
    refused(path, (const char *[]){"config.json", "scale_attn_by_inverse_layer_idx"}, 2);
    /* past the learned positions: a session is refused, not run off the table */
    finch_model *m = load("tiny_gpt2.gguf");
    finch_session *s;
    finch_err err;
    assert_int_not_equal(finch_session_new(m, 65, FINCH_NUMERICS_EXACT, &s, &err), FINCH_OK);
    printf("  refused: %s\n", err.msg);
    finch_model_free(m);
}

static int setup(void **state) {
    (void)state;
    return model_fixture_setup(DIR "tiny_gpt2.json", &manifest, tmp);
}

static int teardown(void **state) {
    (void)state;
    return model_fixture_teardown(manifest, tmp);
}

int main(void) {
    finch_threads_set(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_logits),
        cmocka_unit_test(test_llamacpp_numerics),
        cmocka_unit_test(test_tokenizer),
        cmocka_unit_test(test_lora_learns),
        cmocka_unit_test(test_peft_adapters),
        cmocka_unit_test(test_bitfit_biases),
        cmocka_unit_test(test_original_names),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_merge),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
