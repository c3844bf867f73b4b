/*
 * tokenize.c: the public calls finch_tokenize, finch_detokenize and finch_tokenizer_piece,
 * whatever the vocabulary type.
 *
 * Encoding checks the arguments, adds BOS when FINCH_TOK_ADD_SPECIAL and the model ask for
 * it, splits the text at special tokens (special.c), hands the fragments to the type's
 * encoder (tok->model: bpe.c or spm.c) and adds EOS likewise, as llama_vocab::tokenize does
 * for every type.
 *
 * Decoding concatenates the pieces the type's load_tables decoded once at load; control and
 * unknown tokens give nothing unless special tokens are asked for. Like llama_detokenize
 * with remove_special false (what llama.cpp's common_detokenize passes), a vocabulary with
 * add_space_prefix loses one leading space of the first token's piece, the one SentencePiece
 * encoding put there; nothing else is stripped. Not done: clean_spaces.
 *
 * Thread safety: the tokenizer is read-only here; each call has its own memory.
 */
#include "internal.h"

#include <inttypes.h>

FINCH_API finch_status finch_tokenize(const finch_tokenizer *tok, const char *text, size_t len,
                                      int flags, int32_t **ids, int64_t *n_ids, finch_err *err) {
    FINCH_ASSERT(tok && ids && n_ids);
    if (!text && len)
        return finch_err_set(err, FINCH_E_USAGE, "finch_tokenize: text is NULL with length %zu",
                             len);
    if (flags & ~(FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL))
        return finch_err_set(err, FINCH_E_USAGE, "finch_tokenize: unknown flags 0x%x", flags);
    if (!text) text = "";
    tok_ids out = {0};
    tok_frag *frags = NULL;
    size_t n_frags = 0;
    finch_status st;
    bool add = flags & FINCH_TOK_ADD_SPECIAL;
    /* reserve about one id per four bytes, and at least something to return */
    out.cap = len / 4 + 4;
    out.v = finch_mem_alloc(out.cap * sizeof *out.v);
    if (!out.v) goto nomem;
    if (add && tok->add_bos && !tok_ids_push(&out, tok->special[SP_BOS])) goto nomem;
    if ((st = finch_tok_partition(tok, text, len, flags & FINCH_TOK_PARSE_SPECIAL, &frags, &n_frags,
                                  err)))
        goto fail;
    if ((st = tok->model->encode(tok, text, frags, n_frags, &out, err))) goto fail;
    if (add && tok->add_eos && !tok_ids_push(&out, tok->special[SP_EOS])) goto nomem;
    free(frags);
    *ids = out.v;
    *n_ids = (int64_t)out.n;
    return FINCH_OK;

nomem:
    st = finch_err_set(err, FINCH_E_NOMEM, "out of memory tokenizing %zu bytes", len);
fail:
    free(frags);
    free(out.v);
    return st;
}

/* The bytes token id stands for (empty for control/unknown ones unless special). */
static const char *piece_of(const finch_tokenizer *tok, int32_t id, bool special, size_t *len) {
    if (!special && (tok->attr[id] & (TOK_CONTROL | TOK_UNKNOWN))) {
        *len = 0;
        return "";
    }
    *len = tok->piece_off[id + 1] - tok->piece_off[id];
    return tok->piece_blob + tok->piece_off[id];
}

/* The piece of the token at position i of a decoded sequence: the first one loses a leading
 * space when the vocabulary adds one in front of the text (llama.cpp's remove_space). */
static const char *piece_at(const finch_tokenizer *tok, const int32_t *ids, int64_t i, bool special,
                            size_t *len) {
    const char *p = piece_of(tok, ids[i], special, len);
    if (i == 0 && tok->add_space_prefix && *len > 0 && p[0] == ' ') {
        p++;
        (*len)--;
    }
    return p;
}

int64_t finch_tokenizer_piece(const finch_tokenizer *tok, int32_t id, bool special, char *buf,
                              size_t cap) {
    if (id < 0 || id >= tok->n_vocab) return -1;
    size_t n;
    const char *p = piece_of(tok, id, special, &n);
    if (buf) memcpy(buf, p, n < cap ? n : cap);
    return (int64_t)n;
}

FINCH_API finch_status finch_detokenize(const finch_tokenizer *tok, const int32_t *ids,
                                        int64_t n_ids, int flags, char **text, size_t *len,
                                        finch_err *err) {
    FINCH_ASSERT(tok && text && len);
    if (n_ids < 0 || (n_ids > 0 && !ids))
        return finch_err_set(err, FINCH_E_USAGE, "finch_detokenize: %" PRId64 " ids at %p", n_ids,
                             (const void *)ids);
    bool special = flags & FINCH_TOK_PARSE_SPECIAL;
    size_t total = 0;
    for (int64_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab)
            return finch_err_set(err, FINCH_E_RANGE,
                                 "token %" PRId64 " of %" PRId64 " is id %d, "
                                 "outside the vocabulary of %d tokens",
                                 i, n_ids, ids[i], tok->n_vocab);
        size_t n;
        piece_at(tok, ids, i, special, &n);
        if (!finch_size_add(total, n, &total))
            return finch_err_set(err, FINCH_E_RANGE, "decoded text overflows size_t");
    }
    size_t bytes;
    if (!finch_size_add(total, 1, &bytes))
        return finch_err_set(err, FINCH_E_RANGE, "decoded text overflows size_t");
    char *out = finch_alloc(bytes, "decoded text", err);
    if (!out) return FINCH_E_NOMEM;
    size_t o = 0;
    for (int64_t i = 0; i < n_ids; i++) {
        size_t n;
        const char *p = piece_at(tok, ids, i, special, &n);
        memcpy(out + o, p, n);
        o += n;
    }
    out[o] = 0;
    *text = out;
    *len = o;
    return FINCH_OK;
}
