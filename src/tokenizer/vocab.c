/*
 * vocab.c: builds a finch_tokenizer from the tokenizer.* keys of a GGUF file, filling its
 * lookup tables (lookup.c), and completes any loaded tokenizer (finch_tok_finish: the
 * special tokens of special.c, then the byte tables and pieces of the vocabulary type).
 *
 * tokenizer.ggml.model picks the type: "gpt2" byte-level BPE (bpe.c), "llama" SentencePiece
 * (spm.c). What it checks (everything here comes from a file, so every problem is a
 * FINCH_E_FORMAT or FINCH_E_UNSUPPORTED message naming the file and the key): the model is
 * one of those two; tokenizer.ggml.tokens is an array of 1 to TOK_MAX_VOCAB strings;
 * tokenizer.ggml.token_type, when present, is an array of int32 with one entry per token;
 * every *_token_id key is inside the vocabulary; add_bos_token/add_eos_token have an id to
 * add. For BPE: tokenizer.ggml.pre names a known pre-tokenizer and every merge is
 * "left right" with both parts tokens. For SentencePiece, where the scores drive the merges
 * and the types decide how a token decodes: tokenizer.ggml.scores holds one float32 per
 * token, none NaN; no token text is empty or longer than 64 KiB; every type is 0 to 6; every
 * token of type byte is spelled <0xXX>; and every byte has a token to fall back to (<0xXX>,
 * else the byte itself), since any text may need one.
 *
 * Defaults, as llama.cpp's llama_vocab::load has them: BPE adds BOS when its pre-tokenizer
 * family does; SentencePiece has bos 1, eos 2 and unk 0 when their keys are absent, adds BOS,
 * and puts a space before the text. tokenizer.ggml.add_space_prefix overrides the space
 * prefix for both types (Gemma 3 writes false; for BPE, where it defaults to false, it only
 * makes decoding drop the first token's leading space, as in llama.cpp). tokenizer.ggml.pre
 * means nothing to SentencePiece and is only reported. SentencePiece files need no merges;
 * any there are ignored.
 *
 * What it does not do: llama.cpp's per-model LSTRIP/RSTRIP token attributes (Phi-3, Jina)
 * are not applied.
 *
 * Facts: FORMATS.md section 5 (keys, types, defaults). Where llama.cpp tolerates a
 * malformed file (an out-of-range special id is ignored with a warning, a merge naming a
 * missing token is kept, a SentencePiece vocabulary without byte tokens fails only when a
 * text needs one), finch refuses it with a message instead. Like llama.cpp, an empty BPE
 * token text is read as "[EMPTY_<id>]" and, when two tokens share a text, the text finds
 * the later id.
 */
#include "internal.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

/* The most tokens a GGUF vocabulary may have (the largest real ones have ~260,000), and the
 * longest SentencePiece token text (real ones have at most a few hundred bytes). */
#define TOK_MAX_VOCAB (1 << 24)
#define SPM_MAX_TOKEN_TEXT (1 << 16)

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
    case 1:
        return TOK_NORMAL;
    case 2:
        return TOK_UNKNOWN;
    case 3:
        return TOK_CONTROL;
    case 4:
        return TOK_USER_DEFINED;
    case 5:
        return TOK_UNUSED;
    case 6:
        return TOK_BYTE;
    default:
        return TOK_UNDEFINED;
    }
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

/* ---- SentencePiece checks ----------------------------------------------------------- */

/* The raw type of token i from tokenizer.ggml.token_type (little-endian int32). */
static int32_t type_at(const finch_gguf_kv *types, int32_t i) {
    uint32_t u;
    memcpy(&u, types->arr_data + 4 * (size_t)i, 4);
    return (int32_t)u;
}

static bool is_byte_name(finch_str s) {
    return s.len == 6 && memcmp(s.ptr, "<0x", 3) == 0 && isxdigit((unsigned char)s.ptr[3]) &&
           isxdigit((unsigned char)s.ptr[4]) && s.ptr[5] == '>';
}

/* What a SentencePiece vocabulary needs of its token texts and types, checked on the raw
 * arrays before they are copied: no empty text (llama.cpp would rename it and encode with
 * the name) and none absurdly long, types 0 to 6, byte tokens spelled <0xXX> (decoding reads
 * the byte from it). */
