/*
 * cmd_compare.c: `finch compare-methods`: trains several methods on one dataset with one
 * budget (steps, batch, sequence length, seed; each method's usual learning rate unless
 * --lr METHOD=X), evaluates each like `finch eval` (the task: validation loss, or
 * generations on --test scored by ROUGE-L; --general: the loss on a general set against
 * the base model's, for forgetting), and prints and writes one table (OUT/compare.json,
 * OUT/compare.md) and a page with every method's loss curve (OUT/report.html).
 *
 * Each training and evaluation runs as its own `finch` process (this executable), so each
 * method's peak RSS is its own (wait4), and a method that fails leaves its row marked and
 * the others run.
 */
#define _DEFAULT_SOURCE /* wait4 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const struct {
    const char *name;
    double lr;
} default_lr[] = {{"lora", 1e-3},   {"dora", 1e-3},   {"ia3", 1e-2},
                  {"prompt", 3e-2}, {"prefix", 1e-2}, {"adapter", 1e-3},
                  {"bitfit", 5e-3}, {"freeze", 2e-4}, {"full", 5e-5}};

enum { MAX_METHODS = 16 };

/* --methods LIST, split in place. */
typedef struct {
    char buf[512];
    char *v[MAX_METHODS];
    int n;
} methods_t;

/* The --lr METHOD=X given, in order (a later one wins). */
typedef struct {
    const char *name[MAX_METHODS];
    double value[MAX_METHODS];
    int n;
} lrs_t;

typedef struct {
    const char *model, *data, *val, *test, *general, *out;
    methods_t methods;
    lrs_t lr;
    long steps, batch, seq_len, eval_n, seed, threads;
    bool chat;
    cli_json json;
} args_t;

/* ---- running finch ---------------------------------------------------------------------- */

/* Runs argv (this executable) with stdout and stderr to log; returns its exit status (or
 * -1 when it could not start or died by a signal), its peak RSS in MB in *rss_mb. */
static int run_finch(char **argv, const char *log, double *rss_mb) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int e = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e) {
        fprintf(stderr, "finch: error: cannot start finch: %s\n", strerror(e));
        return -1;
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0)
        if (errno != EINTR) return -1;
    if (rss_mb) *rss_mb = (double)ru.ru_maxrss / 1024.0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The last line of a log that says "error", for the table. */
static char *log_error(const char *log) {
    FILE *f = fopen(log, "r");
    char line[1024], *found = NULL;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "error")) {
            free(found);
            line[strcspn(line, "\n")] = 0;
            found = strdup(line);
        }
    if (f) fclose(f);
    return found ? found : strdup("failed (see its log)");
}

/* ---- reading what a run wrote ----------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median tokens/s of the run's steps and its last validation loss (NAN when none). */
static void read_metrics(const char *dir, double *tps, double *val) {
    char path[4200], line[4096];
    snprintf(path, sizeof path, "%.3900s/metrics.jsonl", dir);
    *tps = *val = NAN;
    FILE *f = fopen(path, "r");
    if (!f) return;
    double v[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *t = json_object_get(j, "tokens_per_s"), *vl = json_object_get(j, "val_loss");
        if (json_is_number(t) && n < 4096) v[n++] = json_number_value(t);
        if (json_is_number(vl)) *val = json_number_value(vl);
        json_decref(j);
    }
    fclose(f);
    if (n) {
        qsort(v, (size_t)n, sizeof *v, cmp_double);
        *tps = v[n / 2];
    }
}

/* Bytes of the result: the adapter's files, or the GGUF model (its Hugging Face folder is
 * the same weights again). */
static double result_bytes(const char *dir) {
    char cmd_path[4200];
    double total = 0;
    const char *names[] = {"adapter_model.safetensors", "adapter.safetensors",
                           "adapter_config.json", "model.gguf"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        struct stat sb;
        snprintf(cmd_path, sizeof cmd_path, "%.3900s/%s", dir, names[i]);
        if (stat(cmd_path, &sb) == 0) total += (double)sb.st_size;
    }
    return total;
}

/* The value key of the evaluation file's metrics entry for the data set data (NAN). */
static double eval_value(json_t *ev, const char *data, const char *key) {
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(ev, "metrics"), i, m) {
        const char *d = json_string_value(json_object_get(m, "data"));
        json_t *v = json_object_get(m, key);
        if (d && !strcmp(d, data) && json_is_number(v)) return json_number_value(v);
    }
    return NAN;
}

/* ---- arguments -------------------------------------------------------------------------- */

