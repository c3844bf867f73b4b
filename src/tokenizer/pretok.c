/*
 * pretok.c: the pre-tokenizer. Splits a run of text (special tokens already taken out)
 * into the pieces that BPE then encodes one by one, with the regex list that
 * tokenizer.ggml.pre names, applied in sequence: each regex splits every piece the
 * previous one produced, and both its matches and the text between them become pieces.
 *
 * Facts: FORMATS.md 5.2 and 5.3 (names, regex lists, order). The regexes are the Hugging
 * Face patterns as llama.cpp spells them, with one change: `\s` is written out as the
 * Unicode White_Space set llama.cpp uses (PCRE2's `\s` under UCP also matches U+180E),
 * and the case-insensitive contractions of llama3/qwen2 as explicit classes ('[sS]), as
 * llama.cpp does. PCRE2 runs them in UTF + UCP mode, JIT-compiled when available. Each
 * piece is its own subject string, so a lookahead such as `\s+(?!\S)` stops at the end of
 * the piece, as in llama.cpp.
 *
 * Invalid UTF-8 is handled the way llama.cpp's decoder does it (finch_pretok_normalize): each
 * invalid byte becomes U+FFFD, overlong forms decode to their code point, and an encoded
 * surrogate is kept as bytes (a symbol to the regexes). Sequences that decode above
 * U+10FFFF make llama.cpp abort; here their lead byte is one U+FFFD.
 *
 * Not done: the pre-tokenizers of other families (deepseek, chatglm, tekken, gpt-4o,
 * bloom, ...) are FINCH_E_UNSUPPORTED. Unicode properties come from PCRE2's tables, which
 * may be older than llama.cpp's for characters assigned in recent Unicode versions.
 */
#include "internal.h"

#include <stdlib.h>

/* ---- regex lists -------------------------------------------------------------------- */

/* Unicode White_Space, the set llama.cpp's `\s` means. */
#define WS                                                                                         \
    "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"               \
    "\\x{202F}\\x{205F}\\x{3000}"

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
#define RE_GPT2                                                                                    \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])"

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
 * |\s*[\r\n]+|\s+(?!\S)|\s+ ; NUMS is \p{N}{1,3} (llama3) or \p{N} (qwen2). */
#define RE_LLAMA3_LIKE(NUMS)                                                                       \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"      \
    "|" NUMS "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS   \
    "]+"

typedef struct {
    const char *family;               /* for messages */
    bool ignore_merges;               /* llama.cpp's tokenizer_ignore_merges default */
    bool add_bos;                     /* llama.cpp's add_bos default for the family */
    const char *re[PRETOK_MAX_REGEX]; /* the list, NULL-terminated when shorter */
} family;

static const family fam_smollm = {"smollm", false, false, {"\\p{N}", RE_GPT2}};
static const family fam_gpt2 = {"gpt-2", false, false, {RE_GPT2}};
static const family fam_llama3 = {"llama3", true, true, {RE_LLAMA3_LIKE("\\p{N}{1,3}")}};
static const family fam_llama3_plain = {"dbrx", false, false, {RE_LLAMA3_LIKE("\\p{N}{1,3}")}};
static const family fam_qwen2 = {"qwen2", false, false, {RE_LLAMA3_LIKE("\\p{N}")}};
static const family fam_falcon = {
    "falcon", false, false, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}};
static const family fam_default = {
    "default", false, false, {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}};

/* tokenizer.ggml.pre names llama.cpp maps to each list. */
static const struct {
    const char *name;
    const family *fam;
} pre_names[] = {
    {"default", &fam_default},
    {"smollm", &fam_smollm},
    {"starcoder", &fam_smollm},
    {"refact", &fam_smollm},
    {"command-r", &fam_smollm},
    {"codeshell", &fam_smollm},
    {"exaone", &fam_smollm},
    {"minerva-7b", &fam_smollm},
    {"mellum2", &fam_smollm},
    {"gpt-2", &fam_gpt2},
    {"phi-2", &fam_gpt2},
    {"jina-es", &fam_gpt2},
    {"jina-de", &fam_gpt2},
    {"gigachat", &fam_gpt2},
    {"a.x-4.0", &fam_gpt2},
    {"mellum", &fam_gpt2},
    {"modern-bert", &fam_gpt2},
    {"exaone4", &fam_gpt2},
    {"mpt", &fam_gpt2},
    {"olmo", &fam_gpt2},
    {"jais", &fam_gpt2},
    {"trillion", &fam_gpt2},
    {"granite-docling", &fam_gpt2},
    {"llama3", &fam_llama3},
    {"llama-v3", &fam_llama3},
    {"llama-bpe", &fam_llama3},
    {"falcon3", &fam_llama3},
    {"falcon-h1", &fam_llama3},
    {"pixtral", &fam_llama3},
    {"midm-2.0", &fam_llama3},
    {"lfm2", &fam_llama3},
    {"jina-v5-nano", &fam_llama3},
    {"dbrx", &fam_llama3_plain},
    {"smaug-bpe", &fam_llama3_plain},
    {"qwen2", &fam_qwen2},
    {"deepseek-r1-qwen", &fam_qwen2},
    {"kormo", &fam_qwen2},
    {"f2llmv2", &fam_qwen2},
    {"megrez", &fam_qwen2},
    {"stablelm2", &fam_qwen2},
    {"hunyuan", &fam_qwen2},
    {"solar-open", &fam_qwen2},
    {"grok-2", &fam_qwen2},
    {"falcon", &fam_falcon},
};

