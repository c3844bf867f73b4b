/*
 * test_quantize_hf.c: `finch quantize FOLDER OUT.gguf`, the Hugging Face folder written as
 * the GGUF llama.cpp's convert_hf_to_gguf.py (then llama-quantize) would write.
 *
 *   - The tiny folders of tests/fixtures (GPT-2 with its tokenizer; the sharded f32 LLaMA,
 *     the tied bf16 LLaMA and the f16 Qwen2 with q/k/v biases, each given a small
 *     byte-level tokenizer.json written here, in the SmolLM2, Llama 3 and Qwen2 pre-tokenizer
 *     styles) are quantized to f32, q8_0 and q4_k_m. Each output loads in finch with the
 *     folder's logits (f32: bit for bit; q8_0, q4_k_m: within a tolerance stated per type),
 *     the folder's token ids on every test text, and the metadata keys of its family, with
 *     tokenizer.ggml.pre named from the pre-tokenizer. The f32 LLaMA's tensors are
 *     byte-identical to tiny_llama.gguf's (the GGUF the folder was made from, q/k rows
 *     back in GGUF order), the f32 GPT-2's to tiny_gpt2.gguf's (made as the converter
 *     makes it), with the same metadata keys.
 *   - A LLaMA folder with a SentencePiece tokenizer (tokenizer.model and tokenizer.json,
 *     tests/fixtures/hf_spm) becomes a "llama" vocabulary with scores, with and without
 *     tokenizer.model: the folder's f32 logits bit for bit and its ids; full fine-tuning
 *     over it writes model.gguf (it did not while such a tokenizer had no GGUF form).
 *   - Full fine-tuning of the GPT-2 folder writes model.gguf through the same writer: it
 *     gives the tuned folder's logits.
 *   - Refusals: a folder without tokenizer.json, without config.json, with an unknown
 *     model_type, with a pre-tokenizer llama.cpp has no name for, with a SentencePiece-style
 *     tokenizer.json without byte tokens, a Gemma 3 folder whose sliding blocks are not llama.cpp's
 * layout; an output inside the folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "finch.h"
#include "test_util.h" /* read_file */

#include "io/io.h" /* finch_gguf_open, finch_gguf_get_* */

#define HF FINCH_FIXTURES "/hf"
#define MODEL FINCH_FIXTURES "/model"

static char dir[] = "/tmp/finch_quantize_hf_XXXXXX";

static const char *const texts[] = {
    "the cat is on the mat, then the other one.",
    "in 2024 there were 12345 of them!",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "  spaces   and\ttabs\n\nnew lines ",
    "a, b. c? d!",
    "",
};

/* A byte-level BPE tokenizer.json of at most 97 tokens (lowercase letters, digits, space,
 * four punctuation marks, newline, tab, three specials, a few merges) in pre-tokenizer style
 * pre ("smollm", "llama3", "qwen2", or "odd": a Split regex llama.cpp has no name for). */
