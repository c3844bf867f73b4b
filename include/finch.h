/*
 * finch.h: the public interface of libfinch, a fine-tuning engine for decoder-only
 * language models.
 *
 * finch reads a model as people already have it (a GGUF file), keeps its weights in
 * their storage type (memory-mapped, dequantized tile by tile inside the matmul), and
 * runs it: tokenization, forward pass, generation with a KV cache.
 *
 * A short working example (error handling shortened):
 *
 *     finch_err err;
 *     finch_model *m;
 *     if (finch_model_load("model.gguf", &m, &err)) { puts(err.msg); return 1; }
 *     finch_gen_options opt = finch_gen_defaults();
 *     opt.max_tokens = 32;
 *     finch_generate(m, "The capital of France is", &opt, print_piece, NULL, &err);
 *     finch_model_free(m);
 *
 * Conventions: every function that can fail returns a finch_status (FINCH_OK is 0) and
 * takes a caller-owned finch_err as its last argument, filled with a one-line message on
 * failure. Whoever calls _load/_new owns the result and calls the matching _free, which
 * accepts NULL. The library never prints and never exits; diagnostics go to the log
 * callback set with finch_log_set.
 */
#ifndef FINCH_H
#define FINCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library version (finch train records it in run.json). */
#define FINCH_VERSION "0.1.0"

#if defined(FINCH_BUILD) && defined(__GNUC__)
#define FINCH_API __attribute__((visibility("default")))
#else
#define FINCH_API
#endif

/* ---------------------------------------------------------------------------------- */
/* Status and errors                                                                    */
/* ---------------------------------------------------------------------------------- */

typedef enum {
    FINCH_OK = 0,
    FINCH_E_IO,          /* a file could not be opened, read, written or mapped */
    FINCH_E_FORMAT,      /* a file or text is malformed */
    FINCH_E_RANGE,       /* a value is outside its allowed range */
    FINCH_E_UNSUPPORTED, /* well-formed, but a feature finch does not implement */
    FINCH_E_NOMEM,       /* an allocation failed */
    FINCH_E_USAGE,       /* the caller passed an invalid option or argument */
    FINCH_E_INTERRUPTED, /* stopped on request (a callback or a signal) */
    FINCH_STATUS_COUNT
} finch_status;

/* A failure: its status and a one-line message saying where, what, and what to do. */
typedef struct {
    finch_status code;
    char msg[512];
} finch_err;

/* The name of a status code ("io", "format", ...); never NULL. */
FINCH_API const char *finch_status_str(finch_status code);

typedef enum { FINCH_LOG_DEBUG, FINCH_LOG_INFO, FINCH_LOG_WARN } finch_log_level;
typedef void (*finch_log_fn)(finch_log_level level, const char *msg, void *user);

/* Installs the process-wide log callback (NULL silences the library). Not thread-safe:
 * call it once at start-up, before other threads use the library. */
FINCH_API void finch_log_set(finch_log_fn fn, void *user);

/* Writes into buf (n bytes) which compiled kernels this machine runs, which the build has,
 * and the core type OpenBLAS chose (the few products it still does), e.g.
 * "cpu-avx512vnni (built: generic avx2 avx512 avx512vnni); OpenBLAS core Cooperlake". The
 * environment variable FINCH_CPU picks a set by name; FINCH_E_USAGE when it names one that is
 * unknown or that this CPU lacks. */
FINCH_API finch_status finch_kernels_describe(char *buf, size_t n, finch_err *err);

/* ---------------------------------------------------------------------------------- */
/* Model                                                                                */
/* ---------------------------------------------------------------------------------- */

typedef struct finch_model finch_model;
typedef struct finch_tokenizer finch_tokenizer;

/* The hyperparameters of a loaded model (plain data, filled by finch_model_config). */
typedef struct {
    char arch[32];        /* general.architecture, e.g. "llama" */
    char name[128];       /* general.name, or "" */
    int n_layer;          /* transformer blocks */
    int n_embd;           /* hidden size C */
    int n_ff;             /* FFN inner width F */
    int n_head;           /* query heads H */
    int n_head_kv;        /* key/value heads KVH (GQA when < n_head) */
    int head_dim;         /* D */
    int n_vocab;          /* V */
    int n_ctx_train;      /* context length the model was trained for */
    float rope_theta;     /* RoPE frequency base */
    float rms_eps;        /* RMSNorm epsilon */
    int tied_output;      /* 1 when the output head reuses the token embeddings */
    int sliding_window;   /* positions a sliding-window block attends to (0: none) */
    int64_t n_params;     /* total parameter count */
    int64_t weight_bytes; /* bytes of all weights in their storage types */
} finch_model_config;

/* Loads a model from a GGUF file or a Hugging Face model folder (LLaMA, SmolLM, Mistral or
 * Qwen2: config.json, model.safetensors or model.safetensors.index.json with its shards,
 * and tokenizer.json + tokenizer_config.json when present). Maps the weights read-only,
 * validates every header field, config field and tensor shape, and builds the tokenizer
 * when there is one. The weights stay in their storage types (a folder's f32, f16 or
 * bf16; only its q/k projections are copied, to reorder their rows). Configurations finch
 * cannot compute exactly (rope_scaling, biases other than Qwen2's q/k/v, ...) are refused.
 * On failure *out is untouched and err says which file and what is wrong. The caller owns
 * *out. */
FINCH_API finch_status finch_model_load(const char *path, finch_model **out, finch_err *err);

