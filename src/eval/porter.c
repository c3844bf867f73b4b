/*
 * porter.c: the Porter stemmer as nltk's PorterStemmer computes it in its default mode
 * (NLTK_EXTENSIONS), the stemmer Google's rouge-score applies to tokens longer
 * than three characters.
 *
 * What it is not: the original 1980 algorithm, Martin Porter's own extensions, or
 * Snowball ("Porter2"). Input is a lowercase ASCII word ([a-z0-9]+, what rouge-score's
 * tokenizer leaves); other bytes are treated as consonants, like nltk treats them.
 *
 * Sources: M. F. Porter, "An algorithm for suffix stripping", Program 14(3), 1980; the
 * behaviour of nltk.stem.porter (nltk 3.x) in NLTK_EXTENSIONS mode, read for its rules:
 * the irregular-form pool, the "ies"/"ied" length-4 cases, step 1c's consonant
 * condition, step 2's "alli"/"fulli"/"logi" additions, and the two-letter cvc case.
 */
#include "eval/eval.h"

#include <string.h>

/* A word being stemmed, in the caller's buffer (room for n + 8 bytes). */
typedef struct {
    char *b;
    size_t n;
} word;

static bool is_vowel(char c) {
    return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
}

/* nltk's _is_consonant: for a 'y', walk back over the run of 'y's, toggling at each, and
 * compare with whether the letter where the walk stops is a consonant. */
static bool is_consonant(const char *w, size_t i) {
    if (is_vowel(w[i])) return false;
    if (w[i] == 'y') {
        bool negate = false;
        while (i > 0 && w[i] == 'y') {
            negate = !negate;
            i--;
        }
        return (!is_vowel(w[i])) != negate;
    }
    return true;
}

/* nltk's _consonant_flags, one at a time: 'y' is a consonant at the start, else the
 * opposite of the letter before it (prev: the flag of w[i-1]). */
static bool flag_next(const char *w, size_t i, bool prev) {
    if (is_vowel(w[i])) return false;
    if (w[i] == 'y') return i == 0 ? true : !prev;
    return true;
}

/* m in [C](VC)^m[V]: the number of vowel-consonant transitions in w[0..n). */
static int measure(const char *w, size_t n) {
    int m = 0;
    bool prev = true;
    for (size_t i = 0; i < n; i++) {
        bool f = flag_next(w, i, prev);
        if (i > 0 && !prev && f) m++;
        prev = f;
    }
    return m;
}

static bool contains_vowel(const char *w, size_t n) {
    bool prev = true;
    for (size_t i = 0; i < n; i++) {
        prev = flag_next(w, i, prev);
        if (!prev) return true;
    }
    return false;
}

static bool ends_double_consonant(const char *w, size_t n) {
    return n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1);
}

static bool ends_cvc(const char *w, size_t n) {
    if (n >= 3 && is_consonant(w, n - 3) && !is_consonant(w, n - 2) && is_consonant(w, n - 1) &&
        w[n - 1] != 'w' && w[n - 1] != 'x' && w[n - 1] != 'y')
        return true;
    return n == 2 && !is_consonant(w, 0) && is_consonant(w, 1);
}

static bool ends_with(const word *w, const char *suf) {
    size_t k = strlen(suf);
    return w->n >= k && !memcmp(w->b + w->n - k, suf, k);
}

/* Replaces the last strlen(suf) bytes of w with rep. */
static void replace(word *w, const char *suf, const char *rep) {
    size_t k = strlen(suf), r = strlen(rep);
    w->n -= k;
    memcpy(w->b + w->n, rep, r);
    w->n += r;
}

/* The conditions rules carry, on the stem (the word without the rule's suffix). */
typedef enum { C_NONE, C_M_GT0, C_M_GT1, C_ION, C_LOGI } cond;

typedef struct {
    const char *suffix, *rep;
    cond c;
} rule;

static bool holds(cond c, const word *w, size_t stem_n) {
    switch (c) {
    case C_NONE:
        return true;
    case C_M_GT0:
        return measure(w->b, stem_n) > 0;
    case C_M_GT1:
        return measure(w->b, stem_n) > 1;
    case C_ION:
        return measure(w->b, stem_n) > 1 && stem_n > 0 &&
               (w->b[stem_n - 1] == 's' || w->b[stem_n - 1] == 't');
    case C_LOGI:
        return w->n >= 3 && measure(w->b, w->n - 3) > 0; /* nltk tests word[:-3] */
    }
    return false;
}

/* The first rule whose suffix ends the word decides: applied when its condition holds,
 * otherwise the word stays as it is (nltk's _apply_rule_list without the "*d" case). */
static void apply_rules(word *w, const rule *rules, size_t n_rules) {
    for (size_t i = 0; i < n_rules; i++) {
        if (!ends_with(w, rules[i].suffix)) continue;
        if (holds(rules[i].c, w, w->n - strlen(rules[i].suffix)))
            replace(w, rules[i].suffix, rules[i].rep);
        return;
    }
}

static void step1a(word *w) {
    if (ends_with(w, "ies") && w->n == 4) {
        replace(w, "ies", "ie");
        return;
    }
    static const rule r[] = {
        {"sses", "ss", C_NONE}, {"ies", "i", C_NONE}, {"ss", "ss", C_NONE}, {"s", "", C_NONE}};
    apply_rules(w, r, sizeof r / sizeof r[0]);
}

