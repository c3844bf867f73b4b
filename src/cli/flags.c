/*
 * flags.c: what several subcommands share: strict number parsing, error reporting, the
 * flag rows and values of model loading (QLoRA's flags, adapters, numerics, threads),
 * --metrics, and the one rule for results as JSON (--json, --json-out).
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

/* --bnb-4bit-quant-type: nf4 (fp4 is QLoRA's other type, not implemented here). */
static bool quant_type_parse(void *field, const char *flag, const char *v, char *msg, size_t n) {
    if (!strcmp(v, "nf4")) {
        *(const char **)field = "nf4";
        return true;
    }
    if (!strcmp(v, "fp4"))
        snprintf(msg, n,
                 "%s fp4: not implemented; finch quantizes to nf4 only (the QLoRA recipe's "
                 "type)",
                 flag);
    else
        snprintf(msg, n, "%s %s: must be nf4", flag, v);
    return false;
}

#define CLI_DST cli_quant
const cli_flag cli_quant_flags[] = {
    CLI_SWITCH("--load-in-4bit", load_in_4bit,
               "QLoRA: quantize the base's projections to NF4 at load (an f32,\nf16 or bf16 base)"),
    CLI_BOOL("--bnb-4bit-use-double-quant", double_quant,
             "quantize the NF4 blocks' scales too (default true, as QLoRA)"),
    CLI_CUSTOM("--bnb-4bit-quant-type", "nf4", 0, quant_type_parse, quant_type,
               "the 4-bit type: nf4 (the default; fp4 is not implemented)"),
    CLI_ENUM("--device", "cpu|cuda", device,
             "where the model computes: cpu (the default) or cuda (LoRA and\n(IA)^3; "
             "exact numerics)"),
    CLI_END};
#undef CLI_DST

finch_model *cli_load_model_quant(const char *path, const cli_quant *q) {
    finch_err err;
    if (finch_device_check(q->device, &err)) {
        fprintf(stderr, "finch: error: --device %s: %s\n", q->device, err.msg);
        return NULL;
    }
    finch_model *m = cli_load_model(path);
    if (!m) return NULL;
    if ((q->load_in_4bit && finch_model_load_in_4bit(m, q->quant_type, q->double_quant, &err)) ||
        finch_model_to_device(m, q->device, &err)) {
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

bool cli_adapter_parse(void *field, const char *flag, const char *value, char *msg, size_t n) {
    cli_adapters *a = field;
    if (a->n == 8) return snprintf(msg, n, "%s: at most 8 adapters", flag), false;
    char *dir = a->dir[a->n];
    if (snprintf(dir, sizeof a->dir[0], "%s", value) >= (int)sizeof a->dir[0])
        return snprintf(msg, n, "%s %.64s...: path too long", flag, value), false;
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

finch_numerics cli_numerics(const char *name) {
    return !strcmp(name, "llamacpp") ? FINCH_NUMERICS_LLAMACPP
           : !strcmp(name, "bf16")   ? FINCH_NUMERICS_BF16
                                     : FINCH_NUMERICS_EXACT;
}

bool cli_metrics_parse(void *field, const char *flag, const char *value, char *msg, size_t n) {
    static const struct {
        const char *name;
        int bit;
    } known[] = {{"rouge", CLI_METRIC_ROUGE},
                 {"bleu", CLI_METRIC_BLEU},
                 {"em", CLI_METRIC_EM},
                 {"f1", CLI_METRIC_F1}};
    int m = 0;
    for (const char *p = value; *p;) {
        size_t k = strcspn(p, ",");
        int bit = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strlen(known[i].name) == k && !strncmp(known[i].name, p, k)) bit = known[i].bit;
        if (!bit && k)
            return snprintf(msg, n, "%s: unknown metric '%.*s' (known: rouge, bleu, em, f1)", flag,
                            (int)k, p),
                   false;
        m |= bit;
        p += k + (p[k] == ',');
    }
    if (!m) return snprintf(msg, n, "%s '%s' names no metric", flag, value), false;
    *(int *)field = m;
    return true;
}

#define CLI_DST cli_json
const cli_flag cli_json_flags[] = {
    CLI_STRING_OPT("--json", NULL, json,
                   "print the results as one JSON document on stdout (the text for\n"
                   "people goes to stderr)"),
    CLI_STRING("--json-out", "FILE", json_out, "write the results as JSON to FILE (atomically)"),
    CLI_END};
#undef CLI_DST

int cli_json_check(const char *cmd, cli_json *j) {
    if (!j->json || !*j->json) return CLI_RUN;
    if (j->json_out)
        return cli_usage_error(cmd,
                               "--json %s and --json-out %s: give the file once, with "
                               "--json-out",
                               j->json, j->json_out);
    fprintf(stderr,
            "finch %s: warning: --json FILE is read as --json-out FILE (the old spelling); "
            "--json alone prints the JSON on stdout\n",
            cmd);
    j->json_out = j->json;
    j->json = NULL;
    return CLI_RUN;
}

FILE *cli_json_text(const cli_json *j) {
    return j->json ? stderr : stdout;
}

int cli_json_emit(const char *cmd, const cli_json *j, const char *text, size_t len) {
    if (j->json) {
        fwrite(text, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (!j->json_out) return 0;
    char *buf = malloc(len + 1);
    if (!buf) {
        fprintf(stderr, "finch: error: %s: out of memory\n", j->json_out);
        return EXIT_FAIL;
    }
    memcpy(buf, text, len);
    buf[len] = '\n';
    finch_err err;
    finch_status st = finch_eval_write_file(j->json_out, buf, len + 1, &err);
    free(buf);
    if (st) return cli_fail(&err);
    fprintf(stderr, "finch %s: wrote %s\n", cmd, j->json_out);
    return 0;
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
