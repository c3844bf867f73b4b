/*
 * cmd_report.c: `finch report RUN_DIR -o report.html`: a self-contained HTML page about a
 * training run: loss and learning-rate charts, evaluation metrics and samples, settings.
 */
#include "cli.h"

#include <stdio.h>

typedef struct {
    const char *dir, *out;
    cli_list evals;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_POSITIONAL(NULL, "RUN_DIR", dir,
                   "a finch train --out directory (metrics.jsonl, run.json, adapter,\n"
                   "eval*.json from finch eval --json-out)"),
    CLI_STRING("-o, --out", "FILE", out, "where the HTML goes (default RUN_DIR/report.html)"),
    CLI_LIST("--eval", "FILE", 64, evals, "another evaluation JSON to include (repeatable)"),
    CLI_END};
#undef CLI_DST

static const cli_command command = {.name = "report",
                                    .usage =
                                        "usage: finch report RUN_DIR [-o FILE] [--eval FILE]...\n",
                                    .flags = flag_table};

int cmd_report(int argc, char **argv) {
    args_t a = {0};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc != CLI_RUN) return rc;
    if (!a.dir)
        return cli_usage_error("report", "no run directory: finch report RUN_DIR [-o FILE]");
    char def[4096];
    if (!a.out) {
        if (snprintf(def, sizeof def, "%s/report.html", a.dir) >= (int)sizeof def)
            return cli_usage_error("report", "%s: path too long", a.dir);
        a.out = def;
    }
    finch_err err;
    if (finch_report_write(a.dir, a.evals.v, a.evals.n, a.out, &err)) return cli_fail(&err);
    fprintf(stderr, "finch report: wrote %s\n", a.out);
    return 0;
}