static void step1b(word *w) {
    if (ends_with(w, "ied")) {
        replace(w, "ied", w->n == 4 ? "ie" : "i");
        return;
    }
    if (ends_with(w, "eed")) {
        if (measure(w->b, w->n - 3) > 0) replace(w, "eed", "ee");
        return;
    }
    size_t k = 0;
    if (ends_with(w, "ed") && contains_vowel(w->b, w->n - 2))
        k = 2;
    else if (ends_with(w, "ing") && contains_vowel(w->b, w->n - 3))
        k = 3;
    if (!k) return;
    w->n -= k; /* the intermediate stem */
    if (ends_with(w, "at"))
        replace(w, "at", "ate");
    else if (ends_with(w, "bl"))
        replace(w, "bl", "ble");
    else if (ends_with(w, "iz"))
        replace(w, "iz", "ize");
    else if (ends_double_consonant(w->b, w->n)) {
        char last = w->b[w->n - 1];
        if (last != 'l' && last != 's' && last != 'z') w->n -= 1; /* stem[:-2] + last */
    } else if (measure(w->b, w->n) == 1 && ends_cvc(w->b, w->n)) {
        w->b[w->n++] = 'e';
    }
}

static void step1c(word *w) {
    if (ends_with(w, "y") && w->n - 1 > 1 && is_consonant(w->b, w->n - 2)) w->b[w->n - 1] = 'i';
}

static void step2(word *w) {
    while (ends_with(w, "alli") && measure(w->b, w->n - 4) > 0) replace(w, "alli", "al");
    static const rule r[] = {
        {"ational", "ate", C_M_GT0}, {"tional", "tion", C_M_GT0}, {"enci", "ence", C_M_GT0},
        {"anci", "ance", C_M_GT0},   {"izer", "ize", C_M_GT0},    {"bli", "ble", C_M_GT0},
        {"alli", "al", C_M_GT0},     {"entli", "ent", C_M_GT0},   {"eli", "e", C_M_GT0},
        {"ousli", "ous", C_M_GT0},   {"ization", "ize", C_M_GT0}, {"ation", "ate", C_M_GT0},
        {"ator", "ate", C_M_GT0},    {"alism", "al", C_M_GT0},    {"iveness", "ive", C_M_GT0},
        {"fulness", "ful", C_M_GT0}, {"ousness", "ous", C_M_GT0}, {"aliti", "al", C_M_GT0},
        {"iviti", "ive", C_M_GT0},   {"biliti", "ble", C_M_GT0},  {"fulli", "ful", C_M_GT0},
        {"logi", "log", C_LOGI},
    };
    apply_rules(w, r, sizeof r / sizeof r[0]);
}

static void step3(word *w) {
    static const rule r[] = {{"icate", "ic", C_M_GT0}, {"ative", "", C_M_GT0},
                             {"alize", "al", C_M_GT0}, {"iciti", "ic", C_M_GT0},
                             {"ical", "ic", C_M_GT0},  {"ful", "", C_M_GT0},
                             {"ness", "", C_M_GT0}};
    apply_rules(w, r, sizeof r / sizeof r[0]);
}

static void step4(word *w) {
    static const rule r[] = {
        {"al", "", C_M_GT1},    {"ance", "", C_M_GT1}, {"ence", "", C_M_GT1}, {"er", "", C_M_GT1},
        {"ic", "", C_M_GT1},    {"able", "", C_M_GT1}, {"ible", "", C_M_GT1}, {"ant", "", C_M_GT1},
        {"ement", "", C_M_GT1}, {"ment", "", C_M_GT1}, {"ent", "", C_M_GT1},  {"ion", "", C_ION},
        {"ou", "", C_M_GT1},    {"ism", "", C_M_GT1},  {"ate", "", C_M_GT1},  {"iti", "", C_M_GT1},
        {"ous", "", C_M_GT1},   {"ive", "", C_M_GT1},  {"ize", "", C_M_GT1},
    };
    apply_rules(w, r, sizeof r / sizeof r[0]);
}

static void step5a(word *w) {
    if (!ends_with(w, "e")) return;
    int m = measure(w->b, w->n - 1);
    if (m > 1 || (m == 1 && !ends_cvc(w->b, w->n - 1))) w->n -= 1;
}

static void step5b(word *w) {
    if (ends_with(w, "ll") && measure(w->b, w->n - 1) > 1) w->n -= 1;
}

size_t finch_porter_stem(char *out, const char *in, size_t n) {
    static const struct {
        const char *form, *stem;
    } pool[] = {
        {"sky", "sky"},         {"skies", "sky"},        {"dying", "die"},
        {"lying", "lie"},       {"tying", "tie"},        {"news", "news"},
        {"innings", "inning"},  {"inning", "inning"},    {"outings", "outing"},
        {"outing", "outing"},   {"cannings", "canning"}, {"canning", "canning"},
        {"howe", "howe"},       {"proceed", "proceed"},  {"exceed", "exceed"},
        {"succeed", "succeed"},
    };
    for (size_t i = 0; i < sizeof pool / sizeof pool[0]; i++)
        if (strlen(pool[i].form) == n && !memcmp(pool[i].form, in, n)) {
            size_t k = strlen(pool[i].stem);
            memcpy(out, pool[i].stem, k);
            return k;
        }
    word w = {out, n};
    memmove(out, in, n);
    if (n > 2) {
        step1a(&w);
        step1b(&w);
        step1c(&w);
        step2(&w);
        step3(&w);
        step4(&w);
        step5a(&w);
        step5b(&w);
    }
    return w.n;
}
