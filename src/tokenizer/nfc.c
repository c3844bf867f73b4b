/*
 * nfc.c: Unicode Normalization Form C, the "NFC" normalizer of a tokenizer.json, as the
 * Hugging Face tokenizers library computes it: full canonical decomposition (Hangul
 * syllables algorithmically), canonical ordering of combining marks, then canonical
 * composition (UAX #15). The tables (nfc_tables.h, made by gen_nfc_tables.py) follow the
 * library's Unicode version, not the newest one, so that ids match it.
 *
 * Text that cannot change is returned as it is without a copy: text where no character
 * decomposes, has a combining class, or may compose with the one before it (nothing below
 * U+0300 does any of these). Otherwise the work starts at the character before the first
 * such one. Bytes that are not valid UTF-8 are kept as they are and end the run of
 * characters before them.
 */
#include "internal.h"

#include <stdlib.h>

#include "nfc_tables.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Hangul syllable constants (Unicode chapter 3.12). */
enum {
    S_BASE = 0xAC00,
    L_BASE = 0x1100,
    V_BASE = 0x1161,
    T_BASE = 0x11A7,
    L_COUNT = 19,
    V_COUNT = 21,
    T_COUNT = 28,
    N_COUNT = V_COUNT * T_COUNT,
    S_COUNT = L_COUNT * N_COUNT
};

static uint8_t ccc_of(uint32_t c) {
    if (c < 0x300) return 0;
    size_t lo = 0, hi = N_OF(nfc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < nfc_ccc[mid].lo)
            hi = mid;
        else if (c > nfc_ccc[mid].hi)
            lo = mid + 1;
        else
            return nfc_ccc[mid].ccc;
    }
    return 0;
}

/* The full decomposition of c: *n code points at the returned pointer, or NULL. */
static const uint32_t *decomp_of(uint32_t c, int *n) {
    size_t lo = 0, hi = N_OF(nfc_decomp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < nfc_decomp[mid].cp)
            hi = mid;
        else if (c > nfc_decomp[mid].cp)
            lo = mid + 1;
        else {
            *n = nfc_decomp[mid].len;
            return nfc_decomp_pool + nfc_decomp[mid].at;
        }
    }
    return NULL;
}

/* Whether c may compose with the code point before it. */
static bool is_second(uint32_t c) {
    size_t lo = 0, hi = N_OF(nfc_second);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < nfc_second[mid])
            hi = mid;
        else if (c > nfc_second[mid])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = N_OF(nfc_comp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a < nfc_comp[mid].a || (a == nfc_comp[mid].a && b < nfc_comp[mid].b))
            hi = mid;
        else if (a > nfc_comp[mid].a || b > nfc_comp[mid].b)
            lo = mid + 1;
        else
            return nfc_comp[mid].c;
    }
    return 0;
}

/* Decodes one strictly valid UTF-8 character; returns its length, or 0 when s does not
 * start with one. */
static int utf8_strict(const uint8_t *s, size_t len, uint32_t *c) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *c = b;
        return 1;
    }
    int n;
    uint32_t v, min;
    if (b >= 0xc2 && b <= 0xdf)
        n = 2, v = b & 0x1f, min = 0x80;
    else if (b >= 0xe0 && b <= 0xef)
        n = 3, v = b & 0x0f, min = 0x800;
    else if (b >= 0xf0 && b <= 0xf4)
        n = 4, v = b & 0x07, min = 0x10000;
    else
        return 0;
    if (len < (size_t)n) return 0;
    for (int k = 1; k < n; k++) {
        if ((s[k] & 0xc0) != 0x80) return 0;
        v = v << 6 | (s[k] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *c = v;
    return n;
}

typedef struct {
    uint32_t *v;
    size_t n, cap;
} cptbuf;

static bool cpt_push(cptbuf *b, uint32_t c) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        uint32_t *v = finch_mem_realloc(b->v, cap * sizeof *v);
        if (!v) return false;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = c;
    return true;
}

