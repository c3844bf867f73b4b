/*
 * bpe.c: byte-level BPE (GPT-2 style): the row finch_tok_bpe of the vocabulary-type table,
 * used for tokenizer.ggml.model "gpt2" and for byte-level tokenizer.json files.
 *
 * Encoding, for each run of text between special tokens (special.c), after the NFC
 * normalizer and the prefix space of a tokenizer.json that asks for them:
 *   1. pretok.c makes the llama.cpp view of the bytes (invalid UTF-8 -> U+FFFD) and
 *      splits it into pieces with the pre-tokenizer regexes;
 *   2. each byte of a piece is one symbol: the token of the character the GPT-2
 *      byte-to-unicode table assigns to it;
 *   3. merges by rank: a min-heap of adjacent pairs keyed by (rank, position of the left
 *      symbol), symbols in a linked list; the lowest rank merges first, the leftmost among
 *      equal ranks; a popped pair whose symbols changed since it was pushed is stale and
 *      skipped. O(n log n) per piece, no strings rebuilt;
 *   4. each remaining symbol is its token. A symbol that is not a token (its character or
 *      a merge result missing from the vocabulary) falls back, as in llama.cpp, to the
 *      tokens whose text is one byte of its encoded text, and bytes with no such token are
 *      dropped.
 * For the llama3 family (ignore_merges) a piece whose encoded text is a token is emitted
 * whole. A tokenizer from a tokenizer.json (unk_missing) gives instead the unknown token
 * for a symbol that is not a token, one for a run of them with fuse_unk, as the tokenizers
 * library does.
 *
 * This reproduces llama.cpp's llm_tokenizer_bpe_session (same queue order and the same
 * stale-pair rule), so ids match llama.cpp for the same file; tests/tokenizer checks it on
 * the real SmolLM2 vocabulary against ids made by llama.cpp itself.
 *
 * Decoding (tokenize.c, from the piece table made here at load) maps each character of a
 * normal token back through the reversed byte table; control and unknown tokens give their
 * text only when asked for, user-defined tokens always; byte, unused and undefined tokens
 * give nothing. Not done: clean_up_tokenization_spaces (llama_detokenize's clean_spaces).
 *
 * Thread safety: the tokenizer is read-only here; each call has its own scratch memory.
 */
#include "internal.h"

#include <stdlib.h>

/* ---- the GPT-2 byte-to-unicode table ------------------------------------------------ */

/* Printable bytes (33..126, 161..172, 174..255) stand for themselves; the other 68, in
 * increasing order, for U+0100 onwards: 0..32 -> U+0100..U+0120 (space is U+0120 'Ġ'),
 * 127..160 -> U+0121..U+0142, 173 -> U+0143. */
static uint32_t bpe_byte_to_cpt(uint8_t b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256u + b;
    if (b <= 160) return 256u + 33 + (b - 127u);
    return 256u + 67; /* 173, the soft hyphen */
}

/* The byte a code point of the table stands for, or -1. */
static int bpe_cpt_to_byte(uint32_t c) {
    if ((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)) return (int)c;
    if (c < 256 || c > 256 + 67) return -1;
    uint32_t n = c - 256;
    if (n <= 32) return (int)n;
    if (n <= 66) return (int)(127 + n - 33);
    return 173;
}

/* Writes token text s[0..len) decoded through the reversed byte map to out and returns
 * the bytes written; with out NULL it only counts them. A character outside the byte
 * alphabet becomes "[UNK_BYTE_0x<its hex><the whole text>]", as in llama.cpp. */
static size_t bpe_decode_text(const char *s, size_t len, char *out) {
    size_t o = 0, i = 0;
    while (i < len) {
        size_t used;
        uint32_t c = finch_utf8_get_lenient(s + i, len - i, &used);
        if (c > 0x10ffff) {
            c = 0xfffd;
            used = 1;
        }
        i += used;
        int b = bpe_cpt_to_byte(c);
        if (b >= 0) {
            if (out) out[o] = (char)b;
            o++;
            continue;
        }
        /* llama.cpp writes what it cannot map as "[UNK_BYTE_0x<hex of the char><text>]" */
        char enc[4], tmp[32];
        int n = finch_utf8_put(c, enc);
        int k = snprintf(tmp, sizeof tmp, "[UNK_BYTE_0x");
        for (int j = 0; j < n; j++)
            k += snprintf(tmp + k, sizeof tmp - (size_t)k, "%02x", (uint8_t)enc[j]);
        if (out) {
            memcpy(out + o, tmp, (size_t)k);
            memcpy(out + o + k, s, len);
            out[o + (size_t)k + len] = ']';
        }
        o += (size_t)k + len + 1;
    }
    return o;
}