/* QLoRA's load_in_4bit: quantizes the projections of every block (q, k, v, o, gate, up,
 * down; not the embeddings, the output head or the norms) of an f32, f16 or bf16 base to
 * NF4 with blocks of 64, as bitsandbytes' quantize_4bit does, with double quantization of
 * the block scales when double_quant is set (QLoRA's default). quant_type must be "nf4"
 * (fp4 is refused: not implemented). Projections already NF4 (a bitsandbytes folder) stay;
 * a base of another quantized type (Q4_1, ...) is refused with FINCH_E_UNSUPPORTED naming
 * the tensor. Call it right after finch_model_load, before sessions or training. */
FINCH_API finch_status finch_model_load_in_4bit(finch_model *model, const char *quant_type,
                                                int double_quant, finch_err *err);

/* Releases a model and unmaps its file; NULL is allowed. */
FINCH_API void finch_model_free(finch_model *model);

/* Whether the named device can be used in this build and on this machine: FINCH_OK for
 * "cpu", and for "cuda" with a usable CUDA device; FINCH_E_UNSUPPORTED with the reason
 * (built without CUDA, no device, no usable driver); FINCH_E_USAGE for another name. */
FINCH_API finch_status finch_device_check(const char *device, finch_err *err);

/* Puts the model on the named device: "cpu" (where it is after loading; nothing to do)
 * or "cuda", which copies every tensor the passes read (the weights in their storage
 * type) to the first CUDA device; finch_model_free releases the copies. On a CUDA model
 * finch_train runs its passes on the device, and generation and evaluation too, in exact
 * numerics, for the methods whose operations the backend has (LoRA, (IA)^3; the others are
 * refused with the reason). FINCH_E_UNSUPPORTED with the reason when finch was built without
 * CUDA or there is no usable device, FINCH_E_NOMEM when the device memory is short,
 * FINCH_E_USAGE for an unknown name. Call it after finch_model_load_in_4bit. */
FINCH_API finch_status finch_model_to_device(finch_model *model, const char *device,
                                             finch_err *err);

/* Fills *cfg with the model's hyperparameters. */
FINCH_API void finch_model_config_get(const finch_model *model, finch_model_config *cfg);

/* The model's tokenizer, or NULL when the file has none. Borrowed: valid until the
 * model is freed. */
FINCH_API const finch_tokenizer *finch_model_tokenizer(const finch_model *model);

/* Writes a human-readable description (architecture, hyperparameters, parameter count,
 * tensor types, tokenizer, chat template family) with the given line printer. */
FINCH_API void finch_model_describe(const finch_model *model,
                                    void (*print)(const char *line, void *user), void *user);

/* Sets how many threads kernels use (at least 1). Applies to all models. */
FINCH_API void finch_threads_set(int n);

/* ---------------------------------------------------------------------------------- */
/* Tokenizer                                                                            */
/* ---------------------------------------------------------------------------------- */

enum {
    FINCH_TOK_ADD_SPECIAL = 1,   /* add BOS/EOS as the model's metadata asks */
    FINCH_TOK_PARSE_SPECIAL = 2, /* match control tokens written in the text */
};

/* Tokenizes len bytes of UTF-8 text. *ids is allocated with malloc and owned by the
 * caller (free it), *n_ids is its length. Each invalid UTF-8 byte becomes U+FFFD, as in
 * llama.cpp (so such text does not decode back to the same bytes). Thread-safe. */
FINCH_API finch_status finch_tokenize(const finch_tokenizer *tok, const char *text, size_t len,
                                      int flags, int32_t **ids, int64_t *n_ids, finch_err *err);

/* Decodes ids back to text; *text is NUL-terminated, malloc'd and owned by the caller,
 * *len its length without the NUL. Control tokens decode to nothing unless
 * FINCH_TOK_PARSE_SPECIAL is in flags. An id out of range is FINCH_E_RANGE. */
FINCH_API finch_status finch_detokenize(const finch_tokenizer *tok, const int32_t *ids,
                                        int64_t n_ids, int flags, char **text, size_t *len,
                                        finch_err *err);

/* Vocabulary size. */
FINCH_API int32_t finch_tokenizer_n_vocab(const finch_tokenizer *tok);

/* The token's text as stored in the model (byte-level BPE alphabet); borrowed. */
FINCH_API const char *finch_tokenizer_token_text(const finch_tokenizer *tok, int32_t id);

/* 1 when id ends generation (end-of-sequence, end-of-turn, ...). */
FINCH_API int finch_tokenizer_is_eog(const finch_tokenizer *tok, int32_t id);

/* ---------------------------------------------------------------------------------- */
/* Chat templates                                                                       */
/* ---------------------------------------------------------------------------------- */

/* One message of a conversation. */
typedef struct {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8 text */
} finch_chat_msg;

/* Formats a conversation with the model's chat template, ending with the opening of an
 * assistant turn when add_assistant is 1. Templates are recognised by family (ChatML,
 * Llama 2, Llama 3, Gemma, ...); no template code is executed, and an unknown template
 * is FINCH_E_UNSUPPORTED. *text is malloc'd and owned by the caller. */
FINCH_API finch_status finch_chat_format(const finch_model *model, const finch_chat_msg *msgs,
                                         int n_msgs, int add_assistant, char **text,
                                         finch_err *err);

/* The name of the model's chat template family ("chatml", "llama3", ...), "none" when
 * the model has no template, or "unknown". */
