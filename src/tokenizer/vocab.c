/*
 * vocab.c: builds a finch_tokenizer from the tokenizer.* keys of a GGUF file, and owns
 * its lookup tables: token text -> id and merge pair -> rank.
 *
 * What it checks (everything here comes from a file, so every problem is a FINCH_E_FORMAT
 * or FINCH_E_UNSUPPORTED message naming the file and the key): tokenizer.ggml.model is
 * "gpt2"; tokenizer.ggml.pre names a known pre-tokenizer; tokenizer.ggml.tokens is a
 * non-empty array of strings; tokenizer.ggml.token_type, when present, is an array of
 * int32 with one entry per token; every merge is "left right" with both parts tokens;
 * every *_token_id key is inside the vocabulary; add_bos_token/add_eos_token have an id
 * to add.
 *
 * What it does not do: SentencePiece vocabularies (tokenizer.ggml.model "llama") are
 * refused, and llama.cpp's per-model LSTRIP/RSTRIP token attributes (Phi-3, Jina) are not
 * applied.
 *
 * Facts: FORMATS.md section 5 (keys, types, defaults). Where llama.cpp tolerates a
 * malformed file (an out-of-range special id is ignored with a warning, a merge naming a
 * missing token is kept), finch refuses it with a message instead. Like llama.cpp, an
 * empty token text is read as "[EMPTY_<id>]" and, when two tokens share a text, the text
 * finds the later id.
 */
#include "internal.h"

#include <inttypes.h>
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

