/*
 * spm_model.c: a SentencePiece model file (tokenizer.model, as Llama 2, Mistral and Gemma
 * folders ship it) read for its pieces: text, score and type in id order, which llama.cpp's
 * SentencePiece tokenizer merges by and gguf_kv.c writes as tokenizer.ggml.scores and
 * tokenizer.ggml.token_type.
 *
 * The file is a protobuf ModelProto (sentencepiece_model.proto):
 *
 *   ModelProto      1  repeated SentencePiece pieces    (length-delimited)
 *                   2  TrainerSpec trainer_spec          3: model_type (1 Unigram, 2 BPE,
 *                                                           3 word, 4 char)
 *                   3  NormalizerSpec normalizer_spec    3: add_dummy_prefix (default true)
 *                   (others skipped)
 *   SentencePiece   1  string piece
 *                   2  float score                       (32-bit, default 0)
 *                   3  Type type                         (varint: 1 normal, 2 unknown,
 *                                                           3 control, 4 user-defined,
 *                                                           5 unused, 6 byte; default 1)
 *
 * Wire format: each field is a varint key (field number << 3 | wire type) and a value:
 * wire type 0 a varint, 1 eight bytes, 2 a varint length and that many bytes, 5 four bytes.
 * Groups (3, 4) and the unused types 6, 7 are refused, as are varints over ten bytes,
 * lengths that run past their enclosing message, a known field with another wire type, an
 * empty piece, a score that is not finite and a type outside 1..6. Every message names the
 * file and the byte offset. Nothing here trusts a length before checking it against what
 * is left, so a truncated or hostile file ends in a message, never a read past the buffer.
 */
#include "internal.h"

#include <math.h> /* isfinite */

/* A read position inside [p, end) of a buffer that starts at base (offsets in messages). */
typedef struct {
    const uint8_t *p, *end, *base;
    const char *path;
} reader;

static size_t offset(const reader *r) {
    return (size_t)(r->p - r->base);
}

static finch_status bad(const reader *r, size_t at, finch_err *err, const char *what) {
    return finch_err_set(err, FINCH_E_FORMAT, "%s: not a SentencePiece model: %s at byte %zu",
                         r->path, what, at);
}

static finch_status varint(reader *r, uint64_t *out, finch_err *err) {
    const size_t at = offset(r);
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) return bad(r, at, err, "a varint cut off by the end of its message");
        const uint8_t b = *r->p++;
        if (i == 9 && b > 1) return bad(r, at, err, "a varint over 64 bits");
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            return FINCH_OK;
        }
    }
    return bad(r, at, err, "a varint over ten bytes");
}

/* Reads a field key: its number and wire type. */
static finch_status key(reader *r, uint32_t *field, int *wire, finch_err *err) {
    const size_t at = offset(r);
    uint64_t k;
    finch_status st = varint(r, &k, err);
    if (st) return st;
    *field = (uint32_t)(k >> 3);
    *wire = (int)(k & 7);
    if (k >> 3 == 0 || k >> 3 > 0x1fffffff) return bad(r, at, err, "a field number out of range");
    return FINCH_OK;
}

/* The bytes of a length-delimited value: *sub covers them and r moves past. */
static finch_status sub_message(reader *r, reader *sub, finch_err *err) {
    const size_t at = offset(r);
    uint64_t n;
    finch_status st = varint(r, &n, err);
    if (st) return st;
    if (n > (uint64_t)(r->end - r->p)) {
        char what[96];
        snprintf(what, sizeof what, "a length of %llu bytes that runs past its message (%zu left)",
                 (unsigned long long)n, (size_t)(r->end - r->p));
        return bad(r, at, err, what);
    }
    *sub = (reader){r->p, r->p + n, r->base, r->path};
    r->p += n;
    return FINCH_OK;
}

/* Moves past the value of a field of wire type wire. */
static finch_status skip(reader *r, int wire, size_t at, finch_err *err) {
    uint64_t v;
    reader sub;
    switch (wire) {
    case 0:
        return varint(r, &v, err);
    case 2:
        return sub_message(r, &sub, err);
    case 1:
    case 5: {
        const size_t n = wire == 1 ? 8 : 4;
        if ((size_t)(r->end - r->p) < n)
            return bad(r, at, err, "a fixed-size value cut off by the end of its message");
        r->p += n;
        return FINCH_OK;
    }
    default: {
        char what[48];
        snprintf(what, sizeof what, "wire type %d", wire);
        return bad(r, at, err, what);
    }
    }
}

static finch_status wrong_wire(const reader *r, size_t at, const char *field, int wire,
                               finch_err *err) {
    char what[96];
    snprintf(what, sizeof what, "%s with wire type %d", field, wire);
    return bad(r, at, err, what);
}

