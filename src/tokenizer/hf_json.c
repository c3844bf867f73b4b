/*
 * hf_json.c: the tokenizer a Hugging Face tokenizer.json describes, with the special
 * tokens and chat template of tokenizer_config.json.
 *
 * Two kinds of file. SentencePiece style (hf_spm.c encodes): model type "Unigram", or "BPE"
 * with the Metaspace pre-tokenizer, a Prepend normalizer or a Replace normalizer. Byte-level BPE:
 * every other "BPE" file, read as below.
 *
 * SentencePiece style reads:
 *   normalizer      null, or the legacy Sequence[Prepend("▁"), Replace(" ", "▁")]; then
 *                   pre_tokenizer must be null. Or Gemma's Replace(" ", "▁") alone, with a
 *                   null pre_tokenizer or Split(" ", MergedWithPrevious), which finds no
 *                   space left to split at: no marker is prepended and each run between
 *                   special tokens is one word. Otherwise pre_tokenizer is Metaspace:
 *                   replacement "▁" (no other), prepend_scheme always/first/never (or the
 *                   older add_prefix_space), split; and the normalizer is null or a
 *                   Sequence of Precompiled (precompiled.c: the charsmap is checked whole),
 *                   Strip (strip_left, strip_right: Unicode White_Space), Replace of a
 *                   String, Replace of the Regex " {2,}" (no other regex): what
 *                   transformers writes for T5, ALBERT, XLNet and other SentencePiece
 *                   conversions. hf_spm.c runs the steps in order on each text run.
 *   model           BPE: vocab, merges, unk_token, fuse_unk, byte_fallback (a character that
 *                   is not a token becomes its <0xXX> tokens); dropout, continuing_subword_
 *                   prefix and end_of_word_suffix refused. Unigram: vocab as [piece, score]
 *                   pairs (finite numbers, no piece twice), unk_id (required, a piece),
 *                   byte_fallback.
 *   decoder         Metaspace, or a Sequence of Replace("▁", " "), ByteFallback, Fuse and
 *                   Strip(" ", 1, 0); byte tokens decode to their byte only with
 *                   ByteFallback. Anything else is refused.
 *   added_tokens, post_processor, tokenizer_config.json as for byte-level BPE.
 *
 * Byte-level BPE reads (everything else in the file is ignored; truncation and padding with
 * a warning):
 *   model           type "BPE" over a byte-level alphabet: vocab (text -> id), merges as
 *                   "a b" strings or ["a", "b"] pairs (transformers >= 4.45), ignore_merges,
 *                   unk_token (a character that is not a token gives it, or nothing
 *                   without one; fuse_unk), byte_fallback when no token is spelled <0xXX>
 *                   (it then changes nothing); dropout, a continuing_subword_prefix or an
 *                   end_of_word_suffix are refused, as are other model types.
 *   pre_tokenizer   ByteLevel (use_regex: the GPT-2 regex; add_prefix_space when it is the
 *                   first step), Split with a Regex or String pattern (behavior Isolated,
 *                   invert false), Digits (individual_digits: \p{N} alone, else \p{N}+), and
 *                   Sequence of those. Split and Digits must come before ByteLevel (they
 *                   see the text, not its byte-level alphabet). The regexes from the file
 *                   run through PCRE2 after translating what Oniguruma (the engine of the
 *                   tokenizers library) means differently: `\s` is Unicode White_Space, and
 *                   `\h` a hex digit.
 *   normalizer      null, NFC (nfc.c, with the library's Unicode tables), or Sequence of
 *                   those; others are refused. As in the library, added tokens are split
 *                   out before normalizing; finch matches them in the text as given, the
 *                   library matches "normalized" ones in the normalized text (the same
 *                   unless the text holds a decomposed form of an added token).
 *   added_tokens    merged into the vocabulary: special ones become control tokens (split
 *                   out only when special tokens are parsed), others user-defined ones
 *                   (always split out), lstrip/rstrip swallow the whitespace beside them.
 *                   single_word is not honoured (a warning says so).
 *   post_processor  TemplateProcessing whose single template starts (ends) with a special
 *                   token adds BOS (EOS); ByteLevel does nothing; Sequence of those.
 *   decoder         ByteLevel (or null), or a Sequence of it with Fuse, ByteFallback and
 *                   Replace where these change nothing; others refused.
 * From tokenizer_config.json: bos_token, eos_token, unk_token, pad_token (a string or an
 * AddedToken object), add_bos_token and add_eos_token (they override the post-processor),
 * chat_template (a string, or a list of named templates: "default", else the first; when
 * it has none, the file chat_template.jinja beside it).
 *
 * ids the vocabulary skips are filled with unused tokens named "[PAD<id>]" (they decode to
 * nothing). Every error names the file, and the field or the line and column.
 * Facts: FORMATS.md section 5; tokenizers 0.20's serialization (normalizers, pre_tokenizers,
 * decoders, models/unigram) for the SentencePiece-style fields.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Limits that keep a hostile file from asking for absurd amounts of memory. */
#define HF_MAX_VOCAB (1 << 24)
#define HF_MAX_FILE ((off_t)256 << 20) /* the largest real tokenizer.json is ~35 MB */

/* The regex of the ByteLevel pre-tokenizer (use_regex), as the tokenizers library has it. */
static const char RE_BYTELEVEL[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Unicode White_Space as a class body: Oniguruma's `\s` (PCRE2's also takes U+180E). */
static const char WS_CLASS[] = "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"
                               "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

typedef struct {
    const char *path; /* tokenizer.json, for messages */
    finch_err *err;
    char *re[PRETOK_MAX_REGEX]; /* translated pre-tokenizer regexes, in order */
    int n_re;
    bool byte_level;   /* a ByteLevel step was seen */
    bool prefix_space; /* its add_prefix_space */
    char desc[96];     /* the steps, for finch info ("Digits+ByteLevel") */
} hf_ctx;

static const char *jtype_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static finch_status bad_type(const char *path, const char *field, const json_t *v, const char *want,
                             finch_err *err) {
    return finch_err_set(err, FINCH_E_FORMAT, "%s: field '%s' is %s, expected %s", path, field,
                         v ? jtype_name(v) : "missing", want);
}

/* o[key] as a string (NULL when absent or null, an error when another type). */
static finch_status get_str(const char *path, const json_t *o, const char *key, const char *field,
                            const char **out, finch_err *err) {
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v)) return FINCH_OK;
    if (!json_is_string(v)) return bad_type(path, field, v, "a string", err);
    *out = json_string_value(v);
    return FINCH_OK;
}

/* o[key] as a boolean, def when absent or null. */
static finch_status get_bool(const char *path, const json_t *o, const char *key, const char *field,
                             bool def, bool *out, finch_err *err) {
    json_t *v = json_object_get(o, key);
    *out = def;
    if (!v || json_is_null(v)) return FINCH_OK;
    if (!json_is_boolean(v)) return bad_type(path, field, v, "true or false", err);
    *out = json_is_true(v);
    return FINCH_OK;
}

static finch_status load_json(const char *path, json_t **out, finch_err *err) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return finch_err_set(err, FINCH_E_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return finch_err_set(err, FINCH_E_IO, "%s: not a regular file", path);
    if (sb.st_size > HF_MAX_FILE)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: %lld bytes, more than a tokenizer file "
                             "can sensibly have (at most %lld)",
                             path, (long long)sb.st_size, (long long)HF_MAX_FILE);
    json_error_t je;
    /* numbers as doubles: tokenizer_config.json files often hold integers beyond 64 bits
     * (model_max_length 1e30), and ids are far below 2^53 */
    finch_status st =
        finch_json_load_file(path, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, out, &je, err);
    if (st) return st;
    if (!*out && je.line < 1) /* jansson could not read the file */
        return finch_err_set(err, FINCH_E_IO, "%s: %s", path, je.text);
    if (!*out)
        return finch_err_set(err, FINCH_E_FORMAT, "%s:%d:%d: malformed JSON: %s", path, je.line,
                             je.column, je.text);
    if (!json_is_object(*out)) {
        st = bad_type(path, "(top level)", *out, "an object", err);
        json_decref(*out);
        *out = NULL;
        return st;
    }
    return FINCH_OK;
}

/* ---- pre-tokenizer ------------------------------------------------------------------ */

/* Rewrites an Oniguruma pattern for PCRE2 (malloc'd): `\s` and `\S` outside classes, `\s`
 * inside them, and `\h`/`\H` (hex digits in Oniguruma, horizontal space in PCRE2). Left as
 * they are: `\S` inside a class (PCRE2's differs at U+180E only), and `\w`, `\d`, which
 * both engines take from Unicode properties. */
