/*
 * test_hf_bad.c: Hugging Face model folders that finch must refuse, each with a clear
 * message. Every case starts from a good folder of tests/fixtures/hf/ copied into a
 * temporary directory, changes one thing (a config.json field, the index, a shard) and
 * asserts the status, that the message names the file, and a fragment saying what is
 * wrong. A few accepted variants (rope_scaling "default", a mistral sliding window, eos
 * as a list) check the decisions documented in io/hf_config.c. Gemma 3 text folders
 * (tests/fixtures/hf_gemma3/) get their own table: layer_types, soft-capping, the score
 * scale, the multimodal model_type, layer counts the weights do not have.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <unistd.h>

#include "finch.h"

#define FIX FINCH_FIXTURES "/hf/"

static char root[256]; /* this run's temporary directory */
static int n_case;

static void copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    if (!in || !out) fail_msg("cannot copy %s to %s", src, dst);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A fresh copy of fixture folder `model` (config.json aside) in *dir; returns its
 * config.json, parsed, for the case to change. */
static json_t *folder(const char *model, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/case%d", root, n_case++);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '" FIX "%s'/*.safetensors* '%s'/", dir, model,
             dir);
    assert_int_equal(system(cmd), 0);
    char path[512];
    snprintf(path, sizeof path, FIX "%s/config.json", model);
    json_error_t e;
    json_t *cfg = json_load_file(path, 0, &e);
    assert_non_null(cfg);
    return cfg;
}

static void save_config(const char *dir, json_t *cfg) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(json_dump_file(cfg, path, JSON_INDENT(1)), 0);
    json_decref(cfg);
}

static void expect(const char *dir, finch_status code, const char *file, const char *fragment) {
    finch_model *m = NULL;
    finch_err err = {0};
    finch_status st = finch_model_load(dir, &m, &err);
    printf("  %s\n", st ? err.msg : "(loaded)");
    if (st != code) fail_msg("%s: status %d, want %d (%s)", dir, st, code, st ? err.msg : "loaded");
    if (!code) {
        finch_model_free(m);
        return;
    }
    assert_null(m);
    if (!strstr(err.msg, file)) fail_msg("message does not name %s: %s", file, err.msg);
    if (!strstr(err.msg, fragment)) fail_msg("message lacks '%s': %s", fragment, err.msg);
}

/* One config.json field set to JSON text (NULL: removed), on folder model; the message
 * must name file. */
static void config_case_in(const char *file, const char *model, const char *field,
                           const char *json_value, finch_status code, const char *fragment) {
    char dir[512];
    json_t *cfg = folder(model, dir, sizeof dir);
    if (json_value) {
        json_error_t e;
        json_t *v = json_loads(json_value, JSON_DECODE_ANY, &e);
        assert_non_null(v);
        json_object_set_new(cfg, field, v);
    } else {
        json_object_del(cfg, field);
    }
    save_config(dir, cfg);
    expect(dir, code, file, fragment);
}

static void config_case(const char *model, const char *field, const char *json_value,
                        finch_status code, const char *fragment) {
    config_case_in("config.json", model, field, json_value, code, fragment);
}

static void test_rope_scaling(void **state) {
    (void)state;
    config_case("tiny_llama", "rope_scaling", "{\"type\": \"yarn\", \"factor\": 4.0}",
                FINCH_E_UNSUPPORTED, "rope_scaling type 'yarn' is not supported");
    config_case("tiny_llama", "rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}",
                FINCH_E_UNSUPPORTED, "rope_scaling type 'linear' is not supported");
    config_case("tiny_qwen2", "rope_scaling", "{\"rope_type\": \"dynamic\", \"factor\": 2.0}",
                FINCH_E_UNSUPPORTED, "rope_scaling type 'dynamic' is not supported");
    config_case("tiny_llama", "rope_scaling",
                "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0}",
                FINCH_E_UNSUPPORTED, "rope_scaling type 'llama3'");
    config_case("tiny_llama", "rope_scaling", "{\"factor\": 2.0}", FINCH_E_FORMAT,
                "has no 'type' or 'rope_type'");
    config_case("tiny_llama", "rope_scaling", "\"linear\"", FINCH_E_FORMAT,
                "must be an object or null");
    config_case("tiny_llama", "rope_parameters", "{\"rope_type\": \"yarn\", \"rope_theta\": 1e4}",
                FINCH_E_UNSUPPORTED, "'yarn' is not supported");
    /* plain RoPE spelled out is fine */
    config_case("tiny_llama", "rope_scaling", "{\"rope_type\": \"default\"}", FINCH_OK, NULL);
}

