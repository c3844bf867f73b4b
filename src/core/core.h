/*
 * core.h: what every module of finch rests on: errors and assertions, logging,
 * overflow-checked sizes, allocation, half-precision conversion, the storage-type table,
 * read-only file mapping, atomic file writes, and the random generator.
 *
 * Bugs (broken internal contracts) abort through FINCH_ASSERT; bad input returns a
 * finch_status with a message in the caller's finch_err (see STYLE.md, section 3).
 */
#ifndef FINCH_CORE_H
#define FINCH_CORE_H

#include "finch.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- assertions and errors ---------------------------------------------------------- */

/* Aborts with file, line and condition when cond is false, in every build. For internal
 * contracts only, never for anything that came from a file, a flag or a dataset. */
#define FINCH_ASSERT(cond)                                                                         \
    do {                                                                                           \
        if (!(cond)) finch_assert_fail(__FILE__, __LINE__, #cond);                                 \
    } while (0)

_Noreturn void finch_assert_fail(const char *file, int line, const char *cond);

/* Fills err (which may be NULL) with code and the formatted message; returns code, so a
 * failure is one line: return finch_err_set(err, FINCH_E_FORMAT, "...", ...). */
finch_status finch_err_set(finch_err *err, finch_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "<context>: " to err's message, keeping the code. Returns err->code. */
finch_status finch_err_prefix(finch_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sends a message to the installed log callback, if any. */
void finch_log(finch_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- sizes and allocation ----------------------------------------------------------- */

/* *out = a * b (or a + b); false on overflow, *out untouched then. */
static inline bool finch_size_mul(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) return false;
    *out = r;
    return true;
}
static inline bool finch_size_add(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_add_overflow(a, b, &r)) return false;
    *out = r;
    return true;
}

/* malloc/calloc that report failure as FINCH_E_NOMEM with what was being allocated.
 * Return NULL on failure (err filled). Memory is released with free(). */
void *finch_alloc(size_t bytes, const char *what, finch_err *err);
void *finch_calloc(size_t n, size_t size, const char *what, finch_err *err);

/* 64-byte aligned allocation for kernel buffers; release with finch_afree. */
void *finch_aalloc(size_t bytes, const char *what, finch_err *err);
void finch_afree(void *p);

/* malloc, calloc, realloc and strdup with libc's contract (NULL on failure, release with
 * free()), for callers that report the failure themselves. Every allocation finch makes
 * goes through these or the three above, so the fault hook below reaches all of them
 * (jansson's too, which io/ routes here; PCRE2's internal allocations aside). */
void *finch_mem_alloc(size_t bytes);
void *finch_mem_calloc(size_t n, size_t size);
void *finch_mem_realloc(void *p, size_t bytes);
char *finch_mem_strdup(const char *s);

/* ---- fault injection (tests only) --------------------------------------------------- */

/* finch_fault_alloc_set(n) makes the n-th allocation from now on (1-based, counted over
 * every function above) fail as if memory were exhausted; 0 turns it off. The count of
 * allocations since the last call is finch_fault_alloc_count(). finch_fault_write_set(n)
 * does the same for writes (finch_fwrite, the flush of finch_file_commit, and
 * finch_file_append): the n-th fails with ENOSPC, "No space left on device". The counters
 * are process-wide and atomic; only tests call these (a sweep over n proves that every
 * failure point returns a clean error). */
void finch_fault_alloc_set(int64_t n);
int64_t finch_fault_alloc_count(void);
void finch_fault_write_set(int64_t n);
int64_t finch_fault_write_count(void);
/* True when the write about to happen is the one set to fail (errno is then ENOSPC). */
bool finch_fault_write_hit(void);

/* ---- half precision ----------------------------------------------------------------- */

/* IEEE binary16 <-> binary32, exact both ways for representable values; f32->f16
 * rounds to nearest even. The _soft versions are portable bit manipulation; the inline
 * ones use the CPU's F16C instructions when the build targets them (same results for every
 * non-NaN value, which tests/core checks; NaN payloads may differ, NaN stays NaN). */
float finch_f16_to_f32_soft(uint16_t h);
uint16_t finch_f32_to_f16_soft(float f);
#if defined(__F16C__)
#include <immintrin.h>
static inline float finch_f16_to_f32(uint16_t h) {
    return _cvtsh_ss(h);
}
static inline uint16_t finch_f32_to_f16(float f) {
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#else
static inline float finch_f16_to_f32(uint16_t h) {
    return finch_f16_to_f32_soft(h);
}
static inline uint16_t finch_f32_to_f16(float f) {
    return finch_f32_to_f16_soft(f);
}
#endif

/* bfloat16 is the top half of a float32; to bf16 rounds to nearest even, NaN quieted. */
static inline float finch_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t finch_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* ---- storage types ------------------------------------------------------------------ */

/* Storage types. The values below FINCH_DTYPE_GGML_COUNT are ggml's type ids, as stored in
 * GGUF files; types finch does not implement have no entry in finch_dtype_info (name ==
 * NULL). finch's own types follow (NF4: bitsandbytes' 4-bit NormalFloat, quant.h); they
 * never appear in a GGUF file. */
typedef enum {
    FINCH_DTYPE_F32 = 0,
    FINCH_DTYPE_F16 = 1,
    FINCH_DTYPE_Q4_0 = 2,
    FINCH_DTYPE_Q4_1 = 3,
    FINCH_DTYPE_Q5_0 = 6,
    FINCH_DTYPE_Q5_1 = 7,
    FINCH_DTYPE_Q8_0 = 8,
    FINCH_DTYPE_Q2_K = 10,
    FINCH_DTYPE_Q3_K = 11,
    FINCH_DTYPE_Q4_K = 12,
    FINCH_DTYPE_Q5_K = 13,
    FINCH_DTYPE_Q6_K = 14,
    FINCH_DTYPE_Q8_K = 15,
    FINCH_DTYPE_I8 = 24,
    FINCH_DTYPE_I16 = 25,
    FINCH_DTYPE_I32 = 26,
    FINCH_DTYPE_I64 = 27,
    FINCH_DTYPE_F64 = 28,
    FINCH_DTYPE_BF16 = 30,
    FINCH_DTYPE_GGML_COUNT = 43, /* ggml's GGML_TYPE_COUNT in the build FORMATS.md describes */
    FINCH_DTYPE_NF4 = 43,        /* finch's own: NF4 blocks of 64 (quant.h) */
    FINCH_DTYPE_COUNT = 44
} finch_dtype;

/* Converts n elements (a multiple of block_elems) from storage to f32. */
typedef void (*finch_dequant_fn)(float *dst, const void *src, int64_t n);
/* Converts n f32 elements (a multiple of block_elems) to storage, with the reference
 * (llama.cpp-compatible) quantizer. */
typedef void (*finch_quant_fn)(void *dst, const float *src, int64_t n);

typedef struct {
    const char *name;         /* "q4_1"; NULL for a type finch does not know */
    int block_elems;          /* elements per block (1 for plain types) */
    int block_bytes;          /* bytes per block */
    finch_dequant_fn dequant; /* NULL when finch cannot read this type as weights */
    finch_quant_fn quant;     /* NULL when finch cannot write it */
} finch_dtype_traits;

extern const finch_dtype_traits finch_dtype_info[FINCH_DTYPE_COUNT];

/* The traits of a type id read from a GGUF file, or NULL when the id is unknown, retired
 * or one of finch's own types (which no GGUF file holds). */
const finch_dtype_traits *finch_dtype_get(uint32_t id);

/* Bytes of one row of n elements; false when n is not a whole number of blocks or the
 * size overflows. */
bool finch_dtype_row_bytes(finch_dtype t, int64_t n, size_t *out);

/* ---- files -------------------------------------------------------------------------- */

/* A whole file mapped read-only. */
typedef struct {
    const uint8_t *data; /* the bytes, NULL when size is 0 */
    size_t size;         /* file size */
    char *path;          /* copy of the path, for messages */
} finch_mapped_file;

/* Maps path read-only. Directories, missing files and unreadable files are FINCH_E_IO
 * with the path and the reason. The caller owns *out's contents (finch_file_unmap). */
finch_status finch_file_map(const char *path, finch_mapped_file *out, finch_err *err);
void finch_file_unmap(finch_mapped_file *f);
/* Lets the kernel drop the mapping's pages from memory (they are read again from the file
 * when touched): for a model whose weights were all copied out. */
void finch_file_evict(const finch_mapped_file *f);
/* The same for the whole pages of f's mapping inside [p, p + n); nothing when that range
 * is not within the mapping (memory of another kind must never be dropped). */
void finch_file_evict_range(const finch_mapped_file *f, const void *p, size_t n);

/* Writes a file atomically: the writer callback fills a temp file in the same directory,
 * which is flushed, fsync'ed, renamed over path, and the directory fsync'ed. On any
 * failure the temp file is removed and path keeps its previous contents. */
typedef finch_status (*finch_write_fn)(FILE *f, void *user, finch_err *err);
finch_status finch_file_commit(const char *path, finch_write_fn write, void *user, finch_err *err);

/* Creates directory path and its missing parents (like mkdir -p); FINCH_E_IO naming the
 * part that could not be made. An existing directory is fine. */
finch_status finch_mkdir_p(const char *path, finch_err *err);

/* Writes n bytes to f, FINCH_E_IO with path on a short write. */
finch_status finch_fwrite(FILE *f, const void *p, size_t n, const char *path, finch_err *err);

/* A log file that grows by whole records (metrics.jsonl): each finch_file_append writes
 * one record with write(2) in append mode, and a record that fails part-way (a full disk)
 * is cut off again, so the file always ends at a record boundary. */
typedef struct {
    int fd;     /* open for appending; -1 when closed */
    char *path; /* copy of the path, for messages */
} finch_append_file;

/* Opens path for appending (created 0644 if missing; emptied first when truncate).
 * FINCH_E_IO with the path and reason. Close with finch_file_append_close. */
finch_status finch_file_append_open(const char *path, bool truncate, finch_append_file *out,
                                    finch_err *err);
/* Appends n bytes as one record: FINCH_E_IO naming the file when they cannot all be
 * written, the file then as it was before the call. */
finch_status finch_file_append(finch_append_file *f, const void *p, size_t n, finch_err *err);
/* Closes f (NULL-safe, and safe on a zeroed or closed struct). */
void finch_file_append_close(finch_append_file *f);

/* ---- random numbers ----------------------------------------------------------------- */

/* xoshiro256** seeded through splitmix64: explicit state, no globals. */
typedef struct {
    uint64_t s[4];
} finch_rng;

void finch_rng_seed(finch_rng *r, uint64_t seed);
uint64_t finch_rng_u64(finch_rng *r);
/* splitmix64's finalizer: a stateless 64-bit mix, for seeds and hashed random masks
 * derived from (seed, step, index) without keeping generator state. */
static inline uint64_t finch_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 bits of precision. */
float finch_rng_float(finch_rng *r);
/* Standard normal (Box-Muller over two draws). */
float finch_rng_normal(finch_rng *r);

/* ---- threads ------------------------------------------------------------------------ */

/* The thread count kernels use (finch_threads_set). */
int finch_threads_get(void);

#endif /* FINCH_CORE_H */
