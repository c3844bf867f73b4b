/*
 * hf_config.c: the JSON files of a Hugging Face model folder: config.json (the LLaMA-family
 * hyperparameters, FORMATS.md 2.4, GPT-2's, read_gpt2, and Gemma 3's text model, read_gemma3,
 * from transformers' Gemma3TextConfig) and model.safetensors.index.json (the weight_map of a
 * sharded checkpoint).
 *
 * config.json is read strictly: every field finch uses is type-checked and range-checked,
 * and every field that would change the computation in a way finch does not implement is
 * refused by name rather than ignored. Fields that do not change the forward pass
 * (initializer_range, pad_token_id, use_cache, pretraining_tp, attention_dropout, ...)
 * are ignored.
 *
 * Sliding windows (mistral's sliding_window, qwen2's use_sliding_window): attention
 * restricted to the last W positions equals plain causal attention while a sequence is
 * at most W long, so finch accepts them and caps the model's usable context at W. Gemma 3
 * runs its windows (layer_types says which blocks slide), so its context is not capped.
 */
#include "io/io.h"

#include <jansson.h>
#include <stdlib.h>

/* Limits far above any real model, so absurd values fail before anything is sized. */
#define MAX_LAYERS 1024
#define MAX_EMBD 65536
#define MAX_FF (1 << 20)
#define MAX_HEADS 1024
#define MAX_VOCAB (1 << 24)
#define MAX_CTX (1 << 24)

typedef struct {
    const char *path;
    const json_t *root;
    finch_err *err;
} reader;

