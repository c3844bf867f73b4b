/*
 * gguf.c: GGUF reader (versions 2 and 3) and writer (version 3).
 *
 * The reader parses a read-only mapping (or a caller's buffer) front to back: header,
 * key/value pairs, tensor infos, then each tensor's data range. Every read goes through a
 * cursor that checks the bytes are there first; every count is compared with the bytes
 * left before anything is allocated, so a hostile count fails at once instead of
 * allocating; every size derived from the file is overflow-checked. Errors name the file,
 * the byte offset of the offending field and the field, and the code is FINCH_E_FORMAT.
 * Strings and non-string arrays stay in the mapping; only keys, tensor names and the
 * views of string arrays are copied.
 *
 * The writer keeps keys (already encoded) and borrowed tensor data in memory and lays the
 * file out at save time: tensors in the order added, offsets contiguous with padding to
 * the alignment (32 unless general.alignment is set), padding after the last tensor, as
 * both ggml and the PyPI gguf writer do, so llama.cpp's strict offset check passes.
 *
 * Deliberately not here: byte-order conversion (big-endian files carry no marker; their
 * byte-swapped version is detected and rejected), the meaning of keys (model/ and
 * tokenizer/ read them through the typed getters), and ggml's demand that offsets be
 * exactly contiguous: the reader accepts gaps and checks alignment, bounds and overlap.
 *
 * Facts: FORMATS.md sections 1 and 8 (layout, value types, tensor-info rules, alignment,
 * the KV types llama.cpp expects).
 */
#include "io/io.h" /* finch_gguf_*, finch_file_map, finch_file_commit, finch_dtype_get */

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_ALIGNMENT_KEY "general.alignment"
/* The smallest alignment accepted. ggml takes any power of two, the GGUF spec asks for a
 * multiple of 8; below 8 a tensor's data could sit at an address its type cannot be read
 * from (an fp16 scale at an odd address, an f32 at a multiple of 2), so such files are
 * rejected and every tensor's data is 8-byte aligned in memory. */
#define GGUF_MIN_ALIGNMENT 8u

/* The fewest bytes a key/value pair (8-byte length, a 1-byte key, 4-byte type, a 1-byte
 * value) and a tensor info (8-byte length, empty name, n_dims, one dim, type, offset)
 * can occupy: a count larger than the remaining bytes allow is rejected before any
 * allocation. */
#define GGUF_MIN_KV_BYTES 14u
#define GGUF_MIN_TENSOR_INFO_BYTES 32u

/* ---- value types -------------------------------------------------------------------- */

static const char *const type_names[FINCH_GGUF_TYPE_COUNT] = {
    [FINCH_GGUF_UINT8] = "uint8",     [FINCH_GGUF_INT8] = "int8",
    [FINCH_GGUF_UINT16] = "uint16",   [FINCH_GGUF_INT16] = "int16",
    [FINCH_GGUF_UINT32] = "uint32",   [FINCH_GGUF_INT32] = "int32",
    [FINCH_GGUF_FLOAT32] = "float32", [FINCH_GGUF_BOOL] = "bool",
    [FINCH_GGUF_STRING] = "string",   [FINCH_GGUF_ARRAY] = "array",
    [FINCH_GGUF_UINT64] = "uint64",   [FINCH_GGUF_INT64] = "int64",
    [FINCH_GGUF_FLOAT64] = "float64",
};

/* Bytes of one scalar of each type; 0 for STRING and ARRAY, whose size is variable. */
static const uint8_t scalar_bytes[FINCH_GGUF_TYPE_COUNT] = {
    [FINCH_GGUF_UINT8] = 1,   [FINCH_GGUF_INT8] = 1,    [FINCH_GGUF_UINT16] = 2,
    [FINCH_GGUF_INT16] = 2,   [FINCH_GGUF_UINT32] = 4,  [FINCH_GGUF_INT32] = 4,
    [FINCH_GGUF_FLOAT32] = 4, [FINCH_GGUF_BOOL] = 1,    [FINCH_GGUF_UINT64] = 8,
    [FINCH_GGUF_INT64] = 8,   [FINCH_GGUF_FLOAT64] = 8,
};

const char *finch_gguf_type_name(uint32_t type) {
    return type < FINCH_GGUF_TYPE_COUNT ? type_names[type] : "unknown";
}

static bool type_is_uint(finch_gguf_type t) {
    return t == FINCH_GGUF_UINT8 || t == FINCH_GGUF_UINT16 || t == FINCH_GGUF_UINT32 ||
           t == FINCH_GGUF_UINT64;
}

static bool type_is_sint(finch_gguf_type t) {
    return t == FINCH_GGUF_INT8 || t == FINCH_GGUF_INT16 || t == FINCH_GGUF_INT32 ||
           t == FINCH_GGUF_INT64;
}

static uint64_t load_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; k--) v = (v << 8) | p[k];
    return v;
}

static void store_le(uint8_t *p, uint64_t v, int n) {
    for (int k = 0; k < n; k++) p[k] = (uint8_t)(v >> (8 * k));
}

/* Decodes one little-endian scalar of type t into kv's union. */
static void decode_scalar(finch_gguf_kv *kv, const uint8_t *p) {
    const int n = scalar_bytes[kv->type];
    const uint64_t raw = load_le(p, n);
    switch (kv->type) {
    case FINCH_GGUF_UINT8:
    case FINCH_GGUF_UINT16:
    case FINCH_GGUF_UINT32:
    case FINCH_GGUF_UINT64:
        kv->v.u = raw;
        break;
    case FINCH_GGUF_INT8:
        kv->v.i = (int8_t)raw;
        break;
    case FINCH_GGUF_INT16:
        kv->v.i = (int16_t)raw;
        break;
    case FINCH_GGUF_INT32:
        kv->v.i = (int32_t)raw;
        break;
    case FINCH_GGUF_INT64:
        kv->v.i = (int64_t)raw;
        break;
    case FINCH_GGUF_FLOAT32: {
        uint32_t bits = (uint32_t)raw;
        float f;
        memcpy(&f, &bits, 4);
        kv->v.f = f;
        break;
    }
    case FINCH_GGUF_FLOAT64:
        memcpy(&kv->v.f, &raw, 8);
        break;
    case FINCH_GGUF_BOOL:
        kv->v.b = raw != 0;
        break;
    default:
        FINCH_ASSERT(!"not a scalar type");
    }
}

/* ---- a hash index over names -------------------------------------------------------- */

/* Open addressing over the names of an array of structs (keys or tensors): a slot holds
 * index + 1, 0 is empty. The capacity is a power of two at least twice the count, so a
 * probe always ends. The names are reached as *(char **)(base + i * stride + name_at),
 * which lets one index serve both finch_gguf_kv and the tensor structs. The hash is not
 * seeded, so a crafted file of colliding names makes loading slower, never wrong. */
