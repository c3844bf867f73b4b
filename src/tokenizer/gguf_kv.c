/*
 * gguf_kv.c: a tokenizer written back as GGUF tokenizer metadata (FORMATS.md 5.1), as
 * llama.cpp's convert_hf_to_gguf.py writes it for the same tokenizer.json (its
 * _set_vocab_gpt2 and gguf's SpecialVocab): the tokens in id order, ids the vocabulary
 * skips (and ids past it up to the model's vocab_size) as unused "[PAD<id>]"; token types
 * from the attributes the loader gave (added special tokens control, other added tokens
 * user-defined); merges as "left right" in rank order; the special ids the
 * tokenizer_config.json names, then config.json's for the roles it leaves out.
 *
 * tokenizer.ggml.pre names llama.cpp's pre-tokenizer regexes. The converter finds it by
 * hashing what the tokenizers library makes of a fixed text; finch takes it from the
 * pre-tokenizer steps tokenizer.json lists (hf_json.c, pre_known): the same regexes in
 * the same order as a llama.cpp name runs give that name, and a file whose steps match no
 * name is refused rather than written with "default", which llama.cpp would run with
 * other regexes (and other ids).
 *
 * A GGUF-loaded tokenizer is written back as it was read: its pre name, and for
 * SentencePiece ("llama") its scores and add_space_prefix. A SentencePiece-style
 * tokenizer.json (hf_spm.c) is refused: its scores, which llama.cpp merges by, are in
 * tokenizer.model, which finch does not read.
 */
#include "internal.h"

#include <stdio.h>

