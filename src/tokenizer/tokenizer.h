/*
 * tokenizer.h: text to token ids and back, and chat templates.
 *
 * Two vocabulary types, as stored in GGUF metadata and run by llama.cpp:
 *   - byte-level BPE (GPT-2 style, tokenizer.ggml.model "gpt2"): special tokens split out
 *     first, then the pre-tokenizer regexes named by tokenizer.ggml.pre (PCRE2, applied in
 *     sequence), the GPT-2 byte-to-unicode map, merges by rank;
 *   - SentencePiece (tokenizer.ggml.model "llama": Llama 2, Gemma): special tokens split out
 *     first, then spaces as U+2581 (and a space prefix when the model asks), merges by
 *     piece score, byte fallback to <0xXX> tokens.
 * Token ids match llama.cpp's tokenizer for the same file. A byte-level BPE tokenizer can
 * also be built from a Hugging Face tokenizer.json (its own pre-tokenizer regexes, NFC
 * normalizer, added tokens); ids then match the tokenizers library.
 * Facts: ../shared/FORMATS.md section 5.
 *
 * The public calls (finch_tokenize, finch_detokenize, finch_tokenizer_*) are declared in
 * include/finch.h; this header adds what other modules need. Rests on core and io (it
 * reads its vocabulary from GGUF metadata); knows nothing of weights.
 */
#ifndef FINCH_TOKENIZER_H
#define FINCH_TOKENIZER_H

#include "core/core.h"
#include "io/io.h" /* finch_gguf, finch_gguf_get_* */

/* Builds the tokenizer described by a GGUF's tokenizer.* keys. A tokenizer.ggml.model other
 * than "gpt2" or "llama", or an unknown tokenizer.ggml.pre for "gpt2", is
 * FINCH_E_UNSUPPORTED; inconsistent array lengths, arrays of the wrong element type, merges
 * without a space or naming tokens that do not exist, special-token ids out of range,
 * add_bos/add_eos without the id to add, and for "llama" missing or NaN scores, empty token
 * texts, token types outside 0..6, byte tokens not spelled <0xXX> and bytes without a
 * fallback token are FINCH_E_FORMAT; every message names the file and the key (and the
 * token's index). *out is NULL (and FINCH_OK returned) when the file has no
 * tokenizer.ggml.model key, or it is "none"/"no_vocab". A missing tokenizer.ggml.pre means
 * "default", as in llama.cpp (logged as a warning for "gpt2"). The tokenizer copies what it
 * keeps; the GGUF may be closed afterwards. The caller owns *out; the tokenizer is
 * immutable, so concurrent finch_tokenize calls on it are safe. */
finch_status finch_tokenizer_from_gguf(const finch_gguf *g, finch_tokenizer **out, finch_err *err);
void finch_tokenizer_free(finch_tokenizer *tok);

/* Builds the tokenizer a Hugging Face tokenizer.json describes (byte-level BPE: vocab,
 * merges, pre-tokenizer, normalizer, added tokens), with BOS/EOS, add-BOS and the chat
 * template from tokenizer_config.json when tokenizer_config_json_path is not NULL.
 * Models, pre-tokenizers or normalizers finch does not implement are FINCH_E_UNSUPPORTED,
 * malformed or inconsistent files FINCH_E_FORMAT; every message names the file and the
 * field. The caller owns *out. */
finch_status finch_tokenizer_from_hf_json(const char *tokenizer_json_path,
                                          const char *tokenizer_config_json_path,
                                          finch_tokenizer **out, finch_err *err);

/* The pieces of a SentencePiece model file (tokenizer.model, a protobuf ModelProto;
 * spm_model.c): piece i's text is blob + off[i] (NUL-terminated, off[i + 1] - off[i] - 1
 * bytes), its score and its type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
 * 6 byte: the numbers GGUF's token_type uses). */
typedef struct {
    int32_t n;             /* pieces */
    char *blob;            /* their texts, back to back */
    size_t *off;           /* (n + 1) */
    float *score;          /* (n) */
    int32_t *type;         /* (n) */
    int model_type;        /* trainer_spec.model_type: 1 Unigram, 2 BPE, 3 word, 4 char, 0 unset */
    bool add_dummy_prefix; /* normalizer_spec.add_dummy_prefix (default true) */
} finch_spm_model;

/* Reads the ModelProto in data[0..size); path names it in messages. Truncated or malformed
 * input (wire types, lengths past the end, over-long varints, empty pieces, scores that are
 * not finite, types outside 1..6, no pieces) is FINCH_E_FORMAT naming path and the byte
 * offset. On failure *out holds nothing to free. */
finch_status finch_spm_model_parse(const uint8_t *data, size_t size, const char *path,
                                   finch_spm_model *out, finch_err *err);
