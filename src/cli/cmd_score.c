/*
 * cmd_score.c: `finch score`: ROUGE, BLEU, exact match and token F1 of predictions
 * against references, without a model (like the sacrebleu command): text files with one
 * example per line, or JSON Lines; a table, and one JSON object with --json (on stdout,
 * the table then on stderr) or --json-out FILE.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    const char *pred, *jsonl;
    cli_list refs;
    int metrics;
    bool stem;
    cli_json json;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_CUSTOM("--metrics", "LIST", 0, cli_metrics_parse, metrics,
               "comma-separated, from rouge,bleu,em,f1 (default: all)"),
    CLI_STRING("--pred", "FILE", pred, "predictions, one per line"),
    CLI_LIST("--ref", "FILE", 64, refs,
             "references, one per line, as many lines as --pred (repeatable)"),
    CLI_STRING("--jsonl", "FILE", jsonl,
               "JSON Lines with \"prediction\" and \"reference\" (a string or a list)"),
    CLI_SWITCH("--stem", stem, "Porter-stem ROUGE tokens (rouge-score's use_stemmer)"),
    CLI_GROUP(cli_json_flags, json),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "score",
    .usage = "usage: finch score [--metrics LIST] (--pred FILE --ref FILE [--ref FILE]... | "
             "--jsonl FILE)\n",
    .flags = flag_table};

static const char *const rn[FINCH_ROUGE_COUNT] = {"rouge1", "rouge2", "rougeL", "rougeLsum"};

/* The scores as one JSON object, into a malloc'd string (*len bytes); NULL when out of
 * memory. */
static char *scores_json(const finch_scores *s, size_t n, int metrics, size_t *len) {
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (!f) return NULL;
    fprintf(f, "{\"examples\": %zu", n);
    if (metrics & CLI_METRIC_ROUGE)
        for (int k = 0; k < FINCH_ROUGE_COUNT; k++)
            fprintf(f, ", \"%s\": {\"precision\": %.6f, \"recall\": %.6f, \"f1\": %.6f}", rn[k],
                    s->rouge[k].precision, s->rouge[k].recall, s->rouge[k].f1);
    if (metrics & CLI_METRIC_BLEU)
        fprintf(f,
                ", \"bleu\": {\"score\": %.6f, \"precisions\": [%.6f, %.6f, %.6f, %.6f], "
                "\"bp\": %.6f, \"sys_len\": %lld, \"ref_len\": %lld}",
                s->bleu.score, s->bleu.precisions[0], s->bleu.precisions[1], s->bleu.precisions[2],
                s->bleu.precisions[3], s->bleu.bp, (long long)s->bleu.sys_len,
                (long long)s->bleu.ref_len);
    if (metrics & CLI_METRIC_EM) fprintf(f, ", \"exact_match\": %.6f", s->exact_match);
    if (metrics & CLI_METRIC_F1) fprintf(f, ", \"f1\": %.6f", s->token_f1);
    fputc('}', f);
    if (fclose(f)) {
        free(text);
        return NULL;
    }
    return text;
}

/* The scores as a table for people, on out. */
static void print_table(FILE *out, const finch_scores *s, size_t n, int metrics) {
    fprintf(out, "%zu examples\n", n);
    if (metrics & CLI_METRIC_ROUGE) {
        fprintf(out, "%-10s %9s %9s %9s\n", "metric", "precision", "recall", "f1");
        for (int k = 0; k < FINCH_ROUGE_COUNT; k++)
            fprintf(out, "%-10s %9.4f %9.4f %9.4f\n", rn[k], s->rouge[k].precision,
                    s->rouge[k].recall, s->rouge[k].f1);
    }
    if (metrics & CLI_METRIC_BLEU)
        fprintf(out, "%-10s %9.2f  (%.1f/%.1f/%.1f/%.1f, bp %.3f, hyp %lld, ref %lld)\n", "bleu",
                s->bleu.score, s->bleu.precisions[0], s->bleu.precisions[1], s->bleu.precisions[2],
                s->bleu.precisions[3], s->bleu.bp, (long long)s->bleu.sys_len,
                (long long)s->bleu.ref_len);
    if (metrics & CLI_METRIC_EM) fprintf(out, "%-10s %9.4f\n", "em", s->exact_match);
    if (metrics & CLI_METRIC_F1) fprintf(out, "%-10s %9.4f\n", "f1", s->token_f1);
}

int cmd_score(int argc, char **argv) {
    args_t a = {.metrics = CLI_METRIC_ROUGE | CLI_METRIC_BLEU | CLI_METRIC_EM | CLI_METRIC_F1};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc == CLI_RUN) rc = cli_json_check("score", &a.json);
    if (rc != CLI_RUN) return rc;
    const char *pred = a.pred, *jsonl = a.jsonl;
    const int n_refs = a.refs.n;
    if (jsonl && (pred || n_refs))
        return cli_usage_error("score", "give either --jsonl or --pred/--ref, not both");
    if (!jsonl && !pred)
        return cli_usage_error("score",
                               "nothing to score: give --pred FILE --ref FILE, or --jsonl FILE");
    if (pred && !n_refs) return cli_usage_error("score", "--pred needs at least one --ref FILE");

    finch_err err;
    finch_score_set *set = NULL;
    finch_status st = jsonl ? finch_score_set_load_jsonl(jsonl, &set, &err)
                            : finch_score_set_load_lines(pred, a.refs.v, n_refs, &set, &err);
    if (st) return cli_fail(&err);
    finch_scores s;
    if (finch_score_set_compute(set, a.stem, &s, &err)) {
        finch_score_set_free(set);
        return cli_fail(&err);
    }
    size_t n = finch_score_set_size(set);
    finch_score_set_free(set);
    print_table(cli_json_text(&a.json), &s, n, a.metrics);
    if (!a.json.json && !a.json.json_out) return 0;
    size_t len;
    char *text = scores_json(&s, n, a.metrics, &len);
    if (!text) {
        fprintf(stderr, "finch: error: out of memory\n");
        return EXIT_FAIL;
    }
    rc = cli_json_emit("score", &a.json, text, len);
    free(text);
    return rc;
}
