/*
 * io.h: model file formats. GGUF v3 (read through a read-only mapping, every field
 * bounds-checked before use; written atomically, laid out as llama.cpp requires).
 *
 * Facts: ../shared/FORMATS.md sections 1 and 8 (GGUF layout, value types, tensor infos,
 * alignment, what llama.cpp requires of a file it loads).
 *
 * Knows nothing of models: a GGUF here is keys, values and typed tensors.
 */
#ifndef FINCH_IO_H
#define FINCH_IO_H

#include "core/core.h"

/* Limits applied to every file before anything is allocated or indexed. */
#define FINCH_GGUF_MAX_DIMS 4
#define FINCH_GGUF_MAX_NAME 63           /* tensor name bytes (ggml's GGML_MAX_NAME - 1) */
#define FINCH_GGUF_MAX_KEY 65535         /* key bytes */
#define FINCH_GGUF_MAX_STRING (1u << 30) /* string bytes and array elements (as ggml) */

/* GGUF metadata value types, numbered as in the file. */
typedef enum {
    FINCH_GGUF_UINT8 = 0,
    FINCH_GGUF_INT8 = 1,
    FINCH_GGUF_UINT16 = 2,
    FINCH_GGUF_INT16 = 3,
    FINCH_GGUF_UINT32 = 4,
    FINCH_GGUF_INT32 = 5,
    FINCH_GGUF_FLOAT32 = 6,
    FINCH_GGUF_BOOL = 7,
    FINCH_GGUF_STRING = 8,
    FINCH_GGUF_ARRAY = 9,
    FINCH_GGUF_UINT64 = 10,
    FINCH_GGUF_INT64 = 11,
    FINCH_GGUF_FLOAT64 = 12,
    FINCH_GGUF_TYPE_COUNT
} finch_gguf_type;

/* A string inside the mapped file: not NUL-terminated. */
typedef struct {
    const char *ptr;
    uint64_t len;
} finch_str;

/* One metadata key/value pair. Scalars are decoded into the union; arrays point into the
 * mapping (arr_data, elements little-endian, back to back) except string arrays, which
 * are decoded into arr_str. */
typedef struct {
    char *key;                /* NUL-terminated copy of the key */
    finch_gguf_type type;     /* value type */
    finch_gguf_type arr_type; /* element type when type is FINCH_GGUF_ARRAY */
    uint64_t arr_n;           /* element count when type is FINCH_GGUF_ARRAY */
    const uint8_t *arr_data;  /* elements of a non-string array, in the mapping */
    finch_str *arr_str;       /* elements of a string array (owned array of views) */
    union {
        uint64_t u;    /* UINT8..UINT64 widened */
        int64_t i;     /* INT8..INT64 widened */
        double f;      /* FLOAT32, FLOAT64 widened */
        bool b;        /* BOOL */
        finch_str str; /* STRING, in the mapping */
    } v;
    uint64_t file_offset; /* where the key starts in the file, for messages */
} finch_gguf_kv;

/* One tensor: its info and a pointer to its bytes in the mapping. */
typedef struct {
    char *name;          /* NUL-terminated copy */
    finch_dtype type;    /* storage type (a known ggml type id) */
    int n_dims;          /* 1..4 as stored */
    int64_t ne[4];       /* dims, ne[0] fastest (contiguous); missing dims are 1 */
    uint64_t offset;     /* relative to the data section */
    size_t nbytes;       /* bytes of tensor data */
    const uint8_t *data; /* the bytes, inside the mapping */
} finch_gguf_tensor;

typedef struct finch_gguf finch_gguf;

/* Maps and parses a GGUF file (version 2 or 3). Validates magic, version, counts against
 * the file size, every string and array length, value and tensor types, dims (<= 4, each
 * >= 0, products overflow-checked), block-size divisibility, alignment, and that every tensor's
 * data lies inside the file without overlapping another. Errors name the path, the byte
 * offset and the field. The caller owns *out (finch_gguf_close). */
