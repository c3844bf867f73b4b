/*
 * loop.c: finch_train, the fine-tuning run: data, adapter, optimizer, steps with
 * gradient accumulation, evaluation, checkpoints, metrics.jsonl, interruption, resume.
 *
 * Data: one training file, or a multi-task mixture of several (each read, checked and split
 * on its own, then joined into one token set, task by task). The example order of an epoch
 * is finch_mix_order's (data/mix.c): for one file the shuffle seeded by (seed, epoch), for
 * a mixture a task drawn by weight per slot, then that task's next example. An epoch has
 * as many slots as the files hold examples together. The sampler's state (how far each
 * task is in its shuffles) and each task's count of trained examples are part of the run
 * position, saved in every checkpoint.
 *
 * Determinism: the example order is a function of the seed and the sampler's state; dropout
 * masks are seeded by (seed, step, micro-batch); everything else is arithmetic that gives
 * the same bits for the same thread count. A run resumed from a checkpoint therefore
 * continues exactly as the uninterrupted one.
 *
 * The optimizer step: after a step's backward, clipping and AdamW over the registry's flat
 * arrays; or, with fused_optimizer, fused into backward: the model calls fused_update when
 * a block's backward has completed its tensors' gradients (model.h
 * finch_train_acts_on_grads), which applies AdamW to each of them (finch_adamw_step over
 * one tensor: the per-element arithmetic of the whole-arena call, so the same bits) and
 * zeroes its gradient, whose place in the per-block gradient arena (params.h) the next
 * block's backward then uses. That needs gradients that are final when backward leaves a
 * block: no clipping (the global norm is known only at the end), one micro-batch per step
 * and one rank (the sum over micro-batches or ranks comes after backward). The step's
 * gradient norm is then the root of the tensors' sums of squares added in the order of
 * the updates: the same value up to the last bits of a double.
 *
 * Data parallelism (dist/): with N ranks (MPI processes, or simulate_ranks lanes in one
 * process) every micro-batch is N x batch_size rows, each rank computing its slice; the
 * functions under "data parallelism" below are the only ones that talk to other ranks
 * (and DPO's, dpo.c: its reference and validation passes and statistics).
 */
#include "data/data.h"   /* datasets, tokens, batches */
#include "dist/dist.h"   /* ranks: allreduce, broadcast */
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
        .beta = 0.1,
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

static finch_status check_options(const finch_model *m, const finch_train_options *o,
                                  finch_err *err) {
#define BAD(...) return finch_err_set(err, FINCH_E_USAGE, __VA_ARGS__)
    if (o->n_sources < 0 || o->n_sources > FINCH_MAX_TASKS)
        BAD("%d training files: at most %d", o->n_sources, FINCH_MAX_TASKS);
    if (o->n_sources && o->data.path)
        BAD("training data given twice (data.path and %d sources): give the files as sources",
            o->n_sources);
    if (!o->n_sources && !o->data.path) BAD("no training data: give --data FILE");
    for (int k = 0; k < o->n_sources; k++) {
        const finch_data_source *s = &o->sources[k];
        if (!s->path) BAD("training file %d has no path", k + 1);
        if (!(s->weight > 0) || !isfinite(s->weight))
            BAD("--data %s:%g: the weight must be a number > 0", s->path, s->weight);
    }
    if (!o->out_dir) BAD("no output directory: give --out DIR");
    if (m->be->device) { /* params.h: the passes there, the optimizer on the host */
        if (o->fused_optimizer)
            BAD("--fused-optimizer: on %s the optimizer steps on the host after the "
                "gradients are copied back; train without --fused-optimizer",
                m->be->name);
        if (o->simulate_ranks > 1)
            BAD("--simulate-ranks: on %s, run the ranks with mpirun", m->be->name);
        if (o->objective && !strcmp(o->objective, "dpo"))
            BAD("--objective dpo does not run on %s yet: use --device cpu", m->be->name);
    }
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
    /* early stopping and the best checkpoint, as transformers' Trainer checks them */
    const bool val = o->val_path || o->val_fraction > 0;
    if (o->early_stopping_patience < 0)
        BAD("--early-stopping-patience %lld: must be >= 0", (long long)o->early_stopping_patience);
    if (!(o->early_stopping_threshold >= 0) || !isfinite(o->early_stopping_threshold))
        BAD("--early-stopping-threshold %g: must be a number >= 0", o->early_stopping_threshold);
    if (o->early_stopping_patience && (!o->eval_steps || !val))
        BAD("--early-stopping-patience %lld counts evaluations: give --eval-steps N and "
            "validation data (--val FILE or --val-fraction F)",
            (long long)o->early_stopping_patience);
    if (o->load_best_model_at_end && (!o->eval_steps || !val))
        BAD("--load-best-model-at-end picks the checkpoint with the lowest validation loss: give "
            "--eval-steps N and validation data (--val FILE or --val-fraction F)");
    if (o->load_best_model_at_end && (!o->save_steps || o->save_steps % o->eval_steps))
        BAD("--load-best-model-at-end needs --save-steps to be a round multiple of --eval-steps "
            "(here %lld and %lld), so that every checkpoint has a validation loss",
            (long long)o->save_steps, (long long)o->eval_steps);
    if (o->simulate_ranks < 0 || o->simulate_ranks > 4096)
        BAD("--simulate-ranks %d: must be from 1 to 4096", o->simulate_ranks);
    if (o->fused_optimizer && o->max_grad_norm > 0)
        BAD("--fused-optimizer updates each tensor as soon as backward completes its gradient, "
            "before the global norm is known: give --max-grad-norm 0 (clipping off; now %g)",
            o->max_grad_norm);
    if (o->fused_optimizer && o->grad_accum > 1)
        BAD("--fused-optimizer updates each tensor during its backward, so a step is one "
            "micro-batch: give --grad-accum 1 (now %d), or a larger --batch-size",
            o->grad_accum);
    if (o->fused_optimizer && (o->simulate_ranks > 1 || finch_dist_size() > 1))
        BAD("--fused-optimizer: with %d data-parallel ranks the gradients are summed across "
            "ranks after backward: train without --fused-optimizer",
            finch_dist_size() > 1 ? finch_dist_size() : o->simulate_ranks);
    if (o->simulate_ranks > 1 && finch_dist_size() > 1)
        BAD("--simulate-ranks %d under mpirun -np %d: give one or the other", o->simulate_ranks,
            finch_dist_size());
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        BAD("--val-fraction %g: must be in [0, 1)", o->val_fraction);
    if (o->objective && strcmp(o->objective, "sft") && strcmp(o->objective, "dpo"))
        BAD("--objective %s: use sft or dpo", o->objective);
    if (!(o->beta > 0 && o->beta <= 1e3)) BAD("--beta %g: must be in (0, 1000]", o->beta);
    if (o->packing && o->objective && !strcmp(o->objective, "dpo"))
        BAD("--packing: DPO compares whole sequences, one a row; train without --packing");
    int max_len = o->data.max_seq_len;
    if (max_len != 0 && (max_len < 2 || max_len > m->cfg.n_ctx_train))
        BAD("--max-seq-len %d: must be from 2 to %d (the model's context)", max_len,
            m->cfg.n_ctx_train);
#undef BAD
    return FINCH_OK;
}

/* *out = the mean loss over a token set, in batches of B rows of T (forward only). With
 * several MPI ranks, batch j is computed by rank j % procs and the per-batch sums are
 * added in batch order after an allreduce, so every rank gets the bits one process gets. */