typedef struct {
    uint64_t *slot;
    size_t cap;
} name_index;

static uint64_t hash_name(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t k = 0; k < n; k++) h = (h ^ (uint8_t)s[k]) * 0x100000001b3ull;
    return h;
}

static const char *name_of(const void *base, size_t stride, size_t name_at, uint64_t i) {
    const char *const *p = (const char *const *)((const char *)base + i * stride + name_at);
    return *p;
}

static bool index_init(name_index *ix, size_t n, finch_err *err) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    ix->slot = finch_calloc(cap, sizeof *ix->slot, "gguf name index", err);
    if (!ix->slot) return false;
    ix->cap = cap;
    return true;
}

static void index_free(name_index *ix) {
    free(ix->slot);
    ix->slot = NULL;
    ix->cap = 0;
}

/* The slot where name (n bytes) is, or the empty slot where it would go. */
static uint64_t *index_probe(const name_index *ix, const void *base, size_t stride, size_t name_at,
                             const char *name, size_t n) {
    size_t mask = ix->cap - 1, k = (size_t)hash_name(name, n) & mask;
    for (;; k = (k + 1) & mask) {
        uint64_t s = ix->slot[k];
        if (s == 0) return &ix->slot[k];
        const char *other = name_of(base, stride, name_at, s - 1);
        if (strlen(other) == n && memcmp(other, name, n) == 0) return &ix->slot[k];
    }
}

/* The index of name in the array, or -1. */
static int64_t index_find(const name_index *ix, const void *base, size_t stride, size_t name_at,
                          const char *name) {
    if (!ix->slot) return -1;
    uint64_t s = *index_probe(ix, base, stride, name_at, name, strlen(name));
    return s ? (int64_t)(s - 1) : -1;
}

/* ---- reader: the document ----------------------------------------------------------- */

struct finch_gguf {
    finch_mapped_file map; /* the mapping when opened from a path, else zeroed */
    const uint8_t *data;   /* the whole file */
    size_t size;           /* its size in bytes */
    char *path;            /* name for messages */
    uint32_t version;      /* 2 or 3 */
    uint32_t alignment;    /* general.alignment or 32 */
    size_t data_start;     /* file offset of the tensor data section */
    int64_t n_kv;          /* key/value pairs, in file order */
    finch_gguf_kv *kv;
    int64_t n_tensors; /* tensors, in file order */
    finch_gguf_tensor *tensors;
    name_index kv_index;     /* key -> index in kv */
    name_index tensor_index; /* name -> index in tensors */
};

#define KV_INDEX(g) (g)->kv, sizeof(finch_gguf_kv), offsetof(finch_gguf_kv, key)
#define TENSOR_INDEX(g) (g)->tensors, sizeof(finch_gguf_tensor), offsetof(finch_gguf_tensor, name)

/* ---- reader: the cursor ------------------------------------------------------------- */

/* Reading position in the buffer; every read checks the bytes exist before touching them. */
typedef struct {
    const uint8_t *base;
    size_t size;
    size_t off;
    const char *path;
    finch_err *err;
} cursor;

