/*
 * cmd_eval.c: `finch eval`: measures a model, with or without adapters, on a dataset.
 *   --task loss      mean cross-entropy and perplexity over the completion tokens
 *   --task generate  a completion per example, scored against the dataset's (ROUGE, BLEU,
 *                    exact match, token F1)
 *   --task classify  the most likely of a set of labels per example: accuracy, per-label
 *                    mean probabilities, confusion counts
 * Systems: the base model with all adapters attached, or with --compare the base model
 * alone and each adapter alone, side by side with deltas against the base. --general
 * runs a second dataset on the same systems (to see what fine-tuning cost elsewhere).
 * The results in the evaluation schema `finch report` reads: --json prints them on stdout
 * (the tables then go to stderr), --json-out FILE writes them.
 */
#include "cli.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_SYSTEMS = 9, MAX_ROWS = 16 };

typedef struct {
    char name[256];
    int adapters[8]; /* indices into the loaded adapters */
    int n_adapters;
} sys_t;

/* One dataset's results: metric rows x systems, for the table. */
typedef struct {
    const char *path, *task;
    const char *key[MAX_ROWS];
    double val[MAX_ROWS][MAX_SYSTEMS];
    int n_rows;
    int64_t n_examples;
} table_t;

typedef struct {
    finch_model *m;
    cli_adapters *ad;
    sys_t sys[MAX_SYSTEMS];
    int n_sys;
    finch_numerics numerics;
    int metrics, n_samples;
    finch_gen_options gen;
    finch_classify_options cls;
    json_t *j_metrics, *j_samples; /* NULL without --json or --json-out */
    FILE *out;                     /* the text for people: stdout, or stderr with --json */
} ctx_t;

static void progress_cb(int64_t done, int64_t total, void *user) {
    cli_progress *p = user;
    p->total = total;
    cli_progress_update(p, done);
}

static void put(table_t *t, json_t *obj, int s, const char *key, double v) {
    int r = 0;
    while (r < t->n_rows && strcmp(t->key[r], key)) r++;
    if (r == t->n_rows) {
        if (r == MAX_ROWS) return;
        t->key[t->n_rows++] = key;
        for (int k = 0; k < MAX_SYSTEMS; k++) t->val[r][k] = NAN;
    }
    t->val[r][s] = v;
    if (obj) json_object_set_new(obj, key, json_real(v));
}

/* --task loss: mean loss and perplexity; printed here when only one system runs. */
static int run_loss(ctx_t *c, const finch_data_spec *spec, int s, table_t *t, json_t *obj,
                    cli_progress *p) {
    finch_loss_report r;
    finch_err err;
    if (finch_eval_loss(c->m, spec, c->numerics, progress_cb, p, &r, &err)) return cli_fail(&err);
    cli_progress_end(p);
    t->n_examples = r.n_examples;
    if (c->n_sys == 1) { /* several systems: the side-by-side table says it */
        fprintf(c->out, "%s on %s:\n", c->sys[s].name, spec->path);
        fprintf(c->out, "examples:     %lld (%lld target tokens)\n", (long long)r.n_examples,
                (long long)r.n_targets);
        fprintf(c->out, "loss:         %.4f\n", r.loss);
        fprintf(c->out, "perplexity:   %.3f\n", r.perplexity);
    }
    if (r.n_truncated || r.n_dropped || r.n_skipped)
        fprintf(c->out,
                "warnings:     %lld truncated to the maximum length, %lld dropped (nothing "
                "left to score), %lld malformed lines skipped\n",
                (long long)r.n_truncated, (long long)r.n_dropped, (long long)r.n_skipped);
    put(t, obj, s, "loss", r.loss);
    put(t, obj, s, "ppl", r.perplexity);
    return 0;
}

/* Keeps the first examples of a generate task in c->j_samples, adding system s's output
 * to each (the first system to run adds the example itself). */
static void keep_samples(ctx_t *c, int s, const finch_gen_results *g) {
    for (int64_t i = 0; i < g->n && i < c->n_samples; i++) {
        json_t *smp = json_array_get(c->j_samples, (size_t)i);
        if (!smp) {
            smp = json_pack("{s:s, s:s, s:{}}", "prompt", g->prompts[i], "reference",
                            g->references[i], "outputs");
            json_array_append_new(c->j_samples, smp);
        }
        json_object_set_new(json_object_get(smp, "outputs"), c->sys[s].name,
                            json_string(g->outputs[i]));
    }
}