static finch_status eval_loss(const finch_model *m, finch_train_acts *acts, finch_batch *b,
                              const finch_token_set *vs, int64_t max_examples, const int32_t pad,
                              double *out, finch_err *err) {
    int64_t n = vs->n;
    if (max_examples > 0 && n > max_examples) n = max_examples;
    const int rank = finch_dist_rank(), procs = finch_dist_size();
    const int64_t n_batches = (n + b->B - 1) / b->B;
    int64_t *order = finch_alloc((size_t)vs->n * sizeof *order, "validation order", err);
    /* (sum, count) per batch */
    double *part =
        order ? finch_calloc(2 * (size_t)n_batches + 1, sizeof *part, "validation sums", err)
              : NULL;
    if (!part) {
        free(order);
        return FINCH_E_NOMEM;
    }
    for (int64_t i = 0; i < vs->n; i++) order[i] = i;
    double sum = 0, count = 0;
    int64_t next = 0, epoch = 0;
    finch_token_set part_set = *vs;
    part_set.n = n;
    for (int64_t j = 0; epoch == 0; j++) {
        int64_t before = next;
        finch_batch_fill(b, &part_set, order, &next, &epoch, false, pad);
        if (j % procs != rank) continue;
        int64_t rows = epoch ? n - before : next - before; /* rows filled with new examples */
        /* rows past the end wrapped to the start: mask them out */
        for (int64_t r = rows; r < b->B; r++)
            for (int t = 0; t < b->T; t++) b->targets[r * b->T + t] = -1;
        int64_t nt = 0;
        for (int64_t i = 0; i < (int64_t)b->B * b->T; i++) nt += b->targets[i] >= 0;
        if (nt) {
            part[2 * j] = finch_model_train_step(m, acts, b->ids, b->targets, b->pos, b->seg, 0.0f,
                                                 0, false) *
                          (double)nt;
            part[2 * j + 1] = (double)nt;
        }
    }
    free(order);
    finch_status st = finch_dist_sum_f64(part, 2 * (size_t)n_batches, "the validation loss", err);
    for (int64_t j = 0; j < n_batches; j++) {
        sum += part[2 * j];
        count += part[2 * j + 1];
    }
    free(part);
    if (!st) *out = count ? sum / count : NAN;
    return st;
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

/* Reads, checks and tokenizes one JSONL file into *ts; *shape: the format used. */
static finch_status load_tokens(const finch_model *m, const finch_data_spec *spec, const char *path,
                                int max_len, finch_shape *shape, finch_token_set *ts,
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
    const bool say = finch_dist_rank() == 0; /* one rank speaks for all */
    if (d->n_skipped && say)
        finch_log(FINCH_LOG_WARN, "%s: %lld malformed lines skipped", path,
                  (long long)d->n_skipped);
    st = finch_tokenize_dataset(m->tok, d, max_len, spec->train_on_prompt != 0, ts, err);
    if (!st && ts->n_truncated && say)
        finch_log(FINCH_LOG_WARN, "%s: %lld examples longer than %d tokens were cut", path,
                  (long long)ts->n_truncated, max_len);
    if (!st && ts->n_dropped && say)
        finch_log(FINCH_LOG_WARN,
                  "%s: %lld examples had no completion token within %d tokens and were dropped",
                  path, (long long)ts->n_dropped, max_len);
    *shape = d->shape;
    finch_dataset_free(d);
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

/* Bytes of a task's name (its file's base name, cut at a character boundary), with the NUL. */
enum { TASK_NAME = 48 };

/* fused_optimizer: a step's AdamW settings, learning rate and number; the sum of the squares
 * of the gradients used so far, whether one was not finite (nothing is updated after it),
 * whether backward's last call came. */
typedef struct {
    finch_adamw_config ac;
    double lr, sumsq;
    int64_t t;
    bool bad, done;
} fused_step;

/* Everything one run holds. */
typedef struct {
    const finch_train_options *o;
    finch_model *m;
    int max_len, B, T;
    finch_token_set ts, vs; /* the training files' examples, task after task; validation's */
    /* the training files (tasks): n_tasks of them (1 without a mixture); their paths and
     * weights; their names in metrics.jsonl (as JSON strings in key, quoted and escaped);
     * their units (examples or pairs, after the hold-out), the first of each in ts */
    int n_tasks;
    const char *task_path[FINCH_MAX_TASKS];
    double task_weight[FINCH_MAX_TASKS];
    char task_name[FINCH_MAX_TASKS][TASK_NAME];
    const char *task_name_of[FINCH_MAX_TASKS]; /* task_name[k], for the progress */
    char task_key[FINCH_MAX_TASKS][6 * TASK_NAME + 3];
    int64_t task_units[FINCH_MAX_TASKS], task_start[FINCH_MAX_TASKS];
    finch_mixture mix;                  /* the sampler over them */
    int64_t *order;                     /* the current epoch's example order */
    int64_t *scratch;                   /* finch_mix_order's */
    int64_t drawn_end[FINCH_MAX_TASKS]; /* the sampler's state after the current epoch */
    char *line, *tasks; /* a metrics line: line_cap bytes; tasks_json's: tasks_cap */
    size_t line_cap, tasks_cap;
    int64_t total; /* optimizer steps */
    finch_lr_schedule sched;
    finch_peft *peft;
    finch_params *par; /* its registry */
    finch_adamw_range *ranges;
    int n_ranges;
    finch_train_acts *acts;
    finch_batch batch;
    float *mom, *vel;
    finch_train_pos pos;
    finch_append_file metrics; /* metrics.jsonl: rank 0's; never opened on the others */
    finch_dpo *dpo;            /* the DPO objective (--objective dpo), else NULL */
    finch_dpo_stats dstats;    /* its statistics over the current step's pairs (all ranks') */
    /* data parallelism: this process is rank `rank` of `procs` MPI processes and computes
     * `lanes` of the `ranks` slices of each micro-batch (lanes = 1, or all of them under
     * simulate_ranks); stash holds each lane's gradients when lanes > 1, lane_loss each
     * lane's loss, lane_dstats each lane's DPO statistics */
    int rank, procs, ranks, lanes;
    float *stash;
    double *lane_loss;
    finch_dpo_stats *lane_dstats;
    bool stop;            /* some rank was asked to stop (with several processes) */
    bool device_sum;      /* the ranks' devices sum the gradients among themselves */
    fused_step fused;     /* fused_optimizer: the current step's */
    bool stopped_early;   /* early stopping ended the run */
    char last_good[4300]; /* the last good state on disk, for the message if a step goes non-finite
                           */
} run;

/* What the data order counts: examples, or preference pairs (two examples each). */
static int64_t units(const finch_token_set *s) {
    return s->pairs ? s->n / 2 : s->n;
}

/* ---- data parallelism: everything that talks to other ranks ------------------------ */

/* sum (n) += g: the lanes' gradients added in lane order (simulate_ranks). */
static void lane_add(float *sum, const float *g, size_t n) {
    for (size_t i = 0; i < n; i++) sum[i] += g[i];
}

/* After a step's passes: the gradients and the loss summed over the ranks (one allreduce
 * of the gradient arena, one of the loss and the stop requests, one of DPO's statistics),
 * so that clipping, AdamW and the progress see on every rank what one process with the
 * whole batch sees. */
static finch_status reduce_step(run *r, int64_t step, double *loss, int (*should_stop)(void *),
                                void *user, finch_err *err) {
    if (r->procs == 1) return FINCH_OK;
    double v[2] = {*loss, should_stop && should_stop(user) ? 1.0 : 0.0};
    finch_status st = r->device_sum ? FINCH_OK
                                    : finch_dist_sum_f32(r->par->grad, (size_t)r->par->total,
                                                         "the gradients", err);
    if (!st) st = finch_dist_sum_f64(v, 2, "the loss", err);
    if (!st && r->dpo) st = finch_dpo_stats_sum(&r->dstats, err);
    if (st) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return finch_err_set(err, st, "step %lld: %s; the last checkpoint is %s", (long long)step,
                             msg, r->last_good);
    }
    *loss = v[0];
    r->stop = v[1] > 0;
    return FINCH_OK;
}

/* --resume: rank 0 reads the checkpoint and sends it to the others, so only rank 0 needs
 * the run directory. */
static finch_status resume_state(run *r, finch_err *err) {
    const size_t n = (size_t)r->par->total;
    int32_t code = 0;
    if (r->rank == 0)
        code =
            (int32_t)finch_checkpoint_load(r->o->resume_dir, r->par, r->mom, r->vel, &r->pos, err);
    finch_status st = finch_dist_bcast(&code, sizeof code, "the resume status", err);
    if (!st && code && r->rank != 0)
        return finch_err_set(err, (finch_status)code,
                             "rank 0 could not resume from %s (its message says why)",
                             r->o->resume_dir);
    if (st || code) return st ? st : (finch_status)code;
    if ((st = finch_dist_bcast(r->par->data, n * sizeof(float), "the parameters", err)) ||
        (st = finch_dist_bcast(r->mom, n * sizeof(float), "AdamW m", err)) ||
        (st = finch_dist_bcast(r->vel, n * sizeof(float), "AdamW v", err)) ||
        (st = finch_dist_bcast(&r->pos, sizeof r->pos, "the run position", err)))
        return st;
    return FINCH_OK;
}

/* The ranks must agree on what shapes the batches and the registry (each reads its own
 * copy of the model and data): checked once, at the start, before any collective whose
 * size depends on them. */
static finch_status check_ranks(run *r, finch_err *err) {
    if (r->procs == 1) return FINCH_OK;
    const finch_train_options *o = r->o;
    uint64_t h = 0x6a09e667f3bcc908ull; /* the training token ids, hashed */
    for (int64_t i = 0; i < r->ts.n; i++)
        for (int32_t t = 0; t < r->ts.ex[i].n; t++)
            h = mix64(h ^ ((uint64_t)(uint32_t)r->ts.ex[i].ids[t] << 1 | r->ts.ex[i].mask[t]));
    uint64_t hw = (uint64_t)r->n_tasks; /* the tasks' sizes and weights, hashed */
    for (int k = 0; k < r->n_tasks; k++) {
        uint64_t bits;
        memcpy(&bits, &r->task_weight[k], 8);
        hw = mix64(mix64(hw ^ (uint64_t)r->task_units[k]) ^ bits);
    }
    const char *names[] = {"the training examples",
                           "the validation examples",
                           "the tokens per row",
                           "--batch-size",
                           "--grad-accum",
                           "the optimizer steps",
                           "the trainable parameters",
                           "--seed",
                           "--packing",
                           "--resume (given or not)",
                           "the training data (a hash of its tokens)",
                           "--beta (in millionths)",
                           "the training files' sizes and weights (a hash)"};
    int64_t v[] = {r->ts.n,       r->vs.n,
                   r->T,          r->B,
                   o->grad_accum, r->total,
                   r->par->total, (int64_t)o->seed,
                   o->packing,    o->resume_dir != NULL,
                   (int64_t)h,    r->ts.pairs ? (int64_t)llround(o->beta * 1e6) : 0,
                   (int64_t)hw};
    return finch_dist_check_same(v, names, (int)(sizeof v / sizeof v[0]), err);
}

/* The units of task k (of a run of one file: all of them): the last val_fraction of the
 * tokenized examples (or pairs) of ts after a shuffle seeded by the task, moved to vs. One
 * file must keep some on each side; in a mixture a small file may give none. */
static finch_status hold_out(run *r, int k, finch_token_set *ts, finch_token_set *vs,
                             finch_err *err) {
    const int64_t g = ts->pairs ? 2 : 1, n = units(ts);
    const char *what = g == 2 ? "pairs" : "examples";
    int64_t n_val = (int64_t)(r->o->val_fraction * (double)n + 0.5);
    if (r->n_tasks == 1 && (n_val < 1 || n_val >= n))
        return finch_err_set(err, FINCH_E_RANGE,
                             "--val-fraction %g of %lld %s leaves none on one side",
                             r->o->val_fraction, (long long)n, what);
    if (n_val >= n)
        return finch_err_set(err, FINCH_E_RANGE,
                             "%s: --val-fraction %g of its %lld %s leaves none for training",
                             r->task_path[k], r->o->val_fraction, (long long)n, what);
    if (n_val < 1) return FINCH_OK;
    int64_t *perm = finch_mem_alloc((size_t)n * sizeof *perm);
    vs->ex = finch_mem_alloc((size_t)(n_val * g) * sizeof *vs->ex);
    finch_token_example *rest = finch_mem_alloc((size_t)((n - n_val) * g) * sizeof *rest);
    if (!perm || !vs->ex || !rest) {
        free(perm);
        free(rest);
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    }
    finch_shuffle(perm, n, finch_task_seed(r->o->seed, k) ^ 0x5eed, 0);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < g; j++) {
            if (i < n - n_val)
                rest[i * g + j] = ts->ex[perm[i] * g + j];
            else
                vs->ex[vs->n++] = ts->ex[perm[i] * g + j];
        }
    vs->pairs = ts->pairs;
    free(perm);
    free(ts->ex);
    ts->ex = rest;
    ts->n -= n_val * g;
    return FINCH_OK;
}