static void write_tokenizer(const char *folder, const char *pre) {
    char path[400];
    snprintf(path, sizeof path, "%s/tokenizer.json", folder);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    static const char *const merges[][2] = {{"\\u0120", "t"}, {"h", "e"},       {"\\u0120t", "he"},
                                            {"i", "n"},       {"\\u0120", "a"}, {"e", "r"},
                                            {"o", "n"},       {"a", "t"}};
    const char *split =
        !strcmp(pre, "smollm") ? NULL
        : !strcmp(pre, "llama3")
            ? "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
              "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+"
        : !strcmp(pre, "qwen2")
            ? "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "
              "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+"
            : "\\\\p{L}+|\\\\s+|.";
    fprintf(f, "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,\n"
               "\"added_tokens\": [\n");
    static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++)
        fprintf(f,
                "{\"id\": %d, \"content\": \"%s\", \"single_word\": false, \"lstrip\": false, "
                "\"rstrip\": false, \"normalized\": false, \"special\": true}%s\n",
                i, specials[i], i < 2 ? "," : "");
    fprintf(f, "],\n\"normalizer\": %s,\n",
            !strcmp(pre, "qwen2")
                ? "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}]}"
                : "null");
    if (split)
        fprintf(f,
                "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": "
                "\"Split\", \"pattern\": {\"Regex\": \"%s\"}, \"behavior\": \"Isolated\", "
                "\"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
                "\"trim_offsets\": true, \"use_regex\": false}]},\n",
                split);
    else
        fprintf(f,
                "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": "
                "\"Digits\", \"individual_digits\": true}, {\"type\": \"ByteLevel\", "
                "\"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true}]},\n");
    fprintf(f, "\"post_processor\": null, \"decoder\": {\"type\": \"ByteLevel\", "
               "\"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n"
               "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, "
               "\"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, "
               "\"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,\n"
               "\"vocab\": {\"<|endoftext|>\": 0, \"<|im_start|>\": 1, \"<|im_end|>\": 2");
    int id = 3;
    for (char c = 'a'; c <= 'z'; c++) fprintf(f, ", \"%c\": %d", c, id++);
    for (char c = '0'; c <= '9'; c++) fprintf(f, ", \"%c\": %d", c, id++);
    /* space, newline, tab in the byte-level alphabet, then . , ? ! */
    fprintf(f, ", \"\\u0120\": %d, \"\\u010a\": %d, \"\\u0109\": %d", id, id + 1, id + 2);
    id += 3;
    fprintf(f, ", \".\": %d, \",\": %d, \"?\": %d, \"!\": %d", id, id + 1, id + 2, id + 3);
    id += 4;
    for (size_t i = 0; i < sizeof merges / sizeof merges[0]; i++)
        fprintf(f, ", \"%s%s\": %d", merges[i][0], merges[i][1], id++);
    fprintf(f, "},\n\"merges\": [");
    for (size_t i = 0; i < sizeof merges / sizeof merges[0]; i++)
        fprintf(f, "%s\"%s %s\"", i ? ", " : "", merges[i][0], merges[i][1]);
    fprintf(f, "]}}\n");
    assert_int_equal(fclose(f), 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", folder);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "{\"add_bos_token\": false, \"bos_token\": \"<|im_start|>\", \"eos_token\": "
               "\"<|im_end|>\", \"chat_template\": \"{%% for m in messages %%}<|im_start|>{{ "
               "m['role'] }}\\n{{ m['content'] }}<|im_end|>\\n{%% endfor %%}\"}\n");
    assert_int_equal(fclose(f), 0);
}

/* A copy of fixture folder src at dir/name (with a tokenizer in style pre, or none: NULL). */
static void copy_folder(const char *src, const char *name, const char *pre, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", dir, name);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", out, src, out);
    assert_int_equal(system(cmd), 0);
    if (pre) write_tokenizer(out, pre);
}

static finch_status quantize(const char *in, const char *out, const char *type, finch_err *err) {
    finch_quantize_options o = {.type = type, .force = 1};
    return finch_quantize(in, out, &o, err);
}

static finch_model *load(const char *path) {
    finch_model *m;
    finch_err err;
    if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    return m;
}

static float *logits(const finch_model *m, const int32_t *ids, int n) {
    finch_model_config c;
    finch_model_config_get(m, &c);
    float *out = malloc((size_t)n * c.n_vocab * sizeof *out);
    assert_non_null(out);
    finch_session *s;
    finch_err err;
    assert_int_equal(finch_session_new(m, n, FINCH_NUMERICS_EXACT, &s, &err), FINCH_OK);
    assert_int_equal(finch_session_decode(s, ids, n, out, NULL, &err), FINCH_OK);
    finch_session_free(s);
    return out;
}

/* Every test text has the same ids from both models' tokenizers (but a text that starts
 * with a space where lead_space is false). */