/* --task generate: generates, scores with the chosen metrics, and on the main dataset
 * keeps the first examples' outputs. */
static int run_generate(ctx_t *c, const finch_data_spec *spec, int s, table_t *t, json_t *obj,
                        bool main_set, cli_progress *p) {
    finch_gen_results g;
    finch_gen_options gen = c->gen;
    gen.numerics = c->numerics;
    finch_err err;
    if (finch_eval_generate(c->m, spec, &gen, progress_cb, p, &g, &err)) return cli_fail(&err);
    cli_progress_end(p);
    finch_scores sc;
    if (finch_scores_compute((const char *const *)g.outputs, (const char *const *)g.references,
                             (size_t)g.n, 0, &sc, &err)) {
        finch_gen_results_release(&g);
        return cli_fail(&err);
    }
    t->n_examples = g.n;
    if (c->metrics & CLI_METRIC_ROUGE) {
        put(t, obj, s, "rouge1", sc.rouge[FINCH_ROUGE_1].f1);
        put(t, obj, s, "rouge2", sc.rouge[FINCH_ROUGE_2].f1);
        put(t, obj, s, "rougeL", sc.rouge[FINCH_ROUGE_L].f1);
        put(t, obj, s, "rougeLsum", sc.rouge[FINCH_ROUGE_LSUM].f1);
    }
    if (c->metrics & CLI_METRIC_BLEU) put(t, obj, s, "bleu", sc.bleu.score);
    if (c->metrics & CLI_METRIC_EM) put(t, obj, s, "em", sc.exact_match);
    if (c->metrics & CLI_METRIC_F1) put(t, obj, s, "f1", sc.token_f1);
    if (main_set && c->j_samples) keep_samples(c, s, &g);
    finch_gen_results_release(&g);
    return 0;
}

/* Prints and (with obj) records per label: examples, recall, mean probability; and the
 * confusion counts, gold x predicted. */
static int report_labels(const ctx_t *c, const finch_data_spec *spec, int s,
                         const finch_classify_results *r, json_t *obj) {
    const int L = r->n_labels;
    int64_t *conf = calloc((size_t)L * L, sizeof *conf);
    double *mean = calloc((size_t)L, sizeof *mean);
    if (!conf || !mean) {
        free(conf);
        free(mean);
        fprintf(stderr, "finch: error: out of memory\n");
        return EXIT_FAIL;
    }
    for (int64_t i = 0; i < r->n; i++) {
        conf[(size_t)r->gold[i] * L + r->pred[i]]++;
        for (int j = 0; j < L; j++) mean[j] += r->prob[(size_t)i * L + j] / (double)r->n;
    }
    fprintf(c->out, "%s on %s: accuracy %.4f over %lld examples\n", c->sys[s].name, spec->path,
            r->accuracy, (long long)r->n);
    fprintf(c->out, "  %-20s %8s %8s %10s   predicted:", "label", "examples", "recall", "mean p");
    for (int j = 0; j < L && j < 12; j++) fprintf(c->out, " %6.6s", r->labels[j]);
    fprintf(c->out, "\n");
    json_t *pl = json_array(), *mat = json_array(), *names = json_array();
    for (int g = 0; g < L; g++) {
        int64_t ng = 0;
        for (int j = 0; j < L; j++) ng += conf[(size_t)g * L + j];
        double recall = ng ? (double)conf[(size_t)g * L + g] / (double)ng : NAN;
        fprintf(c->out, "  %-20.20s %8lld %8.4f %10.4f              ", r->labels[g], (long long)ng,
                recall, mean[g]);
        json_t *row = json_array();
        for (int j = 0; j < L; j++) {
            if (j < 12) fprintf(c->out, " %6lld", (long long)conf[(size_t)g * L + j]);
            json_array_append_new(row, json_integer(conf[(size_t)g * L + j]));
        }
        fprintf(c->out, "\n");
        json_array_append_new(mat, row);
        json_array_append_new(names, json_string(r->labels[g]));
        json_array_append_new(pl, json_pack("{s:s, s:I, s:o, s:f}", "label", r->labels[g], "n",
                                            (json_int_t)ng, "recall",
                                            isnan(recall) ? json_null() : json_real(recall),
                                            "mean_prob", mean[g]));
    }
    if (obj) {
        json_object_set_new(obj, "per_label", pl);
        json_object_set_new(obj, "confusion",
                            json_pack("{s:o, s:o}", "labels", names, "matrix", mat));
    } else {
        json_decref(pl);
        json_decref(mat);
        json_decref(names);
    }
    free(conf);
    free(mean);
    return 0;
}