static char *translate_regex(const char *src) {
    size_t n = strlen(src), cap = n * (sizeof WS_CLASS + 4) + 1;
    char *out = finch_mem_alloc(cap);
    if (!out) return NULL;
    size_t o = 0;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < n) {
            char e = src[++i];
            const char *rep = NULL;
            if (e == 's')
                rep = in_class ? "%s" : "[%s]";
            else if (e == 'S' && !in_class)
                rep = "[^%s]";
            if (rep) {
                o += (size_t)snprintf(out + o, cap - o, rep, WS_CLASS);
                continue;
            }
            if (e == 'h' || (e == 'H' && !in_class)) {
                const char *hex = e == 'H'   ? "[^0-9a-fA-F]"
                                  : in_class ? "0-9a-fA-F"
                                             : "[0-9a-fA-F]";
                o += (size_t)snprintf(out + o, cap - o, "%s", hex);
                continue;
            }
            out[o++] = c;
            out[o++] = e;
            continue;
        }
        out[o++] = c;
        if (!in_class && c == '[') {
            in_class = true;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && src[i + 1] == '^') out[o++] = src[++i];
            if (i + 1 < n && src[i + 1] == ']') out[o++] = src[++i];
        } else if (in_class && c == ']') {
            in_class = false;
        }
    }
    out[o] = 0;
    return out;
}

/* Regex metacharacters quoted, for a Split with a String pattern (malloc'd). */
static char *quote_regex(const char *src) {
    size_t n = strlen(src);
    char *out = finch_mem_alloc(2 * n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (strchr("\\^$.|?*+()[]{}", src[i])) out[o++] = '\\';
        out[o++] = src[i];
    }
    out[o] = 0;
    return out;
}

static finch_status push_regex(hf_ctx *c, char *re, const char *field) {
    if (!re) return finch_err_set(c->err, FINCH_E_NOMEM, "out of memory reading %s", c->path);
    if (c->n_re == PRETOK_MAX_REGEX) {
        free(re);
        return finch_err_set(c->err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s': more than %d "
                             "pre-tokenizer steps",
                             c->path, field, PRETOK_MAX_REGEX);
    }
    c->re[c->n_re++] = re;
    return FINCH_OK;
}

static void describe(hf_ctx *c, const char *step) {
    size_t n = strlen(c->desc);
    snprintf(c->desc + n, sizeof c->desc - n, "%s%s", n ? "+" : "", step);
}

static finch_status parse_pre(hf_ctx *c, const json_t *o, const char *field, int depth) {
    finch_status st;
    const char *type;
    char sub[128];
    if (!json_is_object(o)) return bad_type(c->path, field, o, "an object", c->err);
    snprintf(sub, sizeof sub, "%s.type", field);
    if ((st = get_str(c->path, o, "type", sub, &type, c->err))) return st;
    if (!type) return bad_type(c->path, sub, NULL, "a string", c->err);

    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(o, "pretokenizers");
        snprintf(sub, sizeof sub, "%s.pretokenizers", field);
        if (!json_is_array(arr)) return bad_type(c->path, sub, arr, "an array", c->err);
        if (depth > 8)
            return finch_err_set(c->err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s': Sequence "
                                 "nested more than 8 deep",
                                 c->path, field);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", field, i);
            if ((st = parse_pre(c, json_array_get(arr, i), sub, depth + 1))) return st;
        }
        return FINCH_OK;
    }
    if (c->byte_level)
        return finch_err_set(c->err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s': a %s step after "
                             "ByteLevel (finch runs every step on the text before its "
                             "byte-level mapping)",
                             c->path, field, type);
    if (strcmp(type, "ByteLevel") == 0) {
        bool prefix, use_regex;
        snprintf(sub, sizeof sub, "%s.add_prefix_space", field);
        if ((st = get_bool(c->path, o, "add_prefix_space", sub, true, &prefix, c->err))) return st;
        snprintf(sub, sizeof sub, "%s.use_regex", field);
        if ((st = get_bool(c->path, o, "use_regex", sub, true, &use_regex, c->err))) return st;
        if (prefix && c->n_re > 0)
            return finch_err_set(c->err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s.add_prefix_space' "
                                 "is true after other steps (finch adds the space to each "
                                 "text run only when ByteLevel comes first)",
                                 c->path, field);
        c->byte_level = true;
        c->prefix_space = prefix;
        describe(c, "ByteLevel");
        return use_regex ? push_regex(c, translate_regex(RE_BYTELEVEL), field) : FINCH_OK;
    }
    if (strcmp(type, "Digits") == 0) {
        bool single;
        snprintf(sub, sizeof sub, "%s.individual_digits", field);
        if ((st = get_bool(c->path, o, "individual_digits", sub, false, &single, c->err)))
            return st;
        /* the library's char::is_numeric is Nd, Nl and No: \p{N} */
        describe(c, "Digits");
        return push_regex(c, finch_mem_strdup(single ? "\\p{N}" : "\\p{N}+"), field);
    }
    if (strcmp(type, "Split") == 0) {
        const char *behavior;
        bool invert;
        snprintf(sub, sizeof sub, "%s.behavior", field);
        if ((st = get_str(c->path, o, "behavior", sub, &behavior, c->err))) return st;
        if (!behavior || strcmp(behavior, "Isolated") != 0)
            return finch_err_set(c->err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s' is '%s': finch "
                                 "implements only Isolated",
                                 c->path, sub, behavior ? behavior : "(missing)");
        snprintf(sub, sizeof sub, "%s.invert", field);
        if ((st = get_bool(c->path, o, "invert", sub, false, &invert, c->err))) return st;
        if (invert)
            return finch_err_set(c->err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s' is true: finch "
                                 "implements only invert false",
                                 c->path, sub);
        json_t *pat = json_object_get(o, "pattern");
        snprintf(sub, sizeof sub, "%s.pattern", field);
        if (!json_is_object(pat)) return bad_type(c->path, sub, pat, "an object", c->err);
        json_t *rx = json_object_get(pat, "Regex"), *str = json_object_get(pat, "String");
        if (json_is_string(rx) == json_is_string(str))
            return finch_err_set(c->err, FINCH_E_FORMAT,
                                 "%s: field '%s' needs one string "
                                 "member, Regex or String",
                                 c->path, sub);
        size_t plen = json_string_length(rx ? rx : str);
        if (plen > 65536)
            return finch_err_set(c->err, FINCH_E_FORMAT,
                                 "%s: field '%s' is a pattern of %zu "
                                 "bytes, more than the 65536 finch accepts",
                                 c->path, sub, plen);
        describe(c, "Split");
        return push_regex(
            c, rx ? translate_regex(json_string_value(rx)) : quote_regex(json_string_value(str)),
            field);
    }
    return finch_err_set(c->err, FINCH_E_UNSUPPORTED,
                         "%s: field '%s' is '%s': finch reads "
                         "ByteLevel, Split, Digits and Sequence pre-tokenizers",
                         c->path, sub, type);
}

/* ---- model, added tokens ------------------------------------------------------------ */

/* Checks the model's fields finch does not implement. */
static finch_status check_model(const char *path, const json_t *model, finch_err *err) {
    finch_status st;
    const char *type, *s;
    if ((st = get_str(path, model, "type", "model.type", &type, err))) return st;
    if (!type || strcmp(type, "BPE") != 0)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field 'model.type' is '%s': finch "
                             "reads BPE (byte-level, or SentencePiece-style with Metaspace) "
                             "and Unigram models",
                             path, type ? type : "(missing)");
    json_t *d = json_object_get(model, "dropout");
    if (d && !json_is_null(d) && !(json_is_number(d) && json_number_value(d) == 0))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field 'model.dropout' is set: "
                             "finch implements BPE without dropout",
                             path);
    if ((st = get_str(path, model, "continuing_subword_prefix", "model.continuing_subword_prefix",
                      &s, err)))
        return st;
    if (s && *s)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field "
                             "'model.continuing_subword_prefix' is '%s': not implemented",
                             path, s);
    if ((st = get_str(path, model, "end_of_word_suffix", "model.end_of_word_suffix", &s, err)))
        return st;
    if (s && *s)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field 'model.end_of_word_suffix' "
                             "is '%s': not implemented",
                             path, s);
    return FINCH_OK;
}

/* An id from the file: an integer in [0, HF_MAX_VOCAB). */
static finch_status get_id(const char *path, const json_t *v, const char *field, int32_t *id,
                           finch_err *err) {
    if (!json_is_number(v)) return bad_type(path, field, v, "an integer id", err);
    double x = json_number_value(v);
    if (!(x >= -1e18 && x <= 1e18) || x != (double)(int64_t)x)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: field '%s' is %g, not an integer id", path,
                             field, x);
    if (x < 0 || x >= HF_MAX_VOCAB)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: field '%s' is %.0f, outside 0..%d", path,
                             field, x, HF_MAX_VOCAB - 1);
    *id = (int32_t)x;
    return FINCH_OK;
}