/* FINCH_E_USAGE when path's set (pairs or not) does not suit the objective. */
static finch_status check_objective(const finch_token_set *s, bool dpo, const char *path,
                                    finch_err *err) {
    if (s->pairs == dpo) return FINCH_OK;
    return finch_err_set(err, FINCH_E_USAGE,
                         dpo ? "%s: --objective dpo needs preference lines {\"prompt\", "
                               "\"chosen\", \"rejected\"}"
                             : "%s: preference pairs (\"chosen\", \"rejected\") train with "
                               "--objective dpo",
                         path);
}

/* s as a JSON string (quoted, '"', '\' and control characters escaped) into out. */
static void json_quote(const char *s, char *out) {
    *out++ = '"';
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            *out++ = '\\', *out++ = (char)c;
        else if (c < 0x20)
            out += sprintf(out, "\\u%04x", c);
        else
            *out++ = (char)c;
    }
    *out++ = '"';
    *out = 0;
}

/* The training files: paths, weights and names (a file's base name without .jsonl or .json,
 * cut to TASK_NAME - 1 bytes; a name met before gets "#<file number>"). */
static void name_tasks(run *r) {
    const finch_train_options *o = r->o;
    r->n_tasks = o->n_sources ? o->n_sources : 1;
    for (int k = 0; k < r->n_tasks; k++) {
        r->task_path[k] = o->n_sources ? o->sources[k].path : o->data.path;
        r->task_weight[k] = o->n_sources ? o->sources[k].weight : 1.0;
        const char *base = strrchr(r->task_path[k], '/');
        base = base ? base + 1 : r->task_path[k];
        size_t n = strlen(base);
        for (const char *ext = ".jsonl"; ext; ext = strcmp(ext, ".json") ? ".json" : NULL) {
            size_t e = strlen(ext);
            if (n > e && !strcmp(base + n - e, ext)) {
                n -= e;
                break;
            }
        }
        char *name = r->task_name[k];
        if (n > TASK_NAME - 1) /* cut at a character boundary */
            for (n = TASK_NAME - 1; n && ((unsigned char)base[n] & 0xc0) == 0x80; n--) continue;
        memcpy(name, base, n);
        name[n] = 0;
        for (int j = 0; j < k; j++)
            if (!strcmp(r->task_name[j], name)) {
                char tag[16];
                const size_t t = (size_t)snprintf(tag, sizeof tag, "#%d", k + 1);
                while (n + t > TASK_NAME - 1 || (n && ((unsigned char)name[n] & 0xc0) == 0x80)) n--;
                memcpy(name + n, tag, t + 1);
                break;
            }
        r->task_name_of[k] = name;
        json_quote(name, r->task_key[k]);
    }
}

