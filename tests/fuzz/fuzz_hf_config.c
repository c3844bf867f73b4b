/*
 * fuzz_hf_config.c: libFuzzer target for a Hugging Face folder's JSON files. The input is
 * config.json, then (after a NUL byte) model.safetensors.index.json. A config that reads
 * must describe a model finch can lay out (positive sizes, heads dividing the width, an
 * even head size but for GPT-2, ids inside the vocabulary); an index that reads must be sorted with
 * plain shard names and find every tensor it lists. A failure must name the file.
 *
 * Built as fuzz_hf_config with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as
 * fuzz_hf_config_replay, which runs tests/fuzz/corpus/hf_config/ as a test.
 */
#include "fuzz_files.h"
#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_config(const finch_hf_config *c) {
    if (c->hidden_size <= 0 || c->intermediate_size <= 0 || c->num_hidden_layers <= 0 ||
        c->num_attention_heads <= 0 || c->num_key_value_heads <= 0 || c->head_dim <= 0 ||
        c->vocab_size <= 0 || c->context <= 0 || c->context > c->max_position_embeddings)
        abort();
    /* an even head size for RoPE; GPT-2 has none */
    if (c->num_attention_heads % c->num_key_value_heads ||
        (c->head_dim % 2 && strcmp(c->model_type, "gpt2")))
        abort();
    if (!(c->rms_norm_eps > 0) || !(c->rope_theta > 1)) abort();
    /* Gemma 3: a window and a local RoPE base */
    if (!strcmp(c->model_type, "gemma3_text") &&
        (c->sliding_window <= 0 || !(c->rope_local_base_freq > 1)))
        abort();
    if (c->bos_token_id >= c->vocab_size || c->eos_token_id >= c->vocab_size) abort();
    if (!memchr(c->model_type, 0, sizeof c->model_type) ||
        !memchr(c->architecture, 0, sizeof c->architecture) ||
        !memchr(c->torch_dtype, 0, sizeof c->torch_dtype))
        abort();
}

static void check_index(const finch_hf_index *ix) {
    for (int64_t i = 0; i < ix->n; i++) {
        if (i && strcmp(ix->tensor[i - 1], ix->tensor[i]) > 0) abort();
        if (ix->file[i] < 0 || ix->file[i] >= ix->n_files) abort();
        int f = finch_hf_index_find(ix, ix->tensor[i]);
        if (f < 0 || strcmp(ix->files[f], ix->files[ix->file[i]])) abort();
    }
    for (int i = 0; i < ix->n_files; i++) {
        const char *s = ix->files[i];
        if (!s[0] || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[FUZZ_MAX_PARTS];
    size_t len[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, part, len);
    char path[256];
    finch_err err;

    fuzz_write("config.json", part[0], len[0], path, sizeof path);
    finch_hf_config c;
    if (finch_hf_config_load(path, &c, &err) == FINCH_OK)
        check_config(&c);
    else
        fuzz_expect_named(err.msg, "config.json");

    if (n > 1) {
        fuzz_write("model.safetensors.index.json", part[1], len[1], path, sizeof path);
        finch_hf_index ix;
        if (finch_hf_index_load(path, &ix, &err) == FINCH_OK) {
            check_index(&ix);
            finch_hf_index_free(&ix);
        } else {
            fuzz_expect_named(err.msg, "model.safetensors.index.json");
        }
    }
    fuzz_dir_empty();
    return 0;
}
