/*
 * vocab.c: builds a finch_tokenizer from the tokenizer.* keys of a GGUF file, filling its
 * lookup tables (lookup.c), and completes any loaded tokenizer (finch_tok_finish: the
 * special tokens of special.c, then the byte tables and pieces of bpe.c).
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
    return st ? st : finch_bpe_load_tables(tok, err);
}

finch_status finch_tokenizer_from_gguf(const finch_gguf *g, finch_tokenizer **out, finch_err *err) {
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
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: key 'tokenizer.ggml.model' is "
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
        finch_log(FINCH_LOG_WARN,
                  "%s: no tokenizer.ggml.pre key: using the 'default' "
                  "pre-tokenizer as llama.cpp does; tokenization may differ from the "
                  "model's own tokenizer",
                  path);
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
    if ((st =
             finch_gguf_get_arr(g, "tokenizer.ggml.tokens", FINCH_GGUF_STRING, true, &tokens, err)))
        goto fail;
    if (tokens->arr_n == 0 || tokens->arr_n > (uint64_t)INT32_MAX) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: key 'tokenizer.ggml.tokens' has %" PRIu64
                           " tokens, expected 1 to %d",
                           path, tokens->arr_n, INT32_MAX);
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
    if ((st =
             finch_gguf_get_arr(g, "tokenizer.ggml.merges", FINCH_GGUF_STRING, true, &merges, err)))
        goto fail;

    for (int r = 0; r < SP_COUNT; r++) {
        uint32_t id;
        if (!finch_gguf_find_kv(g, special_keys[r])) continue;
        if ((st = finch_gguf_get_u32(g, special_keys[r], true, &id, err))) goto fail;
        if (id >= (uint32_t)tok->n_vocab) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: key '%s' is %u, outside the vocabulary "
                               "of %d tokens",
                               path, special_keys[r], id, tok->n_vocab);
            goto fail;
        }
        tok->special[r] = (int32_t)id;
    }
    if ((st = finch_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", false, &add_bos, err)) ||
        (st = finch_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", false, &add_eos, err)))
        goto fail;
    if (add_bos && tok->special[SP_BOS] < 0) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: BOS is to be added (key "
                           "'tokenizer.ggml.add_bos_token', or the default of pre-tokenizer "
                           "'%s') but key 'tokenizer.ggml.bos_token_id' is missing",
                           path, tok->pre_name);
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

int32_t finch_tokenizer_bos(const finch_tokenizer *tok) {
    return tok->special[SP_BOS];
}
int32_t finch_tokenizer_eos(const finch_tokenizer *tok) {
    return tok->special[SP_EOS];
}
const char *finch_tokenizer_model_name(const finch_tokenizer *tok) {
    return tok->model_name;
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
