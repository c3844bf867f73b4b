/*
 * cli.h: shared pieces of the finch command line: the flag tables and their parser
 * (args.c), the flags several commands share and the model loading behind them
 * (flags.c), error reporting, the progress line. The CLI sees only include/finch.h.
 */
#ifndef FINCH_CLI_H
#define FINCH_CLI_H

#include "finch.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Exit codes: 2 for usage errors, 1 for everything else. */
enum { EXIT_USAGE = 2, EXIT_FAIL = 1 };

/* Prints "finch: error: <msg>" on stderr and returns the exit code for code. */
int cli_fail(const finch_err *err);
/* Prints a usage error ("finch <cmd>: ...") and returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict number parsing: the whole string, in [lo, hi]. false on anything else. */
bool cli_parse_int(const char *s, long lo, long hi, long *out);
bool cli_parse_float(const char *s, double lo, double hi, double *out);

/* ---- flags: one table per command, one parser (args.c) --------------------------------- */

/* What a row of a flag table is. */
typedef enum {
    CLI_T_END,    /* ends a table */
    CLI_T_TEXT,   /* not a flag: a line of --help (a section heading or a note) */
    CLI_T_SWITCH, /* no value: sets a bool or int field to 1 (--x=false, or false in a config
                     file, to 0) */
    CLI_T_BOOL,   /* true|false (or 1|0) into a bool or int field */
    CLI_T_INT,    /* an integer in [ilo, ihi] into an int, long or int64_t field */
    CLI_T_FLOAT,  /* a number in [flo, fhi] (flo excluded when lo_open) into a float or double */
    CLI_T_STRING, /* a text into a const char * field */
    CLI_T_ENUM,   /* one of choices ("a|b|c") into a const char * field */
    CLI_T_LIST,   /* a text, repeatable up to max times: appended to a cli_list field */
    CLI_T_CUSTOM, /* a text that parse reads into the field (repeatable up to max times) */
    CLI_T_CONFIG, /* a JSON file of this command's settings, applied before the command line
                     (keys: the long names without "--", '-' or '_'): a cli_config field */
    CLI_T_GROUP,  /* the rows of group, their fields inside the field at offset */
    CLI_T_MORE,   /* the place in --help of the flags the command's cli_more hook takes */
} cli_type;

/* Reads value (of the flag spelled flag, e.g. "--adapter") into field; false with a message
 * of n bytes in msg that names the flag. */
typedef bool cli_parse_fn(void *field, const char *flag, const char *value, char *msg, size_t n);

/* One flag of a command. Write rows with the CLI_ macros below. */
typedef struct cli_flag {
    const char *flags; /* its spellings as --help shows them: "-m, --model", "--learning-rate,
                          --lr"; the first long one names it in a config file */
    cli_type type;
    const char *arg;     /* the value's placeholder in --help (FILE, N); CLI_T_ENUM: choices */
    long ilo, ihi;       /* CLI_T_INT: the range */
    double flo, fhi;     /* CLI_T_FLOAT: the range */
    bool lo_open;        /* CLI_T_FLOAT: flo itself is out of range */
    bool optional;       /* CLI_T_STRING: the value may be left out ("" then): it is the next
                            argument only when that does not start with '-' */
    bool positional;     /* CLI_T_STRING: the command's positional argument is this setting */
    const char *choices; /* CLI_T_ENUM: the values, "a|b|c" */
    int max;             /* CLI_T_LIST, CLI_T_CUSTOM: times it may be given (0: once) */
    cli_parse_fn *parse; /* CLI_T_CUSTOM */
    const struct cli_flag *group; /* CLI_T_GROUP: its rows */
    size_t offset, size;          /* where the value goes in the command's struct, and its size */
    const char *help;             /* --help's text: one or more lines, '\n' between them */
} cli_flag;

/* A command's table fills one struct; a file defines CLI_DST as that struct's type before
 * its rows. */
