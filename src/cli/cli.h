/*
 * cli.h: shared pieces of the finch command line: flag parsing with range checks, the
 * model path resolution, error reporting. The CLI sees only include/finch.h.
 */
#ifndef FINCH_CLI_H
#define FINCH_CLI_H

#include "finch.h"

#include <stdbool.h>

/* Exit codes: 2 for usage errors, 1 for everything else. */
enum { EXIT_USAGE = 2, EXIT_FAIL = 1 };

/* Prints "finch: error: <msg>" on stderr and returns the exit code for code. */
int cli_fail(const finch_err *err);
/* Prints a usage error ("finch <cmd>: ...") and returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict number parsing: the whole string, in [lo, hi]. false on anything else. */
bool cli_parse_int(const char *s, long lo, long hi, long *out);
bool cli_parse_float(const char *s, double lo, double hi, double *out);

/* The value of flag argv[*i] (advancing *i), or NULL with a usage message printed. */
const char *cli_flag_value(const char *cmd, int argc, char **argv, int *i);

/* Loads the model at path, or the default model when path is NULL. On failure prints
 * the error (with what to do for a missing default model) and returns NULL. */
finch_model *cli_load_model(const char *path);

/* QLoRA's loading flags, named as transformers' BitsAndBytesConfig names them:
 * --load-in-4bit, --bnb-4bit-use-double-quant true|false (default true, as QLoRA),
 * --bnb-4bit-quant-type nf4 (fp4 is refused: not implemented). */
typedef struct {
    bool load_in_4bit;
    bool double_quant;
    const char *quant_type;
} cli_quant;
#define CLI_QUANT_DEFAULTS                                                                         \
    { false, true, "nf4" }

/* Applies one of those flags, key without its dashes ('_' or '-'), v NULL for the switch:
 * 1 when key is one of them, 0 when it is not, -1 when its value is bad (a usage error
 * printed). */
int cli_quant_set(const char *cmd, cli_quant *q, const char *key, const char *v);
/* Whether key (without dashes) is the switch --load-in-4bit. */
bool cli_quant_is_switch(const char *key);
/* cli_load_model, then the 4-bit quantization when q asks for it; NULL (error printed) on
 * failure. */
finch_model *cli_load_model_quant(const char *path, const cli_quant *q);

/* Adapters given as --adapter DIR[:WEIGHT] (weight 1 when absent), at most 8. */
typedef struct {
    char dir[8][4096]; /* the adapter directories, weights split off */
    float weight[8];
    int n;
    finch_adapter *loaded[8];
} cli_adapters;

/* Records one --adapter value; a usage error (printed) returns false. */
bool cli_adapter_add(cli_adapters *a, const char *cmd, const char *value);
/* Loads and attaches them all; prints the error and returns false on failure. */
bool cli_adapters_attach(cli_adapters *a, finch_model *m);
/* Detaches and frees them. */
void cli_adapters_release(cli_adapters *a, finch_model *m);

/* --numerics MODE and --threads N, shared by the commands that run a model: false (a
 * usage error printed) on a bad value. */
bool cli_parse_numerics(const char *cmd, const char *v, finch_numerics *out);
bool cli_parse_threads(const char *cmd, const char *v, long *out);

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
int cmd_export(int argc, char **argv);
/* mkdir -p dir: 0, or -1 with errno set and the folder that could not be made in failed
 * (n bytes; may be NULL). */
int cli_mkdir_p(const char *dir, char *failed, size_t n);

int cmd_report(int argc, char **argv);
int cmd_compare(int argc, char **argv);

#endif /* FINCH_CLI_H */
