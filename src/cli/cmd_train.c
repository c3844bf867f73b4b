/*
 * cmd_train.c: `finch train`: fine-tunes a model on a JSONL dataset and writes the
 * adapter. Flags are named as the Hugging Face world names them; --config FILE reads the
 * same settings from a JSON object (keys as the flags without "--", '-' or '_'), and flags
 * given on the command line override it. Ctrl-C saves a checkpoint and exits.
 *
 * Under mpirun every rank runs this command with the same flags (finch_dist_init joins
 * the job); rank 0 alone writes run.json and prints progress, each rank's threads default
 * to its share of the machine's cores, and a rank that fails exits at once without
 * leaving the job, so that mpirun ends the others.
 */
#include "cli.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: finch train [-m MODEL] --data FILE --out DIR [options]\n"
    "data:\n"
    "  --data FILE[:WEIGHT]   training JSONL (prompt/completion, Alpaca, Dolly or chat lines;\n"
    "                         {\"prompt\", \"chosen\", \"rejected\"} pairs with --objective dpo);\n"
    "                         repeat for a multi-task mixture: each example slot draws a file\n"
    "                         by WEIGHT (default 1, normalised), then its next example\n"
    "  --val FILE             validation JSONL (or --val-fraction F of each training file)\n"
    "  --format NAME          auto (default), completion, alpaca, dolly, chat, preference\n"
    "  --template TEXT        prompt template with {field} placeholders (repeatable: sampled)\n"
    "  --chat                 wrap prompts in the model's chat template\n"
    "  --max-seq-len N        tokens per example at most (default 256 or the context)\n"
    "  --max-examples N       use the first N training examples\n"
    "  --train-on-prompt      loss on prompt tokens too (default: completion only)\n"
    "  --skip-bad             skip malformed lines (counted) instead of stopping\n"
    "  --packing              pack several examples into each row of --max-seq-len tokens\n"
    "method (--method NAME, default lora; its options follow it below):\n"
    "@METHODS@"
    "  --layers LIST          the blocks a method acts on: 20-29 or 0,2,5-7 (default all)\n"
    "objective:\n"
    "  --objective sft|dpo    sft (default): cross-entropy on the completions; dpo: TRL's\n"
    "                         sigmoid DPO loss on preference pairs, the reference being the\n"
    "                         model without the method (any method); logs rewards/chosen,\n"
    "                         rewards/rejected, rewards/accuracies, rewards/margins\n"
    "  --beta B               DPO's beta (0.1); --batch-size counts pairs\n"
    "optimisation:\n"
    "  --learning-rate LR (2e-4)  --lr-scheduler linear|cosine|constant  --warmup-steps N\n"
    "  --batch-size N (4)  --grad-accum N (1)  --max-steps N  --epochs E (1)\n"
    "  --weight-decay W (0)  --max-grad-norm G (1, 0 = off)  --seed S (42)\n"
    "run:\n"
    "  --out DIR              adapter, checkpoints and metrics.jsonl go here\n"
    "  --save-steps N  --eval-steps N  --log-steps N (10)  --val-max-examples N\n"
    "  --save-total-limit N   keep the newest N checkpoints (default: all)\n"
    "  --early-stopping-patience N  stop when the validation loss has not improved for N\n"
    "                         evaluations in a row (needs --eval-steps and validation data)\n"
    "  --early-stopping-threshold T  an improvement is a fall of more than T (0)\n"
    "  --load-best-model-at-end  the result is the checkpoint with the lowest validation\n"
    "                         loss, never deleted by --save-total-limit (--save-steps a\n"
    "                         multiple of --eval-steps)\n"
    "  --resume DIR           continue from a checkpoint (or the run directory's latest)\n"
    "  --config FILE          settings as a JSON object; flags override it\n"
    "  --load-in-4bit         QLoRA: quantize the base's projections to NF4 at load (an f32,\n"
    "                         f16 or bf16 base); --bnb-4bit-use-double-quant true|false (true),\n"
    "                         --bnb-4bit-quant-type nf4\n"
    "  --gradient-checkpointing  keep each block's input only and recompute the block in\n"
    "                         backward: far less memory, one more forward per step\n"
    "  --bf16                 mixed precision: the frozen base's products in bf16 (AMX where\n"
    "                         the CPU has it), parameters and optimizer state in f32\n"
    "  --simulate-ranks N     one process computes what `mpirun -np N` ranks would (each\n"
    "                         micro-batch N slices of --batch-size rows, gradients summed\n"
    "                         in rank order); under mpirun the ranks are the processes\n"
    "  -t, --threads N\n";

