/*
 * train.h: what the training loop (loop.c, public finch_train) uses of its own files:
 * checkpoints. A checkpoint is a directory checkpoint-<step>/ holding the method's result
 * (an adapter in the PEFT layout, or a model) and trainer_state.bin (the names and shapes
 * of the trainable tensors, their exact f32 values, AdamW's m and v, the step, the
 * data position, the number of data-parallel ranks and the mixture's sampler state),
 * written into a temporary
 * directory that is renamed into place, so a crash never leaves a half-written checkpoint
 * under its final name. metrics.jsonl (metrics.c). And the DPO objective (dpo.c).
 */
#ifndef FINCH_TRAIN_H
#define FINCH_TRAIN_H

#include "core/core.h"
#include "data/data.h" /* finch_token_set, finch_batch */
#include "peft/peft.h" /* finch_peft, finch_params */

/* Where a run is: enough to continue it exactly. */
typedef struct {
    int64_t step;  /* optimizer steps done */
    int64_t next;  /* index into the epoch's example order of the next example */
    int64_t epoch; /* passes over the training set completed */
    uint64_t seed; /* the run's seed (data order, dropout) */
    int32_t ranks; /* data-parallel ranks whose slices make each micro-batch (1: one process) */
    /* the training files: how many (0 read from a checkpoint older than mixtures: one),
     * each one's units (examples, or pairs) and weight, the units each gave the orders of
     * the epochs before the current one (the sampler's state, finch_mix_order's drawn) and
     * the units of each trained so far */
    int32_t n_tasks;
    int64_t task_units[FINCH_MAX_TASKS];
    double task_weight[FINCH_MAX_TASKS];
    int64_t drawn[FINCH_MAX_TASKS];
    int64_t seen[FINCH_MAX_TASKS];
    /* validation: the lowest loss and its step (0: none yet); the lowest among the steps
     * that saved a checkpoint and its step (load_best_model_at_end's result); evaluations
     * in a row without an improvement (early stopping's patience counter) */
    double best_metric;
    int64_t best_step;
    double best_ckpt_metric;
    int64_t best_ckpt_step;
    int64_t bad_evals;
} finch_train_pos;

/* Writes out_dir/checkpoint-<step>/ (replacing one of the same step). m and v: AdamW's
 * moments, one float per parameter each. */
finch_status finch_checkpoint_save(const char *out_dir, const finch_peft *p,
                                   const finch_model *model, const float *m, const float *v,
                                   const finch_train_pos *pos, finch_err *err);

/* Deletes what an interrupted write left in out_dir (a process killed mid-save): temp
 * checkpoint directories (.checkpoint-<step>.XXXXXX) and temp files (<name>.tmp.XXXXXX).
 * Called when a run starts, when no other process writes to out_dir. */
void finch_checkpoint_clean(const char *out_dir);

/* Deletes all but the newest keep checkpoint-<step> directories of out_dir (keep >= 1), and
 * never checkpoint-<protect> (protect 0: none), which is kept besides them. */
finch_status finch_checkpoint_prune(const char *out_dir, int64_t keep, int64_t protect,
                                    finch_err *err);

/* Reads a checkpoint into a registry of the same tensors (names and shapes must match),
 * m, v and *pos. path is a checkpoint directory, or a run directory whose checkpoint with
 * the highest step is taken. Errors name the file and what does not match. */
finch_status finch_checkpoint_load(const char *path, finch_params *params, float *m, float *v,
                                   finch_train_pos *pos, finch_err *err);

/* ---- metrics.jsonl (metrics.c) ------------------------------------------------------ */

/* Opens out_dir/metrics.jsonl for appending: emptied for a new run (resume_step < 0); for
 * a run resumed from the checkpoint of step resume_step, first cut back (atomically) to
 * its lines of steps up to resume_step, a torn last line dropped too, so that the steps run
 * again are not logged twice. FINCH_E_IO naming the file. */
finch_status finch_metrics_open(const char *out_dir, int64_t resume_step, finch_append_file *out,
                                finch_err *err);

/* Appends one line, fmt's JSON object, formatted in buf (cap bytes, enough for every line
 * the caller writes: a longer one is a bug) with one write. Numbers that are not finite
 * (a validation set whose loss is NaN) are written as null, which JSON allows. A closed f (no path:
 * not rank 0) logs nothing. */