/* Appends one SentencePiece message (sub) as piece m->n. */
static finch_status read_piece(finch_spm_model *m, reader *sub, size_t *blob_cap, size_t *cap,
                               finch_err *err) {
    const size_t start = offset(sub);
    const uint8_t *text = NULL;
    size_t len = 0;
    float score = 0;
    uint64_t type = 1;
    while (sub->p < sub->end) {
        const size_t at = offset(sub);
        uint32_t field;
        int wire;
        finch_status st = key(sub, &field, &wire, err);
        if (st) return st;
        if (field == 1) {
            reader s;
            if (wire != 2) return wrong_wire(sub, at, "a piece", wire, err);
            if ((st = sub_message(sub, &s, err))) return st;
            text = s.p;
            len = (size_t)(s.end - s.p);
        } else if (field == 2) {
            if (wire != 5) return wrong_wire(sub, at, "a score", wire, err);
            if (sub->end - sub->p < 4) return bad(sub, at, err, "a score cut off");
            const uint32_t u = (uint32_t)sub->p[0] | (uint32_t)sub->p[1] << 8 |
                               (uint32_t)sub->p[2] << 16 | (uint32_t)sub->p[3] << 24;
            memcpy(&score, &u, 4);
            sub->p += 4;
        } else if (field == 3) {
            if (wire != 0) return wrong_wire(sub, at, "a piece type", wire, err);
            if ((st = varint(sub, &type, err))) return st;
        } else if ((st = skip(sub, wire, at, err)))
            return st;
    }
    char what[96];
    if (!text || !len) {
        snprintf(what, sizeof what, "piece %d has no text", (int)m->n);
        return bad(sub, start, err, what);
    }
    if (!isfinite(score)) {
        snprintf(what, sizeof what, "piece %d has a score that is not a finite number", (int)m->n);
        return bad(sub, start, err, what);
    }
    if (type < 1 || type > 6) {
        snprintf(what, sizeof what, "piece %d has type %llu (1..6 are defined)", (int)m->n,
                 (unsigned long long)type);
        return bad(sub, start, err, what);
    }
    if (m->n == INT32_MAX - 1) return bad(sub, start, err, "more than 2^31 pieces");
    if ((size_t)m->n == *cap) { /* the parallel arrays grow together */
        const size_t c = *cap ? 2 * *cap : 256;
        float *s = finch_mem_realloc(m->score, c * sizeof *s);
        if (s) m->score = s;
        int32_t *t = s ? finch_mem_realloc(m->type, c * sizeof *t) : NULL;
        if (t) m->type = t;
        size_t *o = t ? finch_mem_realloc(m->off, (c + 1) * sizeof *o) : NULL;
        if (!o) goto nomem;
        m->off = o;
        if (!*cap) o[0] = 0;
        *cap = c;
    }
    const size_t at = m->off[m->n];
    if (len > SIZE_MAX / 4 - at ||
        !finch_tok_grow((void **)&m->blob, blob_cap, at + len + 1, sizeof *m->blob))
        goto nomem;
    memcpy(m->blob + at, text, len);
    m->blob[at + len] = 0;
    m->score[m->n] = score;
    m->type[m->n] = (int32_t)type;
    m->off[m->n + 1] = at + len + 1;
    m->n++;
    return FINCH_OK;
nomem:
    return finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", sub->path);
}

/* The fields of TrainerSpec (model_type) or NormalizerSpec (add_dummy_prefix) it reads. */
static finch_status read_spec(reader *sub, uint32_t want, uint64_t *out, finch_err *err) {
    while (sub->p < sub->end) {
        const size_t at = offset(sub);
        uint32_t field;
        int wire;
        finch_status st = key(sub, &field, &wire, err);
        if (st) return st;
        if (field == want) {
            if (wire != 0) return wrong_wire(sub, at, "an enum or bool", wire, err);
            if ((st = varint(sub, out, err))) return st;
        } else if ((st = skip(sub, wire, at, err)))
            return st;
    }
    return FINCH_OK;
}

finch_status finch_spm_model_parse(const uint8_t *data, size_t size, const char *path,
                                   finch_spm_model *out, finch_err *err) {
    FINCH_ASSERT(out && path && (data || !size));
    *out = (finch_spm_model){.model_type = 0, .add_dummy_prefix = true};
    reader r = {data, data + size, data, path};
    size_t blob_cap = 0, cap = 0;
    finch_status st = FINCH_OK;
    while (r.p < r.end && !st) {
        const size_t at = offset(&r);
        uint32_t field;
        int wire;
        reader sub;
        if ((st = key(&r, &field, &wire, err))) break;
        if (field >= 1 && field <= 3) {
            if (wire != 2) {
                st = wrong_wire(&r, at, "a message field", wire, err);
                break;
            }
            if ((st = sub_message(&r, &sub, err))) break;
            uint64_t v = field == 3 ? 1 : 0;
            if (field == 1)
                st = read_piece(out, &sub, &blob_cap, &cap, err);
            else if (!(st = read_spec(&sub, 3, &v, err))) {
                if (field == 2)
                    out->model_type = (int)(v > 4 ? 0 : v);
                else
                    out->add_dummy_prefix = v != 0;
            }
        } else
            st = skip(&r, wire, at, err);
    }
    if (!st && !out->n)
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: not a SentencePiece model: it has no pieces",
                           path);
    if (st) finch_spm_model_free(out);
    return st;
}

finch_status finch_spm_model_load(const char *path, finch_spm_model *out, finch_err *err) {
    finch_mapped_file f;
    finch_status st = finch_file_map(path, &f, err);
    if (st) return st;
    st = finch_spm_model_parse(f.data, f.size, path, out, err);
    finch_file_unmap(&f);
    return st;
}

void finch_spm_model_free(finch_spm_model *m) {
    if (!m) return;
    free(m->blob);
    free(m->off);
    free(m->score);
    free(m->type);
    *m = (finch_spm_model){0};
}
