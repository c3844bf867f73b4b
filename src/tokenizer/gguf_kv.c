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
 * SentencePiece ("llama") its scores and add_space_prefix.
 *
 * A SentencePiece-style tokenizer.json (hf_spm.c: BPE with the U+2581 marker as Llama 2,
 * Mistral and Gemma have it) becomes "llama" with pre "default", as the
 * converter's _set_vocab_sentencepiece writes it. llama.cpp's SentencePiece tokenizer
 * joins the adjacent pair whose joined text is the token of the highest score, so the
 * scores decide the ids:
 *   - with the folder's tokenizer.model (spm_model.c), its pieces' scores and types, as the
 *     converter takes them: the pieces must spell tokenizer.json's tokens (an added token
 *     may differ: tokenizer.json's text wins), tokenizer.json's added tokens become control
 *     (special) or user-defined tokens of score -1000 (the unknown piece too, as the
 *     converter's added_tokens_decoder pass makes it), ids past the pieces must be added
 *     tokens;
 *   - without it, derived from tokenizer.json (said in the log): a BPE token scores -r for
 *     the best rank r of the merges that make it, so llama.cpp joins pairs in the order the
 *     merges list ranks them, as the tokenizers library does; a token no merge makes (the
 *     characters, the bytes) scores below every merge, -(merges + 1); added tokens -1000.
 *     Tokens spelled <0xXX> are byte tokens, the unknown token (when it is no added token)
 *     unknown.
 * A Unigram tokenizer.json (T5) is refused: llama.cpp's "llama" tokenizer joins its pieces
 * greedily where the library finds the best segmentation (their ids agreed on 303 of the
 * 1,077 lines of tests/fixtures/tokenizer-hf's Unigram file).
 * The text must reach llama.cpp's tokenizer as it reaches the library's: normalizers other
 * than the U+2581 marker (Precompiled, Strip, ...) are refused, as is a vocabulary with
 * no token for some byte (llama.cpp's byte fallback would fail on it).
 * add_space_prefix is whether the file puts a marker in front of the text. Two differences
 * remain, and are documented rather than refused: llama.cpp (as SentencePiece itself) puts
 * the marker in front of a text that starts with a space, where Metaspace's
 * prepend_scheme "first" does not; and Metaspace's split encodes each word alone, so a
 * token with a marker inside (counted in a warning) is one llama.cpp may produce and the
 * library never does.
 */
#include "internal.h"

#include <ctype.h> /* isxdigit */
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

/* Whether token id of a tokenizer.json is one of its added tokens. */
static bool is_added(const finch_tokenizer *tok, int32_t id) {
    return tok->attr[id] & (TOK_CONTROL | TOK_USER_DEFINED);
}

/* Whether token id is spelled <0xXX> (hex digits in either case, as the converter's test). */
static bool spelled_byte(const finch_tokenizer *tok, int32_t id) {
    const char *t = tok->text_blob + tok->text_off[id];
    return tok->text_len[id] == 6 && !memcmp(t, "<0x", 3) && isxdigit((unsigned char)t[3]) &&
           isxdigit((unsigned char)t[4]) && t[5] == '>';
}

/* Refuses what llama.cpp's SentencePiece tokenizer cannot reproduce of a tokenizer.json:
 * normalizer steps besides the space marker, bytes without a fallback token. */
static finch_status hf_spm_check(const finch_tokenizer *tok, finch_err *err) {
    if (tok->model == &finch_tok_unigram)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "tokenizer.json: a Unigram model; llama.cpp's \"llama\" tokenizer "
                             "joins pieces greedily by score, where Unigram picks the best "
                             "segmentation, so it would give other ids (its \"t5\" tokenizer "
                             "runs Unigram, which finch does not write)");
    const bool gemma = tok->pre_name && !strcmp(tok->pre_name, "Replace"); /* the marker alone */
    if (tok->n_norm > (gemma ? 1 : 0))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "tokenizer.json: a SentencePiece-style tokenizer whose normalizer "
                             "(Precompiled, Strip, Replace) changes the text; llama.cpp's "
                             "\"llama\" tokenizer runs no normalizer, so it would give other ids");
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        const char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        const char c = (char)b;
        if (finch_tok_find(tok, name, sizeof name) < 0 && finch_tok_find(tok, &c, 1) < 0)
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "tokenizer.json: a SentencePiece-style vocabulary without a "
                                 "token for byte 0x%02X ('<0x%02X>'); llama.cpp's \"llama\" "
                                 "tokenizer falls back to byte tokens and fails without one",
                                 b, b);
    }
    return FINCH_OK;
}