static finch_status bad(reader *R, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static finch_status bad(reader *R, const char *field, const char *fmt, ...) {
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return finch_err_set(R->err, FINCH_E_FORMAT, "%s: field '%s' %s", R->path, field, what);
}

static finch_status unsupported(reader *R, const char *field, const char *what) {
    return finch_err_set(R->err, FINCH_E_UNSUPPORTED, "%s: field '%s': %s is not supported",
                         R->path, field, what);
}

/* The field, or NULL when it is absent or JSON null. */
static const json_t *get(reader *R, const char *field) {
    const json_t *v = json_object_get(R->root, field);
    return json_is_null(v) ? NULL : v;
}

/* An integer field in lo..hi; when absent (or null) it is an error if required, else *out
 * keeps its default. */
static finch_status get_int(reader *R, const char *field, bool required, int lo, int hi, int *out) {
    const json_t *v = get(R, field);
    if (!v) return required ? bad(R, field, "is missing") : FINCH_OK;
    if (!json_is_integer(v)) return bad(R, field, "must be an integer");
    json_int_t i = json_integer_value(v);
    if (i < lo || i > hi) return bad(R, field, "is %lld, must be in %d..%d", (long long)i, lo, hi);
    *out = (int)i;
    return FINCH_OK;
}

/* A number field (integer or real), finite and in (lo, hi), and not rounded to lo as a
 * float (a tiny epsilon must not become 0). */
static finch_status get_num(reader *R, const char *field, bool required, double lo, double hi,
                            float *out) {
    const json_t *v = get(R, field);
    if (!v) return required ? bad(R, field, "is missing") : FINCH_OK;
    if (!json_is_number(v)) return bad(R, field, "must be a number");
    double d = json_number_value(v);
    if (!(d > lo && d < hi) || !((float)d > lo))
        return bad(R, field, "is %g, must be in (%g, %g)", d, lo, hi);
    *out = (float)d;
    return FINCH_OK;
}

static finch_status get_bool(reader *R, const char *field, bool *out) {
    const json_t *v = get(R, field);
    if (!v) return FINCH_OK;
    if (!json_is_boolean(v)) return bad(R, field, "must be true or false");
    *out = json_is_true(v);
    return FINCH_OK;
}

/* A string field copied into out (cap bytes); absent leaves out as it is. */
/* quantization_config: bitsandbytes' 4-bit NF4 (its projections stored as Linear4bit's
 * state dict, FORMATS.md 2.2) is read as it is; every other scheme is refused by name. */
static finch_status read_quantization(reader *R, finch_hf_config *c) {
    const json_t *q = get(R, "quantization_config");
    if (!q || json_is_null(q)) return FINCH_OK;
    if (!json_is_object(q)) return bad(R, "quantization_config", "must be an object");
    const json_t *method = json_object_get(q, "quant_method");
    const char *m = json_is_string(method) ? json_string_value(method) : NULL;
    if (!m) return bad(R, "quantization_config", "has no string 'quant_method'");
    if (strcmp(m, "bitsandbytes") != 0) {
        char what[96];
        snprintf(what, sizeof what, "quant_method '%.40s' (finch reads bitsandbytes 4-bit)", m);
        return unsupported(R, "quantization_config", what);
    }
    const json_t *b4 = json_object_get(q, "load_in_4bit"), *b8 = json_object_get(q, "load_in_8bit");
    if (json_is_true(b8) || !json_is_true(b4))
        return unsupported(R, "quantization_config",
                           "bitsandbytes 8-bit (finch reads load_in_4bit checkpoints)");
    const json_t *qt = json_object_get(q, "bnb_4bit_quant_type");
    const char *t = json_is_string(qt) ? json_string_value(qt) : "fp4"; /* transformers' default */
    if (strcmp(t, "nf4") != 0) {
        char what[96];
        snprintf(what, sizeof what, "bnb_4bit_quant_type '%.40s' (finch reads nf4)", t);
        return unsupported(R, "quantization_config", what);
    }
    const json_t *st = json_object_get(q, "bnb_4bit_quant_storage");
    if (st && !json_is_null(st) && (!json_is_string(st) || strcmp(json_string_value(st), "uint8")))
        return unsupported(R, "quantization_config",
                           "bnb_4bit_quant_storage other than uint8 (codes packed in floats)");
    c->bnb_nf4 = true;
    return FINCH_OK;
}

static finch_status get_str(reader *R, const char *field, bool required, char *out, size_t cap) {
    const json_t *v = get(R, field);
    if (!v) return required ? bad(R, field, "is missing") : FINCH_OK;
    if (!json_is_string(v)) return bad(R, field, "must be a string");
    const char *s = json_string_value(v);
    if (strlen(s) >= cap) return bad(R, field, "'%.40s...' is too long", s);
    memcpy(out, s, strlen(s) + 1);
    return FINCH_OK;
}

/* bos_token_id / eos_token_id: an id, a list of ids (the first is kept), or null. */
static finch_status get_token(reader *R, const char *field, int n_vocab, int *out) {
    const json_t *v = get(R, field);
    *out = -1;
    if (!v) return FINCH_OK;
    if (json_is_array(v)) {
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) >= n_vocab)
                return bad(R, field, "element %zu must be a token id in 0..%d", i, n_vocab - 1);
        }
        if (json_array_size(v) == 0) return FINCH_OK;
        v = json_array_get(v, 0);
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= n_vocab)
        return bad(R, field, "must be a token id in 0..%d (or a list of them)", n_vocab - 1);
    *out = (int)json_integer_value(v);
    return FINCH_OK;
}

/* rope_scaling (and transformers v5's rope_parameters): only null or the "default" kind,
 * which is plain RoPE. rope_parameters may carry rope_theta. */
static finch_status check_rope(reader *R, const char *field, float *theta) {
    const json_t *v = get(R, field);
    if (!v) return FINCH_OK;
    if (!json_is_object(v)) return bad(R, field, "must be an object or null");
    const json_t *kind = json_object_get(v, "rope_type");
    if (!kind) kind = json_object_get(v, "type");
    if (kind && !json_is_string(kind)) return bad(R, field, "has a rope_type that is not a string");
    if (kind && strcmp(json_string_value(kind), "default") != 0)
        return finch_err_set(R->err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s': rope_scaling type '%.40s' is not supported (finch "
                             "implements plain RoPE only)",
                             R->path, field, json_string_value(kind));
    if (!kind && strcmp(field, "rope_scaling") == 0)
        return bad(R, field, "has no 'type' or 'rope_type'");
    const json_t *t = json_object_get(v, "rope_theta");
    if (t) {
        if (!json_is_number(t) || !(json_number_value(t) > 1 && json_number_value(t) < 1e12))
            return bad(R, field, "has a rope_theta that is not a number > 1");
        *theta = (float)json_number_value(t);
    }
    return FINCH_OK;
}

