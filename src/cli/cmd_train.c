/*
 * cmd_train.c: `finch train`: fine-tunes a model on a JSONL dataset and writes the
 * adapter. Flags are named as the Hugging Face world names them (the table below; a
 * method's own options come from the library's method table); --config FILE reads the
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
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

enum { MAX_OWNED = 2 * FINCH_MAX_METHOD_OPTIONS };

/* The settings: the config file's, then the command line's over them. */
typedef struct {
    finch_train_options o;
    const char *model;
    cli_quant quant;
    long threads;
    cli_list data, templates;
    finch_data_source sources[FINCH_MAX_TASKS]; /* --data's files, weights split off */
    cli_config config;
    char *owned[MAX_OWNED];                             /* the method options' names */
    const char *option_where[FINCH_MAX_METHOD_OPTIONS]; /* "FILE: " or NULL per method option */
    int n_owned;
} settings;

/* A method's option (the library's method table knows them): recorded now, checked
 * against --method once every flag is read. */
static bool method_option_set(void *dst, const char *name, const char *value, const char *where,
                              char *msg, size_t n) {
    settings *s = dst;
    char *own = s->n_owned < MAX_OWNED ? strdup(name) : NULL;
    if (!own) return snprintf(msg, n, "too many method options"), false;
    s->owned[s->n_owned++] = own;
    const int k = s->o.n_method_options;
    finch_err err;
    if (finch_train_set_option(&s->o, own, value, &err))
        return snprintf(msg, n, "%s", err.msg), false;
    s->option_where[k] = *where ? strdup(where) : NULL;
    return true;
}

/* The method table's methods, each with its options. */
static void method_help(FILE *f, int width) {
    for (int i = 0; i < finch_method_count(); i++) {
        cli_help_line(f, width, finch_method_name(i), finch_method_description(i));
        size_t n = finch_method_usage(i, NULL, 0);
        char *buf = malloc(n + 1);
        if (buf) {
            finch_method_usage(i, buf, n + 1);
            fputs(buf, f);
        }
        free(buf);
    }
    cli_help_line(f, width, "--layers LIST",
                  "the blocks a method acts on: 20-29 or 0,2,5-7 (default all)");
}

static const cli_more method_options = {finch_method_option_kind, method_option_set, method_help};

