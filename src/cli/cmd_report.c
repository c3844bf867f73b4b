/*
 * cmd_report.c: `finch report RUN_DIR -o report.html`: a self-contained HTML page about a
 * training run: loss and learning-rate charts, evaluation metrics and samples, settings.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "usage: finch report RUN_DIR [-o FILE] [--eval FILE]...\n"
    "  RUN_DIR          a finch train --out directory (metrics.jsonl, run.json, adapter,\n"
    "                   eval*.json from finch eval --json)\n"
    "  -o, --out FILE   where the HTML goes (default RUN_DIR/report.html)\n"
    "  --eval FILE      another evaluation JSON to include (repeatable)\n";

int cmd_report(int argc, char **argv) {
    const char *dir = NULL, *out = NULL, *evals[64];
    int n_evals = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(v = cli_flag_value("report", argc, argv, &i))) return EXIT_USAGE;
            out = v;
        } else if (!strcmp(a, "--eval")) {
            if (!(v = cli_flag_value("report", argc, argv, &i))) return EXIT_USAGE;
            if (n_evals == 64) return cli_usage_error("report", "--eval: at most 64 files");
            evals[n_evals++] = v;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error("report", "unknown option '%s' (see finch report --help)", a);
        } else if (dir) {
            return cli_usage_error("report", "one run directory only (got '%s' and '%s')", dir, a);
        } else {
            dir = a;
        }
    }
    if (!dir) return cli_usage_error("report", "no run directory: finch report RUN_DIR [-o FILE]");
    char def[4096];
    if (!out) {
        if (snprintf(def, sizeof def, "%s/report.html", dir) >= (int)sizeof def)
            return cli_usage_error("report", "%s: path too long", dir);
        out = def;
    }
    finch_err err;
    if (finch_report_write(dir, evals, n_evals, out, &err)) return cli_fail(&err);
    fprintf(stderr, "finch report: wrote %s\n", out);
    return 0;
}
