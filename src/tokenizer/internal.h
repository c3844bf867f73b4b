/*
 * internal.h: what the files of src/tokenizer/ share with each other, and nothing else
 * includes. The tokenizer object itself, the token attribute bits, the lookup tables
 * (token text -> id, merge pair -> rank, id -> decoded piece), the table of a vocabulary
 * type's algorithm and the entry points each file offers the others:
 *
 *   lookup.c         the lookup tables: token text -> id, merge pair -> rank, the pieces
 *   special.c        special-token roles (EOG, auto-detected EOT/FIM), and the split of a
 *                    text at special tokens before the vocabulary type's algorithm
 *   bpe.c            byte-level BPE (tokenizer.ggml.model "gpt2"): the GPT-2 byte map,
 *                    merges by rank; its row of the type table, finch_tok_bpe
 *   spm.c            SentencePiece (tokenizer.ggml.model "llama"): the space marker, merges
 *                    by score, byte fallback; its row, finch_tok_spm
 *   hf_spm.c         SentencePiece-style tokenizer.json models as the tokenizers library
 *                    runs them: BPE by rank with byte fallback, Unigram; their rows
 *   tokenize.c       the public finch_tokenize / finch_detokenize / piece calls: argument
 *                    checks, the special-token split, BOS/EOS, then the type's encoder;
 *                    decoding from the piece table
 *   vocab.c          loads a tokenizer from GGUF metadata, and completes a loaded one
 *   hf_json.c        loads a tokenizer from a Hugging Face tokenizer.json
 *   pretok.c         the pre-tokenizer regex lists (PCRE2) and the llama.cpp-compatible
 *                    view of invalid UTF-8
 *   nfc.c            Unicode NFC (the tokenizer.json NFC normalizer)
 *   precompiled.c    the tokenizer.json Precompiled normalizer (SentencePiece's compiled
 *                    charsmap)
 *   chat_template.c  chat template families
 *   gguf_kv.c        a tokenizer written back as GGUF tokenizer metadata
 *   spm_model.c      a SentencePiece tokenizer.model (protobuf) read for its pieces' scores
 *                    and types, which gguf_kv.c writes for a SentencePiece-style
 *                    tokenizer.json; it calls none of the others but lookup.c's growth helper
 *
 * Calls between the files go one way, down this list: the loaders (vocab.c, hf_json.c)
 * pick a type row (bpe.c, spm.c or hf_spm.c) and call special.c and lookup.c; tokenize.c
 * calls special.c and, through tok->model, the row's file; bpe.c and spm.c call lookup.c
 * (and bpe.c pretok.c), never each other; hf_spm.c calls lookup.c and spm.c's piece
 * function; special.c calls lookup.c; lookup.c calls none of
 * them. pretok.c, nfc.c and precompiled.c call none of these (nfc.c and precompiled.c only
 * pretok.c's UTF-8 helpers). The
 * sections below take them lowest first.
 *
 * The object is immutable once finch_tokenizer_from_gguf returns, which is what makes
 * concurrent finch_tokenize calls safe: every call keeps its scratch memory to itself.
 */
#ifndef FINCH_TOKENIZER_INTERNAL_H
#define FINCH_TOKENIZER_INTERNAL_H

#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h> /* realloc in tok_ids_push */
#include <string.h> /* memcpy in tok_buf_put */

/* Where a tokenizer.json SentencePiece-style tokenizer puts the U+2581 space marker in
 * front of a text run (hf_spm.c): never, the run at the start of the text, every run that
 * does not start with a space (Metaspace prepend_scheme), every non-empty run (the legacy
 * Prepend normalizer). */
enum { SPM_PREPEND_NEVER, SPM_PREPEND_FIRST, SPM_PREPEND_ALWAYS, SPM_PREPEND_NORMALIZER };

/* Token attributes, one bit each, as llama.cpp derives them from tokenizer.ggml.token_type
 * (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte, other undefined). */
enum {
    TOK_UNDEFINED = 1 << 0,
    TOK_NORMAL = 1 << 1,
    TOK_UNKNOWN = 1 << 2,
    TOK_CONTROL = 1 << 3,
    TOK_USER_DEFINED = 1 << 4,
    TOK_UNUSED = 1 << 5,
    TOK_BYTE = 1 << 6,
    TOK_EOG = 1 << 7, /* not a type: the token ends generation */
};
#define TOK_TYPE_MASK 0x7f