static bool decompose_push(cptbuf *b, uint32_t c) {
    if (c >= S_BASE && c < S_BASE + S_COUNT) {
        uint32_t s = c - S_BASE, t = s % T_COUNT;
        if (!cpt_push(b, L_BASE + s / N_COUNT) || !cpt_push(b, V_BASE + s % N_COUNT / T_COUNT))
            return false;
        return t == 0 || cpt_push(b, T_BASE + t);
    }
    int n;
    const uint32_t *d = decomp_of(c, &n);
    if (!d) return cpt_push(b, c);
    for (int i = 0; i < n; i++)
        if (!cpt_push(b, d[i])) return false;
    return true;
}

/* Canonical ordering then composition of b's code points, in place. */
static void order_and_compose(cptbuf *b) {
    uint32_t *v = b->v;
    size_t n = b->n;
    /* stable insertion sort of each run of non-starters by class */
    for (size_t i = 1; i < n; i++) {
        uint8_t k = ccc_of(v[i]);
        if (k == 0) continue;
        uint32_t c = v[i];
        size_t j = i;
        while (j > 0 && ccc_of(v[j - 1]) > k) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = c;
    }
    if (n < 2) return;
    size_t starter = 0, out = 1;
    int last = ccc_of(v[0]) ? 256 : 0; /* a leading non-starter blocks everything */
    for (size_t i = 1; i < n; i++) {
        uint32_t c = v[i];
        int k = ccc_of(c);
        uint32_t comp = ccc_of(v[starter]) == 0 ? compose(v[starter], c) : 0;
        if (comp && (last < k || last == 0)) {
            v[starter] = comp;
            continue;
        }
        if (k == 0) {
            starter = out;
            last = 0;
        } else {
            last = k;
        }
        v[out++] = c;
    }
    b->n = out;
}

/* The offset of the first character that NFC may change (one that decomposes, a combining
 * mark, or one that may compose with the character before it), or len when there is none:
 * the quick check of UAX #15, a little stricter. Invalid UTF-8 does not change. */
static size_t first_unstable(const char *text, size_t len) {
    size_t i = 0;
    while (i < len) {
        if ((uint8_t)text[i] < 0xcc) { /* below U+0300, or a continuation byte */
            i++;
            continue;
        }
        uint32_t c;
        int used = utf8_strict((const uint8_t *)text + i, len - i, &c), n;
        if (used == 0) {
            i++;
            continue;
        }
        /* a Hangul syllable is stable: only a trailing consonant after it (is_second)
         * changes it */
        if (ccc_of(c) || is_second(c) || decomp_of(c, &n)) return i;
        i += (size_t)used;
    }
    return len;
}

finch_status finch_nfc(const char *text, size_t len, char **out, size_t *out_len, finch_err *err) {
    *out = NULL;
    size_t first = first_unstable(text, len);
    if (first == len) return FINCH_OK;
    /* composition never lengthens the decomposed text, and a character decomposes to at
     * most 4 code points of at most 4 bytes: 16 bytes for a character of 2 or more bytes
     * (ASCII does not decompose) */
    cptbuf b = {0};
    size_t cap;
    if (!finch_size_mul(len, 8, &cap) || !finch_size_add(cap, 4, &cap))
        return finch_err_set(err, FINCH_E_RANGE, "text of %zu bytes is too long", len);
    char *o = finch_alloc(cap, "normalized text", err);
    if (!o) return FINCH_E_NOMEM;
    /* start from the last character below U+0300 before the first one that may change:
     * it may compose with what follows */
    size_t i = first, n = 0;
    if (i > 0) {
        i--;
        while (i > 0 && ((uint8_t)text[i] & 0xc0) == 0x80) i--;
    }
    memcpy(o, text, i);
    n = i;
    while (i <= len) {
        uint32_t c = 0;
        int used = i < len ? utf8_strict((const uint8_t *)text + i, len - i, &c) : 0;
        if (used == 0) {
            /* an invalid byte or the end: flush the characters so far */
            order_and_compose(&b);
            for (size_t k = 0; k < b.n; k++) n += (size_t)finch_utf8_put(b.v[k], o + n);
            b.n = 0;
            if (i == len) break;
            o[n++] = text[i++];
            continue;
        }
        if (!decompose_push(&b, c)) {
            free(b.v);
            free(o);
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory normalizing %zu bytes", len);
        }
        i += (size_t)used;
    }
    free(b.v);
    *out = o;
    *out_len = n;
    return FINCH_OK;
}