/* The training and validation sets (each training file read, checked against the objective,
 * split and appended in turn), the sampler, the batch shape and the number of steps. */
static finch_status prepare_data(run *r, finch_err *err) {
    const finch_train_options *o = r->o;
    const bool dpo = o->objective && !strcmp(o->objective, "dpo"); /* pairs, and only DPO */
    const bool say = finch_dist_rank() == 0;
    finch_status st = FINCH_OK;
    name_tasks(r);
    for (int k = 0; k < r->n_tasks && !st; k++) {
        finch_token_set ts = {0}, vs = {0};
        finch_shape shape = FINCH_SHAPE_AUTO;
        st = load_tokens(r->m, &o->data, r->task_path[k], r->max_len, &shape, &ts, err);
        if (!st) st = check_objective(&ts, dpo, r->task_path[k], err);
        if (!st && !o->val_path && o->val_fraction > 0) st = hold_out(r, k, &ts, &vs, err);
        r->task_start[k] = units(&r->ts);
        r->task_units[k] = units(&ts);
        char held[48] = "";
        if (vs.n) snprintf(held, sizeof held, ", %lld held out", (long long)units(&vs));
        if (!st && say && r->n_tasks > 1)
            finch_log(FINCH_LOG_INFO, "task %s: %s, %lld %s (%s)%s, weight %g", r->task_name[k],
                      r->task_path[k], (long long)units(&ts), dpo ? "pairs" : "examples",
                      finch_shape_name(shape), held, r->task_weight[k]);
        if (!st) st = finch_token_set_append(&r->ts, &ts, err);
        if (!st) st = finch_token_set_append(&r->vs, &vs, err);
        finch_token_set_release(&ts);
        finch_token_set_release(&vs);
    }
    if (st) return st;
    if (!o->val_path && o->val_fraction > 0 && r->vs.n == 0)
        return finch_err_set(err, FINCH_E_RANGE,
                             "--val-fraction %g holds out no example of any training file",
                             o->val_fraction);
    if (o->val_path) {
        finch_data_spec vspec = o->data;
        vspec.max_examples = 0;
        finch_shape shape;
        if ((st = load_tokens(r->m, &vspec, o->val_path, r->max_len, &shape, &r->vs, err)) ||
            (st = check_objective(&r->vs, dpo, o->val_path, err)))
            return st;
    }
    if ((r->ts.n_identical || r->vs.n_identical) && say)
        finch_log(FINCH_LOG_WARN,
                  "%lld preference pairs tokenize to the same chosen and rejected ids: each adds "
                  "log 2 to the loss and nothing to the gradient",
                  (long long)(r->ts.n_identical + r->vs.n_identical));
    /* the batch is as long as the longest example, or max_len when packing fills rows */
    r->T = 2;
    for (int64_t i = 0; i < r->ts.n; i++) r->T = r->ts.ex[i].n > r->T ? r->ts.ex[i].n : r->T;
    for (int64_t i = 0; i < r->vs.n; i++) r->T = r->vs.ex[i].n > r->T ? r->vs.ex[i].n : r->T;
    if (o->packing) r->T = r->max_len;
    r->B = dpo ? 2 * o->batch_size : o->batch_size; /* DPO: a pair is two rows */
    const size_t n_units = (size_t)units(&r->ts);
    if (!(r->order = finch_alloc(n_units * sizeof *r->order, "example order", err)) ||
        !(r->scratch = finch_alloc(n_units * sizeof *r->scratch, "the tasks' orders", err)))
        return FINCH_E_NOMEM;
    r->mix = (finch_mixture){r->n_tasks, r->task_units, r->task_weight, o->seed};
    /* an epoch is ts.n rows, or with packing the rows its examples fill (counted in the
     * first epoch's order: later orders differ by a row or so, and the count must not
     * depend on where a resumed run starts) */
    int64_t epoch_rows = units(&r->ts);
    if (o->packing) {
        const int64_t none[FINCH_MAX_TASKS] = {0};
        finch_mix_order(r->order, &r->mix, 0, none, r->drawn_end, r->scratch);
        epoch_rows = packed_rows(&r->ts, r->order, r->T);
    }
    const int64_t per_step = (int64_t)o->batch_size * o->grad_accum * r->ranks;
    r->total = o->max_steps ? o->max_steps
                            : (int64_t)ceil(o->epochs * (double)epoch_rows / (double)per_step);
    r->sched.total_steps = r->total > 0 ? r->total : 1;
    /* a metrics line: the fixed part, DPO's statistics, and the tasks' counts */
    r->tasks_cap = 32 + (size_t)r->n_tasks * (sizeof r->task_key[0] + 24);
    r->line_cap = 2048 + r->tasks_cap;
    if (!(r->line = finch_alloc(r->line_cap, "a metrics line", err)) ||
        !(r->tasks = finch_alloc(r->tasks_cap, "a metrics line", err)))
        return FINCH_E_NOMEM;
    return FINCH_OK;
}

/* After resume_state: the checkpoint's training files must be this run's (sizes and weights);
 * a checkpoint from before mixtures (no files recorded) is a run of one file, whose sampler
 * state follows from the epoch. */
static finch_status resume_tasks(run *r, finch_err *err) {
    finch_train_pos *p = &r->pos;
    const int64_t n = units(&r->ts);
    if (p->n_tasks == 0 && r->n_tasks == 1) {
        p->n_tasks = 1;
        p->task_units[0] = n;
        p->task_weight[0] = r->task_weight[0];
        p->drawn[0] = p->epoch * n;
        p->seen[0] = p->epoch * n + p->next;
        p->best_metric = p->best_ckpt_metric = NAN; /* none known */
    }
    if (p->n_tasks != r->n_tasks)
        return finch_err_set(err, FINCH_E_USAGE,
                             "%s: the run trained on %d file%s, this one on %d: resume with the "
                             "same --data files and weights",
                             r->o->resume_dir, p->n_tasks ? p->n_tasks : 1,
                             p->n_tasks > 1 ? "s" : "", r->n_tasks);
    for (int k = 0; k < r->n_tasks; k++)
        if (p->task_units[k] != r->task_units[k] || p->task_weight[k] != r->task_weight[k])
            return finch_err_set(err, FINCH_E_USAGE,
                                 "%s: training file %d (%s) had %lld %s and weight %g in the run, "
                                 "here %lld and %g: resume with the same --data files, weights "
                                 "and --val-fraction",
                                 r->o->resume_dir, k + 1, r->task_path[k],
                                 (long long)p->task_units[k], r->ts.pairs ? "pairs" : "examples",
                                 p->task_weight[k], (long long)r->task_units[k], r->task_weight[k]);
    return FINCH_OK;
}

