/*
 * precompiled.c: the "Precompiled" normalizer of a tokenizer.json (T5, ALBERT, XLNet and
 * other SentencePiece conversions): SentencePiece's compiled normalization rules, run the
 * way the tokenizers library runs them.
 *
 * precompiled_charsmap is base64 of:
 *   u32 trie_size (little-endian), then trie_size bytes: a darts-clone double array of
 *   u32 units (little-endian) over the UTF-8 bytes of the source strings; then the rest:
 *   the replacement strings, each ending at a NUL (or at the end), valid UTF-8.
 * A unit packs (darts-clone's DoubleArrayUnit):
 *   bit 31 set: the unit is a leaf value in bits 0..30 (an offset into the strings);
 *   else bits 0..7 the label (the byte that leads here), bit 8 "has a leaf" (the value
 *   sits at this node's child by byte 0), bits 10..31 the offset to the children, shifted
 *   left by 8 more when bit 9 is set.
 * From the root (unit 0), byte c leads from a node at p to p ^ offset(p) ^ c when that
 * unit's label is c.
 *
 * The library's rule (normalizers/precompiled.rs over the spm_precompiled crate): the text
 * is cut into extended grapheme clusters; a cluster under 6 bytes whose bytes start with a
 * source string is replaced whole by the string of the SHORTEST such source (what follows
 * in the cluster is dropped: full-width "e" + U+0301 gives "e" when the full-width "e" is
 * a source); otherwise each character of the cluster is replaced by the string of the
 * shortest source its bytes start with, or kept. A NUL byte ends a lookup. Lookups thus go
 * at most 5 bytes deep, and the loader checks every unit they can reach: a malformed
 * charsmap is refused there, never read out of bounds here.
 *
 * Grapheme clusters come from PCRE2's \X (Unicode 14 in PCRE2 10.42; the library's
 * unicode-segmentation follows Unicode 15.1, which also keeps Indic conjuncts together;
 * the two differ only where such a cluster starts with a source string). Invalid UTF-8,
 * which the library never sees, is copied a byte at a time.
 */
#include "internal.h"

/* The deepest lookup: a cluster of at most 5 bytes (the library's `len() < 6`). */
#define MAX_KEY 5

/* ---- darts-clone units -------------------------------------------------------------- */

static uint32_t unit_label(uint32_t u) {
    return u & (0x80000000u | 0xffu);
}
static bool unit_has_leaf(uint32_t u) {
    return (u >> 8) & 1;
}
static uint32_t unit_value(uint32_t u) {
    return u & 0x7fffffffu;
}
static size_t unit_offset(uint32_t u) {
    return (size_t)(u >> 10) << ((u & (1u << 9)) >> 6);
}

/* The string offset of the shortest source that key[0..n) starts with (n <= MAX_KEY), or
 * -1. */
static int64_t shortest_match(const finch_charsmap *cm, const uint8_t *key, size_t n) {
    size_t pos = unit_offset(cm->units[0]);
    for (size_t i = 0; i < n && key[i]; i++) {
        pos ^= key[i];
        if (pos >= cm->n_units) return -1; /* the loader rules this out; kept as a guard */
        uint32_t u = cm->units[pos];
        if (unit_label(u) != key[i]) return -1;
        pos ^= unit_offset(u);
        if (unit_has_leaf(u)) return pos < cm->n_units ? (int64_t)unit_value(cm->units[pos]) : -1;
    }
    return -1;
}

/* ---- loading ------------------------------------------------------------------------ */

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 with padding, as the library's decoder wants it; *out is malloc'd. */
static finch_status b64_decode(const char *s, size_t len, const char *path, const char *field,
                               uint8_t **out, size_t *out_len, finch_err *err) {
    if (len % 4)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field '%s': %zu base64 characters, not a multiple of 4", path,
                             field, len);
    size_t pad = 0;
    while (pad < 2 && pad < len && s[len - 1 - pad] == '=') pad++;
    uint8_t *o = finch_alloc(len / 4 * 3 + 1, "precompiled_charsmap", err);
    if (!o) return FINCH_E_NOMEM;
    size_t n = 0;
    uint32_t acc = 0;
    for (size_t i = 0; i < len - pad; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(o);
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: field '%s': character %zu (0x%02x) is not base64", path,
                                 field, i, (unsigned char)s[i]);
        }
        acc = acc << 6 | (uint32_t)v;
        if (i % 4 == 3) {
            o[n++] = (uint8_t)(acc >> 16);
            o[n++] = (uint8_t)(acc >> 8);
            o[n++] = (uint8_t)acc;
            acc = 0;
        }
    }
    if (pad == 1) {
        o[n++] = (uint8_t)(acc >> 10);
        o[n++] = (uint8_t)(acc >> 2);
    } else if (pad == 2) {
        o[n++] = (uint8_t)(acc >> 4);
    }
    *out = o;
    *out_len = n;
    return FINCH_OK;
}

/* Checks every unit a lookup of at most MAX_KEY bytes can reach from the node whose
 * children start at base: each child position inside the array, each leaf value an
 * offset at a character start of the strings. *budget counts nodes down: a real trie has
 * no more nodes than units, a malformed one with cycles runs out. */