static bool known_method(const char *m) {
    for (size_t i = 0; i < sizeof default_lr / sizeof *default_lr; i++)
        if (!strcmp(default_lr[i].name, m)) return true;
    return false;
}

static bool methods_parse(void *field, const char *flag, const char *v, char *msg, size_t n) {
    methods_t *m = field;
    if (snprintf(m->buf, sizeof m->buf, "%s", v) >= (int)sizeof m->buf)
        return snprintf(msg, n, "%s: the list is too long", flag), false;
    m->n = 0;
    for (char *save = NULL, *t = strtok_r(m->buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!known_method(t))
            return snprintf(msg, n,
                            "%s: unknown method '%s' (finch compares lora, dora, ia3, prompt, "
                            "prefix, adapter, bitfit, freeze, full)",
                            flag, t),
                   false;
        for (int i = 0; i < m->n; i++)
            if (!strcmp(m->v[i], t))
                return snprintf(msg, n, "%s: '%s' is listed twice", flag, t), false;
        if (m->n == MAX_METHODS)
            return snprintf(msg, n, "%s: at most %d", flag, MAX_METHODS), false;
        m->v[m->n++] = t;
    }
    if (!m->n) return snprintf(msg, n, "%s: the list is empty", flag), false;
    return true;
}

static bool lr_parse(void *field, const char *flag, const char *v, char *msg, size_t n) {
    lrs_t *l = field;
    const char *eq = strchr(v, '=');
    char *end = NULL;
    double x = eq ? strtod(eq + 1, &end) : NAN;
    char name[32];
    snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - v) : 0, v);
    if (!eq || !known_method(name) || end == eq + 1 || *end || !(x > 0 && x < 10))
        return snprintf(msg, n, "%s %s: give METHOD=X with a known method and 0 < X < 10", flag, v),
               false;
    for (size_t k = 0; k < sizeof default_lr / sizeof *default_lr; k++)
        if (!strcmp(default_lr[k].name, name)) l->name[l->n] = default_lr[k].name;
    l->value[l->n++] = x;
    return true;
}

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_STRING("-m, --model", "FILE", model,
               "the model (default: the cached SmolLM2-135M-Instruct)"),
    CLI_STRING("--data", "FILE", data, "training JSONL"),
    CLI_STRING("--val", "FILE", val, "validation JSONL (default: 10% of --data)"),
    CLI_STRING("--test", "FILE", test,
               "generate on it and score ROUGE-L (default: the task is loss)"),
    CLI_STRING("--general", "FILE", general,
               "a general set: its loss change against the base (forgetting)"),
    CLI_CUSTOM("--methods", "LIST", 0, methods_parse, methods,
               "default lora,dora,ia3,prompt,prefix,adapter,bitfit,freeze,full"),
    CLI_CUSTOM("--lr", "METHOD=X", MAX_METHODS, lr_parse, lr,
               "a method's learning rate (repeatable; defaults: lora, dora,\n"
               "adapter 1e-3; ia3, prefix 1e-2; prompt 3e-2; bitfit 5e-3;\n"
               "freeze 2e-4; full 5e-5)"),
    CLI_INT("--max-steps", "N", 1, 1000000, steps, "steps per method (default 30)"),
    CLI_INT("--batch-size", "N", 1, 4096, batch, "(default 8)"),
    CLI_INT("--max-seq-len", "N", 2, 1 << 20, seq_len, "tokens per example at most (default 256)"),
    CLI_INT("--eval-max-examples", "N", 1, 1 << 30, eval_n,
            "examples of --val, --test and --general scored (default 50)"),
    CLI_SWITCH("--chat", chat, "wrap prompts in the model's chat template"),
    CLI_INT("--seed", "S", 0, LONG_MAX, seed, "(default 42)"),
    CLI_THREADS(threads),
    CLI_STRING("--out", "DIR", out, "one folder per method, compare.json, compare.md, report.html"),
    CLI_GROUP(cli_json_flags, json),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "compare-methods",
    .usage = "usage: finch compare-methods --data FILE --out DIR [options]\n",
    .flags = flag_table,
    .epilog = "Methods run with these settings: lora and dora r 16, alpha 32 on all linear "
              "layers;\nprompt and prefix 20 virtual tokens; adapter houlsby; freeze the last "
              "fifth of the\nblocks; the others their defaults.\n"};

