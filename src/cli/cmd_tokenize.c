/*
 * cmd_tokenize.c: `finch tokenize`: each line of stdin becomes a line of space-separated
 * token ids (the line's newline is not part of the text); with --decode each line of ids
 * becomes text.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: finch tokenize [-m MODEL] [--decode] [--parse-special] [--no-add-special] < input\n"
    "  -m, --model FILE     GGUF model (default: the cached SmolLM2-135M-Instruct)\n"
    "  --decode             read lines of ids, write text\n"
    "  --parse-special      treat control-token text like <|im_start|> as the token\n"
    "  --no-add-special     do not add BOS/EOS even where the model asks for them\n";

static int encode_line(const finch_tokenizer *tok, const char *line, size_t len, int flags) {
    int32_t *ids;
    int64_t n;
    finch_err err;
    if (finch_tokenize(tok, line, len, flags, &ids, &n, &err)) return cli_fail(&err);
    for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    putchar('\n');
    free(ids);
    return 0;
}

static int decode_line(const finch_tokenizer *tok, char *line, long lineno, int flags) {
    int64_t n = 0, cap = 64;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) return fprintf(stderr, "finch: error: out of memory\n"), EXIT_FAIL;
    char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\r')) {
            fprintf(stderr, "finch: error: stdin: line %ld: '%.*s' is not a token id\n", lineno,
                    (int)strcspn(p, " \t\r"), p);
            free(ids);
            return EXIT_FAIL;
        }
        if (n == cap) {
            int32_t *grown = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!grown)
                return free(ids), fprintf(stderr, "finch: error: out of memory\n"), EXIT_FAIL;
            ids = grown;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    char *text;
    size_t len;
    finch_err err;
    if (finch_detokenize(tok, ids, n, flags, &text, &len, &err)) {
        free(ids);
        fprintf(stderr, "finch: error: stdin: line %ld: %s\n", lineno, err.msg);
        return EXIT_FAIL;
    }
    fwrite(text, 1, len, stdout);
    putchar('\n');
    free(text);
    free(ids);
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL;
    bool decode = false;
    int flags = FINCH_TOK_ADD_SPECIAL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(path = cli_flag_value("tokenize", argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--decode")) {
            decode = true;
        } else if (!strcmp(a, "--parse-special")) {
            flags |= FINCH_TOK_PARSE_SPECIAL;
        } else if (!strcmp(a, "--no-add-special")) {
            flags &= ~FINCH_TOK_ADD_SPECIAL;
        } else {
            return cli_usage_error("tokenize", "unknown option '%s' (see finch tokenize --help)",
                                   a);
        }
    }
    finch_model *m = cli_load_model(path);
    if (!m) return EXIT_FAIL;
    const finch_tokenizer *tok = finch_model_tokenizer(m);
    int rc = 0;
    if (!tok) {
        fprintf(stderr, "finch: error: %s: the model has no tokenizer\n", path ? path : "model");
        finch_model_free(m);
        return EXIT_FAIL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    while (rc == 0 && (n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
        rc = decode ? decode_line(tok, line, lineno, flags & FINCH_TOK_PARSE_SPECIAL)
                    : encode_line(tok, line, (size_t)n, flags);
    }
    free(line);
    finch_model_free(m);
    return rc;
}