/* Inserts a merge unless the pair already has one: the first rank wins, as in llama.cpp. */
static void merge_put(finch_tokenizer *tok, int32_t left, int32_t right, int32_t rank,
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

/* ---- loading ------------------------------------------------------------------------ */

static char *dup_str(const char *s, size_t len, const char *what, finch_err *err) {
    char *p = finch_alloc(len + 1, what, err);
    if (!p) return NULL;
    memcpy(p, s, len);
    p[len] = 0;
    return p;
}

static bool str_is(finch_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

/* The keys of the special-token ids, by role. */
static const char *const special_keys[SP_COUNT] = {
    [SP_BOS] = "tokenizer.ggml.bos_token_id",
    [SP_EOS] = "tokenizer.ggml.eos_token_id",
    [SP_EOT] = "tokenizer.ggml.eot_token_id",
    [SP_EOM] = "tokenizer.ggml.eom_token_id",
    [SP_UNK] = "tokenizer.ggml.unknown_token_id",
    [SP_SEP] = "tokenizer.ggml.seperator_token_id", /* sic: the key is misspelled */
    [SP_PAD] = "tokenizer.ggml.padding_token_id",
    [SP_MASK] = "tokenizer.ggml.mask_token_id",
    [SP_FIM_PRE] = "tokenizer.ggml.fim_pre_token_id",
    [SP_FIM_SUF] = "tokenizer.ggml.fim_suf_token_id",
    [SP_FIM_MID] = "tokenizer.ggml.fim_mid_token_id",
    [SP_FIM_PAD] = "tokenizer.ggml.fim_pad_token_id",
    [SP_FIM_REP] = "tokenizer.ggml.fim_rep_token_id",
    [SP_FIM_SEP] = "tokenizer.ggml.fim_sep_token_id",
};

/* tokenizer.ggml.token_type values -> attribute bits. */
static uint8_t attr_of_type(int32_t type) {
    switch (type) {
    case 1: return TOK_NORMAL;
    case 2: return TOK_UNKNOWN;
    case 3: return TOK_CONTROL;
    case 4: return TOK_USER_DEFINED;
    case 5: return TOK_UNUSED;
    case 6: return TOK_BYTE;
    default: return TOK_UNDEFINED;
    }
}

finch_status finch_tok_load_texts(finch_tokenizer *tok, const finch_str *texts,
                                  const char *path, const char *what, finch_err *err) {
    int32_t V = tok->n_vocab;
    size_t total = 0;
    for (int32_t i = 0; i < V; i++) {
        size_t n = texts[i].len ? (size_t)texts[i].len : 32;
        if (!finch_size_add(total, n + 1, &total))
            return finch_err_set(err, FINCH_E_FORMAT, "%s: %s: token texts overflow the "
                                 "address space", path, what);
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

/* Copies the token texts and their types from the GGUF arrays. */
static finch_status load_tokens(finch_tokenizer *tok, const finch_gguf *g,
                                const finch_gguf_kv *tokens, const finch_gguf_kv *types,
                                finch_err *err) {
    finch_status st = finch_tok_load_texts(tok, tokens->arr_str, finch_gguf_path(g),
                                           "key 'tokenizer.ggml.tokens'", err);
    if (st || !types) return st;
    for (int32_t i = 0; i < tok->n_vocab; i++) {
        uint32_t u;
        memcpy(&u, types->arr_data + 4 * (size_t)i, 4); /* little-endian in the file */
        tok->attr[i] = attr_of_type((int32_t)u);
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

void finch_tok_add_merge(finch_tokenizer *tok, int32_t left, int32_t right, int32_t rank,
                         int32_t result) {
    merge_put(tok, left, right, rank, result);
}

/* Parses every merge "left right" (split at the first space at position >= 1, as
 * llama.cpp does) into the pair table. */
static finch_status load_merges(finch_tokenizer *tok, const finch_gguf *g,
                                const finch_gguf_kv *merges, finch_err *err) {
    const char *path = finch_gguf_path(g);
    if (merges->arr_n > (uint64_t)INT32_MAX)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: key 'tokenizer.ggml.merges' has %" PRIu64
                             " entries, at most %d", path, merges->arr_n, INT32_MAX);
    finch_status st = finch_tok_alloc_merges(tok, (int64_t)merges->arr_n, err);
    if (st) return st;

    for (int64_t r = 0; r < tok->n_merges; r++) {
        finch_str m = merges->arr_str[r];
        const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', (size_t)m.len - 1) : NULL;
        if (!sp)
            return finch_err_set(err, FINCH_E_FORMAT, "%s: key 'tokenizer.ggml.merges': entry "
                                 "%" PRId64 " '%.*s' has no space between its two parts",
                                 path, r, (int)(m.len < 64 ? m.len : 64), m.ptr);
        size_t ln = (size_t)(sp - m.ptr), rn = (size_t)m.len - ln - 1;
        int32_t left = finch_tok_find(tok, m.ptr, ln);
        int32_t right = finch_tok_find(tok, sp + 1, rn);
        if (left < 0 || right < 0) {
            const char *bad = left < 0 ? m.ptr : sp + 1;
            size_t bn = left < 0 ? ln : rn;
            return finch_err_set(err, FINCH_E_FORMAT, "%s: key 'tokenizer.ggml.merges': entry "
                                 "%" PRId64 " '%.*s': '%.*s' is not a token of "
                                 "tokenizer.ggml.tokens", path, r,
                                 (int)(m.len < 64 ? m.len : 64), m.ptr,
                                 (int)(bn < 64 ? bn : 64), bad);
        }
        /* the merged text is looked up in a small stack buffer when it fits */
        char small[256];
        char *joined = small;
        if (ln + rn > sizeof small) {
            joined = finch_alloc(ln + rn, "merge text", err);
            if (!joined) return FINCH_E_NOMEM;
        }
        memcpy(joined, m.ptr, ln);
        memcpy(joined + ln, sp + 1, rn);
        int32_t result = finch_tok_find(tok, joined, ln + rn);
        if (joined != small) free(joined);
        merge_put(tok, left, right, (int32_t)r, result);
    }
    return FINCH_OK;
}

/* The one-byte lookups BPE needs: the token of each byte's GPT-2 character, and the token
 * whose text is the byte itself (llama.cpp's fallback for pieces that are not tokens). */
static void load_byte_tables(finch_tokenizer *tok) {
    for (int b = 0; b < 256; b++) {
        char enc[4];
        int n = finch_utf8_put(finch_bpe_byte_to_cpt((uint8_t)b), enc);
        tok->byte_tok[b] = finch_tok_find(tok, enc, (size_t)n);
        char c = (char)b;
        tok->single_tok[b] = finch_tok_find(tok, &c, 1);
    }
}

/* Decodes every token once, as llama.cpp caches its pieces: control, unknown and
 * user-defined tokens stand for their own text; normal tokens for their bytes; byte,
 * unused and undefined tokens for nothing. */
static finch_status load_pieces(finch_tokenizer *tok, finch_err *err) {
    int32_t V = tok->n_vocab;
    tok->piece_off = finch_calloc((size_t)V + 1, sizeof *tok->piece_off, "token pieces", err);
    if (!tok->piece_off) return FINCH_E_NOMEM;
    size_t total = 0;
    for (int32_t i = 0; i < V; i++) {
        uint32_t n;
        const char *t = text_of(tok, i, &n);
        size_t k = 0;
        uint8_t a = tok->attr[i];
        if (a & (TOK_CONTROL | TOK_UNKNOWN | TOK_USER_DEFINED)) k = n;
        else if (a & TOK_NORMAL) k = finch_bpe_decode_text(t, n, NULL);
        tok->piece_off[i] = total;
        if (!finch_size_add(total, k, &total))
            return finch_err_set(err, FINCH_E_NOMEM, "decoded tokens overflow the address space");
    }
    tok->piece_off[V] = total;
    tok->piece_blob = finch_alloc(total, "token pieces", err);
    if (!tok->piece_blob) return FINCH_E_NOMEM;
    for (int32_t i = 0; i < V; i++) {
        uint32_t n;
        const char *t = text_of(tok, i, &n);
        char *dst = tok->piece_blob + tok->piece_off[i];
        uint8_t a = tok->attr[i];
        if (a & (TOK_CONTROL | TOK_UNKNOWN | TOK_USER_DEFINED)) memcpy(dst, t, n);
        else if (a & TOK_NORMAL) finch_bpe_decode_text(t, n, dst);
    }
    return FINCH_OK;
}

finch_status finch_tok_finish(finch_tokenizer *tok, finch_err *err) {
    load_byte_tables(tok);
    finch_status st = finch_tok_special_setup(tok, err);
    return st ? st : load_pieces(tok, err);
}

finch_status finch_tokenizer_from_gguf(const finch_gguf *g, finch_tokenizer **out,
                                       finch_err *err) {
    FINCH_ASSERT(g && out);
    const char *path = finch_gguf_path(g);
    finch_str model = {0}, pre = {0}, tmpl = {0};
    finch_status st;
    if ((st = finch_gguf_get_str(g, "tokenizer.ggml.model", false, &model, err))) return st;
    if (!model.ptr || str_is(model, "none") || str_is(model, "no_vocab")) {
        *out = NULL;
        return FINCH_OK;
    }
    if (!str_is(model, "gpt2"))
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: key 'tokenizer.ggml.model' is "
                             "'%.*s': finch reads only byte-level BPE vocabularies ('gpt2')",
                             path, (int)(model.len < 64 ? model.len : 64), model.ptr);

    finch_tokenizer *tok = finch_calloc(1, sizeof *tok, "tokenizer", err);
    if (!tok) return FINCH_E_NOMEM;
    snprintf(tok->model_name, sizeof tok->model_name, "gpt2");
    for (int r = 0; r < SP_COUNT; r++) tok->special[r] = -1;

    if ((st = finch_gguf_get_str(g, "tokenizer.ggml.pre", false, &pre, err))) goto fail;
    if (pre.ptr) {
        tok->pre_name = dup_str(pre.ptr, (size_t)pre.len, "pre-tokenizer name", err);
    } else {
        finch_log(FINCH_LOG_WARN, "%s: no tokenizer.ggml.pre key: using the 'default' "
                  "pre-tokenizer as llama.cpp does; tokenization may differ from the "
                  "model's own tokenizer", path);
        tok->pre_name = dup_str("default", 7, "pre-tokenizer name", err);
    }
    if (!tok->pre_name) {
        st = FINCH_E_NOMEM;
        goto fail;
    }
    bool add_bos = false, add_eos = false;
    if ((st = finch_pretok_init(&tok->pre, tok->pre_name, &tok->ignore_merges, &add_bos, err))) {
        finch_err_prefix(err, "%s: key 'tokenizer.ggml.pre'", path);
        goto fail;
    }

    const finch_gguf_kv *tokens, *types = NULL, *merges;
    if ((st = finch_gguf_get_arr(g, "tokenizer.ggml.tokens", FINCH_GGUF_STRING, true, &tokens,
                                 err)))
        goto fail;
    if (tokens->arr_n == 0 || tokens->arr_n > (uint64_t)INT32_MAX) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: key 'tokenizer.ggml.tokens' has %" PRIu64
                           " tokens, expected 1 to %d", path, tokens->arr_n, INT32_MAX);
        goto fail;
    }
    tok->n_vocab = (int32_t)tokens->arr_n;
    if ((st = finch_gguf_get_arr(g, "tokenizer.ggml.token_type", FINCH_GGUF_INT32, false,
                                 &types, err)))
        goto fail;
    if (types && types->arr_n != tokens->arr_n) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: key 'tokenizer.ggml.token_type' has %" PRIu64
                           " entries, expected %d (one per token of tokenizer.ggml.tokens)",
                           path, types->arr_n, tok->n_vocab);
        goto fail;
    }
    if ((st = finch_gguf_get_arr(g, "tokenizer.ggml.merges", FINCH_GGUF_STRING, true, &merges,
                                 err)))
        goto fail;

    for (int r = 0; r < SP_COUNT; r++) {
        uint32_t id;
        if (!finch_gguf_find_kv(g, special_keys[r])) continue;
        if ((st = finch_gguf_get_u32(g, special_keys[r], true, &id, err))) goto fail;
        if (id >= (uint32_t)tok->n_vocab) {
            st = finch_err_set(err, FINCH_E_FORMAT, "%s: key '%s' is %u, outside the vocabulary "
                               "of %d tokens", path, special_keys[r], id, tok->n_vocab);
            goto fail;
        }
        tok->special[r] = (int32_t)id;
    }
    if ((st = finch_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", false, &add_bos, err)) ||
        (st = finch_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", false, &add_eos, err)))
        goto fail;
    if (add_bos && tok->special[SP_BOS] < 0) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: BOS is to be added (key "
                           "'tokenizer.ggml.add_bos_token', or the default of pre-tokenizer "
                           "'%s') but key 'tokenizer.ggml.bos_token_id' is missing",
                           path, tok->pre_name);
        goto fail;
    }
    if (add_eos && tok->special[SP_EOS] < 0) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: key 'tokenizer.ggml.add_eos_token' is true "
                           "but key 'tokenizer.ggml.eos_token_id' is missing", path);
        goto fail;
    }
    tok->add_bos = add_bos;
    tok->add_eos = add_eos;

    if ((st = finch_gguf_get_str(g, "tokenizer.chat_template", false, &tmpl, err))) goto fail;
    if (tmpl.ptr) {
        tok->chat_template = dup_str(tmpl.ptr, (size_t)tmpl.len, "chat template", err);
        if (!tok->chat_template) {
            st = FINCH_E_NOMEM;
            goto fail;
        }
    }

    if ((st = load_tokens(tok, g, tokens, types, err))) goto fail;
    if ((st = load_merges(tok, g, merges, err))) goto fail;
    if ((st = finch_tok_finish(tok, err))) goto fail;
    *out = tok;
    return FINCH_OK;

fail:
    finch_tokenizer_free(tok);
    return st;
}