finch_status finch_gguf_open(const char *path, finch_gguf **out, finch_err *err);

/* The same over a buffer the caller keeps alive until finch_gguf_close (used by fuzzing
 * and tests). name is used in messages. The buffer must be 8-byte aligned (malloc's is),
 * so that every tensor's data is: the reader accepts alignments of 8 and more only. */
finch_status finch_gguf_open_memory(const void *data, size_t size, const char *name,
                                    finch_gguf **out, finch_err *err);

/* Releases everything, unmapping the file when finch_gguf_open mapped it. NULL-safe. */
void finch_gguf_close(finch_gguf *g);
/* Drops the mapped file's pages from memory (finch_file_evict); its tensors stay readable. */
void finch_gguf_evict(const finch_gguf *g);
/* Drops the file's pages within [p, p + n) when they are the file's (finch_file_evict_range). */
void finch_gguf_evict_range(const finch_gguf *g, const void *p, size_t n);

/* The file's name as given to open, for messages. Borrowed. */
const char *finch_gguf_path(const finch_gguf *g);
uint32_t finch_gguf_version(const finch_gguf *g);
uint32_t finch_gguf_alignment(const finch_gguf *g);

/* Key/value pairs in file order; borrowed, valid until close. */
int64_t finch_gguf_n_kv(const finch_gguf *g);
const finch_gguf_kv *finch_gguf_kv_at(const finch_gguf *g, int64_t i);
/* The pair with this key, or NULL. */
const finch_gguf_kv *finch_gguf_find_kv(const finch_gguf *g, const char *key);

/* Tensors in file order; borrowed, valid until close. */
int64_t finch_gguf_n_tensors(const finch_gguf *g);
const finch_gguf_tensor *finch_gguf_tensor_at(const finch_gguf *g, int64_t i);
/* The tensor with this name, or NULL. */
const finch_gguf_tensor *finch_gguf_find_tensor(const finch_gguf *g, const char *name);

/* Typed getters. Each returns FINCH_OK and writes *out when the key is present with a
 * compatible type; when it is absent it returns FINCH_OK leaving *out untouched if
 * required is false, else FINCH_E_FORMAT ("<path>: missing required key 'x'"). A wrong
 * type or an out-of-range value is FINCH_E_FORMAT naming the key, its type and the
 * expected one. _u32/_i64 accept any integer type (files in the wild use u32 where the
 * spec says u64); _f32 accepts FLOAT32 and FLOAT64. */
finch_status finch_gguf_get_u32(const finch_gguf *g, const char *key, bool required, uint32_t *out,
                                finch_err *err);
finch_status finch_gguf_get_i64(const finch_gguf *g, const char *key, bool required, int64_t *out,
                                finch_err *err);
finch_status finch_gguf_get_f32(const finch_gguf *g, const char *key, bool required, float *out,
                                finch_err *err);
finch_status finch_gguf_get_bool(const finch_gguf *g, const char *key, bool required, bool *out,
                                 finch_err *err);
finch_status finch_gguf_get_str(const finch_gguf *g, const char *key, bool required, finch_str *out,
                                finch_err *err);
/* An array whose elements have type elem; *out is the pair itself (borrowed). */
finch_status finch_gguf_get_arr(const finch_gguf *g, const char *key, finch_gguf_type elem,
                                bool required, const finch_gguf_kv **out, finch_err *err);

/* Name of a value type ("uint32", ...), or "unknown". */
const char *finch_gguf_type_name(uint32_t type);

/* ---- writer ------------------------------------------------------------------------- */

typedef struct finch_gguf_writer finch_gguf_writer;

/* An empty GGUF v3 document; NULL on out-of-memory (err filled). */
finch_gguf_writer *finch_gguf_writer_new(finch_err *err);
void finch_gguf_writer_free(finch_gguf_writer *w);