/* GPT-2's config.json (transformers' GPT2Config): its own field names (n_embd, n_layer,
 * n_head, n_positions, n_inner (null: 4 n_embd), layer_norm_epsilon), gelu_new, biases on
 * every linear, the head tied to the embeddings. Settings that change the computation and
 * that finch does not implement are refused by name. */
static finch_status read_gpt2(reader *R, finch_hf_config *c) {
    finch_status st;
    const json_t *archs = get(R, "architectures");
    if (archs) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 ||
            !json_is_string(json_array_get(archs, 0)))
            return bad(R, "architectures", "must be a non-empty list of strings");
        const char *a = json_string_value(json_array_get(archs, 0));
        if (strcmp(a, "GPT2LMHeadModel") != 0 && strcmp(a, "GPT2Model") != 0)
            return finch_err_set(R->err, FINCH_E_UNSUPPORTED,
                                 "%s: field 'architectures': '%.60s' is not supported for "
                                 "model_type 'gpt2' (finch runs GPT2LMHeadModel)",
                                 R->path, a);
        snprintf(c->architecture, sizeof c->architecture, "%s", a);
    }
    if (get(R, "quantization_config"))
        return unsupported(R, "quantization_config", "a quantized checkpoint");
    if ((st = get_int(R, "n_embd", true, 1, MAX_EMBD, &c->hidden_size)) ||
        (st = get_int(R, "n_layer", true, 1, MAX_LAYERS, &c->num_hidden_layers)) ||
        (st = get_int(R, "n_head", true, 1, MAX_HEADS, &c->num_attention_heads)) ||
        (st = get_int(R, "vocab_size", true, 1, MAX_VOCAB, &c->vocab_size)) ||
        (st = get_int(R, "n_positions", true, 1, MAX_CTX, &c->max_position_embeddings)))
        return st;
    c->intermediate_size = 0;
    if ((st = get_int(R, "n_inner", false, 1, MAX_FF, &c->intermediate_size))) return st;
    if (!c->intermediate_size) {
        if (c->hidden_size > MAX_FF / 4)
            return bad(R, "n_embd", "is %d: 4 n_embd exceeds %d", c->hidden_size, MAX_FF);
        c->intermediate_size = 4 * c->hidden_size;
    }
    const int H = c->num_attention_heads;
    if (c->hidden_size % H)
        return bad(R, "n_head", "is %d, which does not divide n_embd %d", H, c->hidden_size);
    c->num_key_value_heads = H;
    c->head_dim = c->hidden_size / H;
    c->rope_theta = 10000.0f; /* unused: GPT-2's positions are learned */
    c->rms_norm_eps = 1e-5f;
    if ((st = get_num(R, "layer_norm_epsilon", false, 0, 1, &c->rms_norm_eps))) return st;
    char act[32] = "gelu_new";
    if ((st = get_str(R, "activation_function", false, act, sizeof act))) return st;
    if (strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0) {
        char what[96];
        snprintf(what, sizeof what, "activation '%.31s' (finch implements gelu_new)", act);
        return unsupported(R, "activation_function", what);
    }
    bool flag = false;
    if ((st = get_bool(R, "scale_attn_by_inverse_layer_idx", &flag))) return st;
    if (flag) return unsupported(R, "scale_attn_by_inverse_layer_idx", "true");
    /* reorder_and_upcast_attn computes the same scores in f32, as finch does: accepted */
    flag = true;
    if ((st = get_bool(R, "scale_attn_weights", &flag))) return st;
    if (!flag) return unsupported(R, "scale_attn_weights", "false");
    c->tie_word_embeddings = true;
    if ((st = get_bool(R, "tie_word_embeddings", &c->tie_word_embeddings))) return st;
    c->qkv_bias = true;
    c->context = c->max_position_embeddings;
    if ((st = get_token(R, "bos_token_id", c->vocab_size, &c->bos_token_id)) ||
        (st = get_token(R, "eos_token_id", c->vocab_size, &c->eos_token_id)))
        return st;
    const char *dt_field = get(R, "torch_dtype") ? "torch_dtype" : "dtype";
    return get_str(R, dt_field, false, c->torch_dtype, sizeof c->torch_dtype);
}