FINCH_API const char *finch_chat_family(const finch_model *model);

/* ---------------------------------------------------------------------------------- */
/* Inference                                                                            */
/* ---------------------------------------------------------------------------------- */

typedef struct finch_session finch_session;

/* How inference computes. */
typedef enum {
    FINCH_NUMERICS_EXACT = 0, /* weights dequantized exactly, f32 activations and KV cache */
    FINCH_NUMERICS_LLAMACPP,  /* llama.cpp's CPU arithmetic: quantized weights meet 8-bit
                                 quantized activations in integer dot products; f16 KV cache */
    FINCH_NUMERICS_BF16,      /* exact, but the base's products over several tokens at once
                                 (a prompt) in bf16 with f32 sums, as training's --bf16 */
} finch_numerics;

/* Creates an inference session over a model with a KV cache for n_ctx positions. The
 * model must outlive the session. */
FINCH_API finch_status finch_session_new(const finch_model *model, int n_ctx,
                                         finch_numerics numerics, finch_session **out,
                                         finch_err *err);
FINCH_API void finch_session_free(finch_session *s);

/* Number of tokens already in the session's KV cache (an attached prompt or prefix
 * adapter's virtual tokens not counted). */
FINCH_API int finch_session_pos(const finch_session *s);

/* Forgets the cached positions (the next decode starts at position 0). */
FINCH_API void finch_session_reset(finch_session *s);

/* Runs n_ids tokens through the model at the next positions, appending their keys and
 * values to the cache. When logits is not NULL it receives the logits of every one of
 * the n_ids positions (n_ids x n_vocab floats, row-major); when last_logits is not NULL
 * it receives those of the last position only. FINCH_E_RANGE when the cache is full or
 * an id is out of range. */
FINCH_API finch_status finch_session_decode(finch_session *s, const int32_t *ids, int n_ids,
                                            float *logits, float *last_logits, finch_err *err);

/* Generation settings (plain data). Start from finch_gen_defaults(). */
typedef struct {
    int max_tokens;          /* tokens to generate at most (>= 0) */
    float temperature;       /* 0 = greedy */
    int top_k;               /* 0 = off */
    float top_p;             /* 1 = off */
    uint64_t seed;           /* sampler seed */
    int n_ctx;               /* KV cache size; 0 = prompt + max_tokens */
    finch_numerics numerics; /* FINCH_NUMERICS_EXACT by default */
    const char *const *stop; /* stop strings, NULL-terminated list, or NULL */
} finch_gen_options;

FINCH_API finch_gen_options finch_gen_defaults(void);

/* Receives each piece of generated text as soon as it is decoded (UTF-8 sequences are
 * never split across calls). Return non-zero to stop generation. */
typedef int (*finch_piece_fn)(const char *piece, size_t len, void *user);

/* Tokenizes the prompt (special tokens in it are parsed, BOS added as the model asks),
 * then generates until max_tokens, an end-of-generation token or a stop string. The
 * stop string itself is not passed to on_piece. */
FINCH_API finch_status finch_generate(const finch_model *model, const char *prompt,
                                      const finch_gen_options *opt, finch_piece_fn on_piece,
                                      void *user, finch_err *err);

/* ---------------------------------------------------------------------------------- */
/* Default model                                                                        */
/* ---------------------------------------------------------------------------------- */

/* Writes the path of the default model (SmolLM2-135M-Instruct Q4_1) in the cache
 * directory ($FINCH_CACHE, else ~/.cache/finch) to buf. FINCH_E_RANGE when buf is too
 * small; the file may not exist yet (scripts/setup.sh fetches it). */
FINCH_API finch_status finch_default_model_path(char *buf, size_t size, finch_err *err);

/* ---------------------------------------------------------------------------------- */
/* Evaluation metrics                                                                   */
/* ---------------------------------------------------------------------------------- */

/* Precision, recall and their harmonic mean, each in [0, 1]. */
typedef struct {
    double precision;
    double recall;
    double f1;
} finch_prf;

enum { FINCH_ROUGE_1, FINCH_ROUGE_2, FINCH_ROUGE_L, FINCH_ROUGE_LSUM, FINCH_ROUGE_COUNT };

/* ROUGE-1, -2, -L and -Lsum of a prediction against n_refs >= 1 references, equal to
 * Google's rouge-score (its tokenizer: lowercase, [a-z0-9] runs only; with stem, nltk's
 * Porter stemmer on tokens longer than 3 bytes; Lsum splits sentences on newlines). Each
 * type takes the reference with the best F1, as rouge-score's score_multi does. */
FINCH_API finch_status finch_rouge(const char *pred, const char *const *refs, int n_refs, int stem,
                                   finch_prf out[FINCH_ROUGE_COUNT], finch_err *err);

/* A BLEU score with its statistics, as sacrebleu reports them. */
typedef struct {
    double score;         /* 0..100 */
    double precisions[4]; /* n-gram precisions, 0..100 */
    double bp;            /* brevity penalty */
    int64_t sys_len;      /* prediction tokens */
    int64_t ref_len;      /* closest reference lengths, summed */
    int64_t correct[4];   /* clipped n-gram matches per order */
    int64_t total[4];     /* prediction n-grams per order */
} finch_bleu;

/* Corpus BLEU equal to sacrebleu's default: 13a tokenization, 4-grams, counts clipped by
 * the most generous reference, closest reference length, no smoothing. Example i has
 * n_refs[i] references refs[i][0..n_refs[i]). */
