/*
 * hf_spm.c: SentencePiece-style vocabularies read from a tokenizer.json, as the Hugging
 * Face tokenizers library runs them: the rows finch_tok_hf_bpe (model type "BPE" with the
 * U+2581 space marker and byte fallback: Llama 2, Mistral) and finch_tok_unigram (model
 * type "Unigram": T5, ALBERT) of the vocabulary-type table.
 *
 * Encoding, for each run of text between special tokens (special.c):
 *   0. the normalizer steps of tok->norm, in order: Precompiled (precompiled.c), Strip of
 *      White_Space, Replace of a String, Replace of runs of two or more spaces; a run that
 *      becomes empty gives no tokens;
 *   1. the space marker: with the legacy normalizer Sequence[Prepend("▁"), Replace(" ",
 *      "▁")] (SPM_PREPEND_NORMALIZER) a "▁" goes before every non-empty run and every space
 *      becomes "▁"; with the Metaspace pre-tokenizer every space becomes "▁" and a "▁" goes
 *      before the run unless it starts with one (prepend_scheme "always"; "first": only the
 *      run at offset 0 of the text; "never": none);
 *   2. with Metaspace split, the run is cut before every "▁" (the library's MergedWithNext),
 *      and each word is encoded on its own;
 *   3. BPE (the library's Word::merge_all): each character is a symbol, its token; a
 *      character that is not a token becomes its <0xXX> byte tokens with byte_fallback when
 *      all exist, else the unknown token (one for a run of them with fuse_unk; nothing
 *      without an unknown token). Adjacent pairs merge by rank, the lowest first, the
 *      leftmost among equal ranks; a queued pair whose left symbol is gone or whose pair no
 *      longer gives the same token is skipped;
 *   3'. Unigram (the library's encode_optimized): Viterbi over the byte positions of the
 *      word; a piece ending at a position scores its log-probability plus the best score of
 *      its start, the first piece of the best score wins (shorter pieces are tried first);
 *      a character no one-character piece covers may also be the unknown token, scored the
 *      lowest piece score minus 10. Backtracking fuses adjacent unknown tokens into one
 *      segment; a segment that is not a piece becomes its <0xXX> byte tokens with
 *      byte_fallback when all exist, else the unknown token.
 * Decoding uses spm.c's piece table (finch_tok_spm_piece): "▁" back to a space, byte tokens
 * their byte when the decoder has ByteFallback (hf_json.c marks them so), and the first
 * token loses one leading space when the decoder strips it (Strip, or Metaspace that
 * prepends).
 *
 * Invalid UTF-8 in the text is cut into symbols by lead byte, as spm.c does; the library
 * never sees such text (Python strings are valid), so nothing is there to match.
 * Facts: tokenizers 0.20 (models/bpe/word.rs, models/bpe/model.rs merge_word,
 * models/unigram/model.rs encode_optimized and tokenize, pre_tokenizers/metaspace.rs).
 * tests/tokenizer/test_tokenizer_hf_spm.c checks the ids against the library's on 1,077
 * lines for each of four files (BPE with Prepend + Replace, BPE with Metaspace, Unigram
 * with and without byte fallback), and on 1,049 lines for two Unigram files with a
 * Precompiled normalizer (T5's and ALBERT's normalizer sequences).
 */
#include "internal.h"

#include <math.h> /* isnan */

/* U+2581, SentencePiece's space marker, in UTF-8. */
static const char SPACE_MARK[3] = {'\xe2', '\x96', '\x81'};

/* The Unigram score of a character no one-character piece covers: the lowest score less
 * this (the library's K_UNK_PENALTY). */
#define UNK_PENALTY 10.0

static uint32_t utf8_len(const char *s, size_t n) {
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    uint32_t k = len[(uint8_t)s[0] >> 4];
    return k > n ? (uint32_t)n : k;
}

static finch_status hf_spm_load_tables(finch_tokenizer *tok, finch_err *err) {
    for (int b = 0; b < 256; b++) {
        static const char hex[] = "0123456789ABCDEF";
        const char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        tok->byte_tok[b] = tok->byte_fallback ? finch_tok_find(tok, name, sizeof name) : -1;
        tok->single_tok[b] = -1;
    }
    return finch_tok_set_pieces(tok, finch_tok_spm_piece, err);
}

/* ---- per-call scratch --------------------------------------------------------------- */

typedef struct {
    int32_t id;         /* the token */
    int32_t prev, next; /* neighbours in the word, -1 at the ends */
    bool gone;          /* merged into its left neighbour */
} symbol;