/* fused_optimizer: backward has completed the gradients of block's tensors (block -1: of the
 * rest; model.h): AdamW on each, as finch_adamw_step over the whole arena would update it,
 * in one pass that also sums the gradient's squares and zeroes it for the next block's
 * backward. Once a gradient is not finite the step is lost (the run stops unsaved), and the
 * tensors after it are left alone. */
static void fused_update(void *user, int block) {
    run *r = user;
    const finch_params *par = r->par;
    for (int i = 0; i < par->n && !r->fused.bad; i++) {
        const finch_param *p = &par->p[i];
        if (p->block != block) continue;
        const double sq = finch_adamw_step_consume(
            par->data + p->off, r->mom + p->off, r->vel + p->off, par->grad + p->goff, (size_t)p->n,
            p->decay, &r->fused.ac, r->fused.lr, r->fused.t);
        r->fused.sumsq += sq;
        r->fused.bad = !isfinite(sq);
    }
    if (block == FINCH_PARAM_LAST) r->fused.done = true;
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
/* Several processes whose devices sum among themselves (finch_backend.group_sum: NCCL):
 * rank 0 makes the group's id and sends it with its status, and every rank joins; then
 * each step's gradients are summed there, before they come back to the host. */
static finch_status join_device_group(run *r, finch_err *err) {
    const finch_backend *be = r->m->be;
    if (r->procs == 1 || !be->group_sum) return FINCH_OK;
    struct {
        int32_t code;
        unsigned char id[FINCH_GROUP_ID_MAX];
    } msg = {0};
    if (r->rank == 0) msg.code = (int32_t)be->group_id(msg.id, err);
    finch_status st = finch_dist_bcast(&msg, sizeof msg, "the device group's id", err);
    if (!st && msg.code)
        return r->rank ? finch_err_set(err, (finch_status)msg.code,
                                       "rank 0 could not make the device group (its message says "
                                       "why)")
                       : (finch_status)msg.code;
    if (st || (st = be->group_join(msg.id, r->rank, r->procs, err))) return st;
    r->device_sum = true;
    if (r->rank == 0)
        finch_log(FINCH_LOG_INFO, "the %d ranks' devices sum the gradients among themselves",
                  r->procs);
    return FINCH_OK;
}

static finch_status prepare_method(run *r, finch_err *err) {
    const finch_train_options *o = r->o;
    finch_rng rng;
    finch_rng_seed(&rng, o->seed);
    finch_status st = finch_peft_new(r->m, o->method, o->method_options, o->n_method_options, &rng,
                                     false, &r->peft, err);
    if (st) return st;
    r->par = finch_peft_params(r->peft);
    /* the gradients: all of them, or with the fused step what is in use at once */
    if ((st = finch_params_alloc_grads(r->par, o->fused_optimizer != 0, err))) return st;
    /* on a device (finch_peft_new refused the methods that do not run there) */
    if (r->m->be->device &&
        ((st = finch_params_place(r->par, r->m->be, err)) || (st = join_device_group(r, err))))
        return st;
    /* the ranks agree before the first collective (DPO's reference pass sums over them) */
    if ((st = check_ranks(r, err))) return st;
    /* DPO's reference is the model before the method attaches */
    if (r->ts.pairs && r->rank == 0)
        finch_log(FINCH_LOG_INFO,
                  "DPO: the reference log-probs of %lld pairs (the model without the method)",
                  (long long)(units(&r->ts) +
                              (o->val_max_examples > 0 && units(&r->vs) > o->val_max_examples
                                   ? o->val_max_examples
                                   : units(&r->vs))));
    if (r->ts.pairs && (st = finch_dpo_new(r->m, &r->ts, &r->vs, o->val_max_examples, o->batch_size,
                                           r->T, o->beta, &r->dpo, err)))
        return st;
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
    if (o->packing && r->m->virt.embd)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--packing: prompt tuning puts its virtual tokens before each "
                             "sequence, and a packed row holds several; train without --packing "
                             "(prefix tuning packs)");
    if ((st = decay_ranges(r, err))) return st;
    if ((int64_t)r->B * r->ranks > 1 << 20)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--batch-size %d x %d ranks: a global micro-batch of more than "
                             "%d rows",
                             r->B, r->ranks, 1 << 20);
    /* the batch holds the global micro-batch; activations one rank's slice of it */
    if ((st = finch_train_acts_create(r->m, r->B, r->T,
                                      r->o->gradient_checkpointing ? FINCH_ACTS_CHECKPOINT
                                                                   : FINCH_ACTS_RECOMPUTE,
                                      &r->acts, err)) ||
        (r->o->bf16 && (st = finch_train_acts_bf16(r->acts, r->m, err))) ||
        (st = finch_batch_init(&r->batch, r->B * r->ranks, r->T, err)))
        return st;
    if (o->fused_optimizer) finch_train_acts_on_grads(r->acts, fused_update, r);
    size_t n_stash;
    if (r->lanes > 1 &&
        (!finch_size_mul((size_t)r->par->total, (size_t)r->lanes, &n_stash) ||
         !(r->stash = finch_calloc(n_stash, sizeof(float), "the simulated ranks' gradients", err))))
        return finch_err_set(err, FINCH_E_NOMEM,
                             "--simulate-ranks %d: out of memory for %d copies "
                             "of %lld gradients",
                             r->lanes, r->lanes, (long long)r->par->total);
    if (!(r->lane_loss = finch_calloc((size_t)r->lanes, sizeof(double), "lane losses", err)) ||
        !(r->lane_dstats =
              finch_calloc((size_t)r->lanes, sizeof(finch_dpo_stats), "lane DPO statistics", err)))
        return FINCH_E_NOMEM;
    r->mom = finch_calloc((size_t)r->par->total + 1, sizeof(float), "AdamW m", err);
    r->vel = finch_calloc((size_t)r->par->total + 1, sizeof(float), "AdamW v", err);
    if (!r->mom || !r->vel) return FINCH_E_NOMEM;
    r->pos = (finch_train_pos){.seed = o->seed,
                               .ranks = r->ranks,
                               .n_tasks = r->n_tasks,
                               .best_metric = NAN,
                               .best_ckpt_metric = NAN};
    memcpy(r->pos.task_units, r->task_units, sizeof r->task_units);
    memcpy(r->pos.task_weight, r->task_weight, sizeof r->task_weight);
    snprintf(r->last_good, sizeof r->last_good, "no checkpoint (none was saved yet)");
    if (!o->resume_dir) return FINCH_OK;
    if ((st = resume_state(r, err)) || (st = resume_tasks(r, err)) ||
        (st = finch_params_push(r->par, err)))
        return st;
    if (r->pos.ranks != r->ranks)
        return finch_err_set(err, FINCH_E_USAGE,
                             "%s: the run was made by %d data-parallel ranks (global batch %lld), "
                             "this one has %d: resume it with mpirun -np %d (or "
                             "--simulate-ranks %d in one process)",
                             o->resume_dir, r->pos.ranks,
                             (long long)o->batch_size * o->grad_accum * r->pos.ranks, r->ranks,
                             r->pos.ranks, r->pos.ranks);
    if (r->pos.seed != o->seed)
        return finch_err_set(err, FINCH_E_USAGE, "%s: the run used --seed %llu, not %llu",
                             o->resume_dir, (unsigned long long)r->pos.seed,
                             (unsigned long long)o->seed);
    if (r->pos.next >= units(&r->ts))
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: data position %lld is past the %lld examples: "
                             "another dataset?",
                             o->resume_dir, (long long)r->pos.next, (long long)units(&r->ts));
    snprintf(r->last_good, sizeof r->last_good, "the checkpoint resumed from (%s, step %lld)",
             o->resume_dir, (long long)r->pos.step);
    return FINCH_OK;
}