/* What an added token says about itself. */
typedef struct {
    int32_t id;
    const char *content;
    bool special;
    uint8_t strip;
} added_tok;

static finch_status parse_added(const char *path, const json_t *arr, added_tok **out, size_t *n_out,
                                finch_err *err) {
    *out = NULL;
    *n_out = 0;
    if (!arr || json_is_null(arr)) return FINCH_OK;
    if (!json_is_array(arr)) return bad_type(path, "added_tokens", arr, "an array", err);
    size_t n = json_array_size(arr);
    added_tok *a = finch_calloc(n ? n : 1, sizeof *a, "added tokens", err);
    if (!a) return FINCH_E_NOMEM;
    finch_status st = FINCH_OK;
    size_t n_single = 0, first_single = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(arr, i);
        char f[64];
        bool l, r, w;
        snprintf(f, sizeof f, "added_tokens[%zu]", i);
        if (!json_is_object(t)) {
            st = bad_type(path, f, t, "an object", err);
            break;
        }
        snprintf(f, sizeof f, "added_tokens[%zu].id", i);
        if ((st = get_id(path, json_object_get(t, "id"), f, &a[i].id, err))) break;
        snprintf(f, sizeof f, "added_tokens[%zu].content", i);
        if ((st = get_str(path, t, "content", f, &a[i].content, err))) break;
        if (!a[i].content || !*a[i].content) {
            st = finch_err_set(err, FINCH_E_FORMAT, "%s: field '%s' is missing or empty", path, f);
            break;
        }
        snprintf(f, sizeof f, "added_tokens[%zu].special", i);
        if ((st = get_bool(path, t, "special", f, false, &a[i].special, err))) break;
        snprintf(f, sizeof f, "added_tokens[%zu].lstrip", i);
        if ((st = get_bool(path, t, "lstrip", f, false, &l, err))) break;
        snprintf(f, sizeof f, "added_tokens[%zu].rstrip", i);
        if ((st = get_bool(path, t, "rstrip", f, false, &r, err))) break;
        snprintf(f, sizeof f, "added_tokens[%zu].single_word", i);
        if ((st = get_bool(path, t, "single_word", f, false, &w, err))) break;
        a[i].strip = (uint8_t)((l ? STRIP_LEFT : 0) | (r ? STRIP_RIGHT : 0));
        if (w && n_single++ == 0) first_single = i;
    }
    if (st) {
        free(a);
        return st;
    }
    if (n_single)
        finch_log(FINCH_LOG_WARN,
                  "%s: %zu added tokens (the first '%s') have single_word "
                  "true: finch splits them out inside words too",
                  path, n_single, a[first_single].content);
    *out = a;
    *n_out = n;
    return FINCH_OK;
}

/* Builds the token texts (vocab + added tokens, holes filled) and loads them. */
static finch_status load_vocab(finch_tokenizer *tok, const char *path, const json_t *vocab,
                               const added_tok *added, size_t n_added, finch_err *err) {
    if (!json_is_object(vocab)) return bad_type(path, "model.vocab", vocab, "an object", err);
    int32_t V = 0;
    const char *key;
    json_t *v;
    finch_status st;
    json_object_foreach((json_t *)vocab, key, v) {
        int32_t id;
        char f[96];
        snprintf(f, sizeof f, "model.vocab['%.48s']", key);
        if ((st = get_id(path, v, f, &id, err))) return st;
        if (id >= V) V = id + 1;
    }
    for (size_t i = 0; i < n_added; i++)
        if (added[i].id >= V) V = added[i].id + 1;
    if (V == 0) return finch_err_set(err, FINCH_E_FORMAT, "%s: field 'model.vocab' is empty", path);
    size_t n_given = json_object_size(vocab) + n_added;
    if ((size_t)V > 2 * n_given + 1024)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: ids reach %d but only %zu tokens are "
                             "given (model.vocab and added_tokens)",
                             path, V - 1, n_given);

    finch_str *texts = finch_calloc((size_t)V, sizeof *texts, "token texts", err);
    char *holes = finch_alloc((size_t)V * 20, "token placeholders", err);
    if (!texts || !holes) {
        free(texts);
        free(holes);
        return FINCH_E_NOMEM;
    }
    st = FINCH_OK;
    json_object_foreach((json_t *)vocab, key, v) {
        int32_t id = (int32_t)json_number_value(v);
        if (texts[id].ptr) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: field 'model.vocab': id %d is given "
                               "to both '%.48s' and '%.48s'",
                               path, id, texts[id].ptr, key);
            goto done;
        }
        texts[id] = (finch_str){key, strlen(key)};
    }
    /* an added token takes its id's text (usually the same one); an id twice in
     * added_tokens is an error */
    uint8_t *seen = finch_calloc((size_t)V, 1, "added token ids", err);
    if (!seen) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < n_added; i++) {
        if (seen[added[i].id]++) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: field 'added_tokens[%zu].id': id %d "
                               "appears twice in added_tokens",
                               path, i, added[i].id);
            free(seen);
            goto done;
        }
        texts[added[i].id] = (finch_str){added[i].content, strlen(added[i].content)};
    }
    free(seen);
    tok->n_vocab = V;
    size_t at = 0;
    int32_t n_holes = 0;
    for (int32_t id = 0; id < V; id++)
        if (!texts[id].ptr) {
            /* the name llama.cpp's converter gives an id the vocabulary skips */
            int k = snprintf(holes + at, 20, "[PAD%d]", (int)id);
            texts[id] = (finch_str){holes + at, (uint64_t)k};
            at += (size_t)k;
            n_holes++;
        }
    if ((st = finch_tok_load_texts(tok, texts, path, "field 'model.vocab'", err))) goto done;
    if (n_holes) {
        /* the holes are the ids neither model.vocab nor added_tokens gives */
        json_object_foreach((json_t *)vocab, key, v) texts[(int32_t)json_number_value(v)].ptr =
            NULL;
        for (size_t i = 0; i < n_added; i++) texts[added[i].id].ptr = NULL;
        for (int32_t id = 0; id < V; id++)
            if (texts[id].ptr) tok->attr[id] = TOK_UNUSED;
    }
    bool any_strip = false;
    for (size_t i = 0; i < n_added; i++) {
        tok->attr[added[i].id] = added[i].special ? TOK_CONTROL : TOK_USER_DEFINED;
        any_strip |= added[i].strip != 0;
    }
    if (any_strip) {
        tok->strip = finch_calloc((size_t)V, 1, "token strip flags", err);
        if (!tok->strip) {
            st = FINCH_E_NOMEM;
            goto done;
        }
        for (size_t i = 0; i < n_added; i++) tok->strip[added[i].id] = added[i].strip;
    }
done:
    free(texts);
    free(holes);
    return st;
}

/* The id model.vocab gives text[0..len), or -1: merges are resolved in the model's own
 * vocabulary, as the library does, even where an added token repeats a text. */
static int32_t vocab_id(const json_t *vocab, const char *text, size_t len) {
    json_t *v = json_object_getn(vocab, text, len);
    return v ? (int32_t)json_number_value(v) : -1;
}

