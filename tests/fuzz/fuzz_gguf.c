/*
 * fuzz_gguf.c: libFuzzer target for the GGUF reader. Parses the input with
 * finch_gguf_open_memory; on success walks every pair (values, array elements, strings,
 * the typed getters) and every tensor (lookup by name, size consistency, dequantization of
 * its first row when finch can read the type), so any pointer or size the reader hands out
 * is exercised under AddressSanitizer. On failure the message must name the input.
 *
 * Built as fuzz_gguf with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as
 * fuzz_gguf_replay, which runs the committed corpus (tests/fuzz/corpus/gguf/) as a test.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h" /* finch_dtype_info, finch_dtype_row_bytes */
#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A sink the optimiser cannot remove: every byte the reader exposes is read. */
static volatile uint64_t sink;

static void walk_kv(const finch_gguf *g, const finch_gguf_kv *kv) {
    finch_err err;
    uint32_t u32;
    int64_t i64;
    float f32;
    bool b;
    finch_str s;
    const finch_gguf_kv *arr;
    if (finch_gguf_find_kv(g, kv->key) != kv) abort();
    sink += strlen(kv->key) + kv->type + (uint64_t)kv->v.u;
    (void)finch_gguf_get_u32(g, kv->key, true, &u32, &err);
    (void)finch_gguf_get_i64(g, kv->key, true, &i64, &err);
    (void)finch_gguf_get_f32(g, kv->key, true, &f32, &err);
    (void)finch_gguf_get_bool(g, kv->key, true, &b, &err);
    if (finch_gguf_get_str(g, kv->key, true, &s, &err) == FINCH_OK && s.len)
        sink += (uint8_t)s.ptr[0] + (uint8_t)s.ptr[s.len - 1];
    if (finch_gguf_get_arr(g, kv->key, kv->arr_type, true, &arr, &err) != FINCH_OK) return;
    if (kv->arr_type == FINCH_GGUF_STRING) {
        for (uint64_t k = 0; k < kv->arr_n; k++) {
            const finch_str *e = &kv->arr_str[k];
            if (e->len) sink += (uint8_t)e->ptr[0] + (uint8_t)e->ptr[e->len - 1];
        }
    } else if (kv->arr_n) {
        /* first and last byte of the element data */
        static const uint8_t elem_bytes[FINCH_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1,
                                                                  0, 0, 8, 8, 8};
        size_t n = kv->arr_n * elem_bytes[kv->arr_type];
        sink += kv->arr_data[0] + kv->arr_data[n - 1];
    }
}

static void walk_tensor(const finch_gguf *g, const finch_gguf_tensor *t) {
    if (finch_gguf_find_tensor(g, t->name) != t) abort();
    if (t->n_dims < 1 || t->n_dims > FINCH_GGUF_MAX_DIMS) abort();
    size_t row_bytes;
    if (!finch_dtype_row_bytes(t->type, t->ne[0], &row_bytes)) abort();
    if (t->nbytes == 0) return;
    sink += t->data[0] + t->data[t->nbytes - 1];
    const finch_dtype_traits *tr = &finch_dtype_info[t->type];
    if (row_bytes > t->nbytes) abort(); /* a non-empty tensor holds at least one row */
    if (!tr->dequant) return;             /* i8..f64, q8_k: valid in files, not weights */
    float *row = malloc((size_t)t->ne[0] * sizeof *row);
    if (!row) return;
    tr->dequant(row, t->data, t->ne[0]);
    uint32_t bits;
    memcpy(&bits, &row[t->ne[0] - 1], 4);
    sink += bits;
    free(row);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    finch_gguf *g = NULL;
    finch_err err;
    memset(&err, 0, sizeof err);
    if (finch_gguf_open_memory(data, size, "fuzz.gguf", &g, &err) != FINCH_OK) {
        /* a failure says where: the name and, for format errors, the offset */
        if (strncmp(err.msg, "fuzz.gguf", 9) != 0) abort();
        if (err.code == FINCH_E_FORMAT && !strstr(err.msg, "offset 0x")) abort();
        if (g) abort();
        return 0;
    }
    for (int64_t i = 0; i < finch_gguf_n_kv(g); i++) walk_kv(g, finch_gguf_kv_at(g, i));
    for (int64_t i = 0; i < finch_gguf_n_tensors(g); i++)
        walk_tensor(g, finch_gguf_tensor_at(g, i));
    sink += finch_gguf_version(g) + finch_gguf_alignment(g);
    finch_gguf_close(g);
    return 0;
}