static void test_missing_and_mistyped_fields(void **state) {
    (void)state;
    const char *required[] = {
        "model_type",          "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "vocab_size",  "rms_norm_eps",      "max_position_embeddings"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        char frag[96];
        snprintf(frag, sizeof frag, "field '%s' is missing", required[i]);
        config_case("tiny_llama", required[i], NULL, FINCH_E_FORMAT, frag);
    }
    config_case("tiny_llama", "hidden_size", "\"64\"", FINCH_E_FORMAT,
                "field 'hidden_size' must be an integer");
    config_case("tiny_llama", "num_hidden_layers", "2.5", FINCH_E_FORMAT,
                "field 'num_hidden_layers' must be an integer");
    config_case("tiny_llama", "rms_norm_eps", "\"1e-5\"", FINCH_E_FORMAT,
                "field 'rms_norm_eps' must be a number");
    config_case("tiny_llama", "tie_word_embeddings", "1", FINCH_E_FORMAT,
                "field 'tie_word_embeddings' must be true or false");
    config_case("tiny_llama", "model_type", "[\"llama\"]", FINCH_E_FORMAT,
                "field 'model_type' must be a string");
    config_case("tiny_llama", "architectures", "\"LlamaForCausalLM\"", FINCH_E_FORMAT,
                "must be a non-empty list of strings");
    config_case("tiny_llama", "eos_token_id", "[2, \"x\"]", FINCH_E_FORMAT,
                "field 'eos_token_id' element 1");
    config_case("tiny_llama", "bos_token_id", "97", FINCH_E_FORMAT,
                "field 'bos_token_id' must be a token id in 0..96");
    config_case("tiny_llama", "eos_token_id", "[2, 0]", FINCH_OK, NULL);
}

static void test_absurd_values(void **state) {
    (void)state;
    config_case("tiny_llama", "num_hidden_layers", "0", FINCH_E_FORMAT,
                "field 'num_hidden_layers' is 0, must be in 1..");
    config_case("tiny_llama", "hidden_size", "-64", FINCH_E_FORMAT, "field 'hidden_size' is -64");
    config_case("tiny_llama", "vocab_size", "4294967393", FINCH_E_FORMAT, "field 'vocab_size' is");
    config_case("tiny_qwen2", "num_attention_heads", "6", FINCH_E_FORMAT,
                "does not divide hidden_size 64");
    config_case("tiny_llama", "num_key_value_heads", "3", FINCH_E_FORMAT,
                "does not divide num_attention_heads 4");
    config_case("tiny_llama", "head_dim", "15", FINCH_E_FORMAT, "RoPE needs it even");
    config_case("tiny_llama", "rms_norm_eps", "0", FINCH_E_FORMAT, "field 'rms_norm_eps' is 0");
    config_case("tiny_llama", "rope_theta", "-1", FINCH_E_FORMAT, "field 'rope_theta' is -1");
}

static void test_unsupported_features(void **state) {
    (void)state;
    config_case("tiny_llama", "model_type", "\"falcon\"", FINCH_E_UNSUPPORTED,
                "'falcon' is not supported");
    /* gpt2 is a family: a LLaMA config calling itself one names the mismatch */
    config_case("tiny_llama", "model_type", "\"gpt2\"", FINCH_E_UNSUPPORTED,
                "'LlamaForCausalLM' is not supported for model_type 'gpt2'");
    config_case("tiny_llama", "architectures", "[\"LlamaForSequenceClassification\"]",
                FINCH_E_UNSUPPORTED, "'LlamaForSequenceClassification' is not supported");
    config_case("tiny_llama", "hidden_act", "\"gelu\"", FINCH_E_UNSUPPORTED, "activation 'gelu'");
    config_case("tiny_llama", "attention_bias", "true", FINCH_E_UNSUPPORTED,
                "field 'attention_bias': true");
    config_case("tiny_llama", "mlp_bias", "true", FINCH_E_UNSUPPORTED, "field 'mlp_bias': true");
    config_case("tiny_llama", "quantization_config", "{\"quant_method\": \"gptq\"}",
                FINCH_E_UNSUPPORTED, "quant_method 'gptq' (finch reads bitsandbytes 4-bit)");
}