static void same_ids_but(const finch_model *a, const finch_model *b, bool lead_space) {
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (!lead_space && texts[i][0] == ' ') continue;
        int32_t *x, *y;
        int64_t nx, ny;
        finch_err err;
        const int flags = FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL;
        assert_int_equal(finch_tokenize(finch_model_tokenizer(a), texts[i], strlen(texts[i]), flags,
                                        &x, &nx, &err),
                         FINCH_OK);
        assert_int_equal(finch_tokenize(finch_model_tokenizer(b), texts[i], strlen(texts[i]), flags,
                                        &y, &ny, &err),
                         FINCH_OK);
        assert_int_equal(nx, ny);
        assert_memory_equal(x, y, (size_t)nx * sizeof *x);
        free(x);
        free(y);
    }
}

static void same_ids(const finch_model *a, const finch_model *b) {
    same_ids_but(a, b, true);
}

static void has_key(const finch_gguf *g, const char *arch, const char *key) {
    char full[160];
    snprintf(full, sizeof full, "%s%s", arch ? arch : "", key);
    if (!finch_gguf_find_kv(g, full)) fail_msg("no metadata key '%s'", full);
}

/* The metadata keys llama.cpp reads for the family, and the tokenizer's. */
static void check_keys(const char *path, const char *arch, const char *pre, uint32_t ftype, int V) {
    finch_gguf *g;
    finch_err err;
    if (finch_gguf_open(path, &g, &err)) fail_msg("%s", err.msg);
    char a[32];
    snprintf(a, sizeof a, "%s.", arch);
    finch_str s;
    assert_int_equal(finch_gguf_get_str(g, "general.architecture", true, &s, &err), FINCH_OK);
    assert_true(s.len == strlen(arch) && !memcmp(s.ptr, arch, s.len));
    const bool gpt2 = !strcmp(arch, "gpt2");
    static const char *const common[] = {"context_length", "embedding_length", "block_count",
                                         "feed_forward_length", "attention.head_count"};
    for (int i = 0; i < 5; i++) has_key(g, a, common[i]);
    if (gpt2) {
        has_key(g, a, "attention.layer_norm_epsilon");
    } else {
        has_key(g, a, "attention.head_count_kv");
        has_key(g, a, "rope.freq_base");
        has_key(g, a, "attention.layer_norm_rms_epsilon");
    }
    if (!strcmp(arch, "llama")) {
        has_key(g, a, "vocab_size");
        has_key(g, a, "rope.dimension_count");
    }
    static const char *const general[] = {"general.name",
                                          "general.type",
                                          "general.quantization_version",
                                          "tokenizer.ggml.merges",
                                          "tokenizer.ggml.token_type",
                                          "tokenizer.ggml.bos_token_id",
                                          "tokenizer.ggml.eos_token_id",
                                          "tokenizer.ggml.add_bos_token"};
    for (int i = 0; i < 8; i++) has_key(g, NULL, general[i]);
    uint32_t ft = 99;
    assert_int_equal(finch_gguf_get_u32(g, "general.file_type", true, &ft, &err), FINCH_OK);
    assert_int_equal(ft, ftype);
    assert_int_equal(finch_gguf_get_str(g, "tokenizer.ggml.model", true, &s, &err), FINCH_OK);
    assert_true(s.len == 4 && !memcmp(s.ptr, "gpt2", 4));
    assert_int_equal(finch_gguf_get_str(g, "tokenizer.ggml.pre", true, &s, &err), FINCH_OK);
    if (s.len != strlen(pre) || memcmp(s.ptr, pre, s.len))
        fail_msg("tokenizer.ggml.pre is '%.*s', expected '%s'", (int)s.len, s.ptr, pre);
    const finch_gguf_kv *tokens = finch_gguf_find_kv(g, "tokenizer.ggml.tokens");
    assert_non_null(tokens);
    assert_int_equal(tokens->arr_n, V); /* padded to the embedding rows */
    finch_gguf_close(g);
}

