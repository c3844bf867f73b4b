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
#include "peft/peft.h"   /* LoRA */
#include "train/train.h" /* checkpoints */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

finch_train_options finch_train_defaults(void) {
    return (finch_train_options){
        .data = {.max_seq_len = 0},
        .method = "lora",
        .lora_r = 8,
        .lora_alpha = 16.0f,
        .lora_dropout = 0.05f,
        .target_modules = "q,v",
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
static uint64_t mix64(uint64_t z) { return finch_mix64(z + 0x9e3779b97f4a7c15ull); }

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

static finch_status check_options(const finch_model *m, const finch_train_options *o, finch_err *err) {
#define BAD(...) return finch_err_set(err, FINCH_E_USAGE, __VA_ARGS__)
    if (!o->data.path) BAD("no training data: give --data FILE");
    if (!o->out_dir) BAD("no output directory: give --out DIR");
    if (o->method && strcmp(o->method, "lora")) BAD("--method %s: this build trains 'lora'", o->method);
    if (!(o->learning_rate > 0 && o->learning_rate < 1)) BAD("--learning-rate %g: must be in (0, 1)", o->learning_rate);
    if (o->batch_size < 1 || o->batch_size > 4096) BAD("--batch-size %d: must be from 1 to 4096", o->batch_size);
    if (o->grad_accum < 1 || o->grad_accum > 65536) BAD("--grad-accum %d: must be from 1 to 65536", o->grad_accum);
    if (o->max_steps < 0) BAD("--max-steps %lld: must be >= 0", (long long)o->max_steps);
    if (o->max_steps == 0 && !(o->epochs > 0 && o->epochs <= 1e6)) BAD("--epochs %g: must be > 0", o->epochs);
    if (o->warmup_steps < 0) BAD("--warmup-steps %lld: must be >= 0", (long long)o->warmup_steps);
    if (!(o->weight_decay >= 0 && o->weight_decay < 1)) BAD("--weight-decay %g: must be in [0, 1)", o->weight_decay);
    if (!(o->max_grad_norm >= 0)) BAD("--max-grad-norm %g: must be >= 0", o->max_grad_norm);
    if (o->save_steps < 0 || o->eval_steps < 0 || o->log_steps < 0) BAD("--save-steps, --eval-steps and --log-steps must be >= 0");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1)) BAD("--val-fraction %g: must be in [0, 1)", o->val_fraction);
    int max_len = o->data.max_seq_len;
    if (max_len != 0 && (max_len < 2 || max_len > m->cfg.n_ctx_train))
        BAD("--max-seq-len %d: must be from 2 to %d (the model's context)", max_len, m->cfg.n_ctx_train);
#undef BAD
    return FINCH_OK;
}

/* Appends one JSON object line to metrics.jsonl (flushed: a crash loses at most it). */
static void metric_line(FILE *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metric_line(FILE *f, const char *fmt, ...) {
    if (!f) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fflush(f);
}

/* Mean loss over a token set, in batches of B rows of T (forward only). */
static double eval_loss(const finch_model *m, finch_train_acts *acts, finch_batch *b,
                        const finch_token_set *vs, int64_t max_examples, const int32_t pad) {
    int64_t n = vs->n;
    if (max_examples > 0 && n > max_examples) n = max_examples;
    int64_t *order = malloc((size_t)vs->n * sizeof *order);
    if (!order) return NAN;
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
            sum += finch_model_train_step(m, acts, b->ids, b->targets, b->pos, b->seg, 0.0f, 0, false) *
                   (double)nt;
            count += nt;
        }
    }
    free(order);
    return count ? sum / (double)count : NAN;
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
                                int max_len, finch_dataset **keep, finch_token_set *ts, finch_err *err) {
    finch_data_options dopt = {.skip_bad = spec->skip_bad != 0, .seed = spec->seed, .tok = m->tok,
                               .templates = {spec->templates, spec->n_templates, spec->chat != 0}};
    finch_status st = finch_shape_parse(spec->format ? spec->format : "auto", &dopt.shape, err);
    finch_dataset *d = NULL;
    if (!st) st = finch_dataset_load(path, &dopt, &d, err);
    if (st) return st;
    if (spec->max_examples > 0 && d->n > spec->max_examples) {
        for (int64_t i = spec->max_examples; i < d->n; i++) finch_text_example_release(&d->ex[i]);
        d->n = spec->max_examples;
    }
    if (d->n_skipped) finch_log(FINCH_LOG_WARN, "%s: %lld malformed lines skipped", path, (long long)d->n_skipped);
    st = finch_tokenize_dataset(m->tok, d, max_len, spec->train_on_prompt != 0, ts, err);
    if (!st && ts->n_truncated)
        finch_log(FINCH_LOG_WARN, "%s: %lld examples longer than %d tokens were cut", path,
                  (long long)ts->n_truncated, max_len);
    if (!st && ts->n_dropped)
        finch_log(FINCH_LOG_WARN, "%s: %lld examples had no completion token within %d tokens and were dropped",
                  path, (long long)ts->n_dropped, max_len);
    *keep = d;
    return st;
}