/* Reads the command line into a; CLI_RUN, or the exit code (0 after --help). */
static int parse_args(args_t *a, int argc, char **argv) {
    char msg[256];
    if (!methods_parse(&a->methods, "--methods",
                       "lora,dora,ia3,prompt,prefix,adapter,bitfit,freeze,full", msg, sizeof msg))
        return cli_usage_error("compare-methods", "%s", msg);
    int rc = cli_parse(&command, argc, argv, a);
    if (rc == CLI_RUN) rc = cli_json_check("compare-methods", &a->json);
    if (rc != CLI_RUN) return rc;
    if (!a->data) return cli_usage_error("compare-methods", "no training data: give --data FILE");
    if (!a->out) return cli_usage_error("compare-methods", "no output directory: give --out DIR");
    if (strlen(a->out) > 3800)
        return cli_usage_error("compare-methods", "--out: the path is too long");
    return CLI_RUN;
}

static double lr_of(const args_t *a, const char *m) {
    for (int i = a->lr.n - 1; i >= 0; i--)
        if (!strcmp(a->lr.name[i], m)) return a->lr.value[i];
    for (size_t k = 0; k < sizeof default_lr / sizeof *default_lr; k++)
        if (!strcmp(default_lr[k].name, m)) return default_lr[k].lr;
    return 1e-3;
}

/* ---- the runs --------------------------------------------------------------------------- */

typedef struct {
    char *v[64];
    int n;
    char owned[16][64];
    int n_owned;
} argv_t;

static void add(argv_t *x, const char *s) {
    if (x->n < 63) x->v[x->n++] = (char *)s;
    x->v[x->n] = NULL;
}

static const char *num(argv_t *x, double v) {
    char *b = x->owned[x->n_owned++ % 16];
    snprintf(b, 64, "%g", v);
    return b;
}

static const char *integer(argv_t *x, long v) {
    char *b = x->owned[x->n_owned++ % 16];
    snprintf(b, 64, "%ld", v);
    return b;
}

/* The evaluation of one system (adapter dir, or model file when is_model; neither: the
 * base) into json_path; 0 on success. */
static int evaluate(const args_t *a, const char *adapter, const char *model, const char *json_path,
                    const char *log) {
    argv_t x = {0};
    add(&x, "finch");
    add(&x, "eval");
    if (model || a->model) {
        add(&x, "-m");
        add(&x, model ? model : a->model);
    }
    add(&x, "--data");
    add(&x, a->test ? a->test : a->val ? a->val : a->data);
    add(&x, "--task");
    add(&x, a->test ? "generate" : "loss");
    if (a->test) {
        add(&x, "--metrics");
        add(&x, "rouge");
        add(&x, "--max-new-tokens");
        add(&x, "48");
    }
    add(&x, "--max-examples");
    add(&x, integer(&x, a->eval_n));
    if (a->general) {
        add(&x, "--general");
        add(&x, a->general);
        add(&x, "--general-max-examples");
        add(&x, integer(&x, a->eval_n));
    }
    if (a->chat) add(&x, "--chat");
    if (adapter) {
        add(&x, "--adapter");
        add(&x, adapter);
    }
    if (a->threads) {
        add(&x, "--threads");
        add(&x, integer(&x, a->threads));
    }
    add(&x, "--json-out");
    add(&x, json_path);
    return run_finch(x.v, log, NULL);
}

/* Trains method m into dir; 0 on success, its peak RSS in *rss. */
static int train(const args_t *a, const char *m, int n_layer, const char *dir, double *rss) {
    argv_t x = {0};
    char log[4200], layers[32];
    add(&x, "finch");
    add(&x, "train");
    if (a->model) {
        add(&x, "-m");
        add(&x, a->model);
    }
    add(&x, "--data");
    add(&x, a->data);
    if (a->val) {
        add(&x, "--val");
        add(&x, a->val);
    } else {
        add(&x, "--val-fraction");
        add(&x, "0.1");
    }
    add(&x, "--val-max-examples");
    add(&x, integer(&x, a->eval_n));
    add(&x, "--method");
    add(&x, m);
    if (!strcmp(m, "lora") || !strcmp(m, "dora")) {
        const char *extra[] = {"--target-modules", "all-linear", "--lora-r", "16",
                               "--lora-alpha",     "32"};
        for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) add(&x, extra[i]);
    } else if (!strcmp(m, "prompt") || !strcmp(m, "prefix")) {
        add(&x, "--num-virtual-tokens");
        add(&x, "20");
    } else if (!strcmp(m, "freeze")) {
        int k = n_layer / 5 > 0 ? n_layer / 5 : 1;
        snprintf(layers, sizeof layers, "%d-%d", n_layer - k, n_layer - 1);
        add(&x, "--layers");
        add(&x, layers);
    }
    add(&x, "--learning-rate");
    add(&x, num(&x, lr_of(a, m)));
    add(&x, "--batch-size");
    add(&x, integer(&x, a->batch));
    add(&x, "--max-steps");
    add(&x, integer(&x, a->steps));
    add(&x, "--warmup-steps");
    add(&x, integer(&x, a->steps / 10));
    add(&x, "--eval-steps");
    add(&x, integer(&x, a->steps));
    add(&x, "--save-steps");
    add(&x, "0");
    add(&x, "--max-seq-len");
    add(&x, integer(&x, a->seq_len));
    if (a->chat) add(&x, "--chat");
    add(&x, "--seed");
    add(&x, integer(&x, a->seed));
    if (a->threads) {
        add(&x, "--threads");
        add(&x, integer(&x, a->threads));
    }
    add(&x, "--out");
    add(&x, dir);
    snprintf(log, sizeof log, "%.3900s/train.log", dir);
    return run_finch(x.v, log, rss);
}