#define CLI_DST settings
static const cli_flag flag_table[] = {
    CLI_STRING("-m, --model", "FILE", model,
               "GGUF model or Hugging Face folder (default: the cached\n"
               "SmolLM2-135M-Instruct)"),
    CLI_TEXT("data:"),
    CLI_LIST("--data", "FILE[:WEIGHT]", FINCH_MAX_TASKS, data,
             "training JSONL (prompt/completion, Alpaca, Dolly or chat lines;\n"
             "{\"prompt\", \"chosen\", \"rejected\"} pairs with --objective dpo);\n"
             "repeat for a multi-task mixture: each example slot draws a file\n"
             "by WEIGHT (default 1, normalised), then that file's next example"),
    CLI_STRING("--val", "FILE", o.val_path,
               "validation JSONL (or --val-fraction F of each training file)"),
    CLI_FLOAT("--val-fraction", "F", 0, 0.99, o.val_fraction,
              "hold out this fraction of each training file (default 0)"),
    CLI_ENUM("--format", "auto|completion|alpaca|dolly|chat|preference", o.data.format,
             "the lines' shape (default auto)"),
    CLI_LIST("--template", "TEXT", 16, templates,
             "prompt template with {field} placeholders (repeatable: sampled)"),
    CLI_SWITCH("--chat", o.data.chat, "wrap prompts in the model's chat template"),
    CLI_INT("--max-seq-len", "N", 2, 1 << 20, o.data.max_seq_len,
            "tokens per example at most (default 256 or the context)"),
    CLI_INT("--max-examples", "N", 1, LONG_MAX, o.data.max_examples,
            "use the first N training examples"),
    CLI_SWITCH("--train-on-prompt", o.data.train_on_prompt,
               "loss on prompt tokens too (default: completion only)"),
    CLI_SWITCH("--skip-bad", o.data.skip_bad, "skip malformed lines (counted) instead of stopping"),
    CLI_SWITCH("--packing", o.packing,
               "pack several examples into each row of --max-seq-len tokens"),
    CLI_TEXT("method:"),
    CLI_STRING("--method", "NAME", o.method,
               "what trains (default lora); its options follow it below"),
    CLI_MORE,
    CLI_TEXT("objective:"),
    CLI_ENUM("--objective", "sft|dpo", o.objective,
             "sft (default): cross-entropy on the completions; dpo: TRL's\n"
             "sigmoid DPO loss on preference pairs, the reference being the\n"
             "model without the method (any method); logs rewards/chosen,\n"
             "rewards/rejected, rewards/accuracies, rewards/margins"),
    CLI_FLOAT("--beta", "B", 1e-6, 1e3, o.beta,
              "DPO's beta (default 0.1); --batch-size counts pairs"),
    CLI_TEXT("optimisation:"),
    CLI_FLOAT("--learning-rate, --lr", "LR", 1e-12, 0.99, o.learning_rate,
              "peak learning rate (default 2e-4)"),
    CLI_ENUM("--lr-scheduler", "linear|cosine|constant", o.lr_scheduler,
             "after the warmup (default linear)"),
    CLI_INT("--warmup-steps", "N", 0, LONG_MAX, o.warmup_steps, "linear warmup (default 0)"),
    CLI_INT("--batch-size", "N", 1, 4096, o.batch_size, "examples per micro-batch (default 4)"),
    CLI_INT("--grad-accum", "N", 1, 65536, o.grad_accum,
            "micro-batches per optimizer step (default 1)"),
    CLI_INT("--max-steps", "N", 1, LONG_MAX, o.max_steps,
            "optimizer steps (default: from --epochs)"),
    CLI_FLOAT("--epochs", "E", 1e-6, 1e6, o.epochs,
              "passes over the training data without --max-steps (default 1)"),
    CLI_FLOAT("--weight-decay", "W", 0, 0.99, o.weight_decay,
              "AdamW's decoupled weight decay (default 0)"),
    CLI_FLOAT("--max-grad-norm", "G", 0, 1e9, o.max_grad_norm,
              "clip the gradients' global norm (default 1, 0 = off)"),
    CLI_SWITCH("--fused-optimizer", o.fused_optimizer,
               "AdamW updates each tensor as soon as backward completes its\n"
               "gradient, so one block's gradients are held instead of all\n"
               "(and the embeddings'); the same parameters bit for bit; needs\n"
               "--max-grad-norm 0, --grad-accum 1 and one rank"),
    CLI_INT("--seed", "S", 0, LONG_MAX, o.seed,
            "data order, dropout, the method's initialisation (default 42)"),
    CLI_TEXT("run:"),
    CLI_STRING("--out", "DIR", o.out_dir, "adapter, checkpoints and metrics.jsonl go here"),
    CLI_INT("--save-steps", "N", 0, LONG_MAX, o.save_steps,
            "a checkpoint every N steps (default 0: at the end)"),
    CLI_INT("--save-total-limit", "N", 1, LONG_MAX, o.save_total_limit,
            "keep the newest N checkpoints (default: all; and the best with\n"
            "--load-best-model-at-end)"),
    CLI_INT("--eval-steps", "N", 0, LONG_MAX, o.eval_steps,
            "validation loss every N steps (default 0: at the end)"),
    CLI_INT("--early-stopping-patience", "N", 1, LONG_MAX, o.early_stopping_patience,
            "stop when the validation loss has not improved for N\n"
            "evaluations in a row (needs --eval-steps and validation data)"),
    CLI_FLOAT("--early-stopping-threshold", "T", 0, 1e9, o.early_stopping_threshold,
              "an improvement is a fall of more than T (default 0)"),
    CLI_SWITCH("--load-best-model-at-end", o.load_best_model_at_end,
               "the result is the checkpoint with the lowest validation loss,\n"
               "which --save-total-limit keeps (--save-steps a multiple of\n"
               "--eval-steps)"),
    CLI_INT("--log-steps", "N", 0, LONG_MAX, o.log_steps,
            "a metrics line every N steps (default 10)"),
    CLI_INT("--val-max-examples", "N", 1, LONG_MAX, o.val_max_examples,
            "validation examples scored at each evaluation (default all)"),
    CLI_STRING("--resume", "DIR", o.resume_dir,
               "continue from a checkpoint (or the run directory's latest)"),
    CLI_CONFIG("--config", "FILE", config,
               "settings as a JSON object, keys as these flags without \"--\"\n"
               "('-' or '_'; a list for a repeatable one); flags override it"),
    CLI_GROUP(cli_quant_flags, quant),
    CLI_SWITCH("--gradient-checkpointing", o.gradient_checkpointing,
               "keep each block's input only and recompute the block in\n"
               "backward: far less memory, one more forward per step"),
    CLI_SWITCH("--bf16", o.bf16,
               "mixed precision: the frozen base's products in bf16 (AMX where\n"
               "the CPU has it), parameters and optimizer state in f32"),
    CLI_INT("--simulate-ranks", "N", 1, 4096, o.simulate_ranks,
            "one process computes what `mpirun -np N` ranks would (each\n"
            "micro-batch N slices of --batch-size rows, gradients summed\n"
            "in rank order); under mpirun the ranks are the processes"),
    CLI_THREADS(threads),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "train",
    .usage = "usage: finch train [-m MODEL] --data FILE --out DIR [options]\n",
    .flags = flag_table,
    .more = &method_options};

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
    if (o->n_sources == 1 && o->sources[0].weight == 1) {
        S("data", o->sources[0].path);
    } else { /* a mixture */
        json_t *list = json_array();
        for (int k = 0; k < o->n_sources; k++)
            json_array_append_new(list, json_pack("{s:s, s:f}", "path", o->sources[k].path,
                                                  "weight", o->sources[k].weight));
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
    B("fused_optimizer", o->fused_optimizer);
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
    int rc = cli_parse(&command, argc, argv, &s);
    if (rc != CLI_RUN) goto done;
    rc = 0;
    /* --data FILE[:WEIGHT]: the files of a mixture (or the one file) */
    for (int k = 0; k < s.data.n && !rc; k++) {
        char path[4096];
        finch_err err;
        if (finch_data_source_parse(s.data.v[k], path, sizeof path, &s.sources[k].weight, &err))
            rc = cli_usage_error("train", "%s", err.msg);
        else if (!(s.sources[k].path = strdup(path)))
            rc = cli_usage_error("train", "out of memory");
        s.o.n_sources = k + 1;
    }
    if (rc) goto done;
    s.o.sources = s.sources;
    s.o.data.templates = s.templates.n ? s.templates.v : NULL;
    s.o.data.n_templates = s.templates.n;
    /* the method's options against --method, before the model loads; errors name the file */
    for (int i = 0; i < s.o.n_method_options && !rc; i++) {
        finch_err err;
        const finch_option *mo = &s.o.method_options[i];
        if (finch_method_check_option(s.o.method, mo->name, mo->value, &err))
            rc = cli_usage_error("train", "%s%s", s.option_where[i] ? s.option_where[i] : "",
                                 err.msg);
    }
    if (rc) goto done;
    if (!s.o.n_sources) {
        rc = cli_usage_error("train", "no training data: give --data FILE");
        goto done;
    }
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
    for (int k = 0; k < s.o.n_sources; k++) free((char *)s.sources[k].path);
    for (int i = 0; i < s.o.n_method_options; i++) free((char *)s.option_where[i]);
    cli_config_free(&s.config);
    return rc;
}