#define CLI_AT(f) .offset = offsetof(CLI_DST, f), .size = sizeof(((CLI_DST *)0)->f)
#define CLI_END                                                                                    \
    { .type = CLI_T_END }
#define CLI_TEXT(h)                                                                                \
    { .type = CLI_T_TEXT, .help = (h) }
#define CLI_SWITCH(fl, f, h)                                                                       \
    { .flags = (fl), .type = CLI_T_SWITCH, CLI_AT(f), .help = (h) }
#define CLI_BOOL(fl, f, h)                                                                         \
    { .flags = (fl), .type = CLI_T_BOOL, .arg = "true|false", CLI_AT(f), .help = (h) }
#define CLI_INT(fl, a, lo, hi, f, h)                                                               \
    {                                                                                              \
        .flags = (fl), .type = CLI_T_INT, .arg = (a), .ilo = (lo), .ihi = (hi), CLI_AT(f),         \
        .help = (h)                                                                                \
    }
#define CLI_FLOAT(fl, a, lo, hi, f, h)                                                             \
    {                                                                                              \
        .flags = (fl), .type = CLI_T_FLOAT, .arg = (a), .flo = (lo), .fhi = (hi), CLI_AT(f),       \
        .help = (h)                                                                                \
    }
/* A number in (lo, hi]. */
#define CLI_FLOAT_OPEN(fl, a, lo, hi, f, h)                                                        \
    {                                                                                              \
        .flags = (fl), .type = CLI_T_FLOAT, .arg = (a), .flo = (lo), .fhi = (hi), .lo_open = true, \
        CLI_AT(f), .help = (h)                                                                     \
    }
#define CLI_STRING(fl, a, f, h)                                                                    \
    { .flags = (fl), .type = CLI_T_STRING, .arg = (a), CLI_AT(f), .help = (h) }
/* A text that may be left out: the field is "" then. */
#define CLI_STRING_OPT(fl, a, f, h)                                                                \
    { .flags = (fl), .type = CLI_T_STRING, .arg = (a), .optional = true, CLI_AT(f), .help = (h) }
/* The command's positional argument, also given as the flag fl (NULL: positional only). */
#define CLI_POSITIONAL(fl, a, f, h)                                                                \
    { .flags = (fl), .type = CLI_T_STRING, .arg = (a), .positional = true, CLI_AT(f), .help = (h) }
#define CLI_ENUM(fl, ch, f, h)                                                                     \
    { .flags = (fl), .type = CLI_T_ENUM, .arg = (ch), .choices = (ch), CLI_AT(f), .help = (h) }
#define CLI_LIST(fl, a, m, f, h)                                                                   \
    { .flags = (fl), .type = CLI_T_LIST, .arg = (a), .max = (m), CLI_AT(f), .help = (h) }
#define CLI_CUSTOM(fl, a, m, fn, f, h)                                                             \
    {                                                                                              \
        .flags = (fl), .type = CLI_T_CUSTOM, .arg = (a), .max = (m), .parse = (fn), CLI_AT(f),     \
        .help = (h)                                                                                \
    }
#define CLI_CONFIG(fl, a, f, h)                                                                    \
    { .flags = (fl), .type = CLI_T_CONFIG, .arg = (a), CLI_AT(f), .help = (h) }
#define CLI_GROUP(g, f)                                                                            \
    { .type = CLI_T_GROUP, .group = (g), CLI_AT(f) }
#define CLI_MORE                                                                                   \
    { .type = CLI_T_MORE }

/* The values of a CLI_T_LIST flag, in the order given. */
enum { CLI_LIST_MAX = 64 };
typedef struct {
    const char *v[CLI_LIST_MAX];
    int n;
} cli_list;

/* A CLI_T_CONFIG flag's file, kept while the settings point into it. */
typedef struct {
    void *doc; /* the JSON document (jansson), or NULL */
} cli_config;
/* Frees the document; the settings read from it are invalid afterwards. */
void cli_config_free(cli_config *c);