/* The task whose units hold unit u of the joined training set. */
static int task_of(const run *r, int64_t u) {
    int k = r->n_tasks - 1;
    while (r->task_start[k] > u) k--;
    return k;
}

/* After a micro-batch that moved the data position from (next0, epoch0): each task's count
 * of trained units grows by its units the order gave (finch_batch_fill wraps around the
 * same order array, so it is still the one of epoch0), and every epoch passed gets its order
 * from the sampler's state at its start. */
static void data_moved(run *r, int64_t next0, int64_t epoch0) {
    finch_train_pos *p = &r->pos;
    for (int64_t e = epoch0, from = next0;; e++, from = 0) {
        const int64_t to = e < p->epoch ? units(&r->ts) : p->next;
        for (int64_t i = from; i < to; i++) p->seen[task_of(r, r->order[i])]++;
        if (e == p->epoch) break;
    }
    for (int64_t e = epoch0 + 1; e <= p->epoch; e++) {
        memcpy(p->drawn, r->drawn_end, sizeof p->drawn);
        finch_mix_order(r->order, &r->mix, e, p->drawn, r->drawn_end, r->scratch);
    }
}

/* One optimizer step's forward and backward passes over grad_accum micro-batches: this
 * process's share of the mean loss; *tokens counts the examples' tokens (not padding) of
 * the whole global batch.
 *
 * Every rank fills the same global micro-batch of ranks x B rows (so the data position
 * moves alike everywhere) and computes its lane: rows [lane B, (lane + 1) B). The gradient
 * is scaled by the global micro-batch's target count, so the ranks' gradients sum to the
 * gradient of one process with batch ranks x B. Under simulate_ranks this process computes
 * every lane, each accumulating over the micro-batches in its own copy of the gradients
 * (swapped in and out of the registry) exactly as a rank does, and adds the lanes' sums in
 * lane order: with two lanes that is the allreduce's a + b, bit for bit. DPO's micro-batch
 * is ranks x batch_size pairs, lane k's pairs [k batch_size, (k + 1) batch_size) in its B
 * rows, their gradient that of the mean over all of them (dpo.c); its statistics are
 * summed like the loss. */
static double accumulate(run *r, int64_t step, int64_t *tokens) {
    const finch_train_options *o = r->o;
    const size_t n = (size_t)r->par->total;
    const int64_t BT = (int64_t)r->B * r->T;
    float *grad = r->par->grad;
    *tokens = 0;
    /* fused_optimizer: the gradient arena holds less than the parameters (no stash then) */
    finch_params_zero_grads(r->par);
    for (int l = 0; l < r->lanes; l++) {
        r->lane_loss[l] = 0;
        r->lane_dstats[l] = (finch_dpo_stats){0};
    }
    if (r->stash) finch_grad_zero(r->stash, (size_t)r->lanes * n);
    finch_batch lb = r->batch; /* DPO: one lane's B rows of the global micro-batch's buffers */
    lb.B = r->B;
    for (int k = 0; k < o->grad_accum; k++) {
        const int64_t n0 = r->pos.next, e0 = r->pos.epoch;
        uint64_t seed = mix64(o->seed ^ mix64((uint64_t)step * 65536 + (uint64_t)k));
        const finch_batch *b = &r->batch;
        float scale = 0.0f;
        if (!r->dpo) {
            finch_batch_fill(&r->batch, &r->ts, r->order, &r->pos.next, &r->pos.epoch,
                             o->packing != 0, finch_tokenizer_eos(r->m->tok));
            scale = b->n_targets ? 1.0f / ((float)b->n_targets * (float)o->grad_accum) : 0.0f;
            *tokens += b->n_tokens;
        }
        /* DPO: every lane reads its pairs of the global micro-batch from the same start */
        const int64_t next0 = r->pos.next, epoch0 = r->pos.epoch;
        for (int l = 0; l < r->lanes; l++) {
            const int lane = r->rank * r->lanes + l;
            const uint64_t lane_seed = lane ? mix64(seed + (uint64_t)lane) : seed;
            float *acc = r->stash ? r->stash + (size_t)l * n : NULL;
            if (acc) memcpy(grad, acc, n * sizeof *grad);
            if (r->dpo) {
                r->pos.next = next0;
                r->pos.epoch = epoch0;
                r->lane_loss[l] +=
                    finch_dpo_step(r->dpo, r->m, r->acts, &lb, &r->ts, r->order, &r->pos.next,
                                   &r->pos.epoch, lane, r->ranks, 1.0f / (float)o->grad_accum,
                                   lane_seed, &r->lane_dstats[l], l == 0 ? tokens : NULL) /
                    o->grad_accum;
            } else {
                const int64_t at = lane * BT;
                int64_t nt = 0;
                for (int64_t i = 0; i < BT; i++) nt += b->targets[at + i] >= 0;
                /* the lane's mean loss weighted by its share of the micro-batch's targets (a
                 * factor 1.0 with one rank) */
                if (nt)
                    r->lane_loss[l] +=
                        finch_model_train_step(r->m, r->acts, b->ids + at, b->targets + at,
                                               b->pos + at, b->seg + at, scale, lane_seed, true) *
                        ((double)nt / (double)b->n_targets) / o->grad_accum;
            }
            if (acc) memcpy(acc, grad, n * sizeof *grad);
        }
        data_moved(r, n0, e0);
    }
    double loss = r->lane_loss[0];
    r->dstats = r->lane_dstats[0];
    for (int l = 1; l < r->lanes; l++) {
        loss += r->lane_loss[l];
        finch_dpo_stats_add(&r->dstats, &r->lane_dstats[l]);
    }
    if (r->stash) {
        memcpy(grad, r->stash, n * sizeof *grad);
        for (int l = 1; l < r->lanes; l++) lane_add(grad, r->stash + (size_t)l * n, n);
    }
    return loss;
}

/* ', "tasks": {"a": 12, "b": 5}' into buf (cap bytes): each training file's examples (or
 * pairs) trained so far; "" for a run of one file. */
static void tasks_json(const run *r, char *buf, size_t cap) {
    *buf = 0;
    if (r->n_tasks == 1) return;
    size_t n = (size_t)snprintf(buf, cap, ", \"tasks\": {");
    for (int k = 0; k < r->n_tasks && n < cap; k++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s: %lld", k ? ", " : "", r->task_key[k],
                              (long long)r->pos.seen[k]);
    FINCH_ASSERT(n + 2 <= cap); /* sized for the names */
    memcpy(buf + n, "}", 2);
}

/* After the evaluation of step, whose validation loss is v: the best so far and early
 * stopping's counter, counted as transformers' EarlyStoppingCallback counts them: an
 * evaluation improves when v is below the best by more than the threshold (the first
 * always does), else the counter grows; the best follows any lower v. A loss that is not
 * finite never improves. True when the patience is used up. */
static bool track_best(run *r, int64_t step, double v) {
    finch_train_pos *p = &r->pos;
    const bool first = p->best_step == 0, lower = isfinite(v) && (first || v < p->best_metric);
    if (lower && (first || p->best_metric - v > r->o->early_stopping_threshold))
        p->bad_evals = 0;
    else
        p->bad_evals++;
    if (lower) {
        p->best_metric = v;
        p->best_step = step;
    }
    return r->o->early_stopping_patience && p->bad_evals >= r->o->early_stopping_patience;
}