/* The "architectures" field, when present: its first entry must be want. */
static finch_status check_architecture(reader *R, finch_hf_config *c, const char *want) {
    const json_t *archs = get(R, "architectures");
    if (!archs) return FINCH_OK;
    if (!json_is_array(archs) || json_array_size(archs) == 0 ||
        !json_is_string(json_array_get(archs, 0)))
        return bad(R, "architectures", "must be a non-empty list of strings");
    const char *a = json_string_value(json_array_get(archs, 0));
    if (strcmp(a, want) != 0)
        return finch_err_set(R->err, FINCH_E_UNSUPPORTED,
                             "%s: field 'architectures': '%.60s' is not supported for "
                             "model_type '%s' (finch runs %s)",
                             R->path, a, c->model_type, want);
    snprintf(c->architecture, sizeof c->architecture, "%s", a);
    return FINCH_OK;
}

/* A soft-capping field: finch has none, so only absent or null is accepted. */
static finch_status check_no_softcap(reader *R, const char *field) {
    const json_t *v = get(R, field);
    if (!v) return FINCH_OK;
    if (!json_is_number(v)) return bad(R, field, "must be a number or null");
    char what[96];
    snprintf(what, sizeof what, "%g (finch has no logit soft-capping; only null)",
             json_number_value(v));
    return unsupported(R, field, what);
}

/* Which blocks slide: layer_types, one "sliding_attention" or "full_attention" per block,
 * or else the older sliding_window_pattern p (transformers' default 6), under which block
 * l slides unless (l + 1) % p == 0. */
static finch_status read_layer_types(reader *R, finch_hf_config *c) {
    const int n = c->num_hidden_layers;
    const json_t *types = get(R, "layer_types");
    if (types) {
        if (!json_is_array(types)) return bad(R, "layer_types", "must be a list of strings");
        if (json_array_size(types) != (size_t)n)
            return bad(R, "layer_types", "has %zu entries but num_hidden_layers is %d",
                       json_array_size(types), n);
        for (int l = 0; l < n; l++) {
            const json_t *t = json_array_get(types, (size_t)l);
            const char *s = json_is_string(t) ? json_string_value(t) : NULL;
            if (s && !strcmp(s, "sliding_attention"))
                c->layer_sliding[l] = true;
            else if (!s || strcmp(s, "full_attention") != 0)
                return bad(R, "layer_types",
                           "entry %d is %s%.40s%s; expected \"sliding_attention\" or "
                           "\"full_attention\"",
                           l, s ? "'" : "not a string", s ? s : "", s ? "'" : "");
        }
        return FINCH_OK;
    }
    int p = 6;
    finch_status st = get_int(R, "sliding_window_pattern", false, 1, MAX_LAYERS, &p);
    if (st) return st;
    for (int l = 0; l < n; l++) c->layer_sliding[l] = (l + 1) % p != 0;
    return FINCH_OK;
}

/* transformers v5's rope_parameters for Gemma 3: one object per layer kind, each plain
 * RoPE with its own rope_theta; or one object for both (check_rope). */