FINCH_API finch_status finch_bleu_corpus(const char *const *preds, const char *const *const *refs,
                                         const int *n_refs, size_t n, finch_bleu *out,
                                         finch_err *err);

/* Sentence BLEU equal to sacrebleu.sentence_bleu: 'exp' smoothing, effective order. */
FINCH_API finch_status finch_bleu_sentence(const char *pred, const char *const *refs, int n_refs,
                                           finch_bleu *out, finch_err *err);

/* SQuAD-style exact match (0 or 1) and token F1 of a prediction, best over references:
 * both texts are normalised by lowercasing ASCII letters, removing ASCII punctuation and
 * the words a/an/the, and splitting on whitespace. Two empty answers match (F1 1). */
FINCH_API finch_status finch_exact_match(const char *pred, const char *const *refs, int n_refs,
                                         double *em, double *f1, finch_err *err);

/* A set of (prediction, references) pairs to score, read from files. */
typedef struct finch_score_set finch_score_set;

/* Reads one text per line from pred_path and from each of the n_ref_paths reference
 * files (the same number of lines in each; a trailing \r is dropped). */
FINCH_API finch_status finch_score_set_load_lines(const char *pred_path,
                                                  const char *const *ref_paths, int n_ref_paths,
                                                  finch_score_set **out, finch_err *err);

/* Reads JSON Lines with fields "prediction" (a string) and "reference" (a string or a
 * non-empty list of strings); blank lines are skipped. */
FINCH_API finch_status finch_score_set_load_jsonl(const char *path, finch_score_set **out,
                                                  finch_err *err);
FINCH_API void finch_score_set_free(finch_score_set *s);
FINCH_API size_t finch_score_set_size(const finch_score_set *s);

/* Scores over a whole set: ROUGE, exact match and F1 are means over examples; BLEU is
 * corpus BLEU. */
typedef struct {
    finch_prf rouge[FINCH_ROUGE_COUNT];
    finch_bleu bleu;
    double exact_match; /* 0..1 */
    double token_f1;    /* 0..1 */
} finch_scores;

FINCH_API finch_status finch_score_set_compute(const finch_score_set *s, int stem,
                                               finch_scores *out, finch_err *err);

/* Writes an HTML report of a training run directory to out_path (atomically): a header
 * (model, method, final training and validation loss, tokens/s, run time), loss (raw and
 * smoothed), validation-loss, learning-rate and gradient-norm charts from metrics.jsonl,
 * metric tables and sample generations from every eval*.json in run_dir and the n_eval
 * files eval_paths (the schema finch eval --json writes), and the settings in run.json and
 * adapter_config.json. The page is self-contained (inline CSS and SVG, no scripts) and
 * escapes all text. Missing files are named on the page; a directory with neither
 * metrics.jsonl nor an evaluation file, and malformed files (file:line), are errors. */
FINCH_API finch_status finch_report_write(const char *run_dir, const char *const *eval_paths,
                                          int n_eval, const char *out_path, finch_err *err);

/* Writes the HTML page of a comparison of methods (finch compare-methods) to out_path
 * (atomically) from compare_json: {"model", "data", "task", "budget", "metric", "rows":
 * [{"method", "out" (its run directory), "trainable_params", "trainable_percent",
 * "size_bytes", "tokens_per_s", "peak_rss_mb", "val_loss", "metric",
 * "general_loss_change", "error"}]}: the table, and every run's smoothed training loss
 * (metrics.jsonl) on one plot with its validation points. */
FINCH_API finch_status finch_report_compare(const char *compare_json, const char *out_path,
                                            finch_err *err);

/* ---------------------------------------------------------------------------------- */
/* Datasets and loss                                                                    */
/* ---------------------------------------------------------------------------------- */

/* Where examples come from and how they become token sequences (plain data). */
typedef struct {
    const char *path;             /* JSONL file */
    const char *format;           /* "auto" (NULL), "completion", "alpaca", "dolly", "chat" */
    const char *const *templates; /* prompt templates with {field} placeholders, or NULL */
    int n_templates;
    int chat;             /* wrap prompts in the model's chat template */
    int max_seq_len;      /* tokens per example at most (cut beyond, counted);
                             0 = 256 or the model's context if shorter */
    int64_t max_examples; /* 0 = all */
    int train_on_prompt;  /* loss on prompt tokens too */
    int skip_bad;         /* skip malformed lines (counted) instead of failing */
    uint64_t seed;        /* template sampling */
} finch_data_spec;

/* Mean loss over a dataset's target tokens. */
typedef struct {
    double loss;         /* mean cross-entropy (nats) over target tokens */
    double perplexity;   /* exp(loss) */
    int64_t n_examples;  /* examples scored */
    int64_t n_targets;   /* target tokens */
    int64_t n_truncated; /* examples cut to max_seq_len */
    int64_t n_dropped;   /* examples with no target left after the cut */
    int64_t n_skipped;   /* malformed lines skipped */
} finch_loss_report;

/* Reads the dataset, tokenizes it (loss on completions unless train_on_prompt) and
 * returns the mean cross-entropy of the model's next-token predictions over all target
 * tokens. Errors name the file and line. progress (may be NULL) is called after each
 * example with (done, total). */