/* The usage text with the method table's methods and their options in place of @METHODS@. */
static void print_usage(void) {
    const char *at = strstr(usage_text, "@METHODS@");
    fwrite(usage_text, 1, (size_t)(at - usage_text), stdout);
    for (int i = 0; i < finch_method_count(); i++) {
        printf("  %-22s %s\n", finch_method_name(i), finch_method_description(i));
        size_t n = finch_method_usage(i, NULL, 0);
        char *buf = malloc(n + 1);
        if (buf) {
            finch_method_usage(i, buf, n + 1);
            fputs(buf, stdout);
        }
        free(buf);
    }
    fputs(at + strlen("@METHODS@"), stdout);
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}
static int should_stop(void *user) {
    (void)user;
    return interrupted;
}

static void fmt_time(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0)
        snprintf(buf, n, "?");
    else if (s < 60)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

/* What the progress callback shows and remembers. */
typedef struct {
    bool tty;
    int64_t n_trainable, n_total; /* -1 until the first step */
    double best_metric;           /* the lowest validation loss, at best_step (0: none) */
    int64_t best_step;
    bool stopped_early;
} progress_state;

static void progress(const finch_train_progress *p, void *user) {
    progress_state *ps = user;
    bool tty = ps->tty;
    ps->n_trainable = p->n_trainable;
    ps->n_total = p->n_total;
    ps->best_metric = p->best_metric;
    ps->best_step = p->best_step;
    ps->stopped_early = p->stopped_early;
    char eta[32];
    fmt_time(eta, sizeof eta, p->eta_s);
    char ranks[64] = "";
    if (p->ranks > 1)
        snprintf(ranks, sizeof ranks, " | global batch %lld on %d ranks",
                 (long long)p->global_batch, p->ranks);
    if (p->step == 1 || p->step == p->total_steps || tty || p->step % 10 == 0 ||
        !isnan(p->val_loss)) {
        char dpo[160] = "", tasks[512] = ""; /* a mixture's examples per file (cut when long) */
        if (!isnan(p->rewards_accuracy))
            snprintf(dpo, sizeof dpo, " | rewards/accuracies %.2f | rewards/margins %.4f",
                     p->rewards_accuracy, p->rewards_margin);
        for (int k = 0, n = 0; p->n_tasks > 1 && k < p->n_tasks && n < (int)sizeof tasks; k++)
            n += snprintf(tasks + n, sizeof tasks - (size_t)n, "%s %s %lld", k ? "," : " | tasks",
                          p->task_names[k], (long long)p->task_seen[k]);
        fprintf(stderr,
                "%sstep %lld/%lld | loss %.4f (avg %.4f)%s | lr %.2e | %.0f tok/s%s%s | ETA %s%s",
                tty ? "\r\033[K" : "", (long long)p->step, (long long)p->total_steps, p->loss,
                p->loss_smooth, dpo, p->lr, p->tokens_per_s, ranks, tasks, eta, tty ? "" : "\n");
    }
    char best[64] = "";
    if (p->best_step && p->best_step != p->step)
        snprintf(best, sizeof best, " (best %.4f at step %lld)", p->best_metric,
                 (long long)p->best_step);
    if (!isnan(p->val_loss) && !isnan(p->val_accuracy))
        fprintf(stderr, "%sstep %lld: validation loss %.4f%s, rewards/accuracies %.4f\n",
                tty ? "\n" : "", (long long)p->step, p->val_loss, best, p->val_accuracy);
    else if (!isnan(p->val_loss))
        fprintf(stderr, "%sstep %lld: validation loss %.4f%s\n", tty ? "\n" : "",
                (long long)p->step, p->val_loss, best);
    if (tty && (p->step == p->total_steps || p->stopped_early)) fputc('\n', stderr);
}

