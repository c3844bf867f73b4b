/*
 * lookup.c: the tokenizer's lookup tables, filled by both loaders (vocab.c from GGUF,
 * hf_json.c from tokenizer.json) and read by special.c, bpe.c and spm.c: token text -> id
 * and merge pair -> (rank, merged token), both open-addressing hash tables with linear
 * probing, sized to a power of two at least twice their entries, so a probe always ends
 * at a free slot; and id -> decoded piece, one blob made at load from a per-type decoder
 * (llama.cpp's cache_token_to_piece).
 *
 * This file is the bottom of the tokenizer's own layering: it calls no other file of
 * src/tokenizer/, so special.c, bpe.c, spm.c and the loaders can all rest on it.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>

#define EMPTY_KEY UINT64_MAX

/* ---- hashing ------------------------------------------------------------------------ */

/* FNV-1a over the bytes, then a murmur-style finalizer so the low bits (the slot) mix. */
static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* The smallest power of two that is at least 2 * n (load factor at most one half). */
static uint64_t table_size(uint64_t n) {
    uint64_t s = 16;
    while (s < 2 * n) s *= 2;
    return s;
}

static const char *text_of(const finch_tokenizer *tok, int32_t id, uint32_t *len) {
    *len = tok->text_len[id];
    return tok->text_blob + tok->text_off[id];
}

int32_t finch_tok_find(const finch_tokenizer *tok, const char *s, size_t len) {
    uint64_t i = hash_bytes(s, len) & tok->index_mask;
    for (;;) {
        int32_t id = tok->index[i];
        if (id < 0) return -1;
        uint32_t n;
        const char *t = text_of(tok, id, &n);
        if (n == len && memcmp(t, s, len) == 0) return id;
        i = (i + 1) & tok->index_mask;
    }
}

/* Inserts id under its text; a later id with the same text replaces the earlier one, as
 * llama.cpp's token_to_id map does. */
static void index_put(finch_tokenizer *tok, int32_t id) {
    uint32_t len;
    const char *s = text_of(tok, id, &len);
    uint64_t i = hash_bytes(s, len) & tok->index_mask;
    for (;;) {
        int32_t cur = tok->index[i];
        if (cur < 0) {
            tok->index[i] = id;
            return;
        }
        uint32_t n;
        const char *t = text_of(tok, cur, &n);
        if (n == len && memcmp(t, s, len) == 0) {
            tok->index[i] = id;
            return;
        }
        i = (i + 1) & tok->index_mask;
    }
}

int32_t finch_tok_merge_rank(const finch_tokenizer *tok, int32_t left, int32_t right,
                             int32_t *result) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint64_t i = hash_u64(key) & tok->merge_mask;
    for (;;) {
        const merge_slot *m = &tok->merges[i];
        if (m->key == EMPTY_KEY) return -1;
        if (m->key == key) {
            *result = m->result;
            return m->rank;
        }
        i = (i + 1) & tok->merge_mask;
    }
}

/* A pair that already has a merge keeps its first rank, as in llama.cpp. */
void finch_tok_add_merge(finch_tokenizer *tok, int32_t left, int32_t right, int32_t rank,
                         int32_t result) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint64_t i = hash_u64(key) & tok->merge_mask;
    for (;;) {
        merge_slot *m = &tok->merges[i];
        if (m->key == key) return;
        if (m->key == EMPTY_KEY) {
            *m = (merge_slot){key, rank, result};
            return;
        }
        i = (i + 1) & tok->merge_mask;
    }
}

/* ---- filling ------------------------------------------------------------------------ */

