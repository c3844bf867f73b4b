/*
 * train.h: what the training loop (loop.c, public finch_train) uses of its own files:
 * checkpoints. A checkpoint is a directory checkpoint-<step>/ holding the method's result
 * (an adapter in the PEFT layout, or a model) and trainer_state.bin (the names and shapes
 * of the trainable tensors, their exact f32 values, AdamW's m and v, the step, the
 * data position and the number of data-parallel ranks), written into a temporary directory that is
 * renamed into place, so a crash never leaves a half-written checkpoint under its final name.
 */
#ifndef FINCH_TRAIN_H
#define FINCH_TRAIN_H

#include "core/core.h"
#include "peft/peft.h" /* finch_peft, finch_params */

/* Where a run is: enough to continue it exactly. */
typedef struct {
    int64_t step;  /* optimizer steps done */
    int64_t next;  /* index into the epoch's example order of the next example */
    int64_t epoch; /* passes over the training set completed */
    uint64_t seed; /* the run's seed (data order, dropout) */
    int32_t ranks; /* data-parallel ranks whose slices make each micro-batch (1: one process) */
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

/* Deletes all but the newest keep checkpoint-<step> directories of out_dir (keep >= 1). */
finch_status finch_checkpoint_prune(const char *out_dir, int64_t keep, finch_err *err);

/* Reads a checkpoint into a registry of the same tensors (names and shapes must match),
 * m, v and *pos. path is a checkpoint directory, or a run directory whose checkpoint with
 * the highest step is taken. Errors name the file and what does not match. */
finch_status finch_checkpoint_load(const char *path, finch_params *params, float *m, float *v,
                                   finch_train_pos *pos, finch_err *err);

#endif /* FINCH_TRAIN_H */