finch_status finch_metrics_line(finch_append_file *f, char *buf, size_t cap, finch_err *err,
                                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---- DPO (dpo.c) --------------------------------------------------------------------- */

/* Sums over pairs (divide by n, finch_dpo_stats_mean): the DPO loss, the rewards
 * beta (logp_pi - logp_ref) of the chosen and rejected sides, how many had chosen >
 * rejected, the policy's summed log-probs of each side. */
typedef struct {
    double loss, chosen, rejected, accuracy, logp_chosen, logp_rejected;
    int64_t n;
} finch_dpo_stats;

/* The DPO state of a run: beta, and the reference log-probs of every example of the
 * training set and of the first val_max_pairs pairs (0: all) of the validation set
 * (token sets of pairs, data.h), computed here with the model as it is (call it before
 * the method attaches; every MPI rank, which compute their shares) in micro-batches of
 * `pairs` pairs of T tokens. Training then runs
 * micro-batches of the same shape: 2 * pairs rows. */
typedef struct finch_dpo finch_dpo;
finch_status finch_dpo_new(const finch_model *m, const finch_token_set *train,
                           const finch_token_set *val, int64_t val_max_pairs, int pairs, int T,
                           double beta, finch_dpo **out, finch_err *err);
void finch_dpo_free(finch_dpo *d);

/* One micro-batch of a run of `ranks` data-parallel ranks (1: one process): the global
 * micro-batch is the ranks x pairs pairs order[*next], order[*next + 1], ... of ts (the
 * training set given to finch_dpo_new; order over its pairs, *next wrapping to 0 and
 * *epoch counting the wraps, both moved past all of them), of which this call computes
 * lane's pairs [lane pairs, (lane + 1) pairs) in b, forward with dropout seeded by
 * dropout_seed, the DPO loss, and backward: the gradients of the mean loss over the global
 * micro-batch's pairs accumulate (+=) scaled by scale (1 / grad_accum). Returns the lane's
 * share of that mean (its pairs' losses over ranks x pairs), adds its pairs to *acc and,
 * when tokens is not NULL, the global micro-batch's tokens to *tokens. a and b: 2 * pairs
 * rows. */
double finch_dpo_step(finch_dpo *d, const finch_model *m, finch_train_acts *a, finch_batch *b,
                      const finch_token_set *ts, const int64_t *order, int64_t *next,
                      int64_t *epoch, int lane, int ranks, float scale, uint64_t dropout_seed,
                      finch_dpo_stats *acc, int64_t *tokens);

/* The DPO statistics of the first max_pairs pairs (0: all those finch_dpo_new prepared) of
 * vs, the validation set given to finch_dpo_new, forward only; with several MPI ranks each
 * computes its share of the batches (every rank must call it) and every rank gets the sums
 * one process gets. */
finch_status finch_dpo_eval(finch_dpo *d, const finch_model *m, finch_train_acts *a, finch_batch *b,
                            const finch_token_set *vs, int64_t max_pairs, finch_dpo_stats *out,
                            finch_err *err);

/* *s += *t, member by member. */
void finch_dpo_stats_add(finch_dpo_stats *s, const finch_dpo_stats *t);

/* *s = the sum of every MPI rank's *s (unchanged in one process). */
finch_status finch_dpo_stats_sum(finch_dpo_stats *s, finch_err *err);

/* The reference log-prob of example i of the training (set 0) or validation (1) set. */
double finch_dpo_reference(const finch_dpo *d, int set, int64_t i);

/* The means of s (NaN when it holds no pair). */
void finch_dpo_stats_mean(const finch_dpo_stats *s, finch_dpo_stats *mean);

/* Writes s's means as JSON members in TRL's names, each key after prefix ("" or "val_"):
 * ', "rewards/chosen": ..., "rewards/rejected": ..., "rewards/accuracies": ...,
 * "rewards/margins": ..., "logps/chosen": ..., "logps/rejected": ...' (snprintf's
 * return). */
int finch_dpo_stats_json(const finch_dpo_stats *s, const char *prefix, char *buf, size_t n);

#endif /* FINCH_TRAIN_H */
