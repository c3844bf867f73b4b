/*
 * safetensors.c: safetensors reader and writer.
 *
 * A file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data
 * section. The reader parses a read-only mapping (or a caller's buffer): it checks N
 * against the limit and the file, hands the header to jansson (which checks UTF-8, JSON
 * syntax, and duplicate keys), then validates every entry's dtype, shape and data_offsets,
 * sorts the byte ranges and walks them to prove the tensors tile the data section exactly:
 * no overlaps, no holes, nothing after the last tensor. Only names and metadata strings
 * are copied; tensor data stays in the mapping. Tensors are kept sorted by name, so lookup
 * is a binary search. Errors name the file, a byte offset (of the tensor's key in the
 * header when it can be found, else of the header; of the data for range errors), the
 * tensor and the field, with code FINCH_E_FORMAT.
 *
 * The writer keeps names and borrowed data and lays the file out at save time the way the
 * reference (Rust) writer does: tensors sorted by descending dtype alignment, then by
 * name, back to back; compact JSON with "__metadata__" first and the tensors in data
 * order; spaces up to a multiple of 8 bytes. The reference reader accepts what it writes
 * and every tensor is aligned to its element size in a mapping.
 *
 * Deliberately not here: sub-byte dtypes (F4, F6_*), sharded index files
 * (model.safetensors.index.json belongs to whoever loads a model folder), and conversion
 * of values (callers use the dtype and core's conversions).
 *
 * Facts: FORMATS.md section 2.3.
 */
#include "io/io.h" /* finch_st_*, finch_file_map, finch_file_commit */

#include <inttypes.h>
#include <stdlib.h>

#include <jansson.h>

#define ST_META_KEY "__metadata__"
#define ST_HEADER_AT 8u /* the header follows the 8-byte length */

/* ---- dtypes ------------------------------------------------------------------------- */

typedef struct {
    const char *name; /* as in the file */
    int size;         /* bytes per element */
    finch_dtype type; /* finch's equivalent, FINCH_DTYPE_COUNT for none */
} st_dtype_info;

static const st_dtype_info dtypes[FINCH_ST_DTYPE_COUNT] = {
    [FINCH_ST_BOOL] = {"BOOL", 1, FINCH_DTYPE_COUNT},
    [FINCH_ST_U8] = {"U8", 1, FINCH_DTYPE_COUNT},
    [FINCH_ST_I8] = {"I8", 1, FINCH_DTYPE_I8},
    [FINCH_ST_F8_E5M2] = {"F8_E5M2", 1, FINCH_DTYPE_COUNT},
    [FINCH_ST_F8_E4M3] = {"F8_E4M3", 1, FINCH_DTYPE_COUNT},
    [FINCH_ST_F8_E8M0] = {"F8_E8M0", 1, FINCH_DTYPE_COUNT},
    [FINCH_ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 1, FINCH_DTYPE_COUNT},
    [FINCH_ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 1, FINCH_DTYPE_COUNT},
    [FINCH_ST_I16] = {"I16", 2, FINCH_DTYPE_I16},
    [FINCH_ST_U16] = {"U16", 2, FINCH_DTYPE_COUNT},
    [FINCH_ST_F16] = {"F16", 2, FINCH_DTYPE_F16},
    [FINCH_ST_BF16] = {"BF16", 2, FINCH_DTYPE_BF16},
    [FINCH_ST_I32] = {"I32", 4, FINCH_DTYPE_I32},
    [FINCH_ST_U32] = {"U32", 4, FINCH_DTYPE_COUNT},
    [FINCH_ST_F32] = {"F32", 4, FINCH_DTYPE_F32},
    [FINCH_ST_C64] = {"C64", 8, FINCH_DTYPE_COUNT},
    [FINCH_ST_F64] = {"F64", 8, FINCH_DTYPE_F64},
    [FINCH_ST_I64] = {"I64", 8, FINCH_DTYPE_I64},
    [FINCH_ST_U64] = {"U64", 8, FINCH_DTYPE_COUNT},
};