/* Settings are applied as (name, value) pairs, from the config file first, then argv. */
typedef struct {
    finch_train_options o;
    const char *model;
    cli_quant quant;
    long threads;
    const char *templates[16];
    finch_data_source sources[FINCH_MAX_TASKS]; /* --data, in order */
    int n_sources;
    bool sources_from_config;                           /* a --data flag then replaces them */
    char *owned[256];                                   /* strings copied out of the config file */
    const char *option_where[FINCH_MAX_METHOD_OPTIONS]; /* "FILE: " or "" per method option */
    int n_owned;
} settings;

/* Appends a training file with its weight (checked > 0); path is copied. */
static int add_source(settings *s, const char *path, double weight, const char *where) {
    if (s->sources_from_config != (*where != 0)) { /* the command line's replace the config's */
        s->n_sources = 0;
        s->sources_from_config = *where != 0;
    }
    if (s->n_sources == FINCH_MAX_TASKS)
        return cli_usage_error("train", "%s--data: at most %d files", where, FINCH_MAX_TASKS);
    if (!(weight > 0) || !isfinite(weight))
        return cli_usage_error("train", "%s--data %s: weight %g: must be > 0", where, path, weight);
    char *own = s->n_owned < 256 ? strdup(path) : NULL;
    if (!own) return cli_usage_error("train", "%stoo many settings", where);
    s->owned[s->n_owned++] = own;
    s->sources[s->n_sources++] = (finch_data_source){own, weight};
    return 0;
}