/* Fills err with "<path>: offset 0x<at>: <message>" and returns FINCH_E_FORMAT. */
static finch_status fail_at(const cursor *c, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static finch_status fail_at(const cursor *c, size_t at, const char *fmt, ...) {
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return finch_err_set(c->err, FINCH_E_FORMAT, "%s: offset 0x%zx: %s", c->path, at, msg);
}

static size_t left(const cursor *c) {
    return c->size - c->off;
}

/* Points *out at the next n bytes and moves past them; what names them in the message. */
static finch_status take(cursor *c, uint64_t n, const char *what, const uint8_t **out) {
    if (n > left(c)) {
        if (c->size == 0) return fail_at(c, 0, "file is empty, expected a GGUF header");
        return fail_at(c, c->off, "truncated: %s needs %" PRIu64 " bytes, %zu left", what, n,
                       left(c));
    }
    *out = c->base + c->off;
    c->off += (size_t)n;
    return FINCH_OK;
}

static finch_status read_u32(cursor *c, const char *what, uint32_t *out) {
    const uint8_t *p;
    finch_status st = take(c, 4, what, &p);
    if (st == FINCH_OK) *out = (uint32_t)load_le(p, 4);
    return st;
}

static finch_status read_u64(cursor *c, const char *what, uint64_t *out) {
    const uint8_t *p;
    finch_status st = take(c, 8, what, &p);
    if (st == FINCH_OK) *out = load_le(p, 8);
    return st;
}

/* A u64 length then that many bytes, at most max; the view points into the buffer. */
static finch_status read_str(cursor *c, const char *what, uint64_t max, finch_str *out) {
    const size_t at = c->off;
    uint64_t len;
    const uint8_t *p;
    finch_status st = read_u64(c, what, &len);
    if (st) return st;
    if (len > max)
        return fail_at(c, at, "%s of %" PRIu64 " bytes, at most %" PRIu64, what, len, max);
    if ((st = take(c, len, what, &p))) return st;
    out->ptr = (const char *)p;
    out->len = len;
    return FINCH_OK;
}

/* A NUL-terminated copy of a name read from the file, which must not contain NUL. */
static finch_status copy_name(const cursor *c, size_t at, const char *what, finch_str s,
                              char **out) {
    if (memchr(s.ptr, 0, s.len))
        return fail_at(c, at, "%s '%.*s' contains a NUL byte", what, (int)strnlen(s.ptr, 64),
                       s.ptr);
    char *copy = finch_alloc(s.len + 1, "gguf name", c->err);
    if (!copy) return FINCH_E_NOMEM;
    memcpy(copy, s.ptr, s.len);
    copy[s.len] = 0;
    *out = copy;
    return FINCH_OK;
}

/* ---- reader: key/value pairs -------------------------------------------------------- */

/* Reads the elements of an array whose element type has been read into kv->arr_type. */
static finch_status read_array(cursor *c, finch_gguf_kv *kv) {
    const size_t at = c->off;
    finch_status st = read_u64(c, "array length", &kv->arr_n);
    if (st) return st;
    if (kv->arr_n > FINCH_GGUF_MAX_STRING)
        return fail_at(c, at, "key '%s': array of %" PRIu64 " elements, at most %u", kv->key,
                       kv->arr_n, FINCH_GGUF_MAX_STRING);
    if (kv->arr_type == FINCH_GGUF_STRING) {
        /* each string takes at least its 8-byte length: check before allocating */
        if (kv->arr_n > left(c) / 8)
            return fail_at(c, at,
                           "key '%s': array of %" PRIu64 " strings needs at least %" PRIu64
                           " bytes, %zu left",
                           kv->key, kv->arr_n, kv->arr_n * 8, left(c));
        if (kv->arr_n) {
            kv->arr_str = finch_calloc(kv->arr_n, sizeof *kv->arr_str, "gguf string array", c->err);
            if (!kv->arr_str) return FINCH_E_NOMEM;
        }
        for (uint64_t k = 0; k < kv->arr_n; k++)
            if ((st = read_str(c, "array string", FINCH_GGUF_MAX_STRING, &kv->arr_str[k])))
                return st;
        return FINCH_OK;
    }
    const size_t elem = scalar_bytes[kv->arr_type];
    if ((st = take(c, kv->arr_n * elem, "array data", &kv->arr_data))) return st;
    if (kv->arr_type == FINCH_GGUF_BOOL)
        for (uint64_t k = 0; k < kv->arr_n; k++)
            if (kv->arr_data[k] > 1)
                return fail_at(c, at + 8 + k,
                               "key '%s': bool array element %" PRIu64 " is %u, expected 0 or 1",
                               kv->key, k, kv->arr_data[k]);
    return FINCH_OK;
}

static finch_status read_kv(cursor *c, finch_gguf *g, finch_gguf_kv *kv) {
    const size_t at = c->off;
    finch_str key;
    uint32_t type;
    finch_status st = read_str(c, "key", FINCH_GGUF_MAX_KEY, &key);
    if (st) return st;
    kv->file_offset = at;
    if (key.len == 0) return fail_at(c, at, "empty key");
    if ((st = copy_name(c, at, "key", key, &kv->key))) return st;
    uint64_t *slot = index_probe(&g->kv_index, KV_INDEX(g), kv->key, key.len);
    if (*slot) return fail_at(c, at, "duplicate key '%s'", kv->key);

    const size_t type_at = c->off;
    if ((st = read_u32(c, "value type", &type))) return st;
    if (type >= FINCH_GGUF_TYPE_COUNT)
        return fail_at(c, type_at, "key '%s': unknown value type %u", kv->key, type);
    kv->type = (finch_gguf_type)type;

    const size_t value_at = c->off;
    if (kv->type == FINCH_GGUF_ARRAY) {
        if ((st = read_u32(c, "array element type", &type))) return st;
        if (type == FINCH_GGUF_ARRAY)
            return fail_at(c, value_at, "key '%s': nested arrays are not supported", kv->key);
        if (type >= FINCH_GGUF_TYPE_COUNT)
            return fail_at(c, value_at, "key '%s': unknown array element type %u", kv->key, type);
        kv->arr_type = (finch_gguf_type)type;
        if ((st = read_array(c, kv))) return st;
    } else if (kv->type == FINCH_GGUF_STRING) {
        if ((st = read_str(c, "string value", FINCH_GGUF_MAX_STRING, &kv->v.str))) return st;
    } else {
        const uint8_t *p;
        if ((st = take(c, scalar_bytes[kv->type], "value", &p))) return st;
        if (kv->type == FINCH_GGUF_BOOL && p[0] > 1)
            return fail_at(c, value_at, "key '%s': bool value %u, expected 0 or 1", kv->key, p[0]);
        decode_scalar(kv, p);
    }

    if (strcmp(kv->key, GGUF_ALIGNMENT_KEY) == 0) {
        if (kv->type != FINCH_GGUF_UINT32)
            return fail_at(c, type_at, "key '%s' has type %s, expected uint32", kv->key,
                           finch_gguf_type_name(kv->type));
        if (kv->v.u < GGUF_MIN_ALIGNMENT || (kv->v.u & (kv->v.u - 1)))
            return fail_at(c, value_at,
                           "key '%s' is %" PRIu64 ", expected a power of two "
                           "of at least %u",
                           kv->key, kv->v.u, GGUF_MIN_ALIGNMENT);
        g->alignment = (uint32_t)kv->v.u;
    }
    /* the pair is complete: only now may lookups see it */
    *slot = (uint64_t)(kv - g->kv) + 1;
    return FINCH_OK;
}

/* ---- reader: tensor infos and data -------------------------------------------------- */

/* Where a tensor's bytes lie, for the overlap check, and where its info is, for messages. */
typedef struct {
    uint64_t begin, end; /* relative to the data section */
    size_t info_at;      /* file offset of the tensor's info */
    int64_t index;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static finch_status read_tensor_info(cursor *c, finch_gguf *g, finch_gguf_tensor *t, span *sp) {
    const size_t at = c->off;
    finch_str name;
    uint32_t n_dims, type;
    finch_status st = read_str(c, "tensor name", FINCH_GGUF_MAX_NAME, &name);
    if (st) return st;
    if ((st = copy_name(c, at, "tensor name", name, &t->name))) return st;
    uint64_t *slot = index_probe(&g->tensor_index, TENSOR_INDEX(g), t->name, name.len);
    if (*slot) return fail_at(c, at, "duplicate tensor name '%s'", t->name);

    size_t field_at = c->off;
    if ((st = read_u32(c, "tensor dimension count", &n_dims))) return st;
    if (n_dims == 0 || n_dims > FINCH_GGUF_MAX_DIMS)
        return fail_at(c, field_at, "tensor '%s': %u dimensions, expected 1 to %d", t->name, n_dims,
                       FINCH_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    int64_t n_elems = 1;
    for (int k = 0; k < FINCH_GGUF_MAX_DIMS; k++) t->ne[k] = 1;
    for (uint32_t k = 0; k < n_dims; k++) {
        uint64_t dim;
        field_at = c->off;
        if ((st = read_u64(c, "tensor dimension", &dim))) return st;
        if (dim > INT64_MAX)
            return fail_at(c, field_at, "tensor '%s': dimension %u is %" PRId64 ", expected >= 0",
                           t->name, k, (int64_t)dim);
        t->ne[k] = (int64_t)dim;
        if (__builtin_mul_overflow(n_elems, t->ne[k], &n_elems))
            return fail_at(c, field_at,
                           "tensor '%s': element count overflows int64 at "
                           "dimension %u (%" PRId64 ")",
                           t->name, k, t->ne[k]);
    }

    field_at = c->off;
    if ((st = read_u32(c, "tensor type", &type))) return st;
    const finch_dtype_traits *tr = finch_dtype_get(type);
    if (!tr)
        return fail_at(c, field_at, "tensor '%s': unknown or retired tensor type id %u", t->name,
                       type);
    t->type = (finch_dtype)type;
    if (t->ne[0] % tr->block_elems)
        return fail_at(c, field_at,
                       "tensor '%s': row length %" PRId64 " is not a multiple of "
                       "the %s block size %d",
                       t->name, t->ne[0], tr->name, tr->block_elems);
    size_t nbytes;
    if (!finch_dtype_row_bytes(t->type, t->ne[0], &nbytes) ||
        !finch_size_mul(nbytes, (size_t)t->ne[1], &nbytes) ||
        !finch_size_mul(nbytes, (size_t)t->ne[2], &nbytes) ||
        !finch_size_mul(nbytes, (size_t)t->ne[3], &nbytes))
        return fail_at(c, field_at, "tensor '%s': byte size overflows", t->name);
    t->nbytes = nbytes;

    field_at = c->off;
    if ((st = read_u64(c, "tensor data offset", &t->offset))) return st;
    if (t->offset % g->alignment)
        return fail_at(c, field_at,
                       "tensor '%s': data offset 0x%" PRIx64 " is not a multiple "
                       "of the alignment %u",
                       t->name, t->offset, g->alignment);
    /* overflow of offset + nbytes is caught with the bounds check, after the header */
    sp->begin = t->offset;
    sp->info_at = field_at;
    sp->index = t - g->tensors;
    *slot = (uint64_t)sp->index + 1;
    return FINCH_OK;
}

/* Places every tensor's data inside the file, aligned and not overlapping another's. */
static finch_status place_tensor_data(cursor *c, finch_gguf *g, span *spans) {
    const size_t room = g->size - g->data_start;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        finch_gguf_tensor *t = &g->tensors[i];
        span *sp = &spans[i];
        if (t->offset > room || t->nbytes > room - t->offset)
            return fail_at(c, sp->info_at,
                           "tensor '%s': data at 0x%" PRIx64 " + %zu bytes "
                           "lies past the end of the file (%zu bytes of data follow the header "
                           "at 0x%zx)",
                           t->name, t->offset, t->nbytes, room, g->data_start);
        sp->end = t->offset + t->nbytes;
        t->data = g->data + g->data_start + t->offset;
    }
    qsort(spans, (size_t)g->n_tensors, sizeof *spans, span_cmp);
    /* sorted by start, a range overlaps an earlier one exactly when it starts before the
     * furthest end seen so far; empty tensors occupy nothing */
    uint64_t reach = 0;
    int64_t reach_by = -1;
    for (int64_t k = 0; k < g->n_tensors; k++) {
        const span *sp = &spans[k];
        if (sp->begin == sp->end) continue;
        if (reach_by >= 0 && sp->begin < reach)
            return fail_at(c, sp->info_at,
                           "tensor '%s': data at 0x%" PRIx64 " overlaps tensor "
                           "'%s', which runs to 0x%" PRIx64,
                           g->tensors[sp->index].name, sp->begin, g->tensors[reach_by].name, reach);
        if (sp->end > reach) {
            reach = sp->end;
            reach_by = sp->index;
        }
    }
    return FINCH_OK;
}

static finch_status parse(finch_gguf *g, finch_err *err) {
    cursor c = {.base = g->data, .size = g->size, .path = g->path, .err = err};
    const uint8_t *magic;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    span *spans = NULL;
    finch_status st;

    if ((st = take(&c, 4, "magic", &magic))) return st;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0)
        return fail_at(&c, 0, "not a GGUF file: magic %02x %02x %02x %02x, expected 'GGUF'",
                       magic[0], magic[1], magic[2], magic[3]);
    if ((st = read_u32(&c, "version", &version))) return st;
    if (version == 1)
        return fail_at(&c, 4, "GGUF version 1 is no longer supported; convert the file again");
    if (version != 2 && version != 3) {
        if ((version & 0xFFFF) == 0 && version != 0)
            return fail_at(&c, 4,
                           "GGUF version 0x%08x looks byte-swapped: big-endian files "
                           "are not supported",
                           version);
        return fail_at(&c, 4, "unsupported GGUF version %u, expected 2 or 3", version);
    }
    g->version = version;
    if ((st = read_u64(&c, "tensor count", &n_tensors))) return st;
    if ((st = read_u64(&c, "key/value count", &n_kv))) return st;

    size_t need_kv, need_ti, need;
    if (!finch_size_mul(n_kv, GGUF_MIN_KV_BYTES, &need_kv) ||
        !finch_size_mul(n_tensors, GGUF_MIN_TENSOR_INFO_BYTES, &need_ti) ||
        !finch_size_add(need_kv, need_ti, &need) || need > left(&c))
        return fail_at(&c, 8,
                       "header claims %" PRIu64 " tensors and %" PRIu64 " key/value "
                       "pairs, more than the %zu bytes that follow can hold",
                       n_tensors, n_kv, left(&c));

    /* counts are now bounded by the file size, so these allocations are too */
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    g->kv = finch_calloc(n_kv, sizeof *g->kv, "gguf key/value pairs", err);
    g->tensors = finch_calloc(n_tensors, sizeof *g->tensors, "gguf tensor infos", err);
    spans = finch_calloc(n_tensors, sizeof *spans, "gguf tensor spans", err);
    if (!g->kv || !g->tensors || !spans || !index_init(&g->kv_index, n_kv, err) ||
        !index_init(&g->tensor_index, n_tensors, err)) {
        st = FINCH_E_NOMEM;
        goto fail;
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++)
        if ((st = read_kv(&c, g, &g->kv[i]))) goto fail;
    for (uint64_t i = 0; i < n_tensors; i++)
        if ((st = read_tensor_info(&c, g, &g->tensors[i], &spans[i]))) goto fail;

    /* the data section starts at the next multiple of the alignment; with no tensors the
     * padding may be missing */
    size_t pad = (g->alignment - c.off % g->alignment) % g->alignment;
    if (n_tensors > 0 && pad > left(&c)) {
        st = fail_at(&c, c.off,
                     "truncated: padding to the data section needs %zu bytes, "
                     "%zu left",
                     pad, left(&c));
        goto fail;
    }
    g->data_start = n_tensors > 0 ? c.off + pad : c.off;
    st = place_tensor_data(&c, g, spans);
fail:
    free(spans);
    return st;
}

/* ---- reader: open, close, accessors ------------------------------------------------- */

static void gguf_free(finch_gguf *g) {
    if (!g) return;
    if (g->kv) {
        for (int64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].arr_str);
        }
        free(g->kv);
    }
    if (g->tensors) {
        for (int64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
        free(g->tensors);
    }
    index_free(&g->kv_index);
    index_free(&g->tensor_index);
    finch_file_unmap(&g->map);
    free(g->path);
    free(g);
}

