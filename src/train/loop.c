/*
 * loop.c: finch_train, the fine-tuning run: data, adapter, optimizer, steps with
 * gradient accumulation, evaluation, checkpoints, metrics.jsonl, interruption, resume.
 *
 * Determinism: the example order of epoch e is a shuffle seeded by (seed, e); dropout
 * masks are seeded by (seed, step, micro-batch); everything else is arithmetic that gives
 * the same bits for the same thread count. A run resumed from a checkpoint therefore
 * continues exactly as the uninterrupted one.
 */
#include "data/data.h"   /* datasets, tokens, batches */
#include "optim/optim.h" /* AdamW, schedules, clipping */
#include "peft/peft.h"   /* the method table */
#include "train/train.h" /* checkpoints */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

finch_train_options finch_train_defaults(void) {
    return (finch_train_options){
        .data = {.max_seq_len = 0},
        .method = "lora",
        .learning_rate = 2e-4,
        .batch_size = 4,
        .grad_accum = 1,
        .epochs = 1.0,
        .lr_scheduler = "linear",
        .max_grad_norm = 1.0,
        .seed = 42,
        .log_steps = 10,
    };
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* One splitmix64 step from z: seeds derived from (seed, epoch) and (seed, step). */
static uint64_t mix64(uint64_t z) {
    return finch_mix64(z + 0x9e3779b97f4a7c15ull);
}

/* order (n) = the example order of epoch e. */
static void epoch_order(int64_t *order, int64_t n, uint64_t seed, int64_t e) {
    finch_rng rng;
    finch_rng_seed(&rng, mix64(seed ^ mix64((uint64_t)e + 1)));
    for (int64_t i = 0; i < n; i++) order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(finch_rng_u64(&rng) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static finch_status check_options(const finch_model *m, const finch_train_options *o,
                                  finch_err *err) {
#define BAD(...) return finch_err_set(err, FINCH_E_USAGE, __VA_ARGS__)
    if (!o->data.path) BAD("no training data: give --data FILE");
    if (!o->out_dir) BAD("no output directory: give --out DIR");
    if (o->n_method_options < 0 || o->n_method_options > FINCH_MAX_METHOD_OPTIONS)
        BAD("%d method options: at most %d", o->n_method_options, FINCH_MAX_METHOD_OPTIONS);
    if (!(o->learning_rate > 0 && o->learning_rate < 1))
        BAD("--learning-rate %g: must be in (0, 1)", o->learning_rate);
    if (o->batch_size < 1 || o->batch_size > 4096)
        BAD("--batch-size %d: must be from 1 to 4096", o->batch_size);
    if (o->grad_accum < 1 || o->grad_accum > 65536)
        BAD("--grad-accum %d: must be from 1 to 65536", o->grad_accum);
    if (o->max_steps < 0) BAD("--max-steps %lld: must be >= 0", (long long)o->max_steps);
    if (o->max_steps == 0 && !(o->epochs > 0 && o->epochs <= 1e6))
        BAD("--epochs %g: must be > 0", o->epochs);
    if (o->warmup_steps < 0) BAD("--warmup-steps %lld: must be >= 0", (long long)o->warmup_steps);
    if (!(o->weight_decay >= 0 && o->weight_decay < 1))
        BAD("--weight-decay %g: must be in [0, 1)", o->weight_decay);
    if (!(o->max_grad_norm >= 0)) BAD("--max-grad-norm %g: must be >= 0", o->max_grad_norm);
    if (o->save_total_limit < 0)
        BAD("--save-total-limit %lld: must be >= 0", (long long)o->save_total_limit);
    if (o->save_steps < 0 || o->eval_steps < 0 || o->log_steps < 0)
        BAD("--save-steps, --eval-steps and --log-steps must be >= 0");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        BAD("--val-fraction %g: must be in [0, 1)", o->val_fraction);
    int max_len = o->data.max_seq_len;
    if (max_len != 0 && (max_len < 2 || max_len > m->cfg.n_ctx_train))
        BAD("--max-seq-len %d: must be from 2 to %d (the model's context)", max_len,
            m->cfg.n_ctx_train);
#undef BAD
    return FINCH_OK;
}

/* Appends one JSON object line to metrics.jsonl (one write: a crash or a full disk loses
 * at most that line, never leaves half of it). A NULL file logs nothing. */
static finch_status metric_line(finch_append_file *f, finch_err *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static finch_status metric_line(finch_append_file *f, finch_err *err, const char *fmt, ...) {
    if (!f || !f->path) return FINCH_OK;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    FINCH_ASSERT(n > 0 && (size_t)n < sizeof line - 1);
    line[n++] = '\n';
    return finch_file_append(f, line, (size_t)n, err);
}

/* Mean loss over a token set, in batches of B rows of T (forward only), into *out. */
static finch_status eval_loss(const finch_model *m, finch_train_acts *acts, finch_batch *b,
                              const finch_token_set *vs, int64_t max_examples, const int32_t pad,
                              double *out, finch_err *err) {
    int64_t n = vs->n;
    if (max_examples > 0 && n > max_examples) n = max_examples;
    int64_t *order = finch_alloc((size_t)vs->n * sizeof *order, "validation order", err);
    if (!order) return FINCH_E_NOMEM;
    for (int64_t i = 0; i < vs->n; i++) order[i] = i;
    double sum = 0;
    int64_t count = 0, next = 0, epoch = 0;
    finch_token_set part = *vs;
    part.n = n;
    while (epoch == 0) {
        int64_t before = next;
        finch_batch_fill(b, &part, order, &next, &epoch, false, pad);
        int64_t rows = epoch ? n - before : next - before; /* rows filled with new examples */
        /* rows past the end wrapped to the start: mask them out */
        for (int64_t r = rows; r < b->B; r++)
            for (int t = 0; t < b->T; t++) b->targets[r * b->T + t] = -1;
        int64_t nt = 0;
        for (int64_t i = 0; i < (int64_t)b->B * b->T; i++) nt += b->targets[i] >= 0;
        if (nt) {
            sum += finch_model_train_step(m, acts, b->ids, b->targets, b->pos, b->seg, 0.0f, 0,
                                          false) *
                   (double)nt;
            count += nt;
        }
    }
    free(order);
    *out = count ? sum / (double)count : NAN;
    return FINCH_OK;
}

/* Rows that packing the examples of one epoch in this order fills (as finch_batch_fill
 * packs: whole examples in order, one that does not fit starting the next row). */
static int64_t packed_rows(const finch_token_set *s, const int64_t *order, int T) {
    int64_t rows = 0;
    int at = T;
    for (int64_t i = 0; i < s->n; i++) {
        int n = s->ex[order[i]].n;
        if (at + n > T) rows++, at = 0;
        at += n;
    }
    return rows;
}

static finch_status load_tokens(const finch_model *m, const finch_data_spec *spec, const char *path,
                                int max_len, finch_dataset **keep, finch_token_set *ts,
                                finch_err *err) {
    finch_data_options dopt = {.skip_bad = spec->skip_bad != 0,
                               .seed = spec->seed,
                               .tok = m->tok,
                               .templates = {spec->templates, spec->n_templates, spec->chat != 0}};
    finch_status st = finch_shape_parse(spec->format ? spec->format : "auto", &dopt.shape, err);
    finch_dataset *d = NULL;
    if (!st) st = finch_dataset_load(path, &dopt, &d, err);
    if (st) return st;
    if (spec->max_examples > 0 && d->n > spec->max_examples) {
        for (int64_t i = spec->max_examples; i < d->n; i++) finch_text_example_release(&d->ex[i]);
        d->n = spec->max_examples;
    }
    if (d->n_skipped)
        finch_log(FINCH_LOG_WARN, "%s: %lld malformed lines skipped", path,
                  (long long)d->n_skipped);
    st = finch_tokenize_dataset(m->tok, d, max_len, spec->train_on_prompt != 0, ts, err);
    if (!st && ts->n_truncated)
        finch_log(FINCH_LOG_WARN, "%s: %lld examples longer than %d tokens were cut", path,
                  (long long)ts->n_truncated, max_len);
    if (!st && ts->n_dropped)
        finch_log(FINCH_LOG_WARN,
                  "%s: %lld examples had no completion token within %d tokens and were dropped",
                  path, (long long)ts->n_dropped, max_len);
    *keep = d;
    return st;
}

finch_status finch_train_set_option(finch_train_options *o, const char *name, const char *value,
                                    finch_err *err) {
    if (!finch_method_option_kind(name))
        return finch_err_set(err, FINCH_E_USAGE,
                             "--%s: no method has this option (see finch train --help)", name);
    if (o->n_method_options >= FINCH_MAX_METHOD_OPTIONS)
        return finch_err_set(err, FINCH_E_USAGE, "at most %d method options",
                             FINCH_MAX_METHOD_OPTIONS);
    o->method_options[o->n_method_options++] = (finch_option){name, value};
    return FINCH_OK;
}

/* Everything one run holds. */
typedef struct {
    const finch_train_options *o;
    finch_model *m;
    int max_len, B, T;
    finch_dataset *dtrain, *dval;
    finch_token_set ts, vs;
    int64_t *order; /* the current epoch's example order */
    int64_t total;  /* optimizer steps */
    finch_lr_schedule sched;
    finch_peft *peft;
    finch_params *par; /* its registry */
    finch_adamw_range *ranges;
    int n_ranges;
    finch_train_acts *acts;
    finch_batch batch;
    float *mom, *vel;
    finch_train_pos pos;
    finch_append_file metrics; /* metrics.jsonl */
    char last_good[4300]; /* the last good state on disk, for the message if a step goes non-finite
                           */
} run;

/* Holds out the last val_fraction of the tokenized examples after a seeded shuffle. */
static finch_status hold_out(run *r, finch_err *err) {
    finch_token_set *ts = &r->ts, *vs = &r->vs;
    int64_t n_val = (int64_t)(r->o->val_fraction * (double)ts->n + 0.5);
    if (n_val < 1 || n_val >= ts->n)
        return finch_err_set(err, FINCH_E_RANGE,
                             "--val-fraction %g of %lld examples leaves none on one side",
                             r->o->val_fraction, (long long)ts->n);
    int64_t *perm = finch_mem_alloc((size_t)ts->n * sizeof *perm);
    vs->ex = finch_mem_alloc((size_t)n_val * sizeof *vs->ex);
    finch_token_example *rest = finch_mem_alloc((size_t)(ts->n - n_val) * sizeof *rest);
    if (!perm || !vs->ex || !rest) {
        free(perm);
        free(rest);
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    }
    epoch_order(perm, ts->n, r->o->seed ^ 0x5eed, 0);
    for (int64_t i = 0; i < ts->n; i++) {
        if (i < ts->n - n_val)
            rest[i] = ts->ex[perm[i]];
        else
            vs->ex[vs->n++] = ts->ex[perm[i]];
    }
    free(perm);
    free(ts->ex);
    ts->ex = rest;
    ts->n -= n_val;
    return FINCH_OK;
}

/* The training and validation sets, the batch shape and the number of steps. */
static finch_status prepare_data(run *r, finch_err *err) {
    const finch_train_options *o = r->o;
    finch_status st =
        load_tokens(r->m, &o->data, o->data.path, r->max_len, &r->dtrain, &r->ts, err);
    if (st) return st;
    if (o->val_path) {
        finch_data_spec vspec = o->data;
        vspec.max_examples = 0;
        if ((st = load_tokens(r->m, &vspec, o->val_path, r->max_len, &r->dval, &r->vs, err)))
            return st;
    } else if (o->val_fraction > 0 && (st = hold_out(r, err))) {
        return st;
    }
    /* the batch is as long as the longest example, or max_len when packing fills rows */
    r->T = 2;
    for (int64_t i = 0; i < r->ts.n; i++) r->T = r->ts.ex[i].n > r->T ? r->ts.ex[i].n : r->T;
    for (int64_t i = 0; i < r->vs.n; i++) r->T = r->vs.ex[i].n > r->T ? r->vs.ex[i].n : r->T;
    if (o->packing) r->T = r->max_len;
    r->B = o->batch_size;
    if (!(r->order = finch_alloc((size_t)r->ts.n * sizeof *r->order, "example order", err)))
        return FINCH_E_NOMEM;
    /* an epoch is ts.n rows, or with packing the rows its examples fill (counted in the
     * first epoch's order: later orders differ by a row or so, and the count must not
     * depend on where a resumed run starts) */
    int64_t epoch_rows = r->ts.n;
    if (o->packing) {
        epoch_order(r->order, r->ts.n, o->seed, 0);
        epoch_rows = packed_rows(&r->ts, r->order, r->T);
    }
    const int64_t per_step = (int64_t)r->B * o->grad_accum;
    r->total = o->max_steps ? o->max_steps
                            : (int64_t)ceil(o->epochs * (double)epoch_rows / (double)per_step);
    r->sched.total_steps = r->total > 0 ? r->total : 1;
    return FINCH_OK;
}

/* AdamW's ranges: runs of parameters with the same weight-decay flag. */
static finch_status decay_ranges(run *r, finch_err *err) {
    r->ranges = finch_calloc((size_t)r->par->n + 1, sizeof *r->ranges, "optimizer ranges", err);
    if (!r->ranges) return FINCH_E_NOMEM;
    for (int i = 0; i < r->par->n; i++) {
        const finch_param *p = &r->par->p[i];
        finch_adamw_range *last = r->n_ranges ? &r->ranges[r->n_ranges - 1] : NULL;
        if (last && last->decay == p->decay)
            last->count += (size_t)p->n;
        else
            r->ranges[r->n_ranges++] = (finch_adamw_range){(size_t)p->off, (size_t)p->n, p->decay};
    }
    return FINCH_OK;
}

/* The method, attached; activations, batch, optimizer state; the checkpoint resumed. */
static finch_status prepare_method(run *r, finch_err *err) {
    const finch_train_options *o = r->o;
    finch_rng rng;
    finch_rng_seed(&rng, o->seed);
    finch_status st = finch_peft_new(r->m, o->method, o->method_options, o->n_method_options, &rng,
                                     true, &r->peft, err);
    if (st) return st;
    r->par = finch_peft_params(r->peft);
    if (finch_peft_writes_model(r->peft)) {
        char cfg[4200];
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", o->out_dir);
        if (access(cfg, F_OK) == 0)
            return finch_err_set(err, FINCH_E_USAGE,
                                 "--out %s holds an adapter; --method %s writes a whole model: "
                                 "give another --out",
                                 o->out_dir, finch_peft_method(r->peft));
    }
    if ((st = finch_peft_attach(r->peft, r->m, 1.0f, (int64_t)r->B * r->T, err))) return st;
    if ((st = decay_ranges(r, err))) return st;
    if ((st = finch_train_acts_new(r->m, r->B, r->T, &r->acts, err)) ||
        (st = finch_batch_init(&r->batch, r->B, r->T, err)))
        return st;
    r->mom = finch_calloc((size_t)r->par->total + 1, sizeof(float), "AdamW m", err);
    r->vel = finch_calloc((size_t)r->par->total + 1, sizeof(float), "AdamW v", err);
    if (!r->mom || !r->vel) return FINCH_E_NOMEM;
    r->pos = (finch_train_pos){.seed = o->seed};
    snprintf(r->last_good, sizeof r->last_good, "no checkpoint (none was saved yet)");
    if (!o->resume_dir) return FINCH_OK;
    if ((st = finch_checkpoint_load(o->resume_dir, r->par, r->mom, r->vel, &r->pos, err)))
        return st;
    if (r->pos.seed != o->seed)
        return finch_err_set(err, FINCH_E_USAGE, "%s: the run used --seed %llu, not %llu",
                             o->resume_dir, (unsigned long long)r->pos.seed,
                             (unsigned long long)o->seed);
    if (r->pos.next >= r->ts.n)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: data position %lld is past the %lld examples: "
                             "another dataset?",
                             o->resume_dir, (long long)r->pos.next, (long long)r->ts.n);
    snprintf(r->last_good, sizeof r->last_good, "the checkpoint resumed from (%s, step %lld)",
             o->resume_dir, (long long)r->pos.step);
    return FINCH_OK;
}

/* One optimizer step's forward and backward passes over grad_accum micro-batches: the
 * mean loss; *tokens counts the examples' tokens (not padding). */
static double accumulate(run *r, int64_t step, int64_t *tokens) {
    const finch_train_options *o = r->o;
    double loss = 0;
    *tokens = 0;
    finch_grad_zero(r->par->grad, (size_t)r->par->total);
    for (int k = 0; k < o->grad_accum; k++) {
        int64_t e0 = r->pos.epoch;
        finch_batch_fill(&r->batch, &r->ts, r->order, &r->pos.next, &r->pos.epoch, o->packing != 0,
                         finch_tokenizer_eos(r->m->tok));
        if (r->pos.epoch != e0) epoch_order(r->order, r->ts.n, o->seed, r->pos.epoch);
        const finch_batch *b = &r->batch;
        float scale = b->n_targets ? 1.0f / ((float)b->n_targets * (float)o->grad_accum) : 0.0f;
        uint64_t seed = mix64(o->seed ^ mix64((uint64_t)step * 65536 + (uint64_t)k));
        if (b->n_targets)
            loss += finch_model_train_step(r->m, r->acts, b->ids, b->targets, b->pos, b->seg, scale,
                                           seed, true) /
                    o->grad_accum;
        *tokens += b->n_tokens;
    }
    return loss;
}

/* What follows a step: metrics, evaluation, progress, checkpoint; FINCH_E_INTERRUPTED
 * when should_stop asked to stop (after the checkpoint). */
static finch_status after_step(run *r, finch_train_progress *pr, double rate,
                               int (*should_stop)(void *),
                               void (*on_progress)(const finch_train_progress *, void *),
                               void *user, finch_err *err) {
    const finch_train_options *o = r->o;
    const int64_t step = pr->step;
    finch_status st;
    if (o->log_steps && (step % o->log_steps == 0 || step == r->total) &&
        (st = metric_line(&r->metrics, err,
                          "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.8g, \"grad_norm\": %.6f, "
                          "\"tokens_per_s\": %.1f, \"epoch\": %.4f}",
                          (long long)step, pr->loss, pr->lr, pr->grad_norm, rate,
                          (double)r->pos.epoch + (double)r->pos.next / (double)r->ts.n)))
        return st;
    if (r->vs.n && ((o->eval_steps && step % o->eval_steps == 0) || step == r->total)) {
        if ((st = eval_loss(r->m, r->acts, &r->batch, &r->vs, o->val_max_examples,
                            finch_tokenizer_eos(r->m->tok), &pr->val_loss, err)) ||
            (st = metric_line(&r->metrics, err, "{\"step\": %lld, \"val_loss\": %.6f}",
                              (long long)step, pr->val_loss)))
            return st;
    }
    if (on_progress) on_progress(pr, user);
    bool stop = should_stop && should_stop(user);
    if ((o->save_steps && step % o->save_steps == 0) || step == r->total || stop) {
        if ((st = finch_checkpoint_save(o->out_dir, r->peft, r->m, r->mom, r->vel, &r->pos, err)))
            return st;
        snprintf(r->last_good, sizeof r->last_good, "%s/checkpoint-%lld", o->out_dir,
                 (long long)step);
        if (o->save_total_limit > 0 &&
            (st = finch_checkpoint_prune(o->out_dir, o->save_total_limit, err)))
            return st;
    }
    if (stop)
        return finch_err_set(err, FINCH_E_INTERRUPTED,
                             "interrupted at step %lld: checkpoint saved in "
                             "%s/checkpoint-%lld (continue with --resume %s)",
                             (long long)step, o->out_dir, (long long)step, o->out_dir);
    return FINCH_OK;
}

static finch_status train_steps(run *r, void (*on_progress)(const finch_train_progress *, void *),
                                int (*should_stop)(void *), void *user, finch_err *err) {
    const finch_train_options *o = r->o;
    const int64_t n_total = r->m->cfg.n_params, n_train = r->par->total;
    finch_adamw_config ac = finch_adamw_config_default();
    ac.weight_decay = o->weight_decay;
    double smooth = NAN, tps = NAN, t_start = now_s();
    const int64_t first_step = r->pos.step;
    for (int64_t step = r->pos.step + 1; step <= r->total; step++) {
        double t0 = now_s();
        int64_t tokens;
        double loss = accumulate(r, step, &tokens);
        float *g = r->par->grad;
        double norm = o->max_grad_norm > 0 ? finch_grad_clip(g, (size_t)n_train, o->max_grad_norm)
                                           : finch_grad_norm(g, (size_t)n_train);
        if (!isfinite(loss) || !isfinite(norm))
            /* nothing of this step is applied or saved: the last checkpoint stays as it was */
            return finch_err_set(
                err, FINCH_E_RANGE,
                "step %lld: the loss is %g and the gradient norm %g (not finite): "
                "stopping without saving; the last good state is %s (resume from it "
                "with a lower --learning-rate or the method's scale)",
                (long long)step, loss, norm, r->last_good);
        double lr = finch_lr_at(&r->sched, step - 1);
        finch_adamw_step(r->par->data, r->mom, r->vel, g, (size_t)n_train, r->ranges, r->n_ranges,
                         &ac, lr, step);
        r->pos.step = step;
        double dt = now_s() - t0, rate = (double)tokens / (dt > 0 ? dt : 1e-9);
        smooth = isnan(smooth) ? loss : 0.9 * smooth + 0.1 * loss;
        tps = isnan(tps) ? rate : 0.8 * tps + 0.2 * rate;
        double elapsed = now_s() - t_start;
        finch_train_progress pr = {.step = step,
                                   .total_steps = r->total,
                                   .loss = loss,
                                   .loss_smooth = smooth,
                                   .lr = lr,
                                   .grad_norm = norm,
                                   .tokens_per_s = tps,
                                   .eta_s = elapsed / (double)(step - first_step) *
                                            (double)(r->total - step),
                                   .val_loss = NAN,
                                   .n_trainable = n_train,
                                   .n_total = n_total};
        finch_status st = after_step(r, &pr, rate, should_stop, on_progress, user, err);
        if (st) return st;
    }
    return FINCH_OK;
}

static void run_release(run *r) {
    finch_file_append_close(&r->metrics);
    if (r->peft) finch_peft_detach(r->peft, r->m);
    free(r->order);
    free(r->mom);
    free(r->vel);
    free(r->ranges);
    finch_batch_release(&r->batch);
    finch_train_acts_free(r->acts);
    finch_peft_free(r->peft);
    /* vs may hold examples moved out of ts (val_fraction): release both sets' examples */
    finch_token_set_release(&r->vs);
    finch_token_set_release(&r->ts);
    finch_dataset_free(r->dtrain);
    finch_dataset_free(r->dval);
}

finch_status finch_train(finch_model *m, const finch_train_options *o,
                         void (*on_progress)(const finch_train_progress *p, void *user),
                         int (*should_stop)(void *user), void *user, finch_err *err) {
    finch_status st = check_options(m, o, err);
    if (st) return st;
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: the model has no tokenizer", m->path);
    run r = {.o = o,
             .m = m,
             .max_len = o->data.max_seq_len ? o->data.max_seq_len
                                            : (m->cfg.n_ctx_train < 256 ? m->cfg.n_ctx_train : 256),
             .sched = {.lr = o->learning_rate, .warmup_steps = o->warmup_steps}};
    if ((st = finch_lr_kind_parse(o->lr_scheduler ? o->lr_scheduler : "linear", &r.sched.kind,
                                  err)) ||
        (st = finch_mkdir_p(o->out_dir, err)))
        goto done;
    finch_checkpoint_clean(o->out_dir); /* temporaries of a run killed while saving */
    if ((st = prepare_data(&r, err)) || (st = prepare_method(&r, err))) goto done;
    epoch_order(r.order, r.ts.n, o->seed, r.pos.epoch);
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", o->out_dir);
    if ((st = finch_file_append_open(mpath, !o->resume_dir, &r.metrics, err))) goto done;
    const int64_t n_train = r.par->total, n_total = m->cfg.n_params;
    finch_log(FINCH_LOG_INFO, "%s: trainable params: %lld || all params: %lld || trainable%%: %.4f",
              finch_peft_method(r.peft), (long long)n_train, (long long)n_total,
              100.0 * (double)n_train / (double)n_total);
    finch_log(FINCH_LOG_INFO,
              "%lld training examples, %lld validation; %lld steps of %d x %d x %d tokens%s",
              (long long)r.ts.n, (long long)r.vs.n, (long long)r.total, o->grad_accum, r.B, r.T,
              o->packing ? " (packed)" : "");
    if ((st = train_steps(&r, on_progress, should_stop, user, err))) goto done;
    /* the result (adapter in the PEFT layout, or the model) at the top of the run directory */
    st = finch_peft_save(r.peft, m, o->out_dir, err);
done:
    run_release(&r);
    return st;
}