/* Sliding windows are accepted and cap the usable context (io/hf_config.c). */
static void test_sliding_window(void **state) {
    (void)state;
    char dir[512];
    json_t *cfg = folder("tiny_llama", dir, sizeof dir);
    json_object_set_new(cfg, "model_type", json_string("mistral"));
    json_object_set_new(cfg, "architectures", json_pack("[s]", "MistralForCausalLM"));
    json_object_set_new(cfg, "sliding_window", json_integer(64));
    save_config(dir, cfg);
    finch_model *m;
    finch_err err;
    if (finch_model_load(dir, &m, &err)) fail_msg("%s", err.msg);
    finch_model_config c;
    finch_model_config_get(m, &c);
    assert_int_equal(c.n_ctx_train, 64);
    assert_string_equal(c.arch, "llama");
    finch_model_free(m);

    cfg = folder("tiny_qwen2", dir, sizeof dir);
    json_object_set_new(cfg, "use_sliding_window", json_true());
    json_object_set_new(cfg, "sliding_window", json_integer(32));
    save_config(dir, cfg);
    if (finch_model_load(dir, &m, &err)) fail_msg("%s", err.msg);
    finch_model_config_get(m, &c);
    assert_int_equal(c.n_ctx_train, 32);
    finch_model_free(m);
    config_case("tiny_qwen2", "use_sliding_window", "\"yes\"", FINCH_E_FORMAT,
                "field 'use_sliding_window' must be true or false");
}

static void test_shapes_and_tensors(void **state) {
    (void)state;
    config_case_in("model-00001-of-00003.safetensors", "tiny_llama", "intermediate_size", "128",
                   FINCH_E_FORMAT,
                   "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [96, 64], expected "
                   "[128, 64] (from config.json)");
    config_case_in("model-00001-of-00003.safetensors", "tiny_llama", "vocab_size", "98",
                   FINCH_E_FORMAT,
                   "tensor 'model.embed_tokens.weight' has shape [97, 64], expected [98, 64]");
    config_case_in("model.safetensors.index.json", "tiny_llama", "num_hidden_layers", "3",
                   FINCH_E_FORMAT, "missing tensor 'model.layers.2.input_layernorm.weight'");
    config_case_in(".safetensors", "tiny_llama", "num_hidden_layers", "1", FINCH_E_FORMAT,
                   "unexpected tensor 'model.layers.1.");
    config_case_in(".safetensors", "tiny_llama", "tie_word_embeddings", "true", FINCH_E_FORMAT,
                   "unexpected tensor 'lm_head.weight'");
    config_case_in("model.safetensors", "tiny_llama_tied", "tie_word_embeddings", "false",
                   FINCH_E_FORMAT, "missing tensor 'lm_head.weight'");
    /* qwen2 weights read as llama: its biases are not expected */
    config_case("tiny_qwen2", "model_type", "\"llama\"", FINCH_E_UNSUPPORTED,
                "'Qwen2ForCausalLM' is not supported for model_type 'llama'");
    char dir[512];
    json_t *cfg = folder("tiny_qwen2", dir, sizeof dir);
    json_object_set_new(cfg, "model_type", json_string("llama"));
    json_object_del(cfg, "architectures");
    save_config(dir, cfg);
    expect(dir, FINCH_E_FORMAT, "model.safetensors",
           "unexpected tensor 'model.layers.0.self_attn.");
}