/* Takes ownership of map (when mapped) and parses the buffer. */
static finch_status open_buffer(const uint8_t *data, size_t size, const char *name,
                                finch_mapped_file *map, finch_gguf **out, finch_err *err) {
    finch_gguf *g = finch_calloc(1, sizeof *g, "gguf document", err);
    if (!g) {
        finch_file_unmap(map);
        return FINCH_E_NOMEM;
    }
    g->map = *map;
    g->data = data;
    g->size = size;
    size_t n = strlen(name);
    g->path = finch_alloc(n + 1, "gguf path", err);
    if (!g->path) {
        gguf_free(g);
        return FINCH_E_NOMEM;
    }
    memcpy(g->path, name, n + 1);
    finch_status st = parse(g, err);
    if (st) {
        gguf_free(g);
        return st;
    }
    *out = g;
    return FINCH_OK;
}

finch_status finch_gguf_open(const char *path, finch_gguf **out, finch_err *err) {
    FINCH_ASSERT(path && out);
    finch_mapped_file map;
    finch_status st = finch_file_map(path, &map, err);
    if (st) return st;
    return open_buffer(map.data, map.size, path, &map, out, err);
}

finch_status finch_gguf_open_memory(const void *data, size_t size, const char *name,
                                    finch_gguf **out, finch_err *err) {
    FINCH_ASSERT(out && (data || size == 0));
    FINCH_ASSERT((uintptr_t)data % GGUF_MIN_ALIGNMENT == 0);
    finch_mapped_file none = {0};
    return open_buffer(data, size, name ? name : "<memory>", &none, out, err);
}