static int set(settings *s, const char *name, const char *v, const char *where) {
    finch_train_options *o = &s->o;
    long n;
    double f;
    char key[64];
    snprintf(key, sizeof key, "%s", name);
    for (char *c = key; *c; c++)
        if (*c == '_') *c = '-';
#define NEED()                                                                                     \
    if (!v) return cli_usage_error("train", "%s--%s needs a value", where, key)
#define INT(field, lo, hi)                                                                         \
    do {                                                                                           \
        NEED();                                                                                    \
        if (!cli_parse_int(v, lo, hi, &n))                                                         \
            return cli_usage_error("train", "%s--%s %s: must be an integer from %ld to %ld",       \
                                   where, key, v, (long)(lo), (long)(hi));                         \
        field = n;                                                                                 \
    } while (0)
#define NUM(field, lo, hi)                                                                         \
    do {                                                                                           \
        NEED();                                                                                    \
        if (!cli_parse_float(v, lo, hi, &f))                                                       \
            return cli_usage_error("train", "%s--%s %s: must be a number from %g to %g", where,    \
                                   key, v, (double)(lo), (double)(hi));                            \
        field = f;                                                                                 \
    } while (0)
#define STR(field)                                                                                 \
    do {                                                                                           \
        NEED();                                                                                    \
        field = v;                                                                                 \
    } while (0)
    int q = cli_quant_set("train", &s->quant, key, v);
    if (q) return q < 0 ? EXIT_USAGE : 0;
    if (!strcmp(key, "model") || !strcmp(key, "m"))
        STR(s->model);
    else if (!strcmp(key, "data")) {
        NEED();
        char path[4096];
        double w;
        finch_err err;
        if (finch_data_source_parse(v, path, sizeof path, &w, &err))
            return cli_usage_error("train", "%s%s", where, err.msg);
        return add_source(s, path, w, where);
    } else if (!strcmp(key, "val"))
        STR(o->val_path);
    else if (!strcmp(key, "val-fraction"))
        NUM(o->val_fraction, 0, 0.99);
    else if (!strcmp(key, "val-max-examples"))
        INT(o->val_max_examples, 1, __LONG_MAX__);
    else if (!strcmp(key, "format"))
        STR(o->data.format);
    else if (!strcmp(key, "template")) {
        NEED();
        if (o->data.n_templates == 16) return cli_usage_error("train", "--template: at most 16");
        s->templates[o->data.n_templates++] = v;
        o->data.templates = s->templates;
    } else if (!strcmp(key, "chat"))
        o->data.chat = 1;
    else if (!strcmp(key, "max-seq-len"))
        INT(o->data.max_seq_len, 2, 1 << 20);
    else if (!strcmp(key, "max-examples"))
        INT(o->data.max_examples, 1, __LONG_MAX__);
    else if (!strcmp(key, "train-on-prompt"))
        o->data.train_on_prompt = 1;
    else if (!strcmp(key, "skip-bad"))
        o->data.skip_bad = 1;
    else if (!strcmp(key, "packing"))
        o->packing = 1;
    else if (!strcmp(key, "bf16"))
        o->bf16 = 1;
    else if (!strcmp(key, "gradient-checkpointing") || !strcmp(key, "gradient_checkpointing"))
        o->gradient_checkpointing = 1;
    else if (!strcmp(key, "method"))
        STR(o->method);
    else if (!strcmp(key, "objective"))
        STR(o->objective);
    else if (!strcmp(key, "beta"))
        NUM(o->beta, 1e-6, 1e3);
    else if (!strcmp(key, "learning-rate") || !strcmp(key, "lr"))
        NUM(o->learning_rate, 1e-12, 0.99);
    else if (!strcmp(key, "lr-scheduler"))
        STR(o->lr_scheduler);
    else if (!strcmp(key, "warmup-steps"))
        INT(o->warmup_steps, 0, __LONG_MAX__);
    else if (!strcmp(key, "batch-size"))
        INT(o->batch_size, 1, 4096);
    else if (!strcmp(key, "grad-accum"))
        INT(o->grad_accum, 1, 65536);
    else if (!strcmp(key, "max-steps"))
        INT(o->max_steps, 1, __LONG_MAX__);
    else if (!strcmp(key, "epochs"))
        NUM(o->epochs, 1e-6, 1e6);
    else if (!strcmp(key, "weight-decay"))
        NUM(o->weight_decay, 0, 0.99);
    else if (!strcmp(key, "max-grad-norm"))
        NUM(o->max_grad_norm, 0, 1e9);
    else if (!strcmp(key, "seed")) {
        INT(n, 0, __LONG_MAX__);
        o->seed = (uint64_t)n;
    } else if (!strcmp(key, "save-steps"))
        INT(o->save_steps, 0, __LONG_MAX__);
    else if (!strcmp(key, "save-total-limit"))
        INT(o->save_total_limit, 1, __LONG_MAX__);
    else if (!strcmp(key, "eval-steps"))
        INT(o->eval_steps, 0, __LONG_MAX__);
    else if (!strcmp(key, "early-stopping-patience"))
        INT(o->early_stopping_patience, 1, __LONG_MAX__);
    else if (!strcmp(key, "early-stopping-threshold"))
        NUM(o->early_stopping_threshold, 0, 1e9);
    else if (!strcmp(key, "load-best-model-at-end"))
        o->load_best_model_at_end = 1;
    else if (!strcmp(key, "log-steps"))
        INT(o->log_steps, 0, __LONG_MAX__);
    else if (!strcmp(key, "out"))
        STR(o->out_dir);
    else if (!strcmp(key, "resume"))
        STR(o->resume_dir);
    else if (!strcmp(key, "simulate-ranks"))
        INT(o->simulate_ranks, 1, 4096);
    else if (!strcmp(key, "threads") || !strcmp(key, "t"))
        INT(s->threads, 1, 1024);
    else if (finch_method_option_kind(key)) {
        /* the method's own options are checked by the library against --method */
        if (finch_method_option_kind(key) == 1) NEED();
        finch_err err;
        char *own = s->n_owned < 256 ? strdup(key) : NULL; /* key is this call's buffer */
        if (!own) return cli_usage_error("train", "%stoo many settings", where);
        s->owned[s->n_owned++] = own;
        int k = o->n_method_options;
        if (finch_train_set_option(o, own, v, &err))
            return cli_usage_error("train", "%s%s", where, err.msg);
        s->option_where[k] = *where ? strdup(where) : NULL;
    } else
        return cli_usage_error("train", "%sunknown setting '%s' (see finch train --help)", where,
                               name);
    return 0;
#undef NEED
#undef INT
#undef NUM
#undef STR
}

static bool is_switch(const char *key) {
    static const char *const sw[] = {"chat",
                                     "train-on-prompt",
                                     "skip-bad",
                                     "packing",
                                     "train_on_prompt",
                                     "skip_bad",
                                     "bf16",
                                     "gradient-checkpointing",
                                     "gradient_checkpointing",
                                     "load-best-model-at-end",
                                     "load_best_model_at_end"};
    for (size_t i = 0; i < sizeof sw / sizeof sw[0]; i++)
        if (!strcmp(key, sw[i])) return true;
    return cli_quant_is_switch(key) || finch_method_option_kind(key) == 2;
}