/* Metadata setters, in the types llama.cpp expects (FORMATS.md 1.8). Keys are copied and
 * must be unique and non-empty (FINCH_E_USAGE otherwise). */
finch_status finch_gguf_set_u32(finch_gguf_writer *w, const char *key, uint32_t v, finch_err *err);
finch_status finch_gguf_set_i32(finch_gguf_writer *w, const char *key, int32_t v, finch_err *err);
finch_status finch_gguf_set_u64(finch_gguf_writer *w, const char *key, uint64_t v, finch_err *err);
finch_status finch_gguf_set_f32(finch_gguf_writer *w, const char *key, float v, finch_err *err);
finch_status finch_gguf_set_bool(finch_gguf_writer *w, const char *key, bool v, finch_err *err);
finch_status finch_gguf_set_str(finch_gguf_writer *w, const char *key, const char *v,
                                finch_err *err);
/* Arrays: elements are copied. */
finch_status finch_gguf_set_arr_str(finch_gguf_writer *w, const char *key, const char *const *v,
                                    int64_t n, finch_err *err);
finch_status finch_gguf_set_arr_i32(finch_gguf_writer *w, const char *key, const int32_t *v,
                                    int64_t n, finch_err *err);
finch_status finch_gguf_set_arr_f32(finch_gguf_writer *w, const char *key, const float *v,
                                    int64_t n, finch_err *err);
/* Copies a key/value pair read from another file (any type, arrays included). */
finch_status finch_gguf_set_kv(finch_gguf_writer *w, const finch_gguf_kv *kv, finch_err *err);
/* Copies every metadata pair of g but the one named except (NULL: none). */
finch_status finch_gguf_set_kvs_from(finch_gguf_writer *w, const finch_gguf *g, const char *except,
                                     finch_err *err);

/* Adds a tensor. ne has n_dims entries, ne[0] fastest; data (nbytes as the dtype implies)
 * is borrowed and must stay valid until finch_gguf_writer_save returns. Names longer than
 * 63 bytes, duplicates, ne[0] not a multiple of the block size: FINCH_E_USAGE. */
finch_status finch_gguf_add_tensor(finch_gguf_writer *w, const char *name, finch_dtype type,
                                   int n_dims, const int64_t *ne, const void *data, finch_err *err);

/* Makes a tensor's bytes at save time: writes exactly nbytes into buf (the writer's, freed
 * once written). FINCH_OK, or an error (err filled) that stops the save. */
typedef finch_status (*finch_gguf_fill_fn)(void *buf, size_t nbytes, void *user, finch_err *err);
/* As finch_gguf_add_tensor, but the data is made by fill while finch_gguf_writer_save
 * writes the file, tensor after tensor in the order added, so a writer holds one tensor's
 * bytes at a time. user is passed to fill and must stay valid until the save returns. */
finch_status finch_gguf_add_tensor_fill(finch_gguf_writer *w, const char *name, finch_dtype type,
                                        int n_dims, const int64_t *ne, finch_gguf_fill_fn fill,
                                        void *user, finch_err *err);

/* Writes the document atomically (finch_file_commit): tensors in the order added, data
 * offsets contiguous with 32-byte alignment, padding after the last tensor. */
finch_status finch_gguf_writer_save(const finch_gguf_writer *w, const char *path, finch_err *err);

/* ---- safetensors -------------------------------------------------------------------- */
/*
 * Facts: ../shared/FORMATS.md section 2.3 (layout, dtype strings, what the reference
 * reader validates and how the reference writer lays a file out); 2.1b for PEFT adapters.
 */

#define FINCH_ST_MAX_HEADER 100000000u /* header bytes, as the reference reader and writer */
#define FINCH_ST_MAX_DIMS 8            /* dims of one tensor (the format has no limit) */

/* safetensors element types, in the reference implementation's order, which is also the
 * order of increasing alignment its writer sorts by. Sub-byte types (F4, F6_*) are not
 * read (FINCH_E_UNSUPPORTED). */