/* tokenizer.ggml.token_type of an attribute set (0: undefined). */
static int32_t token_type(uint8_t attr) {
    static const struct {
        uint8_t bit;
        int32_t type;
    } map[] = {{TOK_NORMAL, 1},       {TOK_UNKNOWN, 2}, {TOK_CONTROL, 3},
               {TOK_USER_DEFINED, 4}, {TOK_UNUSED, 5},  {TOK_BYTE, 6}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (attr & map[i].bit) return map[i].type;
    return 0;
}

/* The merges in rank order as "left right" strings (malloc'd, one block each). */
static finch_status merge_list(const finch_tokenizer *tok, char ***out, int64_t *n_out,
                               finch_err *err) {
    const int64_t n = tok->n_merges;
    char **v = finch_mem_calloc((size_t)n + 1, sizeof *v);
    if (!v) return finch_err_set(err, FINCH_E_NOMEM, "out of memory writing the merges");
    for (uint64_t i = 0; tok->merges && i <= tok->merge_mask; i++) {
        const merge_slot *m = &tok->merges[i];
        if (m->key == UINT64_MAX || m->rank < 0 || m->rank >= n || v[m->rank]) continue;
        const int32_t a = (int32_t)(m->key >> 32), b = (int32_t)(m->key & 0xffffffffu);
        const size_t la = tok->text_len[a], lb = tok->text_len[b];
        char *s = finch_mem_alloc(la + lb + 2);
        if (!s) {
            for (int64_t k = 0; k < n; k++) free(v[k]);
            free(v);
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory writing the merges");
        }
        memcpy(s, tok->text_blob + tok->text_off[a], la);
        s[la] = ' ';
        memcpy(s + la + 1, tok->text_blob + tok->text_off[b], lb);
        s[la + lb + 1] = 0;
        v[m->rank] = s;
    }
    /* a merge the file listed twice keeps its first rank: the later ones close up */
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (v[i]) v[k++] = v[i];
    *out = v;
    *n_out = k;
    return FINCH_OK;
}

finch_status finch_tokenizer_gguf_kvs(const finch_tokenizer *tok, int32_t n_vocab,
                                      const int32_t config_ids[4], finch_gguf_writer *w,
                                      finch_err *err) {
    const bool spm = tok->model == &finch_tok_spm, bpe = tok->model == &finch_tok_bpe;
    if (!spm && !bpe)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "tokenizer.json: a SentencePiece-style tokenizer (%s); writing it "
                             "as GGUF needs the piece scores of tokenizer.model, which finch does "
                             "not read: convert with llama.cpp's convert_hf_to_gguf.py",
                             tok->pre_name ? tok->pre_name : "?");
    const char *pre = spm ? "default" : tok->hf_json ? tok->gguf_pre : tok->pre_name;
    if (!pre)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "tokenizer.json: its pre-tokenizer (%s) runs none of the regex lists "
                             "llama.cpp names (tokenizer.ggml.pre: smollm, gpt-2, llama-bpe, "
                             "qwen2), so llama.cpp would split text otherwise than the file does",
                             tok->pre_name ? tok->pre_name : "none");
    if (n_vocab < tok->n_vocab) n_vocab = tok->n_vocab;
    const size_t V = (size_t)n_vocab;
    const char **texts = finch_mem_calloc(V + 1, sizeof *texts);
    int32_t *types = finch_mem_calloc(V + 1, sizeof *types);
    char *pads = finch_mem_alloc((V - (size_t)tok->n_vocab) * 20 + 1);
    char **merges = NULL;
    int64_t n_merges = 0;
    finch_status st = FINCH_OK;
    if (!texts || !types || !pads) {
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing the vocabulary");
        goto done;
    }
    size_t at = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (i < tok->n_vocab) {
            texts[i] = tok->text_blob + tok->text_off[i];
            types[i] = token_type(tok->attr[i]);
        } else { /* the embedding rows past the tokenizer: what the converter names them */
            texts[i] = pads + at;
            at += (size_t)snprintf(pads + at, 20, "[PAD%d]", (int)i) + 1;
            types[i] = 5;
        }
    }
    if ((st = finch_gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2", err)) ||
        (st = finch_gguf_set_str(w, "tokenizer.ggml.pre", pre, err)) ||
        (st = finch_gguf_set_arr_str(w, "tokenizer.ggml.tokens", texts, n_vocab, err)))
        goto done;
    if (spm) {
        float *scores = finch_mem_calloc(V + 1, sizeof *scores);
        if (!scores) {
            st = finch_err_set(err, FINCH_E_NOMEM, "out of memory writing the vocabulary");
            goto done;
        }
        memcpy(scores, tok->scores, (size_t)tok->n_vocab * sizeof *scores);
        st = finch_gguf_set_arr_f32(w, "tokenizer.ggml.scores", scores, n_vocab, err);
        free(scores);
        if (st) goto done;
    }
    if ((st = finch_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", types, n_vocab, err)))
        goto done;
    if (bpe) {
        if ((st = merge_list(tok, &merges, &n_merges, err)) ||
            (st = finch_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges,
                                         n_merges, err)))
            goto done;
    }
    static const struct {
        special_role role;
        const char *key;
    } ids[4] = {{SP_BOS, "tokenizer.ggml.bos_token_id"},
                {SP_EOS, "tokenizer.ggml.eos_token_id"},
                {SP_UNK, "tokenizer.ggml.unknown_token_id"},
                {SP_PAD, "tokenizer.ggml.padding_token_id"}};
    for (int i = 0; i < 4 && !st; i++) {
        int32_t id = tok->special[ids[i].role];
        if (id < 0 && config_ids) id = config_ids[i];
        if (id >= 0 && id < n_vocab) st = finch_gguf_set_u32(w, ids[i].key, (uint32_t)id, err);
    }
    if (!st) st = finch_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", tok->add_bos, err);
    if (!st && tok->add_eos) st = finch_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", true, err);
    if (!st && spm)
        st = finch_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", tok->add_space_prefix, err);
    if (!st && tok->chat_template)
        st = finch_gguf_set_str(w, "tokenizer.chat_template", tok->chat_template, err);
done:
    for (int64_t i = 0; merges && i < n_merges; i++) free(merges[i]);
    free(merges);
    free(pads);
    free(types);
    free(texts);
    return st;
}