finch_status finch_train(finch_model *m, const finch_train_options *o,
                         void (*on_progress)(const finch_train_progress *p, void *user),
                         int (*should_stop)(void *user), void *user, finch_err *err) {
    finch_status st = check_options(m, o, err);
    if (st) return st;
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: the model has no tokenizer", m->path);
    const int max_len = o->data.max_seq_len ? o->data.max_seq_len
                                            : (m->cfg.n_ctx_train < 256 ? m->cfg.n_ctx_train : 256);
    finch_lora_config lc = {.r = o->lora_r, .alpha = o->lora_alpha, .rslora = o->use_rslora != 0,
                            .dropout = o->lora_dropout};
    if ((st = finch_target_parse(o->target_modules ? o->target_modules : "q,v", &lc.targets, err))) return st;
    finch_lr_schedule sched = {.lr = o->learning_rate, .warmup_steps = o->warmup_steps};
    if ((st = finch_lr_kind_parse(o->lr_scheduler ? o->lr_scheduler : "linear", &sched.kind, err))) return st;

    finch_dataset *dtrain = NULL, *dval = NULL;
    finch_token_set ts = {0}, vs = {0};
    finch_lora *l = NULL;
    finch_train_acts *acts = NULL;
    finch_batch batch = {0};
    float *mom = NULL, *vel = NULL;
    int64_t *order = NULL;
    FILE *metrics = NULL;
    bool attached = false;

    if ((st = finch_mkdir_p(o->out_dir, err))) goto done;
    if ((st = load_tokens(m, &o->data, o->data.path, max_len, &dtrain, &ts, err))) goto done;
    if (o->val_path) {
        finch_data_spec vspec = o->data;
        vspec.max_examples = 0;
        if ((st = load_tokens(m, &vspec, o->val_path, max_len, &dval, &vs, err))) goto done;
    } else if (o->val_fraction > 0) {
        /* hold out tokenized examples: the last fraction after a seeded shuffle */
        int64_t n_val = (int64_t)(o->val_fraction * (double)ts.n + 0.5);
        if (n_val < 1 || n_val >= ts.n) {
            st = finch_err_set(err, FINCH_E_RANGE, "--val-fraction %g of %lld examples leaves none on one side",
                               o->val_fraction, (long long)ts.n);
            goto done;
        }
        int64_t *perm = malloc((size_t)ts.n * sizeof *perm);
        vs.ex = malloc((size_t)n_val * sizeof *vs.ex);
        finch_token_example *rest = malloc((size_t)(ts.n - n_val) * sizeof *rest);
        if (!perm || !vs.ex || !rest) {
            free(perm);
            free(rest);
            st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
            goto done;
        }
        epoch_order(perm, ts.n, o->seed ^ 0x5eed, 0);
        for (int64_t i = 0; i < ts.n; i++) {
            if (i < ts.n - n_val) rest[i] = ts.ex[perm[i]];
            else vs.ex[vs.n++] = ts.ex[perm[i]];
        }
        free(perm);
        free(ts.ex);
        ts.ex = rest;
        ts.n -= n_val;
    }

    /* the batch is as long as the longest example, or max_len when packing fills rows */
    int T = 2;
    for (int64_t i = 0; i < ts.n; i++) T = ts.ex[i].n > T ? ts.ex[i].n : T;
    for (int64_t i = 0; i < vs.n; i++) T = vs.ex[i].n > T ? vs.ex[i].n : T;
    if (o->packing) T = max_len;
    const int B = o->batch_size;
    const int64_t per_step = (int64_t)B * o->grad_accum;
    if (!(order = finch_alloc((size_t)ts.n * sizeof *order, "example order", err))) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    /* an epoch is ts.n rows, or with packing the rows its examples fill (counted in the
     * first epoch's order: later orders differ by a row or so, and the count must not
     * depend on where a resumed run starts) */
    int64_t epoch_rows = ts.n;
    if (o->packing) {
        epoch_order(order, ts.n, o->seed, 0);
        epoch_rows = packed_rows(&ts, order, T);
    }
    const int64_t total = o->max_steps ? o->max_steps
                                       : (int64_t)ceil(o->epochs * (double)epoch_rows / (double)per_step);
    sched.total_steps = total > 0 ? total : 1;

    finch_rng rng;
    finch_rng_seed(&rng, o->seed);
    if ((st = finch_lora_new(m, &lc, &rng, true, &l, err))) goto done;
    if ((st = finch_lora_attach(l, m, 1.0f, (int64_t)B * T, err))) goto done;
    attached = true;
    if ((st = finch_train_acts_new(m, B, T, &acts, err)) || (st = finch_batch_init(&batch, B, T, err))) goto done;
    mom = finch_calloc((size_t)l->n_params, sizeof(float), "AdamW m", err);
    vel = finch_calloc((size_t)l->n_params, sizeof(float), "AdamW v", err);
    if (!mom || !vel) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    finch_train_pos pos = {.seed = o->seed};
    if (o->resume_dir) {
        if ((st = finch_checkpoint_load(o->resume_dir, l, mom, vel, &pos, err))) goto done;
        if (pos.seed != o->seed) {
            st = finch_err_set(err, FINCH_E_USAGE, "%s: the run used --seed %llu, not %llu", o->resume_dir,
                               (unsigned long long)pos.seed, (unsigned long long)o->seed);
            goto done;
        }
        if (pos.next >= ts.n) {
            st = finch_err_set(err, FINCH_E_FORMAT, "%s: data position %lld is past the %lld examples: "
                               "another dataset?", o->resume_dir, (long long)pos.next, (long long)ts.n);
            goto done;
        }
    }
    epoch_order(order, ts.n, o->seed, pos.epoch);

    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", o->out_dir);
    if (!(metrics = fopen(mpath, o->resume_dir ? "a" : "w"))) {
        st = finch_err_set(err, FINCH_E_IO, "%s: cannot write: %s", mpath, strerror(errno));
        goto done;
    }
    int64_t n_total = m->cfg.n_params;
    finch_log(FINCH_LOG_INFO, "trainable params: %lld || all params: %lld || trainable%%: %.4f",
              (long long)l->n_params, (long long)n_total, 100.0 * (double)l->n_params / (double)n_total);
    finch_log(FINCH_LOG_INFO, "%lld training examples, %lld validation; %lld steps of %d x %d x %d tokens%s",
              (long long)ts.n, (long long)vs.n, (long long)total, o->grad_accum, B, T,
              o->packing ? " (packed)" : "");

    finch_adamw_config ac = finch_adamw_config_default();
    ac.weight_decay = o->weight_decay;
    finch_adamw_range all = {0, (size_t)l->n_params, true};
    double smooth = NAN, tps = NAN, t_start = now_s();
    int64_t first_step = pos.step;
    /* the last good state on disk, for the message if a step goes non-finite */
    char last_good[4300];
    if (o->resume_dir) snprintf(last_good, sizeof last_good, "the checkpoint resumed from (%s, step %lld)",
                                o->resume_dir, (long long)pos.step);
    else snprintf(last_good, sizeof last_good, "no checkpoint (none was saved yet)");
    for (int64_t step = pos.step + 1; step <= total; step++) {
        double t0 = now_s(), loss = 0;
        int64_t tokens = 0;
        finch_grad_zero(l->grads, (size_t)l->n_params);
        for (int k = 0; k < o->grad_accum; k++) {
            int64_t e0 = pos.epoch;
            finch_batch_fill(&batch, &ts, order, &pos.next, &pos.epoch, o->packing != 0,
                             finch_tokenizer_eos(m->tok));
            if (pos.epoch != e0) epoch_order(order, ts.n, o->seed, pos.epoch);
            float scale = batch.n_targets ? 1.0f / ((float)batch.n_targets * (float)o->grad_accum) : 0.0f;
            uint64_t seed = mix64(o->seed ^ mix64((uint64_t)step * 65536 + (uint64_t)k));
            if (batch.n_targets)
                loss += finch_model_train_step(m, acts, batch.ids, batch.targets, batch.pos, batch.seg,
                                               scale, seed, true) / o->grad_accum;
            tokens += batch.n_tokens; /* the examples' tokens, not padding */
        }
        double norm = o->max_grad_norm > 0 ? finch_grad_clip(l->grads, (size_t)l->n_params, o->max_grad_norm)
                                           : finch_grad_norm(l->grads, (size_t)l->n_params);
        if (!isfinite(loss) || !isfinite(norm)) {
            /* nothing of this step is applied or saved: the last checkpoint stays as it was */
            st = finch_err_set(err, FINCH_E_RANGE,
                               "step %lld: the loss is %g and the gradient norm %g (not finite): "
                               "stopping without saving; the last good state is %s (resume from it "
                               "with a lower --learning-rate or --lora-alpha)",
                               (long long)step, loss, norm, last_good);
            goto done;
        }
        double lr = finch_lr_at(&sched, step - 1);
        finch_adamw_step(l->params, mom, vel, l->grads, (size_t)l->n_params, &all, 1, &ac, lr, step);
        pos.step = step;
        double dt = now_s() - t0, rate = (double)tokens / (dt > 0 ? dt : 1e-9);
        smooth = isnan(smooth) ? loss : 0.9 * smooth + 0.1 * loss;
        tps = isnan(tps) ? rate : 0.8 * tps + 0.2 * rate;
        double elapsed = now_s() - t_start;
        finch_train_progress pr = {.step = step, .total_steps = total, .loss = loss, .loss_smooth = smooth,
                                   .lr = lr, .grad_norm = norm, .tokens_per_s = tps,
                                   .eta_s = elapsed / (double)(step - first_step) * (double)(total - step),
                                   .val_loss = NAN, .n_trainable = l->n_params, .n_total = n_total};
        if (o->log_steps && (step % o->log_steps == 0 || step == total))
            metric_line(metrics, "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.8g, \"grad_norm\": %.6f, "
                        "\"tokens_per_s\": %.1f, \"epoch\": %.4f}",
                        (long long)step, loss, lr, norm, rate,
                        (double)pos.epoch + (double)pos.next / (double)ts.n);
        if (vs.n && ((o->eval_steps && step % o->eval_steps == 0) || step == total)) {
            pr.val_loss = eval_loss(m, acts, &batch, &vs, o->val_max_examples, finch_tokenizer_eos(m->tok));
            metric_line(metrics, "{\"step\": %lld, \"val_loss\": %.6f}", (long long)step, pr.val_loss);
        }
        if (on_progress) on_progress(&pr, user);
        bool stop = should_stop && should_stop(user);
        if ((o->save_steps && step % o->save_steps == 0) || step == total || stop) {
            if ((st = finch_checkpoint_save(o->out_dir, l, m, mom, vel, &pos, err))) goto done;
            snprintf(last_good, sizeof last_good, "%s/checkpoint-%lld", o->out_dir, (long long)step);
        }
        if (stop) {
            st = finch_err_set(err, FINCH_E_INTERRUPTED, "interrupted at step %lld: checkpoint saved in "
                               "%s/checkpoint-%lld (continue with --resume %s)", (long long)step,
                               o->out_dir, (long long)step, o->out_dir);
            goto done;
        }
    }
    /* the final adapter, in the PEFT layout, at the top of the run directory */
    st = finch_lora_save_peft(l, m, o->out_dir, err);
done:
    if (metrics) fclose(metrics);
    if (attached) finch_lora_detach(l, m);
    free(order);
    free(mom);
    free(vel);
    finch_batch_release(&batch);
    finch_train_acts_free(acts);
    finch_lora_free(l);
    /* vs may hold examples moved out of ts (val_fraction): release both sets' examples */
    finch_token_set_release(&vs);
    finch_token_set_release(&ts);
    finch_dataset_free(dtrain);
    finch_dataset_free(dval);
    return st;
}