/* Dtypes of the format that finch does not read: elements smaller than a byte. */
static const char *const sub_byte_dtypes[] = {"F4", "F6_E2M3", "F6_E3M2"};

const char *finch_st_dtype_name(finch_st_dtype t) {
    return (unsigned)t < FINCH_ST_DTYPE_COUNT ? dtypes[t].name : "unknown";
}

int finch_st_dtype_size(finch_st_dtype t) {
    return (unsigned)t < FINCH_ST_DTYPE_COUNT ? dtypes[t].size : 0;
}

finch_dtype finch_st_dtype_to_finch(finch_st_dtype t) {
    return (unsigned)t < FINCH_ST_DTYPE_COUNT ? dtypes[t].type : FINCH_DTYPE_COUNT;
}

/* ---- the document ------------------------------------------------------------------- */

typedef struct {
    char *key, *value;
} st_meta;

struct finch_st {
    finch_mapped_file map; /* when opened from a path */
    const uint8_t *data;   /* the whole file */
    size_t size;
    char *path;
    size_t header_len;      /* N */
    const uint8_t *section; /* the data section, data + 8 + N */
    size_t section_size;
    finch_st_tensor *tensors; /* sorted by name */
    int64_t n_tensors;
    st_meta *meta; /* sorted by key */
    int64_t n_meta;
};