static finch_status check_spm_tokens(const finch_gguf *g, const finch_gguf_kv *tokens,
                                     const finch_gguf_kv *types, finch_err *err) {
    const char *path = finch_gguf_path(g);
    for (int32_t i = 0; i < (int32_t)tokens->arr_n; i++) {
        finch_str t = tokens->arr_str[i];
        if (t.len == 0)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.tokens': token %d is an empty string",
                                 path, i);
        if (t.len > SPM_MAX_TOKEN_TEXT)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.tokens': token %d is %" PRIu64
                                 " bytes long, at most %d",
                                 path, i, (uint64_t)t.len, SPM_MAX_TOKEN_TEXT);
        if (!types) continue;
        int32_t ty = type_at(types, i);
        if (ty < 0 || ty > 6)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.token_type': token %d has type %d, "
                                 "expected 0 to 6 (undefined, normal, unknown, control, "
                                 "user-defined, unused, byte)",
                                 path, i, ty);
        if (ty == 6 && !is_byte_name(t))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.tokens': token %d '%.*s' has type 6 "
                                 "(byte) but is not spelled <0xXX>",
                                 path, i, (int)(t.len < 64 ? t.len : 64), t.ptr);
    }
    return FINCH_OK;
}

/* Copies tokenizer.ggml.scores: one float32 per token, none NaN (the merge order compares
 * them). */
static finch_status load_scores(finch_tokenizer *tok, const finch_gguf *g, finch_err *err) {
    const char *path = finch_gguf_path(g);
    const finch_gguf_kv *kv = NULL; /* not written when the key is absent */
    finch_status st =
        finch_gguf_get_arr(g, "tokenizer.ggml.scores", FINCH_GGUF_FLOAT32, false, &kv, err);
    if (st) return st;
    if (!kv)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: key 'tokenizer.ggml.scores' is missing: a SentencePiece "
                             "vocabulary ('llama') needs one score per token",
                             path);
    if (kv->arr_n != (uint64_t)tok->n_vocab)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: key 'tokenizer.ggml.scores' has %" PRIu64
                             " entries, expected %d (one per token of tokenizer.ggml.tokens)",
                             path, kv->arr_n, tok->n_vocab);
    tok->scores = finch_alloc((size_t)tok->n_vocab * sizeof *tok->scores, "token scores", err);
    if (!tok->scores) return FINCH_E_NOMEM;
    memcpy(tok->scores, kv->arr_data, (size_t)tok->n_vocab * sizeof *tok->scores);
    for (int32_t i = 0; i < tok->n_vocab; i++)
        if (isnan(tok->scores[i]))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.scores': entry %d (token '%s') is NaN",
                                 path, i, tok->text_blob + tok->text_off[i]);
    return FINCH_OK;
}

/* Every byte needs a token for the byte fallback: <0xXX> (as llama.cpp's byte_to_token looks
 * for it, upper-case), else the one-byte text. */
static finch_status check_byte_tokens(const finch_tokenizer *tok, const finch_gguf *g,
                                      finch_err *err) {
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        const char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        char c = (char)b;
        if (finch_tok_find(tok, name, sizeof name) < 0 && finch_tok_find(tok, &c, 1) < 0)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.tokens' has no token for byte 0x%02X "
                                 "(neither '<0x%02X>' nor the byte itself): SentencePiece falls "
                                 "back to byte tokens for text no token covers",
                                 finch_gguf_path(g), b, b);
    }
    return FINCH_OK;
}

/* ---- BPE merges --------------------------------------------------------------------- */

/* Parses every merge "left right" (split at the first space at position >= 1, as
 * llama.cpp does) into the pair table. */
static finch_status load_merges(finch_tokenizer *tok, const finch_gguf *g,
                                const finch_gguf_kv *merges, finch_err *err) {
    const char *path = finch_gguf_path(g);
    if (merges->arr_n > (uint64_t)INT32_MAX)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: key 'tokenizer.ggml.merges' has %" PRIu64 " entries, at most %d",
                             path, merges->arr_n, INT32_MAX);
    finch_status st = finch_tok_alloc_merges(tok, (int64_t)merges->arr_n, err);
    if (st) return st;

    for (int64_t r = 0; r < tok->n_merges; r++) {
        finch_str m = merges->arr_str[r];
        const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', (size_t)m.len - 1) : NULL;
        if (!sp)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.merges': entry "
                                 "%" PRId64 " '%.*s' has no space between its two parts",
                                 path, r, (int)(m.len < 64 ? m.len : 64), m.ptr);
        size_t ln = (size_t)(sp - m.ptr), rn = (size_t)m.len - ln - 1;
        int32_t left = finch_tok_find(tok, m.ptr, ln);
        int32_t right = finch_tok_find(tok, sp + 1, rn);
        if (left < 0 || right < 0) {
            const char *bad = left < 0 ? m.ptr : sp + 1;
            size_t bn = left < 0 ? ln : rn;
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key 'tokenizer.ggml.merges': entry "
                                 "%" PRId64 " '%.*s': '%.*s' is not a token of "
                                 "tokenizer.ggml.tokens",
                                 path, r, (int)(m.len < 64 ? m.len : 64), m.ptr,
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
        finch_tok_add_merge(tok, left, right, (int32_t)r, result);
    }
    return FINCH_OK;
}

