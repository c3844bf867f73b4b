/*
 * spm.c: SentencePiece-style vocabularies (tokenizer.ggml.model "llama": Llama 1/2,
 * Mistral v1, Gemma): the row finch_tok_spm of the vocabulary-type table. Tokens carry a
 * score (tokenizer.ggml.scores) and a type; a space is written U+2581 ("▁") in token texts;
 * bytes no token covers fall back to the byte tokens <0x00>..<0xFF>.
 *
 * Encoding, for each run of text between special tokens (special.c), as llama.cpp's
 * llm_tokenizer_spm_session does:
 *   1. when add_space_prefix is set, a space goes in front of the run if it starts the text
 *      or follows a special token (llama.cpp's is_prev_special);
 *   2. every space (0x20 only) becomes U+2581;
 *   3. the bytes are cut into symbols by the UTF-8 length their lead byte announces (llama.cpp's
 *      unicode_len_utf8: no validation, so a stray continuation byte is a symbol of its own
 *      and a lead byte may swallow bytes that do not continue it; the last symbol ends at the
 *      end of the run);
 *   4. every pair of adjacent symbols whose joined text is a token is a candidate bigram; the
 *      one of highest score merges first (equal scores: the leftmost), its new neighbours'
 *      bigrams are queued, and a popped bigram whose symbols changed since it was queued is
 *      stale and skipped. A max-heap, symbols in a linked list, O(n log n) per run;
 *   5. each remaining symbol is its token, or when its text is not a token (only a symbol
 *      that never merged can be one: a bigram is queued only when its text is a token), the
 *      byte tokens of its bytes.
 * llama.cpp also keeps a rev_merge map to resegment a final symbol that is not a token into
 * the two it came from; by the argument in 5 that lookup never finds anything, so it has no
 * counterpart here. Token types play no part in encoding: merges may form a control or byte
 * token out of plain text (the letters of "<eos>" or "<0x41>", where the vocabulary has the
 * pieces in between), exactly as in llama.cpp.
 *
 * Decoding (tokenize.c, from the piece table made here): a normal token is its text with
 * U+2581 back to a space; a byte token the byte its <0xXX> text names; control, unknown and
 * user-defined tokens their text; unused and undefined tokens nothing.
 *
 * Facts: llama.cpp's llama-vocab.cpp (llm_tokenizer_spm_session, byte_to_token,
 * token_to_piece, the SPM branch of tokenize), FORMATS.md section 5. tests/tokenizer checks
 * the ids against llama.cpp's on Gemma 3's 262,144-token vocabulary and on a tiny one.
 */
#include "internal.h"

/* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space marker, in UTF-8. */
static const char SPACE_MARK[3] = {'\xe2', '\x96', '\x81'};

/* ---- tables made at load ------------------------------------------------------------ */

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte a byte token's text "<0xXX>" names; the loader checked the form. */
static uint8_t byte_of(const finch_tokenizer *tok, int32_t id) {
    const char *t = tok->text_blob + tok->text_off[id];
    FINCH_ASSERT(tok->text_len[id] == 6 && hex_digit(t[3]) >= 0 && hex_digit(t[4]) >= 0);
    return (uint8_t)(hex_digit(t[3]) << 4 | hex_digit(t[4]));
}

/* The piece of token id, as llama.cpp's token_to_piece caches it with special tokens
 * rendered (internal.h). */
size_t finch_tok_spm_piece(const finch_tokenizer *tok, int32_t id, char *out) {
    uint32_t n = tok->text_len[id];
    const char *t = tok->text_blob + tok->text_off[id];
    uint8_t a = tok->attr[id];
    if (a & (TOK_CONTROL | TOK_UNKNOWN | TOK_USER_DEFINED)) {
        if (out) memcpy(out, t, n);
        return n;
    }
    if (a & TOK_NORMAL) {
        size_t o = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (i + 3 <= n && memcmp(t + i, SPACE_MARK, 3) == 0) {
                if (out) out[o] = ' ';
                i += 2;
            } else if (out) {
                out[o] = t[i];
            }
            o++;
        }
        return o;
    }
    if (a & TOK_BYTE) {
        if (out) out[0] = (char)byte_of(tok, id);
        return 1;
    }
    return 0;
}

/* llama.cpp's byte_to_token: the token <0xXX> (upper-case hex), else the token whose text
 * is the byte itself; -1 when neither exists. */
static int32_t find_byte_token(const finch_tokenizer *tok, uint8_t b) {
    static const char hex[] = "0123456789ABCDEF";
    const char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
    int32_t id = finch_tok_find(tok, name, sizeof name);
    return id >= 0 ? id : finch_tok_find(tok, (const char *)&b, 1);
}

static finch_status spm_load_tables(finch_tokenizer *tok, finch_err *err) {
    FINCH_ASSERT(tok->scores);
    for (int b = 0; b < 256; b++) {
        tok->byte_tok[b] = find_byte_token(tok, (uint8_t)b);
        FINCH_ASSERT(tok->byte_tok[b] >= 0); /* the loader refuses a vocabulary without */
        tok->single_tok[b] = -1;
    }
    return finch_tok_set_pieces(tok, finch_tok_spm_piece, err);
}

/* ---- per-call scratch --------------------------------------------------------------- */

typedef struct {
    uint32_t start, len; /* bytes of the escaped run; len 0 once merged into the left one */
    int32_t prev, next;  /* neighbours in the run, -1 at the ends */
    int32_t id;          /* the token whose text this is, or -1 */
} symbol;

