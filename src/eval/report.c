/*
 * report.c: finch report: one self-contained HTML page about a training run directory:
 * a header (model, method, final losses, throughput, run time), loss / learning-rate /
 * gradient-norm charts from metrics.jsonl, metric tables and sample generations from the
 * evaluation JSON files (eval*.json and any given), and the run's settings (run.json,
 * adapter_config.json).
 *
 * Not here: the charts' drawing (svg.c) and the measuring (finch eval writes the JSON).
 * The page loads nothing: inline CSS, inline SVG, no script. All text from files is
 * escaped (model outputs are arbitrary). A missing file is named on the page; a
 * malformed one is an error with the file and line, since a report that silently drops
 * data would mislead.
 *
 * Files read (formats in metrics.jsonl as train/loop.c writes it, run.json as finch train
 * writes it, the evaluation JSON schema of finch eval --json and --json-out):
 *   metrics.jsonl   {"step": N, "loss", "lr", "grad_norm", "tokens_per_s", "epoch"} and
 *                   {"step": N, "val_loss"} (an "elapsed_s" field, when a run logs one, is
 *                   its run time); a step logged again (a resumed run) replaces the points
 *                   from that step on
 *   run.json        flat object of settings; "model", "method", "max_steps", "date" and
 *                   "started_unix" used. Without "elapsed_s" the run time is from
 *                   started_unix to the last write of metrics.jsonl (finch train rewrites
 *                   run.json when it resumes, so that is the last session's time)
 *   eval*.json      {"task", "model", "data", "n_examples", "systems", "metrics", "samples"}
 */
#include "eval/eval.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

/* ---- metrics.jsonl ------------------------------------------------------------------ */

/* Points (step, value) in increasing step order. */
typedef struct {
    double *x, *y;
    size_t n, cap;
} series;

/* Appends (x, y); points at or after x logged earlier are dropped first, so a resumed
 * run's lines replace the ones it repeats. */
