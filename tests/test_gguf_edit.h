/*
 * test_gguf_edit.h: helpers of the tests that write a variant of a fixture GGUF (another
 * FFN width, other heads, rounded projections): new weight values from a 64-bit LCG, and
 * the writer saved with the new tensors' buffers freed. Include after cmocka.h.
 */
#ifndef FINCH_TEST_GGUF_EDIT_H
#define FINCH_TEST_GGUF_EDIT_H

#include <stdint.h>
#include <stdlib.h>

#include "io/io.h"

/* A uniform value in [-0.2, 0.2) from a 64-bit LCG. */
static inline float lcg_weight(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 0.4 - 0.2);
}

/* Saves w to path, then frees w, the nt buffers of bufs (NULL entries allowed) and bufs,
 * and closes the source file g. */
static inline void gguf_edit_save(finch_gguf_writer *w, const char *path, void **bufs, int64_t nt,
                                  finch_gguf *g) {
    finch_err err;
    if (finch_gguf_writer_save(w, path, &err)) fail_msg("%s", err.msg);
    finch_gguf_writer_free(w);
    for (int64_t i = 0; i < nt; i++) free(bufs[i]);
    free(bufs);
    finch_gguf_close(g);
}

#endif /* FINCH_TEST_GGUF_EDIT_H */