typedef struct {
    char *text; /* the run with its prefix space and every space as U+2581 */
    size_t text_cap;
    symbol *sym;
    size_t sym_cap;
    finch_tok_queue q; /* candidate merges */
} scratch;

/* ---- encoding ----------------------------------------------------------------------- */

/* Queues the merge of symbols left and right when their joined text is a token. */
static bool try_bigram(const finch_tokenizer *tok, scratch *sc, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return true;
    const symbol *l = &sc->sym[left], *r = &sc->sym[right];
    uint32_t size = l->len + r->len; /* the two are adjacent in sc->text */
    int32_t id = finch_tok_find(tok, sc->text + l->start, size);
    if (id < 0) return true;
    /* llama.cpp's queue order: the higher score first, then the lower left index */
    return finch_tok_queue_push(&sc->q, (finch_tok_merge){tok->scores[id], left, right, id, size});
}

/* llama.cpp's unicode_len_utf8: the length a lead byte announces, from its top four bits. */
static uint32_t utf8_len(uint8_t lead) {
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[lead >> 4];
}

/* Encodes one run of n bytes (n >= 1) already escaped into sc->text. Returns false on
 * out-of-memory. */
static bool encode_run(const finch_tokenizer *tok, scratch *sc, size_t n, tok_ids *out) {
    const char *t = sc->text;
    size_t n_sym = 0;
    if (!finch_tok_grow((void **)&sc->sym, &sc->sym_cap, n, sizeof *sc->sym)) return false;
    for (size_t at = 0; at < n; n_sym++) {
        uint32_t k = utf8_len((uint8_t)t[at]);
        if (k > n - at) k = (uint32_t)(n - at);
        sc->sym[n_sym] = (symbol){(uint32_t)at, k, (int32_t)n_sym - 1, (int32_t)n_sym + 1,
                                  finch_tok_find(tok, t + at, k)};
        at += k;
    }
    sc->sym[n_sym - 1].next = -1;
    sc->q.n = 0;
    for (size_t i = 1; i < n_sym; i++)
        if (!try_bigram(tok, sc, (int32_t)i - 1, (int32_t)i)) return false;

    while (sc->q.n) {
        finch_tok_merge g = finch_tok_queue_pop(&sc->q);
        symbol *l = &sc->sym[g.left], *r = &sc->sym[g.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != g.size) continue; /* stale */
        l->len += r->len;
        l->id = g.result;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sc->sym[r->next].prev = g.left;
        if (!try_bigram(tok, sc, l->prev, g.left) || !try_bigram(tok, sc, g.left, l->next))
            return false;
    }
    for (int32_t i = 0; i >= 0; i = sc->sym[i].next) {
        const symbol *s = &sc->sym[i];
        if (s->id >= 0) {
            if (!tok_ids_push(out, s->id)) return false;
            continue;
        }
        for (uint32_t j = 0; j < s->len; j++)
            if (!tok_ids_push(out, tok->byte_tok[(uint8_t)t[s->start + j]])) return false;
    }
    return true;
}

size_t finch_tok_spm_mark(char *out, const char *text, size_t len, bool prefix) {
    size_t o = 0;
    if (prefix) {
        memcpy(out, SPACE_MARK, 3);
        o = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(out + o, SPACE_MARK, 3);
            o += 3;
        } else {
            out[o++] = text[i];
        }
    }
    return o;
}

/* Writes the run (at most SPM_MAX_RUN bytes) to sc->text as SentencePiece sees it: the
 * prefix space when asked for, every space as U+2581. Returns its length, or 0 when memory
 * runs out. */
static size_t escape_run(scratch *sc, const char *text, size_t len, bool prefix) {
    if (!finch_tok_grow((void **)&sc->text, &sc->text_cap, 3 * (len + 1), 1)) return 0;
    return finch_tok_spm_mark(sc->text, text, len, prefix);
}

/* The longest run of text between special tokens: its escaped form (three bytes per byte
 * at most) must index symbols with int32_t. */
#define SPM_MAX_RUN ((size_t)INT32_MAX / 4)

static finch_status spm_encode(const finch_tokenizer *tok, const char *text, const tok_frag *frags,
                               size_t n_frags, tok_ids *out, finch_err *err) {
    scratch sc = {0};
    finch_status st = FINCH_OK;
    bool after_special = true; /* the start of the text counts as a special token */
    for (size_t f = 0; f < n_frags && !st; f++) {
        const tok_frag *fr = &frags[f];
        if (fr->id >= 0) {
            if (!tok_ids_push(out, fr->id)) st = FINCH_E_NOMEM;
            after_special = true;
        } else if (fr->len > SPM_MAX_RUN) {
            st = finch_err_set(err, FINCH_E_RANGE,
                               "a text run of %zu bytes between special tokens: at most %zu",
                               fr->len, SPM_MAX_RUN);
        } else if (fr->len > 0) {
            /* llama.cpp has no fragment for empty text, so nothing for it either */
            size_t n =
                escape_run(&sc, text + fr->start, fr->len, tok->add_space_prefix && after_special);
            if (n == 0 || !encode_run(tok, &sc, n, out)) st = FINCH_E_NOMEM;
            after_special = false;
        }
    }
    free(sc.text);
    free(sc.sym);
    free(sc.q.v);
    if (st == FINCH_E_NOMEM) return finch_err_set(err, st, "out of memory tokenizing");
    return st;
}

const tok_model finch_tok_spm = {"llama", spm_load_tables, spm_encode};