static void st_free(finch_st *st) {
    if (!st) return;
    for (int64_t i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    for (int64_t i = 0; i < st->n_meta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->meta);
    finch_file_unmap(&st->map);
    free(st->path);
    free(st);
}

static char *dup_str(const char *s, const char *what, finch_err *err) {
    size_t n = strlen(s);
    char *p = finch_alloc(n + 1, what, err);
    if (p) memcpy(p, s, n + 1);
    return p;
}

/* ---- reader: where things are, for messages ----------------------------------------- */

/* The file offset of the JSON string "key" in the header, or of the header itself when
 * the key is not found verbatim (it contains escapes). Only used on the error path. */
static size_t key_offset(const finch_st *st, const char *key) {
    const char *h = (const char *)st->data + ST_HEADER_AT;
    size_t n = strlen(key), hn = st->header_len;
    for (size_t i = 0; n + 2 <= hn && i <= hn - n - 2; i++) {
        if (h[i] == '"' && h[i + n + 1] == '"' && memcmp(h + i + 1, key, n) == 0)
            return ST_HEADER_AT + i;
    }
    return ST_HEADER_AT;
}

static finch_status fail_at(const finch_st *st, finch_err *err, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static finch_status fail_at(const finch_st *st, finch_err *err, size_t at, const char *fmt, ...) {
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return finch_err_set(err, FINCH_E_FORMAT, "%s: offset 0x%zx: %s", st->path, at, what);
}

/* ---- reader: one entry -------------------------------------------------------------- */

/* A non-negative JSON integer, as u64; false for anything else. */
static bool json_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return false;
    json_int_t i = json_integer_value(v);
    if (i < 0) return false;
    *out = (uint64_t)i;
    return true;
}

static finch_status parse_dtype(finch_st *st, const char *name, const json_t *v, finch_st_tensor *t,
                                finch_err *err) {
    if (!json_is_string(v))
        return fail_at(st, err, key_offset(st, name), "tensor '%s': field 'dtype' %s", name,
                       v ? "is not a string" : "is missing");
    const char *s = json_string_value(v);
    for (int k = 0; k < FINCH_ST_DTYPE_COUNT; k++) {
        if (strcmp(s, dtypes[k].name) == 0) {
            t->dtype = (finch_st_dtype)k;
            t->type = dtypes[k].type;
            return FINCH_OK;
        }
    }
    for (size_t k = 0; k < sizeof sub_byte_dtypes / sizeof *sub_byte_dtypes; k++) {
        if (strcmp(s, sub_byte_dtypes[k]) == 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: offset 0x%zx: tensor '%s': dtype '%s' (elements smaller "
                                 "than a byte) is not supported",
                                 st->path, key_offset(st, name), name, s);
    }
    return fail_at(st, err, key_offset(st, name),
                   "tensor '%s': unknown dtype '%.40s' (expected F64, F32, F16, BF16, I64, "
                   "I32, I16, I8, U8, BOOL, U16, U32, U64, C64 or F8_*)",
                   name, s);
}

static finch_status parse_shape(finch_st *st, const char *name, const json_t *v, finch_st_tensor *t,
                                finch_err *err) {
    const size_t at = key_offset(st, name);
    if (!json_is_array(v))
        return fail_at(st, err, at, "tensor '%s': field 'shape' %s", name,
                       v ? "is not an array" : "is missing");
    size_t n = json_array_size(v);
    if (n > FINCH_ST_MAX_DIMS)
        return fail_at(st, err, at, "tensor '%s': field 'shape': %zu dimensions, at most %d", name,
                       n, FINCH_ST_MAX_DIMS);
    uint64_t elems = 1;
    t->n_dims = (int)n;
    for (int k = 0; k < FINCH_ST_MAX_DIMS; k++) t->shape[k] = 1;
    for (size_t k = 0; k < n; k++) {
        uint64_t d;
        if (!json_uint(json_array_get(v, k), &d))
            return fail_at(st, err, at,
                           "tensor '%s': field 'shape': dimension %zu is not a non-negative "
                           "integer",
                           name, k);
        if (__builtin_mul_overflow(elems, d, &elems) || elems > SIZE_MAX)
            return fail_at(st, err, at,
                           "tensor '%s': field 'shape': element count overflows at dimension "
                           "%zu (%" PRIu64 ")",
                           name, k, d);
        t->shape[k] = (int64_t)d;
    }
    size_t bytes;
    if (!finch_size_mul((size_t)elems, (size_t)dtypes[t->dtype].size, &bytes))
        return fail_at(st, err, at,
                       "tensor '%s': field 'shape': %" PRIu64 " elements of %s overflow a size",
                       name, elems, dtypes[t->dtype].name);
    t->n_elems = elems;
    t->nbytes = bytes;
    return FINCH_OK;
}

static finch_status parse_offsets(finch_st *st, const char *name, const json_t *v,
                                  finch_st_tensor *t, finch_err *err) {
    const size_t at = key_offset(st, name);
    uint64_t begin, end;
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_uint(json_array_get(v, 0), &begin) ||
        !json_uint(json_array_get(v, 1), &end))
        return fail_at(st, err, at,
                       "tensor '%s': field 'data_offsets' %s, expected [begin, end] with "
                       "non-negative integers",
                       name, v ? "is malformed" : "is missing");
    if (begin > end)
        return fail_at(st, err, at,
                       "tensor '%s': field 'data_offsets': begin %" PRIu64 " > end %" PRIu64, name,
                       begin, end);
    if (end > st->section_size)
        return fail_at(st, err, at,
                       "tensor '%s': field 'data_offsets': end %" PRIu64
                       " is past the data section (%zu bytes, file offset 0x%zx); the file "
                       "is truncated or the header lies",
                       name, end, st->section_size, ST_HEADER_AT + st->header_len);
    if (end - begin != t->nbytes)
        return fail_at(st, err, at,
                       "tensor '%s': field 'data_offsets' [%" PRIu64 ", %" PRIu64 "] holds %" PRIu64
                       " bytes, but %" PRIu64 " elements of %s need %zu",
                       name, begin, end, end - begin, t->n_elems, dtypes[t->dtype].name, t->nbytes);
    t->offset = begin;
    t->data = st->section + begin;
    return FINCH_OK;
}

static finch_status parse_tensor(finch_st *st, const char *name, const json_t *v,
                                 finch_st_tensor *t, finch_err *err) {
    if (!json_is_object(v))
        return fail_at(st, err, key_offset(st, name), "tensor '%s': entry is not an object", name);
    finch_status s;
    if ((s = parse_dtype(st, name, json_object_get(v, "dtype"), t, err))) return s;
    if ((s = parse_shape(st, name, json_object_get(v, "shape"), t, err))) return s;
    return parse_offsets(st, name, json_object_get(v, "data_offsets"), t, err);
}

static finch_status parse_meta(finch_st *st, const json_t *v, finch_err *err) {
    const size_t at = key_offset(st, ST_META_KEY);
    if (json_is_null(v)) return FINCH_OK;
    if (!json_is_object(v))
        return fail_at(st, err, at, "'" ST_META_KEY "' is not an object of strings");
    size_t n = json_object_size(v);
    st->meta = finch_calloc(n ? n : 1, sizeof *st->meta, "safetensors metadata", err);
    if (!st->meta) return FINCH_E_NOMEM;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (!json_is_string(val))
            return fail_at(st, err, at, "'" ST_META_KEY "': value of '%.100s' is not a string",
                           key);
        st_meta *m = &st->meta[st->n_meta];
        if (!(m->key = dup_str(key, "safetensors metadata key", err))) return FINCH_E_NOMEM;
        st->n_meta++;
        if (!(m->value = dup_str(json_string_value(val), "safetensors metadata value", err)))
            return FINCH_E_NOMEM;
    }
    return FINCH_OK;
}

