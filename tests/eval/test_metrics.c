/*
 * test_metrics.c: ROUGE (with and without stemming), sentence and corpus BLEU, exact
 * match and token F1 on the 560 pairs of tests/fixtures/eval/metrics.jsonl, every value
 * equal to rouge-score's / sacrebleu's / the SQuAD definitions' to 1e-6; the Porter
 * stemmer on words from Porter's paper and on 5,992 words stemmed by nltk. Fixtures:
 * tests/reference/make_metric_fixtures.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval.h"

#define CLOSE(a, b, what, line)                                                                    \
    do {                                                                                           \
        if (fabs((a) - (b)) > 1e-6)                                                                \
            fail_msg("pair %d: %s: finch %.9f, reference %.9f", line, what, (double)(a),           \
                     (double)(b));                                                                 \
    } while (0)

static void test_porter(void **state) {
    (void)state;
    static const char *const w[][2] = {
        {"caresses", "caress"},  {"ponies", "poni"},       {"ties", "tie"},
        {"agreed", "agre"},      {"hopping", "hop"},       {"generalizations", "gener"},
        {"relational", "relat"}, {"happiness", "happi"},   {"skies", "sky"},
        {"dying", "die"},        {"electrical", "electr"}, {"conditional", "condit"},
    };
    char buf[64];
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        size_t n = finch_porter_stem(buf, w[i][0], strlen(w[i][0]));
        buf[n] = 0;
        assert_string_equal(buf, w[i][1]);
    }
    /* 5,992 words reaching every rule, stemmed by nltk */
    FILE *f = fopen(FINCH_FIXTURES "/eval/porter.tsv", "r");
    assert_non_null(f);
    char line[256], out[256 + 8];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t'), *nl = strchr(line, '\n');
        assert_non_null(tab);
        assert_non_null(nl);
        *tab = *nl = 0;
        size_t k = finch_porter_stem(out, line, strlen(line));
        out[k] = 0;
        if (strcmp(out, tab + 1)) fail_msg("stem('%s'): finch '%s', nltk '%s'", line, out, tab + 1);
        n++;
    }
    fclose(f);
    assert_true(n > 5000);
}

static void test_against_reference(void **state) {
    (void)state;
    FILE *f = fopen(FINCH_FIXTURES "/eval/metrics.jsonl", "r");
    assert_non_null(f);
    static char line[1 << 20];
    assert_non_null(fgets(line, sizeof line, f));
    json_t *head = json_loads(line, 0, NULL);
    assert_non_null(head);
    const char **preds = NULL, ***refs = NULL;
    int *n_refs = NULL, n = 0;
    finch_err err;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        preds = realloc(preds, (size_t)(n + 1) * sizeof *preds);
        refs = realloc(refs, (size_t)(n + 1) * sizeof *refs);
        n_refs = realloc(n_refs, (size_t)(n + 1) * sizeof *n_refs);
        json_t *r = json_object_get(j, "refs");
        int nr = (int)json_array_size(r);
        preds[n] = strdup(json_string_value(json_object_get(j, "pred")));
        refs[n] = calloc((size_t)nr, sizeof(char *));
        for (int k = 0; k < nr; k++) refs[n][k] = strdup(json_string_value(json_array_get(r, k)));
        n_refs[n] = nr;
        for (int stem = 0; stem < 2; stem++) {
            finch_prf p[FINCH_ROUGE_COUNT];
            assert_int_equal(finch_rouge(preds[n], refs[n], nr, stem, p, &err), FINCH_OK);
            json_t *want = json_object_get(j, stem ? "rouge_stem" : "rouge");
            for (int t = 0; t < FINCH_ROUGE_COUNT; t++) {
                json_t *w = json_array_get(want, (size_t)t);
                char what[64];
                snprintf(what, sizeof what, "rouge type %d%s precision", t, stem ? " stem" : "");
                CLOSE(p[t].precision, json_number_value(json_array_get(w, 0)), what, n + 1);
                snprintf(what, sizeof what, "rouge type %d%s recall", t, stem ? " stem" : "");
                CLOSE(p[t].recall, json_number_value(json_array_get(w, 1)), what, n + 1);
                snprintf(what, sizeof what, "rouge type %d%s f1", t, stem ? " stem" : "");
                CLOSE(p[t].f1, json_number_value(json_array_get(w, 2)), what, n + 1);
            }
        }
        finch_bleu b;
        assert_int_equal(finch_bleu_sentence(preds[n], refs[n], nr, &b, &err), FINCH_OK);
        CLOSE(b.score, json_number_value(json_object_get(j, "bleu")), "sentence bleu", n + 1);
        double em, f1;
        assert_int_equal(finch_exact_match(preds[n], refs[n], nr, &em, &f1, &err), FINCH_OK);
        CLOSE(em, json_number_value(json_object_get(j, "em")), "em", n + 1);
        CLOSE(f1, json_number_value(json_object_get(j, "f1")), "f1", n + 1);
        json_decref(j);
        n++;
    }
    fclose(f);
    assert_true(n >= 500);
    finch_bleu cb;
    assert_int_equal(finch_bleu_corpus((const char *const *)preds, (const char *const *const *)refs,
                                       n_refs, (size_t)n, &cb, &err),
                     FINCH_OK);
    CLOSE(cb.score, json_number_value(json_object_get(head, "corpus_bleu")), "corpus bleu", 0);
    assert_int_equal(cb.sys_len, json_integer_value(json_object_get(head, "sys_len")));
    assert_int_equal(cb.ref_len, json_integer_value(json_object_get(head, "ref_len")));
    for (int i = 0; i < n; i++) {
        free((void *)preds[i]);
        for (int k = 0; k < n_refs[i]; k++) free((void *)refs[i][k]);
        free(refs[i]);
    }
    free(preds);
    free(refs);
    free(n_refs);
    json_decref(head);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_porter),
        cmocka_unit_test(test_against_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