finch_status finch_pretok_compile(pretok *p, const char *const *patterns, int n, finch_err *err) {
    memset(p, 0, sizeof *p);
    if (n > PRETOK_MAX_REGEX)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%d pre-tokenizer regexes: finch "
                             "applies at most %d",
                             n, PRETOK_MAX_REGEX);
    for (int i = 0; i < n; i++) {
        int code;
        PCRE2_SIZE at;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)patterns[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP, &code, &at, NULL);
        if (!re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(code, msg, sizeof msg);
            finch_pretok_free(p);
            if (code == PCRE2_ERROR_HEAPLIMIT || code == PCRE2_ERROR_NOMEMORY)
                return finch_err_set(err, FINCH_E_NOMEM,
                                     "compiling pre-tokenizer regex %d: "
                                     "%s",
                                     i + 1, (const char *)msg);
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "pre-tokenizer regex %d does not "
                                 "compile at offset %zu: %s",
                                 i + 1, (size_t)at, (const char *)msg);
        }
        /* without a JIT (or when it fails) pcre2_match interprets the pattern */
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        p->re[p->n++] = re;
    }
    return FINCH_OK;
}

finch_status finch_pretok_init(pretok *p, const char *name, bool *ignore_merges, bool *add_bos,
                               finch_err *err) {
    const family *f = NULL;
    for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++)
        if (strcmp(pre_names[i].name, name) == 0) f = pre_names[i].fam;
    if (!f)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "unknown pre-tokenizer '%s' (finch "
                             "knows the smollm, gpt-2, llama3, qwen2, falcon and default "
                             "families and their aliases)",
                             name);
    int n = 0;
    while (n < PRETOK_MAX_REGEX && f->re[n]) n++;
    /* the patterns are ours: one that does not compile is a bug, unless memory ran out */
    finch_status st = finch_pretok_compile(p, f->re, n, err);
    FINCH_ASSERT(st == FINCH_OK || st == FINCH_E_NOMEM);
    if (st) return finch_err_prefix(err, "the %s pre-tokenizer", f->family);
    *ignore_merges = f->ignore_merges;
    *add_bos = f->add_bos;
    return FINCH_OK;
}

void finch_pretok_free(pretok *p) {
    for (int i = 0; i < p->n; i++) pcre2_code_free(p->re[i]);
    p->n = 0;
}

/* ---- UTF-8 -------------------------------------------------------------------------- */