/* Scores and types from the folder's tokenizer.model, checked against tokenizer.json. */
static finch_status scores_from_model(const finch_tokenizer *tok, const char *model_path,
                                      float *scores, int32_t *types, finch_err *err) {
    finch_spm_model sp;
    finch_status st = finch_spm_model_load(model_path, &sp, err);
    if (st) return st;
    const int32_t n = tok->n_vocab;
    if (sp.n > n) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: %d pieces, but tokenizer.json has %d tokens: they describe "
                           "different vocabularies",
                           model_path, (int)sp.n, (int)n);
        goto done;
    }
    for (int32_t i = 0; i < n; i++) {
        const char *t = tok->text_blob + tok->text_off[i];
        const bool added = is_added(tok, i);
        if (i >= sp.n) {
            if (!added) {
                st = finch_err_set(err, FINCH_E_FORMAT,
                                   "%s: %d pieces, but tokenizer.json has %d tokens, and token "
                                   "%d ('%.40s') is no added token",
                                   model_path, (int)sp.n, (int)n, (int)i, t);
                goto done;
            }
            scores[i] = -1000.0f;
            continue;
        }
        const char *p = sp.blob + sp.off[i];
        const size_t len = sp.off[i + 1] - sp.off[i] - 1;
        if (!added && (len != tok->text_len[i] || memcmp(p, t, len))) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: piece %d is '%.40s', but tokenizer.json's token %d is "
                               "'%.40s': they describe different vocabularies",
                               model_path, (int)i, p, (int)i, t);
            goto done;
        }
        scores[i] = added ? -1000.0f : sp.score[i];
        if (!added) types[i] = sp.type[i];
    }
    finch_log(FINCH_LOG_INFO, "%s: SentencePiece scores and token types of %d pieces", model_path,
              (int)sp.n);
done:
    finch_spm_model_free(&sp);
    return st;
}

/* BPE scores without tokenizer.model, derived from the merges (see the top of the file). */
static finch_status scores_derived(const finch_tokenizer *tok, float *scores, finch_err *err) {
    const int32_t n = tok->n_vocab;
    const float none = -(float)(tok->n_merges + 1);
    for (int32_t i = 0; i < n; i++) scores[i] = none;
    for (uint64_t i = 0; tok->merges && i <= tok->merge_mask; i++) {
        const merge_slot *m = &tok->merges[i];
        if (m->key == UINT64_MAX || m->result < 0 || m->rank < 0) continue;
        if (-(float)m->rank > scores[m->result]) scores[m->result] = -(float)m->rank;
    }
    /* tokens no merge makes that still join two tokens: llama.cpp may make them */
    int64_t loose = 0;
    for (int32_t i = 0; i < n; i++) {
        if (is_added(tok, i)) {
            scores[i] = -1000.0f;
            continue;
        }
        if (scores[i] != none || spelled_byte(tok, i)) continue;
        const char *t = tok->text_blob + tok->text_off[i];
        for (uint32_t k = 1; k < tok->text_len[i]; k++)
            if (((uint8_t)t[k] & 0xc0) != 0x80 && finch_tok_find(tok, t, k) >= 0 &&
                finch_tok_find(tok, t + k, tok->text_len[i] - k) >= 0) {
                loose++;
                break;
            }
    }
    finch_log(FINCH_LOG_INFO,
              "tokenizer.json: no tokenizer.model; SentencePiece scores derived from the %lld "
              "merges (a token scores minus the rank of the merge that makes it)",
              (long long)tok->n_merges);
    if (loose)
        finch_log(FINCH_LOG_WARN,
                  "tokenizer.json: %lld tokens join two tokens but no merge makes them; "
                  "llama.cpp's tokenizer may produce them where the tokenizers library does not",
                  (long long)loose);
    (void)err;
    return FINCH_OK;
}