/* ---- reader: the whole header ------------------------------------------------------- */

static int tensor_name_cmp(const void *a, const void *b) {
    return strcmp(((const finch_st_tensor *)a)->name, ((const finch_st_tensor *)b)->name);
}

static int meta_key_cmp(const void *a, const void *b) {
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

/* Orders tensor pointers by data range: begin, then end (empty tensors first). */
static int range_cmp(const void *a, const void *b) {
    const finch_st_tensor *x = *(const finch_st_tensor *const *)a;
    const finch_st_tensor *y = *(const finch_st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Proves the tensors tile the data section: sorted by range, each begins where the
 * previous ended, and the last ends at the end of the file. */
static finch_status check_tiling(finch_st *st, finch_err *err) {
    finch_status s = FINCH_OK;
    const size_t base = ST_HEADER_AT + st->header_len;
    const finch_st_tensor **order = NULL;
    if (st->n_tensors) {
        order = finch_calloc((size_t)st->n_tensors, sizeof *order, "safetensors ranges", err);
        if (!order) return FINCH_E_NOMEM;
        for (int64_t i = 0; i < st->n_tensors; i++) order[i] = &st->tensors[i];
        qsort(order, (size_t)st->n_tensors, sizeof *order, range_cmp);
    }
    uint64_t covered = 0;
    const char *prev = NULL;
    for (int64_t i = 0; i < st->n_tensors; i++) {
        const finch_st_tensor *t = order[i];
        if (t->offset < covered) {
            s = fail_at(st, err, base + t->offset,
                        "tensor '%s': data [%" PRIu64 ", %" PRIu64
                        ") overlaps tensor '%s', which ends at %" PRIu64,
                        t->name, t->offset, t->offset + t->nbytes, prev, covered);
            goto done;
        }
        if (t->offset > covered) {
            s = fail_at(st, err, base + covered,
                        "data section bytes [%" PRIu64 ", %" PRIu64
                        ") belong to no tensor (a hole before tensor '%s'); the format "
                        "requires every byte indexed",
                        covered, t->offset, t->name);
            goto done;
        }
        covered = t->offset + t->nbytes;
        prev = t->name;
    }
    if (covered != st->section_size)
        s = fail_at(st, err, base + covered,
                    "data section bytes [%" PRIu64 ", %zu) belong to no tensor (%zu bytes "
                    "after the last tensor); the format requires every byte indexed",
                    covered, st->section_size, st->section_size - (size_t)covered);
done:
    free(order);
    return s;
}

static finch_status parse(finch_st *st, finch_err *err) {
    if (st->size < ST_HEADER_AT)
        return fail_at(st, err, 0, "file is %zu bytes, shorter than the 8-byte header length",
                       st->size);
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--) n = (n << 8) | st->data[k];
    if (n > FINCH_ST_MAX_HEADER)
        return fail_at(st, err, 0, "header length %" PRIu64 " is over the limit of %u bytes", n,
                       FINCH_ST_MAX_HEADER);
    if (n > st->size - ST_HEADER_AT)
        return fail_at(st, err, 0,
                       "header length %" PRIu64 " is past the end of the file (%zu bytes "
                       "after the length)",
                       n, st->size - ST_HEADER_AT);
    st->header_len = (size_t)n;
    st->section = st->data + ST_HEADER_AT + n;
    st->section_size = st->size - ST_HEADER_AT - (size_t)n;

    json_error_t jerr;
    json_t *root;
    finch_status s = finch_json_loadb((const char *)st->data + ST_HEADER_AT, st->header_len,
                                      JSON_REJECT_DUPLICATES, st->path, &root, &jerr, err);
    if (s) return s;
    if (!root)
        return fail_at(st, err, ST_HEADER_AT + (size_t)(jerr.position > 0 ? jerr.position : 0),
                       "header is not valid JSON: %s", jerr.text);
    if (!json_is_object(root)) {
        s = fail_at(st, err, ST_HEADER_AT, "header JSON is not an object");
        goto done;
    }
    size_t n_keys = json_object_size(root);
    st->tensors =
        finch_calloc(n_keys ? n_keys : 1, sizeof *st->tensors, "safetensors tensors", err);
    if (!st->tensors) {
        s = FINCH_E_NOMEM;
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, ST_META_KEY) == 0) {
            if ((s = parse_meta(st, val, err))) goto done;
            continue;
        }
        finch_st_tensor *t = &st->tensors[st->n_tensors];
        if ((s = parse_tensor(st, key, val, t, err))) goto done;
        if (!(t->name = dup_str(key, "safetensors tensor name", err))) {
            s = FINCH_E_NOMEM;
            goto done;
        }
        st->n_tensors++;
    }
    if ((s = check_tiling(st, err))) goto done;
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, tensor_name_cmp);
    if (st->n_meta) qsort(st->meta, (size_t)st->n_meta, sizeof *st->meta, meta_key_cmp);