static finch_status load_merges(finch_tokenizer *tok, const char *path, const json_t *vocab,
                                const json_t *merges, finch_err *err) {
    if (!json_is_array(merges)) return bad_type(path, "model.merges", merges, "an array", err);
    size_t n = json_array_size(merges);
    if (n > (size_t)INT32_MAX)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field 'model.merges' has %zu entries, at "
                             "most %d",
                             path, n, INT32_MAX);
    finch_status st = finch_tok_alloc_merges(tok, (int64_t)n, err);
    if (st) return st;
    char *joined = NULL;
    size_t joined_cap = 0;
    for (size_t r = 0; r < n; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a, *b;
        size_t an, bn;
        if (json_is_string(m)) {
            /* "left right": split at the first space after the first byte */
            a = json_string_value(m);
            size_t len = json_string_length(m);
            const char *sp = len > 1 ? memchr(a + 1, ' ', len - 1) : NULL;
            if (!sp) {
                st = finch_err_set(err, FINCH_E_FORMAT,
                                   "%s: field 'model.merges[%zu]' '%.64s' "
                                   "has no space between its two parts",
                                   path, r, a);
                break;
            }
            an = (size_t)(sp - a);
            b = sp + 1;
            bn = len - an - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            an = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bn = json_string_length(json_array_get(m, 1));
        } else {
            char f[48];
            snprintf(f, sizeof f, "model.merges[%zu]", r);
            st = bad_type(path, f, m, "a string \"a b\" or a pair [\"a\", \"b\"]", err);
            break;
        }
        int32_t left = vocab_id(vocab, a, an), right = vocab_id(vocab, b, bn);
        if (left < 0 || right < 0) {
            st =
                finch_err_set(err, FINCH_E_FORMAT,
                              "%s: field 'model.merges[%zu]': '%.*s' is "
                              "not a token of model.vocab",
                              path, r, (int)((left < 0 ? an : bn) < 64 ? (left < 0 ? an : bn) : 64),
                              left < 0 ? a : b);
            break;
        }
        if (an + bn > joined_cap) {
            char *p = finch_mem_realloc(joined, an + bn);
            if (!p) {
                st = finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", path);
                break;
            }
            joined = p;
            joined_cap = an + bn;
        }
        memcpy(joined, a, an);
        memcpy(joined + an, b, bn);
        int32_t result = vocab_id(vocab, joined, an + bn);
        if (result < 0) {
            /* the tokenizers library refuses such a file too */
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: field 'model.merges[%zu]': the merged "
                               "text '%.*s' is not a token of model.vocab",
                               path, r, (int)(an + bn < 64 ? an + bn : 64), joined);
            break;
        }
        finch_tok_add_merge(tok, left, right, (int32_t)r, result);
    }
    free(joined);
    return st;
}

/* byte_fallback turns a character that is not a token into its <0xXX> byte tokens, and
 * when these are not all tokens either, into the unknown token as without byte_fallback.
 * A vocabulary with no <0xXX> token (what transformers writes when it converts a GGUF
 * byte-level vocabulary) thus behaves as without it; finch implements nothing else. */
static finch_status check_byte_fallback(const finch_tokenizer *tok, const char *path,
                                        const json_t *model, finch_err *err) {
    bool on;
    finch_status st =
        get_bool(path, model, "byte_fallback", "model.byte_fallback", false, &on, err);
    if (st || !on) return st;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int32_t id = finch_tok_find(tok, name, 6);
        if (id >= 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field 'model.byte_fallback' is "
                                 "true and token %d is the byte token '%s' (SentencePiece-style "
                                 "BPE): finch implements byte-level BPE without byte "
                                 "fallback",
                                 path, id, name);
    }
    return FINCH_OK;
}

/* The first token whose text contains needle (n bytes), or -1. */
static int32_t token_containing(const finch_tokenizer *tok, const char *needle, size_t n) {
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        const char *t = tok->text_blob + tok->text_off[id];
        size_t len = tok->text_len[id];
        for (size_t i = 0; n && i + n <= len; i++)
            if (t[i] == needle[0] && memcmp(t + i, needle, n) == 0) return id;
    }
    return -1;
}

/* ---- post-processor, decoder, normalizer -------------------------------------------- */

/* The id of a TemplateProcessing SpecialToken item: from the special_tokens map, else by
 * its text. */
static finch_status template_token(const finch_tokenizer *tok, const char *path, const json_t *pp,
                                   const json_t *item, const char *field, int32_t *id,
                                   finch_err *err) {
    const char *name;
    finch_status st = get_str(path, item, "id", field, &name, err);
    if (st) return st;
    if (!name) return bad_type(path, field, NULL, "a string", err);
    json_t *ids =
        json_object_get(json_object_get(json_object_get(pp, "special_tokens"), name), "ids");
    if (json_is_array(ids) && json_array_size(ids) != 1)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: post_processor special token '%s' "
                             "stands for %zu ids: finch adds one",
                             path, name, json_array_size(ids));
    if (json_is_array(ids)) return get_id(path, json_array_get(ids, 0), field, id, err);
    *id = finch_tok_find(tok, name, strlen(name));
    if (*id < 0)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: field '%s': '%s' is not a token", path,
                             field, name);
    return FINCH_OK;
}

/* What the post-processor adds around a single sequence: *bos / *eos ids, -1 for none. */
static finch_status parse_post(const finch_tokenizer *tok, const char *path, const json_t *pp,
                               const char *field, int32_t *bos, int32_t *eos, int depth,
                               finch_err *err) {
    if (!pp || json_is_null(pp)) return FINCH_OK;
    if (!json_is_object(pp)) return bad_type(path, field, pp, "an object", err);
    const char *type;
    char sub[96];
    snprintf(sub, sizeof sub, "%s.type", field);
    finch_status st = get_str(path, pp, "type", sub, &type, err);
    if (st) return st;
    if (!type) return bad_type(path, sub, NULL, "a string", err);
    if (strcmp(type, "ByteLevel") == 0) return FINCH_OK;
    if (strcmp(type, "Sequence") == 0 && depth < 8) {
        json_t *arr = json_object_get(pp, "processors");
        snprintf(sub, sizeof sub, "%s.processors", field);
        if (!json_is_array(arr)) return bad_type(path, sub, arr, "an array", err);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(sub, sizeof sub, "%s.processors[%zu]", field, i);
            if ((st = parse_post(tok, path, json_array_get(arr, i), sub, bos, eos, depth + 1, err)))
                return st;
        }
        return FINCH_OK;
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s' is '%s': finch reads "
                             "TemplateProcessing, ByteLevel and Sequence post-processors",
                             path, sub, type);
    json_t *single = json_object_get(pp, "single");
    snprintf(sub, sizeof sub, "%s.single", field);
    if (!json_is_array(single)) return bad_type(path, sub, single, "an array", err);
    size_t n = json_array_size(single), seq = n;
    for (size_t i = 0; i < n; i++)
        if (json_object_get(json_array_get(single, i), "Sequence")) {
            if (seq != n)
                return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                     "%s: field '%s' holds more "
                                     "than one sequence",
                                     path, sub);
            seq = i;
        }
    if (seq == n)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: field '%s' holds no Sequence item", path,
                             sub);
    if (seq > 1 || n - seq > 2)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s' adds more than one "
                             "token before or after the text: finch adds BOS and EOS only",
                             path, sub);
    for (size_t i = 0; i < n; i++) {
        if (i == seq) continue;
        json_t *item = json_object_get(json_array_get(single, i), "SpecialToken");
        snprintf(sub, sizeof sub, "%s.single[%zu].SpecialToken.id", field, i);
        if (!json_is_object(item)) return bad_type(path, sub, item, "an object", err);
        if ((st = template_token(tok, path, pp, item, sub, i < seq ? bos : eos, err))) return st;
    }
    return FINCH_OK;
}

/* One step of a normalizer or decoder, for walk_steps: node is an object, type its "type"
 * (NULL when missing), type_field the name of that field for messages, depth how many
 * Sequences hold it. */
typedef finch_status (*step_fn)(void *ctx, const char *path, const json_t *node, const char *type,
                                const char *field, const char *type_field, int depth,
                                finch_err *err);

/* Walks a normalizer or decoder: node must be an object; a Sequence (its steps in the
 * member list, at most 8 deep) is walked step by step, every other step goes to visit. */
static finch_status walk_steps(const char *path, const json_t *node, const char *field,
                               const char *list, int depth, step_fn visit, void *ctx,
                               finch_err *err) {
    const char *type;
    char sub[96];
    snprintf(sub, sizeof sub, "%s.type", field);
    if (!json_is_object(node)) return bad_type(path, field, node, "an object", err);
    finch_status st = get_str(path, node, "type", sub, &type, err);
    if (st) return st;
    if (type && strcmp(type, "Sequence") == 0 && depth < 8) {
        json_t *arr = json_object_get(node, list);
        snprintf(sub, sizeof sub, "%s.%s", field, list);
        if (!json_is_array(arr)) return bad_type(path, sub, arr, "an array", err);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            snprintf(sub, sizeof sub, "%s.%s[%zu]", field, list, i);
            if ((st = walk_steps(path, json_array_get(arr, i), sub, list, depth + 1, visit, ctx,
                                 err)))
                return st;
        }
        return FINCH_OK;
    }
    return visit(ctx, path, node, type, field, sub, depth, err);
}

/* The decoder must be ByteLevel, or a Sequence of ByteLevel and steps that change nothing
 * for this vocabulary: Fuse (joins the pieces), ByteFallback when no token is spelled
 * <0xXX>, and Replace of a String no token contains (transformers writes ByteFallback, Fuse
 * and Replace "\u2581" -> " " before ByteLevel when it converts a GGUF vocabulary). */