/* Whitespace a special token swallows when it is split out (tokenizer.json added tokens'
 * lstrip/rstrip): the whitespace before it, after it. */
enum { STRIP_LEFT = 1, STRIP_RIGHT = 2 };

/* The pre-tokenizer regexes (those of a tokenizer.ggml.pre family, or of a tokenizer.json
 * pre_tokenizer), compiled once. */
#define PRETOK_MAX_REGEX 8
typedef struct {
    int n;                            /* regexes, applied in sequence */
    pcre2_code *re[PRETOK_MAX_REGEX]; /* compiled (JIT-compiled when PCRE2 has a JIT) */
} pretok;

/* Roles of special tokens; -1 when the model has none. */
typedef enum {
    SP_BOS,
    SP_EOS,
    SP_EOT,
    SP_EOM,
    SP_UNK,
    SP_SEP,
    SP_PAD,
    SP_MASK,
    SP_FIM_PRE,
    SP_FIM_SUF,
    SP_FIM_MID,
    SP_FIM_PAD,
    SP_FIM_REP,
    SP_FIM_SEP,
    SP_COUNT
} special_role;

/* A growable list of token ids: what an encoder appends to. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} tok_ids;

/* Appends id; false when memory runs out (the list is left as it was). */
static inline bool tok_ids_push(tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        if (cap > SIZE_MAX / 2 / sizeof *a->v) return false;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return true;
}

/* A growable byte buffer: what a normalizer appends to. */
typedef struct {
    char *p;
    size_t n, cap;
} tok_buf;

/* Appends s[0..n); false when memory runs out (the buffer is left as it was). */
static inline bool tok_buf_put(tok_buf *b, const char *s, size_t n) {
    if (n > SIZE_MAX / 2 - b->n) return false;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return true;
}

/* The rules of a tokenizer.json Precompiled normalizer (precompiled.c). */
typedef struct {
    uint32_t *units; /* (n_units) the darts-clone double array */
    size_t n_units;
    char *strings; /* the replacement strings, NUL-ended, plus one NUL at strings_len */
    size_t strings_len;
} finch_charsmap;

/* One normalizer step of a SentencePiece-style tokenizer.json, run in order on each text
 * run before the space marker (hf_spm.c). */
enum { NORM_PRECOMPILED, NORM_STRIP, NORM_REPLACE, NORM_SPACES };
#define SPM_MAX_NORM 8
typedef struct {
    int kind;         /* NORM_*: tok->charsmap; Strip; Replace of a String; Replace of the
                       * Regex " {2,}" (runs of two or more spaces) */
    bool left, right; /* NORM_STRIP: strip White_Space at the start, at the end */
    char *from, *to;  /* NORM_REPLACE: the pattern (from) and, with NORM_SPACES too, what
                       * replaces it (to) */
    size_t from_len, to_len;
} spm_norm;

/* A run of the input: raw text (id -1) or one special token. */
typedef struct {
    size_t start, len; /* bytes of the input */
    int32_t id;        /* the special token, or -1 for text still to be tokenized */
} tok_frag;

/* The algorithm of one vocabulary type (tokenizer.ggml.model): one const row per type,
 * chosen by the loader; finch_tokenize and finch_tok_finish reach the type only through
 * it. */
typedef struct {
    const char *name; /* the tokenizer.ggml.model value: "gpt2", "llama" */
    /* Makes what the encoder and decoding read besides the text index: the token of each
     * byte and every token's decoded piece (finch_tok_set_pieces). Called once by
     * finch_tok_finish, after the special-token setup has settled the attributes. */
    finch_status (*load_tables)(finch_tokenizer *tok, finch_err *err);
    /* Appends to *out the ids of frags[0..n_frags) in order: a special fragment is its
     * id, a text fragment (bytes of text) what the algorithm makes of it. FINCH_E_NOMEM
     * (or FINCH_E_RANGE for a piece too long to index) on failure, *out then holding a
     * partial result the caller frees. Thread-safe: scratch memory is per call. */
    finch_status (*encode)(const finch_tokenizer *tok, const char *text, const tok_frag *frags,
                           size_t n_frags, tok_ids *out, finch_err *err);
} tok_model;

/* One slot of the merge table: the pair (left id, right id) packed in key. */
typedef struct {
    uint64_t key;   /* left << 32 | right; EMPTY_KEY when the slot is free */
    int32_t rank;   /* position in tokenizer.ggml.merges */
    int32_t result; /* id of the merged text, -1 when that text is not a token */
} merge_slot;