done:
    json_decref(root);
    return s;
}

/* ---- reader: open, close, accessors ------------------------------------------------- */

/* Takes ownership of map (when mapped) and parses the buffer. */
static finch_status open_buffer(const uint8_t *data, size_t size, const char *name,
                                finch_mapped_file *map, finch_st **out, finch_err *err) {
    finch_st *st = finch_calloc(1, sizeof *st, "safetensors document", err);
    if (!st) {
        finch_file_unmap(map);
        return FINCH_E_NOMEM;
    }
    st->map = *map;
    st->data = data;
    st->size = size;
    if (!(st->path = dup_str(name, "safetensors path", err))) {
        st_free(st);
        return FINCH_E_NOMEM;
    }
    finch_status s = parse(st, err);
    if (s) {
        st_free(st);
        return s;
    }
    *out = st;
    return FINCH_OK;
}

finch_status finch_st_open(const char *path, finch_st **out, finch_err *err) {
    FINCH_ASSERT(path && out);
    finch_mapped_file map;
    finch_status s = finch_file_map(path, &map, err);
    if (s) return s;
    return open_buffer(map.data, map.size, path, &map, out, err);
}

finch_status finch_st_open_memory(const void *data, size_t size, const char *name, finch_st **out,
                                  finch_err *err) {
    FINCH_ASSERT(out && (data || size == 0));
    finch_mapped_file none = {0};
    return open_buffer(data, size, name ? name : "<memory>", &none, out, err);
}

void finch_st_evict_range(const finch_st *f, const void *p, size_t n) {
    if (f) finch_file_evict_range(&f->map, p, n);
}

void finch_st_close(finch_st *st) {
    st_free(st);
}

const char *finch_st_path(const finch_st *st) {
    return st->path;
}

int64_t finch_st_n_tensors(const finch_st *st) {
    return st->n_tensors;
}