int finch_utf8_put(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xc0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xe0 | c >> 12);
        out[1] = (char)(0x80 | (c >> 6 & 0x3f));
        out[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    FINCH_ASSERT(c <= 0x10ffff);
    out[0] = (char)(0xf0 | c >> 18);
    out[1] = (char)(0x80 | (c >> 12 & 0x3f));
    out[2] = (char)(0x80 | (c >> 6 & 0x3f));
    out[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

static bool is_cont(uint8_t b) {
    return (b & 0xc0) == 0x80;
}

uint32_t finch_utf8_get_lenient(const char *str, size_t len, size_t *used) {
    const uint8_t *s = (const uint8_t *)str;
    uint8_t b = s[0];
    if (b < 0x80) {
        *used = 1;
        return b;
    }
    /* the lead byte's high bits give the length; only the continuation bytes' tag bits are
     * checked, which is why overlong forms and surrogates pass */
    if ((b & 0xe0) == 0xc0 && len >= 2 && is_cont(s[1])) {
        *used = 2;
        return (uint32_t)(b & 0x1f) << 6 | (s[1] & 0x3f);
    }
    if ((b & 0xf0) == 0xe0 && len >= 3 && is_cont(s[1]) && is_cont(s[2])) {
        *used = 3;
        return (uint32_t)(b & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    }
    if ((b & 0xf8) == 0xf0 && len >= 4 && is_cont(s[1]) && is_cont(s[2]) && is_cont(s[3])) {
        *used = 4;
        return (uint32_t)(b & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
               (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
    }
    *used = 1;
    return 0xfffd;
}

size_t finch_utf8_valid_prefix(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        /* eight ASCII bytes at a time: the common case */
        if (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (b >= 0xc2 && b <= 0xdf)
            n = 2;
        else if (b >= 0xe0 && b <= 0xef) {
            n = 3;
            if (b == 0xe0) lo = 0xa0;
            if (b == 0xed) hi = 0x9f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            n = 4;
            if (b == 0xf0) lo = 0x90;
            if (b == 0xf4) hi = 0x8f;
        } else
            return i;
        if (i + n > len || s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < n; k++)
            if (!is_cont(s[i + k])) return i;
        i += n;
    }
    return len;
}

finch_status finch_pretok_normalize(const char *text, size_t len, const char **subject,
                                    const char **bytes, size_t *out_len, char **owned,
                                    finch_err *err) {
    *owned = NULL;
    if (finch_utf8_valid_prefix((const uint8_t *)text, len) == len) {
        *subject = *bytes = text;
        *out_len = len;
        return FINCH_OK;
    }
    /* an invalid byte grows to the three bytes of U+FFFD; nothing else grows */
    size_t cap;
    if (!finch_size_mul(len, 6, &cap))
        return finch_err_set(err, FINCH_E_RANGE, "text of %zu bytes is too long", len);
    char *buf = finch_alloc(cap, "normalized text", err);
    if (!buf) return FINCH_E_NOMEM;
    char *subj = buf, *byt = buf + 3 * len;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t used;
        uint32_t c = finch_utf8_get_lenient(text + i, len - i, &used);
        if (c > 0x10ffff) {
            c = 0xfffd;
            used = 1;
        }
        int n = finch_utf8_put(c, byt + o);
        if (c >= 0xd800 && c <= 0xdfff)
            finch_utf8_put(0xfffd, subj + o);
        else
            memcpy(subj + o, byt + o, (size_t)n);
        o += (size_t)n;
        i += used;
    }
    *subject = subj;
    *bytes = byt;
    *out_len = o;
    *owned = buf;
    return FINCH_OK;
}

/* ---- splitting ---------------------------------------------------------------------- */

typedef struct {
    size_t *v;
    size_t n, cap;
} lenvec;

static bool lenvec_push(lenvec *a, size_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        size_t *v = finch_mem_realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return true;
}

/* Finds the next match of re in s[0..len) at or after off: *ms, *me. Returns 1 on a match,
 * 0 on none, or a PCRE2 error code (< 0). */
static int next_match(const pcre2_code *re, const char *s, size_t len, size_t off,
                      pcre2_match_data *md, size_t *ms, size_t *me) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its stack on the heap */
        rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return rc;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

finch_status finch_pretok_split(const pretok *p, const char *subject, size_t len, size_t **pieces,
                                size_t *n_pieces, finch_err *err) {
    lenvec cur = {0}, next = {0};
    finch_status st = FINCH_OK;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md || !lenvec_push(&cur, len)) goto nomem;

    for (int r = 0; r < p->n; r++) {
        next.n = 0;
        size_t start = 0;
        for (size_t k = 0; k < cur.n; k++) {
            const char *s = subject + start;
            size_t plen = cur.v[k], off = 0, gap = 0; /* gap: where unmatched text starts */
            while (off < plen) {
                size_t ms, me;
                int rc = next_match(p->re[r], s, plen, off, md, &ms, &me);
                if (rc == 0) break;
                if (rc < 0) {
                    PCRE2_UCHAR msg[128];
                    pcre2_get_error_message(rc, msg, sizeof msg);
                    st = finch_err_set(err,
                                       rc == PCRE2_ERROR_NOMEMORY ? FINCH_E_NOMEM : FINCH_E_RANGE,
                                       "pre-tokenizer regex %d on a piece of %zu bytes: %s", r + 1,
                                       plen, (const char *)msg);
                    goto done;
                }
                if (ms > gap && !lenvec_push(&next, ms - gap)) goto nomem;
                if (me > ms && !lenvec_push(&next, me - ms)) goto nomem;
                gap = off = me;
                if (me == ms) {
                    /* an empty match (none of our patterns has one): search on from the
                     * next character, which stays in the unmatched text */
                    off = ms + 1;
                    while (off < plen && is_cont((uint8_t)s[off])) off++;
                }
            }
            if (gap < plen && !lenvec_push(&next, plen - gap)) goto nomem;
            start += plen;
        }
        lenvec t = cur;
        cur = next;
        next = t;
    }
    *pieces = cur.v;
    *n_pieces = cur.n;
    cur.v = NULL;
    goto done;

nomem:
    st = finch_err_set(err, FINCH_E_NOMEM, "out of memory splitting %zu bytes of text", len);
done:
    free(cur.v);
    free(next.v);
    pcre2_match_data_free(md);
    return st;
}