static bool series_add(series *s, double x, double y) {
    while (s->n && s->x[s->n - 1] >= x) s->n--;
    if (s->n == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 64;
        double *nx = finch_mem_realloc(s->x, c * sizeof *nx);
        if (nx) s->x = nx;
        double *ny = finch_mem_realloc(s->y, c * sizeof *ny);
        if (ny) s->y = ny;
        if (!nx || !ny) return false;
        s->cap = c;
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
    return true;
}

static void series_free(series *s) {
    free(s->x);
    free(s->y);
}

/* The numeric fields of a metrics line that the report plots. */
enum { M_LOSS, M_VAL, M_LR, M_GNORM, M_TPS, M_EPOCH, M_ELAPSED, M_COUNT };
static const char *const metric_keys[M_COUNT] = {
    "loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "epoch", "elapsed_s"};

typedef struct {
    const char *dir;
    series m[M_COUNT];
    bool have_metrics;
    time_t metrics_mtime;
    json_t *run_info, *adapter_cfg; /* NULL when absent */
    json_t **evals;                 /* parsed evaluation files */
    char **eval_paths;
    int n_evals;
    finch_buf notes; /* <li> items about missing files */
} report;

static finch_status read_metrics(report *r, const char *path, finch_err *err) {
    finch_mapped_file f;
    finch_status st = finch_file_map(path, &f, err);
    if (st) return st;
    struct stat sb;
    if (stat(path, &sb) == 0) r->metrics_mtime = sb.st_mtime;
    size_t pos = 0, line = 0;
    while (pos < f.size && !st) {
        const char *p = (const char *)f.data + pos, *nl = memchr(p, '\n', f.size - pos);
        size_t len = nl ? (size_t)(nl - p) : f.size - pos;
        pos += len + (nl != NULL);
        line++;
        if (len && p[len - 1] == '\r') len--;
        size_t b = 0;
        while (b < len && (p[b] == ' ' || p[b] == '\t')) b++;
        if (b == len) continue;
        json_error_t je;
        json_t *j;
        if ((st = finch_json_loadb(p, len, 0, path, &j, &je, err))) break;
        if (!j) {
            st = finch_err_set(err, FINCH_E_FORMAT, "%s:%zu: column %d: not valid JSON: %s", path,
                               line, je.column, je.text);
            break;
        }
        json_t *step = json_object_get(j, "step");
        if (!json_is_object(j))
            st = finch_err_set(err, FINCH_E_FORMAT, "%s:%zu: not a JSON object", path, line);
        else if (!json_is_integer(step) || json_integer_value(step) < 0)
            st = finch_err_set(err, FINCH_E_FORMAT, "%s:%zu: \"step\" is %s", path, line,
                               step ? "not a non-negative integer" : "missing");
        for (int k = 0; k < M_COUNT && !st; k++) {
            json_t *v = json_object_get(j, metric_keys[k]);
            if (!v || json_is_null(v)) continue; /* null: not finite when logged */
            if (!json_is_number(v)) {
                st = finch_err_set(err, FINCH_E_FORMAT, "%s:%zu: \"%s\" is not a number", path,
                                   line, metric_keys[k]);
                break;
            }
            if (!series_add(&r->m[k], (double)json_integer_value(step), json_number_value(v)))
                st = finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory for the metrics", path);
        }
        json_decref(j);
    }
    finch_file_unmap(&f);
    r->have_metrics = !st;
    return st;
}

/* ---- JSON files --------------------------------------------------------------------- */

static bool exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Reads the JSON object at path into *out. */
static finch_status load_object(const char *path, json_t **out, finch_err *err) {
    json_error_t je;
    json_t *j;
    finch_status st = finch_json_load_file(path, 0, &j, &je, err);
    if (st) return st;
    if (!j) {
        if (je.line < 1) return finch_err_set(err, FINCH_E_IO, "%s: %s", path, je.text);
        return finch_err_set(err, FINCH_E_FORMAT, "%s:%d: column %d: %s", path, je.line, je.column,
                             je.text);
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return finch_err_set(err, FINCH_E_FORMAT, "%s: expected a JSON object at the top", path);
    }
    *out = j;
    return FINCH_OK;
}

/* Checks an evaluation file against the schema finch eval --json writes: what the page
 * reads must have the right type; unknown keys are ignored. */
static finch_status check_eval(const char *path, json_t *j, finch_err *err) {
#define BAD(...) return finch_err_set(err, FINCH_E_FORMAT, __VA_ARGS__)
    static const char *const strs[] = {"task", "model", "data"};
    for (size_t k = 0; k < 3; k++) {
        json_t *v = json_object_get(j, strs[k]);
        if (v && !json_is_string(v)) BAD("%s: \"%s\" is not a string", path, strs[k]);
    }
    json_t *sys = json_object_get(j, "systems"), *met = json_object_get(j, "metrics"),
           *sam = json_object_get(j, "samples"), *v;
    size_t i;
    if (!json_is_array(met))
        BAD("%s: \"metrics\" is %s, expected a list", path, met ? "not a list" : "missing");
    if (sys && !json_is_array(sys)) BAD("%s: \"systems\" is not a list", path);
    json_array_foreach(sys, i, v) {
        if (!json_is_object(v) || !json_is_string(json_object_get(v, "name")))
            BAD("%s: systems[%zu]: expected an object with a string \"name\"", path, i);
    }
    json_array_foreach(met, i, v) {
        if (!json_is_object(v) || !json_is_string(json_object_get(v, "system")))
            BAD("%s: metrics[%zu]: expected an object with a string \"system\"", path, i);
        json_t *d = json_object_get(v, "data");
        if (d && !json_is_string(d)) BAD("%s: metrics[%zu]: \"data\" is not a string", path, i);
    }
    if (sam && !json_is_array(sam)) BAD("%s: \"samples\" is not a list", path);
    json_array_foreach(sam, i, v) {
        if (!json_is_object(v)) BAD("%s: samples[%zu]: not an object", path, i);
        json_t *o = json_object_get(v, "outputs"), *s;
        const char *key;
        for (size_t k = 0; k < 2; k++) {
            const char *name = k ? "reference" : "prompt";
            json_t *t = json_object_get(v, name);
            if (t && !json_is_string(t))
                BAD("%s: samples[%zu]: \"%s\" is not a string", path, i, name);
        }
        if (o && !json_is_object(o)) BAD("%s: samples[%zu]: \"outputs\" is not an object", path, i);
        json_object_foreach(o, key, s) {
            if (!json_is_string(s))
                BAD("%s: samples[%zu]: outputs[\"%s\"] is not a string", path, i, key);
        }
    }
    return FINCH_OK;
#undef BAD
}

static finch_status add_eval(report *r, const char *path, finch_err *err) {
    json_t *j = NULL;
    finch_status st = load_object(path, &j, err);
    if (st) return st;
    if ((st = check_eval(path, j, err))) goto fail;
    json_t **e = finch_mem_realloc(r->evals, (size_t)(r->n_evals + 1) * sizeof *e);
    if (e) r->evals = e;
    char **p = finch_mem_realloc(r->eval_paths, (size_t)(r->n_evals + 1) * sizeof *p);
    if (p) r->eval_paths = p;
    char *copy = e && p ? finch_mem_strdup(path) : NULL;
    if (!copy) {
        st = finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    r->evals[r->n_evals] = j;
    r->eval_paths[r->n_evals++] = copy;
    return FINCH_OK;
fail:
    json_decref(j);
    return st;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The eval*.json files of the run directory, by name. */
static finch_status find_evals(report *r, finch_err *err) {
    DIR *d = opendir(r->dir);
    if (!d)
        return finch_err_set(err, FINCH_E_IO, "%s: cannot open the run directory: %s", r->dir,
                             strerror(errno));
    char **names = NULL;
    size_t n = 0;
    finch_status st = FINCH_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 9 || strncmp(e->d_name, "eval", 4) || strcmp(e->d_name + len - 5, ".json"))
            continue;
        char **nn = finch_mem_realloc(names, (n + 1) * sizeof *nn);
        if (nn) names = nn;
        if (!nn || !(names[n] = finch_mem_alloc(strlen(r->dir) + len + 2))) {
            st = finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory listing files", r->dir);
            break;
        }
        sprintf(names[n++], "%s/%s", r->dir, e->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (!st) st = add_eval(r, names[i], err);
        free(names[i]);
    }
    free(names);
    return st;
}

/* ---- formatting --------------------------------------------------------------------- */

/* s comes from the run's files (a start time, a finish time): any double, so hours are
 * formatted as a double, never converted to int. */
static void fmt_duration(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 60)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm %02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, n, "%.0fh %02dm", floor(s / 3600), (int)fmod(s, 3600) / 60);
}

/* A JSON value as table text: strings as they are, lists of scalars joined by ", ". */
static void put_value(finch_buf *b, json_t *v) {
    if (json_is_string(v)) {
        finch_buf_html(b, json_string_value(v));
    } else if (json_is_array(v) && json_array_size(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (i) finch_buf_puts(b, ", ");
            put_value(b, e);
        }
    } else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));
        if (s)
            finch_buf_html(b, s);
        else
            b->oom = true;
        free(s);
    }
}