const finch_st_tensor *finch_st_tensor_at(const finch_st *st, int64_t i) {
    FINCH_ASSERT(i >= 0 && i < st->n_tensors);
    return &st->tensors[i];
}

const finch_st_tensor *finch_st_find(const finch_st *st, const char *name) {
    FINCH_ASSERT(name);
    int64_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int64_t finch_st_n_meta(const finch_st *st) {
    return st->n_meta;
}

void finch_st_meta_at(const finch_st *st, int64_t i, const char **key, const char **value) {
    FINCH_ASSERT(i >= 0 && i < st->n_meta);
    if (key) *key = st->meta[i].key;
    if (value) *value = st->meta[i].value;
}

const char *finch_st_get_meta(const finch_st *st, const char *key) {
    FINCH_ASSERT(key);
    for (int64_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}

/* ---- writer ------------------------------------------------------------------------- */

typedef struct {
    char *name;
    finch_st_dtype dtype;
    int n_dims;
    int64_t shape[FINCH_ST_MAX_DIMS];
    size_t nbytes;
    const void *data; /* borrowed */
} writer_tensor;

struct finch_st_writer {
    writer_tensor *tensors;
    int64_t n_tensors, cap_tensors;
    st_meta *meta;
    int64_t n_meta, cap_meta;
};

finch_st_writer *finch_st_writer_new(finch_err *err) {
    return finch_calloc(1, sizeof(finch_st_writer), "safetensors writer", err);
}

void finch_st_writer_free(finch_st_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    for (int64_t i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->meta);
    free(w);
}

static finch_status grow(void **items, int64_t n, int64_t *cap, size_t item_bytes, finch_err *err) {
    if (n < *cap) return FINCH_OK;
    int64_t c = *cap ? *cap * 2 : 16;
    size_t bytes;
    if (!finch_size_mul((size_t)c, item_bytes, &bytes))
        return finch_err_set(err, FINCH_E_NOMEM, "safetensors writer: too many entries");
    void *p = finch_mem_realloc(*items, bytes);
    if (!p)
        return finch_err_set(err, FINCH_E_NOMEM, "safetensors writer: out of memory (%zu bytes)",
                             bytes);
    *items = p;
    *cap = c;
    return FINCH_OK;
}

/* True when s is valid UTF-8, as jansson requires of a string: shortest forms, no
 * surrogates, nothing above U+10FFFF (checked here, without allocating). */
static bool valid_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p++;
        int more = c < 0x80             ? 0
                   : (c & 0xe0) == 0xc0 ? 1
                   : (c & 0xf0) == 0xe0 ? 2
                   : (c & 0xf8) == 0xf0 ? 3
                                        : -1;
        if (more < 0) return false;
        c &= 0x7fu >> more;
        for (int k = 0; k < more; k++, p++) {
            if ((*p & 0xc0) != 0x80) return false;
            c = c << 6 | (*p & 0x3fu);
        }
        static const unsigned least[4] = {0, 0x80, 0x800, 0x10000};
        if (c < least[more] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return false;
    }
    return true;
}

finch_status finch_st_writer_add(finch_st_writer *w, const char *name, finch_st_dtype dtype,
                                 int n_dims, const int64_t *shape, const void *data,
                                 finch_err *err) {
    FINCH_ASSERT(w && name && (shape || n_dims == 0));
    if ((unsigned)dtype >= FINCH_ST_DTYPE_COUNT)
        return finch_err_set(err, FINCH_E_USAGE, "safetensors writer: tensor '%s': dtype %d", name,
                             (int)dtype);
    if (!name[0] || strcmp(name, ST_META_KEY) == 0 || !valid_utf8(name))
        return finch_err_set(err, FINCH_E_USAGE,
                             "safetensors writer: tensor name '%s' is empty, reserved or not "
                             "UTF-8",
                             name);
    if (n_dims < 0 || n_dims > FINCH_ST_MAX_DIMS)
        return finch_err_set(err, FINCH_E_USAGE,
                             "safetensors writer: tensor '%s': %d dimensions, at most %d", name,
                             n_dims, FINCH_ST_MAX_DIMS);
    size_t elems = 1;
    for (int k = 0; k < n_dims; k++) {
        if (shape[k] < 0 || !finch_size_mul(elems, (size_t)shape[k], &elems))
            return finch_err_set(err, FINCH_E_USAGE,
                                 "safetensors writer: tensor '%s': dimension %d is %" PRId64
                                 " (negative or the size overflows)",
                                 name, k, shape[k]);
    }
    size_t nbytes;
    if (!finch_size_mul(elems, (size_t)dtypes[dtype].size, &nbytes))
        return finch_err_set(err, FINCH_E_USAGE, "safetensors writer: tensor '%s': too large",
                             name);
    if (nbytes && !data)
        return finch_err_set(err, FINCH_E_USAGE, "safetensors writer: tensor '%s': no data", name);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return finch_err_set(err, FINCH_E_USAGE, "safetensors writer: tensor '%s' added twice",
                                 name);
    finch_status s =
        grow((void **)&w->tensors, w->n_tensors, &w->cap_tensors, sizeof *w->tensors, err);
    if (s) return s;
    writer_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = dup_str(name, "safetensors tensor name", err))) return FINCH_E_NOMEM;
    t->dtype = dtype;
    t->n_dims = n_dims;
    for (int k = 0; k < n_dims; k++) t->shape[k] = shape[k];
    t->nbytes = nbytes;
    t->data = data;
    w->n_tensors++;
    return FINCH_OK;
}