static finch_status byte_level_step(void *ctx, const char *path, const json_t *d, const char *type,
                                    const char *field, const char *sub, int depth, finch_err *err) {
    const finch_tokenizer *tok = ctx;
    if (type && (strcmp(type, "ByteLevel") == 0 || (depth > 0 && strcmp(type, "Fuse") == 0)))
        return FINCH_OK;
    if (type && depth > 0 && strcmp(type, "ByteFallback") == 0) {
        for (int32_t id = 0; id < tok->n_vocab; id++) {
            const char *t = tok->text_blob + tok->text_off[id];
            if (tok->text_len[id] == 6 && memcmp(t, "<0x", 3) == 0 && t[5] == '>')
                return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                     "%s: field '%s' is ByteFallback "
                                     "and token %d is '%s': finch does not decode byte "
                                     "tokens",
                                     path, sub, id, t);
        }
        return FINCH_OK;
    }
    if (type && depth > 0 && strcmp(type, "Replace") == 0) {
        json_t *pat = json_object_get(json_object_get(d, "pattern"), "String");
        if (!json_is_string(pat))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s.pattern': finch "
                                 "implements Replace of a String only",
                                 path, field);
        int32_t id = token_containing(tok, json_string_value(pat), json_string_length(pat));
        if (id >= 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s' replaces '%s', "
                                 "which token %d contains: not implemented",
                                 path, field, json_string_value(pat), id);
        return FINCH_OK;
    }
    return finch_err_set(err, FINCH_E_UNSUPPORTED,
                         "%s: field '%s' is '%s': finch decodes "
                         "byte-level BPE only (ByteLevel, and Sequence of it with Fuse, "
                         "ByteFallback and Replace where they change nothing)",
                         path, sub, type ? type : "(missing)");
}

static finch_status check_decoder(const finch_tokenizer *tok, const char *path, const json_t *d,
                                  finch_err *err) {
    if (!d || json_is_null(d)) return FINCH_OK;
    return walk_steps(path, d, "decoder", "decoders", 0, byte_level_step, (void *)tok, err);
}

static finch_status nfc_step(void *ctx, const char *path, const json_t *n, const char *type,
                             const char *field, const char *sub, int depth, finch_err *err) {
    (void)n, (void)field, (void)depth;
    bool *nfc = ctx;
    if (type && strcmp(type, "NFC") == 0) {
        *nfc = true; /* NFC twice is NFC once */
        return FINCH_OK;
    }
    return finch_err_set(err, FINCH_E_UNSUPPORTED,
                         "%s: field '%s' is '%s': finch implements "
                         "the NFC normalizer only (and Sequence of it)",
                         path, sub, type ? type : "(missing)");
}

static finch_status check_normalizer(const char *path, const json_t *n, bool *nfc, finch_err *err) {
    if (!n || json_is_null(n)) return FINCH_OK;
    return walk_steps(path, n, "normalizer", "normalizers", 0, nfc_step, nfc, err);
}

static finch_status config_token(const finch_tokenizer *tok, const char *path, const json_t *cfg,
                                 const char *key, int32_t *id, finch_err *err);

/* ---- SentencePiece style ------------------------------------------------------------ */

/* U+2581, SentencePiece's space marker, in UTF-8. */
#define MARK "\xe2\x96\x81"

/* node, or the steps of a Sequence node (member key), each passed to f with its field. */
static bool has_type(const json_t *n, const char *key, const char *type) {
    const char *t = json_string_value(json_object_get(n, "type"));
    if (!t) return false;
    if (strcmp(t, type) == 0) return true;
    json_t *arr = json_object_get(n, key);
    if (strcmp(t, "Sequence") != 0 || !json_is_array(arr)) return false;
    for (size_t i = 0; i < json_array_size(arr); i++)
        if (has_type(json_array_get(arr, i), key, type)) return true;
    return false;
}

/* Whether the file describes a SentencePiece-style tokenizer: a Unigram model, or BPE with
 * the Metaspace pre-tokenizer, the Prepend normalizer or a Replace normalizer (Gemma's
 * Replace(" ", "▁") alone; a byte-level file has no Replace normalizer). */
static bool is_spm_style(const json_t *root, const char *model_type) {
    if (model_type && strcmp(model_type, "Unigram") == 0) return true;
    const json_t *norm = json_object_get(root, "normalizer");
    return model_type && strcmp(model_type, "BPE") == 0 &&
           (has_type(json_object_get(root, "pre_tokenizer"), "pretokenizers", "Metaspace") ||
            has_type(norm, "normalizers", "Prepend") || has_type(norm, "normalizers", "Replace"));
}

/* Gemma's pre-tokenizer: null, or Split on the String " " (MergedWithPrevious, not
 * inverted), which finds nothing once the normalizer has replaced every space. */
static bool is_space_split(const json_t *pre) {
    if (!pre || json_is_null(pre)) return true;
    const json_t *pat = json_object_get(pre, "pattern");
    const char *type = json_string_value(json_object_get(pre, "type")),
               *str = json_string_value(json_object_get(pat, "String")),
               *beh = json_string_value(json_object_get(pre, "behavior"));
    return type && !strcmp(type, "Split") && str && !strcmp(str, " ") && beh &&
           !strcmp(beh, "MergedWithPrevious") && !json_is_true(json_object_get(pre, "invert"));
}

/* What spm_normalizer_step collects: the legacy Prepend and Replace(" ", "▁") seen, and
 * every step but Prepend in tok->norm. */
typedef struct {
    finch_tokenizer *tok;
    bool prepend, replace;
} spm_norm_ctx;

/* Adds a step to tok->norm; from and to are copied. */
static finch_status add_norm(finch_tokenizer *tok, const char *path, const char *field,
                             spm_norm step, const char *from, size_t from_len, const char *to,
                             size_t to_len, finch_err *err) {
    if (tok->n_norm == SPM_MAX_NORM)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s': more than %d normalizer steps", path, field,
                             SPM_MAX_NORM);
    step.from = from ? finch_alloc(from_len + 1, "normalizer", err) : NULL;
    step.to = to ? finch_alloc(to_len + 1, "normalizer", err) : NULL;
    if ((from && !step.from) || (to && !step.to)) {
        free(step.from);
        free(step.to);
        return FINCH_E_NOMEM;
    }
    if (from) memcpy(step.from, from, from_len + 1);
    if (to) memcpy(step.to, to, to_len + 1);
    step.from_len = from_len;
    step.to_len = to_len;
    tok->norm[tok->n_norm++] = step;
    return FINCH_OK;
}

/* A normalizer step of a SentencePiece-style file: the legacy Prepend("▁") (noted only),
 * Replace of a String or of the Regex " {2,}", Strip, Precompiled (its charsmap loaded);
 * any other step is refused. */
static finch_status spm_normalizer_step(void *ctx, const char *path, const json_t *n,
                                        const char *type, const char *field, const char *sub0,
                                        int depth, finch_err *err) {
    (void)depth;
    spm_norm_ctx *c = ctx;
    const char *s;
    char sub[96];
    snprintf(sub, sizeof sub, "%s", sub0);
    finch_status st;
    if (type && strcmp(type, "Prepend") == 0) {
        snprintf(sub, sizeof sub, "%s.prepend", field);
        if ((st = get_str(path, n, "prepend", sub, &s, err))) return st;
        if (!s || strcmp(s, MARK) != 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s' is '%s': finch prepends only the space marker "
                                 "U+2581",
                                 path, sub, s ? s : "(missing)");
        c->prepend = true;
        return FINCH_OK;
    }
    if (type && strcmp(type, "Replace") == 0) {
        json_t *pat = json_object_get(n, "pattern"), *str = json_object_get(pat, "String");
        json_t *re = json_object_get(pat, "Regex");
        snprintf(sub, sizeof sub, "%s.content", field);
        if ((st = get_str(path, n, "content", sub, &s, err))) return st;
        if (!s) return bad_type(path, sub, NULL, "a string", err);
        size_t to_len = json_string_length(json_object_get(n, "content"));
        if (json_is_string(str) && json_string_length(str) > 0) {
            c->replace |= strcmp(json_string_value(str), " ") == 0 && strcmp(s, MARK) == 0;
            return add_norm(c->tok, path, field, (spm_norm){.kind = NORM_REPLACE},
                            json_string_value(str), json_string_length(str), s, to_len, err);
        }
        if (json_is_string(re) && strcmp(json_string_value(re), " {2,}") == 0)
            return add_norm(c->tok, path, field, (spm_norm){.kind = NORM_SPACES}, NULL, 0, s,
                            to_len, err);
        snprintf(sub, sizeof sub, "%s.pattern", field);
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s': finch implements Replace of a non-empty String, "
                             "or of the Regex \" {2,}\" only",
                             path, sub);
    }
    if (type && strcmp(type, "Strip") == 0) {
        spm_norm step = {.kind = NORM_STRIP};
        snprintf(sub, sizeof sub, "%s.strip_left", field);
        if ((st = get_bool(path, n, "strip_left", sub, false, &step.left, err))) return st;
        snprintf(sub, sizeof sub, "%s.strip_right", field);
        if ((st = get_bool(path, n, "strip_right", sub, false, &step.right, err))) return st;
        return add_norm(c->tok, path, field, step, NULL, 0, NULL, 0, err);
    }
    if (type && strcmp(type, "Precompiled") == 0) {
        json_t *map = json_object_get(n, "precompiled_charsmap");
        snprintf(sub, sizeof sub, "%s.precompiled_charsmap", field);
        if (!json_is_string(map)) return bad_type(path, sub, map, "a base64 string", err);
        if (c->tok->charsmap.n_units)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s': a second Precompiled step: finch "
                                 "implements one",
                                 path, field);
        if ((st = finch_charsmap_load(&c->tok->charsmap, json_string_value(map),
                                      json_string_length(map), path, sub, err)))
            return st;
        if (!c->tok->grapheme) {
            int code;
            PCRE2_SIZE at;
            c->tok->grapheme = pcre2_compile((PCRE2_SPTR) "\\X", PCRE2_ZERO_TERMINATED,
                                             PCRE2_UTF | PCRE2_UCP, &code, &at, NULL);
            if (!c->tok->grapheme)
                return finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", path);
        }
        return add_norm(c->tok, path, field, (spm_norm){.kind = NORM_PRECOMPILED}, NULL, 0, NULL, 0,
                        err);
    }
    return finch_err_set(err, FINCH_E_UNSUPPORTED,
                         "%s: field '%s' is '%s': a SentencePiece-style file may have only "
                         "Precompiled, Strip, Replace and Prepend normalizers (and Sequence of "
                         "them)",
                         path, sub, type ? type : "(missing)");
}

