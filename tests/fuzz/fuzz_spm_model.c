/*
 * fuzz_spm_model.c: libFuzzer target for a SentencePiece model file (tokenizer.model, the
 * protobuf ModelProto finch reads for the piece scores; tokenizer/spm_model.c). The input
 * is the file. A parse that succeeds must give at least one piece, each a non-empty
 * NUL-terminated text inside the blob, a finite score and a type in 1..6; a parse that
 * fails must return FINCH_E_FORMAT (or FINCH_E_NOMEM) with a message naming the file and,
 * unless the file has no pieces, a byte offset inside it.
 *
 * Built as fuzz_spm_model with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as
 * fuzz_spm_model_replay, which runs tests/fuzz/corpus/spm_model/ (a Llama-2-style BPE
 * model, a Unigram model, hand-made broken ones) as a test.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h" /* finch_spm_model_parse */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    finch_spm_model m;
    finch_err err;
    finch_status st = finch_spm_model_parse(data, size, "fuzz.model", &m, &err);
    if (st) {
        if (st != FINCH_E_FORMAT && st != FINCH_E_NOMEM) abort();
        if (st == FINCH_E_FORMAT && !strstr(err.msg, "fuzz.model")) abort();
        const char *at = strstr(err.msg, "at byte ");
        if (st == FINCH_E_FORMAT && !at && !strstr(err.msg, "no pieces")) abort();
        if (at && strtoull(at + 8, NULL, 10) > size) abort();
        if (m.n || m.blob || m.off || m.score || m.type) abort();
        return 0;
    }
    if (m.n <= 0 || m.off[0] != 0) abort();
    for (int32_t i = 0; i < m.n; i++) {
        if (m.off[i + 1] <= m.off[i] + 1 || m.off[i + 1] - m.off[i] - 1 > size) abort();
        if (m.blob[m.off[i + 1] - 1] != 0) abort();
        if (!isfinite(m.score[i]) || m.type[i] < 1 || m.type[i] > 6) abort();
    }
    if (m.model_type < 0 || m.model_type > 4) abort();
    finch_spm_model_free(&m);
    return 0;
}