static finch_status check_node(const finch_charsmap *cm, size_t base, int depth, size_t *budget,
                               const char *path, const char *field, finch_err *err) {
    for (uint32_t c = 1; c < 256; c++) {
        size_t pos = base ^ c;
        if (pos >= cm->n_units)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: field '%s': trie child %zu is outside the %zu units", path,
                                 field, pos, cm->n_units);
        uint32_t u = cm->units[pos];
        if (unit_label(u) != c) continue;
        if ((*budget)-- == 0)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: field '%s': the trie reaches more nodes than its %zu units",
                                 path, field, cm->n_units);
        size_t next = base ^ c ^ unit_offset(u);
        if (unit_has_leaf(u)) {
            if (next >= cm->n_units)
                return finch_err_set(err, FINCH_E_FORMAT,
                                     "%s: field '%s': trie leaf %zu is outside the %zu units", path,
                                     field, next, cm->n_units);
            uint32_t v = unit_value(cm->units[next]);
            if (v > cm->strings_len || (v < cm->strings_len && (cm->strings[v] & 0xc0) == 0x80))
                return finch_err_set(err, FINCH_E_FORMAT,
                                     "%s: field '%s': trie unit %zu maps to string offset %u, "
                                     "not a character start of the %zu bytes of strings",
                                     path, field, next, v, cm->strings_len);
            /* a lookup stops at the first leaf: nothing below one is ever read */
            continue;
        }
        finch_status st;
        if (depth + 1 < MAX_KEY && (st = check_node(cm, next, depth + 1, budget, path, field, err)))
            return st;
    }
    return FINCH_OK;
}

finch_status finch_charsmap_load(finch_charsmap *cm, const char *b64, size_t len, const char *path,
                                 const char *field, finch_err *err) {
    uint8_t *raw = NULL;
    size_t n = 0;
    finch_status st = b64_decode(b64, len, path, field, &raw, &n, err);
    if (st) return st;
    if (n < 4) {
        free(raw);
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field '%s': %zu bytes, too short for the trie size", path, field,
                             n);
    }
    uint32_t trie_size =
        (uint32_t)raw[0] | (uint32_t)raw[1] << 8 | (uint32_t)raw[2] << 16 | (uint32_t)raw[3] << 24;
    if (trie_size == 0 || trie_size % 4 || trie_size > n - 4) {
        free(raw);
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field '%s': trie size %u: must be a positive multiple of 4 "
                             "and at most the %zu bytes that follow it",
                             path, field, trie_size, n - 4);
    }
    finch_charsmap c = {0};
    c.n_units = trie_size / 4;
    c.strings_len = n - 4 - trie_size;
    c.units = finch_alloc(c.n_units * sizeof *c.units, "precompiled_charsmap trie", err);
    c.strings = finch_alloc(c.strings_len + 1, "precompiled_charsmap strings", err);
    if (!c.units || !c.strings) {
        st = FINCH_E_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < c.n_units; i++) {
        const uint8_t *p = raw + 4 + 4 * i;
        c.units[i] =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    }
    memcpy(c.strings, raw + 4 + trie_size, c.strings_len);
    c.strings[c.strings_len] = 0;
    size_t valid = finch_utf8_valid_prefix((const uint8_t *)c.strings, c.strings_len);
    if (valid != c.strings_len) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: field '%s': the replacement strings are not UTF-8 (byte %zu "
                           "of %zu)",
                           path, field, valid, c.strings_len);
        goto fail;
    }
    size_t budget = c.n_units;
    if ((st = check_node(&c, unit_offset(c.units[0]), 0, &budget, path, field, err))) goto fail;
    free(raw);
    *cm = c;
    return FINCH_OK;
fail:
    free(raw);
    finch_charsmap_free(&c);
    return st;
}

void finch_charsmap_free(finch_charsmap *cm) {
    free(cm->units);
    free(cm->strings);
    *cm = (finch_charsmap){0};
}

/* ---- normalizing -------------------------------------------------------------------- */

/* Appends the replacement string at offset v. */
static bool put_string(const finch_charsmap *cm, int64_t v, tok_buf *o) {
    const char *s = cm->strings + v;
    return tok_buf_put(o, s, strlen(s)); /* strings[strings_len] is a NUL */
}

/* One grapheme cluster g[0..n) (valid UTF-8). */
static bool put_cluster(const finch_charsmap *cm, const char *g, size_t n, tok_buf *o) {
    int64_t v;
    if (n <= MAX_KEY && (v = shortest_match(cm, (const uint8_t *)g, n)) >= 0)
        return put_string(cm, v, o);
    for (size_t at = 0; at < n;) {
        size_t k = 1;
        while (at + k < n && ((uint8_t)g[at + k] & 0xc0) == 0x80) k++;
        v = shortest_match(cm, (const uint8_t *)g + at, k);
        if (!(v >= 0 ? put_string(cm, v, o) : tok_buf_put(o, g + at, k))) return false;
        at += k;
    }
    return true;
}

bool finch_charsmap_normalize(const finch_charsmap *cm, const pcre2_code *grapheme,
                              pcre2_match_data *md, const char *text, size_t len, tok_buf *o) {
    for (size_t at = 0; at < len;) {
        size_t valid = at + finch_utf8_valid_prefix((const uint8_t *)text + at, len - at);
        /* clusters of the valid stretch [at, valid) */
        while (at < valid) {
            int rc = pcre2_match(grapheme, (PCRE2_SPTR)text, valid, at,
                                 PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, md, NULL);
            size_t end = rc > 0 ? pcre2_get_ovector_pointer(md)[1] : at;
            if (end <= at) /* \X matches a character at least; one character if not */
                for (end = at + 1; end < valid && ((uint8_t)text[end] & 0xc0) == 0x80;) end++;
            if (!put_cluster(cm, text + at, end - at, o)) return false;
            at = end;
        }
        if (at < len) {
            if (!tok_buf_put(o, text + at, 1)) return false; /* an invalid byte, as it is */
            at++;
        }
    }
    return true;
}