/* Walks the normalizer: *prepend and *replace say whether the legacy Prepend("▁") and
 * Replace(" ", "▁") are there; the other steps go to tok->norm. */
static finch_status spm_normalizer(finch_tokenizer *tok, const char *path, const json_t *n,
                                   bool *prepend, bool *replace, finch_err *err) {
    spm_norm_ctx c = {tok, false, false};
    finch_status st = FINCH_OK;
    if (n && !json_is_null(n))
        st = walk_steps(path, n, "normalizer", "normalizers", 0, spm_normalizer_step, &c, err);
    *prepend = c.prepend;
    *replace = c.replace;
    return st;
}

/* The Metaspace pre-tokenizer: replacement U+2581, prepend_scheme (or the older
 * add_prefix_space), split. */
static finch_status parse_metaspace(finch_tokenizer *tok, const char *path, const json_t *pre,
                                    finch_err *err) {
    const char *type, *rep, *scheme;
    finch_status st;
    if (!json_is_object(pre)) return bad_type(path, "pre_tokenizer", pre, "an object", err);
    if ((st = get_str(path, pre, "type", "pre_tokenizer.type", &type, err))) return st;
    if (!type || strcmp(type, "Metaspace") != 0)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field 'pre_tokenizer.type' is '%s': a SentencePiece-style "
                             "file may have only the Metaspace pre-tokenizer",
                             path, type ? type : "(missing)");
    if ((st = get_str(path, pre, "replacement", "pre_tokenizer.replacement", &rep, err))) return st;
    if (!rep) return bad_type(path, "pre_tokenizer.replacement", NULL, "a string", err);
    if (strcmp(rep, MARK) != 0)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field 'pre_tokenizer.replacement' is '%.16s': finch "
                             "implements only U+2581",
                             path, rep);
    if ((st = get_str(path, pre, "prepend_scheme", "pre_tokenizer.prepend_scheme", &scheme, err)))
        return st;
    if (scheme) {
        static const char *const names[] = {"never", "first", "always"};
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(scheme, names[i]) == 0) k = i;
        if (k < 0)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: field 'pre_tokenizer.prepend_scheme' is '%.32s', "
                                 "expected always, first or never",
                                 path, scheme);
        tok->spm_prepend = k; /* SPM_PREPEND_NEVER, _FIRST, _ALWAYS */
    } else {
        bool add;
        if ((st = get_bool(path, pre, "add_prefix_space", "pre_tokenizer.add_prefix_space", true,
                           &add, err)))
            return st;
        tok->spm_prepend = add ? SPM_PREPEND_ALWAYS : SPM_PREPEND_NEVER;
    }
    return get_bool(path, pre, "split", "pre_tokenizer.split", true, &tok->spm_split, err);
}

/* What a SentencePiece-style decoder does, as bits. */
enum { DEC_SPACE = 1, DEC_BYTES = 2, DEC_STRIP = 4 };

/* Reads the decoder: Replace("▁", " ") or Metaspace turn the marker into a space,
 * ByteFallback decodes byte tokens, Strip(" ", 1, 0) or a Metaspace that prepends drops the
 * first leading space (the library's Metaspace drops every marker of the first token; the
 * two agree wherever decoding gives the text back), Fuse changes nothing. */
static finch_status spm_decoder_step(void *ctx, const char *path, const json_t *d, const char *type,
                                     const char *field, const char *sub0, int depth,
                                     finch_err *err) {
    (void)depth;
    unsigned *flags = ctx;
    const char *s;
    char sub[96];
    snprintf(sub, sizeof sub, "%s", sub0);
    finch_status st;
    if (type && strcmp(type, "Fuse") == 0) return FINCH_OK;
    if (type && strcmp(type, "ByteFallback") == 0) {
        *flags |= DEC_BYTES;
        return FINCH_OK;
    }
    if (type && strcmp(type, "Replace") == 0) {
        json_t *pat = json_object_get(json_object_get(d, "pattern"), "String");
        if ((st = get_str(path, d, "content", sub, &s, err))) return st;
        if (!json_is_string(pat) || strcmp(json_string_value(pat), MARK) != 0 || !s ||
            strcmp(s, " ") != 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s': finch implements only Replace of the String "
                                 "U+2581 by ' '",
                                 path, field);
        *flags |= DEC_SPACE;
        return FINCH_OK;
    }
    if (type && strcmp(type, "Strip") == 0) {
        json_t *start = json_object_get(d, "start"), *stop = json_object_get(d, "stop");
        if ((st = get_str(path, d, "content", sub, &s, err))) return st;
        if (!s || strcmp(s, " ") != 0 || !json_is_number(start) || !json_is_number(stop) ||
            json_number_value(start) != 1 || json_number_value(stop) != 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s': finch implements only Strip(' ', 1, 0)", path,
                                 field);
        *flags |= DEC_STRIP;
        return FINCH_OK;
    }
    if (type && strcmp(type, "Metaspace") == 0) {
        snprintf(sub, sizeof sub, "%s.replacement", field);
        if ((st = get_str(path, d, "replacement", sub, &s, err))) return st;
        if (!s || strcmp(s, MARK) != 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: field '%s' is '%.16s': finch implements only U+2581", path,
                                 sub, s ? s : "(missing)");
        snprintf(sub, sizeof sub, "%s.prepend_scheme", field);
        if ((st = get_str(path, d, "prepend_scheme", sub, &s, err))) return st;
        bool add = true;
        snprintf(sub, sizeof sub, "%s.add_prefix_space", field);
        if (!s && (st = get_bool(path, d, "add_prefix_space", sub, true, &add, err))) return st;
        *flags |= DEC_SPACE | ((s ? strcmp(s, "never") != 0 : add) ? DEC_STRIP : 0);
        return FINCH_OK;
    }
    return finch_err_set(err, FINCH_E_UNSUPPORTED,
                         "%s: field '%s' is '%s': finch decodes SentencePiece-style files with "
                         "Metaspace, or Replace, ByteFallback, Fuse and Strip in a Sequence",
                         path, sub, type ? type : "(missing)");
}

static finch_status spm_decoder(const char *path, const json_t *d, unsigned *flags,
                                finch_err *err) {
    return walk_steps(path, d, "decoder", "decoders", 0, spm_decoder_step, flags, err);
}