static void put_settings(finch_buf *b, const char *title, json_t *obj, const char *missing) {
    finch_buf_puts(b, "<div class=\"panel\"><h3>");
    finch_buf_html(b, title);
    finch_buf_puts(b, "</h3>\n");
    if (!obj) {
        finch_buf_printf(b, "<p class=\"muted\">%s</p></div>\n", missing);
        return;
    }
    finch_buf_puts(b, "<table class=\"kv\">\n");
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        finch_buf_puts(b, "<tr><th>");
        finch_buf_html(b, key);
        finch_buf_puts(b, "</th><td>");
        put_value(b, v);
        finch_buf_puts(b, "</td></tr>\n");
    }
    finch_buf_puts(b, "</table></div>\n");
}

static const char *json_str(json_t *obj, const char *key) {
    return json_string_value(json_object_get(obj, key)); /* NULL when absent or not a string */
}

/* ---- sections ----------------------------------------------------------------------- */

static void put_card(finch_buf *b, const char *label, const char *value, const char *sub,
                     const char *tip) {
    /* the model's file name is the long one: two columns */
    finch_buf_printf(b, "<div class=\"card%s\"><div class=\"label\">", tip ? " wide" : "");
    finch_buf_html(b, label);
    finch_buf_puts(b, "</div><div class=\"value\"");
    if (tip) {
        finch_buf_puts(b, " title=\"");
        finch_buf_html(b, tip);
        finch_buf_puts(b, "\"");
    }
    finch_buf_puts(b, ">");
    finch_buf_html(b, value);
    finch_buf_puts(b, "</div><div class=\"sub\">");
    finch_buf_html(b, sub ? sub : "");
    finch_buf_puts(b, "</div></div>\n");
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s && s[1] ? s + 1 : p;
}

static void put_header(finch_buf *b, const report *r) {
    char v[128], sub[128];
    const char *model = r->run_info ? json_str(r->run_info, "model") : NULL;
    for (int i = 0; i < r->n_evals && !model; i++) model = json_str(r->evals[i], "model");
    put_card(b, "Model", model ? base_name(model) : "unknown", model ? "" : "no run.json", model);

    const char *method = r->run_info ? json_str(r->run_info, "method") : NULL;
    json_t *ac = r->adapter_cfg;
    if (!method && ac) method = json_str(ac, "peft_type");
    sub[0] = 0;
    json_t *rank = ac            ? json_object_get(ac, "r")
                   : r->run_info ? json_object_get(r->run_info, "lora_r")
                                 : NULL;
    json_t *alpha = ac            ? json_object_get(ac, "lora_alpha")
                    : r->run_info ? json_object_get(r->run_info, "lora_alpha")
                                  : NULL;
    if (json_is_number(rank) && json_is_number(alpha))
        snprintf(sub, sizeof sub, "r %g, alpha %g", json_number_value(rank),
                 json_number_value(alpha));
    put_card(b, "Method", method ? method : "unknown", sub, NULL);

    const series *loss = &r->m[M_LOSS], *val = &r->m[M_VAL], *tps = &r->m[M_TPS];
    snprintf(v, sizeof v, "%s", "–");
    sub[0] = 0;
    if (loss->n) {
        snprintf(v, sizeof v, "%.4f", loss->y[loss->n - 1]);
        snprintf(sub, sizeof sub, "step %.0f, from %.4f", loss->x[loss->n - 1], loss->y[0]);
    }
    put_card(b, "Train loss", v, loss->n ? sub : "not logged", NULL);
    snprintf(v, sizeof v, "%s", "–");
    if (val->n) {
        snprintf(v, sizeof v, "%.4f", val->y[val->n - 1]);
        snprintf(sub, sizeof sub, "step %.0f, from %.4f", val->x[val->n - 1], val->y[0]);
    }
    put_card(b, "Validation loss", v, val->n ? sub : "not logged", NULL);
    snprintf(v, sizeof v, "%s", "–");
    if (tps->n) {
        double sum = 0;
        for (size_t i = 0; i < tps->n; i++) sum += tps->y[i];
        snprintf(v, sizeof v, "%.0f", sum / (double)tps->n);
    }
    put_card(b, "Tokens / s", v, tps->n ? "mean of logged steps" : "not logged", NULL);

    /* run time: the run's own clock when it logs one, else run.json's start to the last
     * write of metrics.jsonl */
    const series *el = &r->m[M_ELAPSED];
    json_t *start = r->run_info ? json_object_get(r->run_info, "started_unix") : NULL;
    snprintf(v, sizeof v, "%s", "–");
    const char *how = "unknown";
    if (el->n) {
        fmt_duration(v, sizeof v, el->y[el->n - 1]);
        how = "";
    } else if (json_is_number(start) && r->have_metrics &&
               r->metrics_mtime >= json_number_value(start)) {
        fmt_duration(v, sizeof v, (double)r->metrics_mtime - json_number_value(start));
        how = "start to last log line";
    }
    put_card(b, "Run time", v, how, NULL);
    if (loss->n || val->n) {
        double last = fmax(loss->n ? loss->x[loss->n - 1] : 0, val->n ? val->x[val->n - 1] : 0);
        snprintf(v, sizeof v, "%.0f", last);
        /* "of N" when the run set its length in steps (a run still going, or cut short) */
        json_t *max = r->run_info ? json_object_get(r->run_info, "max_steps") : NULL;
        int n = 0;
        if (json_is_integer(max) && json_integer_value(max) > 0)
            n = snprintf(sub, sizeof sub, "of %lld", (long long)json_integer_value(max));
        else
            sub[0] = 0;
        if (r->m[M_EPOCH].n)
            snprintf(sub + n, sizeof sub - (size_t)n, "%sepoch %.2f", n ? ", " : "",
                     r->m[M_EPOCH].y[r->m[M_EPOCH].n - 1]);
        put_card(b, "Steps", v, sub, NULL);
    }
}