void finch_gguf_evict(const finch_gguf *g) {
    if (g) finch_file_evict(&g->map);
}

void finch_gguf_evict_range(const finch_gguf *g, const void *p, size_t n) {
    if (g) finch_file_evict_range(&g->map, p, n);
}

void finch_gguf_close(finch_gguf *g) {
    gguf_free(g);
}

const char *finch_gguf_path(const finch_gguf *g) {
    return g->path;
}
uint32_t finch_gguf_version(const finch_gguf *g) {
    return g->version;
}
uint32_t finch_gguf_alignment(const finch_gguf *g) {
    return g->alignment;
}

int64_t finch_gguf_n_kv(const finch_gguf *g) {
    return g->n_kv;
}

const finch_gguf_kv *finch_gguf_kv_at(const finch_gguf *g, int64_t i) {
    FINCH_ASSERT(i >= 0 && i < g->n_kv);
    return &g->kv[i];
}

const finch_gguf_kv *finch_gguf_find_kv(const finch_gguf *g, const char *key) {
    int64_t i = index_find(&g->kv_index, KV_INDEX(g), key);
    return i < 0 ? NULL : &g->kv[i];
}

int64_t finch_gguf_n_tensors(const finch_gguf *g) {
    return g->n_tensors;
}

const finch_gguf_tensor *finch_gguf_tensor_at(const finch_gguf *g, int64_t i) {
    FINCH_ASSERT(i >= 0 && i < g->n_tensors);
    return &g->tensors[i];
}

const finch_gguf_tensor *finch_gguf_find_tensor(const finch_gguf *g, const char *name) {
    int64_t i = index_find(&g->tensor_index, TENSOR_INDEX(g), name);
    return i < 0 ? NULL : &g->tensors[i];
}

/* ---- reader: typed getters ---------------------------------------------------------- */

/* Looks key up: FINCH_OK with *kv NULL when absent and not required. */
static finch_status lookup(const finch_gguf *g, const char *key, bool required,
                           const finch_gguf_kv **kv, finch_err *err) {
    *kv = finch_gguf_find_kv(g, key);
    if (!*kv && required)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: missing required key '%s'", g->path, key);
    return FINCH_OK;
}

static finch_status wrong_type(const finch_gguf *g, const finch_gguf_kv *kv, const char *expected,
                               finch_err *err) {
    return finch_err_set(err, FINCH_E_FORMAT,
                         "%s: offset 0x%" PRIx64 ": key '%s' has type %s, "
                         "expected %s",
                         g->path, kv->file_offset, kv->key, finch_gguf_type_name(kv->type),
                         expected);
}

static finch_status out_of_range(const finch_gguf *g, const finch_gguf_kv *kv, const char *expected,
                                 finch_err *err) {
    char value[32];
    if (type_is_sint(kv->type))
        snprintf(value, sizeof value, "%" PRId64, kv->v.i);
    else if (type_is_uint(kv->type))
        snprintf(value, sizeof value, "%" PRIu64, kv->v.u);
    else
        snprintf(value, sizeof value, "%g", kv->v.f);
    return finch_err_set(err, FINCH_E_FORMAT,
                         "%s: offset 0x%" PRIx64 ": key '%s' is %s, out of "
                         "range for %s",
                         g->path, kv->file_offset, kv->key, value, expected);
}

finch_status finch_gguf_get_u32(const finch_gguf *g, const char *key, bool required, uint32_t *out,
                                finch_err *err) {
    const finch_gguf_kv *kv;
    finch_status st = lookup(g, key, required, &kv, err);
    if (st || !kv) return st;
    if (type_is_uint(kv->type)) {
        if (kv->v.u > UINT32_MAX) return out_of_range(g, kv, "uint32", err);
        *out = (uint32_t)kv->v.u;
    } else if (type_is_sint(kv->type)) {
        if (kv->v.i < 0 || kv->v.i > (int64_t)UINT32_MAX) return out_of_range(g, kv, "uint32", err);
        *out = (uint32_t)kv->v.i;
    } else {
        return wrong_type(g, kv, "an integer", err);
    }
    return FINCH_OK;
}

finch_status finch_gguf_get_i64(const finch_gguf *g, const char *key, bool required, int64_t *out,
                                finch_err *err) {
    const finch_gguf_kv *kv;
    finch_status st = lookup(g, key, required, &kv, err);
    if (st || !kv) return st;
    if (type_is_uint(kv->type)) {
        if (kv->v.u > INT64_MAX) return out_of_range(g, kv, "int64", err);
        *out = (int64_t)kv->v.u;
    } else if (type_is_sint(kv->type)) {
        *out = kv->v.i;
    } else {
        return wrong_type(g, kv, "an integer", err);
    }
    return FINCH_OK;
}

finch_status finch_gguf_get_f32(const finch_gguf *g, const char *key, bool required, float *out,
                                finch_err *err) {
    const finch_gguf_kv *kv;
    finch_status st = lookup(g, key, required, &kv, err);
    if (st || !kv) return st;
    if (kv->type != FINCH_GGUF_FLOAT32 && kv->type != FINCH_GGUF_FLOAT64)
        return wrong_type(g, kv, "float32", err);
    /* a finite double beyond the float range would be undefined to convert */
    if (isfinite(kv->v.f) && fabs(kv->v.f) > FLT_MAX) return out_of_range(g, kv, "float32", err);
    *out = (float)kv->v.f;
    return FINCH_OK;
}

finch_status finch_gguf_get_bool(const finch_gguf *g, const char *key, bool required, bool *out,
                                 finch_err *err) {
    const finch_gguf_kv *kv;
    finch_status st = lookup(g, key, required, &kv, err);
    if (st || !kv) return st;
    if (kv->type != FINCH_GGUF_BOOL) return wrong_type(g, kv, "bool", err);
    *out = kv->v.b;
    return FINCH_OK;
}

finch_status finch_gguf_get_str(const finch_gguf *g, const char *key, bool required, finch_str *out,
                                finch_err *err) {
    const finch_gguf_kv *kv;
    finch_status st = lookup(g, key, required, &kv, err);
    if (st || !kv) return st;
    if (kv->type != FINCH_GGUF_STRING) return wrong_type(g, kv, "string", err);
    *out = kv->v.str;
    return FINCH_OK;
}