/* Flags that are not rows of the table (finch train's method options come from the
 * library's method table). */
typedef struct {
    /* For name as given, without its dashes: 0 when it is no such flag, 1 when it takes a
     * value, 2 when it is a switch. */
    int (*kind)(const char *name);
    /* Applies it: name without dashes, '_' made '-' (valid during the call only); value
     * NULL for a switch set; where is "" or "FILE: " for a config file. false with a
     * message of n bytes in msg. */
    bool (*set)(void *dst, const char *name, const char *value, const char *where, char *msg,
                size_t n);
    /* Prints their --help lines (at the table's CLI_MORE row), with cli_help_line and
     * width where they can. */
    void (*help)(FILE *f, int width);
} cli_more;

/* A command's command line. */
typedef struct {
    const char *name;      /* "train": names the command in messages */
    const char *usage;     /* the first lines of --help, each ending with '\n' */
    const cli_flag *flags; /* its table, ending with CLI_END */
    const char *epilog;    /* the last lines of --help, or NULL */
    const cli_more *more;  /* flags outside the table, or NULL */
} cli_command;

/* What cli_parse returns when the command should go on and run. */
enum { CLI_RUN = -1 };

/* Reads argv[1..argc) into dst (set to its defaults by the caller) by cmd's table: flags
 * as --name VALUE, --name=VALUE or -x VALUE, in any order, each at most once unless
 * repeatable; positional arguments; "--" ends the flags. A config file (CLI_T_CONFIG) is
 * applied first, the command line then overrides it (a repeatable flag's values replace
 * the file's). Returns CLI_RUN, 0 after -h/--help (the help printed on stdout), or the exit
 * code of an error, printed ("finch CMD: error: ..."). */
int cli_parse(const cli_command *cmd, int argc, char **argv, void *dst);
/* cli_parse without printing: FINCH_OK, with *help set when -h/--help was given; otherwise
 * the error in err: FINCH_E_USAGE for a flag or setting, FINCH_E_FORMAT for a config file
 * that is not an object of settings. */
finch_status cli_args_read(const cli_command *cmd, int argc, char **argv, void *dst, bool *help,
                           finch_err *err);
/* Prints cmd's --help, made from its table, to f. */
void cli_help_print(const cli_command *cmd, FILE *f);
/* Prints one line of --help: left (a flag and its value) in a column of width, then help,
 * whose lines ('\n' between them) continue below each other. */
void cli_help_line(FILE *f, int width, const char *left, const char *help);

/* ---- what several commands share ------------------------------------------------------- */

/* Loads the model at path, or the default model when path is NULL. On failure prints
 * the error (with what to do for a missing default model) and returns NULL. */
finch_model *cli_load_model(const char *path);

/* The model's loading flags: QLoRA's, named as transformers' BitsAndBytesConfig names
 * them: --load-in-4bit, --bnb-4bit-use-double-quant true|false (default true, as QLoRA),
 * --bnb-4bit-quant-type nf4 (fp4 is refused: not implemented); and --device cpu|cuda,
 * where the model computes (finch_model_to_device). */
typedef struct {
    bool load_in_4bit;
    bool double_quant;
    const char *quant_type;
    const char *device;
} cli_quant;
#define CLI_QUANT_DEFAULTS                                                                         \
    { false, true, "nf4", "cpu" }
/* Their rows, for a CLI_GROUP over a cli_quant field. */
extern const cli_flag cli_quant_flags[];

/* The device check, cli_load_model, the 4-bit quantization when q asks for it, then the
 * model onto the device; NULL (error printed) on failure. */
finch_model *cli_load_model_quant(const char *path, const cli_quant *q);

/* Adapters given as --adapter DIR[:WEIGHT] (weight 1 when absent), at most 8. */
typedef struct {
    char dir[8][4096]; /* the adapter directories, weights split off */
    float weight[8];
    int n;
    finch_adapter *loaded[8];
} cli_adapters;