finch_status finch_st_writer_set_meta(finch_st_writer *w, const char *key, const char *value,
                                      finch_err *err) {
    FINCH_ASSERT(w && key && value);
    if (!valid_utf8(key) || !valid_utf8(value))
        return finch_err_set(err, FINCH_E_USAGE,
                             "safetensors writer: metadata '%s' is not valid UTF-8", key);
    char *v = dup_str(value, "safetensors metadata value", err);
    if (!v) return FINCH_E_NOMEM;
    for (int64_t i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta[i].key, key) == 0) {
            free(w->meta[i].value);
            w->meta[i].value = v;
            return FINCH_OK;
        }
    }
    finch_status s = grow((void **)&w->meta, w->n_meta, &w->cap_meta, sizeof *w->meta, err);
    char *k = s ? NULL : dup_str(key, "safetensors metadata key", err);
    if (!k) {
        free(v);
        return s ? s : FINCH_E_NOMEM;
    }
    w->meta[w->n_meta].key = k;
    w->meta[w->n_meta].value = v;
    w->n_meta++;
    return FINCH_OK;
}

/* The reference writer's order: descending dtype (the enum follows its declaration order,
 * so a larger value means a larger or equal alignment), then name. */
static int write_order_cmp(const void *a, const void *b) {
    const writer_tensor *x = *(const writer_tensor *const *)a;
    const writer_tensor *y = *(const writer_tensor *const *)b;
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int meta_ptr_cmp(const void *a, const void *b) {
    return meta_key_cmp(*(const st_meta *const *)a, *(const st_meta *const *)b);
}

typedef struct {
    const char *path;
    const char *header; /* JSON, padded */
    size_t header_len;
    const writer_tensor *const *order;
    int64_t n;
} save_job;

static finch_status write_document(FILE *f, void *user, finch_err *err) {
    const save_job *job = user;
    uint8_t len[8];
    for (int k = 0; k < 8; k++) len[k] = (uint8_t)((uint64_t)job->header_len >> (8 * k));
    finch_status s = finch_fwrite(f, len, 8, job->path, err);
    if (!s) s = finch_fwrite(f, job->header, job->header_len, job->path, err);
    for (int64_t i = 0; !s && i < job->n; i++)
        if (job->order[i]->nbytes)
            s = finch_fwrite(f, job->order[i]->data, job->order[i]->nbytes, job->path, err);
    return s;
}

/* Builds the header JSON in data order; *out is malloc'd and padded with spaces to a
 * multiple of 8 bytes. */
static finch_status build_header(const finch_st_writer *w, const writer_tensor *const *order,
                                 char **out, size_t *out_len, finch_err *err) {
    finch_status s = FINCH_OK;
    const st_meta **meta = NULL;
    char *text = NULL;
    finch_json_begin();
    json_t *root = json_object();
    if (!root) goto nomem;
    if (w->n_meta) {
        meta = finch_calloc((size_t)w->n_meta, sizeof *meta, "safetensors metadata", err);
        if (!meta) {
            s = FINCH_E_NOMEM;
            goto done;
        }
        for (int64_t i = 0; i < w->n_meta; i++) meta[i] = &w->meta[i];
        qsort(meta, (size_t)w->n_meta, sizeof *meta, meta_ptr_cmp);
        json_t *m = json_object();
        if (!m || json_object_set_new(root, ST_META_KEY, m)) goto nomem;
        for (int64_t i = 0; i < w->n_meta; i++)
            if (json_object_set_new(m, meta[i]->key, json_string(meta[i]->value))) goto nomem;
    }
    uint64_t offset = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = order[i];
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        if (!e || !shape || !offs) {
            json_decref(e);
            json_decref(shape);
            json_decref(offs);
            goto nomem;
        }
        if (json_object_set_new(root, t->name, e)) {
            json_decref(shape);
            json_decref(offs);
            goto nomem;
        }
        /* (json_object_set_new takes the value even when it fails) */
        if (json_object_set_new(e, "dtype", json_string(dtypes[t->dtype].name))) {
            json_decref(shape);
            json_decref(offs);
            goto nomem;
        }
        if (json_object_set_new(e, "shape", shape)) {
            json_decref(offs);
            goto nomem;
        }
        if (json_object_set_new(e, "data_offsets", offs)) goto nomem;
        for (int k = 0; k < t->n_dims; k++)
            if (json_array_append_new(shape, json_integer(t->shape[k]))) goto nomem;
        if (json_array_append_new(offs, json_integer((json_int_t)offset)) ||
            json_array_append_new(offs, json_integer((json_int_t)(offset + t->nbytes))))
            goto nomem;
        offset += t->nbytes;
    }
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) goto nomem;
    size_t n = strlen(text), padded = n + (8 - n % 8) % 8;
    if (padded > FINCH_ST_MAX_HEADER) {
        s = finch_err_set(err, FINCH_E_USAGE,
                          "safetensors writer: header of %zu bytes is over the limit of %u", padded,
                          FINCH_ST_MAX_HEADER);
        goto done;
    }
    char *p = finch_mem_realloc(text, padded + 1);
    if (!p) goto nomem;
    text = p;
    memset(text + n, ' ', padded - n);
    text[padded] = 0;
    *out = text;
    *out_len = padded;
    text = NULL;
    goto done;
nomem:
    s = finch_err_set(err, FINCH_E_NOMEM, "safetensors writer: out of memory building the header");
done:
    free(text);
    free(meta);
    json_decref(root);
    finch_json_end(); /* each failure was caught where it happened */
    return s;
}

finch_status finch_st_writer_save(const finch_st_writer *w, const char *path, finch_err *err) {
    FINCH_ASSERT(w && path);
    finch_status s;
    const writer_tensor **order = NULL;
    char *header = NULL;
    size_t header_len = 0;
    if (w->n_tensors) {
        order = finch_calloc((size_t)w->n_tensors, sizeof *order, "safetensors order", err);
        if (!order) return FINCH_E_NOMEM;
        for (int64_t i = 0; i < w->n_tensors; i++) order[i] = &w->tensors[i];
        qsort(order, (size_t)w->n_tensors, sizeof *order, write_order_cmp);
    }
    if ((s = build_header(w, order, &header, &header_len, err))) goto done;
    save_job job = {path, header, header_len, order, w->n_tensors};
    s = finch_file_commit(path, write_document, &job, err);
done:
    free(header);
    free(order);
    return s;
}
