/*
 * fuzz_hf_tokenizer.c: libFuzzer target for a Hugging Face tokenizer: the input is
 * tokenizer.json, then (after a NUL byte) tokenizer_config.json. A tokenizer that builds
 * must tokenize a fixed text (plain, with special tokens, with BOS/EOS) into ids inside
 * its vocabulary and decode them again; its BOS and EOS ids must be inside the vocabulary;
 * its chat template, when it has one, is detected and rendered. A failure must name one
 * of the two files.
 *
 * Built as fuzz_hf_tokenizer with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as
 * fuzz_hf_tokenizer_replay, which runs tests/fuzz/corpus/hf_tokenizer/ as a test.
 */
#include "fuzz_files.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char text[] = "Hello world, <|im_start|>user 12345 caf\xc3\xa9 \xe2\x96\x81x\n\t"
                           "<s></s> \xf0\x9f\x90\xa6!";

static void exercise(const finch_tokenizer *tok) {
    int32_t nv = finch_tokenizer_n_vocab(tok);
    if (nv <= 0) abort();
    if (finch_tokenizer_bos(tok) >= nv || finch_tokenizer_eos(tok) >= nv) abort();
    static const int flags[] = {0, FINCH_TOK_PARSE_SPECIAL,
                                FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL};
    for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++) {
        int32_t *ids = NULL;
        int64_t n = 0;
        finch_err err;
        if (finch_tokenize(tok, text, sizeof text - 1, flags[f], &ids, &n, &err)) {
            free(ids);
            continue; /* a vocabulary without a token for some byte cannot spell it */
        }
        for (int64_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= nv) abort();
        char *back = NULL;
        size_t len = 0;
        if (finch_detokenize(tok, ids, n, flags[f], &back, &len, &err)) abort();
        if (strlen(back) > len) abort();
        free(back);
        free(ids);
    }
    const char *tmpl = finch_tokenizer_chat_template(tok);
    finch_chat_family_id fam = finch_chat_detect(tmpl, tmpl ? strlen(tmpl) : 0);
    if (fam != FINCH_CHAT_NONE && fam != FINCH_CHAT_UNKNOWN) {
        finch_chat_msg msgs[] = {{"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}};
        char *out = NULL;
        finch_err err;
        if (finch_chat_render(fam, tmpl, msgs, 3, 1, &out, &err) == FINCH_OK && !out) abort();
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[FUZZ_MAX_PARTS];
    size_t len[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, part, len);
    char tok_path[256], cfg_path[256];
    fuzz_write("tokenizer.json", part[0], len[0], tok_path, sizeof tok_path);
    if (n > 1) fuzz_write("tokenizer_config.json", part[1], len[1], cfg_path, sizeof cfg_path);
    finch_tokenizer *tok = NULL;
    finch_err err;
    if (finch_tokenizer_from_hf_json(tok_path, n > 1 ? cfg_path : NULL, &tok, &err) == FINCH_OK) {
        if (!tok) abort();
        exercise(tok);
        finch_tokenizer_free(tok);
    } else {
        if (tok) abort();
        if (!strstr(err.msg, "tokenizer.json") && !strstr(err.msg, "tokenizer_config.json")) {
            fprintf(stderr, "fuzz: message names neither file: %s\n", err.msg);
            abort();
        }
    }
    fuzz_dir_empty();
    return 0;
}