/* ---- tables made at load ------------------------------------------------------------ */

/* The one-byte lookups BPE needs: the token of each byte's GPT-2 character, and the token
 * whose text is the byte itself (llama.cpp's fallback for pieces that are not tokens). */
static void load_byte_tables(finch_tokenizer *tok) {
    for (int b = 0; b < 256; b++) {
        char enc[4];
        int n = finch_utf8_put(bpe_byte_to_cpt((uint8_t)b), enc);
        tok->byte_tok[b] = finch_tok_find(tok, enc, (size_t)n);
        char c = (char)b;
        tok->single_tok[b] = finch_tok_find(tok, &c, 1);
    }
}

/* The piece of token id, as llama.cpp caches it: control, unknown and user-defined tokens
 * stand for their own text; normal tokens for their bytes; byte, unused and undefined
 * tokens for nothing. */
static size_t bpe_piece(const finch_tokenizer *tok, int32_t id, char *out) {
    uint32_t n = tok->text_len[id];
    const char *t = tok->text_blob + tok->text_off[id];
    uint8_t a = tok->attr[id];
    if (a & (TOK_CONTROL | TOK_UNKNOWN | TOK_USER_DEFINED)) {
        if (out) memcpy(out, t, n);
        return n;
    }
    return a & TOK_NORMAL ? bpe_decode_text(t, n, out) : 0;
}

static finch_status bpe_load_tables(finch_tokenizer *tok, finch_err *err) {
    load_byte_tables(tok);
    return finch_tok_set_pieces(tok, bpe_piece, err);
}

/* ---- per-call scratch --------------------------------------------------------------- */

typedef struct {
    int32_t id;          /* token, or -1 when the symbol's text is not a token */
    int32_t prev, next;  /* neighbours in the piece, -1 at the ends */
    uint32_t start, len; /* bytes of the piece; len 0 once merged into the left neighbour */
} symbol;

typedef struct {
    symbol *sym;
    size_t sym_cap;
    finch_tok_queue q; /* candidate merges */
    char *enc;         /* the encoded piece, for ignore_merges */
    size_t enc_cap;
    tok_ids *out; /* the caller's output */
} scratch;

static bool emit(scratch *sc, int32_t id) {
    return tok_ids_push(sc->out, id);
}

/* ---- encoding ----------------------------------------------------------------------- */

/* Queues the merge of symbols left and right if the vocabulary has one. */
static bool try_pair(const finch_tokenizer *tok, scratch *sc, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return true;
    const symbol *l = &sc->sym[left], *r = &sc->sym[right];
    if (l->id < 0 || r->id < 0) return true;
    int32_t result;
    int32_t rank = finch_tok_merge_rank(tok, l->id, r->id, &result);
    if (rank < 0) return true;
    return finch_tok_queue_push(
        &sc->q, (finch_tok_merge){-(double)rank, left, right, result, l->len + r->len});
}

/* Emits the tokens of a symbol that is not a token: those of the single bytes of its
 * encoded text, as llama.cpp does. */
static bool emit_fallback(const finch_tokenizer *tok, scratch *sc, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char enc[4];
        int k = finch_utf8_put(bpe_byte_to_cpt(p[i]), enc);
        for (int j = 0; j < k; j++) {
            int32_t id = tok->single_tok[(uint8_t)enc[j]];
            if (id >= 0 && !emit(sc, id)) return false;
        }
    }
    return true;
}

/* Emits a symbol that is not a token: llama.cpp's byte fallback, or for a tokenizer.json
 * the unknown token (none when the file names none; one for a run of them when fuse_unk,
 * *prev_unk saying whether the symbol before was one). */
static bool emit_missing(const finch_tokenizer *tok, scratch *sc, const uint8_t *p, size_t n,
                         bool *prev_unk) {
    if (!tok->unk_missing) return emit_fallback(tok, sc, p, n);
    int32_t unk = tok->unk_model;
    bool fused = tok->fuse_unk && *prev_unk;
    *prev_unk = true;
    return unk < 0 || fused || emit(sc, unk);
}