/* max |a - b| over n values. */
static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void check_folder(const char *folder, const char *arch, const char *pre) {
    finch_model *src = load(folder);
    finch_model_config c;
    finch_model_config_get(src, &c);
    const int32_t ids[] = {1, 5, 9, 17, 3, 40, 2, 11, 29, 7, 60, 13};
    const int n = sizeof ids / sizeof ids[0];
    float *want = logits(src, ids, n);
    double maxabs = 0;
    for (size_t i = 0; i < (size_t)n * c.n_vocab; i++) maxabs = fmax(maxabs, fabs(want[i]));
    /* q8_0 and q4_k_m as a fraction of the largest logit: their weights' rounding (~1/254
     * and ~1/30 of a block's range, and q5_0/q8_0 where rows of 64 are no 256-block) through
     * two blocks of these random models; measured at most 0.024 and 0.18 */
    static const struct {
        const char *type;
        uint32_t ftype;
        double tol;
    } types[] = {{"f32", 0, 0}, {"q8_0", 7, 0.05}, {"q4_k_m", 15, 0.3}};
    for (int t = 0; t < 3; t++) {
        char out[500];
        snprintf(out, sizeof out, "%s/%s-%s.gguf", dir, strrchr(folder, '/') + 1, types[t].type);
        finch_err err;
        if (quantize(folder, out, types[t].type, &err)) fail_msg("%s", err.msg);
        finch_model *m = load(out);
        float *got = logits(m, ids, n);
        const double d = max_diff(got, want, (size_t)n * c.n_vocab);
        printf("  %s -> %s: logits max |diff| %.3g (largest logit %.3g, tolerance %.3g)\n", folder,
               types[t].type, d, maxabs, types[t].tol * maxabs);
        assert_true(d <= types[t].tol * maxabs);
        same_ids(src, m);
        check_keys(out, arch, pre, types[t].ftype, c.n_vocab);
        free(got);
        finch_model_free(m);
        if (t) unlink(out);
    }
    free(want);
    finch_model_free(src);
}

/* Every tensor of a (by name) is in b with the same type, shape and bytes, and back. */
static void same_tensors(const char *pa, const char *pb) {
    finch_gguf *a, *b;
    finch_err err;
    if (finch_gguf_open(pa, &a, &err) || finch_gguf_open(pb, &b, &err)) fail_msg("%s", err.msg);
    assert_int_equal(finch_gguf_n_tensors(a), finch_gguf_n_tensors(b));
    for (int64_t i = 0; i < finch_gguf_n_tensors(a); i++) {
        const finch_gguf_tensor *x = finch_gguf_tensor_at(a, i);
        const finch_gguf_tensor *y = finch_gguf_find_tensor(b, x->name);
        if (!y) fail_msg("%s: no tensor '%s'", pb, x->name);
        assert_int_equal(x->type, y->type);
        assert_memory_equal(x->ne, y->ne, sizeof x->ne);
        assert_int_equal(x->nbytes, y->nbytes);
        if (memcmp(x->data, y->data, x->nbytes)) fail_msg("tensor '%s' differs", x->name);
    }
    printf("  %s: %lld tensors, each byte-identical to %s's\n", pa,
           (long long)finch_gguf_n_tensors(a), pb);
    finch_gguf_close(a);
    finch_gguf_close(b);
}

/* The metadata keys of a are those of b (general.name and the file type aside). */
static void same_keys(const char *pa, const char *pb) {
    finch_gguf *a, *b;
    finch_err err;
    if (finch_gguf_open(pa, &a, &err) || finch_gguf_open(pb, &b, &err)) fail_msg("%s", err.msg);
    for (int k = 0; k < 2; k++) {
        const finch_gguf *x = k ? b : a, *y = k ? a : b;
        for (int64_t i = 0; i < finch_gguf_n_kv(x); i++) {
            const char *key = finch_gguf_kv_at(x, i)->key;
            /* general.quantization_version: written by convert_hf_to_gguf.py, not by the
             * fixture script's imitation of it; unknown_token_id: gguf's SpecialVocab takes
             * tokenizer_config.json's unk_token, the fixture script config.json's ids only */
            if (!strcmp(key, "general.quantization_version") ||
                !strcmp(key, "tokenizer.ggml.unknown_token_id"))
                continue;
            if (!finch_gguf_find_kv(y, key)) fail_msg("key '%s' only in %s", key, k ? pb : pa);
        }
    }
    finch_gguf_close(a);
    finch_gguf_close(b);
}