/* --task classify: accuracy, then the per-label report. */
static int run_classify(ctx_t *c, const finch_data_spec *spec, int s, table_t *t, json_t *obj,
                        cli_progress *p) {
    finch_classify_results r;
    finch_err err;
    if (finch_eval_classify(c->m, spec, &c->cls, c->numerics, progress_cb, p, &r, &err))
        return cli_fail(&err);
    cli_progress_end(p);
    t->n_examples = r.n;
    put(t, obj, s, "accuracy", r.accuracy);
    int rc = report_labels(c, spec, s, &r, obj);
    finch_classify_results_release(&r);
    return rc;
}

/* Runs task on spec for system s; fills its column of t and its JSON metrics object. */
static int run_one(ctx_t *c, const finch_data_spec *spec, const char *task, int s, table_t *t,
                   json_t *obj, bool main_set) {
    char label[320];
    const char *base = strrchr(spec->path, '/');
    snprintf(label, sizeof label, "eval %s on %s", c->sys[s].name, base ? base + 1 : spec->path);
    cli_progress p;
    cli_progress_begin(&p, label, spec->max_examples > 0 ? spec->max_examples : 0);
    if (!strcmp(task, "loss")) return run_loss(c, spec, s, t, obj, &p);
    if (!strcmp(task, "generate")) return run_generate(c, spec, s, t, obj, main_set, &p);
    return run_classify(c, spec, s, t, obj, &p);
}

/* Attaches system s's adapters (and only those). */
static int select_system(ctx_t *c, int s) {
    for (int i = 0; i < c->ad->n; i++) finch_adapter_detach(c->m, c->ad->loaded[i]);
    for (int k = 0; k < c->sys[s].n_adapters; k++) {
        int i = c->sys[s].adapters[k];
        finch_err err;
        if (finch_adapter_attach(c->m, c->ad->loaded[i], c->ad->weight[i], &err))
            return cli_fail(&err);
    }
    return 0;
}

/* The first examples of a generate task: prompt, reference and each system's output. */
static void print_samples(const ctx_t *c) {
    size_t n = json_array_size(c->j_samples);
    for (size_t i = 0; i < n; i++) {
        json_t *smp = json_array_get(c->j_samples, i), *out = json_object_get(smp, "outputs");
        fprintf(c->out, "\nexample %zu\n  %-14s %s\n  %-14s %s\n", i + 1,
                "prompt:", json_string_value(json_object_get(smp, "prompt")),
                "reference:", json_string_value(json_object_get(smp, "reference")));
        for (int s = 0; s < c->n_sys; s++) {
            const char *o = json_string_value(json_object_get(out, c->sys[s].name));
            char label[64];
            snprintf(label, sizeof label, "%s:", c->sys[s].name);
            fprintf(c->out, "  %-14s %s\n", label, o ? o : "");
        }
    }
}

static void print_table(const ctx_t *c, const table_t *t) {
    bool delta = c->n_sys > 1 && c->sys[0].n_adapters == 0;
    fprintf(c->out, "\n%s (%s, %lld examples)\n", t->path, t->task, (long long)t->n_examples);
    fprintf(c->out, "%-10s", "metric");
    for (int s = 0; s < c->n_sys; s++) fprintf(c->out, " %14.14s", c->sys[s].name);
    for (int s = 1; delta && s < c->n_sys; s++) fprintf(c->out, " %14.14s", "delta");
    fprintf(c->out, "\n");
    for (int r = 0; r < t->n_rows; r++) {
        fprintf(c->out, "%-10s", t->key[r]);
        for (int s = 0; s < c->n_sys; s++) fprintf(c->out, " %14.4f", t->val[r][s]);
        for (int s = 1; delta && s < c->n_sys; s++)
            fprintf(c->out, " %+14.4f", t->val[r][s] - t->val[r][0]);
        fprintf(c->out, "\n");
    }
}

/* The name of a system: the last path component of its first adapter directory. */
static void system_name(char *buf, size_t n, const char *adapter_dir) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", adapter_dir);
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') dir[--len] = 0;
    const char *slash = strrchr(dir, '/');
    snprintf(buf, n, "%s", slash && slash[1] ? slash + 1 : dir);
}