/* The config's "data" as a list of training files: "FILE[:WEIGHT]" strings, as --data
 * takes them, or {"path": FILE, "weight": W} objects. */
static int config_data(settings *s, json_t *list, const char *where) {
    size_t i;
    json_t *e;
    if (!json_array_size(list))
        return cli_usage_error("train", "%s\"data\": an empty list of training files", where);
    json_array_foreach(list, i, e) {
        const char *key;
        json_t *v, *path = json_object_get(e, "path"), *w = json_object_get(e, "weight");
        int bad = !json_is_string(e) && (!json_is_string(path) || (w && !json_is_number(w)));
        json_object_foreach(e, key, v) bad |= strcmp(key, "path") && strcmp(key, "weight");
        if (bad)
            return cli_usage_error("train",
                                   "%s\"data\" entry %zu: expected \"FILE[:WEIGHT]\" or "
                                   "{\"path\": FILE, \"weight\": NUMBER}",
                                   where, i + 1);
        int rc = json_is_string(e) ? set(s, "data", json_string_value(e), where)
                                   : add_source(s, json_string_value(path),
                                                w ? json_number_value(w) : 1.0, where);
        if (rc) return rc;
    }
    return 0;
}

static int read_config(settings *s, const char *path) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        fprintf(stderr, "finch: error: %s: line %d, column %d: %s\n", path, je.line, je.column,
                je.text);
        return EXIT_FAIL;
    }
    int rc = 0;
    if (!json_is_object(root)) {
        fprintf(stderr, "finch: error: %s: the config must be a JSON object of settings\n", path);
        rc = EXIT_FAIL;
    }
    const char *key;
    json_t *val;
    char where[600];
    snprintf(where, sizeof where, "%s: ", path);
    json_object_foreach(root, key, val) {
        if (rc) break;
        char buf[64];
        const char *v = NULL;
        if (!strcmp(key, "data") && json_is_array(val)) {
            rc = config_data(s, val, where) ? EXIT_USAGE : 0;
            continue;
        }
        if (is_switch(key)) {
            if (!json_is_boolean(val)) {
                fprintf(stderr, "finch: error: %s: \"%s\" must be true or false\n", path, key);
                rc = EXIT_FAIL;
                break;
            }
            if (!json_is_true(val)) continue;
        } else if (json_is_string(val)) {
            v = json_string_value(val);
        } else if (json_is_integer(val)) {
            snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(val));
            v = buf;
        } else if (json_is_real(val)) {
            snprintf(buf, sizeof buf, "%.17g", json_real_value(val));
            v = buf;
        } else {
            fprintf(stderr, "finch: error: %s: \"%s\" must be a string, a number or a boolean\n",
                    path, key);
            rc = EXIT_FAIL;
            break;
        }
        if (v) {
            if (s->n_owned == 256 || !(v = s->owned[s->n_owned++] = strdup(v))) {
                rc = EXIT_FAIL;
                break;
            }
        }
        if (set(s, key, v, where)) rc = EXIT_USAGE;
    }
    json_decref(root);
    return rc;
}

static json_t *json_string_or_null(const char *v) {
    return v ? json_string(v) : json_null();
}

/* Writes OUT/run.json: the model, the data and every training option with the value the
 * run uses (defaults resolved), the finch version and the start time, for finch report;
 * after the run also the trainable and total parameter counts (ps).
 * Written atomically; a failure is a warning, the run goes on. */