/* Smoothed training loss: an exponential moving average, debiased like TensorBoard's, with
 * a weight that grows with the number of points (none for 10 or fewer, 0.9 at 100, at
 * most 0.95) so short runs keep their shape. */
static void smooth(const series *s, double *out) {
    double beta = s->n <= 10 ? 0 : fmin(0.95, 1 - 10.0 / (double)s->n), avg = 0, w = 0;
    for (size_t i = 0; i < s->n; i++) {
        avg = beta * avg + (1 - beta) * s->y[i];
        w = beta * w + (1 - beta);
        out[i] = avg / w;
    }
}

static finch_status put_charts(finch_buf *b, const report *r, finch_err *err) {
    const series *loss = &r->m[M_LOSS], *val = &r->m[M_VAL];
    double *sm = finch_calloc(loss->n ? loss->n : 1, sizeof *sm, "smoothed loss", err);
    if (!sm) return err->code;
    smooth(loss, sm);
    finch_svg_series ls[3];
    int n = 0;
    if (loss->n) {
        ls[n++] = (finch_svg_series){loss->x,   loss->y, loss->n, "train (raw)",
                                     "#93c5fd", 1.2,     0.9,     false};
        ls[n++] =
            (finch_svg_series){loss->x, sm, loss->n, "train (smoothed)", "#1d4ed8", 2.2, 1, false};
    }
    if (val->n)
        ls[n++] = (finch_svg_series){val->x, val->y, val->n, "validation", "#ea580c", 2, 1, true};
    finch_buf_puts(b, "<section><h2>Training</h2>\n<div class=\"panel wide\">");
    finch_svg_plot_render(
        b, &(finch_svg_plot){"Loss", "step", "loss (nats / token)", 1100, 340, ls, n});
    finch_buf_puts(b, "</div>\n<div class=\"grid2\"><div class=\"panel\">");
    finch_svg_series lr = {
        r->m[M_LR].x, r->m[M_LR].y, r->m[M_LR].n, "learning rate", "#059669", 2, 1, false};
    finch_svg_plot_render(b, &(finch_svg_plot){"Learning rate", "step", "lr", 540, 260, &lr, 1});
    finch_buf_puts(b, "</div><div class=\"panel\">");
    finch_svg_series gn = {r->m[M_GNORM].x,
                           r->m[M_GNORM].y,
                           r->m[M_GNORM].n,
                           "grad norm (before clipping)",
                           "#7c3aed",
                           1.6,
                           1,
                           false};
    finch_svg_plot_render(
        b, &(finch_svg_plot){"Gradient norm", "step", "global L2 norm", 540, 260, &gn, 1});
    finch_buf_puts(b, "</div></div></section>\n");
    free(sm);
    return FINCH_OK;
}

/* The measured metrics, in display order: key, column title, decimals, lower is better. */
static const struct {
    const char *key, *title;
    int decimals;
    bool lower_better;
} metric_cols[] = {
    {"rouge1", "ROUGE-1", 4, false}, {"rouge2", "ROUGE-2", 4, false},
    {"rougeL", "ROUGE-L", 4, false}, {"rougeLsum", "ROUGE-Lsum", 4, false},
    {"bleu", "BLEU", 2, false},      {"em", "EM", 4, false},
    {"f1", "F1", 4, false},          {"accuracy", "accuracy", 4, false},
    {"loss", "loss", 4, true},       {"ppl", "perplexity", 3, true},
};
enum { N_METRIC_COLS = sizeof metric_cols / sizeof metric_cols[0] };