FINCH_API finch_status finch_eval_loss(const finch_model *model, const finch_data_spec *spec,
                                       finch_numerics numerics,
                                       void (*progress)(int64_t done, int64_t total, void *user),
                                       void *user, finch_loss_report *out, finch_err *err);

/* Called after each example with (done, total); may be NULL. */
typedef void (*finch_progress_fn)(int64_t done, int64_t total, void *user);

/* Generations for a dataset: per example the prompt (its template applied, the chat
 * template not, except for chat-shaped data whose prompt is the rendering the model saw),
 * the dataset's completion and the model's output, both without surrounding whitespace. Owned
 * arrays; release with finch_gen_results_release. */
typedef struct {
    int64_t n;         /* examples */
    char **prompts;    /* n */
    char **references; /* n */
    char **outputs;    /* n */
    int64_t n_tokens;  /* tokens generated, over all examples */
    int64_t n_cut;     /* generations cut short by the model's context */
    int64_t n_skipped; /* malformed lines skipped */
} finch_gen_results;

/* Generates a completion for every example of the dataset (spec: shape, templates, chat,
 * max_examples, skip_bad; max_seq_len is not used) with one KV cache reused across
 * examples: gen's max_tokens, temperature, top-k, top-p and numerics; sampling draws from
 * a generator seeded with gen->seed and the example's index, so outputs do not depend on
 * which other examples run. Generation stops at an end-of-generation token, max_tokens,
 * or a stop string (cut away). An empty reference is FINCH_E_FORMAT naming the line. */
FINCH_API finch_status finch_eval_generate(const finch_model *model, const finch_data_spec *spec,
                                           const finch_gen_options *gen, finch_progress_fn progress,
                                           void *user, finch_gen_results *out, finch_err *err);
FINCH_API void finch_gen_results_release(finch_gen_results *r);

/* Scores of n predictions against one reference each, as finch_score_set_compute. */
FINCH_API finch_status finch_scores_compute(const char *const *preds, const char *const *refs,
                                            size_t n, int stem, finch_scores *out, finch_err *err);

/* Log-likelihoods of labels as continuations of a prompt: out[j] is the sum over label j's
 * tokens of log p(token | prompt, earlier label tokens). The prompt is tokenized with BOS
 * as the model asks and special tokens parsed, each label as plain text; the prompt runs
 * through the model once and its KV cache is shared by all labels. A label that
 * tokenizes to nothing is FINCH_E_USAGE. */
FINCH_API finch_status finch_label_logprobs(const finch_model *model, finch_numerics numerics,
                                            const char *prompt, const char *const *labels,
                                            int n_labels, double *out, finch_err *err);

/* How finch_eval_classify builds prompts and chooses among labels (plain data). */
typedef struct {
    const char *const *labels; /* the label set, or NULL: the distinct completions of the file */
    int n_labels;
    int k_shot;             /* solved examples put before each prompt (0: zero-shot) */
    const char *shots_path; /* JSONL the shots are drawn from (needed when k_shot > 0) */
} finch_classify_options;

/* The outcome of a classification run. */
typedef struct {
    int n_labels;
    char **labels;     /* n_labels, without surrounding whitespace */
    int64_t n;         /* examples */
    int32_t *gold;     /* n: index of the example's label */
    int32_t *pred;     /* n: index of the most likely label */
    double *logprob;   /* n x n_labels: summed log-probabilities of the label tokens */
    double *prob;      /* n x n_labels: exp(logprob) normalised over the label set */
    double accuracy;   /* fraction of examples with pred == gold */
    int64_t n_skipped; /* malformed lines skipped */
} finch_classify_results;

/* Zero- or few-shot classification by label likelihood. Each example's prompt comes from
 * its shape's template or the spec's templates, where a template may end with a {label}
 * slot (the prompt is the text before it); with spec->chat the prompt is a user turn and
 * the label the assistant's reply. Spaces that end a prompt are moved onto the label, so
 * that it tokenizes as in running text. The example's completion names its label
 * (compared without surrounding whitespace). With k_shot > 0, k examples of shots_path
 * drawn with spec->seed and the example's index (never one equal to the example) precede
 * the prompt, each as prompt + completion and a blank line (or as earlier chat turns).
 * Fewer than two labels, duplicates, a label that tokenizes to nothing, or a completion
 * that is not a label are errors naming the label or file:line. */
FINCH_API finch_status finch_eval_classify(const finch_model *model, const finch_data_spec *spec,
                                           const finch_classify_options *opt,
                                           finch_numerics numerics, finch_progress_fn progress,
                                           void *user, finch_classify_results *out, finch_err *err);
FINCH_API void finch_classify_results_release(finch_classify_results *r);

/* Writes len bytes of text to path atomically (a temp file flushed, synced and renamed),
 * as evaluation results are written. */
FINCH_API finch_status finch_eval_write_file(const char *path, const char *text, size_t len,
                                             finch_err *err);

/* ---------------------------------------------------------------------------------- */
/* Adapters                                                                             */
/* ---------------------------------------------------------------------------------- */

typedef struct finch_adapter finch_adapter;

/* Loads a LoRA adapter in the Hugging Face PEFT layout (adapter_config.json +
 * adapter_model.safetensors) made for this model; errors name the file and what does
 * not match (shapes of another model, unsupported PEFT options). The caller owns it. */
FINCH_API finch_status finch_adapter_load(const finch_model *model, const char *dir,
                                          finch_adapter **out, finch_err *err);
FINCH_API void finch_adapter_free(finch_adapter *a);