static void save_run_json(const settings *s, const finch_model *m, time_t now,
                          const progress_state *ps) {
    const finch_train_options *o = &s->o;
    const finch_data_spec *d = &o->data;
    char model[4096], path[4200], date[32];
    finch_err err;
    if (s->model)
        snprintf(model, sizeof model, "%s", s->model);
    else if (finch_default_model_path(model, sizeof model, &err))
        snprintf(model, sizeof model, "?");
    finch_model_config cfg;
    finch_model_config_get(m, &cfg);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_t *j = json_object(), *tpl = json_array();
    for (int i = 0; i < d->n_templates; i++)
        json_array_append_new(tpl, json_string(d->templates[i]));
#define S(k, v) json_object_set_new(j, k, json_string_or_null(v))
#define I(k, v) json_object_set_new(j, k, json_integer((json_int_t)(v)))
#define F(k, v) json_object_set_new(j, k, json_real(v))
#define B(k, v) json_object_set_new(j, k, json_boolean(v))
    S("finch_version", FINCH_VERSION);
    S("date", date);
    I("started_unix", now);
    S("model", model);
    B("load_in_4bit", s->quant.load_in_4bit);
    if (s->quant.load_in_4bit) {
        B("bnb_4bit_use_double_quant", s->quant.double_quant);
        S("bnb_4bit_quant_type", s->quant.quant_type);
    }
    if (s->n_sources == 1 && s->sources[0].weight == 1) {
        S("data", s->sources[0].path);
    } else { /* a mixture: as --config takes it */
        json_t *list = json_array();
        for (int k = 0; k < s->n_sources; k++)
            json_array_append_new(list, json_pack("{s:s, s:f}", "path", s->sources[k].path,
                                                  "weight", s->sources[k].weight));
        json_object_set_new(j, "data", list);
    }
    S("val", o->val_path);
    F("val_fraction", o->val_fraction);
    I("val_max_examples", o->val_max_examples);
    S("format", d->format ? d->format : "auto");
    json_object_set_new(j, "templates", tpl);
    B("chat", d->chat);
    /* 0 means 256, or the model's context when shorter (as finch_train resolves it) */
    I("max_seq_len", d->max_seq_len          ? d->max_seq_len
                     : cfg.n_ctx_train < 256 ? cfg.n_ctx_train
                                             : 256);
    I("max_examples", d->max_examples);
    B("train_on_prompt", d->train_on_prompt);
    B("skip_bad", d->skip_bad);
    S("objective", o->objective ? o->objective : "sft");
    if (o->objective && !strcmp(o->objective, "dpo")) F("beta", o->beta);
    S("method", o->method);
    /* the method's options, resolved, under their flag names with '_' (lora_r) */
    finch_option mo[64];
    int n_mo =
        finch_method_options_resolved(o->method, o->method_options, o->n_method_options, mo, 64);
    for (int i = 0; i < n_mo && i < 64; i++) {
        char key[64], *end;
        snprintf(key, sizeof key, "%s", mo[i].name);
        for (char *c = key; *c; c++)
            if (*c == '-') *c = '_';
        const char *v = mo[i].value;
        long long n = strtoll(v, &end, 10);
        if (!strcmp(v, "true") || !strcmp(v, "false"))
            B(key, !strcmp(v, "true"));
        else if (*v && !*end)
            I(key, n);
        else if (strtod(v, &end), *v && !*end)
            F(key, strtod(v, NULL));
        else
            S(key, v);
    }
    F("learning_rate", o->learning_rate);
    I("batch_size", o->batch_size);
    I("grad_accum", o->grad_accum);
    B("packing", o->packing);
    B("bf16", o->bf16);
    B("gradient_checkpointing", o->gradient_checkpointing);
    I("max_steps", o->max_steps);
    F("epochs", o->epochs);
    I("warmup_steps", o->warmup_steps);
    S("lr_scheduler", o->lr_scheduler ? o->lr_scheduler : "linear");
    F("weight_decay", o->weight_decay);
    F("max_grad_norm", o->max_grad_norm);
    I("seed", o->seed);
    I("save_steps", o->save_steps);
    I("save_total_limit", o->save_total_limit);
    I("eval_steps", o->eval_steps);
    I("early_stopping_patience", o->early_stopping_patience);
    F("early_stopping_threshold", o->early_stopping_threshold);
    B("load_best_model_at_end", o->load_best_model_at_end);
    I("log_steps", o->log_steps);
    I("ranks", finch_dist_size() > 1   ? finch_dist_size()
               : o->simulate_ranks > 1 ? o->simulate_ranks
                                       : 1);
    S("out", o->out_dir);
    S("resume", o->resume_dir);
    if (ps && ps->n_trainable >= 0) { /* known once a step has run */
        I("trainable_params", ps->n_trainable);
        I("total_params", ps->n_total);
    }
    if (ps && ps->best_step) { /* the lowest validation loss and its step */
        F("best_metric", ps->best_metric);
        I("best_step", ps->best_step);
        B("stopped_early", ps->stopped_early);
    }
#undef S
#undef I
#undef F
#undef B
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    json_decref(j);
    /* mkdir -p OUT: finch_train makes it too (and says why it cannot), but after this */
    cli_mkdir_p(o->out_dir, NULL, 0);
    snprintf(path, sizeof path, "%s/run.json", o->out_dir);
    if (!text)
        fprintf(stderr, "finch: warning: %s: out of memory\n", path);
    else if (finch_eval_write_file(path, text, strlen(text), &err))
        fprintf(stderr, "finch: warning: %s\n", err.msg);
    free(text);
}