static void put_metrics_table(finch_buf *b, json_t *met) {
    bool used[N_METRIC_COLS] = {0};
    double best[N_METRIC_COLS];
    size_t i;
    json_t *row;
    bool any_data = false;
    for (int c = 0; c < N_METRIC_COLS; c++) {
        best[c] = metric_cols[c].lower_better ? INFINITY : -INFINITY;
        json_array_foreach(met, i, row) {
            json_t *v = json_object_get(row, metric_cols[c].key);
            if (!json_is_number(v)) continue;
            used[c] = true;
            double x = json_number_value(v);
            best[c] = metric_cols[c].lower_better ? fmin(best[c], x) : fmax(best[c], x);
        }
    }
    json_array_foreach(met, i, row) any_data |= json_is_string(json_object_get(row, "data"));
    finch_buf_puts(b, "<table class=\"metrics\"><tr><th>system</th>");
    if (any_data) finch_buf_puts(b, "<th>data</th>");
    for (int c = 0; c < N_METRIC_COLS; c++)
        if (used[c]) finch_buf_printf(b, "<th class=\"num\">%s</th>", metric_cols[c].title);
    finch_buf_puts(b, "</tr>\n");
    json_array_foreach(met, i, row) {
        finch_buf_puts(b, "<tr><td class=\"sys\">");
        finch_buf_html(b, json_str(row, "system"));
        finch_buf_puts(b, "</td>");
        if (any_data) {
            const char *d = json_str(row, "data");
            finch_buf_puts(b, "<td class=\"path\">");
            finch_buf_html(b, d ? d : "");
            finch_buf_puts(b, "</td>");
        }
        for (int c = 0; c < N_METRIC_COLS; c++) {
            if (!used[c]) continue;
            json_t *v = json_object_get(row, metric_cols[c].key);
            if (!json_is_number(v)) {
                finch_buf_puts(b, "<td class=\"num muted\">–</td>");
                continue;
            }
            double x = json_number_value(v);
            bool top = json_array_size(met) > 1 && x == best[c];
            finch_buf_printf(b, "<td class=\"num%s\">%.*f</td>", top ? " best" : "",
                             metric_cols[c].decimals, x);
        }
        finch_buf_puts(b, "</tr>\n");
    }
    finch_buf_puts(b, "</table>\n");
}

static void put_samples(finch_buf *b, json_t *ev) {
    json_t *sam = json_object_get(ev, "samples"), *sys = json_object_get(ev, "systems"), *s;
    if (!json_array_size(sam)) return;
    size_t i, k;
    finch_buf_printf(b, "<h4>Sample generations (%zu)</h4>\n", json_array_size(sam));
    json_array_foreach(sam, i, s) {
        json_t *outs = json_object_get(s, "outputs"), *o, *sy;
        const char *key;
        finch_buf_printf(b, "<div class=\"sample\"><div class=\"num-badge\">#%zu</div>\n", i + 1);
        const char *prompt = json_str(s, "prompt"), *ref = json_str(s, "reference");
        finch_buf_puts(b, "<div class=\"field\"><span class=\"tag\">prompt</span><pre>");
        finch_buf_html(b, prompt ? prompt : "");
        finch_buf_puts(
            b, "</pre></div>\n<div class=\"field ref\"><span class=\"tag\">reference</span><pre>");
        finch_buf_html(b, ref ? ref : "");
        finch_buf_puts(b, "</pre></div>\n<div class=\"outs\">");
        /* outputs in the order of "systems", then any others */
        json_array_foreach(sys, k, sy) {
            const char *name = json_str(sy, "name");
            if (!(o = json_object_get(outs, name))) continue;
            finch_buf_printf(b, "<div class=\"out%s\"><span class=\"tag\">", k ? " tuned" : "");
            finch_buf_html(b, name);
            finch_buf_puts(b, "</span><pre>");
            finch_buf_html(b, json_string_value(o));
            finch_buf_puts(b, "</pre></div>");
        }
        json_object_foreach(outs, key, o) {
            bool listed = false;
            json_array_foreach(sys, k, sy) listed |= !strcmp(json_str(sy, "name"), key);
            if (listed) continue;
            finch_buf_puts(b, "<div class=\"out\"><span class=\"tag\">");
            finch_buf_html(b, key);
            finch_buf_puts(b, "</span><pre>");
            finch_buf_html(b, json_string_value(o));
            finch_buf_puts(b, "</pre></div>");
        }
        finch_buf_puts(b, "</div></div>\n");
    }
}

static void put_evals(finch_buf *b, const report *r) {
    finch_buf_puts(b, "<section><h2>Evaluation</h2>\n");
    if (!r->n_evals)
        finch_buf_puts(b,
                       "<p class=\"muted\">No evaluation file (eval*.json in the run directory, or "
                       "--eval FILE): write one with <code>finch eval --json-out FILE</code>."
                       "</p>\n");
    for (int e = 0; e < r->n_evals; e++) {
        json_t *ev = r->evals[e];
        finch_buf_puts(b, "<div class=\"panel wide\"><h3>");
        finch_buf_html(b, base_name(r->eval_paths[e]));
        finch_buf_puts(b, "</h3><p class=\"meta\">");
        static const char *const keys[] = {"task", "data", "model", "n_examples", "seed"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            json_t *v = json_object_get(ev, keys[k]);
            if (!v) continue;
            finch_buf_printf(b, "<span><b>%s</b> ", keys[k]);
            put_value(b, v);
            finch_buf_puts(b, "</span>");
        }
        finch_buf_puts(b, "</p>\n");
        json_t *sys = json_object_get(ev, "systems"), *s;
        size_t i;
        if (json_array_size(sys)) {
            finch_buf_puts(b, "<p class=\"meta\">");
            json_array_foreach(sys, i, s) {
                json_t *ads = json_object_get(s, "adapters"), *a;
                size_t k;
                finch_buf_puts(b, "<span><b>");
                finch_buf_html(b, json_str(s, "name"));
                finch_buf_puts(b, "</b> ");
                if (!json_array_size(ads)) finch_buf_puts(b, "base model");
                json_array_foreach(ads, k, a) {
                    const char *p = json_str(a, "path");
                    json_t *w = json_object_get(a, "weight");
                    if (k) finch_buf_puts(b, " + ");
                    finch_buf_html(b, p ? p : "?");
                    if (json_is_number(w)) finch_buf_printf(b, " &times; %g", json_number_value(w));
                }
                finch_buf_puts(b, "</span>");
            }
            finch_buf_puts(b, "</p>\n");
        }
        json_t *met = json_object_get(ev, "metrics");
        if (json_array_size(met))
            put_metrics_table(b, met);
        else
            finch_buf_puts(b, "<p class=\"muted\">no metrics in this file</p>\n");
        put_samples(b, ev);
        finch_buf_puts(b, "</div>\n");
    }
    finch_buf_puts(b, "</section>\n");
}

