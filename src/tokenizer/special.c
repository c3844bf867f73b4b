/*
 * special.c: special tokens. Two jobs:
 *
 *  1. At load time, what llama.cpp infers from token texts because converters do not
 *     always write it: the end-of-turn, end-of-message and fill-in-the-middle tokens are
 *     found by name when their *_token_id key is absent; tokens with a known
 *     end-of-generation name join the end-of-generation (EOG) set together with eos, eot
 *     and eom; each token found this way becomes a control token. The names are data,
 *     listed below as llama.cpp lists them (the llama.cpp of llama-cpp-python 0.3.36).
 *  2. At tokenization time, the split of a text at special tokens before the
 *     pre-tokenizer sees it. llama.cpp takes the special tokens longest first and lets
 *     each one split the text runs left by the longer ones (leftmost occurrence first),
 *     which is not the same as a leftmost-longest scan when two special texts overlap;
 *     this file does exactly the same.
 *
 * Where llama.cpp's choice depends on the iteration order of a hash map (which of two
 * candidate names becomes the EOT id) or on an unstable sort (the order of special tokens
 * of equal length), finch picks the first name in the list below and the lower id. The
 * EOG set does not depend on either choice.
 *
 * A token may swallow the whitespace beside it (tok->strip, from the lstrip/rstrip of a
 * tokenizer.json added token), within the text run it was found in.
 *
 * Not done: the LSTRIP/RSTRIP attributes llama.cpp gives some tokens of Phi-3 and Jina
 * GGUF models (spaces beside such a token are kept there).
 */
#include "internal.h"

#include <stdlib.h>

/* Names that identify a role when the role's key is absent, in the order tried. */
static const char *const eot_names[] = {
    "<|eot_id|>",         "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>",    "<EOT>",      "_<EOT>",  "[EOT]",         "<｜end▁of▁sentence｜>",
    "<end_of_utterance>", NULL};
static const char *const eom_names[] = {"<|eom_id|>", NULL};
static const char *const fim_pre_names[] = {"<|fim_prefix|>",  "<fim-prefix>", "<fim_prefix>",
                                            "<｜fim▁begin｜>", "<PRE>",        "▁<PRE>",
                                            "<|code_prefix|>", "<|prefix|>",   NULL};
static const char *const fim_suf_names[] = {"<|fim_suffix|>",  "<fim-suffix>", "<fim_suffix>",
                                            "<｜fim▁hole｜>",  "<SUF>",        "▁<SUF>",
                                            "<|code_suffix|>", "<|suffix|>",   NULL};
static const char *const fim_mid_names[] = {"<|fim_middle|>",  "<fim-middle>", "<fim_middle>",
                                            "<｜fim▁end｜>",   "<MID>",        "▁<MID>",
                                            "<|code_middle|>", "<|middle|>",   NULL};
static const char *const fim_pad_names[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>",
                                            "<PAD>",       "[PAD]",     NULL};
static const char *const fim_rep_names[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                            "<REPO>",       "<reponame>",    NULL};
static const char *const fim_sep_names[] = {"<|file_sep|>", NULL};

/* Token texts that end generation wherever they are in the vocabulary. */
static const char *const eog_names[] = {"<|eot_id|>",
                                        "<|im_end|>",
                                        "<|end|>",
                                        "<|return|>",
                                        "<|call|>",
                                        "<|flush|>",
                                        "<|calls|>",
                                        "<end_of_turn>",
                                        "<|endoftext|>",
                                        "</s>",
                                        "<|eom_id|>",
                                        "<EOT>",
                                        "_<EOT>",
                                        "[EOT]",
                                        "[EOS]",
                                        "<|end_of_text|>",
                                        "<end_of_utterance>",
                                        "<eos>",
                                        "<turn|>",
                                        "<|tool_response>",
                                        "<｜end▁of▁sentence｜>",
                                        "[e~[",
                                        NULL};

/* gpt-oss tokens llama.cpp always renders (user-defined rather than control). */
static const char *const rendered_names[] = {"<|channel|>", "<|message|>", "<|start|>",
                                             "<|constrain|>", NULL};

static int32_t find_name(const finch_tokenizer *tok, const char *name) {
    return finch_tok_find(tok, name, strlen(name));
}

/* The id of the token with this text when it ends generation, else -1. */
static int32_t eog_id(const finch_tokenizer *tok, const char *name) {
    int32_t id = find_name(tok, name);
    return id >= 0 && (tok->attr[id] & TOK_EOG) ? id : -1;
}