/* Attaches the adapter to the model with a weight on its contribution: generation and
 * evaluation then run base + adapter. Several adapters can be attached at once (their
 * contributions add) and detached again, over one loaded base. */
FINCH_API finch_status finch_adapter_attach(finch_model *model, finch_adapter *a, float weight,
                                            finch_err *err);
FINCH_API void finch_adapter_detach(finch_model *model, finch_adapter *a);

/* Writes the adapter as a GGUF LoRA adapter for llama.cpp's --lora. */
FINCH_API finch_status finch_adapter_export_gguf(const finch_model *model, const finch_adapter *a,
                                                 const char *path, finch_err *err);

/* Writes the model with the adapters merged into its weights (W + weight * s B A each) as
 * a GGUF at path, atomically: the merged projections in type_name ("f32", "f16", "bf16",
 * "q8_0", "q4_0", "q4_1", ...), everything else copied unchanged. weights may be NULL
 * (all 1). The result loads in finch and llama.cpp like any model. */
FINCH_API finch_status finch_merge(const finch_model *model, finch_adapter *const *adapters,
                                   const float *weights, int n_adapters, const char *type_name,
                                   const char *path, finch_err *err);

/* As finch_merge, but every matrix of the model (the embeddings and an untied output head
 * too, touched by an adapter or not) is written in type_name: with "f32" and an adapter
 * of weight 0, the base dequantized whole, for comparing engines without quantization. */
FINCH_API finch_status finch_merge_all(const finch_model *model, finch_adapter *const *adapters,
                                       const float *weights, int n_adapters, const char *type_name,
                                       const char *path, finch_err *err);

/* One tensor of a quantization plan, as finch_quantize decides it (see on_tensor). */
typedef struct {
    const char *name; /* the tensor's GGUF name */
    const char *from; /* its stored type ("f32", "q4_1", ...) */
    const char *to;   /* the type written ("q4_k", "q6_k", "f32", ...) */
    int64_t n_elems;  /* its element count */
    int index, count; /* its place in the file and the number of tensors */
    int requantized;  /* 1: stored quantized and written in another type, which is lossy */
    int fallback;     /* 1: its rows are not whole blocks of the chosen type, so it took
                         llama.cpp's fallback type (q4_k -> q5_0, q5_k -> q5_1,
                         q6_k -> q8_0, else f16) */
} finch_quantize_tensor;

typedef struct {
    const char *type; /* f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, or a K-quant mix:
                         q4_k_s, q4_k_m (q4_k), q5_k_s, q5_k_m (q5_k), q6_k */
    int force;        /* 1: replace an existing output file (never the input itself) */
    /* called once per tensor, in file order, before anything is written (may be NULL) */
    void (*on_tensor)(const finch_quantize_tensor *t, void *user);
    finch_progress_fn progress; /* elements written so far of the total: (0, total) once the
                                   plan is made, then as tensors are written (may be NULL) */
    void *user;                 /* passed to both */
} finch_quantize_options;

/* Writes the GGUF model at in_path to out_path (atomically) with its weights in another
 * storage type, choosing each tensor's type as llama.cpp's llama-quantize does for the same
 * type name: vectors, norms and other tensors it never quantizes keep their type; the
 * output layer (or tied token embeddings) goes to q6_k (q8_0 where rows are not whole
 * 256-blocks); the _m mixes give attn_v and ffn_down q6_k in the layers llama.cpp picks,
 * the _s mixes q5_k in the first ones; rows that are not whole blocks fall back as llama.cpp
 * falls back. Tensors are dequantized to f32 row by row and quantized again, one tensor at a
 * time, over finch_threads_get() threads; a tensor already in its chosen type is copied.
 * Every metadata pair is copied; general.file_type and general.quantization_version are
 * set. in_path may be a Hugging Face folder finch loads (llama, mistral, qwen2, gpt2,
 * gemma3_text, with a byte-level BPE tokenizer.json): the GGUF is then what llama.cpp's
 * convert_hf_to_gguf.py would write of it (the family's metadata, the tokenizer, GGUF names and row
 * order) with the same type rules. Refuses an out_path that is the input file (the same inode) or
 * lies inside the input folder, and an existing one unless force. Errors name the file. */
FINCH_API finch_status finch_quantize(const char *in_path, const char *out_path,
                                      const finch_quantize_options *opt, finch_err *err);

/* ---------------------------------------------------------------------------------- */
/* Training                                                                             */
/* ---------------------------------------------------------------------------------- */

/* A method's option by name, as a flag names it without "--" (lora-r, target-modules,
 * layers; '_' and '-' are the same) or as PEFT's config names it (r, lora_alpha); value
 * NULL for a switch (use-rslora). */
typedef struct {
    const char *name;
    const char *value;
} finch_option;

#define FINCH_MAX_METHOD_OPTIONS 32

/* The fine-tuning methods finch has, in the order of its method table. */
FINCH_API int finch_method_count(void);
/* Method i's name ("lora", "dora", "ia3", "bitfit", "freeze", "full") and a one-line
 * description; NULL when i is out of range. */
FINCH_API const char *finch_method_name(int i);
FINCH_API const char *finch_method_description(int i);
/* Method i's options as --help lines ("  --lora-r N  rank (8)\n..."), into buf (cap
 * bytes, NUL-terminated, cut when short); returns the length needed. */