static void test_families(void **state) {
    (void)state;
    char f[400], out[500];
    check_folder(MODEL "/tiny_gpt2", "gpt2", "gpt-2");
    snprintf(out, sizeof out, "%s/tiny_gpt2-f32.gguf", dir);
    same_tensors(out, MODEL "/tiny_gpt2.gguf");
    same_keys(out, MODEL "/tiny_gpt2.gguf");
    copy_folder(HF "/tiny_llama", "tiny_llama", "smollm", f, sizeof f);
    check_folder(f, "llama", "smollm");
    snprintf(out, sizeof out, "%s/tiny_llama-f32.gguf", dir);
    same_tensors(out, MODEL "/tiny_llama.gguf");
    copy_folder(HF "/tiny_llama_tied", "tiny_llama_tied", "llama3", f, sizeof f);
    check_folder(f, "llama", "llama-bpe");
    copy_folder(HF "/tiny_qwen2", "tiny_qwen2", "qwen2", f, sizeof f);
    check_folder(f, "qwen2", "qwen2");
    /* tied: no output.weight (GPT-2: the converter's copy) */
    finch_gguf *g;
    finch_err err;
    snprintf(out, sizeof out, "%s/tiny_qwen2-f32.gguf", dir);
    if (finch_gguf_open(out, &g, &err)) fail_msg("%s", err.msg);
    assert_null(finch_gguf_find_tensor(g, "output.weight"));
    assert_non_null(finch_gguf_find_tensor(g, "blk.1.attn_k.bias"));
    finch_gguf_close(g);
}

/* A LLaMA folder with a SentencePiece tokenizer.model and the tokenizer.json transformers
 * converts from it (tests/fixtures/hf_spm): the GGUF is a "llama" vocabulary with scores,
 * gives the folder's logits bit for bit at f32 and its ids on every text; without
 * tokenizer.model (scores derived from the merges) the same. */
static void test_sentencepiece(void **state) {
    (void)state;
    char f[400], out[500], cmd[600];
    copy_folder(FINCH_FIXTURES "/hf_spm/tiny_llama_spm", "tiny_llama_spm", NULL, f, sizeof f);
    finch_model *src = load(f);
    finch_model_config c;
    finch_model_config_get(src, &c);
    const int32_t ids[] = {1, 5, 9, 17, 300, 40, 2, 11, 600, 7, 60, 13};
    const int n = sizeof ids / sizeof ids[0];
    float *want = logits(src, ids, n);
    /* full fine-tuning over the folder writes model.gguf through the same writer */
    char data[450], tuned[450];
    snprintf(data, sizeof data, "%s/spm_train.jsonl", dir);
    FILE *fp = fopen(data, "w");
    assert_non_null(fp);
    for (int k = 0; k < 4; k++)
        fprintf(fp, "{\"prompt\": \"the model %d is\", \"completion\": \" a value %d\"}\n", k,
                3 * k);
    fclose(fp);
    snprintf(tuned, sizeof tuned, "%s/spm_full", dir);
    finch_train_options o = finch_train_defaults();
    o.data.path = data;
    o.data.max_seq_len = 32;
    o.out_dir = tuned;
    o.method = "full";
    o.learning_rate = 1e-3;
    o.batch_size = 2;
    o.max_steps = 1;
    finch_err terr;
    if (finch_train(src, &o, NULL, NULL, NULL, &terr)) fail_msg("%s", terr.msg);
    snprintf(out, sizeof out, "%s/model.gguf", tuned);
    finch_model *tm = load(out);
    same_ids_but(src, tm, false);
    finch_model_free(tm);
    printf("  full fine-tuning of %s: model.gguf has the folder's ids\n", f);
    for (int k = 0; k < 2; k++) {
        if (k) {
            snprintf(cmd, sizeof cmd, "rm '%s/tokenizer.model'", f);
            assert_int_equal(system(cmd), 0);
        }
        snprintf(out, sizeof out, "%s/spm-%d.gguf", dir, k);
        finch_err err;
        if (quantize(f, out, "f32", &err)) fail_msg("%s", err.msg);
        finch_model *m = load(out);
        float *got = logits(m, ids, n);
        assert_true(max_diff(got, want, (size_t)n * c.n_vocab) == 0);
        /* a text that starts with a space: the folder's Metaspace (prepend_scheme "first")
         * adds no marker, llama.cpp (as SentencePiece itself) adds one; the tokenizer tests
         * check those against SentencePiece's ids */
        same_ids_but(src, m, false);
        printf("  %s (%s tokenizer.model) -> f32: the folder's logits and ids\n", f,
               k ? "without" : "with");
        free(got);
        finch_model_free(m);
        finch_gguf *g;
        if (finch_gguf_open(out, &g, &err)) fail_msg("%s", err.msg);
        finch_str s;
        assert_int_equal(finch_gguf_get_str(g, "tokenizer.ggml.model", true, &s, &err), FINCH_OK);
        assert_true(s.len == 5 && !memcmp(s.ptr, "llama", 5));
        const finch_gguf_kv *sc = finch_gguf_find_kv(g, "tokenizer.ggml.scores");
        assert_non_null(sc);
        assert_int_equal(sc->arr_n, c.n_vocab);
        assert_null(finch_gguf_find_kv(g, "tokenizer.ggml.merges"));
        bool prefix = false;
        assert_int_equal(
            finch_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", true, &prefix, &err),
            FINCH_OK);
        assert_true(prefix);
        finch_gguf_close(g);
        unlink(out);
    }
    free(want);
    finch_model_free(src);
}