finch_status finch_tok_finish(finch_tokenizer *tok, finch_err *err) {
    finch_status st = finch_tok_special_setup(tok, err);
    return st ? st : tok->model->load_tables(tok, err);
}

/* Reads the pre-tokenizer name (tokenizer.ggml.pre, "default" when absent) and, for BPE,
 * compiles its regexes and takes the family's add-BOS default. */
static finch_status load_pre(finch_tokenizer *tok, const finch_gguf *g, bool *add_bos,
                             finch_err *err) {
    const char *path = finch_gguf_path(g);
    bool bpe = tok->model == &finch_tok_bpe;
    finch_str pre = {0};
    finch_status st = finch_gguf_get_str(g, "tokenizer.ggml.pre", false, &pre, err);
    if (st) return st;
    if (!pre.ptr && bpe)
        finch_log(FINCH_LOG_WARN,
                  "%s: no tokenizer.ggml.pre key: using the 'default' "
                  "pre-tokenizer as llama.cpp does; tokenization may differ from the "
                  "model's own tokenizer",
                  path);
    tok->pre_name = pre.ptr ? dup_str(pre.ptr, (size_t)pre.len, "pre-tokenizer name", err)
                            : dup_str("default", 7, "pre-tokenizer name", err);
    if (!tok->pre_name) return FINCH_E_NOMEM;
    if (!bpe) return FINCH_OK; /* llama.cpp does not read it for SentencePiece */
    if ((st = finch_pretok_init(&tok->pre, tok->pre_name, &tok->ignore_merges, add_bos, err)))
        finch_err_prefix(err, "%s: key 'tokenizer.ggml.pre'", path);
    return st;
}

/* Reads the special-token ids: each key present must be inside the vocabulary; absent ones
 * keep the type's defaults (SentencePiece: bos 1, eos 2, unk 0, where the vocabulary has
 * them). */
static finch_status load_special_ids(finch_tokenizer *tok, const finch_gguf *g, finch_err *err) {
    if (tok->model == &finch_tok_spm) {
        static const struct {
            special_role role;
            int32_t id;
        } defaults[] = {{SP_BOS, 1}, {SP_EOS, 2}, {SP_UNK, 0}};
        for (size_t k = 0; k < sizeof defaults / sizeof defaults[0]; k++)
            if (defaults[k].id < tok->n_vocab) tok->special[defaults[k].role] = defaults[k].id;
    }
    for (int r = 0; r < SP_COUNT; r++) {
        uint32_t id;
        if (!finch_gguf_find_kv(g, special_keys[r])) continue;
        finch_status st = finch_gguf_get_u32(g, special_keys[r], true, &id, err);
        if (st) return st;
        if (id >= (uint32_t)tok->n_vocab)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: key '%s' is %u, outside the vocabulary "
                                 "of %d tokens",
                                 finch_gguf_path(g), special_keys[r], id, tok->n_vocab);
        tok->special[r] = (int32_t)id;
    }
    return FINCH_OK;
}

