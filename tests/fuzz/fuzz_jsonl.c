/*
 * fuzz_jsonl.c: libFuzzer target for JSONL datasets in every shape. The first byte picks
 * the options (shape: auto or one of the five, skip-bad, the chat template, two prompt
 * templates), the rest is the file. A dataset that reads must hold examples with a prompt
 * and a completion (and a rejected side exactly for preference pairs) and increasing line
 * numbers; it is then tokenized with SmolLM2's tokenizer (tests/fixtures/tokenizer-hf),
 * which must give ids in the vocabulary and a loss mask on the completions. A failure must
 * name the file.
 *
 * Built as fuzz_jsonl with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as
 * fuzz_jsonl_replay, which runs tests/fuzz/corpus/jsonl/ as a test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static finch_tokenizer *tok;

static void init(void) {
    finch_err err;
    if (finch_tokenizer_from_hf_json(FINCH_FIXTURES "/tokenizer-hf/smollm.tokenizer.json",
                                     FINCH_FIXTURES "/tokenizer-hf/smollm.tokenizer_config.json",
                                     &tok, &err)) {
        fprintf(stderr, "fuzz_jsonl: %s\n", err.msg);
        abort();
    }
}

static void check(const finch_dataset *d, finch_shape asked) {
    if (d->n <= 0 || d->n_skipped < 0) abort();
    if (asked != FINCH_SHAPE_AUTO && d->shape != asked) abort();
    for (int64_t i = 0; i < d->n; i++) {
        const finch_text_example *e = &d->ex[i];
        if (!e->prompt || !e->completion) abort();
        if ((e->rejected != NULL) != (d->shape == FINCH_SHAPE_PREFERENCE)) abort();
        if (e->line < 1 || (i && e->line <= d->ex[i - 1].line)) abort();
    }
    finch_token_set s;
    finch_err err;
    if (finch_tokenize_dataset(tok, d, 64, false, &s, &err) != FINCH_OK) {
        if (err.code != FINCH_E_RANGE) abort(); /* nothing left to learn in any example */
        return;
    }
    int32_t nv = finch_tokenizer_n_vocab(tok);
    for (int64_t i = 0; i < s.n; i++) {
        const finch_token_example *t = &s.ex[i];
        if (t->n <= 0 || t->n > 64) abort();
        bool any = false;
        for (int32_t k = 0; k < t->n; k++) {
            if (t->ids[k] < 0 || t->ids[k] >= nv) abort();
            any |= t->mask[k] != 0;
        }
        if (!any) abort();
    }
    finch_token_set_release(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) init();
    if (size < 1) return 0;
    uint8_t c = data[0];
    static const char *const templates[] = {"Q: {instruction} {input}\nA:", "{prompt}{{x}}"};
    finch_data_options opt = {0};
    opt.shape = (finch_shape)(c % FINCH_SHAPE_COUNT);
    opt.skip_bad = c & 8;
    opt.templates.chat = c & 16;
    if (c & 32) {
        opt.templates.prompts = templates;
        opt.templates.n = c & 64 ? 2 : 1;
    }
    opt.seed = c;
    opt.tok = tok;
    finch_dataset *d = NULL;
    finch_err err;
    if (finch_dataset_parse((const char *)data + 1, size - 1, "fuzz.jsonl", &opt, &d, &err) ==
        FINCH_OK) {
        check(d, opt.shape);
        finch_dataset_free(d);
    } else {
        if (d) abort();
        if (strncmp(err.msg, "fuzz.jsonl", 10)) {
            fprintf(stderr, "fuzz_jsonl: message does not name the file: %s\n", err.msg);
            abort();
        }
    }
    return 0;
}