static double first_loss, last_loss;

static void on_progress(const finch_train_progress *p, void *user) {
    (void)user;
    if (p->step == 1) first_loss = p->loss;
    last_loss = p->loss;
}

/* Full fine-tuning over a folder writes model.gguf by the same writer: it runs in finch
 * with the tuned folder's logits. */
static void test_full_fine_tuning(void **state) {
    (void)state;
    char data[400], out[400], gguf[500];
    snprintf(data, sizeof data, "%s/train.jsonl", dir);
    FILE *fp = fopen(data, "w");
    assert_non_null(fp);
    for (int k = 0; k < 8; k++)
        fprintf(fp, "{\"prompt\": \"the cat %d is\", \"completion\": \" on the mat %d\"}\n", k,
                7 * k);
    fclose(fp);
    snprintf(out, sizeof out, "%s/full", dir);
    finch_model *m = load(MODEL "/tiny_gpt2");
    finch_train_options o = finch_train_defaults();
    o.data.path = data;
    o.data.max_seq_len = 32;
    o.out_dir = out;
    o.method = "full";
    o.learning_rate = 1e-2;
    o.batch_size = 4;
    o.max_steps = 4;
    o.log_steps = 1;
    finch_err err;
    if (finch_train(m, &o, on_progress, NULL, NULL, &err)) fail_msg("%s", err.msg);
    finch_model_free(m);
    printf("  full fine-tuning of the GPT-2 folder: loss %.4f -> %.4f\n", first_loss, last_loss);
    snprintf(gguf, sizeof gguf, "%s/model.gguf", out);
    finch_model *a = load(gguf), *b = load(out), *base = load(MODEL "/tiny_gpt2");
    const int32_t ids[] = {0, 5, 9, 17, 3, 40, 2, 11};
    float *x = logits(a, ids, 8), *y = logits(b, ids, 8), *z = logits(base, ids, 8);
    const double d = max_diff(x, y, 8 * 400), moved = max_diff(y, z, 8 * 400);
    printf("  model.gguf vs the tuned folder: max |diff| %.3g (tuning moved logits by %.3g)\n", d,
           moved);
    assert_true(moved > 0.01);
    assert_true(d < 1e-5);
    same_ids(a, base); /* the run's folder holds no tokenizer: the base's */
    free(x), free(y), free(z);
    finch_model_free(a);
    finch_model_free(b);
    finch_model_free(base);
}

