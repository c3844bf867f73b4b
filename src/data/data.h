/*
 * data.h: instruction datasets: JSONL files in the common shapes, rendered through
 * {field} templates into (prompt, completion) text, tokenized into ids with a loss mask,
 * and cut into training batches (padded, or packed without attention crossing examples).
 *
 * Shapes (one JSON object a line):
 *   completion  {"prompt": ..., "completion": ...}
 *   alpaca      {"instruction": ..., "input": ..., "output": ...}   (input may be "" or absent)
 *   dolly       {"instruction": ..., "context": ..., "response": ...} (context may be "" or absent)
 *   chat        {"messages": [{"role": ..., "content": ...}, ...]}   (last message: assistant)
 *   preference  {"prompt": ..., "chosen": ..., "rejected": ...}  (DPO pairs): the prompt a
 *               string (templates and --chat apply) or a list of messages (rendered with the
 *               chat template); chosen and rejected strings, an assistant message, or a list
 *               of one assistant message; neither may be empty
 * Knows nothing of models beyond the tokenizer.
 */
#ifndef FINCH_DATA_H
#define FINCH_DATA_H

#include "core/core.h"
#include "tokenizer/tokenizer.h" /* finch_tokenize, finch_chat_render */

typedef enum {
    FINCH_SHAPE_AUTO = 0, /* detect from the first valid line's fields */
    FINCH_SHAPE_COMPLETION,
    FINCH_SHAPE_ALPACA,
    FINCH_SHAPE_DOLLY,
    FINCH_SHAPE_CHAT,
    FINCH_SHAPE_PREFERENCE,
    FINCH_SHAPE_COUNT
} finch_shape;

/* "completion", "alpaca", ...; NULL for an out-of-range value. */
const char *finch_shape_name(finch_shape s);
/* The shape with this name ("auto" included); FINCH_E_USAGE listing the names otherwise. */
finch_status finch_shape_parse(const char *name, finch_shape *out, finch_err *err);

/* One example as text: the model sees prompt + completion; the loss covers completion. */
typedef struct {
    char *prompt;
    char *completion;
    char *user;     /* with the chat template: the prompt before it wrapped it; else NULL */
    char *rejected; /* preference pairs: the rejected completion (completion is the chosen
                       one); else NULL */
    int64_t line;   /* 1-based line in the source file, for messages */
} finch_text_example;

/* Frees an example's strings. */
void finch_text_example_release(finch_text_example *ex);

/* Prompt templates: each prompt text has {field} placeholders naming fields of the line
 * ({{ and }} are literal braces). With several templates one is drawn per example. */
typedef struct {
    const char *const *prompts; /* n templates; NULL/0 = the shape's built-in template */
    int n;
    bool chat; /* wrap the rendered prompt as a user turn with the chat template */
} finch_templates;

typedef struct {
    finch_shape shape; /* FINCH_SHAPE_AUTO to detect */
    finch_templates templates;
    bool skip_bad;              /* skip malformed lines (counted) instead of failing */
    uint64_t seed;              /* template sampling */
    const finch_tokenizer *tok; /* for the chat template (chat shape or templates.chat) */
} finch_data_options;

typedef struct {
    finch_text_example *ex; /* n examples, owned */
    int64_t n;
    finch_shape shape; /* the shape used (detected when AUTO) */
    int64_t n_skipped; /* malformed lines skipped (skip_bad) */
} finch_dataset;

/* Reads a JSONL file. Blank lines are ignored. A line that is not a JSON object, lacks a
 * field its shape needs, or has a field of the wrong type is FINCH_E_FORMAT
 * "<path>: line N: <what>", unless skip_bad. A file without any example is FINCH_E_FORMAT.
 * The caller owns *out (finch_dataset_free). */
finch_status finch_dataset_load(const char *path, const finch_data_options *opt,
                                finch_dataset **out, finch_err *err);
/* The same over a buffer (name is used in messages). */
finch_status finch_dataset_parse(const char *text, size_t len, const char *name,
                                 const finch_data_options *opt, finch_dataset **out,
                                 finch_err *err);
void finch_dataset_free(finch_dataset *d);

/* Moves the last `fraction` of the examples (after a seeded shuffle) into *val. */
finch_status finch_dataset_split(finch_dataset *d, double fraction, uint64_t seed,
                                 finch_dataset **val, finch_err *err);

/* ---- tokens ------------------------------------------------------------------------- */

/* One tokenized example: ids and whether each id is a loss target. */
typedef struct {
    int32_t *ids;  /* n ids: prompt (with BOS if the model adds one), completion, EOS */
    uint8_t *mask; /* n flags: 1 where the id is predicted with loss */
    int32_t n;
    bool truncated; /* cut to max_len */
} finch_token_example;