finch_status finch_gguf_get_arr(const finch_gguf *g, const char *key, finch_gguf_type elem,
                                bool required, const finch_gguf_kv **out, finch_err *err) {
    const finch_gguf_kv *kv;
    finch_status st = lookup(g, key, required, &kv, err);
    if (st || !kv) return st;
    if (kv->type != FINCH_GGUF_ARRAY || kv->arr_type != elem) {
        char expected[32];
        snprintf(expected, sizeof expected, "array of %s", finch_gguf_type_name(elem));
        if (kv->type != FINCH_GGUF_ARRAY) return wrong_type(g, kv, expected, err);
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: offset 0x%" PRIx64 ": key '%s' is an "
                             "array of %s, expected %s",
                             g->path, kv->file_offset, kv->key, finch_gguf_type_name(kv->arr_type),
                             expected);
    }
    *out = kv;
    return FINCH_OK;
}

/* ---- writer ------------------------------------------------------------------------- */

/* A growable byte buffer for encoding values; oom is sticky and checked once. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} bytebuf;

static void buf_put(bytebuf *b, const void *src, size_t n) {
    if (b->oom) return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->n < n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        uint8_t *p = finch_mem_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void buf_le(bytebuf *b, uint64_t v, int n) {
    uint8_t tmp[8];
    store_le(tmp, v, n);
    buf_put(b, tmp, (size_t)n);
}

static void buf_str(bytebuf *b, const char *s, size_t n) {
    buf_le(b, n, 8);
    buf_put(b, s, n);
}

typedef struct {
    char *key;
    finch_gguf_type type;
    uint8_t *value; /* the value exactly as stored after the type field */
    size_t value_bytes;
} writer_kv;

typedef struct {
    char *name;
    finch_dtype type;
    int n_dims;
    int64_t ne[FINCH_GGUF_MAX_DIMS];
    const void *data; /* borrowed; NULL when fill makes the bytes at save time */
    finch_gguf_fill_fn fill;
    void *fill_user;
    size_t nbytes;
} writer_tensor;

struct finch_gguf_writer {
    writer_kv *kv;
    int64_t n_kv, cap_kv;
    writer_tensor *tensors;
    int64_t n_tensors, cap_tensors;
    uint32_t alignment; /* 32, or general.alignment when set */
    name_index kv_index, tensor_index;
};

#define WKV_INDEX(w) (w)->kv, sizeof(writer_kv), offsetof(writer_kv, key)
#define WTENSOR_INDEX(w) (w)->tensors, sizeof(writer_tensor), offsetof(writer_tensor, name)

finch_gguf_writer *finch_gguf_writer_new(finch_err *err) {
    finch_gguf_writer *w = finch_calloc(1, sizeof *w, "gguf writer", err);
    if (!w) return NULL;
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void finch_gguf_writer_free(finch_gguf_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].value);
    }
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->kv);
    free(w->tensors);
    index_free(&w->kv_index);
    index_free(&w->tensor_index);
    free(w);
}

/* Makes room for one more element of an array that grows by doubling, and for its name
 * in the index (rebuilt at twice the size when half full). */
static finch_status grow(void **items, int64_t n, int64_t *cap, size_t item_bytes, name_index *ix,
                         size_t name_at, const char *what, finch_err *err) {
    if (n == *cap) {
        int64_t new_cap = *cap ? *cap * 2 : 16;
        size_t bytes;
        if (!finch_size_mul((size_t)new_cap, item_bytes, &bytes))
            return finch_err_set(err, FINCH_E_NOMEM, "too many %s", what);
        void *p = finch_mem_realloc(*items, bytes);
        if (!p)
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory allocating %zu bytes for %s",
                                 bytes, what);
        *items = p;
        *cap = new_cap;
    }
    if ((size_t)(n + 1) * 2 > ix->cap) {
        name_index bigger;
        if (!index_init(&bigger, (size_t)(n + 1) * 2, err)) return FINCH_E_NOMEM;
        for (int64_t i = 0; i < n; i++) {
            const char *name = name_of(*items, item_bytes, name_at, (uint64_t)i);
            *index_probe(&bigger, *items, item_bytes, name_at, name, strlen(name)) =
                (uint64_t)i + 1;
        }
        index_free(ix);
        *ix = bigger;
    }
    return FINCH_OK;
}

static char *copy_str(const char *s, finch_err *err) {
    size_t n = strlen(s);
    char *p = finch_alloc(n + 1, "gguf writer name", err);
    if (p) memcpy(p, s, n + 1);
    return p;
}

/* Adds key with an encoded value, taking ownership of val's bytes in every case. */
static finch_status add_kv(finch_gguf_writer *w, const char *key, finch_gguf_type type,
                           bytebuf *val, finch_err *err) {
    finch_status st = FINCH_OK;
    size_t n = strlen(key);
    if (val->oom) {
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory encoding gguf key '%s'", key);
        goto fail;
    }
    if (n == 0 || n > FINCH_GGUF_MAX_KEY) {
        st = finch_err_set(err, FINCH_E_USAGE, "gguf writer: key of %zu bytes, expected 1 to %d", n,
                           FINCH_GGUF_MAX_KEY);
        goto fail;
    }
    if (strcmp(key, GGUF_ALIGNMENT_KEY) == 0) {
        uint64_t a = val->n == 4 ? load_le(val->p, 4) : 0;
        if (type != FINCH_GGUF_UINT32 || a < GGUF_MIN_ALIGNMENT || (a & (a - 1))) {
            st = finch_err_set(err, FINCH_E_USAGE,
                               "gguf writer: '%s' must be a uint32 power "
                               "of two of at least %u",
                               key, GGUF_MIN_ALIGNMENT);
            goto fail;
        }
    }
    void *items = w->kv;
    st = grow(&items, w->n_kv, &w->cap_kv, sizeof *w->kv, &w->kv_index, offsetof(writer_kv, key),
              "gguf keys", err);
    w->kv = items;
    if (st) goto fail;
    uint64_t *slot = index_probe(&w->kv_index, WKV_INDEX(w), key, n);
    if (*slot) {
        st = finch_err_set(err, FINCH_E_USAGE, "gguf writer: key '%s' is already set", key);
        goto fail;
    }
    char *copy = copy_str(key, err);
    if (!copy) {
        st = FINCH_E_NOMEM;
        goto fail;
    }
    if (strcmp(key, GGUF_ALIGNMENT_KEY) == 0) w->alignment = (uint32_t)load_le(val->p, 4);
    w->kv[w->n_kv] = (writer_kv){copy, type, val->p, val->n};
    *slot = (uint64_t)w->n_kv + 1;
    w->n_kv++;
    return FINCH_OK;
fail:
    free(val->p);
    return st;
}

