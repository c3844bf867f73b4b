/*
 * cmd_tokenize.c: `finch tokenize`: each line of stdin becomes a line of space-separated
 * token ids (the line's newline is not part of the text); with --decode each line of ids
 * becomes text. With --jsonl each input line is a JSON object {"text": "..."} (so a text
 * may hold newlines) and each output line is {"ids": [...]}; a bad line stops the run
 * with its file and line number.
 */
#include "cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* One JSON line {"text": ...} of file `name` to one line {"ids": [...]}; a message naming
 * name:lineno for anything else. */
static int encode_json_line(const finch_tokenizer *tok, const char *name, long lineno,
                            const char *line, size_t len, int flags) {
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
    if (i == len) return 0; /* a blank line */
    json_error_t jerr;
    json_t *obj = json_loadb(line, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    const char *why = NULL;
    json_t *text = NULL;
    if (!obj)
        why = jerr.text;
    else if (!json_is_object(obj))
        why = "expected a JSON object {\"text\": \"...\"}";
    else if (!(text = json_object_get(obj, "text")))
        why = "no field \"text\"";
    else if (!json_is_string(text))
        why = "field \"text\" is not a string";
    else if (json_object_size(obj) != 1)
        why = "unknown field beside \"text\"";
    if (why) {
        fprintf(stderr, "finch: error: %s: line %ld: %s\n", name, lineno, why);
        json_decref(obj);
        return EXIT_FAIL;
    }
    int32_t *ids;
    int64_t n;
    finch_err err;
    if (finch_tokenize(tok, json_string_value(text), json_string_length(text), flags, &ids, &n,
                       &err)) {
        fprintf(stderr, "finch: error: %s: line %ld: %s\n", name, lineno, err.msg);
        json_decref(obj);
        return EXIT_FAIL;
    }
    json_decref(obj);
    fputs("{\"ids\": [", stdout);
    for (int64_t k = 0; k < n; k++) printf(k ? ", %d" : "%d", ids[k]);
    fputs("]}\n", stdout);
    free(ids);
    return 0;
}

typedef struct {
    const char *model, *jsonl; /* jsonl: NULL, "" (stdin) or a file */
    bool decode, parse_special, no_add_special;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_STRING("-m, --model", "FILE", model,
               "GGUF model (default: the cached SmolLM2-135M-Instruct)"),
    CLI_SWITCH("--decode", decode, "read lines of ids, write text"),
    CLI_STRING_OPT("--jsonl", "FILE", jsonl,
                   "read JSON lines {\"text\": \"...\"} (from FILE, else stdin), write\n"
                   "one line {\"ids\": [...]} per input line; blank lines are skipped"),
    CLI_SWITCH("--parse-special", parse_special,
               "treat control-token text like <|im_start|> as the token"),
    CLI_SWITCH("--no-add-special", no_add_special,
               "do not add BOS/EOS even where the model asks for them"),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "tokenize",
    .usage = "usage: finch tokenize [-m MODEL] [--decode | --jsonl [FILE]] [--parse-special]\n"
             "                      [--no-add-special] < input\n",
    .flags = flag_table};

int cmd_tokenize(int argc, char **argv) {
    args_t a = {0};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc != CLI_RUN) return rc;
    const char *path = a.model, *jsonl_path = a.jsonl && *a.jsonl ? a.jsonl : NULL;
    const bool decode = a.decode, jsonl = a.jsonl != NULL;
    int flags = (a.no_add_special ? 0 : FINCH_TOK_ADD_SPECIAL) |
                (a.parse_special ? FINCH_TOK_PARSE_SPECIAL : 0);
    if (decode && jsonl)
        return cli_usage_error("tokenize", "--jsonl reads texts to encode: not with --decode");
    FILE *in = stdin;
    const char *in_name = "stdin";
    if (jsonl_path) {
        if (!(in = fopen(jsonl_path, "rb"))) {
            fprintf(stderr, "finch: error: %s: cannot open: %s\n", jsonl_path, strerror(errno));
            return EXIT_FAIL;
        }
        in_name = jsonl_path;
    }
    finch_model *m = cli_load_model(path);
    if (!m) {
        if (in != stdin) fclose(in);
        return EXIT_FAIL;
    }
    const finch_tokenizer *tok = finch_model_tokenizer(m);
    rc = 0;
    if (!tok) {
        fprintf(stderr, "finch: error: %s: the model has no tokenizer\n", path ? path : "model");
        finch_model_free(m);
        if (in != stdin) fclose(in);
        return EXIT_FAIL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    while (rc == 0 && (n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
        if (jsonl)
            rc = encode_json_line(tok, in_name, lineno, line, (size_t)n, flags);
        else
            rc = decode ? decode_line(tok, line, lineno, flags & FINCH_TOK_PARSE_SPECIAL)
                        : encode_line(tok, line, (size_t)n, flags);
    }
    if (rc == 0 && ferror(in)) {
        fprintf(stderr, "finch: error: %s: read failed: %s\n", in_name, strerror(errno));
        rc = EXIT_FAIL;
    }
    if (in != stdin) fclose(in);
    free(line);
    finch_model_free(m);
    return rc;
}
