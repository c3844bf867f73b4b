/*
 * state_io.c: AdamW's state (m, v and the step count) as a small versioned binary record
 * inside a stream, so a checkpoint writer can embed it between its own sections. The
 * layout is drawn in optim.h.
 *
 * It does not open, commit or fsync files: the checkpoint writer owns the stream and
 * writes it through finch_file_commit. Offsets in messages count from the record's first
 * byte. finch targets little-endian hosts only (asserted at compile time), so floats are
 * written as they lie in memory.
 */
#include "optim.h"

#include <math.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "optimizer state is little-endian");
_Static_assert(sizeof(float) == 4, "float32");

static const char MAGIC[8] = {'F', 'I', 'N', 'C', 'H', 'O', 'P', 'T'};
enum { HEADER_BYTES = 32 };

size_t finch_optim_state_size(size_t n) {
    size_t data;
    FINCH_ASSERT(finch_size_mul(n, 8, &data) && finch_size_add(data, HEADER_BYTES, &data));
    return data;
}

finch_status finch_optim_state_save(FILE *f, const char *name, const float *m, const float *v,
                                    size_t n, int64_t step, finch_err *err) {
    FINCH_ASSERT(f && name && (n == 0 || (m && v)) && step >= 0);
    uint8_t h[HEADER_BYTES];
    uint32_t version = FINCH_OPTIM_STATE_VERSION, elem = 4;
    uint64_t n64 = n;
    memcpy(h, MAGIC, 8);
    memcpy(h + 8, &version, 4);
    memcpy(h + 12, &elem, 4);
    memcpy(h + 16, &n64, 8);
    memcpy(h + 24, &step, 8);
    finch_status st = finch_fwrite(f, h, sizeof h, name, err);
    if (st == FINCH_OK) st = finch_fwrite(f, m, n * sizeof *m, name, err);
    if (st == FINCH_OK) st = finch_fwrite(f, v, n * sizeof *v, name, err);
    if (st != FINCH_OK) finch_err_prefix(err, "writing optimizer state");
    return st;
}

/* Reads exactly bytes at record offset *off, or reports how far the record got. */
static finch_status read_exact(FILE *f, const char *name, void *p, size_t bytes, size_t *off,
                               const char *what, finch_err *err) {
    size_t got = bytes ? fread(p, 1, bytes, f) : 0;
    if (got != bytes) {
        if (ferror(f))
            return finch_err_set(err, FINCH_E_IO, "%s: optimizer state: read failed at offset %zu",
                                 name, *off + got);
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: optimizer state: offset %zu: truncated in %s (%zu of %zu bytes)",
                             name, *off + got, what, got, bytes);
    }
    *off += bytes;
    return FINCH_OK;
}

finch_status finch_optim_state_load(FILE *f, const char *name, float *m, float *v, size_t n,
                                    int64_t *step, finch_err *err) {
    FINCH_ASSERT(f && name && (n == 0 || (m && v)) && step);
    uint8_t h[HEADER_BYTES];
    size_t off = 0;
    finch_status st = read_exact(f, name, h, sizeof h, &off, "the header", err);
    if (st != FINCH_OK) return st;
    uint32_t version, elem;
    uint64_t n64;
    int64_t s;
    memcpy(&version, h + 8, 4);
    memcpy(&elem, h + 12, 4);
    memcpy(&n64, h + 16, 8);
    memcpy(&s, h + 24, 8);
    if (memcmp(h, MAGIC, 8) != 0)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: optimizer state: offset 0: magic is not \"FINCHOPT\"", name);
    if (version != FINCH_OPTIM_STATE_VERSION)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: optimizer state: offset 8: version %u, this build reads %u", name,
                             version, FINCH_OPTIM_STATE_VERSION);
    if (elem != 4)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: optimizer state: offset 12: %u bytes per element, expected 4",
                             name, elem);
    if (n64 != (uint64_t)n)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: optimizer state: offset 16: %llu floats per moment, this run "
                             "trains %zu (a checkpoint of another model or method?)",
                             name, (unsigned long long)n64, n);
    if (s < 0)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: optimizer state: offset 24: step %lld is negative", name,
                             (long long)s);
    st = read_exact(f, name, m, n * sizeof *m, &off, "m", err);
    if (st == FINCH_OK) st = read_exact(f, name, v, n * sizeof *v, &off, "v", err);
    if (st != FINCH_OK) return st;
    for (size_t i = 0; i < n; i++) {
        /* v is a running mean of squares: negative or NaN means corruption, and would
         * turn every later update into NaN. */
        if (!(v[i] >= 0.0f))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: optimizer state: offset %zu: v[%zu] = %g, must be >= 0", name,
                                 HEADER_BYTES + 4 * n + 4 * i, i, (double)v[i]);
    }
    *step = s;
    return FINCH_OK;
}