FINCH_API size_t finch_method_usage(int i, char *buf, size_t cap);
/* What the named method writes: "adapter", or "model" (full fine-tuning, freezing). */
FINCH_API const char *finch_method_result(const char *name);
/* Whether some method has an option of this name: 0 none, 1 one that takes a value, 2 a
 * switch. */
FINCH_API int finch_method_option_kind(const char *name);

/* Checks a method option without a model: that the method (NULL: "lora") has it and
 * that its value parses and lies in range. FINCH_E_USAGE naming the flag otherwise. */
FINCH_API finch_status finch_method_check_option(const char *method, const char *name,
                                                 const char *value, finch_err *err);
/* The method's options with the values given options resolve to (the last given of each
 * name, else the default), as flag names and flag values ("true"/"false" for switches),
 * plus "layers" when given: up to cap of them into out; returns how many there are. The
 * strings are the table's or given's. */
FINCH_API int finch_method_options_resolved(const char *method, const finch_option *given,
                                            int n_given, finch_option *out, int cap);

/* The most training files a multi-task mixture holds. */
#define FINCH_MAX_TASKS 64

/* One training file of a multi-task mixture (FLAN's recipe) and its sampling weight. */
typedef struct {
    const char *path; /* JSONL file; its format is detected on its own unless data.format */
    double weight;    /* > 0; the weights are normalised over the files */
} finch_data_source;

/* Splits a training-file argument, "FILE" or "FILE:WEIGHT", into path (cap bytes) and
 * *weight (1 without a weight). An argument that names an existing file is taken whole,
 * even when it ends in ':' and a number; otherwise what follows the last ':' is the weight
 * when it holds no '/', and must be a number > 0. FINCH_E_USAGE naming the argument
 * otherwise. */
FINCH_API finch_status finch_data_source_parse(const char *arg, char *path, size_t cap,
                                               double *weight, finch_err *err);

/* A fine-tuning run (plain data; start from finch_train_defaults()). Names follow the
 * Hugging Face flags they mirror.
 *
 * A multi-task mixture (sources, n_sources > 0) trains on several files at once: each is
 * read and tokenized on its own (format detected per file; data's other fields apply to
 * each, max_examples per file), and every slot of an epoch (an epoch: as many examples as
 * all files hold together) draws a file with probability weight / sum of weights, seeded
 * by the run's seed, then takes that file's next example in its own shuffled order,
 * reshuffled when used up. val_fraction holds out that fraction of each file. */
typedef struct {
    finch_data_spec data;             /* training set (and how it becomes tokens); data.path NULL
                                         with sources */
    const finch_data_source *sources; /* a multi-task mixture of n_sources files, or NULL */
    int n_sources;                    /* (0: the one file data.path) */
    const char *val_path;             /* validation JSONL, or NULL */
    double val_fraction;      /* without val_path: hold out this fraction of data (0: none) */
    int64_t val_max_examples; /* validation examples scored at each evaluation (0: all) */
    const char *method;       /* a method's name (finch_method_name): "lora" (default) */
    finch_option method_options[FINCH_MAX_METHOD_OPTIONS]; /* the method's options; a later */
    int n_method_options;       /* one of the same name wins; the rest keep their defaults */
    double learning_rate;       /* peak (2e-4) */
    int batch_size;             /* examples per micro-batch (4) */
    int grad_accum;             /* micro-batches per optimizer step (1) */
    int packing;                /* pack whole examples into rows of max_seq_len tokens, attention
                                   kept within each example (0: one example per row) */
    int gradient_checkpointing; /* keep each block's input only and recompute the block in
                                   backward: activations of one block instead of all, one
                                   more forward per step, the same gradients bit for bit */
    int bf16;                   /* mixed precision: the frozen base's products with operands
                                   rounded to bf16 and f32 sums (AMX where the CPU has it);
                                   parameters, gradients and optimizer state stay f32 (0: f32) */
    int64_t max_steps;          /* optimizer steps; 0: from epochs */
    double epochs;              /* passes over the training set when max_steps is 0 (1) */
    int64_t warmup_steps;       /* linear warmup (0) */
    const char *lr_scheduler;   /* "linear" (default), "cosine", "constant" */
    double weight_decay;        /* AdamW decoupled decay (0) */
    double max_grad_norm;       /* global clipping; 0: off (1.0) */
    uint64_t seed;              /* data order, dropout, the method's initialisation (42) */
    int64_t save_steps;         /* checkpoint every N steps; 0: only at the end */
    int64_t save_total_limit;   /* keep the newest N checkpoints, deleting older ones (0: all;
                                   with load_best_model_at_end the best is kept too) */
    int64_t eval_steps;         /* validation loss every N steps; 0: only at the end */
    int64_t early_stopping_patience; /* stop once the validation loss has not improved for this
                                        many evaluations in a row (0: never); needs eval_steps
                                        and validation data */
    double early_stopping_threshold; /* an improvement is a fall of more than this (0) */
    int load_best_model_at_end;      /* the result is the checkpoint with the lowest validation
                                        loss, which save_total_limit never deletes; needs
                                        eval_steps, save_steps a multiple of it, validation data */
    int64_t log_steps;               /* a metrics line every N steps (10) */
    const char *out_dir;             /* where the adapter (or model), checkpoints and metrics go */
    const char *resume_dir;          /* continue from this checkpoint (or run directory), or NULL */
    const char *objective;           /* "sft" (NULL: the default, cross-entropy on completions) or
                                        "dpo" (preference pairs, TRL's sigmoid DPO loss) */
    double beta;                     /* DPO's beta (0.1) */
    int simulate_ranks;              /* in one process, compute what this many data-parallel ranks
                                        would: each micro-batch is that many slices of batch_size
                                        rows, their gradients summed in rank order (0 or 1: off) */
    int fused_optimizer;             /* AdamW updates each tensor as soon as backward has
                                        completed its gradient, whose memory then serves the
                                        next block's: the gradients of one block instead of
                                        all, the same parameters bit for bit (grad_norm in the
                                        metrics summed tensor by tensor: its last digits may
                                        differ). Needs max_grad_norm 0, grad_accum 1 and one
                                        rank (0: the step after backward) */
} finch_train_options;