static void test_shards_and_index(void **state) {
    (void)state;
    char dir[512], path[600];
    /* a shard the index names is gone */
    save_config(dir, folder("tiny_llama", dir, sizeof dir));
    snprintf(path, sizeof path, "%s/model-00002-of-00003.safetensors", dir);
    assert_int_equal(unlink(path), 0);
    expect(dir, FINCH_E_IO, "model.safetensors.index.json",
           "weight_map names shard 'model-00002-of-00003.safetensors', which is not a file");

    /* the index puts a tensor in a file that does not hold it */
    save_config(dir, folder("tiny_llama", dir, sizeof dir));
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t e;
    json_t *ix = json_load_file(path, 0, &e);
    assert_non_null(ix);
    json_t *map = json_object_get(ix, "weight_map");
    json_object_set_new(
        map, "model.norm.weight",
        json_string(strcmp(json_string_value(json_object_get(map, "model.norm.weight")),
                           "model-00001-of-00003.safetensors")
                        ? "model-00001-of-00003.safetensors"
                        : "model-00002-of-00003.safetensors"));
    assert_int_equal(json_dump_file(ix, path, 0), 0);
    expect(dir, FINCH_E_FORMAT, "model.safetensors.index.json",
           "weight_map puts tensor 'model.norm.weight' in");
    /* ... or names a file that does not exist */
    json_object_set_new(map, "model.norm.weight", json_string("model-00009-of-00009.safetensors"));
    assert_int_equal(json_dump_file(ix, path, 0), 0);
    expect(dir, FINCH_E_IO, "model.safetensors.index.json",
           "'model-00009-of-00009.safetensors', which is not a file");
    /* ... or a path outside the folder */
    json_object_set_new(map, "model.norm.weight", json_string("../config.json"));
    assert_int_equal(json_dump_file(ix, path, 0), 0);
    expect(dir, FINCH_E_FORMAT, "model.safetensors.index.json", "is not a plain file name");
    /* ... or leaves a tensor of a shard out */
    json_object_del(map, "model.norm.weight");
    assert_int_equal(json_dump_file(ix, path, 0), 0);
    expect(dir, FINCH_E_FORMAT, "model.safetensors.index.json",
           "missing tensor 'model.norm.weight' (not in weight_map)");
    json_object_set_new(ix, "weight_map", json_array());
    assert_int_equal(json_dump_file(ix, path, 0), 0);
    expect(dir, FINCH_E_FORMAT, "model.safetensors.index.json",
           "field 'weight_map' must be an object");
    json_decref(ix);
    write_text(path, "{\"weight_map\": {\"a\": \"x\", ");
    expect(dir, FINCH_E_FORMAT, "model.safetensors.index.json:1:", "invalid JSON");

    /* no weights, no config, broken config, a truncated shard */
    save_config(dir, folder("tiny_llama", dir, sizeof dir));
    snprintf(path, sizeof path, "rm '%s'/*.safetensors*", dir);
    assert_int_equal(system(path), 0);
    expect(dir, FINCH_E_IO, dir, "neither model.safetensors nor model.safetensors.index.json");
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(unlink(path), 0);
    expect(dir, FINCH_E_IO, dir, "is a directory without config.json");
    write_text(path, "{\"model_type\": \"llama\",\n \"hidden_size\": }");
    expect(dir, FINCH_E_FORMAT, "config.json:2:", "invalid JSON");
    write_text(path, "[1, 2]");
    expect(dir, FINCH_E_FORMAT, "config.json", "not a JSON object");

    save_config(dir, folder("tiny_qwen2", dir, sizeof dir));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(truncate(path, 1000), 0);
    expect(dir, FINCH_E_FORMAT, "model.safetensors", "offset");
    copy_file(FIX "tiny_llama_tied/model.safetensors", path);
    expect(dir, FINCH_E_FORMAT, "model.safetensors",
           "missing tensor 'model.layers.0.self_attn.q_proj.bias'");
}

/* Every proper prefix of a good config.json and index file is refused as invalid JSON. */
static void test_truncated_json(void **state) {
    (void)state;
    char dir[512], path[600];
    save_config(dir, folder("tiny_llama", dir, sizeof dir));
    const char *names[] = {"config.json", "model.safetensors.index.json"};
    for (int f = 0; f < 2; f++) {
        char src[512];
        snprintf(src, sizeof src, FIX "tiny_llama/%s", names[f]);
        snprintf(path, sizeof path, "%s/%s", dir, names[f]);
        FILE *in = fopen(src, "rb");
        assert_non_null(in);
        static char text[8192];
        size_t n = fread(text, 1, sizeof text - 1, in);
        fclose(in);
        while (n && (text[n - 1] == '\n' || text[n - 1] == ' ')) n--;
        for (size_t len = 0; len < n; len++) {
            FILE *out = fopen(path, "wb");
            assert_non_null(out);
            assert_int_equal(fwrite(text, 1, len, out), len);
            fclose(out);
            finch_model *m = NULL;
            finch_err err = {0};
            assert_int_equal(finch_model_load(dir, &m, &err), FINCH_E_FORMAT);
            if (!strstr(err.msg, names[f]) || !strstr(err.msg, "invalid JSON"))
                fail_msg("%s cut at %zu: %s", names[f], len, err.msg);
        }
        copy_file(src, path);
    }
}