int cmd_train(int argc, char **argv) {
    settings s = {.o = finch_train_defaults(), .quant = CLI_QUANT_DEFAULTS};
    int rc = 0;
    /* the config file first, so flags override it */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            print_usage();
            return 0;
        }
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) return cli_usage_error("train", "--config needs a value");
            if ((rc = read_config(&s, argv[i + 1]))) goto done;
        }
    }
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (strncmp(a, "--", 2) && strcmp(a, "-m") && strcmp(a, "-t")) {
            rc = cli_usage_error("train", "unexpected argument '%s' (see finch train --help)", a);
            break;
        }
        const char *name = a[1] == '-' ? a + 2 : a + 1;
        const char *v = NULL;
        if (!is_switch(name)) {
            if (i + 1 >= argc) {
                rc = cli_usage_error("train", "%s needs a value", a);
                break;
            }
            v = argv[++i];
        }
        rc = set(&s, name, v, "");
    }
    if (rc) goto done;
    /* the method's options against --method, before the model loads; errors name the file */
    for (int i = 0; i < s.o.n_method_options && !rc; i++) {
        finch_err err;
        const finch_option *mo = &s.o.method_options[i];
        if (finch_method_check_option(s.o.method, mo->name, mo->value, &err))
            rc = cli_usage_error("train", "%s%s", s.option_where[i] ? s.option_where[i] : "",
                                 err.msg);
    }
    if (rc) goto done;
    if (!s.n_sources) {
        rc = cli_usage_error("train", "no training data: give --data FILE");
        goto done;
    }
    s.o.sources = s.sources;
    s.o.n_sources = s.n_sources;
    if (!s.o.out_dir) {
        rc = cli_usage_error("train", "no output directory: give --out DIR");
        goto done;
    }
    finch_err err;
    if (finch_dist_init(NULL, NULL, &err)) {
        rc = cli_fail(&err);
        goto done;
    }
    const int rank = finch_dist_rank(), procs = finch_dist_size();
    if (!s.threads && procs > 1 && !getenv("FINCH_THREADS")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN) / finch_dist_local_size();
        s.threads = cores > 1 ? cores : 1;
    }
    cli_set_threads(s.threads);
    finch_model *m = cli_load_model_quant(s.model, &s.quant);
    if (!m) {
        rc = EXIT_FAIL;
        goto done;
    }
    const time_t started = time(NULL);
    if (rank == 0) save_run_json(&s, m, started, NULL);
    signal(SIGINT, on_sigint);
    progress_state ps = {.tty = isatty(2), .n_trainable = -1, .n_total = -1};
    if (finch_train(m, &s.o, progress, should_stop, &ps, &err)) {
        if (ps.tty && rank == 0) fputc('\n', stderr);
        if (procs > 1) { /* say which rank: each prints its own failure */
            char msg[sizeof err.msg];
            snprintf(msg, sizeof msg, "%s", err.msg);
            snprintf(err.msg, sizeof err.msg, "rank %d of %d: %.480s", rank, procs, msg);
        }
        rc = cli_fail(&err);
    } else if (rank == 0) {
        save_run_json(&s, m, started, &ps); /* again, with the parameter counts */
        fprintf(stderr, "finch train: %s written to %s; metrics in %s/metrics.jsonl\n",
                finch_method_result(s.o.method), s.o.out_dir, s.o.out_dir);
    }
    signal(SIGINT, SIG_DFL);
    finch_model_free(m);
    /* a failed rank leaves without finalising: mpirun then ends the ranks still waiting in
     * a collective (finalising would wait for them) */
    if (!rc) finch_dist_finalize();
done:
    for (int i = 0; i < s.n_owned; i++) free(s.owned[i]);
    for (int i = 0; i < s.o.n_method_options; i++) free((char *)s.option_where[i]);
    return rc;
}