finch_status finch_tok_load_texts(finch_tokenizer *tok, const finch_str *texts, const char *path,
                                  const char *what, finch_err *err) {
    int32_t V = tok->n_vocab;
    size_t total = 0;
    for (int32_t i = 0; i < V; i++) {
        size_t n = texts[i].len ? (size_t)texts[i].len : 32;
        if (!finch_size_add(total, n + 1, &total))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: %s: token texts overflow the "
                                 "address space",
                                 path, what);
    }
    tok->text_blob = finch_alloc(total, "token texts", err);
    tok->text_off = finch_calloc((size_t)V, sizeof *tok->text_off, "token offsets", err);
    tok->text_len = finch_calloc((size_t)V, sizeof *tok->text_len, "token lengths", err);
    tok->attr = finch_calloc((size_t)V, 1, "token attributes", err);
    tok->index_mask = table_size((uint64_t)V) - 1;
    tok->index = finch_alloc((tok->index_mask + 1) * sizeof *tok->index, "token index", err);
    if (!tok->text_blob || !tok->text_off || !tok->text_len || !tok->attr || !tok->index)
        return FINCH_E_NOMEM;
    memset(tok->index, 0xff, (tok->index_mask + 1) * sizeof *tok->index);

    size_t at = 0;
    for (int32_t i = 0; i < V; i++) {
        finch_str s = texts[i];
        tok->text_off[i] = at;
        if (s.len == 0) {
            /* llama.cpp names an empty token so that it can be looked up and printed */
            int n = snprintf(tok->text_blob + at, 32, "[EMPTY_%d]", (int)i);
            tok->text_len[i] = (uint32_t)n;
            at += (size_t)n + 1;
        } else {
            memcpy(tok->text_blob + at, s.ptr, (size_t)s.len);
            tok->text_blob[at + s.len] = 0;
            tok->text_len[i] = (uint32_t)s.len;
            at += (size_t)s.len + 1;
        }
        tok->attr[i] = TOK_NORMAL;
        index_put(tok, i);
    }
    return FINCH_OK;
}

finch_status finch_tok_alloc_merges(finch_tokenizer *tok, int64_t n, finch_err *err) {
    tok->n_merges = n;
    tok->merge_mask = table_size((uint64_t)n) - 1;
    tok->merges = finch_alloc((tok->merge_mask + 1) * sizeof *tok->merges, "merge table", err);
    if (!tok->merges) return FINCH_E_NOMEM;
    for (uint64_t i = 0; i <= tok->merge_mask; i++) tok->merges[i].key = EMPTY_KEY;
    return FINCH_OK;
}

finch_status finch_tok_set_pieces(finch_tokenizer *tok,
                                  size_t (*piece)(const finch_tokenizer *tok, int32_t id,
                                                  char *out),
                                  finch_err *err) {
    int32_t V = tok->n_vocab;
    tok->piece_off = finch_calloc((size_t)V + 1, sizeof *tok->piece_off, "token pieces", err);
    if (!tok->piece_off) return FINCH_E_NOMEM;
    size_t total = 0;
    for (int32_t i = 0; i < V; i++) {
        tok->piece_off[i] = total;
        if (!finch_size_add(total, piece(tok, i, NULL), &total))
            return finch_err_set(err, FINCH_E_NOMEM, "decoded tokens overflow the address space");
    }
    tok->piece_off[V] = total;
    tok->piece_blob = finch_alloc(total ? total : 1, "token pieces", err);
    if (!tok->piece_blob) return FINCH_E_NOMEM;
    for (int32_t i = 0; i < V; i++) piece(tok, i, tok->piece_blob + tok->piece_off[i]);
    return FINCH_OK;
}

/* ---- growth and the merge queue --------------------------------------------------------- */

bool finch_tok_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem) return false;
        c *= 2;
    }
    void *q = finch_mem_realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static bool merge_first(const finch_tok_merge *a, const finch_tok_merge *b) {
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

bool finch_tok_queue_push(finch_tok_queue *q, finch_tok_merge m) {
    if (!finch_tok_grow((void **)&q->v, &q->cap, q->n + 1, sizeof *q->v)) return false;
    size_t i = q->n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!merge_first(&m, &q->v[up])) break;
        q->v[i] = q->v[up];
        i = up;
    }
    q->v[i] = m;
    return true;
}

finch_tok_merge finch_tok_queue_pop(finch_tok_queue *q) {
    finch_tok_merge top = q->v[0], last = q->v[--q->n];
    size_t i = 0, n = q->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && merge_first(&q->v[c + 1], &q->v[c])) c++;
        if (!merge_first(&q->v[c], &last)) break;
        q->v[i] = q->v[c];
        i = c;
    }
    if (n) q->v[i] = last;
    return top;
}