typedef enum {
    FINCH_ST_BOOL,
    FINCH_ST_U8,
    FINCH_ST_I8,
    FINCH_ST_F8_E5M2,
    FINCH_ST_F8_E4M3,
    FINCH_ST_F8_E8M0,
    FINCH_ST_F8_E4M3FNUZ,
    FINCH_ST_F8_E5M2FNUZ,
    FINCH_ST_I16,
    FINCH_ST_U16,
    FINCH_ST_F16,
    FINCH_ST_BF16,
    FINCH_ST_I32,
    FINCH_ST_U32,
    FINCH_ST_F32,
    FINCH_ST_C64,
    FINCH_ST_F64,
    FINCH_ST_I64,
    FINCH_ST_U64,
    FINCH_ST_DTYPE_COUNT
} finch_st_dtype;

/* The dtype's name in the file ("BF16"), or "unknown". */
const char *finch_st_dtype_name(finch_st_dtype t);
/* Bytes of one element (1, 2, 4 or 8); 0 for a value outside the enum. */
int finch_st_dtype_size(finch_st_dtype t);
/* The finch storage type with the same bytes (F32, F16, BF16, F64, I8..I64), or
 * FINCH_DTYPE_COUNT when there is none (BOOL, U8, U16..U64, F8_*, C64). */
finch_dtype finch_st_dtype_to_finch(finch_st_dtype t);

/* One tensor of an open file. The data lies inside the mapping, little-endian, C order;
 * it is aligned to the element size when the header length is a multiple of 8 and the
 * tensors are sorted by alignment (files from the reference writer and from
 * finch_st_writer_save are), not otherwise: read it with memcpy unless you checked. */
typedef struct {
    const char *name;                 /* NUL-terminated, owned by the file */
    finch_st_dtype dtype;             /* element type as stored */
    finch_dtype type;                 /* finch_st_dtype_to_finch(dtype) */
    int n_dims;                       /* 0 (a scalar) .. FINCH_ST_MAX_DIMS */
    int64_t shape[FINCH_ST_MAX_DIMS]; /* torch order, outermost first; unused dims are 1 */
    uint64_t n_elems;                 /* product of shape (1 for a scalar, 0 for an empty tensor) */
    uint64_t offset;                  /* begin, relative to the data section */
    size_t nbytes;                    /* n_elems * element size */
    const uint8_t *data;              /* the bytes, inside the mapping; never NULL, even when
                                         nbytes is 0 */
} finch_st_tensor;

typedef struct finch_st finch_st;

/* Maps and parses a safetensors file. Validates: the 8-byte header length (at most
 * FINCH_ST_MAX_HEADER and within the file), the header being UTF-8 JSON (an object, no
 * duplicate keys), each entry's dtype (known), shape (non-negative integers, at most
 * FINCH_ST_MAX_DIMS, products overflow-checked), data_offsets (two integers, begin <= end,
 * end within the data section, end - begin == elements * element size), that no two
 * tensors overlap and that the tensors cover the data section exactly (no holes, no
 * trailing bytes), and "__metadata__" being an object of string values. Errors are
 * FINCH_E_FORMAT naming the path, the byte offset, the tensor and the field (FINCH_E_IO
 * for the file itself, FINCH_E_UNSUPPORTED for a sub-byte dtype). The caller owns *out. */
finch_status finch_st_open(const char *path, finch_st **out, finch_err *err);
/* The same over a buffer the caller keeps alive until finch_st_close; name is used in
 * messages. */
finch_status finch_st_open_memory(const void *data, size_t size, const char *name, finch_st **out,
                                  finch_err *err);
/* Releases everything, unmapping the file when finch_st_open mapped it. NULL-safe. */
/* Drops the file's pages within [p, p + n) when they are the file's (finch_file_evict_range). */
void finch_st_evict_range(const finch_st *f, const void *p, size_t n);
void finch_st_close(finch_st *st);