typedef struct {
    double score;  /* best score of a segmentation of the bytes before this position */
    int32_t start; /* where the last piece of that segmentation starts; -1: none yet */
    int32_t id;    /* that piece */
} node;

typedef struct {
    char *text; /* the run with its space markers */
    size_t text_cap;
    symbol *sym;
    size_t sym_cap;
    node *best;
    size_t best_cap;
    int32_t *seg; /* Unigram: segment starts, from the end back */
    size_t seg_cap;
    finch_tok_queue q;
    tok_buf norm[2];      /* the run through the normalizer steps, one buffer each turn */
    pcre2_match_data *md; /* for tok->grapheme */
} scratch;

/* Pushes the <0xXX> tokens of s[0..n) when all exist; false (nothing pushed) otherwise.
 * *nomem is set when memory runs out. */
static bool push_bytes(const finch_tokenizer *tok, const char *s, size_t n, tok_ids *out,
                       bool *nomem) {
    for (size_t i = 0; i < n; i++)
        if (tok->byte_tok[(uint8_t)s[i]] < 0) return false;
    for (size_t i = 0; i < n; i++)
        if (!tok_ids_push(out, tok->byte_tok[(uint8_t)s[i]])) *nomem = true;
    return true;
}

/* ---- BPE ---------------------------------------------------------------------------- */

static bool add_symbol(scratch *sc, size_t *n, int32_t id) {
    if (!finch_tok_grow((void **)&sc->sym, &sc->sym_cap, *n + 1, sizeof *sc->sym)) return false;
    sc->sym[*n] = (symbol){id, (int32_t)*n - 1, (int32_t)*n + 1, false};
    (*n)++;
    return true;
}

static bool queue_pair(const finch_tokenizer *tok, scratch *sc, int32_t left) {
    if (left < 0 || sc->sym[left].next < 0) return true;
    int32_t result, right = sc->sym[left].next;
    int32_t rank = finch_tok_merge_rank(tok, sc->sym[left].id, sc->sym[right].id, &result);
    if (rank < 0 || result < 0) return true;
    return finch_tok_queue_push(&sc->q, (finch_tok_merge){-(double)rank, left, right, result, 0});
}

static bool bpe_word(const finch_tokenizer *tok, scratch *sc, const char *w, size_t n,
                     tok_ids *out) {
    size_t n_sym = 0;
    int32_t unk_pending = 0; /* unknown tokens owed (fuse_unk keeps it at most 1) */
    for (size_t at = 0; at < n;) {
        uint32_t k = utf8_len(w + at, n - at);
        int32_t id = finch_tok_find(tok, w + at, k);
        if (id >= 0) {
            for (; unk_pending > 0; unk_pending--)
                if (!add_symbol(sc, &n_sym, tok->unk_model)) return false;
            if (!add_symbol(sc, &n_sym, id)) return false;
        } else {
            bool all = tok->byte_fallback;
            for (uint32_t j = 0; all && j < k; j++) all = tok->byte_tok[(uint8_t)w[at + j]] >= 0;
            if (all) {
                /* the library adds the byte tokens before an unknown token it still owes */
                for (uint32_t j = 0; j < k; j++)
                    if (!add_symbol(sc, &n_sym, tok->byte_tok[(uint8_t)w[at + j]])) return false;
            } else if (tok->unk_model >= 0 && !(tok->fuse_unk && unk_pending)) {
                unk_pending++;
            }
        }
        at += k;
    }
    for (; unk_pending > 0; unk_pending--)
        if (!add_symbol(sc, &n_sym, tok->unk_model)) return false;
    if (n_sym == 0) return true;
    sc->sym[n_sym - 1].next = -1;
    sc->q.n = 0;
    for (size_t i = 0; i + 1 < n_sym; i++)
        if (!queue_pair(tok, sc, (int32_t)i)) return false;
    while (sc->q.n) {
        finch_tok_merge m = finch_tok_queue_pop(&sc->q);
        symbol *l = &sc->sym[m.left];
        if (l->gone || l->next < 0) continue;
        int32_t result, right = l->next;
        if (finch_tok_merge_rank(tok, l->id, sc->sym[right].id, &result) < 0 || result != m.result)
            continue; /* stale */
        l->id = m.result;
        sc->sym[right].gone = true;
        l->next = sc->sym[right].next;
        if (l->next >= 0) sc->sym[l->next].prev = m.left;
        if (!queue_pair(tok, sc, l->prev) || !queue_pair(tok, sc, m.left)) return false;
    }
    for (int32_t i = 0; i >= 0; i = sc->sym[i].next)
        if (!tok_ids_push(out, sc->sym[i].id)) return false;
    return true;
}