typedef struct {
    finch_token_example *ex;
    int64_t n;
    int64_t n_truncated; /* examples cut to max_len */
    int64_t n_dropped;   /* examples whose completion was cut away entirely (not in ex) */
    int64_t n_tokens;    /* ids in all examples */
    int64_t n_targets;   /* ids with loss */
    bool pairs;          /* preference pairs: ex[2i] is pair i's chosen, ex[2i+1] its rejected */
    int64_t n_identical; /* pairs whose chosen and rejected ids are the same */
} finch_token_set;

/* Tokenizes every example: the prompt with the model's BOS rule and special tokens
 * parsed (templates carry control tokens), the completion as plain text, then EOS. The
 * loss covers completion and EOS, or everything when train_on_prompt. Examples longer
 * than max_len are cut at max_len (counted in n_truncated; the cut keeps the start); one
 * whose prompt alone fills max_len has nothing left to learn and is dropped (counted in
 * n_dropped). No example left at all is FINCH_E_RANGE.
 * Preference pairs (examples with rejected set) give two examples each, chosen then
 * rejected, both with the same prompt; a pair is dropped (counted once) when either has
 * no target left. A pair whose two sides tokenize the same is kept (its DPO loss is log 2
 * and its gradient zero, as in TRL) and counted in n_identical. */
finch_status finch_tokenize_dataset(const finch_tokenizer *tok, const finch_dataset *d,
                                    int32_t max_len, bool train_on_prompt, finch_token_set *out,
                                    finch_err *err);
void finch_token_set_release(finch_token_set *s);

/* Moves src's examples to the end of dst (src is left empty), adding up the counts. A set
 * of pairs joins only a set of pairs (or an empty one). FINCH_E_NOMEM leaves both as they
 * were. */
finch_status finch_token_set_append(finch_token_set *dst, finch_token_set *src, finch_err *err);

/* ---- orders and mixtures (mix.c) ----------------------------------------------------- */

/* order (n) = a permutation of 0..n-1, the Fisher-Yates shuffle seeded by (seed, e). */
void finch_shuffle(int64_t *order, int64_t n, uint64_t seed, int64_t e);

/* The seed of task k's own shuffles (and its share of a held-out split): seed itself for
 * task 0, so that a run of one file orders it as before mixtures existed. */
uint64_t finch_task_seed(uint64_t seed, int task);

/* A mixture of n_tasks tasks (1: a plain dataset): size[k] units each (examples, or pairs),
 * numbered task by task; weight[k] > 0, not necessarily summing to 1. */
typedef struct {
    int n_tasks;
    const int64_t *size;
    const double *weight;
    uint64_t seed;
} finch_mixture;

/* order (the sum of the sizes: one epoch) = epoch e's units, by the rule mix.c's header
 * states: per slot a task drawn by weight with an RNG seeded by (seed, e), then that task's
 * next unit in its sequence of seeded shuffles. drawn[k]: units task k gave the epochs
 * before e (its place in that sequence); drawn_end[k] = the same after e (the next epoch's
 * drawn). scratch: as many entries as order. With one task, order is finch_shuffle(size, seed,
 * drawn[0] / size). */
void finch_mix_order(int64_t *order, const finch_mixture *mx, int64_t e, const int64_t *drawn,
                     int64_t *drawn_end, int64_t *scratch);

/* ---- batches ------------------------------------------------------------------------ */

/* B rows of T tokens. targets[i] is the id to predict at position i (the next id) or -1
 * where there is no loss (prompt, padding, the last token of a row or of an example).
 * pos restarts at 0 for every example; seg numbers the examples within a row (0 for
 * padding), so attention must not cross a change of seg. */
typedef struct {
    int32_t B, T;
    int32_t *ids, *targets, *pos, *seg; /* (B, T) each */
    int64_t n_targets;                  /* entries of targets >= 0 */
    int64_t n_tokens;                   /* tokens of examples (not padding) */
} finch_batch;

finch_status finch_batch_init(finch_batch *b, int32_t B, int32_t T, finch_err *err);
void finch_batch_release(finch_batch *b);

/* Fills b from the examples order[*next], order[*next+1], ..., advancing *next (wrapping
 * to 0 when it reaches n, *epoch counting the wraps). Without packing each row holds one
 * example, padded with pad_id (0 when pad_id is negative: a tokenizer without EOS); with
 * packing rows are filled with whole examples in order (an example that does not fit starts
 * the next row). */
void finch_batch_fill(finch_batch *b, const finch_token_set *s, const int64_t *order, int64_t *next,
                      int64_t *epoch, bool pack, int32_t pad_id);

#endif /* FINCH_DATA_H */