/* Reads one --adapter value into a cli_adapters field (a cli_parse_fn). */
bool cli_adapter_parse(void *field, const char *flag, const char *value, char *msg, size_t n);
/* Loads and attaches them all; prints the error and returns false on failure. */
bool cli_adapters_attach(cli_adapters *a, finch_model *m);
/* Detaches and frees them. */
void cli_adapters_release(cli_adapters *a, finch_model *m);

/* The choices of --numerics, and the mode one of them names. */
#define CLI_NUMERICS "exact|llamacpp|bf16"
finch_numerics cli_numerics(const char *name);

/* The metrics of a generation's score, as --metrics names them: rouge, bleu, em, f1. */
enum { CLI_METRIC_ROUGE = 1, CLI_METRIC_BLEU = 2, CLI_METRIC_EM = 4, CLI_METRIC_F1 = 8 };
/* Reads --metrics LIST (comma-separated) into an int field of CLI_METRIC_ bits (a
 * cli_parse_fn); a list without a metric is refused. */
bool cli_metrics_parse(void *field, const char *flag, const char *value, char *msg, size_t n);

/* The one rule for results as JSON, in every command that has them: --json prints the JSON
 * document on stdout, and the text for people goes to stderr instead; --json-out FILE
 * writes it to FILE atomically. Both may be given. --json FILE is read as --json-out FILE
 * (finch eval's old spelling; unambiguous, as no such command takes a positional
 * argument), with a warning. */
typedef struct {
    const char *json;     /* --json: NULL when not given, "" to print, else a FILE */
    const char *json_out; /* --json-out FILE, or NULL */
} cli_json;
/* Their rows, for a CLI_GROUP over a cli_json field. */
extern const cli_flag cli_json_flags[];
/* After parsing: takes --json FILE as --json-out FILE (a warning printed). CLI_RUN, or
 * EXIT_USAGE (printed) when both name a file. */
int cli_json_check(const char *cmd, cli_json *j);
/* Where the text for people goes: stderr when the JSON goes to stdout, else stdout. */
FILE *cli_json_text(const cli_json *j);
/* Emits the JSON text (len bytes, a newline added): on stdout and/or to the file. 0, or
 * EXIT_FAIL with the error printed. */
int cli_json_emit(const char *cmd, const cli_json *j, const char *text, size_t len);

/* The row of -t/--threads N into a long field (0, the default: FINCH_THREADS, else the
 * machine's cores). */
#define CLI_THREADS(f)                                                                             \
    CLI_INT("-t, --threads", "N", 1, 1024, f, "threads (default: FINCH_THREADS, else all cores)")
/* Applies --threads (or FINCH_THREADS, else 2... the machine's cores). */
void cli_set_threads(long n);

/* A progress line on stderr for a loop over `total` items: on a terminal a bar redrawn in
 * place (done/total, rate, time left) at most ten times a second; otherwise nothing until
 * cli_progress_end prints one plain summary line. */
typedef struct {
    const char *label; /* what runs, e.g. "eval base" */
    int64_t total, done;
    double t0, last_draw; /* seconds (monotonic clock) */
    bool tty;
} cli_progress;

void cli_progress_begin(cli_progress *p, const char *label, int64_t total);
void cli_progress_update(cli_progress *p, int64_t done);
/* Ends the line (terminal) or prints "label: N items in T s (R/s)" (otherwise). */
void cli_progress_end(cli_progress *p);

int cmd_info(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_export(int argc, char **argv);
/* mkdir -p dir: 0, or -1 with errno set and the folder that could not be made in failed
 * (n bytes; may be NULL). */
int cli_mkdir_p(const char *dir, char *failed, size_t n);

int cmd_report(int argc, char **argv);
int cmd_compare(int argc, char **argv);

#endif /* FINCH_CLI_H */