/* The same for the file at path (FINCH_E_IO when it cannot be read). */
finch_status finch_spm_model_load(const char *path, finch_spm_model *out, finch_err *err);
void finch_spm_model_free(finch_spm_model *m); /* NULL-safe; leaves *m empty */

/* Writes tok as GGUF tokenizer metadata (FORMATS.md 5.1), as llama.cpp's
 * convert_hf_to_gguf.py writes it from the same files: tokenizer.ggml.model and .pre, the
 * tokens padded to n_vocab with unused "[PAD<id>]" ones, token_type, merges (byte-level BPE)
 * or scores (SentencePiece), the bos/eos/unknown/padding ids (where tok has none, the
 * config_ids fallbacks, in that order, -1 for none), add_bos_token (add_eos_token when
 * true), add_space_prefix (SentencePiece) and chat_template. A SentencePiece-style
 * tokenizer.json becomes "llama" with the scores and types of spm_model_path (the folder's
 * tokenizer.model; FINCH_E_FORMAT when it is malformed or spells other tokens), or with
 * NULL, scores derived from the file (gguf_kv.c says how; the log says so). A byte-level
 * BPE tokenizer.json whose pre-tokenizer is none of llama.cpp's named ones, and a
 * SentencePiece-style one llama.cpp's tokenizer cannot follow (a normalizer besides the
 * space marker, a byte without a fallback token), are FINCH_E_UNSUPPORTED, saying so. */
finch_status finch_tokenizer_gguf_kvs(const finch_tokenizer *tok, int32_t n_vocab,
                                      const int32_t config_ids[4], const char *spm_model_path,
                                      finch_gguf_writer *w, finch_err *err);

/* Special token ids, -1 when the model has none. */
int32_t finch_tokenizer_bos(const finch_tokenizer *tok);
int32_t finch_tokenizer_eos(const finch_tokenizer *tok);

/* Short descriptions for finch info: the model type ("gpt2", "llama"), the pre-tokenizer
 * name, and the number of merges (0 for "llama"). Borrowed. */
const char *finch_tokenizer_model_name(const finch_tokenizer *tok);
const char *finch_tokenizer_pre_name(const finch_tokenizer *tok);
int64_t finch_tokenizer_n_merges(const finch_tokenizer *tok);

/* Decodes one token to the bytes it stands for (byte-level BPE alphabet reversed, or
 * SentencePiece's U+2581 as a space and <0xXX> as its byte); control and unknown tokens give
 * "" unless special is true, user-defined tokens their text. Writes at most cap bytes to buf and
 * returns the full length (like snprintf, without a NUL), or -1 for an id out of range. */
int64_t finch_tokenizer_piece(const finch_tokenizer *tok, int32_t id, bool special, char *buf,
                              size_t cap);

/* ---- chat templates ----------------------------------------------------------------- */

/* Known chat template families. Recognised from the template text by markers that only
 * that family writes; the template code is never executed. */
typedef enum {
    FINCH_CHAT_NONE = 0, /* the model has no template */
    FINCH_CHAT_UNKNOWN,  /* a template finch does not recognise */
    FINCH_CHAT_CHATML,   /* <|im_start|>role\n...<|im_end|>\n (SmolLM2, Qwen) */
    FINCH_CHAT_LLAMA2,   /* [INST] ... [/INST] with <<SYS>> */
    FINCH_CHAT_LLAMA3,   /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    FINCH_CHAT_GEMMA,    /* <start_of_turn>user\n...<end_of_turn>\n */
    FINCH_CHAT_PHI3,     /* <|user|>\n...<|end|>\n */
    FINCH_CHAT_ZEPHYR,   /* <|user|>\n...</s>\n */
    FINCH_CHAT_FAMILY_COUNT
} finch_chat_family_id;

/* The family of a template text (NULL or empty text is FINCH_CHAT_NONE). */
finch_chat_family_id finch_chat_detect(const char *tmpl, size_t len);

/* The family's name ("chatml", ...). */
const char *finch_chat_family_name(finch_chat_family_id fam);

/* The template text the tokenizer read from tokenizer.chat_template, or NULL. Borrowed. */
const char *finch_tokenizer_chat_template(const finch_tokenizer *tok);

/* Renders messages in a family's format, as the family's reference template would,
 * including its default system prompt when the template adds one (SmolLM2's ChatML adds
 * "You are a helpful AI assistant named SmolLM, trained by Hugging Face" when the first
 * message is not a system message: the default is taken from the template text).
 * Unknown roles and FINCH_CHAT_UNKNOWN/NONE are FINCH_E_UNSUPPORTED with a message
 * saying which. *out is malloc'd and owned by the caller. */
finch_status finch_chat_render(finch_chat_family_id fam, const char *tmpl,
                               const finch_chat_msg *msgs, int n_msgs, int add_assistant,
                               char **out, finch_err *err);

#endif /* FINCH_TOKENIZER_H */