/* The name given to open. Borrowed. */
const char *finch_st_path(const finch_st *st);
/* Tensors sorted by name (strcmp); borrowed, valid until close. */
int64_t finch_st_n_tensors(const finch_st *st);
const finch_st_tensor *finch_st_tensor_at(const finch_st *st, int64_t i);
/* The tensor with this name, or NULL (binary search). */
const finch_st_tensor *finch_st_find(const finch_st *st, const char *name);
/* "__metadata__" pairs sorted by key; borrowed, NUL-terminated, valid until close. */
int64_t finch_st_n_meta(const finch_st *st);
void finch_st_meta_at(const finch_st *st, int64_t i, const char **key, const char **value);
/* The metadata value for key, or NULL. */
const char *finch_st_get_meta(const finch_st *st, const char *key);

/* ---- safetensors writer --------------------------------------------------------------- */

typedef struct finch_st_writer finch_st_writer;

/* An empty document; NULL on out-of-memory (err filled). */
finch_st_writer *finch_st_writer_new(finch_err *err);
void finch_st_writer_free(finch_st_writer *w);

/* Adds a tensor. shape has n_dims (0..FINCH_ST_MAX_DIMS) entries, outermost first, each
 * >= 0; data (elements * element size bytes, little-endian, C order) is borrowed and must
 * stay valid until finch_st_writer_save returns; it may be NULL for an empty tensor. The
 * name is copied. Empty or duplicate names, names "__metadata__" or not valid UTF-8, bad
 * shapes: FINCH_E_USAGE. */
finch_status finch_st_writer_add(finch_st_writer *w, const char *name, finch_st_dtype dtype,
                                 int n_dims, const int64_t *shape, const void *data,
                                 finch_err *err);
/* Sets a "__metadata__" pair (copied; a second set of a key replaces its value). Keys and
 * values must be valid UTF-8 (FINCH_E_USAGE otherwise). */
finch_status finch_st_writer_set_meta(finch_st_writer *w, const char *key, const char *value,
                                      finch_err *err);
/* Writes the file atomically (finch_file_commit) as the reference writer lays it out:
 * tensors sorted by descending dtype alignment then name, back to back; compact header
 * JSON with "__metadata__" first (keys sorted) and the tensors in data order, padded with
 * spaces to a multiple of 8 bytes, so every tensor is aligned to its element size. */
finch_status finch_st_writer_save(const finch_st_writer *w, const char *path, finch_err *err);

/* ---- Hugging Face model folders ------------------------------------------------------ */
/*
 * Facts: ../shared/FORMATS.md section 2.4 (config.json fields, weight names). io/ reads
 * the two JSON files of a folder; model/load_hf.c binds the tensors.
 */

/* The most blocks a config.json may declare. */
#define FINCH_HF_MAX_LAYERS 1024

/* What finch takes from a config.json: the LLaMA family (llama, SmolLM, mistral, qwen2),
 * gpt2, and gemma3_text. */
typedef struct {
    char model_type[16];   /* "llama", "mistral", "qwen2", "gpt2" or "gemma3_text" */
    char architecture[64]; /* architectures[0], or "" when absent */
    int hidden_size;       /* C */
    int intermediate_size; /* F */
    int num_hidden_layers;
    int num_attention_heads; /* H */
    int num_key_value_heads; /* KVH (H when absent or null) */
    int head_dim;            /* D (hidden_size / H when absent or null) */
    int vocab_size;          /* V */
    int max_position_embeddings;
    int context; /* positions finch may use: max_position_embeddings, or the
                    sliding window when one is active and smaller (attention
                    within the window is plain causal attention) */
    float rms_norm_eps;
    float rope_theta;         /* 10000 when absent */
    bool tie_word_embeddings; /* false when absent */
    bool qkv_bias;            /* q/k/v projections carry biases (qwen2) */
    bool bnb_nf4; /* quantization_config: bitsandbytes 4-bit NF4 (projections as Linear4bit) */
    int bos_token_id, eos_token_id; /* -1 when absent or null; the first of a list */
    char torch_dtype[16];           /* torch_dtype (or transformers v5's dtype), "" when absent */
    /* gemma3_text (read_gemma3 in hf_config.c); zero for the other families */
    int sliding_window;                      /* positions a sliding-window block attends to */
    float rope_local_base_freq;              /* the RoPE base of the sliding-window blocks */
    bool layer_sliding[FINCH_HF_MAX_LAYERS]; /* per block: layer_types' "sliding_attention" */
} finch_hf_config;