static const char css[] =
    "*{box-sizing:border-box}"
    "body{margin:0;background:#f3f4f6;color:#111827;font:14px/1.45 system-ui,-apple-system,'Segoe "
    "UI',"
    "Roboto,Helvetica,Arial,sans-serif}"
    "main{max-width:1180px;margin:0 auto;padding:24px 20px 48px}"
    "header h1{font-size:22px;margin:0 0 2px}header .meta{color:#6b7280;margin:0 0 16px}"
    "h2{font-size:17px;margin:28px 0 10px;color:#1f2937}h3{font-size:14px;margin:0 0 8px}"
    "h4{font-size:13px;margin:16px 0 8px;color:#374151}"
    ".cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:12px}"
    ".card.wide{grid-column:span 2}.card.wide .value{font-size:16px;white-space:normal;"
    "word-break:break-all;padding-top:3px}"
    ".card{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:12px 14px}"
    ".card .label{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:#6b7280}"
    ".card "
    ".value{font-size:20px;font-weight:600;margin-top:2px;overflow:hidden;text-overflow:ellipsis;"
    "white-space:nowrap}"
    ".card .sub{font-size:12px;color:#6b7280;min-height:1em}"
    ".panel{background:#fff;border:1px solid "
    "#e5e7eb;border-radius:10px;padding:14px;margin-bottom:12px;"
    "overflow-x:auto}"
    ".grid2{display:grid;grid-template-columns:1fr 1fr;gap:12px}"
    "svg.chart{display:block;width:100%;height:auto}"
    ".notes{background:#fffbeb;border:1px solid #fcd34d;border-radius:10px;padding:10px 14px 10px "
    "32px;"
    "margin:16px 0 0;color:#92400e}"
    "table{border-collapse:collapse;width:100%;font-size:13px}"
    "th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #f0f1f3;vertical-align:top}"
    "table.metrics th{background:#f9fafb;color:#374151;font-weight:600}"
    "td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}"
    "td.best{font-weight:700;color:#065f46}td.sys{font-weight:600}"
    "td.path{color:#6b7280;word-break:break-all}"
    "table.kv th{width:38%;color:#4b5563;font-weight:500}"
    "table.kv "
    "td{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}"
    ".meta span{margin-right:16px}.meta{color:#4b5563;margin:0 0 8px;font-size:13px}"
    ".muted{color:#9ca3af}"
    ".sample{border:1px solid #e5e7eb;border-radius:8px;padding:10px 12px;margin-bottom:10px;"
    "position:relative}"
    ".num-badge{position:absolute;right:10px;top:8px;color:#9ca3af;font-size:12px}"
    ".tag{display:inline-block;font-size:11px;font-weight:600;text-transform:uppercase;letter-"
    "spacing:.04em;"
    "color:#6b7280;margin-bottom:2px}"
    "pre{margin:0 0 8px;white-space:pre-wrap;word-wrap:break-word;font:12.5px/1.45 ui-monospace,"
    "SFMono-Regular,Menlo,Consolas,monospace;background:#f9fafb;border-radius:6px;padding:6px 8px}"
    ".ref pre{background:#ecfdf5}"
    ".outs{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:10px}"
    ".out.tuned pre{background:#eff6ff}"
    "footer{color:#9ca3af;font-size:12px;margin-top:24px}"
    "@media (max-width:800px){.grid2{grid-template-columns:1fr}}";