/* tokenizer.ggml.scores and the SentencePiece token types of a tokenizer.json tokenizer. */
static finch_status hf_spm_vocab(const finch_tokenizer *tok, const char *model_path, float *scores,
                                 int32_t *types, finch_err *err) {
    finch_status st = hf_spm_check(tok, err);
    if (st) return st;
    for (int32_t i = 0; i < tok->n_vocab; i++)
        if (!is_added(tok, i) && spelled_byte(tok, i)) types[i] = 6;
    const int32_t unk = tok->special[SP_UNK];
    if (unk >= 0 && unk < tok->n_vocab && !is_added(tok, unk)) types[unk] = 2;
    /* Metaspace split encodes each word alone, llama.cpp the whole run */
    int64_t inner = 0;
    for (int32_t i = 0; tok->spm_split && i < tok->n_vocab; i++) {
        const char *t = tok->text_blob + tok->text_off[i];
        const uint32_t len = tok->text_len[i];
        for (uint32_t k = 1; !is_added(tok, i) && k + 3 <= len; k++)
            if (!memcmp(t + k, "\xe2\x96\x81", 3)) {
                inner++;
                break;
            }
    }
    if (inner)
        finch_log(FINCH_LOG_WARN,
                  "tokenizer.json: the Metaspace pre-tokenizer splits words at U+2581, which "
                  "llama.cpp does not; %lld tokens hold one inside and may appear in its ids",
                  (long long)inner);
    return model_path ? scores_from_model(tok, model_path, scores, types, err)
                      : scores_derived(tok, scores, err);
}

finch_status finch_tokenizer_gguf_kvs(const finch_tokenizer *tok, int32_t n_vocab,
                                      const int32_t config_ids[4], const char *spm_model_path,
                                      finch_gguf_writer *w, finch_err *err) {
    const bool hf_spm = tok->model == &finch_tok_hf_bpe || tok->model == &finch_tok_unigram;
    const bool spm = tok->model == &finch_tok_spm || hf_spm, bpe = tok->model == &finch_tok_bpe;
    FINCH_ASSERT(spm || bpe);
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
    float *scores = spm ? finch_mem_calloc(V + 1, sizeof *scores) : NULL;
    char **merges = NULL;
    int64_t n_merges = 0;
    finch_status st = FINCH_OK;
    if (!texts || !types || !pads || (spm && !scores)) {
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
    for (size_t i = (size_t)tok->n_vocab; spm && i < V; i++) scores[i] = -1000.0f;
    if (hf_spm)
        st = hf_spm_vocab(tok, spm_model_path, scores, types, err);
    else if (spm)
        memcpy(scores, tok->scores, (size_t)tok->n_vocab * sizeof *scores);
    if (st || (st = finch_gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2", err)) ||
        (st = finch_gguf_set_str(w, "tokenizer.ggml.pre", pre, err)) ||
        (st = finch_gguf_set_arr_str(w, "tokenizer.ggml.tokens", texts, n_vocab, err)) ||
        (spm && (st = finch_gguf_set_arr_f32(w, "tokenizer.ggml.scores", scores, n_vocab, err))))
        goto done;
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
    /* a tokenizer.json's space marker goes in front of the text unless it prepends none */
    const bool prefix = hf_spm ? tok->spm_prepend != SPM_PREPEND_NEVER : tok->add_space_prefix;
    if (!st && spm) st = finch_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", prefix, err);
    if (!st && tok->chat_template)
        st = finch_gguf_set_str(w, "tokenizer.chat_template", tok->chat_template, err);
done:
    free(scores);
    for (int64_t i = 0; merges && i < n_merges; i++) free(merges[i]);
    free(merges);
    free(pads);
    free(types);
    free(texts);
    return st;
}