static finch_status read_gemma3_rope(reader *R, finch_hf_config *c) {
    const json_t *v = get(R, "rope_parameters");
    if (!json_is_object(v) || !json_object_get(v, "full_attention"))
        return check_rope(R, "rope_parameters", &c->rope_theta);
    static const char *const kinds[2] = {"full_attention", "sliding_attention"};
    float *theta[2] = {&c->rope_theta, &c->rope_local_base_freq};
    for (int k = 0; k < 2; k++) {
        const json_t *o = json_object_get(v, kinds[k]);
        if (!o) continue;
        char where[600];
        snprintf(where, sizeof where, "%.500s: rope_parameters", R->path);
        reader sub = {where, v, R->err};
        finch_status st = check_rope(&sub, kinds[k], theta[k]);
        if (st) return st;
    }
    return FINCH_OK;
}

/* Gemma 3's text model (transformers' Gemma3TextConfig, model_type gemma3_text,
 * Gemma3ForCausalLM): fields absent from the file take Gemma3TextConfig's defaults
 * (save_pretrained leaves out a value equal to PretrainedConfig's, tie_word_embeddings
 * true for one), except the five sizes, which every saved config holds. The score scale
 * query_pre_attn_scalar^-0.5 must be head_dim's, as finch's attention computes; logit
 * soft-capping, rope scaling, attention biases and bidirectional attention are refused by
 * name. hidden_act is not read: Gemma3TextConfig reads hidden_activation. */
static finch_status read_gemma3(reader *R, finch_hf_config *c) {
    finch_status st;
    if ((st = check_architecture(R, c, "Gemma3ForCausalLM"))) return st;
    if (get(R, "quantization_config"))
        return unsupported(R, "quantization_config", "a quantized gemma3_text checkpoint");
    if ((st = get_int(R, "hidden_size", true, 1, MAX_EMBD, &c->hidden_size)) ||
        (st = get_int(R, "intermediate_size", true, 1, MAX_FF, &c->intermediate_size)) ||
        (st = get_int(R, "num_hidden_layers", true, 1, MAX_LAYERS, &c->num_hidden_layers)) ||
        (st = get_int(R, "num_attention_heads", true, 1, MAX_HEADS, &c->num_attention_heads)) ||
        (st = get_int(R, "vocab_size", true, 1, MAX_VOCAB, &c->vocab_size)))
        return st;
    c->num_key_value_heads = 4;
    c->head_dim = 256;
    c->max_position_embeddings = 131072;
    if ((st = get_int(R, "num_key_value_heads", false, 1, MAX_HEADS, &c->num_key_value_heads)) ||
        (st = get_int(R, "head_dim", false, 2, MAX_EMBD, &c->head_dim)) ||
        (st =
             get_int(R, "max_position_embeddings", false, 1, MAX_CTX, &c->max_position_embeddings)))
        return st;
    const int H = c->num_attention_heads;
    if (H % c->num_key_value_heads)
        return bad(R, "num_key_value_heads", "is %d, which does not divide num_attention_heads %d",
                   c->num_key_value_heads, H);
    if (c->head_dim % 2) return bad(R, "head_dim", "is %d; RoPE needs it even", c->head_dim);
    float scalar = 256.0f;
    if ((st = get_num(R, "query_pre_attn_scalar", false, 0, 1e9, &scalar))) return st;
    if (scalar != (float)c->head_dim) {
        char what[128];
        snprintf(what, sizeof what,
                 "%g (scores scaled by its inverse square root; finch scales by head_dim %d's)",
                 scalar, c->head_dim);
        return unsupported(R, "query_pre_attn_scalar", what);
    }
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 1e6f;
    c->rope_local_base_freq = 1e4f;
    c->sliding_window = 4096;
    if ((st = get_num(R, "rms_norm_eps", false, 0, 1, &c->rms_norm_eps)) ||
        (st = get_num(R, "rope_theta", false, 1, 1e12, &c->rope_theta)) ||
        (st = get_num(R, "rope_local_base_freq", false, 1, 1e12, &c->rope_local_base_freq)) ||
        (st = check_rope(R, "rope_scaling", &c->rope_theta)) || (st = read_gemma3_rope(R, c)) ||
        (st = get_int(R, "sliding_window", false, 1, MAX_CTX, &c->sliding_window)) ||
        (st = read_layer_types(R, c)))
        return st;
    char act[32] = "gelu_pytorch_tanh";
    if ((st = get_str(R, "hidden_activation", false, act, sizeof act))) return st;
    if (strcmp(act, "gelu_pytorch_tanh") != 0 && strcmp(act, "gelu_new") != 0) {
        char what[96];
        snprintf(what, sizeof what, "activation '%.31s' (finch implements tanh GELU)", act);
        return unsupported(R, "hidden_activation", what);
    }
    if ((st = check_no_softcap(R, "final_logit_softcapping")) ||
        (st = check_no_softcap(R, "attn_logit_softcapping")))
        return st;
    bool flag = false;
    if ((st = get_bool(R, "attention_bias", &flag))) return st;
    if (flag) return unsupported(R, "attention_bias", "true (biases on q/k/v/o projections)");
    if ((st = get_bool(R, "use_bidirectional_attention", &flag))) return st;
    if (flag) return unsupported(R, "use_bidirectional_attention", "true (finch is causal)");
    c->tie_word_embeddings = true;
    if ((st = get_bool(R, "tie_word_embeddings", &c->tie_word_embeddings))) return st;
    /* every block but the sliding ones sees all positions */
    c->context = c->max_position_embeddings;
    if ((st = get_token(R, "bos_token_id", c->vocab_size, &c->bos_token_id)) ||
        (st = get_token(R, "eos_token_id", c->vocab_size, &c->eos_token_id)))
        return st;
    const char *dt_field = get(R, "torch_dtype") ? "torch_dtype" : "dtype";
    return get_str(R, dt_field, false, c->torch_dtype, sizeof c->torch_dtype);
}