finch_status finch_report_render(const char *run_dir, const char *const *eval_paths, int n_eval,
                                 finch_buf *out, finch_err *err) {
    report r = {.dir = run_dir};
    finch_buf b = {0};
    finch_status st = FINCH_OK;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir) >= (int)sizeof path) {
        st = finch_err_set(err, FINCH_E_RANGE, "%s: path too long", run_dir);
        goto done;
    }
    if ((st = find_evals(&r, err))) goto done;
    for (int i = 0; i < n_eval; i++)
        if ((st = add_eval(&r, eval_paths[i], err))) goto done;
    if (exists(path)) {
        if ((st = read_metrics(&r, path, err))) goto done;
    } else {
        finch_buf_puts(&r.notes,
                       "<li><code>metrics.jsonl</code> not found: no training curves.</li>\n");
    }
    if (!r.have_metrics && !r.n_evals) {
        st = finch_err_set(err, FINCH_E_IO,
                           "%s: no metrics.jsonl and no eval*.json: nothing to report "
                           "(give the --out directory of finch train, or --eval FILE)",
                           run_dir);
        goto done;
    }
    snprintf(path, sizeof path, "%s/run.json", run_dir);
    if (exists(path)) {
        if ((st = load_object(path, &r.run_info, err))) goto done;
    } else {
        finch_buf_puts(
            &r.notes,
            "<li><code>run.json</code> not found: the run's settings are unknown.</li>\n");
    }
    snprintf(path, sizeof path, "%s/adapter_config.json", run_dir);
    if (exists(path)) {
        if ((st = load_object(path, &r.adapter_cfg, err))) goto done;
    } else {
        finch_buf_puts(&r.notes,
                       "<li><code>adapter_config.json</code> not found: no adapter written "
                       "(yet).</li>\n");
    }
    bool logged = false;
    for (int k = 0; k < M_COUNT; k++) logged |= r.m[k].n > 0;
    if (r.have_metrics && !logged)
        finch_buf_puts(&r.notes, "<li><code>metrics.jsonl</code> has no lines yet.</li>\n");
    else if (r.have_metrics && !r.m[M_VAL].n)
        finch_buf_puts(&r.notes, "<li>no validation loss in <code>metrics.jsonl</code> (train with "
                                 "<code>--val</code> or <code>--val-fraction</code>).</li>\n");

    finch_buf_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                       "<meta name=\"viewport\" content=\"width=device-width, "
                       "initial-scale=1\">\n<title>finch report: ");
    finch_buf_html(&b, base_name(run_dir));
    finch_buf_printf(&b, "</title>\n<style>%s</style>\n</head><body><main>\n<header><h1>", css);
    finch_buf_html(&b, base_name(run_dir));
    finch_buf_puts(&b, "</h1><p class=\"meta\">finch run report &middot; ");
    finch_buf_html(&b, run_dir);
    const char *date = r.run_info ? json_str(r.run_info, "date") : NULL;
    if (date) {
        finch_buf_puts(&b, " &middot; started ");
        finch_buf_html(&b, date);
    }
    finch_buf_puts(&b, "</p>\n<div class=\"cards\">\n");
    put_header(&b, &r);
    finch_buf_puts(&b, "</div>\n");
    if (r.notes.n) {
        finch_buf_puts(&b, "<ul class=\"notes\">\n");
        finch_buf_put(&b, r.notes.p, r.notes.n);
        finch_buf_puts(&b, "</ul>\n");
    }
    finch_buf_puts(&b, "</header>\n");
    if (r.have_metrics && (st = put_charts(&b, &r, err))) goto done;
    put_evals(&b, &r);
    finch_buf_puts(&b, "<section><h2>Settings</h2>\n<div class=\"grid2\">\n");
    put_settings(&b, "run.json", r.run_info, "not found");
    put_settings(&b, "adapter_config.json", r.adapter_cfg, "not found");
    finch_buf_puts(&b,
                   "</div></section>\n<footer>Made by finch report; self-contained (inline CSS and "
                   "SVG, no scripts).</footer>\n</main></body></html>\n");
    if (b.oom || r.notes.oom) {
        st = finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory building the report", run_dir);
        goto done;
    }
    *out = b;
    b = (finch_buf){0};
done:
    finch_buf_free(&b);
    finch_buf_free(&r.notes);
    for (int k = 0; k < M_COUNT; k++) series_free(&r.m[k]);
    json_decref(r.run_info);
    json_decref(r.adapter_cfg);
    for (int i = 0; i < r.n_evals; i++) {
        json_decref(r.evals[i]);
        free(r.eval_paths[i]);
    }
    free(r.evals);
    free(r.eval_paths);
    return st;
}

typedef struct {
    const finch_buf *b;
    const char *path;
} page;

static finch_status write_page(FILE *f, void *user, finch_err *err) {
    const page *pg = user;
    return finch_fwrite(f, pg->b->p, pg->b->n, pg->path, err);
}

finch_status finch_report_write(const char *run_dir, const char *const *eval_paths, int n_eval,
                                const char *out_path, finch_err *err) {
    finch_buf b = {0};
    finch_status st = finch_report_render(run_dir, eval_paths, n_eval, &b, err);
    if (!st) st = finch_file_commit(out_path, write_page, &(page){&b, out_path}, err);
    finch_buf_free(&b);
    return st;
}

/* ---- the comparison of methods ---------------------------------------------------------- */

/* Colours for the methods' curves, in turn. */
static const char *const palette[] = {"#1d4ed8", "#ea580c", "#059669", "#7c3aed", "#db2777",
                                      "#0891b2", "#ca8a04", "#4b5563", "#dc2626", "#65a30d"};

/* The comparison's columns: key in a row, title, decimals (-1: an integer, -2: bytes). */
static const struct {
    const char *key, *title;
    int decimals;
} compare_cols[] = {
    {"method", "method", 0},
    {"trainable_params", "trainable", -1},
    {"trainable_percent", "% of model", 4},
    {"size_bytes", "on disk", -2},
    {"tokens_per_s", "tokens/s", 1},
    {"peak_rss_mb", "peak RSS MB", 0},
    {"val_loss", "val loss", 4},
    {"metric", "task metric", 4},
    {"general_loss_change", "general loss change", 4},
};

static void put_cell(finch_buf *b, json_t *v, int decimals) {
    if (json_is_string(v)) {
        finch_buf_puts(b, "<td>");
        finch_buf_html(b, json_string_value(v));
    } else if (!json_is_number(v)) {
        finch_buf_puts(b, "<td class=\"num\">&ndash;");
    } else if (decimals == -1) {
        finch_buf_printf(b, "<td class=\"num\">%.0f", json_number_value(v));
    } else if (decimals == -2) {
        double x = json_number_value(v);
        finch_buf_printf(b, "<td class=\"num\">%.1f %s", x >= 1e6 ? x / 1e6 : x / 1e3,
                         x >= 1e6 ? "MB" : "kB");
    } else {
        finch_buf_printf(b, "<td class=\"num\">%.*f", decimals, json_number_value(v));
    }
    finch_buf_puts(b, "</td>");
}

