/*
 * cmd_score.c: `finch score`: ROUGE, BLEU, exact match and token F1 of predictions
 * against references, without a model (like the sacrebleu command): text files with one
 * example per line, or JSON Lines; a table, or one JSON object with --json.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "usage: finch score [--metrics LIST] (--pred FILE --ref FILE [--ref FILE]... | --jsonl FILE)\n"
    "  --metrics LIST   comma-separated, from rouge,bleu,em,f1 (default: all)\n"
    "  --pred FILE      predictions, one per line\n"
    "  --ref FILE       references, one per line, as many lines as --pred (repeatable)\n"
    "  --jsonl FILE     JSON Lines with \"prediction\" and \"reference\" (a string or a list)\n"
    "  --stem           Porter-stem ROUGE tokens (rouge-score's use_stemmer)\n"
    "  --json           print one JSON object instead of a table\n";

enum { M_ROUGE = 1, M_BLEU = 2, M_EM = 4, M_F1 = 8 };

static int parse_metrics(const char *v, int *out) {
    static const struct {
        const char *name;
        int bit;
    } known[] = {{"rouge", M_ROUGE}, {"bleu", M_BLEU}, {"em", M_EM}, {"f1", M_F1}};
    int m = 0;
    const char *p = v;
    while (1) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        int bit = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strlen(known[i].name) == n && !strncmp(known[i].name, p, n)) bit = known[i].bit;
        if (!bit)
            return cli_usage_error("score",
                                   "--metrics: unknown metric '%.*s' (known: rouge, bleu, em, f1)",
                                   (int)n, p);
        m |= bit;
        if (!c) break;
        p = c + 1;
    }
    *out = m;
    return 0;
}

int cmd_score(int argc, char **argv) {
    const char *pred = NULL, *jsonl = NULL, *refs[65];
    int n_refs = 0, metrics = M_ROUGE | M_BLEU | M_EM | M_F1, stem = 0, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VALUE()                                                                                    \
    if (!(v = cli_flag_value("score", argc, argv, &i))) return EXIT_USAGE
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "--metrics")) {
            VALUE();
            if (parse_metrics(v, &metrics)) return EXIT_USAGE;
        } else if (!strcmp(a, "--pred")) {
            VALUE();
            pred = v;
        } else if (!strcmp(a, "--ref")) {
            VALUE();
            if (n_refs == 64) return cli_usage_error("score", "--ref: at most 64 reference files");
            refs[n_refs++] = v;
        } else if (!strcmp(a, "--jsonl")) {
            VALUE();
            jsonl = v;
        } else if (!strcmp(a, "--stem")) {
            stem = 1;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else {
            return cli_usage_error("score", "unknown option '%s' (see finch score --help)", a);
        }
#undef VALUE
    }
    if (jsonl && (pred || n_refs))
        return cli_usage_error("score", "give either --jsonl or --pred/--ref, not both");
    if (!jsonl && !pred)
        return cli_usage_error("score",
                               "nothing to score: give --pred FILE --ref FILE, or --jsonl FILE");
    if (pred && !n_refs) return cli_usage_error("score", "--pred needs at least one --ref FILE");

    finch_err err;
    finch_score_set *set = NULL;
    finch_status st = jsonl ? finch_score_set_load_jsonl(jsonl, &set, &err)
                            : finch_score_set_load_lines(pred, refs, n_refs, &set, &err);
    if (st) return cli_fail(&err);
    finch_scores s;
    if (finch_score_set_compute(set, stem, &s, &err)) {
        finch_score_set_free(set);
        return cli_fail(&err);
    }
    size_t n = finch_score_set_size(set);
    finch_score_set_free(set);
    static const char *const rn[FINCH_ROUGE_COUNT] = {"rouge1", "rouge2", "rougeL", "rougeLsum"};
    if (json) {
        printf("{\"examples\": %zu", n);
        if (metrics & M_ROUGE)
            for (int k = 0; k < FINCH_ROUGE_COUNT; k++)
                printf(", \"%s\": {\"precision\": %.6f, \"recall\": %.6f, \"f1\": %.6f}", rn[k],
                       s.rouge[k].precision, s.rouge[k].recall, s.rouge[k].f1);
        if (metrics & M_BLEU)
            printf(", \"bleu\": {\"score\": %.6f, \"precisions\": [%.6f, %.6f, %.6f, %.6f], "
                   "\"bp\": %.6f, \"sys_len\": %lld, \"ref_len\": %lld}",
                   s.bleu.score, s.bleu.precisions[0], s.bleu.precisions[1], s.bleu.precisions[2],
                   s.bleu.precisions[3], s.bleu.bp, (long long)s.bleu.sys_len,
                   (long long)s.bleu.ref_len);
        if (metrics & M_EM) printf(", \"exact_match\": %.6f", s.exact_match);
        if (metrics & M_F1) printf(", \"f1\": %.6f", s.token_f1);
        printf("}\n");
        return 0;
    }
    printf("%zu examples\n", n);
    if (metrics & M_ROUGE) {
        printf("%-10s %9s %9s %9s\n", "metric", "precision", "recall", "f1");
        for (int k = 0; k < FINCH_ROUGE_COUNT; k++)
            printf("%-10s %9.4f %9.4f %9.4f\n", rn[k], s.rouge[k].precision, s.rouge[k].recall,
                   s.rouge[k].f1);
    }
    if (metrics & M_BLEU)
        printf("%-10s %9.2f  (%.1f/%.1f/%.1f/%.1f, bp %.3f, hyp %lld, ref %lld)\n", "bleu",
               s.bleu.score, s.bleu.precisions[0], s.bleu.precisions[1], s.bleu.precisions[2],
               s.bleu.precisions[3], s.bleu.bp, (long long)s.bleu.sys_len,
               (long long)s.bleu.ref_len);
    if (metrics & M_EM) printf("%-10s %9.4f\n", "em", s.exact_match);
    if (metrics & M_F1) printf("%-10s %9.4f\n", "f1", s.token_f1);
    return 0;
}
