/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors reader. Parses the input with
 * finch_st_open_memory; on success walks every tensor (lookup by name, name order, size
 * consistency, first and last byte of its data, that the tensors tile the data section)
 * and every metadata pair, and when the input is small writes the file back with the
 * finch writer and reads it again, which must give the same tensors. On failure the
 * message must name the input and, for format errors, a byte offset.
 *
 * Built as fuzz_safetensors with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as
 * fuzz_safetensors_replay, which runs tests/fuzz/corpus/safetensors/ as a test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A sink the optimiser cannot remove: every byte the reader exposes is read. */
static volatile uint64_t sink;

static void walk(const finch_st *st, const uint8_t *data, size_t size) {
    uint64_t total = 0;
    for (int64_t i = 0; i < finch_st_n_tensors(st); i++) {
        const finch_st_tensor *t = finch_st_tensor_at(st, i);
        if (finch_st_find(st, t->name) != t) abort();
        if (i && strcmp(finch_st_tensor_at(st, i - 1)->name, t->name) >= 0) abort();
        if (t->n_dims < 0 || t->n_dims > FINCH_ST_MAX_DIMS) abort();
        uint64_t elems = 1;
        for (int k = 0; k < t->n_dims; k++) elems *= (uint64_t)t->shape[k];
        if (elems != t->n_elems) abort();
        if (t->nbytes != t->n_elems * (uint64_t)finch_st_dtype_size(t->dtype)) abort();
        if (t->data < data || t->nbytes > size || t->data + t->nbytes > data + size) abort();
        if (t->nbytes) sink += t->data[0] + t->data[t->nbytes - 1];
        total += t->nbytes;
    }
    for (int64_t i = 0; i < finch_st_n_meta(st); i++) {
        const char *k, *v;
        finch_st_meta_at(st, i, &k, &v);
        if (finch_st_get_meta(st, k) != v) abort();
        sink += strlen(k) + strlen(v);
    }
    /* the tensors cover the data section exactly */
    uint64_t header = 0;
    for (int k = 7; k >= 0; k--) header = header << 8 | data[k];
    if (8 + header + total != size) abort();
}

/* Writes st back with the finch writer and reads the result: same tensors, same bytes. */
static void rewrite(const finch_st *st) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_safetensors.%ld.safetensors", (long)getpid());
    finch_err err;
    finch_st_writer *w = finch_st_writer_new(&err);
    if (!w) return;
    for (int64_t i = 0; i < finch_st_n_tensors(st); i++) {
        const finch_st_tensor *t = finch_st_tensor_at(st, i);
        if (finch_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, t->data, &err)) {
            /* only names the writer refuses: empty or "__metadata__"-free already; empty */
            if (t->name[0]) abort();
            goto done;
        }
    }
    for (int64_t i = 0; i < finch_st_n_meta(st); i++) {
        const char *k, *v;
        finch_st_meta_at(st, i, &k, &v);
        if (finch_st_writer_set_meta(w, k, v, &err)) abort();
    }
    if (finch_st_writer_save(w, path, &err)) goto done;
    finch_st *back = NULL;
    if (finch_st_open(path, &back, &err)) abort();
    if (finch_st_n_tensors(back) != finch_st_n_tensors(st)) abort();
    if (finch_st_n_meta(back) != finch_st_n_meta(st)) abort();
    for (int64_t i = 0; i < finch_st_n_tensors(st); i++) {
        const finch_st_tensor *a = finch_st_tensor_at(st, i), *b = finch_st_tensor_at(back, i);
        if (strcmp(a->name, b->name) || a->dtype != b->dtype || a->n_dims != b->n_dims ||
            a->nbytes != b->nbytes || memcmp(a->shape, b->shape, sizeof a->shape) ||
            (a->nbytes && memcmp(a->data, b->data, a->nbytes)))
            abort();
    }
    finch_st_close(back);
    remove(path);
done:
    finch_st_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    finch_st *st = NULL;
    finch_err err;
    memset(&err, 0, sizeof err);
    if (finch_st_open_memory(data, size, "fuzz.safetensors", &st, &err) != FINCH_OK) {
        if (strncmp(err.msg, "fuzz.safetensors: offset 0x", 27) != 0) abort();
        if (st) abort();
        return 0;
    }
    walk(st, data, size);
    if (size <= 4096) rewrite(st);
    finch_st_close(st);
    return 0;
}