finch_status finch_report_compare(const char *compare_json, const char *out_path, finch_err *err) {
    json_t *j = NULL;
    finch_status st = load_object(compare_json, &j, err);
    if (st) return st;
    json_t *rows = json_object_get(j, "rows");
    if (!json_is_array(rows) || !json_array_size(rows)) {
        json_decref(j);
        return finch_err_set(err, FINCH_E_FORMAT, "%s: \"rows\" must be a non-empty list",
                             compare_json);
    }
    const size_t n = json_array_size(rows);
    report *runs = finch_calloc(n, sizeof *runs, "comparison", err);
    finch_svg_series *ls = runs ? finch_calloc(2 * n, sizeof *ls, "comparison", err) : NULL;
    double **sm = ls ? finch_calloc(n, sizeof *sm, "comparison", err) : NULL;
    finch_buf b = {0};
    if (!sm) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    int n_series = 0;
    for (size_t i = 0; i < n && !st; i++) {
        json_t *row = json_array_get(rows, i);
        const char *dir = json_string_value(json_object_get(row, "out"));
        const char *label = json_string_value(json_object_get(row, "method"));
        char path[4200];
        if (!json_is_object(row) || !dir || !label) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: rows[%zu] needs \"method\" and \"out\" strings", compare_json,
                               i);
            break;
        }
        runs[i].dir = dir;
        snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
        if (!exists(path)) continue; /* a method that failed: its row says so */
        if ((st = read_metrics(&runs[i], path, err))) break;
        const series *loss = &runs[i].m[M_LOSS], *val = &runs[i].m[M_VAL];
        if (!(sm[i] = finch_calloc(loss->n ? loss->n : 1, sizeof **sm, "curve", err))) {
            st = FINCH_E_NOMEM;
            break;
        }
        smooth(loss, sm[i]);
        const char *c = palette[i % (sizeof palette / sizeof *palette)];
        ls[n_series++] = (finch_svg_series){loss->x, sm[i], loss->n, label, c, 2, 1, false};
        if (val->n) ls[n_series++] = (finch_svg_series){val->x, val->y, val->n, "", c, 0, 1, true};
    }
    if (st) goto done;
    finch_buf_printf(&b,
                     "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                     "<title>finch: methods compared</title>\n<style>%s</style>\n</head>"
                     "<body><main>\n<header><h1>Methods compared</h1><p>",
                     css);
    const char *facts[][2] = {{"model", "model"}, {"data", "data"}, {"task", "task"}};
    for (size_t k = 0; k < sizeof facts / sizeof *facts; k++) {
        const char *v = json_string_value(json_object_get(j, facts[k][0]));
        if (!v) continue;
        finch_buf_printf(&b, "%s%s: <code>", k ? " &middot; " : "", facts[k][1]);
        finch_buf_html(&b, v);
        finch_buf_puts(&b, "</code>");
    }
    json_t *budget = json_object_get(j, "budget");
    if (json_is_string(budget)) {
        finch_buf_puts(&b, "<br>budget: ");
        finch_buf_html(&b, json_string_value(budget));
    }
    const char *metric = json_string_value(json_object_get(j, "metric"));
    finch_buf_puts(&b, "</p></header>\n<section><h2>Results</h2>\n<table><tr>");
    for (size_t k = 0; k < sizeof compare_cols / sizeof *compare_cols; k++) {
        finch_buf_puts(&b, "<th>");
        finch_buf_html(&b, k == 7 && metric ? metric : compare_cols[k].title);
        finch_buf_puts(&b, "</th>");
    }
    finch_buf_puts(&b, "</tr>\n");
    for (size_t i = 0; i < n; i++) {
        json_t *row = json_array_get(rows, i);
        finch_buf_puts(&b, "<tr>");
        for (size_t k = 0; k < sizeof compare_cols / sizeof *compare_cols; k++)
            put_cell(&b, json_object_get(row, compare_cols[k].key), compare_cols[k].decimals);
        finch_buf_puts(&b, "</tr>\n");
        const char *e = json_string_value(json_object_get(row, "error"));
        if (e) {
            finch_buf_printf(
                &b, "<tr><td colspan=\"%zu\">failed: ", sizeof compare_cols / sizeof *compare_cols);
            finch_buf_html(&b, e);
            finch_buf_puts(&b, "</td></tr>\n");
        }
    }
    finch_buf_puts(&b, "</table>\n<p>general loss change: the general set's loss with the method "
                       "minus the base model's (forgetting when positive).</p></section>\n"
                       "<section><h2>Training loss</h2>\n<div class=\"panel wide\">");
    finch_svg_plot_render(&b,
                          &(finch_svg_plot){"Training loss (smoothed; dots: validation)", "step",
                                            "loss (nats / token)", 1100, 380, ls, n_series});
    finch_buf_puts(&b, "</div></section>\n</main></body></html>\n");
    if (b.oom)
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory rendering %s", out_path);
    else
        st = finch_file_commit(out_path, write_page, &(page){&b, out_path}, err);
done:
    for (size_t i = 0; runs && i < n; i++) {
        for (int k = 0; k < M_COUNT; k++) series_free(&runs[i].m[k]);
        finch_buf_free(&runs[i].notes);
        if (sm) free(sm[i]);
    }
    free(runs);
    free(ls);
    free(sm);
    finch_buf_free(&b);
    json_decref(j);
    return st;
}