/* --labels A,B,C: the text split in place. */
typedef struct {
    char buf[8192];
    const char *v[256];
    int n;
} labels_t;

static bool labels_parse(void *field, const char *flag, const char *value, char *msg, size_t n) {
    labels_t *l = field;
    if (strlen(value) >= sizeof l->buf)
        return snprintf(msg, n, "%s: the list is too long", flag), false;
    strcpy(l->buf, value);
    l->n = 0;
    for (char *p = l->buf;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = 0;
        if (!*p) return snprintf(msg, n, "%s: label %d is empty", flag, l->n + 1), false;
        if (l->n == 256) return snprintf(msg, n, "%s: at most 256 labels", flag), false;
        l->v[l->n++] = p;
        if (!comma) break;
        p = comma + 1;
    }
    return true;
}

/* The command line as read. */
typedef struct {
    const char *model, *task, *general, *general_task, *numerics;
    cli_list templates;
    labels_t labels;
    long threads, general_max;
    bool compare;
    int metrics, n_samples;
    finch_data_spec spec;
    finch_gen_options gen;
    finch_classify_options cls;
    cli_adapters adapters;
    cli_quant quant;
    cli_json json;
} args_t;

#define TASKS "loss|generate|classify"
#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_STRING("-m, --model", "FILE", model,
               "GGUF model (default: the cached SmolLM2-135M-Instruct)"),
    CLI_STRING("--data", "FILE", spec.path,
               "JSONL dataset (prompt/completion, Alpaca, Dolly or chat lines)"),
    CLI_ENUM("--task", TASKS, task,
             "loss (default): cross-entropy and perplexity of the completions\n"
             "generate: generate and score against the completions\n"
             "classify: pick the most likely label per example"),
    CLI_ENUM("--format", "auto|completion|alpaca|dolly|chat", spec.format,
             "the lines' shape (default auto)"),
    CLI_LIST("--template", "TEXT", 16, templates,
             "prompt template with {field} placeholders (repeatable: sampled);\n"
             "for classify it may end with {label}"),
    CLI_SWITCH("--chat", spec.chat, "wrap prompts in the model's chat template"),
    CLI_INT("--max-examples", "N", 1, LONG_MAX, spec.max_examples,
            "evaluate only the first N examples"),
    CLI_INT("--seed", "S", 0, LONG_MAX, spec.seed,
            "template sampling, sampling and shot choice (default 0)"),
    CLI_CUSTOM("--adapter", "DIR[:W]", 8, cli_adapter_parse, adapters,
               "a PEFT LoRA adapter (repeatable; W weights it, default 1)"),
    CLI_SWITCH("--compare", compare, "base and each adapter as separate systems, side by side"),
    CLI_GROUP(cli_json_flags, json),
    CLI_ENUM("--numerics", CLI_NUMERICS, numerics,
             "exact (default), llamacpp, or bf16 (products\nover several tokens in bf16)"),
    CLI_GROUP(cli_quant_flags, quant),
    CLI_THREADS(threads),
    CLI_TEXT("loss:"),
    CLI_INT("--max-seq-len", "N", 2, 1 << 20, spec.max_seq_len,
            "tokens per example at most (default 256 or the context)"),
    CLI_SWITCH("--train-on-prompt", spec.train_on_prompt, "count prompt tokens in the loss too"),
    CLI_SWITCH("--skip-bad", spec.skip_bad, "skip malformed lines (counted) instead of stopping"),
    CLI_TEXT("generate:"),
    CLI_CUSTOM("--metrics", "LIST", 0, cli_metrics_parse, metrics,
               "rouge,bleu,em,f1 (default rouge,bleu)"),
    CLI_INT("--max-new-tokens", "N", 1, 1 << 20, gen.max_tokens,
            "tokens to generate per example at most (default 64)"),
    CLI_FLOAT("--temperature, --temp", "T", 0, 100, gen.temperature, "0 = greedy (default)"),
    CLI_INT("--top-k", "K", 0, 1 << 30, gen.top_k,
            "keep the K most likely tokens (default 0: off)"),
    CLI_FLOAT_OPEN("--top-p", "P", 0, 1, gen.top_p, "nucleus sampling (default 1: off)"),
    CLI_INT("--samples", "N", 0, 1000, n_samples,
            "examples shown (and kept in the JSON) with every system's output (3)"),
    CLI_TEXT("classify:"),
    CLI_CUSTOM("--labels", "A,B,...", 0, labels_parse, labels,
               "the label set (default: the dataset's distinct completions)"),
    CLI_INT("--k-shot", "K", 0, 64, cls.k_shot,
            "solved examples put before each prompt (default 0)"),
    CLI_STRING("--shots-from", "FILE", cls.shots_path,
               "JSONL the shots are drawn from (never the example itself)"),
    CLI_TEXT("general dataset:"),
    CLI_STRING("--general", "FILE", general, "also evaluate this dataset on the same systems"),
    CLI_ENUM("--general-task", TASKS, general_task,
             "its task: loss (default), generate or classify"),
    CLI_INT("--general-max-examples", "N", 1, LONG_MAX, general_max, "its examples (default 100)"),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "eval",
    .usage = "usage: finch eval [-m MODEL] --data FILE [--task loss|generate|classify] [options]\n",
    .flags = flag_table};