static finch_status read_config(reader *R, finch_hf_config *c) {
    finch_status st;
    if (!json_is_object(R->root))
        return finch_err_set(R->err, FINCH_E_FORMAT, "%s: not a JSON object", R->path);
    if ((st = get_str(R, "model_type", true, c->model_type, sizeof c->model_type))) return st;
    const char *mt = c->model_type;
    if (!strcmp(mt, "gpt2")) return read_gpt2(R, c);
    if (!strcmp(mt, "gemma3_text")) return read_gemma3(R, c);
    if (!strcmp(mt, "gemma3"))
        return finch_err_set(R->err, FINCH_E_UNSUPPORTED,
                             "%s: field 'model_type': 'gemma3' is the multimodal "
                             "Gemma3ForConditionalGeneration (a vision tower and a text_config); "
                             "finch loads text-only Gemma 3 folders, model_type 'gemma3_text' "
                             "(Gemma3ForCausalLM)",
                             R->path);
    const bool llama = !strcmp(mt, "llama"), mistral = !strcmp(mt, "mistral"),
               qwen2 = !strcmp(mt, "qwen2");
    if (!llama && !mistral && !qwen2)
        return finch_err_set(R->err, FINCH_E_UNSUPPORTED,
                             "%s: field 'model_type': '%s' is not supported (finch runs llama, "
                             "mistral, qwen2, gpt2 and gemma3_text)",
                             R->path, mt);
    const json_t *archs = get(R, "architectures");
    if (archs) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 ||
            !json_is_string(json_array_get(archs, 0)))
            return bad(R, "architectures", "must be a non-empty list of strings");
        const char *a = json_string_value(json_array_get(archs, 0));
        const char *want = llama     ? "LlamaForCausalLM"
                           : mistral ? "MistralForCausalLM"
                                     : "Qwen2ForCausalLM";
        if (strcmp(a, want) != 0)
            return finch_err_set(R->err, FINCH_E_UNSUPPORTED,
                                 "%s: field 'architectures': '%.60s' is not supported for "
                                 "model_type '%s' (finch runs %s)",
                                 R->path, a, mt, want);
        snprintf(c->architecture, sizeof c->architecture, "%s", a);
    }
    if ((st = read_quantization(R, c))) return st;

    if ((st = get_int(R, "hidden_size", true, 1, MAX_EMBD, &c->hidden_size)) ||
        (st = get_int(R, "intermediate_size", true, 1, MAX_FF, &c->intermediate_size)) ||
        (st = get_int(R, "num_hidden_layers", true, 1, MAX_LAYERS, &c->num_hidden_layers)) ||
        (st = get_int(R, "num_attention_heads", true, 1, MAX_HEADS, &c->num_attention_heads)) ||
        (st = get_int(R, "vocab_size", true, 1, MAX_VOCAB, &c->vocab_size)) ||
        (st = get_int(R, "max_position_embeddings", true, 1, MAX_CTX, &c->max_position_embeddings)))
        return st;
    const int H = c->num_attention_heads;
    c->num_key_value_heads = H;
    if ((st = get_int(R, "num_key_value_heads", false, 1, MAX_HEADS, &c->num_key_value_heads)))
        return st;
    if (H % c->num_key_value_heads)
        return bad(R, "num_key_value_heads", "is %d, which does not divide num_attention_heads %d",
                   c->num_key_value_heads, H);
    c->head_dim = 0;
    if ((st = get_int(R, "head_dim", false, 2, MAX_EMBD, &c->head_dim))) return st;
    if (!c->head_dim) {
        if (c->hidden_size % H)
            return bad(R, "num_attention_heads", "is %d, which does not divide hidden_size %d", H,
                       c->hidden_size);
        c->head_dim = c->hidden_size / H;
    }
    if (c->head_dim % 2) return bad(R, "head_dim", "is %d; RoPE needs it even", c->head_dim);

    if ((st = get_num(R, "rms_norm_eps", true, 0, 1, &c->rms_norm_eps))) return st;
    c->rope_theta = 10000.0f;
    if ((st = get_num(R, "rope_theta", false, 1, 1e12, &c->rope_theta)) ||
        (st = check_rope(R, "rope_scaling", &c->rope_theta)) ||
        (st = check_rope(R, "rope_parameters", &c->rope_theta)))
        return st;
    char act[32] = "silu";
    if ((st = get_str(R, "hidden_act", false, act, sizeof act))) return st;
    if (strcmp(act, "silu") != 0) {
        char what[80];
        snprintf(what, sizeof what, "activation '%.31s' (finch implements silu)", act);
        return unsupported(R, "hidden_act", what);
    }
    bool attention_bias = false, mlp_bias = false;
    if ((st = get_bool(R, "attention_bias", &attention_bias)) ||
        (st = get_bool(R, "mlp_bias", &mlp_bias)) ||
        (st = get_bool(R, "tie_word_embeddings", &c->tie_word_embeddings)))
        return st;
    if (attention_bias && !qwen2)
        return unsupported(R, "attention_bias", "true (biases on q/k/v/o projections)");
    if (mlp_bias) return unsupported(R, "mlp_bias", "true (biases on the MLP projections)");
    c->qkv_bias = qwen2;

    /* sliding windows: see the top of the file */
    c->context = c->max_position_embeddings;
    bool window = mistral;
    if (qwen2 && (st = get_bool(R, "use_sliding_window", &window))) return st;
    int w = 0;
    if (window && (st = get_int(R, "sliding_window", false, 1, MAX_CTX, &w))) return st;
    if (window && w > 0 && w < c->context) c->context = w;

    if ((st = get_token(R, "bos_token_id", c->vocab_size, &c->bos_token_id)) ||
        (st = get_token(R, "eos_token_id", c->vocab_size, &c->eos_token_id)))
        return st;
    const char *dt_field = get(R, "torch_dtype") ? "torch_dtype" : "dtype";
    if ((st = get_str(R, dt_field, false, c->torch_dtype, sizeof c->torch_dtype))) return st;
    return FINCH_OK;
}