void finch_tokenizer_free(finch_tokenizer *tok) {
    if (!tok) return;
    finch_pretok_free(&tok->pre);
    free(tok->text_blob);
    free(tok->text_off);
    free(tok->text_len);
    free(tok->attr);
    free(tok->piece_blob);
    free(tok->piece_off);
    free(tok->index);
    free(tok->merges);
    free(tok->specials);
    free(tok->strip);
    free(tok->pre_name);
    free(tok->chat_template);
    free(tok);
}

/* ---- accessors ---------------------------------------------------------------------- */

int32_t finch_tokenizer_bos(const finch_tokenizer *tok) { return tok->special[SP_BOS]; }
int32_t finch_tokenizer_eos(const finch_tokenizer *tok) { return tok->special[SP_EOS]; }
const char *finch_tokenizer_model_name(const finch_tokenizer *tok) { return tok->model_name; }
const char *finch_tokenizer_pre_name(const finch_tokenizer *tok) { return tok->pre_name; }
int64_t finch_tokenizer_n_merges(const finch_tokenizer *tok) { return tok->n_merges; }
const char *finch_tokenizer_chat_template(const finch_tokenizer *tok) {
    return tok->chat_template;
}

FINCH_API int32_t finch_tokenizer_n_vocab(const finch_tokenizer *tok) { return tok->n_vocab; }

FINCH_API const char *finch_tokenizer_token_text(const finch_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return NULL;
    return tok->text_blob + tok->text_off[id];
}

FINCH_API int finch_tokenizer_is_eog(const finch_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return 0;
    return (tok->attr[id] & TOK_EOG) != 0;
}