/* The checks that need every flag read: 0, or EXIT_USAGE with the message printed. */
static int check_flags(const args_t *a, const ctx_t *c) {
    if (!a->spec.path) return cli_usage_error("eval", "no dataset: give one with --data FILE");
    if (a->metrics && strcmp(a->task, "generate") && strcmp(a->general_task, "generate"))
        return cli_usage_error("eval", "--metrics applies to --task generate only");
    if (c->cls.k_shot > 0 && !c->cls.shots_path)
        return cli_usage_error("eval", "--k-shot %d needs --shots-from FILE to draw the shots from",
                               c->cls.k_shot);
    if (a->compare && a->adapters.n == 0)
        return cli_usage_error(
            "eval", "--compare needs at least one --adapter to compare with the base model");
    if (a->compare && a->adapters.n + 1 > MAX_SYSTEMS)
        return cli_usage_error("eval", "--compare: at most %d adapters", MAX_SYSTEMS - 1);
    return 0;
}

/* The systems: with --compare or no adapter the base model, then (--compare) each adapter
 * alone; otherwise one system with every adapter. Names are made unique, as JSON keys. */
static void make_systems(ctx_t *c, const cli_adapters *ad, bool compare) {
    if (compare || ad->n == 0) {
        snprintf(c->sys[c->n_sys++].name, sizeof c->sys[0].name, "base");
        for (int i = 0; compare && i < ad->n; i++, c->n_sys++) {
            system_name(c->sys[c->n_sys].name, sizeof c->sys[0].name, ad->dir[i]);
            c->sys[c->n_sys].adapters[0] = i;
            c->sys[c->n_sys].n_adapters = 1;
        }
    } else {
        system_name(c->sys[0].name, sizeof c->sys[0].name, ad->dir[0]);
        for (int i = 0; i < ad->n; i++) c->sys[0].adapters[i] = i;
        c->sys[0].n_adapters = ad->n;
        c->n_sys = 1;
    }
    for (int s = 1; s < c->n_sys; s++)
        for (int k = 0; k < s; k++)
            if (!strcmp(c->sys[s].name, c->sys[k].name)) {
                size_t len = strlen(c->sys[s].name);
                if (len > sizeof c->sys[s].name - 8) len = sizeof c->sys[s].name - 8;
                snprintf(c->sys[s].name + len, 8, "#%d", s % 10);
                break;
            }
}

/* The JSON list of systems: each one's name and adapters (path, weight). */
static json_t *systems_json(const ctx_t *c, const cli_adapters *ad) {
    json_t *j_sys = json_array();
    for (int s = 0; s < c->n_sys; s++) {
        json_t *list = json_array();
        for (int k = 0; k < c->sys[s].n_adapters; k++) {
            int i = c->sys[s].adapters[k];
            json_array_append_new(
                list, json_pack("{s:s, s:f}", "path", ad->dir[i], "weight", (double)ad->weight[i]));
        }
        json_array_append_new(j_sys,
                              json_pack("{s:s, s:o}", "name", c->sys[s].name, "adapters", list));
    }
    return j_sys;
}

/* Runs every system on each dataset (tables[d] with specs[d]), in order; the first
 * failure's exit code, or 0. */