/* What follows a step: metrics, evaluation (the best validation loss, early stopping),
 * progress, checkpoint; FINCH_E_INTERRUPTED when should_stop asked to stop (after the
 * checkpoint); r->stopped_early when early stopping ends the run (after the checkpoint). */
static finch_status after_step(run *r, finch_train_progress *pr, double rate,
                               int (*should_stop)(void *),
                               void (*on_progress)(const finch_train_progress *, void *),
                               void *user, finch_err *err) {
    const finch_train_options *o = r->o;
    const int64_t step = pr->step;
    finch_status st;
    char extra[512] = ""; /* DPO's rewards */
    if (r->dpo) finch_dpo_stats_json(&r->dstats, "", extra, sizeof extra);
    if (o->log_steps && (step % o->log_steps == 0 || step == r->total)) {
        tasks_json(r, r->tasks, r->tasks_cap);
        if ((st = finch_metrics_line(
                 &r->metrics, r->line, r->line_cap, err,
                 "{\"step\": %lld, \"loss\": %.6f, \"lr\": %.8g, \"grad_norm\": %.6f, "
                 "\"tokens_per_s\": %.1f, \"epoch\": %.4f%s%s}",
                 (long long)step, pr->loss, pr->lr, pr->grad_norm, rate,
                 (double)r->pos.epoch + (double)r->pos.next / (double)units(&r->ts), extra,
                 r->tasks)))
            return st;
    }
    const bool evaluated =
        r->vs.n && ((o->eval_steps && step % o->eval_steps == 0) || step == r->total);
    if (evaluated) {
        finch_batch eb = r->batch; /* B rows of the global micro-batch's buffers */
        eb.B = r->B;
        *extra = 0;
        if (r->dpo) {
            finch_dpo_stats v, mean;
            if ((st = finch_dpo_eval(r->dpo, r->m, r->acts, &eb, &r->vs, o->val_max_examples, &v,
                                     err)))
                return st;
            finch_dpo_stats_mean(&v, &mean);
            pr->val_loss = mean.loss;
            pr->val_accuracy = mean.accuracy;
            finch_dpo_stats_json(&v, "val_", extra, sizeof extra);
        } else if ((st = eval_loss(r->m, r->acts, &eb, &r->vs, o->val_max_examples,
                                   finch_tokenizer_eos(r->m->tok), &pr->val_loss, err))) {
            return st;
        }
        const finch_train_pos *p = &r->pos;
        r->stopped_early = track_best(r, step, pr->val_loss);
        pr->stopped_early = r->stopped_early;
        pr->best_metric = p->best_metric;
        pr->best_step = p->best_step;
        char best[160] = "";
        if (p->best_step)
            snprintf(best, sizeof best, ", \"best_metric\": %.6f, \"best_step\": %lld",
                     p->best_metric, (long long)p->best_step);
        if (o->early_stopping_patience)
            snprintf(best + strlen(best), sizeof best - strlen(best),
                     ", \"early_stopping_counter\": %lld%s", (long long)p->bad_evals,
                     r->stopped_early ? ", \"stopped_early\": true" : "");
        if ((st = finch_metrics_line(&r->metrics, r->line, r->line_cap, err,
                                     "{\"step\": %lld, \"val_loss\": %.6f%s%s}", (long long)step,
                                     pr->val_loss, extra, best)))
            return st;
    }
    if (on_progress && r->rank == 0) on_progress(pr, user);
    /* with several processes every rank's request was summed at the step's allreduce */
    bool stop = r->procs > 1 ? r->stop : should_stop && should_stop(user);
    /* the checkpoints of the run's plan: every save_steps, the last step, an early stop; and
     * one where the run was asked to stop */
    const bool planned =
        (o->save_steps && step % o->save_steps == 0) || step == r->total || r->stopped_early;
    const bool save = planned || stop;
    /* the best checkpoint: the lowest validation loss among the planned ones (not one an
     * interruption made, so that an interrupted run picks what the uninterrupted one does) */
    if (planned && evaluated && isfinite(pr->val_loss) &&
        (!r->pos.best_ckpt_step || pr->val_loss < r->pos.best_ckpt_metric)) {
        r->pos.best_ckpt_metric = pr->val_loss;
        r->pos.best_ckpt_step = step;
    }
    if (r->rank == 0 && save) {
        if ((st = finch_checkpoint_save(o->out_dir, r->peft, r->m, r->mom, r->vel, &r->pos, err)))
            return st;
        snprintf(r->last_good, sizeof r->last_good, "%s/checkpoint-%lld", o->out_dir,
                 (long long)step);
        if (o->save_total_limit > 0 &&
            (st = finch_checkpoint_prune(o->out_dir, o->save_total_limit,
                                         o->load_best_model_at_end ? r->pos.best_ckpt_step : 0,
                                         err)))
            return st;
    }
    if (r->stopped_early && r->rank == 0)
        finch_log(FINCH_LOG_INFO,
                  "early stopping at step %lld: the validation loss has not improved by more "
                  "than %g for %lld evaluations (the best: %.4f at step %lld)",
                  (long long)step, o->early_stopping_threshold, (long long)r->pos.bad_evals,
                  r->pos.best_metric, (long long)r->pos.best_step);
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
    if (o->early_stopping_patience && r->pos.bad_evals >= o->early_stopping_patience) {
        r->stopped_early = true;
        if (r->rank == 0)
            finch_log(FINCH_LOG_INFO,
                      "the run stopped early at step %lld (%lld evaluations without improvement, "
                      "the best at step %lld): nothing to do; a larger "
                      "--early-stopping-patience continues it",
                      (long long)r->pos.step, (long long)r->pos.bad_evals,
                      (long long)r->pos.best_step);
    }
    for (int64_t step = r->pos.step + 1; step <= r->total && !r->stopped_early; step++) {
        double t0 = now_s();
        int64_t tokens;
        const double lr = finch_lr_at(&r->sched, step - 1);
        r->fused = (fused_step){.ac = ac, .lr = lr, .t = step};
        double loss = accumulate(r, step, &tokens);
        finch_status st;
        /* on a device: its gradients to the host (summed over the ranks' devices first
         * where they can), where the allreduce and AdamW run */
        if ((st = finch_train_acts_status(r->acts, err)) ||
            (r->device_sum && (st = r->m->be->group_sum(r->par->dev_grad, r->par->total, err))) ||
            (st = finch_params_pull_grads(r->par, err)) ||
            (st = reduce_step(r, step, &loss, should_stop, user, err)))
            return st;
        float *g = r->par->grad;
        double norm;
        float clip = 1.0f; /* applied by the AdamW step, which reads every gradient anyway */
        if (o->fused_optimizer) {
            /* a step whose batch had no target ran no backward: its zero gradients still
             * make an AdamW step, as after backward */
            for (int l = r->m->cfg.n_layer - 1; l >= -1 && !r->fused.done; l--) fused_update(r, l);
            norm = r->fused.bad ? NAN : sqrt(r->fused.sumsq);
        } else {
            norm = finch_grad_norm(g, (size_t)n_train);
            if (o->max_grad_norm > 0) clip = finch_grad_clip_coef(norm, o->max_grad_norm);
        }
        if (!isfinite(loss) || !isfinite(norm))
            /* nothing of this step is saved (nor applied, but by a fused step to the tensors
             * up to the first non-finite gradient): the last checkpoint stays as it was */
            return finch_err_set(
                err, FINCH_E_RANGE,
                "step %lld: the loss is %g and the gradient norm %g (not finite): "
                "stopping without saving; the last good state is %s (resume from it "
                "with a lower --learning-rate or the method's scale)",
                (long long)step, loss, norm, r->last_good);
        if (!o->fused_optimizer)
            finch_adamw_step_scaled(r->par->data, r->mom, r->vel, g, (size_t)n_train, r->ranges,
                                    r->n_ranges, &ac, lr, step, clip);
        if ((st = finch_params_push(r->par, err))) return st;
        r->pos.step = step;
        double dt = now_s() - t0, rate = (double)tokens / (dt > 0 ? dt : 1e-9);
        smooth = isnan(smooth) ? loss : 0.9 * smooth + 0.1 * loss;
        tps = isnan(tps) ? rate : 0.8 * tps + 0.2 * rate;
        double elapsed = now_s() - t_start;
        finch_train_progress pr = {
            .step = step,
            .total_steps = r->total,
            .loss = loss,
            .loss_smooth = smooth,
            .lr = lr,
            .grad_norm = norm,
            .tokens_per_s = tps,
            .eta_s = elapsed / (double)(step - first_step) * (double)(r->total - step),
            .val_loss = NAN,
            .n_trainable = n_train,
            .n_total = n_total,
            .rewards_chosen = NAN,
            .rewards_rejected = NAN,
            .rewards_accuracy = NAN,
            .rewards_margin = NAN,
            .val_accuracy = NAN,
            .ranks = r->ranks,
            .global_batch = (int64_t)o->batch_size * o->grad_accum * r->ranks,
            .best_metric = r->pos.best_metric,
            .best_step = r->pos.best_step,
            .n_tasks = r->n_tasks,
            .task_names = r->task_name_of,
            .task_seen = r->pos.seen};
        if (r->dpo) {
            finch_dpo_stats mean;
            finch_dpo_stats_mean(&r->dstats, &mean);
            pr.rewards_chosen = mean.chosen;
            pr.rewards_rejected = mean.rejected;
            pr.rewards_accuracy = mean.accuracy;
            pr.rewards_margin = mean.chosen - mean.rejected;
        }
        if ((st = after_step(r, &pr, rate, should_stop, on_progress, user, err))) return st;
    }
    return FINCH_OK;
}