struct finch_tokenizer {
    const tok_model *model; /* the vocabulary type's algorithm (finch_tok_bpe, finch_tok_spm) */
    int32_t n_vocab;        /* V */
    char *text_blob;        /* every token's text, NUL-terminated, back to back */
    size_t *text_off;       /* (V) where token i's text starts in text_blob */
    uint32_t *text_len;     /* (V) its length in bytes */
    uint8_t *attr;          /* (V) TOK_* bits */
    char *piece_blob;       /* every token's decoded bytes (control text included) */
    size_t *piece_off;      /* (V + 1) token i's piece is [piece_off[i], piece_off[i + 1]) */

    int32_t *index; /* open-addressing table text -> id, -1 free; index_mask + 1 */
    uint64_t index_mask;
    merge_slot *merges; /* open-addressing table pair -> rank; merge_mask + 1 slots */
    uint64_t merge_mask;
    int64_t n_merges; /* entries of tokenizer.ggml.merges */

    float *scores; /* (V) SentencePiece piece scores (tokenizer.ggml.scores); NULL for BPE */

    int32_t byte_tok[256];   /* id of the token that stands for each byte: BPE its GPT-2
                              * character, SentencePiece <0xXX> (else the byte itself) */
    int32_t single_tok[256]; /* id of the token whose text is this one byte (BPE fallback) */

    pretok pre;         /* regexes for the pre-tokenizer */
    bool ignore_merges; /* a whole piece that is a token is emitted as is (llama3) */
    int32_t *specials;  /* ids of control, user-defined and unknown tokens, longest first */
    int32_t n_specials;
    int32_t special[SP_COUNT]; /* ids by role, -1 when absent */
    bool add_bos, add_eos;     /* what FINCH_TOK_ADD_SPECIAL adds */
    bool add_space_prefix;     /* tokenizer.ggml.add_space_prefix: SentencePiece puts a space
                                * before a text run that starts the text or follows a special
                                * token; decoding (either type) drops one leading space of
                                * the first token */
    bool hf_prefix_space;      /* a space goes before each text run that lacks one (HF ByteLevel) */
    bool nfc;                  /* each text run is put in Unicode NFC first (HF normalizer) */
    bool unk_missing;          /* a symbol that is not a token gives unk_model (or nothing
                                * when it is -1) as in the tokenizers library, not llama.cpp's
                                * byte fallback */
    bool fuse_unk;             /* with unk_missing: adjacent unknown symbols give one token */
    int32_t unk_model;         /* with unk_missing: tokenizer.json's model.unk_token, or -1 */
    bool byte_fallback;        /* tokenizer.json SentencePiece style: a character (BPE) or an
                                * unknown segment (Unigram) becomes its <0xXX> tokens */
    int spm_prepend;           /* SPM_PREPEND_*: where hf_spm.c puts a space marker */
    bool spm_split;            /* Metaspace split: each word (from one marker to the next) is
                                * encoded on its own */
    double *uni_scores;        /* (V) Unigram piece scores, NaN for ids that are no piece;
                                * NULL for other types */
    double uni_unk_score;      /* Unigram: the score of an unknown character */
    size_t max_piece_len;      /* Unigram: the longest piece, in bytes */
    spm_norm norm[SPM_MAX_NORM]; /* SentencePiece style: normalizer steps, in order */
    int n_norm;
    finch_charsmap charsmap; /* the Precompiled step's rules (n_units 0: none) */
    pcre2_code *grapheme;    /* \X, for the Precompiled step; NULL without one */
    uint8_t *strip;          /* (V) STRIP_* bits of special tokens, or NULL when none has any */

    char *pre_name;       /* tokenizer.ggml.pre as written ("default" when absent); for a
                           * tokenizer.json, its pre-tokenizer steps ("Digits+ByteLevel") */
    bool hf_json;         /* read from a tokenizer.json (hf_json.c) */
    const char *gguf_pre; /* hf_json: the tokenizer.ggml.pre whose regexes are the file's
                           * pre-tokenizer's (a static string), NULL when none is */
    char *chat_template;  /* tokenizer.chat_template, or NULL */
};

/* ---- lookup.c ----------------------------------------------------------------------- */

/* Grows *p (of *cap elements of elem bytes) to hold need, doubling; false when out of
 * memory or the size overflows. */
bool finch_tok_grow(void **p, size_t *cap, size_t need, size_t elem);

/* A candidate merge of the adjacent symbols left and right into token result, queued with
 * their joined length (size: changed when popped means stale). The queue pops the highest
 * key first, then the lower left index: BPE keys by -rank, SentencePiece by score. */