/* A Unigram model's vocab ([piece, score] pairs, the id their position) and unk_id. */
static finch_status load_unigram(finch_tokenizer *tok, const char *path, const json_t *model,
                                 const added_tok *added, size_t n_added, finch_err *err) {
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_array(vocab)) return bad_type(path, "model.vocab", vocab, "an array", err);
    size_t n = json_array_size(vocab);
    if (n == 0) return finch_err_set(err, FINCH_E_FORMAT, "%s: field 'model.vocab' is empty", path);
    if (n > HF_MAX_VOCAB)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field 'model.vocab' has %zu pieces, at most %d", path, n,
                             HF_MAX_VOCAB);
    json_t *ids = json_object();
    double *score = finch_alloc(n * sizeof *score, "piece scores", err);
    finch_status st = FINCH_OK;
    if (!ids || !score) {
        st = ids ? FINCH_E_NOMEM
                 : finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", path);
        goto done;
    }
    double min = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(vocab, i), *p = json_array_get(e, 0), *s = json_array_get(e, 1);
        char f[48];
        snprintf(f, sizeof f, "model.vocab[%zu]", i);
        if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(p)) {
            st = bad_type(path, f, e, "a pair [piece, score]", err);
            goto done;
        }
        snprintf(f, sizeof f, "model.vocab[%zu][1]", i);
        if (!json_is_number(s) || !isfinite(json_number_value(s))) {
            st = bad_type(path, f, s, "a finite number (the piece's log-probability)", err);
            goto done;
        }
        if (json_object_get(ids, json_string_value(p))) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: field 'model.vocab[%zu]': piece '%.48s' appears twice", path, i,
                               json_string_value(p));
            goto done;
        }
        if (json_object_set_new(ids, json_string_value(p), json_real((double)i))) {
            st = finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", path);
            goto done;
        }
        score[i] = json_number_value(s);
        if (i == 0 || score[i] < min) min = score[i];
    }
    if ((st = load_vocab(tok, path, ids, added, n_added, err))) goto done;
    tok->uni_scores =
        finch_alloc((size_t)tok->n_vocab * sizeof *tok->uni_scores, "piece scores", err);
    if (!tok->uni_scores) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        tok->uni_scores[id] = (size_t)id < n ? score[id] : NAN;
        if ((size_t)id < n && tok->text_len[id] > tok->max_piece_len)
            tok->max_piece_len = tok->text_len[id];
    }
    tok->uni_unk_score = min - 10.0; /* the library's K_UNK_PENALTY */
    json_t *unk = json_object_get(model, "unk_id");
    if (!unk || json_is_null(unk)) {
        st = finch_err_set(err, FINCH_E_UNSUPPORTED,
                           "%s: field 'model.unk_id' is missing: finch needs the unknown "
                           "token of a Unigram model",
                           path);
        goto done;
    }
    if ((st = get_id(path, unk, "model.unk_id", &tok->unk_model, err))) goto done;
    if ((size_t)tok->unk_model >= n) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: field 'model.unk_id' is %d, outside the %zu pieces of "
                           "model.vocab",
                           path, tok->unk_model, n);
        goto done;
    }
    tok->special[SP_UNK] = tok->unk_model;
    tok->fuse_unk = true; /* the library's Unigram always fuses */
done:
    json_decref(ids);
    free(score);
    return st;
}

/* Reads a SentencePiece-style file: the space-marker convention, the model (BPE with its
 * merges and unk_token, or Unigram), added tokens and the decoder. */
static finch_status load_spm(finch_tokenizer *tok, const char *path, const json_t *root,
                             const json_t *model, bool unigram, added_tok **added, size_t *n_added,
                             finch_err *err) {
    finch_status st;
    bool prepend = false, replace = false;
    if ((st = spm_normalizer(tok, path, json_object_get(root, "normalizer"), &prepend, &replace,
                             err)))
        return st;
    json_t *pre = json_object_get(root, "pre_tokenizer");
    /* Gemma's form: the normalizer is exactly Replace(" ", "▁"), nothing is prepended and
     * the pre-tokenizer splits nothing; the run is one word */
    bool gemma = !prepend && replace && tok->n_norm == 1 && is_space_split(pre);
    bool meta = pre && !json_is_null(pre) && !gemma;
    if (meta && (st = parse_metaspace(tok, path, pre, err))) return st;
    /* the legacy form is exactly Prepend and Replace(" ", "▁"), which mark_run does */
    bool legacy = prepend && replace && tok->n_norm == 1;
    if (gemma) {
        tok->spm_prepend = SPM_PREPEND_NEVER;
        tok->spm_split = false;
    } else if (meta ? prepend : !legacy)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field '%s': a SentencePiece-style file needs either the "
                             "Metaspace pre_tokenizer or the normalizer Sequence[Prepend(U+2581), "
                             "Replace(' ', U+2581)], not both",
                             path, meta ? "normalizer" : "pre_tokenizer");
    if (!meta && !gemma) {
        tok->spm_prepend = SPM_PREPEND_NORMALIZER;
        free(tok->norm[0].from);
        free(tok->norm[0].to);
        tok->n_norm = 0;
    }
    if (!(tok->pre_name = finch_mem_strdup(meta    ? "Metaspace"
                                           : gemma ? "Replace"
                                                   : "Prepend+Replace")))
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", path);
    if ((st = get_bool(path, model, "byte_fallback", "model.byte_fallback", false,
                       &tok->byte_fallback, err)) ||
        (st = parse_added(path, json_object_get(root, "added_tokens"), added, n_added, err)))
        return st;
    if (unigram) {
        tok->model = &finch_tok_unigram;
        if ((st = load_unigram(tok, path, model, *added, *n_added, err))) return st;
    } else {
        tok->model = &finch_tok_hf_bpe;
        if ((st = check_model(path, model, err)) ||
            (st =
                 get_bool(path, model, "fuse_unk", "model.fuse_unk", false, &tok->fuse_unk, err)) ||
            (st = load_vocab(tok, path, json_object_get(model, "vocab"), *added, *n_added, err)) ||
            (st = load_merges(tok, path, json_object_get(model, "vocab"),
                              json_object_get(model, "merges"), err)) ||
            (st = config_token(tok, path, model, "unk_token", &tok->special[SP_UNK], err)))
            return st;
        tok->unk_model = tok->special[SP_UNK];
    }
    unsigned dec = 0;
    json_t *d = json_object_get(root, "decoder");
    if ((st = spm_decoder(path, d, &dec, err))) return st;
    if (!(dec & DEC_SPACE))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: field 'decoder' does not turn U+2581 back into a space "
                             "(Metaspace, or Replace): not implemented",
                             path);
    tok->add_space_prefix = dec & DEC_STRIP;
    tok->unk_missing = true;
    /* byte tokens decode to their byte only through ByteFallback; else to their text */
    for (int b = 0; dec & DEC_BYTES && b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int32_t id = finch_tok_find(tok, name, 6);
        if (id >= 0 && tok->attr[id] == TOK_NORMAL) tok->attr[id] = TOK_BYTE;
    }
    return FINCH_OK;
}

/* ---- tokenizer_config.json ---------------------------------------------------------- */

/* A special token of the config (a string, or an AddedToken object with "content") as an
 * id: *id stays as it is when the key is absent or null. */
static finch_status config_token(const finch_tokenizer *tok, const char *path, const json_t *cfg,
                                 const char *key, int32_t *id, finch_err *err) {
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) return FINCH_OK;
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v))
        return bad_type(path, key, json_object_get(cfg, key),
                        "a string or an object with a "
                        "string 'content'",
                        err);
    const char *s = json_string_value(v);
    int32_t found = finch_tok_find(tok, s, json_string_length(v));
    if (found < 0)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field '%s' is '%.64s', which is not a "
                             "token of the tokenizer",
                             path, key, s);
    *id = found;
    return FINCH_OK;
}

/* The chat template of chat_template.jinja beside the config (where transformers saves it
 * when the config has none), if that file exists. */
static finch_status read_jinja(finch_tokenizer *tok, const char *config_path, finch_err *err) {
    const char *slash = strrchr(config_path, '/');
    size_t dir = slash ? (size_t)(slash - config_path) + 1 : 0;
    char path[4096];
    if (dir + sizeof "chat_template.jinja" > sizeof path) return FINCH_OK;
    memcpy(path, config_path, dir);
    memcpy(path + dir, "chat_template.jinja", sizeof "chat_template.jinja");
    FILE *f = fopen(path, "rb");
    if (!f) return FINCH_OK;
    /* templates are a few kB; 1 MiB is plenty */
    enum { MAX_TEMPLATE = 1 << 20 };
    char *buf = finch_alloc(MAX_TEMPLATE + 1, "chat template", err);
    if (!buf) {
        fclose(f);
        return FINCH_E_NOMEM;
    }
    size_t n = fread(buf, 1, MAX_TEMPLATE + 1, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed || n > MAX_TEMPLATE || memchr(buf, 0, n)) {
        free(buf);
        return finch_err_set(err, FINCH_E_FORMAT, "%s: %s", path,
                             failed             ? "read error"
                             : n > MAX_TEMPLATE ? "more than 1 MiB, too large for a chat template"
                                                : "holds a NUL byte");
    }
    buf[n] = 0;
    char *fit = finch_mem_realloc(buf, n + 1);
    tok->chat_template = fit ? fit : buf;
    return FINCH_OK;
}