static finch_status set_scalar(finch_gguf_writer *w, const char *key, finch_gguf_type type,
                               uint64_t raw, finch_err *err) {
    bytebuf b = {0};
    buf_le(&b, raw, scalar_bytes[type]);
    return add_kv(w, key, type, &b, err);
}

finch_status finch_gguf_set_u32(finch_gguf_writer *w, const char *key, uint32_t v, finch_err *err) {
    return set_scalar(w, key, FINCH_GGUF_UINT32, v, err);
}

finch_status finch_gguf_set_i32(finch_gguf_writer *w, const char *key, int32_t v, finch_err *err) {
    return set_scalar(w, key, FINCH_GGUF_INT32, (uint32_t)v, err);
}

finch_status finch_gguf_set_u64(finch_gguf_writer *w, const char *key, uint64_t v, finch_err *err) {
    return set_scalar(w, key, FINCH_GGUF_UINT64, v, err);
}

finch_status finch_gguf_set_f32(finch_gguf_writer *w, const char *key, float v, finch_err *err) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    return set_scalar(w, key, FINCH_GGUF_FLOAT32, bits, err);
}

finch_status finch_gguf_set_bool(finch_gguf_writer *w, const char *key, bool v, finch_err *err) {
    return set_scalar(w, key, FINCH_GGUF_BOOL, v ? 1 : 0, err);
}

finch_status finch_gguf_set_str(finch_gguf_writer *w, const char *key, const char *v,
                                finch_err *err) {
    bytebuf b = {0};
    buf_str(&b, v, strlen(v));
    return add_kv(w, key, FINCH_GGUF_STRING, &b, err);
}

/* The u32 element type and u64 count that open every array value. */
static void buf_array_head(bytebuf *b, finch_gguf_type elem, int64_t n) {
    buf_le(b, elem, 4);
    buf_le(b, (uint64_t)n, 8);
}

finch_status finch_gguf_set_arr_str(finch_gguf_writer *w, const char *key, const char *const *v,
                                    int64_t n, finch_err *err) {
    FINCH_ASSERT(n >= 0 && (v || n == 0));
    bytebuf b = {0};
    buf_array_head(&b, FINCH_GGUF_STRING, n);
    for (int64_t i = 0; i < n; i++) buf_str(&b, v[i], strlen(v[i]));
    return add_kv(w, key, FINCH_GGUF_ARRAY, &b, err);
}

finch_status finch_gguf_set_arr_i32(finch_gguf_writer *w, const char *key, const int32_t *v,
                                    int64_t n, finch_err *err) {
    FINCH_ASSERT(n >= 0 && (v || n == 0));
    bytebuf b = {0};
    buf_array_head(&b, FINCH_GGUF_INT32, n);
    for (int64_t i = 0; i < n; i++) buf_le(&b, (uint32_t)v[i], 4);
    return add_kv(w, key, FINCH_GGUF_ARRAY, &b, err);
}

finch_status finch_gguf_set_arr_f32(finch_gguf_writer *w, const char *key, const float *v,
                                    int64_t n, finch_err *err) {
    FINCH_ASSERT(n >= 0 && (v || n == 0));
    bytebuf b = {0};
    buf_array_head(&b, FINCH_GGUF_FLOAT32, n);
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        buf_le(&b, bits, 4);
    }
    return add_kv(w, key, FINCH_GGUF_ARRAY, &b, err);
}

finch_status finch_gguf_set_kv(finch_gguf_writer *w, const finch_gguf_kv *kv, finch_err *err) {
    FINCH_ASSERT(kv && kv->type < FINCH_GGUF_TYPE_COUNT);
    bytebuf b = {0};
    if (kv->type == FINCH_GGUF_ARRAY) {
        FINCH_ASSERT(kv->arr_type < FINCH_GGUF_TYPE_COUNT && kv->arr_type != FINCH_GGUF_ARRAY);
        buf_array_head(&b, kv->arr_type, (int64_t)kv->arr_n);
        if (kv->arr_type == FINCH_GGUF_STRING) {
            for (uint64_t i = 0; i < kv->arr_n; i++)
                buf_str(&b, kv->arr_str[i].ptr, kv->arr_str[i].len);
        } else {
            buf_put(&b, kv->arr_data, kv->arr_n * scalar_bytes[kv->arr_type]);
        }
    } else if (kv->type == FINCH_GGUF_STRING) {
        buf_str(&b, kv->v.str.ptr, kv->v.str.len);
    } else if (kv->type == FINCH_GGUF_FLOAT32) {
        float f = (float)kv->v.f; /* exact: the value was read from a float32 */
        uint32_t bits;
        memcpy(&bits, &f, 4);
        buf_le(&b, bits, 4);
    } else if (kv->type == FINCH_GGUF_FLOAT64) {
        uint64_t bits;
        memcpy(&bits, &kv->v.f, 8);
        buf_le(&b, bits, 8);
    } else if (kv->type == FINCH_GGUF_BOOL) {
        buf_le(&b, kv->v.b ? 1 : 0, 1);
    } else {
        /* integers: the low bytes of the widened value are the stored two's complement */
        uint64_t raw = type_is_sint(kv->type) ? (uint64_t)kv->v.i : kv->v.u;
        buf_le(&b, raw, scalar_bytes[kv->type]);
    }
    return add_kv(w, kv->key, kv->type, &b, err);
}

