/*
 * flags.c: strict flag values, model loading and error reporting shared by subcommands.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cli_fail(const finch_err *err) {
    fprintf(stderr, "finch: error: %s\n", err->msg);
    return err->code == FINCH_E_USAGE ? EXIT_USAGE : EXIT_FAIL;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "finch %s: error: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return EXIT_USAGE;
}

bool cli_parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

const char *cli_flag_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_usage_error(cmd, "%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

finch_model *cli_load_model(const char *path) {
    char def[4096];
    finch_err err;
    if (!path) {
        if (finch_default_model_path(def, sizeof def, &err)) {
            cli_fail(&err);
            return NULL;
        }
        if (access(def, R_OK) != 0) {
            fprintf(stderr,
                    "finch: error: no model given and the default model is not at %s: run "
                    "scripts/setup.sh to fetch it, or pass -m MODEL.gguf\n",
                    def);
            return NULL;
        }
        path = def;
    }
    finch_model *m;
    if (finch_model_load(path, &m, &err)) {
        cli_fail(&err);
        return NULL;
    }
    return m;
}

static bool key_is(const char *key, const char *name) {
    for (; *key && *name; key++, name++)
        if (*key != *name && !(*key == '_' && *name == '-')) return false;
    return !*key && !*name;
}

bool cli_quant_is_switch(const char *key) {
    return key_is(key, "load-in-4bit");
}

int cli_quant_set(const char *cmd, cli_quant *q, const char *key, const char *v) {
    if (key_is(key, "load-in-4bit")) {
        q->load_in_4bit = true;
        return 1;
    }
    if (key_is(key, "bnb-4bit-use-double-quant")) {
        if (v && (!strcmp(v, "true") || !strcmp(v, "1")))
            q->double_quant = true;
        else if (v && (!strcmp(v, "false") || !strcmp(v, "0")))
            q->double_quant = false;
        else
            return cli_usage_error(cmd, "--bnb-4bit-use-double-quant %s: must be true or false",
                                   v ? v : "(none)"),
                   -1;
        return 1;
    }
    if (key_is(key, "bnb-4bit-quant-type")) {
        if (v && !strcmp(v, "nf4")) {
            q->quant_type = "nf4";
            return 1;
        }
        if (v && !strcmp(v, "fp4"))
            return cli_usage_error(cmd, "--bnb-4bit-quant-type fp4: not implemented; finch "
                                        "quantizes to nf4 only (the QLoRA recipe's type)"),
                   -1;
        return cli_usage_error(cmd, "--bnb-4bit-quant-type %s: must be nf4", v ? v : "(none)"), -1;
    }
    return 0;
}

finch_model *cli_load_model_quant(const char *path, const cli_quant *q) {
    finch_model *m = cli_load_model(path);
    if (!m || !q->load_in_4bit) return m;
    finch_err err;
    if (finch_model_load_in_4bit(m, q->quant_type, q->double_quant, &err)) {
        cli_fail(&err);
        finch_model_free(m);
        return NULL;
    }
    return m;
}

void cli_set_threads(long n) {
    if (n <= 0) {
        const char *env = getenv("FINCH_THREADS");
        long v;
        if (env && cli_parse_int(env, 1, 1024, &v))
            n = v;
        else
            n = sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1) n = 1;
    }
    finch_threads_set((int)n);
}

bool cli_adapter_add(cli_adapters *a, const char *cmd, const char *value) {
    if (a->n == 8) {
        cli_usage_error(cmd, "--adapter: at most 8 adapters");
        return false;
    }
    char *dir = a->dir[a->n];
    if (snprintf(dir, sizeof a->dir[0], "%s", value) >= (int)sizeof a->dir[0]) {
        cli_usage_error(cmd, "--adapter %.64s...: path too long", value);
        return false;
    }
    double w = 1.0;
    char *colon = strrchr(dir, ':');
    if (colon && cli_parse_float(colon + 1, -100, 100, &w))
        *colon = 0;
    else
        w = 1.0;
    a->weight[a->n++] = (float)w;
    return true;
}

bool cli_adapters_attach(cli_adapters *a, finch_model *m) {
    for (int i = 0; i < a->n; i++) {
        finch_err err;
        if (finch_adapter_load(m, a->dir[i], &a->loaded[i], &err) ||
            finch_adapter_attach(m, a->loaded[i], a->weight[i], &err)) {
            cli_fail(&err);
            return false;
        }
    }
    return true;
}

void cli_adapters_release(cli_adapters *a, finch_model *m) {
    for (int i = 0; i < a->n; i++)
        if (a->loaded[i]) {
            finch_adapter_detach(m, a->loaded[i]);
            finch_adapter_free(a->loaded[i]);
            a->loaded[i] = NULL;
        }
}

bool cli_parse_numerics(const char *cmd, const char *v, finch_numerics *out) {
    if (!strcmp(v, "exact"))
        *out = FINCH_NUMERICS_EXACT;
    else if (!strcmp(v, "llamacpp"))
        *out = FINCH_NUMERICS_LLAMACPP;
    else
        return cli_usage_error(cmd, "--numerics %s: must be 'exact' or 'llamacpp'", v), false;
    return true;
}

bool cli_parse_threads(const char *cmd, const char *v, long *out) {
    if (!cli_parse_int(v, 1, 1024, out))
        return cli_usage_error(cmd, "--threads %s: must be from 1 to 1024", v), false;
    return true;
}

int cli_mkdir_p(const char *dir, char *failed, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (size_t i = 1, len = strlen(path); i <= len; i++)
        if (path[i] == '/' || !path[i]) {
            char was = path[i];
            path[i] = 0;
            if (mkdir(path, 0777) && errno != EEXIST) {
                if (failed) snprintf(failed, n, "%s", path);
                return -1;
            }
            path[i] = was;
        }
    return 0;
}