/* ---- Unigram ------------------------------------------------------------------------ */

static bool unigram_word(const finch_tokenizer *tok, scratch *sc, const char *w, size_t n,
                         tok_ids *out) {
    if (!finch_tok_grow((void **)&sc->best, &sc->best_cap, n + 1, sizeof *sc->best) ||
        !finch_tok_grow((void **)&sc->seg, &sc->seg_cap, n + 1, sizeof *sc->seg))
        return false;
    node *best = sc->best;
    for (size_t i = 0; i <= n; i++) best[i] = (node){0, -1, -1};
    for (size_t at = 0; at < n;) {
        uint32_t k = utf8_len(w + at, n - at);
        double here = best[at].score;
        bool single = false;
        size_t max = n - at < tok->max_piece_len ? n - at : tok->max_piece_len;
        for (size_t len = 1; len <= max; len++) {
            int32_t id = finch_tok_find(tok, w + at, len);
            if (id < 0 || isnan(tok->uni_scores[id])) continue;
            node *t = &best[at + len];
            double s = here + tok->uni_scores[id];
            if (t->start < 0 || s > t->score) *t = (node){s, (int32_t)at, id};
            single |= len == k;
        }
        if (!single) {
            node *t = &best[at + k];
            double s = here + tok->uni_unk_score;
            if (t->start < 0 || s > t->score) *t = (node){s, (int32_t)at, tok->unk_model};
        }
        at += k;
    }
    /* segments from the end back; adjacent unknown tokens make one segment */
    size_t n_seg = 0;
    for (int32_t end = (int32_t)n; end > 0;) {
        int32_t start = best[end].start;
        bool unk = best[end].id == tok->unk_model;
        if (!(unk && n_seg > 0 && sc->seg[n_seg - 1] < 0)) n_seg++;
        sc->seg[n_seg - 1] = unk ? -1 - start : start; /* an unknown segment as -1 - start */
        end = start;
    }
    for (size_t s = n_seg; s-- > 0;) {
        int32_t start = sc->seg[s] < 0 ? -1 - sc->seg[s] : sc->seg[s];
        int32_t end =
            s == 0 ? (int32_t)n : (sc->seg[s - 1] < 0 ? -1 - sc->seg[s - 1] : sc->seg[s - 1]);
        size_t len = (size_t)(end - start);
        int32_t id = finch_tok_find(tok, w + start, len);
        if (id >= 0 && !isnan(tok->uni_scores[id])) {
            if (!tok_ids_push(out, id)) return false;
            continue;
        }
        bool nomem = false;
        if (tok->byte_fallback && push_bytes(tok, w + start, len, out, &nomem)) {
            if (nomem) return false;
            continue;
        }
        if (!tok_ids_push(out, tok->unk_model)) return false;
    }
    return true;
}

/* ---- the run ------------------------------------------------------------------------ */

/* Unicode White_Space, what the library's Strip removes (Rust's char::is_whitespace). */
static bool is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* Appends s[0..n) to o with one step that is not Precompiled. */
static bool norm_step(const spm_norm *st, const char *s, size_t n, tok_buf *o) {
    if (st->kind == NORM_STRIP) {
        size_t start = 0, end = 0, used;
        bool lead = true; /* still in the leading white space */
        for (size_t at = 0; at < n; at += used) {
            uint32_t c = finch_utf8_get_lenient(s + at, n - at, &used);
            if (is_white_space(c)) {
                if (lead && st->left) start = at + used;
                continue;
            }
            lead = false;
            end = at + used;
        }
        if (lead) end = start;
        if (!st->right) end = n;
        return tok_buf_put(o, s + start, end - start);
    }
    size_t at = 0;
    for (size_t i = 0; i < n;) {
        size_t k = 0; /* bytes of a match at i */
        if (st->kind == NORM_REPLACE) {
            if (n - i >= st->from_len && memcmp(s + i, st->from, st->from_len) == 0)
                k = st->from_len;
        } else {
            while (i + k < n && s[i + k] == ' ') k++;
            if (k < 2) k = 0;
        }
        if (!k) {
            i++;
            continue;
        }
        if (!tok_buf_put(o, s + at, i - at) || !tok_buf_put(o, st->to, st->to_len)) return false;
        i += k;
        at = i;
    }
    return tok_buf_put(o, s + at, n - at);
}