static void refused(const char *in, const char *out, finch_status code, const char *fragment) {
    finch_err err = {0};
    finch_status st = quantize(in, out, "q8_0", &err);
    printf("  %s -> %s: %s\n", in, out, err.msg);
    assert_int_equal(st, code);
    if (!strstr(err.msg, fragment)) fail_msg("message '%s' lacks '%s'", err.msg, fragment);
    struct stat sb;
    assert_int_equal(stat(out, &sb), -1);
}

static void test_refusals(void **state) {
    (void)state;
    char f[400], out[500], cmd[1200];
    snprintf(out, sizeof out, "%s/refused.gguf", dir);
    /* no tokenizer.json */
    copy_folder(HF "/tiny_llama", "no_tok", NULL, f, sizeof f);
    refused(f, out, FINCH_E_UNSUPPORTED, "no tokenizer.json");
    /* no config.json */
    copy_folder(HF "/tiny_llama", "no_config", "smollm", f, sizeof f);
    snprintf(cmd, sizeof cmd, "rm '%s/config.json'", f);
    assert_int_equal(system(cmd), 0);
    refused(f, out, FINCH_E_USAGE, "without config.json");
    /* an unknown model_type */
    copy_folder(HF "/tiny_llama", "falcon", "smollm", f, sizeof f);
    snprintf(cmd, sizeof cmd,
             "sed -i 's/\"model_type\": \"llama\"/\"model_type\": \"falcon\"/' '%s/config.json'",
             f);
    assert_int_equal(system(cmd), 0);
    refused(f, out, FINCH_E_UNSUPPORTED, "falcon");
    /* a pre-tokenizer llama.cpp has no name for */
    copy_folder(HF "/tiny_llama", "odd_pre", "odd", f, sizeof f);
    refused(f, out, FINCH_E_UNSUPPORTED, "pre-tokenizer");
    /* a SentencePiece-style tokenizer.json (Metaspace, BPE pieces) without byte tokens:
     * llama.cpp's byte fallback would fail on any character it lacks */
    copy_folder(HF "/tiny_llama", "spm", NULL, f, sizeof f);
    snprintf(cmd, sizeof cmd, "%s/tokenizer.json", f);
    FILE *fp = fopen(cmd, "w");
    assert_non_null(fp);
    fprintf(fp, "{\"added_tokens\": [], \"normalizer\": null, \"pre_tokenizer\": {\"type\": "
                "\"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", "
                "\"split\": false}, \"post_processor\": null, \"decoder\": {\"type\": "
                "\"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", "
                "\"split\": false}, \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", "
                "\"fuse_unk\": true, \"byte_fallback\": false, \"vocab\": {\"<unk>\": 0, "
                "\"\\u2581\": 1, \"a\": 2, \"b\": 3, \"\\u2581a\": 4}, \"merges\": "
                "[\"\\u2581 a\"]}}\n");
    fclose(fp);
    refused(f, out, FINCH_E_UNSUPPORTED, "SentencePiece-style");
    /* a Gemma 3 folder whose sliding blocks (layer_types: sliding, full, sliding) are not
     * llama.cpp's fixed layout of 5 sliding to 1 global */
    copy_folder(FINCH_FIXTURES "/hf_gemma3/tiny_gemma3_f32", "gemma3", "smollm", f, sizeof f);
    refused(f, out, FINCH_E_UNSUPPORTED, "block 1 does not use the sliding window");
    /* the output inside the folder, directly or below */
    copy_folder(HF "/tiny_llama", "inside", "smollm", f, sizeof f);
    snprintf(out, sizeof out, "%s/model.gguf", f);
    refused(f, out, FINCH_E_USAGE, "inside the input folder");
    snprintf(cmd, sizeof cmd, "mkdir '%s/sub'", f);
    assert_int_equal(system(cmd), 0);
    snprintf(out, sizeof out, "%s/sub/model.gguf", f);
    refused(f, out, FINCH_E_USAGE, "inside the input folder");
}

static int setup(void **state) {
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_families),
        cmocka_unit_test(test_sentencepiece),
        cmocka_unit_test(test_full_fine_tuning),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