static finch_status add_tensor(finch_gguf_writer *w, const char *name, finch_dtype type, int n_dims,
                               const int64_t *ne, const void *data, finch_gguf_fill_fn fill,
                               void *fill_user, finch_err *err) {
    FINCH_ASSERT(w && name && ne);
    size_t n = strlen(name);
    if (n == 0 || n > FINCH_GGUF_MAX_NAME)
        return finch_err_set(err, FINCH_E_USAGE,
                             "gguf writer: tensor name '%.80s' has %zu "
                             "bytes, expected 1 to %d",
                             name, n, FINCH_GGUF_MAX_NAME);
    if (n_dims < 1 || n_dims > FINCH_GGUF_MAX_DIMS)
        return finch_err_set(err, FINCH_E_USAGE,
                             "gguf writer: tensor '%s': %d dimensions, "
                             "expected 1 to %d",
                             name, n_dims, FINCH_GGUF_MAX_DIMS);
    const finch_dtype_traits *tr = finch_dtype_get((uint32_t)type);
    if (!tr)
        return finch_err_set(err, FINCH_E_USAGE, "gguf writer: tensor '%s': unknown type %d", name,
                             (int)type);
    writer_tensor t = {
        .type = type, .n_dims = n_dims, .data = data, .fill = fill, .fill_user = fill_user};
    int64_t n_elems = 1;
    for (int k = 0; k < FINCH_GGUF_MAX_DIMS; k++) {
        t.ne[k] = k < n_dims ? ne[k] : 1;
        if (t.ne[k] < 0 || __builtin_mul_overflow(n_elems, t.ne[k], &n_elems))
            return finch_err_set(err, FINCH_E_USAGE,
                                 "gguf writer: tensor '%s': dimension %d "
                                 "is %" PRId64 ", negative or too large",
                                 name, k, t.ne[k]);
    }
    if (t.ne[0] % tr->block_elems)
        return finch_err_set(err, FINCH_E_USAGE,
                             "gguf writer: tensor '%s': row length %" PRId64
                             " is not a multiple of the %s block size %d",
                             name, t.ne[0], tr->name, tr->block_elems);
    if (!finch_dtype_row_bytes(type, t.ne[0], &t.nbytes) ||
        !finch_size_mul(t.nbytes, (size_t)t.ne[1], &t.nbytes) ||
        !finch_size_mul(t.nbytes, (size_t)t.ne[2], &t.nbytes) ||
        !finch_size_mul(t.nbytes, (size_t)t.ne[3], &t.nbytes))
        return finch_err_set(err, FINCH_E_USAGE, "gguf writer: tensor '%s': byte size overflows",
                             name);
    FINCH_ASSERT(data || fill || t.nbytes == 0);

    void *items = w->tensors;
    finch_status st = grow(&items, w->n_tensors, &w->cap_tensors, sizeof *w->tensors,
                           &w->tensor_index, offsetof(writer_tensor, name), "gguf tensors", err);
    w->tensors = items;
    if (st) return st;
    uint64_t *slot = index_probe(&w->tensor_index, WTENSOR_INDEX(w), name, n);
    if (*slot)
        return finch_err_set(err, FINCH_E_USAGE, "gguf writer: tensor '%s' is already added", name);
    if (!(t.name = copy_str(name, err))) return FINCH_E_NOMEM;
    w->tensors[w->n_tensors] = t;
    *slot = (uint64_t)w->n_tensors + 1;
    w->n_tensors++;
    return FINCH_OK;
}

finch_status finch_gguf_add_tensor(finch_gguf_writer *w, const char *name, finch_dtype type,
                                   int n_dims, const int64_t *ne, const void *data,
                                   finch_err *err) {
    return add_tensor(w, name, type, n_dims, ne, data, NULL, NULL, err);
}

finch_status finch_gguf_add_tensor_fill(finch_gguf_writer *w, const char *name, finch_dtype type,
                                        int n_dims, const int64_t *ne, finch_gguf_fill_fn fill,
                                        void *user, finch_err *err) {
    FINCH_ASSERT(fill);
    return add_tensor(w, name, type, n_dims, ne, NULL, fill, user, err);
}

static size_t padding(size_t n, uint32_t alignment) {
    return (alignment - n % alignment) % alignment;
}

typedef struct {
    const finch_gguf_writer *w;
    const char *path;
} save_job;

static finch_status write_le(FILE *f, uint64_t v, int n, const char *path, finch_err *err) {
    uint8_t tmp[8];
    store_le(tmp, v, n);
    return finch_fwrite(f, tmp, (size_t)n, path, err);
}

static finch_status write_zeros(FILE *f, size_t n, const char *path, finch_err *err) {
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        finch_status st = finch_fwrite(f, zeros, k, path, err);
        if (st) return st;
        n -= k;
    }
    return FINCH_OK;
}

/* The finch_file_commit callback: header, pairs, infos, padding, data, in one pass. */
static finch_status write_document(FILE *f, void *user, finch_err *err) {
    const save_job *job = user;
    const finch_gguf_writer *w = job->w;
    const char *path = job->path;
    finch_status st;
    size_t written = 0; /* bytes so far, for the padding before the data section */
#define PUT(expr, bytes)                                                                           \
    do {                                                                                           \
        if ((st = (expr))) return st;                                                              \
        written += (bytes);                                                                        \
    } while (0)

    PUT(finch_fwrite(f, GGUF_MAGIC, 4, path, err), 4);
    PUT(write_le(f, 3, 4, path, err), 4);
    PUT(write_le(f, (uint64_t)w->n_tensors, 8, path, err), 8);
    PUT(write_le(f, (uint64_t)w->n_kv, 8, path, err), 8);
    for (int64_t i = 0; i < w->n_kv; i++) {
        const writer_kv *kv = &w->kv[i];
        size_t n = strlen(kv->key);
        PUT(write_le(f, n, 8, path, err), 8);
        PUT(finch_fwrite(f, kv->key, n, path, err), n);
        PUT(write_le(f, kv->type, 4, path, err), 4);
        PUT(finch_fwrite(f, kv->value, kv->value_bytes, path, err), kv->value_bytes);
    }
    uint64_t offset = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        size_t n = strlen(t->name);
        PUT(write_le(f, n, 8, path, err), 8);
        PUT(finch_fwrite(f, t->name, n, path, err), n);
        PUT(write_le(f, (uint64_t)t->n_dims, 4, path, err), 4);
        for (int k = 0; k < t->n_dims; k++) PUT(write_le(f, (uint64_t)t->ne[k], 8, path, err), 8);
        PUT(write_le(f, (uint64_t)t->type, 4, path, err), 4);
        PUT(write_le(f, offset, 8, path, err), 8);
        offset += t->nbytes + padding(t->nbytes, w->alignment);
    }
    if (w->n_tensors > 0) PUT(write_zeros(f, padding(written, w->alignment), path, err), 0);
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        if (t->fill && t->nbytes) { /* made now, written, and freed before the next */
            void *buf = finch_alloc(t->nbytes, "gguf tensor data", err);
            if (!buf) return FINCH_E_NOMEM;
            st = t->fill(buf, t->nbytes, t->fill_user, err);
            if (!st) st = finch_fwrite(f, buf, t->nbytes, path, err);
            free(buf);
            if (st) return st;
        } else {
            PUT(finch_fwrite(f, t->data, t->nbytes, path, err), 0);
        }
        PUT(write_zeros(f, padding(t->nbytes, w->alignment), path, err), 0);
    }
#undef PUT
    return FINCH_OK;
}

finch_status finch_gguf_set_kvs_from(finch_gguf_writer *w, const finch_gguf *g, const char *except,
                                     finch_err *err) {
    finch_status st = FINCH_OK;
    for (int64_t i = 0; i < finch_gguf_n_kv(g) && !st; i++) {
        const finch_gguf_kv *kv = finch_gguf_kv_at(g, i);
        if (!except || strcmp(kv->key, except)) st = finch_gguf_set_kv(w, kv, err);
    }
    return st;
}

finch_status finch_gguf_writer_save(const finch_gguf_writer *w, const char *path, finch_err *err) {
    FINCH_ASSERT(w && path);
    save_job job = {w, path};
    return finch_file_commit(path, write_document, &job, err);
}