/* Runs the normalizer steps over text[0..len): *out (in sc->norm) and *out_len get the
 * result, text itself when there are no steps. False when memory runs out. */
static bool normalize_run(const finch_tokenizer *tok, scratch *sc, const char *text, size_t len,
                          const char **out, size_t *out_len) {
    *out = text;
    *out_len = len;
    for (int i = 0; i < tok->n_norm; i++) {
        tok_buf *o = &sc->norm[i & 1];
        o->n = 0;
        const spm_norm *st = &tok->norm[i];
        bool ok =
            st->kind == NORM_PRECOMPILED
                ? finch_charsmap_normalize(&tok->charsmap, tok->grapheme, sc->md, *out, *out_len, o)
                : norm_step(st, *out, *out_len, o);
        if (!ok) return false;
        *out = o->n ? o->p : "";
        *out_len = o->n;
    }
    return true;
}

/* Writes the run with its space markers to sc->text (step 1); returns its length, or
 * SIZE_MAX when memory runs out. */
static size_t mark_run(const finch_tokenizer *tok, scratch *sc, const char *text, size_t len,
                       bool at_start) {
    if (!finch_tok_grow((void **)&sc->text, &sc->text_cap, 3 * (len + 1), 1)) return SIZE_MAX;
    bool prefix = tok->spm_prepend == SPM_PREPEND_NORMALIZER ||
                  (tok->spm_prepend == SPM_PREPEND_ALWAYS && text[0] != ' ') ||
                  (tok->spm_prepend == SPM_PREPEND_FIRST && at_start && text[0] != ' ');
    if (len >= 3 && memcmp(text, SPACE_MARK, 3) == 0 && tok->spm_prepend != SPM_PREPEND_NORMALIZER)
        prefix = false; /* Metaspace: the run already starts with the marker */
    return finch_tok_spm_mark(sc->text, text, len, prefix);
}

/* The longest run of text between special tokens: its marked form indexes int32_t. */
#define HF_SPM_MAX_RUN ((size_t)INT32_MAX / 4)

static finch_status hf_spm_encode(const finch_tokenizer *tok, const char *text,
                                  const tok_frag *frags, size_t n_frags, tok_ids *out,
                                  finch_err *err) {
    scratch sc = {0};
    finch_status st = FINCH_OK;
    bool unigram = tok->uni_scores != NULL;
    if (tok->grapheme && !(sc.md = pcre2_match_data_create_from_pattern(tok->grapheme, NULL)))
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory tokenizing");
    for (size_t f = 0; f < n_frags && !st; f++) {
        const tok_frag *fr = &frags[f];
        if (fr->id >= 0) {
            if (!tok_ids_push(out, fr->id)) st = FINCH_E_NOMEM;
            continue;
        }
        const char *run;
        size_t run_len;
        if (!normalize_run(tok, &sc, text + fr->start, fr->len, &run, &run_len)) {
            st = FINCH_E_NOMEM;
            break;
        }
        if (run_len == 0) continue;
        if (run_len > HF_SPM_MAX_RUN) {
            st = finch_err_set(err, FINCH_E_RANGE,
                               "a text run of %zu bytes between special tokens: at most %zu",
                               run_len, HF_SPM_MAX_RUN);
            break;
        }
        size_t n = mark_run(tok, &sc, run, run_len, fr->start == 0);
        if (n == SIZE_MAX) {
            st = FINCH_E_NOMEM;
            break;
        }
        /* words: cut before every marker but the first byte when splitting */
        for (size_t at = 0; at < n && !st;) {
            size_t end = n;
            if (tok->spm_split)
                for (end = at + 1; end < n; end++)
                    if (end + 3 <= n && memcmp(sc.text + end, SPACE_MARK, 3) == 0) break;
            bool ok = unigram ? unigram_word(tok, &sc, sc.text + at, end - at, out)
                              : bpe_word(tok, &sc, sc.text + at, end - at, out);
            if (!ok) st = FINCH_E_NOMEM;
            at = end;
        }
    }
    free(sc.text);
    free(sc.sym);
    free(sc.best);
    free(sc.seg);
    free(sc.q.v);
    free(sc.norm[0].p);
    free(sc.norm[1].p);
    pcre2_match_data_free(sc.md);
    if (st == FINCH_E_NOMEM) return finch_err_set(err, st, "out of memory tokenizing");
    return st;
}

const tok_model finch_tok_hf_bpe = {"llama", hf_spm_load_tables, hf_spm_encode};
const tok_model finch_tok_unigram = {"t5", hf_spm_load_tables, hf_spm_encode};