static int run_systems(ctx_t *c, const finch_data_spec *const specs[2], table_t tables[2],
                       int n_sets) {
    int rc = 0;
    for (int s = 0; s < c->n_sys && !rc; s++) {
        if ((rc = select_system(c, s))) break;
        for (int d = 0; d < n_sets && !rc; d++) {
            json_t *obj = NULL;
            if (c->j_metrics) {
                obj = json_pack("{s:s, s:s, s:s}", "system", c->sys[s].name, "data", tables[d].path,
                                "task", tables[d].task);
                json_array_append_new(c->j_metrics, obj);
            }
            rc = run_one(c, specs[d], tables[d].task, s, &tables[d], obj, d == 0);
        }
    }
    return rc;
}

/* Emits the results in the evaluation schema (--json, --json-out); 0 or the exit code of
 * the failure (printed). */
static int write_json(const args_t *a, const ctx_t *c, const table_t *main_table, json_t *j_sys) {
    char model_path[4096];
    finch_err err;
    int rc = 0;
    if (a->model)
        snprintf(model_path, sizeof model_path, "%s", a->model);
    else if (finch_default_model_path(model_path, sizeof model_path, &err))
        model_path[0] = 0;
    json_t *root = json_pack("{s:s, s:s, s:s, s:I, s:I, s:O, s:O, s:O}", "task", a->task, "model",
                             model_path, "data", a->spec.path, "n_examples",
                             (json_int_t)main_table->n_examples, "seed", (json_int_t)a->spec.seed,
                             "systems", j_sys, "metrics", c->j_metrics, "samples", c->j_samples);
    char *text = root ? json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(10)) : NULL;
    if (!text) {
        fprintf(stderr, "finch: error: out of memory\n");
        rc = EXIT_FAIL;
    } else {
        rc = cli_json_emit("eval", &a->json, text, strlen(text));
        free(text);
    }
    json_decref(root);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    args_t a = {.task = "loss",
                .general_task = "loss",
                .numerics = "exact",
                .general_max = 100,
                .n_samples = 3,
                .gen = finch_gen_defaults(),
                .quant = CLI_QUANT_DEFAULTS};
    a.gen.max_tokens = 64;
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc == CLI_RUN) rc = cli_json_check("eval", &a.json);
    if (rc != CLI_RUN) return rc;
    a.spec.templates = a.templates.v;
    a.spec.n_templates = a.templates.n;
    a.gen.seed = a.spec.seed;
    a.cls.labels = a.labels.n ? a.labels.v : NULL;
    a.cls.n_labels = a.labels.n;
    const bool want_json = a.json.json || a.json.json_out;
    ctx_t c = {.numerics = cli_numerics(a.numerics),
               .metrics = a.metrics ? a.metrics : CLI_METRIC_ROUGE | CLI_METRIC_BLEU,
               .n_samples = a.n_samples,
               .gen = a.gen,
               .cls = a.cls,
               .out = cli_json_text(&a.json)};
    if ((rc = check_flags(&a, &c))) return rc;
    make_systems(&c, &a.adapters, a.compare);

    cli_set_threads(a.threads);
    finch_model *m = cli_load_model_quant(a.model, &a.quant);
    if (!m) return EXIT_FAIL;
    c.m = m;
    c.ad = &a.adapters;
    json_t *j_sys = NULL;
    const int n_sets = a.general ? 2 : 1;
    table_t tables[2] = {{.path = a.spec.path, .task = a.task},
                         {.path = a.general, .task = a.general_task}};
    finch_data_spec gspec = {.path = a.general,
                             .chat = a.spec.chat,
                             .max_examples = a.general_max,
                             .seed = a.spec.seed,
                             .max_seq_len = a.spec.max_seq_len};
    const finch_data_spec *const specs[2] = {&a.spec, &gspec};
    if (!cli_adapters_attach(&a.adapters, m)) {
        rc = EXIT_FAIL;
        goto done;
    }
    c.j_samples = json_array(); /* printed after the tables, and kept in the JSON */
    if (want_json) {
        c.j_metrics = json_array();
        j_sys = systems_json(&c, &a.adapters);
    }
    if ((rc = run_systems(&c, specs, tables, n_sets))) goto done;
    for (int d = 0; d < n_sets; d++) print_table(&c, &tables[d]);
    print_samples(&c);
    if (want_json) rc = write_json(&a, &c, &tables[0], j_sys);
done:
    json_decref(j_sys);
    json_decref(c.j_metrics);
    json_decref(c.j_samples);
    cli_adapters_release(&a.adapters, m);
    finch_model_free(m);
    return rc;
}