typedef struct {
    double key;
    int32_t left, right, result;
    uint32_t size;
} finch_tok_merge;

typedef struct {
    finch_tok_merge *v;
    size_t n, cap;
} finch_tok_queue;

bool finch_tok_queue_push(finch_tok_queue *q, finch_tok_merge m);
finch_tok_merge finch_tok_queue_pop(finch_tok_queue *q); /* q->n > 0 */

/* The id of the token whose text is s[0..len), or -1. */
int32_t finch_tok_find(const finch_tokenizer *tok, const char *s, size_t len);

/* The merge of the pair (left, right): its rank, and the merged token in *result (-1 when
 * the merged text is not a token). Returns -1 when the pair has no merge. */
int32_t finch_tok_merge_rank(const finch_tokenizer *tok, int32_t left, int32_t right,
                             int32_t *result);

/* Copies tok->n_vocab token texts into the tokenizer, builds the text index (a later id
 * with the same text as an earlier one is the one found) and marks every token normal. An
 * empty text becomes "[EMPTY_<id>]", as in llama.cpp. path and what name the source in
 * messages. */
finch_status finch_tok_load_texts(finch_tokenizer *tok, const finch_str *texts, const char *path,
                                  const char *what, finch_err *err);

/* Makes the piece table: piece(tok, id, out) writes the bytes token id decodes to into out
 * and returns their count (with out NULL it only counts). Called by each type's
 * load_tables. */
finch_status finch_tok_set_pieces(finch_tokenizer *tok,
                                  size_t (*piece)(const finch_tokenizer *tok, int32_t id,
                                                  char *out),
                                  finch_err *err);

/* Makes the merge table for n merges, then fills it one merge at a time; a pair that
 * already has a merge keeps its first rank. result is the merged token, or -1. */
finch_status finch_tok_alloc_merges(finch_tokenizer *tok, int64_t n, finch_err *err);
void finch_tok_add_merge(finch_tokenizer *tok, int32_t left, int32_t right, int32_t rank,
                         int32_t result);

/* ---- special.c ---------------------------------------------------------------------- */

/* Fills in what llama.cpp infers from token texts once the vocabulary is loaded: EOT, EOM
 * and FIM tokens found by name (marked control), the end-of-generation set, and the list
 * of special tokens, longest first, that finch_tok_partition looks for. */
finch_status finch_tok_special_setup(finch_tokenizer *tok, finch_err *err);

/* Splits text at every occurrence of a special token, trying tokens longest first as
 * llama.cpp does (each token splits the text runs the longer ones left). Control and
 * unknown tokens count only when parse_special is true; user-defined ones always.
 * *frags is malloc'd (free it); FINCH_E_NOMEM on allocation failure. Thread-safe. */
finch_status finch_tok_partition(const finch_tokenizer *tok, const char *text, size_t len,
                                 bool parse_special, tok_frag **frags, size_t *n_frags,
                                 finch_err *err);

/* ---- bpe.c, spm.c ------------------------------------------------------------------- */

/* Byte-level BPE, GPT-2 style (tokenizer.ggml.model "gpt2", and tokenizer.json). */
extern const tok_model finch_tok_bpe;

/* SentencePiece as llama.cpp runs it (tokenizer.ggml.model "llama"). Its load_tables
 * needs tok->scores and a token for every byte (<0xXX>, else the byte itself), which the
 * loader checks, and every token of type byte spelled <0xXX>. */
extern const tok_model finch_tok_spm;

/* The decoded piece of a SentencePiece-style token (for finch_tok_set_pieces): a normal
 * token its text with U+2581 as a space, a byte token (spelled <0xXX>) its byte, control,
 * unknown and user-defined tokens their text, others nothing. */
size_t finch_tok_spm_piece(const finch_tokenizer *tok, int32_t id, char *out);

/* Writes text[0..len) to out as SentencePiece sees it: a U+2581 in front when prefix is set,
 * every space (0x20) as U+2581. out holds 3 * (len + 1) bytes; returns the bytes written. */
size_t finch_tok_spm_mark(char *out, const char *text, size_t len, bool prefix);

/* SentencePiece-style tokenizer.json models as the tokenizers library runs them (hf_spm.c):
 * BPE merged by rank over characters with byte fallback, and Unigram (Viterbi over
 * tok->uni_scores). Both read tok->spm_prepend, spm_split, byte_fallback, unk_model and
 * fuse_unk, which hf_json.c sets. */