/* load_best_model_at_end: the parameters of the best checkpoint into the registry (the
 * optimizer's state, no longer needed, is read over). */
static finch_status load_best(run *r, finch_err *err) {
    char path[4200];
    finch_train_pos best;
    snprintf(path, sizeof path, "%s/checkpoint-%lld", r->o->out_dir,
             (long long)r->pos.best_ckpt_step);
    finch_log(FINCH_LOG_INFO,
              "--load-best-model-at-end: the result is %s (validation loss %.4f; the last "
              "step's checkpoint is %lld)",
              path, r->pos.best_ckpt_metric, (long long)r->pos.step);
    finch_status st = finch_checkpoint_load(path, r->par, r->mom, r->vel, &best, err);
    return st ? finch_err_prefix(err, "--load-best-model-at-end") : FINCH_OK;
}

static void run_release(run *r) {
    finch_file_append_close(&r->metrics);
    if (r->peft) finch_peft_detach(r->peft, r->m);
    free(r->order);
    free(r->scratch);
    free(r->line);
    free(r->tasks);
    free(r->mom);
    free(r->vel);
    free(r->stash);
    free(r->lane_loss);
    free(r->lane_dstats);
    free(r->ranges);
    finch_batch_release(&r->batch);
    finch_train_acts_free(r->acts);
    finch_dpo_free(r->dpo);
    finch_peft_free(r->peft);
    /* vs may hold examples moved out of ts (val_fraction): release both sets' examples */
    finch_token_set_release(&r->vs);
    finch_token_set_release(&r->ts);
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
             .sched = {.lr = o->learning_rate, .warmup_steps = o->warmup_steps},
             .rank = finch_dist_rank(),
             .procs = finch_dist_size()};
    r.ranks = r.procs > 1 ? r.procs : o->simulate_ranks > 1 ? o->simulate_ranks : 1;
    r.lanes = r.ranks / r.procs;
    if ((st = finch_lr_kind_parse(o->lr_scheduler ? o->lr_scheduler : "linear", &r.sched.kind,
                                  err)) ||
        (r.rank == 0 && (st = finch_mkdir_p(o->out_dir, err))))
        goto done;
    if (r.rank == 0) finch_checkpoint_clean(o->out_dir); /* temporaries of a killed save */
    if ((st = prepare_data(&r, err)) || (st = prepare_method(&r, err))) goto done;
    finch_mix_order(r.order, &r.mix, r.pos.epoch, r.pos.drawn, r.drawn_end, r.scratch);
    /* a resumed run's log is cut back to the checkpoint's step: the steps after it run again */
    if (r.rank == 0 &&
        (st = finch_metrics_open(o->out_dir, o->resume_dir ? r.pos.step : -1, &r.metrics, err)))
        goto done;
    const int64_t n_train = r.par->total, n_total = m->cfg.n_params;
    if (r.rank == 0) {
        finch_log(FINCH_LOG_INFO,
                  "%s: trainable params: %lld || all params: %lld || trainable%%: %.4f",
                  finch_peft_method(r.peft), (long long)n_train, (long long)n_total,
                  100.0 * (double)n_train / (double)n_total);
        finch_log(FINCH_LOG_INFO,
                  "%lld training %s, %lld validation; %lld steps of %d x %d x %d tokens%s",
                  (long long)units(&r.ts), r.dpo ? "pairs" : "examples", (long long)units(&r.vs),
                  (long long)r.total, o->grad_accum, r.B, r.T,
                  r.dpo        ? " (DPO: chosen and rejected rows)"
                  : o->packing ? " (packed)"
                               : "");
        const double grad_mb = (double)r.par->grad_total * sizeof(float) / 1e6;
        if (o->fused_optimizer)
            finch_log(FINCH_LOG_INFO,
                      "optimizer: AdamW fused into backward (--fused-optimizer): each tensor "
                      "updated once its gradient is complete; gradients held: %lld of %lld "
                      "(%.1f MB)",
                      (long long)r.par->grad_total, (long long)n_train, grad_mb);
        else
            finch_log(FINCH_LOG_INFO,
                      "optimizer: AdamW after backward (%s); gradients held: all %lld (%.1f MB)",
                      o->max_grad_norm > 0 ? "clipped" : "not clipped", (long long)n_train,
                      grad_mb);
        if (r.n_tasks > 1)
            finch_log(FINCH_LOG_INFO,
                      "a mixture of %d training files: each of an epoch's %lld slots draws a "
                      "file by weight, then its next example",
                      r.n_tasks, (long long)units(&r.ts));
        if (r.ranks > 1)
            finch_log(FINCH_LOG_INFO,
                      "data parallel: %d ranks%s, global batch %lld %s (%d x %d x %d ranks)",
                      r.ranks, r.procs > 1 ? "" : " simulated in one process",
                      (long long)o->batch_size * o->grad_accum * r.ranks, r.dpo ? "pairs" : "rows",
                      o->batch_size, o->grad_accum, r.ranks);
    }
    if ((st = train_steps(&r, on_progress, should_stop, user, err))) goto done;
    /* the result (adapter in the PEFT layout, or the model) at the top of the run directory:
     * the weights as they are, or those of the best checkpoint */
    if (r.rank == 0 && o->load_best_model_at_end && r.pos.best_ckpt_step &&
        r.pos.best_ckpt_step != r.pos.step)
        st = load_best(&r, err);
    finch_params_unplace(r.par); /* the method's own writers read its sites */
    if (r.rank == 0 && !st) st = finch_peft_save(r.peft, m, o->out_dir, err);
done:
    run_release(&r);
    return st;
}