static void make_type(finch_tokenizer *tok, int32_t id, uint8_t type) {
    tok->attr[id] = (uint8_t)((tok->attr[id] & ~TOK_TYPE_MASK) | type);
}

static void detect_role(finch_tokenizer *tok, special_role role, const char *const *names) {
    if (tok->special[role] >= 0) return;
    for (int i = 0; names[i]; i++) {
        int32_t id = find_name(tok, names[i]);
        if (id < 0) continue;
        tok->special[role] = id;
        if (!(tok->attr[id] & TOK_CONTROL)) make_type(tok, id, TOK_CONTROL);
        return;
    }
}

static uint32_t text_len(const finch_tokenizer *tok, int32_t id) {
    return tok->text_len[id];
}

/* Sorts special ids by text length, longest first, then by id (a stable order). */
static int cmp_special(const void *a, const void *b, void *ctx) {
    const finch_tokenizer *tok = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = text_len(tok, x), ly = text_len(tok, y);
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Insertion sort would be quadratic for vocabularies with thousands of added tokens and
 * qsort has no context argument in C11: a plain merge sort. */
static void sort_specials(int32_t *v, int32_t *tmp, int32_t n, const finch_tokenizer *tok) {
    if (n < 2) return;
    int32_t h = n / 2;
    sort_specials(v, tmp, h, tok);
    sort_specials(v + h, tmp, n - h, tok);
    int32_t i = 0, j = h, k = 0;
    while (i < h && j < n) tmp[k++] = cmp_special(&v[j], &v[i], (void *)tok) < 0 ? v[j++] : v[i++];
    while (i < h) tmp[k++] = v[i++];
    while (j < n) tmp[k++] = v[j++];
    memcpy(v, tmp, (size_t)n * sizeof *v);
}

finch_status finch_tok_special_setup(finch_tokenizer *tok, finch_err *err) {
    detect_role(tok, SP_EOT, eot_names);
    detect_role(tok, SP_EOM, eom_names);
    detect_role(tok, SP_FIM_PRE, fim_pre_names);
    detect_role(tok, SP_FIM_SUF, fim_suf_names);
    detect_role(tok, SP_FIM_MID, fim_mid_names);
    detect_role(tok, SP_FIM_PAD, fim_pad_names);
    detect_role(tok, SP_FIM_REP, fim_rep_names);
    detect_role(tok, SP_FIM_SEP, fim_sep_names);

    static const special_role eog_roles[] = {SP_FIM_PAD, SP_FIM_REP, SP_FIM_SEP,
                                             SP_EOS,     SP_EOT,     SP_EOM};
    for (size_t i = 0; i < sizeof eog_roles / sizeof eog_roles[0]; i++)
        if (tok->special[eog_roles[i]] >= 0) tok->attr[tok->special[eog_roles[i]]] |= TOK_EOG;
    for (int i = 0; eog_names[i]; i++) {
        int32_t id = find_name(tok, eog_names[i]);
        if (id < 0) continue;
        tok->attr[id] |= TOK_EOG;
        if (!(tok->attr[id] & TOK_CONTROL)) make_type(tok, id, TOK_CONTROL);
    }
    for (int i = 0; rendered_names[i]; i++) {
        int32_t id = find_name(tok, rendered_names[i]);
        if (id >= 0) make_type(tok, id, TOK_USER_DEFINED);
    }
    /* o200k_harmony (<|return|>, <|call|>) and solar-open (<|calls|>, <|flush|>): with those
     * ending generation, <|end|> only ends a message, and is rendered */
    int32_t end = eog_id(tok, "<|end|>");
    bool call = eog_id(tok, "<|call|>") >= 0 || eog_id(tok, "<|calls|>") >= 0;
    if (end >= 0 && call && (eog_id(tok, "<|return|>") >= 0 || eog_id(tok, "<|flush|>") >= 0)) {
        tok->attr[end] &= (uint8_t)~TOK_EOG;
        make_type(tok, end, TOK_USER_DEFINED);
    }
    /* Gemma 4 and PLaMo have a </s> that is plain text (their end marker is another token) */
    int32_t s_end = eog_id(tok, "</s>");
    if (s_end >= 0 && (eog_id(tok, "<|tool_response>") >= 0 || eog_id(tok, "<|plamo:eos|>") >= 0)) {
        tok->attr[s_end] &= (uint8_t)~TOK_EOG;
        make_type(tok, s_end, TOK_NORMAL);
    }

    int32_t n = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if (tok->attr[id] & (TOK_CONTROL | TOK_USER_DEFINED | TOK_UNKNOWN)) n++;
    tok->specials = finch_calloc((size_t)n + 1, sizeof *tok->specials, "special tokens", err);
    int32_t *tmp = finch_calloc((size_t)n + 1, sizeof *tmp, "special tokens", err);
    if (!tok->specials || !tmp) {
        free(tmp);
        return FINCH_E_NOMEM;
    }
    n = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if (tok->attr[id] & (TOK_CONTROL | TOK_USER_DEFINED | TOK_UNKNOWN)) tok->specials[n++] = id;
    sort_specials(tok->specials, tmp, n, tok);
    free(tmp);
    tok->n_specials = n;
    return FINCH_OK;
}

/* ---- partition ---------------------------------------------------------------------- */

typedef struct {
    tok_frag *v;
    size_t n, cap;
} fragvec;

static bool frag_push(fragvec *a, size_t start, size_t len, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 16;
        tok_frag *v = finch_mem_realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (tok_frag){start, len, id};
    return true;
}

/* The first occurrence of needle (n >= 1 bytes) in hay[0..len), or NULL. */
static const char *find_bytes(const char *hay, size_t len, const char *needle, size_t n) {
    if (n > len) return NULL;
    const char *end = hay + (len - n) + 1; /* last possible start + 1 */
    const char *p = hay;
    while (p < end) {
        p = memchr(p, needle[0], (size_t)(end - p));
        if (!p) return NULL;
        if (memcmp(p, needle, n) == 0) return p;
        p++;
    }
    return NULL;
}

/* Unicode White_Space, what lstrip/rstrip of a tokenizer.json added token remove. */
static bool is_space_cpt(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* Bytes of whitespace at the start of s[0..len). */
static size_t space_after(const char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t used;
        if (!is_space_cpt(finch_utf8_get_lenient(s + i, len - i, &used))) break;
        i += used;
    }
    return i;
}

/* Bytes of whitespace at the end of s[0..len). */
static size_t space_before(const char *s, size_t len) {
    size_t i = len;
    while (i > 0) {
        size_t st = i - 1, used;
        while (st > 0 && i - st < 4 && ((uint8_t)s[st] & 0xc0) == 0x80) st--;
        uint32_t c = finch_utf8_get_lenient(s + st, i - st, &used);
        if (st + used != i || !is_space_cpt(c)) break;
        i = st;
    }
    return len - i;
}

finch_status finch_tok_partition(const finch_tokenizer *tok, const char *text, size_t len,
                                 bool parse_special, tok_frag **frags, size_t *n_frags,
                                 finch_err *err) {
    fragvec cur = {0}, next = {0};
    if (!frag_push(&cur, 0, len, -1)) goto nomem;
    for (int32_t k = 0; k < tok->n_specials; k++) {
        int32_t id = tok->specials[k];
        if (!parse_special && (tok->attr[id] & (TOK_CONTROL | TOK_UNKNOWN))) continue;
        size_t n = tok->text_len[id];
        const char *s = tok->text_blob + tok->text_off[id];
        /* most special tokens appear nowhere: one scan of the whole text settles it */
        if (!find_bytes(text, len, s, n)) continue;
        next.n = 0;
        for (size_t f = 0; f < cur.n; f++) {
            tok_frag fr = cur.v[f];
            if (fr.id >= 0) {
                if (!frag_push(&next, fr.start, fr.len, fr.id)) goto nomem;
                continue;
            }
            size_t pos = fr.start, end = fr.start + fr.len;
            const char *hit;
            uint8_t strip = tok->strip ? tok->strip[id] : 0;
            while ((hit = find_bytes(text + pos, end - pos, s, n))) {
                size_t h = (size_t)(hit - text), gap_end = h;
                if (strip & STRIP_LEFT) gap_end -= space_before(text + pos, h - pos);
                if (gap_end > pos && !frag_push(&next, pos, gap_end - pos, -1)) goto nomem;
                if (!frag_push(&next, h, n, id)) goto nomem;
                pos = h + n;
                if (strip & STRIP_RIGHT) pos += space_after(text + pos, end - pos);
            }
            if (pos < end && !frag_push(&next, pos, end - pos, -1)) goto nomem;
        }
        fragvec t = cur;
        cur = next;
        next = t;
    }
    free(next.v);
    *frags = cur.v;
    *n_frags = cur.n;
    return FINCH_OK;

nomem:
    free(cur.v);
    free(next.v);
    return finch_err_set(err, FINCH_E_NOMEM,
                         "out of memory splitting %zu bytes at special "
                         "tokens",
                         len);
}