/* Parses a JSON file; jansson's message names the line and column. */
static finch_status load_json(const char *path, json_t **out, finch_err *err) {
    json_error_t je;
    finch_status st = finch_json_load_file(path, JSON_REJECT_DUPLICATES, out, &je, err);
    if (st) return st;
    if (!*out) {
        if (je.line < 0) return finch_err_set(err, FINCH_E_IO, "%s: %s", path, je.text);
        return finch_err_set(err, FINCH_E_FORMAT, "%s:%d:%d: invalid JSON: %s", path, je.line,
                             je.column, je.text);
    }
    return FINCH_OK;
}

finch_status finch_hf_config_load(const char *path, finch_hf_config *out, finch_err *err) {
    FINCH_ASSERT(path && out);
    json_t *root;
    finch_status st = load_json(path, &root, err);
    if (st) return st;
    finch_hf_config c = {0};
    reader R = {path, root, err};
    st = read_config(&R, &c);
    json_decref(root);
    if (!st) *out = c;
    return st;
}

/* ---- model.safetensors.index.json ----------------------------------------------------- */

typedef struct {
    char *name;
    int file;
} entry;

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static char *dup(const char *s, finch_err *err) {
    char *d = finch_alloc(strlen(s) + 1, "index entry", err);
    if (d) memcpy(d, s, strlen(s) + 1);
    return d;
}