/* Reads and validates a config.json. Missing required fields, wrong JSON types and absurd
 * values are FINCH_E_FORMAT; fields finch does not implement (rope_scaling other than
 * null/default, hidden_act other than silu, attention_bias or mlp_bias true on llama or
 * mistral, quantization_config, an unknown model_type) are FINCH_E_UNSUPPORTED. Every
 * message names the path and the field. */
finch_status finch_hf_config_load(const char *path, finch_hf_config *out, finch_err *err);

/* The weight_map of a sharded checkpoint's model.safetensors.index.json. */
typedef struct {
    int64_t n;     /* entries */
    char **tensor; /* tensor names, sorted (strcmp) */
    int *file;     /* per entry: index into files */
    int n_files;
    char **files; /* distinct shard file names, in first-seen order */
} finch_hf_index;

/* Reads an index file. Shard names must be plain file names (no '/', not "." or "..").
 * FINCH_E_FORMAT naming the path and the entry otherwise. The caller owns *out
 * (finch_hf_index_free). */
finch_status finch_hf_index_load(const char *path, finch_hf_index *out, finch_err *err);
/* The shard file index holding tensor, or -1 (binary search). */
int finch_hf_index_find(const finch_hf_index *ix, const char *tensor);
void finch_hf_index_free(finch_hf_index *ix);

/* ---- JSON files ---------------------------------------------------------------------- */

typedef struct json_t json_t;

/* jansson's own allocations go through finch_mem_alloc (and free), so the fault hook reaches
 * JSON parsing and building too. jansson ignores some failed allocations (a byte dropped from
 * a string it is reading, an object member not set), so the library brackets every stretch
 * of jansson calls (a parse, or building and writing a document) with finch_json_begin and
 * finch_json_end: inside one, the first failed allocation makes every later one of the
 * stretch fail as well, and finch_json_end says whether any failed, in which case whatever
 * jansson returned is incomplete and the caller reports FINCH_E_NOMEM. Stretches nest
 * (an inner one's failure is the outer one's too) and are per thread; outside them jansson
 * behaves as it does by itself. The first finch_json_begin installs the allocator for the
 * process (once, thread-safe); memory jansson allocated before is released with free, as
 * ours is. */
void finch_json_begin(void);
bool finch_json_end(void);

/* json_loadb and json_load_file in a stretch of their own. FINCH_E_NOMEM ("<name>: out of
 * memory reading JSON") when an allocation failed; otherwise FINCH_OK with *out the document,
 * or NULL and *je filled when the text is not valid JSON (or, for a file, cannot be read:
 * je->line < 1), which the caller words as its error. */
typedef struct json_error_t json_error_t;
finch_status finch_json_loadb(const char *text, size_t len, size_t flags, const char *name,
                              json_t **out, json_error_t *je, finch_err *err);
finch_status finch_json_load_file(const char *path, size_t flags, json_t **out, json_error_t *je,
                                  finch_err *err);

/* Writes j to path atomically, indented by 2 with sorted keys, as PEFT and transformers
 * write their configs. FINCH_E_NOMEM when an allocation of the enclosing JSON stretch (or of
 * the writing) failed: nothing is written then. */
finch_status finch_json_write_file(const json_t *j, const char *path, finch_err *err);

#endif /* FINCH_IO_H */