extern const tok_model finch_tok_hf_bpe;
extern const tok_model finch_tok_unigram;

/* ---- vocab.c ------------------------------------------------------------------------ */

/* Completes a tokenizer whose type, texts, attributes, merges or scores and special ids
 * are set: the special-token setup (special.c), then the type's byte tables and decoded
 * pieces (tok->model->load_tables). */
finch_status finch_tok_finish(finch_tokenizer *tok, finch_err *err);

/* ---- pretok.c ----------------------------------------------------------------------- */

/* Compiles the regex list for a tokenizer.ggml.pre name and says how the family sets the
 * defaults llama.cpp ties to it (ignore_merges, add_bos). An unknown name is
 * FINCH_E_UNSUPPORTED. */
finch_status finch_pretok_init(pretok *p, const char *name, bool *ignore_merges, bool *add_bos,
                               finch_err *err);
void finch_pretok_free(pretok *p);

/* Compiles n regexes (PCRE2 syntax, UTF + UCP) into p, applied in sequence. A pattern
 * that does not compile is FINCH_E_FORMAT with its number and the offset of the error;
 * more than PRETOK_MAX_REGEX is FINCH_E_UNSUPPORTED. */
finch_status finch_pretok_compile(pretok *p, const char *const *patterns, int n, finch_err *err);

/* The text as llama.cpp's regex stage sees it. When text is valid UTF-8 both *subject and
 * *bytes are text itself and nothing is allocated. Otherwise one malloc'd buffer holds two
 * views of equal length (free *owned): *subject, valid UTF-8 for PCRE2, and *bytes, what
 * BPE then encodes: each invalid byte becomes U+FFFD, overlong forms their code point, and
 * an encoded surrogate stays as it is in *bytes but is U+FFFD in *subject. */
finch_status finch_pretok_normalize(const char *text, size_t len, const char **subject,
                                    const char **bytes, size_t *out_len, char **owned,
                                    finch_err *err);

/* Splits subject[0..len) (valid UTF-8) into pieces by applying each regex of the list to
 * each piece of the previous one; matches and the text between them are pieces. The
 * lengths go to *pieces (malloc'd, free it). Thread-safe. */
finch_status finch_pretok_split(const pretok *p, const char *subject, size_t len, size_t **pieces,
                                size_t *n_pieces, finch_err *err);

/* Writes the UTF-8 encoding of code point c (at most 0x10FFFF) to out; returns 1 to 4. */
int finch_utf8_put(uint32_t c, char *out);

/* Decodes one code point the way llama.cpp does (lenient: overlong forms and surrogates
 * are accepted, anything else invalid is one byte of U+FFFD). *used gets the bytes read;
 * returns 0xFFFD for an invalid byte and values up to 0x1FFFFF otherwise. */
uint32_t finch_utf8_get_lenient(const char *s, size_t len, size_t *used);

/* Length of the strictly valid UTF-8 prefix of s[0..len) (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
size_t finch_utf8_valid_prefix(const uint8_t *s, size_t len);

/* ---- nfc.c -------------------------------------------------------------------------- */

/* Puts text in Unicode NFC as the tokenizers library does. *out is NULL when the text is
 * already normalized (nothing is copied); otherwise a malloc'd buffer (free it) of
 * *out_len bytes. Invalid UTF-8 bytes are kept as they are. */
finch_status finch_nfc(const char *text, size_t len, char **out, size_t *out_len, finch_err *err);

/* ---- precompiled.c ------------------------------------------------------------------ */

/* Reads a precompiled_charsmap (b64[0..len), base64) into *cm and checks every trie unit a
 * lookup can reach. A malformed one is FINCH_E_FORMAT naming path and field; *cm is
 * written only on success (free it with finch_charsmap_free). */
finch_status finch_charsmap_load(finch_charsmap *cm, const char *b64, size_t len, const char *path,
                                 const char *field, finch_err *err);
void finch_charsmap_free(finch_charsmap *cm);

/* Appends text[0..len) normalized by cm, as the tokenizers library's Precompiled does it, to
 * *o. grapheme is the compiled \X (UTF mode) and md match data for it (one per thread).
 * False when memory runs out. */
bool finch_charsmap_normalize(const finch_charsmap *cm, const pcre2_code *grapheme,
                              pcre2_match_data *md, const char *text, size_t len, tok_buf *o);

#endif /* FINCH_TOKENIZER_INTERNAL_H */