/* Encodes one piece of n bytes. Returns false on out-of-memory. */
static bool encode_piece(const finch_tokenizer *tok, scratch *sc, const uint8_t *p, size_t n) {
    if (tok->ignore_merges) {
        if (!finch_tok_grow((void **)&sc->enc, &sc->enc_cap, 2 * n, 1)) return false;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += (size_t)finch_utf8_put(bpe_byte_to_cpt(p[i]), sc->enc + k);
        int32_t id = finch_tok_find(tok, sc->enc, k);
        if (id >= 0) return emit(sc, id);
    }
    if (n == 1) {
        int32_t id = tok->byte_tok[p[0]];
        bool prev_unk = false;
        return id >= 0 ? emit(sc, id) : emit_missing(tok, sc, p, 1, &prev_unk);
    }
    if (!finch_tok_grow((void **)&sc->sym, &sc->sym_cap, n, sizeof *sc->sym)) return false;
    symbol *sym = sc->sym;
    for (size_t i = 0; i < n; i++)
        sym[i] = (symbol){tok->byte_tok[p[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1,
                          (uint32_t)i, 1};
    sc->q.n = 0;
    for (size_t i = 1; i < n; i++)
        if (!try_pair(tok, sc, (int32_t)i - 1, (int32_t)i)) return false;

    while (sc->q.n) {
        finch_tok_merge b = finch_tok_queue_pop(&sc->q);
        symbol *l = &sc->sym[b.left], *r = &sc->sym[b.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != b.size) continue; /* stale */
        l->len += r->len;
        l->id = b.result;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sc->sym[r->next].prev = b.left;
        if (!try_pair(tok, sc, l->prev, b.left) || !try_pair(tok, sc, b.left, l->next))
            return false;
    }
    bool prev_unk = false;
    for (int32_t i = 0; i >= 0; i = sc->sym[i].next) {
        const symbol *s = &sc->sym[i];
        bool ok;
        if (s->id >= 0) {
            ok = emit(sc, s->id);
            prev_unk = false;
        } else {
            ok = emit_missing(tok, sc, p + s->start, s->len, &prev_unk);
        }
        if (!ok) return false;
    }
    return true;
}

/* Pre-tokenizes and encodes one run of text that holds no special token. */
static finch_status encode_text(const finch_tokenizer *tok, scratch *sc, const char *text,
                                size_t len, finch_err *err) {
    const char *subject, *bytes;
    size_t n, *pieces = NULL, n_pieces = 0;
    char *owned, *prefixed = NULL, *normalized = NULL;
    if (tok->nfc) {
        size_t nlen;
        finch_status st = finch_nfc(text, len, &normalized, &nlen, err);
        if (st) return st;
        if (normalized) {
            text = normalized;
            len = nlen;
        }
    }
    if (tok->hf_prefix_space && len > 0 && text[0] != ' ') {
        /* tokenizer.json ByteLevel add_prefix_space: each run starts with a space */
        prefixed = finch_alloc(len + 1, "text with a prefix space", err);
        if (!prefixed) {
            free(normalized);
            return FINCH_E_NOMEM;
        }
        prefixed[0] = ' ';
        memcpy(prefixed + 1, text, len);
        text = prefixed;
        len++;
    }
    finch_status st = finch_pretok_normalize(text, len, &subject, &bytes, &n, &owned, err);
    if (st) {
        free(prefixed);
        free(normalized);
        return st;
    }
    if ((st = finch_pretok_split(&tok->pre, subject, n, &pieces, &n_pieces, err))) goto done;
    size_t at = 0;
    for (size_t i = 0; i < n_pieces; i++) {
        if (pieces[i] > (size_t)INT32_MAX) {
            st = finch_err_set(err, FINCH_E_RANGE,
                               "a pre-tokenizer piece of %zu bytes: at "
                               "most %d",
                               pieces[i], INT32_MAX);
            goto done;
        }
        if (pieces[i] && !encode_piece(tok, sc, (const uint8_t *)bytes + at, pieces[i])) {
            st = finch_err_set(err, FINCH_E_NOMEM,
                               "out of memory encoding a piece of %zu "
                               "bytes",
                               pieces[i]);
            goto done;
        }
        at += pieces[i];
    }
done:
    free(pieces);
    free(owned);
    free(prefixed);
    free(normalized);
    return st;
}

static finch_status bpe_encode(const finch_tokenizer *tok, const char *text, const tok_frag *frags,
                               size_t n_frags, tok_ids *out, finch_err *err) {
    scratch sc = {.out = out};
    finch_status st = FINCH_OK;
    for (size_t f = 0; f < n_frags && !st; f++) {
        if (frags[f].id < 0)
            st = encode_text(tok, &sc, text + frags[f].start, frags[f].len, err);
        else if (!emit(&sc, frags[f].id))
            st = finch_err_set(err, FINCH_E_NOMEM, "out of memory tokenizing");
    }
    free(sc.sym);
    free(sc.q.v);
    free(sc.enc);
    return st;
}

const tok_model finch_tok_bpe = {"gpt2", bpe_load_tables, bpe_encode};