static json_t *num_or_null(double v) {
    return isfinite(v) ? json_real(v) : json_null();
}

static int mkdir_p(const char *dir) {
    char failed[4096];
    if (!cli_mkdir_p(dir, failed, sizeof failed)) return 0;
    fprintf(stderr, "finch: error: %s: cannot create: %s\n", failed, strerror(errno));
    return EXIT_FAIL;
}

int cmd_compare(int argc, char **argv) {
    args_t a = {.steps = 30, .batch = 8, .seq_len = 256, .eval_n = 50, .seed = 42};
    int rc = parse_args(&a, argc, argv);
    if (rc != CLI_RUN) return rc;
    if ((rc = mkdir_p(a.out))) return rc;
    /* the model's blocks (for freeze) and a check that it loads, before any run */
    finch_model *model = cli_load_model(a.model);
    if (!model) return EXIT_FAIL;
    finch_model_config cfg;
    finch_model_config_get(model, &cfg);
    finch_model_free(model);

    char path[4200], log[4200], dir[4200];
    const char *main_data = a.test ? a.test : a.val ? a.val : a.data;
    const char *metric = a.test ? "rougeL" : "loss";
    json_t *rows = json_array();
    double base_general = NAN;
    fprintf(stderr, "finch compare-methods: %d methods, %ld steps of %ld x %ld tokens each\n",
            a.methods.n, a.steps, a.batch, a.seq_len);
    snprintf(dir, sizeof dir, "%.3900s/base", a.out);
    snprintf(path, sizeof path, "%.3900s/base/eval.json", a.out);
    snprintf(log, sizeof log, "%.3900s/base/eval.log", a.out);
    if (!mkdir_p(dir) && evaluate(&a, NULL, NULL, path, log) == 0) {
        json_t *ev = json_load_file(path, 0, NULL);
        if (a.general) base_general = eval_value(ev, a.general, "loss");
        fprintf(stderr, "  base: %s %.4f\n", metric, eval_value(ev, main_data, metric));
        json_decref(ev);
    }
    int failed = 0;
    for (int i = 0; i < a.methods.n; i++) {
        const char *m = a.methods.v[i];
        snprintf(dir, sizeof dir, "%.3900s/%s", a.out, m);
        json_t *row =
            json_pack("{s:s, s:s, s:f}", "method", m, "out", dir, "learning_rate", lr_of(&a, m));
        json_array_append_new(rows, row);
        double rss = NAN;
        fprintf(stderr, "  %s: training (lr %g) ...\n", m, lr_of(&a, m));
        snprintf(log, sizeof log, "%.3900s/train.log", dir);
        if (mkdir_p(dir) || train(&a, m, cfg.n_layer, dir, &rss) != 0) {
            char *e = log_error(log);
            json_object_set_new(row, "error", json_string(e));
            fprintf(stderr, "  %s: %s\n", m, e);
            free(e);
            failed++;
            continue;
        }
        double tps, val;
        read_metrics(dir, &tps, &val);
        snprintf(path, sizeof path, "%.3900s/run.json", dir);
        json_t *run = json_load_file(path, 0, NULL);
        double nt = json_number_value(json_object_get(run, "trainable_params")),
               na = json_number_value(json_object_get(run, "total_params"));
        json_decref(run);
        json_object_set_new(row, "trainable_params", json_integer((json_int_t)nt));
        json_object_set_new(row, "trainable_percent", num_or_null(na > 0 ? 100 * nt / na : NAN));
        json_object_set_new(row, "size_bytes", json_real(result_bytes(dir)));
        json_object_set_new(row, "tokens_per_s", num_or_null(tps));
        json_object_set_new(row, "peak_rss_mb", num_or_null(rss));
        json_object_set_new(row, "val_loss", num_or_null(val));
        /* the result as a system of finch eval: an adapter folder, or a model */
        char model_file[4300];
        snprintf(model_file, sizeof model_file, "%.3900s/model.gguf", dir);
        bool is_model = access(model_file, F_OK) == 0;
        snprintf(path, sizeof path, "%.3900s/eval.json", dir);
        snprintf(log, sizeof log, "%.3900s/eval.log", dir);
        if (evaluate(&a, is_model ? NULL : dir, is_model ? model_file : NULL, path, log) != 0) {
            char *e = log_error(log);
            json_object_set_new(row, "error", json_string(e));
            free(e);
            failed++;
            continue;
        }
        json_t *ev = json_load_file(path, 0, NULL);
        double mv = eval_value(ev, main_data, metric),
               gl = a.general ? eval_value(ev, a.general, "loss") : NAN;
        json_decref(ev);
        json_object_set_new(row, "metric", num_or_null(mv));
        json_object_set_new(row, "general_loss_change", num_or_null(gl - base_general));
        fprintf(stderr, "  %s: val loss %.4f, %s %.4f, %.0f tok/s, peak %.0f MB\n", m, val, metric,
                mv, tps, rss);
    }

    char budget[256];
    snprintf(budget, sizeof budget,
             "%ld steps, batch %ld, up to %ld tokens per example, seed %ld; %ld examples scored",
             a.steps, a.batch, a.seq_len, a.seed, a.eval_n);
    char model_path[4096];
    finch_err err;
    if (a.model)
        snprintf(model_path, sizeof model_path, "%s", a.model);
    else if (finch_default_model_path(model_path, sizeof model_path, &err))
        model_path[0] = 0;
    json_t *root = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o}", "model", model_path, "data", a.data,
                             "task", a.test ? "generate" : "loss", "budget", budget, "metric",
                             a.test ? "ROUGE-L" : "loss", "rows", rows);
    if (a.general) json_object_set_new(root, "general_base_loss", num_or_null(base_general));
    snprintf(path, sizeof path, "%.3900s/compare.json", a.out);
    char *text = json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(8));
    if (!text || finch_eval_write_file(path, text, strlen(text), &err)) {
        rc = text ? cli_fail(&err) : EXIT_FAIL;
        free(text);
        json_decref(root);
        return rc;
    }
    rc = cli_json_emit("compare-methods", &a.json, text, strlen(text));
    free(text);

    /* the table: stdout (stderr with --json) and compare.md */
    FILE *out = cli_json_text(&a.json);
    FILE *mdf;
    snprintf(path, sizeof path, "%.3900s/compare.md", a.out);
    mdf = fopen(path, "w");
    const char *head =
        "| method | trainable | % | on disk | tokens/s | peak RSS MB | val loss | %s "
        "| general loss change |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    fprintf(out, head, a.test ? "ROUGE-L" : "task loss");
    if (mdf) fprintf(mdf, head, a.test ? "ROUGE-L" : "task loss");
    size_t k;
    json_t *row;
    json_array_foreach(rows, k, row) {
        char line[512], gen[32];
#define V(key) json_number_value(json_object_get(row, key))
        json_t *g = json_object_get(row, "general_loss_change");
        snprintf(gen, sizeof gen, json_is_number(g) ? "%+.4f" : "-", json_number_value(g));
        if (json_object_get(row, "error"))
            snprintf(line, sizeof line, "| %s | failed: %s |\n",
                     json_string_value(json_object_get(row, "method")),
                     json_string_value(json_object_get(row, "error")));
        else
            snprintf(line, sizeof line,
                     "| %s | %.0f | %.4f | %.1f MB | %.1f | %.0f | %.4f | %.4f | %s |\n",
                     json_string_value(json_object_get(row, "method")), V("trainable_params"),
                     V("trainable_percent"), V("size_bytes") / 1e6, V("tokens_per_s"),
                     V("peak_rss_mb"), V("val_loss"), V("metric"), gen);
#undef V
        fputs(line, out);
        if (mdf) fputs(line, mdf);
    }
    if (mdf) fclose(mdf);
    json_decref(root);
    snprintf(path, sizeof path, "%.3900s/compare.json", a.out);
    char html[4200];
    snprintf(html, sizeof html, "%.3900s/report.html", a.out);
    if (finch_report_compare(path, html, &err))
        rc = cli_fail(&err);
    else
        fprintf(stderr, "finch compare-methods: %s/compare.json, compare.md, report.html%s\n",
                a.out, failed ? "; some methods failed (their rows say why)" : "");
    if (!rc && failed) rc = EXIT_FAIL;
    return rc;
}