FINCH_API finch_train_options finch_train_defaults(void);

/* Appends a method option (name and value are borrowed). FINCH_E_USAGE when no method has
 * an option of that name, or the list is full; the value is checked against the method
 * when the run starts. */
FINCH_API finch_status finch_train_set_option(finch_train_options *opt, const char *name,
                                              const char *value, finch_err *err);

/* What the run reports after every optimizer step (and at evaluations). */
typedef struct {
    int64_t step, total_steps;
    double loss;                  /* this step's mean training loss */
    double loss_smooth;           /* exponential moving average of the loss */
    double lr;                    /* learning rate used by this step */
    double grad_norm;             /* before clipping */
    double tokens_per_s;          /* training tokens (all positions) per second, smoothed */
    double eta_s;                 /* seconds left */
    double val_loss;              /* NaN unless this step evaluated */
    int64_t n_trainable, n_total; /* parameters */
    /* DPO (NaN otherwise), means over the step's pairs, as TRL names them: rewards/chosen
     * beta (log p(chosen) - log ref(chosen)), rewards/rejected likewise, rewards/accuracies
     * the fraction with chosen > rejected, rewards/margins chosen - rejected */
    double rewards_chosen, rewards_rejected, rewards_accuracy, rewards_margin;
    double val_accuracy;  /* DPO: held-out reward accuracy; NaN unless this step evaluated */
    int ranks;            /* data-parallel ranks (MPI processes, or simulate_ranks) */
    int64_t global_batch; /* examples (DPO: pairs) per optimizer step: batch_size x
                             grad_accum x ranks */
    double best_metric;   /* the lowest validation loss so far (NaN before an evaluation) */
    int64_t best_step;    /* the step it was measured at (0 before) */
    int stopped_early;    /* 1 at the step after which early stopping ends the run */
    int n_tasks;          /* training files (1 without a mixture) */
    const char *const *task_names; /* each file's name in metrics.jsonl (its base name without
                                      .jsonl); borrowed for the call */
    const int64_t *task_seen;      /* examples (DPO: pairs) of each trained so far */
} finch_train_progress;

/* ---------------------------------------------------------------------------------- */
/* Data parallelism across processes (MPI)                                              */
/* ---------------------------------------------------------------------------------- */

/* finch_train is data-parallel when its process is one rank of an MPI job (`mpirun -np N
 * finch train ...`, in a build that found MPI): every rank reads the same model and data,
 * fills every global micro-batch of N x batch_size rows and computes its own slice of
 * batch_size rows; one allreduce per optimizer step sums the gradients, so the run
 * computes the gradient of the same objective as one process with batch N x batch_size.
 * Rank 0 alone writes checkpoints, metrics, the result and reports progress. */

/* Joins the MPI job when a launcher (mpirun) started this process; otherwise, and in a
 * build without MPI, does nothing and the process is rank 0 of 1. Call once, before any
 * other finch_dist_ function and before finch_train; not thread-safe. */
FINCH_API finch_status finch_dist_init(int *argc, char ***argv, finch_err *err);
/* Leaves the MPI job (every rank, after its last collective; a rank that failed exits
 * without it, and mpirun then ends the others). Does nothing when finch_dist_init joined
 * none. */
FINCH_API void finch_dist_finalize(void);
/* This process's rank (0 outside MPI) and the number of ranks (1 outside MPI). */
FINCH_API int finch_dist_rank(void);
FINCH_API int finch_dist_size(void);
/* The number of ranks on this machine (sharing its memory), to divide its cores. */
FINCH_API int finch_dist_local_size(void);
/* 1 when this finch was built with MPI. */
FINCH_API int finch_dist_built(void);

/* Fine-tunes model with the options: reads and tokenizes the data (counting truncated
 * and skipped examples), attaches the method, runs the steps, evaluates, writes
 * checkpoints (atomically) and the final adapter to out_dir, and metrics.jsonl there.
 * on_progress (may be NULL) sees each step; should_stop (may be NULL) is polled between
 * steps: when it returns non-zero a checkpoint is written and FINCH_E_INTERRUPTED
 * returned. A non-finite loss stops the run with FINCH_E_RANGE, keeping the last good
 * checkpoint. Early stopping (early_stopping_patience) ends the run with FINCH_OK after the
 * evaluation that used up the patience, with a checkpoint of that step; a resumed run that
 * had stopped so ends at once (give a larger patience to go on). The model is left without
 * the adapter attached. */
FINCH_API finch_status finch_train(finch_model *model, const finch_train_options *opt,
                                   void (*on_progress)(const finch_train_progress *p, void *user),
                                   int (*should_stop)(void *user), void *user, finch_err *err);

#ifdef __cplusplus
}
#endif
#endif /* FINCH_H */