static finch_status read_config(finch_tokenizer *tok, const char *path, bool *add_bos,
                                bool *add_eos, finch_err *err) {
    json_t *cfg;
    finch_status st = load_json(path, &cfg, err);
    if (st) return st;
    if ((st = config_token(tok, path, cfg, "bos_token", &tok->special[SP_BOS], err)) ||
        (st = config_token(tok, path, cfg, "eos_token", &tok->special[SP_EOS], err)) ||
        (st = config_token(tok, path, cfg, "unk_token", &tok->special[SP_UNK], err)) ||
        (st = config_token(tok, path, cfg, "pad_token", &tok->special[SP_PAD], err)) ||
        (st = get_bool(path, cfg, "add_bos_token", "add_bos_token", *add_bos, add_bos, err)) ||
        (st = get_bool(path, cfg, "add_eos_token", "add_eos_token", *add_eos, add_eos, err)))
        goto done;
    json_t *t = json_object_get(cfg, "chat_template");
    const char *text = NULL;
    if (json_is_string(t)) {
        text = json_string_value(t);
    } else if (json_is_array(t)) {
        /* named templates: "default", else the first */
        for (size_t i = 0; i < json_array_size(t); i++) {
            json_t *e = json_array_get(t, i), *name = json_object_get(e, "name");
            json_t *body = json_object_get(e, "template");
            if (!json_is_string(body) || !json_is_string(name)) {
                char f[48];
                snprintf(f, sizeof f, "chat_template[%zu]", i);
                st = bad_type(path, f, e, "an object with string 'name' and 'template'", err);
                goto done;
            }
            if (!text || strcmp(json_string_value(name), "default") == 0)
                text = json_string_value(body);
        }
    } else if (t && !json_is_null(t)) {
        st = bad_type(path, "chat_template", t, "a string or a list of named templates", err);
        goto done;
    }
    if (text && !(tok->chat_template = finch_mem_strdup(text)))
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", path);
    if (!text) st = read_jinja(tok, path, err);
done:
    json_decref(cfg);
    return st;
}

/* ---- entry point -------------------------------------------------------------------- */

finch_status finch_tokenizer_from_hf_json(const char *tokenizer_json_path,
                                          const char *tokenizer_config_json_path,
                                          finch_tokenizer **out, finch_err *err) {
    FINCH_ASSERT(tokenizer_json_path && out);
    const char *path = tokenizer_json_path;
    *out = NULL;
    json_t *root;
    finch_status st = load_json(path, &root, err);
    if (st) return st;
    hf_ctx c = {.path = path, .err = err};
    added_tok *added = NULL;
    size_t n_added = 0;
    finch_tokenizer *tok = finch_calloc(1, sizeof *tok, "tokenizer", err);
    if (!tok) {
        json_decref(root);
        return FINCH_E_NOMEM;
    }
    tok->model = &finch_tok_bpe;
    for (int r = 0; r < SP_COUNT; r++) tok->special[r] = -1;

    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) {
        st = bad_type(path, "model", model, "an object", err);
        goto fail;
    }
    const char *mtype;
    if ((st = get_str(path, model, "type", "model.type", &mtype, err))) goto fail;
    bool spm = is_spm_style(root, mtype);
    if (!spm && (st = check_model(path, model, err))) goto fail;
    static const char *const ignored[] = {"truncation", "padding"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, ignored[i]);
        if (v && !json_is_null(v))
            finch_log(FINCH_LOG_WARN,
                      "%s: field '%s' is ignored: finch's callers choose "
                      "lengths themselves",
                      path, ignored[i]);
    }
    if (spm) {
        if ((st = load_spm(tok, path, root, model, strcmp(mtype, "Unigram") == 0, &added, &n_added,
                           err)))
            goto fail;
    } else {
        if ((st = check_normalizer(path, json_object_get(root, "normalizer"), &tok->nfc, err)))
            goto fail;
        json_t *pre = json_object_get(root, "pre_tokenizer");
        if (pre && !json_is_null(pre) && (st = parse_pre(&c, pre, "pre_tokenizer", 0))) goto fail;
        if (!c.byte_level) {
            st = finch_err_set(err, FINCH_E_UNSUPPORTED,
                               "%s: field 'pre_tokenizer' has no "
                               "ByteLevel step: finch reads only byte-level BPE",
                               path);
            goto fail;
        }
        if ((st = finch_pretok_compile(&tok->pre, (const char *const *)c.re, c.n_re, err))) {
            finch_err_prefix(err, "%s: field 'pre_tokenizer'", path);
            goto fail;
        }
        tok->hf_prefix_space = c.prefix_space;
        if (!(tok->pre_name = finch_mem_strdup(c.desc))) {
            st = finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", path);
            goto fail;
        }

        if ((st = get_bool(path, model, "ignore_merges", "model.ignore_merges", false,
                           &tok->ignore_merges, err)) ||
            (st = get_bool(path, model, "fuse_unk", "model.fuse_unk", false, &tok->fuse_unk, err)))
            goto fail;
        tok->unk_missing = true;
        if ((st = parse_added(path, json_object_get(root, "added_tokens"), &added, &n_added, err)))
            goto fail;
        if ((st = load_vocab(tok, path, json_object_get(model, "vocab"), added, n_added, err)))
            goto fail;
        if ((st = load_merges(tok, path, json_object_get(model, "vocab"),
                              json_object_get(model, "merges"), err)))
            goto fail;
        if ((st = check_byte_fallback(tok, path, model, err)) ||
            (st = check_decoder(tok, path, json_object_get(root, "decoder"), err)))
            goto fail;
        if ((st = config_token(tok, path, model, "unk_token", &tok->special[SP_UNK], err)))
            goto fail;
        /* what the model gives for a character that is not a token */
        tok->unk_model = tok->special[SP_UNK];
    }
    int32_t pp_bos = -1, pp_eos = -1;
    if ((st = parse_post(tok, path, json_object_get(root, "post_processor"), "post_processor",
                         &pp_bos, &pp_eos, 0, err)))
        goto fail;
    if (pp_bos >= 0) tok->special[SP_BOS] = pp_bos;
    if (pp_eos >= 0) tok->special[SP_EOS] = pp_eos;
    bool add_bos = pp_bos >= 0, add_eos = pp_eos >= 0;
    if (tokenizer_config_json_path &&
        (st = read_config(tok, tokenizer_config_json_path, &add_bos, &add_eos, err)))
        goto fail;
    for (int r = 0; r < SP_COUNT; r++)
        if (tok->special[r] >= tok->n_vocab) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: special token id %d is outside the "
                               "vocabulary of %d tokens",
                               path, tok->special[r], tok->n_vocab);
            goto fail;
        }
    if ((pp_bos >= 0 && tok->special[SP_BOS] != pp_bos) ||
        (pp_eos >= 0 && tok->special[SP_EOS] != pp_eos)) {
        st =
            finch_err_set(err, FINCH_E_UNSUPPORTED,
                          "%s: the post_processor adds token %d "
                          "but the config's %s is token %d",
                          path, pp_bos >= 0 && tok->special[SP_BOS] != pp_bos ? pp_bos : pp_eos,
                          pp_bos >= 0 && tok->special[SP_BOS] != pp_bos ? "bos_token" : "eos_token",
                          pp_bos >= 0 && tok->special[SP_BOS] != pp_bos ? tok->special[SP_BOS]
                                                                        : tok->special[SP_EOS]);
        goto fail;
    }
    if ((add_bos && tok->special[SP_BOS] < 0) || (add_eos && tok->special[SP_EOS] < 0)) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: %s is to be added but no %s token is "
                           "named",
                           tokenizer_config_json_path ? tokenizer_config_json_path : path,
                           add_bos && tok->special[SP_BOS] < 0 ? "BOS" : "EOS",
                           add_bos && tok->special[SP_BOS] < 0 ? "bos" : "eos");
        goto fail;
    }
    tok->add_bos = add_bos;
    tok->add_eos = add_eos;
    if ((st = finch_tok_finish(tok, err))) goto fail;

    for (int i = 0; i < c.n_re; i++) free(c.re[i]);
    free(added);
    json_decref(root);
    *out = tok;
    return FINCH_OK;

fail:
    for (int i = 0; i < c.n_re; i++) free(c.re[i]);
    free(added);
    json_decref(root);
    finch_tokenizer_free(tok);
    return st;
}