/* Gemma 3 text folders (tests/fixtures/hf_gemma3/, saved by transformers): what finch
 * cannot compute is refused by name, and so is a config.json that does not describe the
 * weights. */
#define G3 "../hf_gemma3/tiny_gemma3_f32"
#define G3_BF16 "../hf_gemma3/tiny_gemma3_bf16"

/* folder G3 with two fields set (JSON text; NULL: removed) */
static void gemma3_case2(const char *model, const char *file, const char *f1, const char *v1,
                         const char *f2, const char *v2, finch_status code, const char *fragment) {
    char dir[512];
    json_t *cfg = folder(model, dir, sizeof dir);
    const char *fs[2] = {f1, f2}, *vs[2] = {v1, v2};
    for (int i = 0; i < 2; i++) {
        if (!vs[i]) {
            json_object_del(cfg, fs[i]);
            continue;
        }
        json_error_t e;
        json_t *v = json_loads(vs[i], JSON_DECODE_ANY, &e);
        assert_non_null(v);
        json_object_set_new(cfg, fs[i], v);
    }
    save_config(dir, cfg);
    expect(dir, code, file, fragment);
}

static void test_gemma3_text(void **state) {
    (void)state;
    const char *required[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads", "vocab_size"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        char frag[96];
        snprintf(frag, sizeof frag, "field '%s' is missing", required[i]);
        config_case(G3, required[i], NULL, FINCH_E_FORMAT, frag);
    }
    /* the multimodal model and other heads */
    config_case(G3, "model_type", "\"gemma3\"", FINCH_E_UNSUPPORTED,
                "'gemma3' is the multimodal Gemma3ForConditionalGeneration");
    config_case(G3, "architectures", "[\"Gemma3ForSequenceClassification\"]", FINCH_E_UNSUPPORTED,
                "'Gemma3ForSequenceClassification' is not supported for model_type "
                "'gemma3_text'");
    /* layer_types */
    config_case(G3, "layer_types", "[\"sliding_attention\", \"full_attention\", \"chunked\"]",
                FINCH_E_FORMAT, "field 'layer_types' entry 2 is 'chunked'; expected");
    config_case(G3, "layer_types", "[\"sliding_attention\", 1, \"full_attention\"]", FINCH_E_FORMAT,
                "field 'layer_types' entry 1 is not a string");
    config_case(G3, "layer_types", "[\"sliding_attention\", \"full_attention\"]", FINCH_E_FORMAT,
                "field 'layer_types' has 2 entries but num_hidden_layers is 3");
    config_case(G3, "layer_types", "\"sliding_attention\"", FINCH_E_FORMAT,
                "field 'layer_types' must be a list of strings");
    config_case(G3, "num_hidden_layers", "4", FINCH_E_FORMAT,
                "field 'layer_types' has 3 entries but num_hidden_layers is 4");
    gemma3_case2(G3, "config.json", "layer_types", NULL, "sliding_window_pattern", "0",
                 FINCH_E_FORMAT, "field 'sliding_window_pattern' is 0, must be in 1..");
    /* a layer count the weights do not have */
    gemma3_case2(G3, "model.safetensors", "layer_types", NULL, "num_hidden_layers", "4",
                 FINCH_E_FORMAT, "missing tensor 'model.layers.3.input_layernorm.weight'");
    gemma3_case2(G3_BF16, "model.safetensors.index.json", "num_hidden_layers", "4",
                 "sliding_window_pattern", "2", FINCH_E_FORMAT,
                 "missing tensor 'model.layers.3.input_layernorm.weight' (not in weight_map)");
    gemma3_case2(G3, "model.safetensors", "layer_types", NULL, "num_hidden_layers", "2",
                 FINCH_E_FORMAT, "unexpected tensor 'model.layers.2.");
    /* shapes and the head */
    config_case_in("model.safetensors", G3, "intermediate_size", "64", FINCH_E_FORMAT,
                   "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [32, 32], expected "
                   "[64, 32] (from config.json)");
    config_case_in("model.safetensors", G3, "tie_word_embeddings", "false", FINCH_E_FORMAT,
                   "missing tensor 'lm_head.weight'");
    /* absent, tie_word_embeddings is Gemma3TextConfig's default, true */
    config_case_in(".safetensors", G3_BF16, "tie_word_embeddings", NULL, FINCH_E_FORMAT,
                   "unexpected tensor 'lm_head.weight'");
    gemma3_case2(G3, "model.safetensors", "num_attention_heads", "4", "num_key_value_heads", "2",
                 FINCH_E_FORMAT,
                 "tensor 'model.layers.0.self_attn.q_proj.weight' has shape [32, 32], expected "
                 "[64, 32]");
    /* what finch does not compute */
    config_case(G3, "query_pre_attn_scalar", "256", FINCH_E_UNSUPPORTED,
                "field 'query_pre_attn_scalar': 256 (scores scaled by its inverse square root; "
                "finch scales by head_dim 16's)");
    config_case(G3, "final_logit_softcapping", "30.0", FINCH_E_UNSUPPORTED,
                "field 'final_logit_softcapping': 30 (finch has no logit soft-capping");
    config_case(G3, "attn_logit_softcapping", "50", FINCH_E_UNSUPPORTED,
                "field 'attn_logit_softcapping': 50");
    config_case(G3, "attn_logit_softcapping", "\"50\"", FINCH_E_FORMAT,
                "field 'attn_logit_softcapping' must be a number or null");
    config_case(G3, "rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 8.0}",
                FINCH_E_UNSUPPORTED, "rope_scaling type 'linear' is not supported");
    config_case(G3, "rope_parameters",
                "{\"full_attention\": {\"rope_type\": \"default\", \"rope_theta\": 1e6}, "
                "\"sliding_attention\": {\"rope_type\": \"linear\", \"factor\": 2}}",
                FINCH_E_UNSUPPORTED, "rope_parameters: field 'sliding_attention'");
    config_case(G3, "rope_local_base_freq", "20000", FINCH_E_UNSUPPORTED,
                "field 'rope_local_base_freq': 20000 is not supported");
    config_case(G3, "hidden_activation", "\"gelu\"", FINCH_E_UNSUPPORTED,
                "field 'hidden_activation': activation 'gelu'");
    config_case(G3, "attention_bias", "true", FINCH_E_UNSUPPORTED, "field 'attention_bias': true");
    config_case(G3, "use_bidirectional_attention", "true", FINCH_E_UNSUPPORTED,
                "field 'use_bidirectional_attention': true");
    config_case(G3, "quantization_config", "{\"quant_method\": \"bitsandbytes\"}",
                FINCH_E_UNSUPPORTED, "a quantized gemma3_text checkpoint");
    config_case(G3, "sliding_window", "0", FINCH_E_FORMAT, "field 'sliding_window' is 0");
    config_case(G3, "head_dim", "\"16\"", FINCH_E_FORMAT, "field 'head_dim' must be an integer");
    /* accepted: the other tanh GELU name, transformers v5's rope_parameters per layer kind,
     * hidden_act (Gemma3TextConfig reads hidden_activation) */
    config_case(G3, "hidden_activation", "\"gelu_new\"", FINCH_OK, NULL);
    config_case(G3, "rope_parameters",
                "{\"full_attention\": {\"rope_type\": \"default\", \"rope_theta\": 1e6}, "
                "\"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 1e4}}",
                FINCH_OK, NULL);
    config_case(G3, "hidden_act", "\"gelu_pytorch_tanh\"", FINCH_OK, NULL);
}

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "/tmp/finch_hf_bad_XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_scaling),     cmocka_unit_test(test_missing_and_mistyped_fields),
        cmocka_unit_test(test_absurd_values),    cmocka_unit_test(test_unsupported_features),
        cmocka_unit_test(test_sliding_window),   cmocka_unit_test(test_shapes_and_tensors),
        cmocka_unit_test(test_shards_and_index), cmocka_unit_test(test_truncated_json),
        cmocka_unit_test(test_gemma3_text),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