static finch_status read_index(const char *path, const json_t *root, finch_hf_index *ix,
                               finch_err *err) {
    const json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map))
        return finch_err_set(err, FINCH_E_FORMAT, "%s: field 'weight_map' %s", path,
                             map ? "must be an object" : "is missing");
    size_t n = json_object_size(map);
    if (n == 0) return finch_err_set(err, FINCH_E_FORMAT, "%s: field 'weight_map' is empty", path);
    ix->tensor = finch_calloc(n, sizeof *ix->tensor, "index", err);
    ix->file = finch_calloc(n, sizeof *ix->file, "index", err);
    ix->files = finch_calloc(n, sizeof *ix->files, "index", err);
    if (!ix->tensor || !ix->file || !ix->files) return FINCH_E_NOMEM;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)map, key, v) {
        if (!json_is_string(v))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: weight_map entry '%.80s' is not a file name", path, key);
        const char *f = json_string_value(v);
        if (!*f || strchr(f, '/') || strchr(f, '\\') || !strcmp(f, ".") || !strcmp(f, ".."))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: weight_map entry '%.80s': '%.80s' is not a plain file "
                                 "name in the model folder",
                                 path, key, f);
        int k = 0;
        while (k < ix->n_files && strcmp(ix->files[k], f)) k++;
        if (k == ix->n_files && !(ix->files[ix->n_files++] = dup(f, err))) return FINCH_E_NOMEM;
        if (!(ix->tensor[ix->n] = dup(key, err))) return FINCH_E_NOMEM;
        ix->file[ix->n++] = k;
    }
    /* sort entries by name, carrying the file indices */
    entry *e = finch_calloc(n, sizeof *e, "index", err);
    if (!e) return FINCH_E_NOMEM;
    for (size_t i = 0; i < n; i++) e[i] = (entry){ix->tensor[i], ix->file[i]};
    qsort(e, n, sizeof *e, cmp_entry);
    for (size_t i = 0; i < n; i++) {
        ix->tensor[i] = e[i].name;
        ix->file[i] = e[i].file;
    }
    free(e);
    return FINCH_OK;
}

finch_status finch_hf_index_load(const char *path, finch_hf_index *out, finch_err *err) {
    FINCH_ASSERT(path && out);
    memset(out, 0, sizeof *out);
    json_t *root;
    finch_status st = load_json(path, &root, err);
    if (st) return st;
    st = read_index(path, root, out, err);
    json_decref(root);
    if (st) finch_hf_index_free(out);
    return st;
}

int finch_hf_index_find(const finch_hf_index *ix, const char *tensor) {
    int64_t lo = 0, hi = ix->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ix->tensor[mid], tensor);
        if (c == 0) return ix->file[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

void finch_hf_index_free(finch_hf_index *ix) {
    if (!ix) return;
    for (int64_t i = 0; i < ix->n; i++) free(ix->tensor[i]);
    for (int i = 0; i < ix->n_files; i++) free(ix->files[i]);
    free(ix->tensor);
    free(ix->file);
    free(ix->files);
    memset(ix, 0, sizeof *ix);
}