finch_status finch_tokenizer_from_gguf(const finch_gguf *g, finch_tokenizer **out, finch_err *err) {
    FINCH_ASSERT(g && out);
    const char *path = finch_gguf_path(g);
    finch_str model = {0}, tmpl = {0};
    finch_status st;
    if ((st = finch_gguf_get_str(g, "tokenizer.ggml.model", false, &model, err))) return st;
    if (!model.ptr || str_is(model, "none") || str_is(model, "no_vocab")) {
        *out = NULL;
        return FINCH_OK;
    }
    const tok_model *type = str_is(model, "gpt2")    ? &finch_tok_bpe
                            : str_is(model, "llama") ? &finch_tok_spm
                                                     : NULL;
    if (!type)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: key 'tokenizer.ggml.model' is '%.*s': finch reads byte-level "
                             "BPE ('gpt2') and SentencePiece ('llama') vocabularies",
                             path, (int)(model.len < 64 ? model.len : 64), model.ptr);
    bool spm = type == &finch_tok_spm;

    finch_tokenizer *tok = finch_calloc(1, sizeof *tok, "tokenizer", err);
    if (!tok) return FINCH_E_NOMEM;
    tok->model = type;
    for (int r = 0; r < SP_COUNT; r++) tok->special[r] = -1;

    bool add_bos = spm, add_eos = false, space_prefix = spm;
    if ((st = load_pre(tok, g, &add_bos, err))) goto fail;

    const finch_gguf_kv *tokens, *types = NULL, *merges = NULL;
    if ((st =
             finch_gguf_get_arr(g, "tokenizer.ggml.tokens", FINCH_GGUF_STRING, true, &tokens, err)))
        goto fail;
    if (tokens->arr_n == 0 || tokens->arr_n > (uint64_t)TOK_MAX_VOCAB) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: key 'tokenizer.ggml.tokens' has %" PRIu64
                           " tokens, expected 1 to %d",
                           path, tokens->arr_n, TOK_MAX_VOCAB);
        goto fail;
    }
    tok->n_vocab = (int32_t)tokens->arr_n;
    if ((st = finch_gguf_get_arr(g, "tokenizer.ggml.token_type", FINCH_GGUF_INT32, false, &types,
                                 err)))
        goto fail;
    if (types && types->arr_n != tokens->arr_n) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: key 'tokenizer.ggml.token_type' has %" PRIu64
                           " entries, expected %d (one per token of tokenizer.ggml.tokens)",
                           path, types->arr_n, tok->n_vocab);
        goto fail;
    }
    if (spm && (st = check_spm_tokens(g, tokens, types, err))) goto fail;
    if (!spm && (st = finch_gguf_get_arr(g, "tokenizer.ggml.merges", FINCH_GGUF_STRING, true,
                                         &merges, err)))
        goto fail;

    if ((st = load_special_ids(tok, g, err))) goto fail;
    if ((st = finch_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", false, &add_bos, err)) ||
        (st = finch_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", false, &add_eos, err)) ||
        (st = finch_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", false, &space_prefix, err)))
        goto fail;
    if (add_bos && tok->special[SP_BOS] < 0) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: BOS is to be added (key 'tokenizer.ggml.add_bos_token', or the "
                           "default of %s '%s') but key 'tokenizer.ggml.bos_token_id' is missing",
                           path, spm ? "tokenizer.ggml.model" : "pre-tokenizer",
                           spm ? type->name : tok->pre_name);
        goto fail;
    }
    if (add_eos && tok->special[SP_EOS] < 0) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: key 'tokenizer.ggml.add_eos_token' is true "
                           "but key 'tokenizer.ggml.eos_token_id' is missing",
                           path);
        goto fail;
    }
    tok->add_bos = add_bos;
    tok->add_eos = add_eos;
    tok->add_space_prefix = space_prefix;

    if ((st = finch_gguf_get_str(g, "tokenizer.chat_template", false, &tmpl, err))) goto fail;
    if (tmpl.ptr) {
        tok->chat_template = dup_str(tmpl.ptr, (size_t)tmpl.len, "chat template", err);
        if (!tok->chat_template) {
            st = FINCH_E_NOMEM;
            goto fail;
        }
    }

    if ((st = load_tokens(tok, g, tokens, types, err))) goto fail;
    if (spm) {
        if ((st = load_scores(tok, g, err)) || (st = check_byte_tokens(tok, g, err))) goto fail;
    } else if ((st = load_merges(tok, g, merges, err))) {
        goto fail;
    }
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
    free(tok->scores);
    free(tok->uni_scores);
    for (int i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].from);
        free(tok->norm[i].to);
    }
    finch_charsmap_free(&tok->charsmap);
    pcre2_code_free(tok->grapheme);
    free(tok->specials);
    free(tok->strip);
    free(tok->pre_name);
    free(tok->chat_template);
    free(tok);
}

/* ---- accessors ---------------------------------------------------------------------- */

int32_t finch_tokenizer_bos(const finch_tokenizer *tok) {
    return tok->special[SP_BOS];
}
int32_t finch_tokenizer_eos(const finch_tokenizer *tok) {
    return tok->special[SP_EOS];
}
const char *finch_tokenizer_model_name(const finch_tokenizer *tok) {
    return tok->model->name;
}
const char *finch_tokenizer_pre_name(const finch_tokenizer *tok) {
    return tok->pre_name;
}
int64_t finch_tokenizer_n_merges(const finch_tokenizer *tok) {
    return tok->n_merges;
}
const char *finch_tokenizer_chat_template(const finch_tokenizer *tok) {
    return tok->chat_template;
}

FINCH_API int32_t finch_tokenizer_n_vocab(const finch_tokenizer *tok) {
    return tok->n_vocab;
}

FINCH_API const char *finch_tokenizer_token_text(const finch_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return NULL;
    return tok->text_blob + tok->text_off[id];
}

FINCH_API int finch_tokenizer_is_eog(const finch_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return 0;
    return (tok->attr[id] & TOK_EOG) != 0;
}
