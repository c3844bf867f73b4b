/*
 * generate_eval.c: generation over a dataset for scoring against its completions. One KV
 * cache, sized for the longest prompt plus the new tokens, serves every example (reset
 * between them); each example samples from its own seeded generator. Also corpus scores
 * over plain arrays and the atomic write of result files.
 */
#define _GNU_SOURCE    /* memmem */
#include "data/data.h" /* finch_dataset_load */
#include "eval/eval.h"
#include "generate/generate.h" /* finch_sample */
#include "model/model.h"       /* finch_kv_session */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void finch_gen_results_release(finch_gen_results *r) {
    if (!r) return;
    for (int64_t i = 0; i < r->n; i++) {
        if (r->prompts) free(r->prompts[i]);
        if (r->references) free(r->references[i]);
        if (r->outputs) free(r->outputs[i]);
    }
    free(r->prompts);
    free(r->references);
    free(r->outputs);
    memset(r, 0, sizeof *r);
}

/* Appends a token's bytes to text (*len, *cap); false when out of memory. */
static bool append_piece(const finch_tokenizer *tok, int32_t id, char **text, size_t *len,
                         size_t *cap) {
    char piece[256];
    int64_t n = finch_tokenizer_piece(tok, id, false, piece, sizeof piece);
    if (n <= 0) return true;
    if (n > (int64_t)sizeof piece) n = sizeof piece; /* no real token is this long */
    if (*len + (size_t)n + 1 > *cap) {
        size_t c = (*len + (size_t)n + 1) * 2;
        char *p = finch_mem_realloc(*text, c);
        if (!p) return false;
        *text = p;
        *cap = c;
    }
    memcpy(*text + *len, piece, (size_t)n);
    *len += (size_t)n;
    (*text)[*len] = 0;
    return true;
}

/* Cuts text at the first stop string in it; true when one was found. */
static bool cut_at_stop(char *text, size_t *len, const char *const *stop) {
    bool hit = false;
    for (; stop && *stop; stop++) {
        size_t sl = strlen(*stop);
        char *at = sl ? memmem(text, *len, *stop, sl) : NULL;
        if (at) {
            *len = (size_t)(at - text);
            text[*len] = 0;
            hit = true;
        }
    }
    return hit;
}

/* Refuses a model without a tokenizer and generation settings out of range. */
static finch_status check_options(const finch_model *m, const finch_gen_options *gen,
                                  finch_err *err) {
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: the model has no tokenizer", m->path);
    if (gen->max_tokens < 1)
        return finch_err_set(err, FINCH_E_USAGE, "max new tokens %d: must be >= 1",
                             gen->max_tokens);
    if (!(gen->temperature >= 0) || gen->top_k < 0 || !(gen->top_p > 0 && gen->top_p <= 1))
        return finch_err_set(err, FINCH_E_USAGE,
                             "sampling settings: temperature %g must be >= 0, top-k %d >= 0, "
                             "top-p %g in (0, 1]",
                             gen->temperature, gen->top_k, gen->top_p);
    return FINCH_OK;
}

/* Reads spec's dataset in its shape, with its templates, for m's tokenizer. */
static finch_status load_examples(const finch_model *m, const finch_data_spec *spec,
                                  finch_dataset **d, finch_err *err) {
    finch_data_options o = {.skip_bad = spec->skip_bad != 0,
                            .seed = spec->seed,
                            .tok = m->tok,
                            .templates = {spec->templates, spec->n_templates, spec->chat != 0}};
    finch_status st = finch_shape_parse(spec->format ? spec->format : "auto", &o.shape, err);
    if (st) return st;
    return finch_dataset_load(spec->path, &o, d, err);
}

/* Keeps example i's user text and stripped reference in res and tokenizes its prompt into
 * *ids (*n_ids tokens, from 1 to the model's context less one). A prompt that does not
 * tokenize or fit, or an empty reference, is an error naming path and the line. */
static finch_status prepare_example(const finch_model *m, const char *path,
                                    const finch_text_example *e, int64_t i, finch_gen_results *res,
                                    int32_t **ids, int *n_ids, finch_err *err) {
    const int n_ctx_train = m->cfg.n_ctx_train;
    /* the user's text, before the chat template wrapped it */
    res->prompts[i] = finch_mem_strdup(e->user ? e->user : e->prompt);
    res->references[i] = finch_eval_strip(e->completion);
    if (!res->prompts[i] || !res->references[i])
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    if (!res->references[i][0])
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: line %lld: the reference (completion) is empty: there is "
                             "nothing to score the generation against",
                             path, (long long)e->line);
    int64_t k = 0;
    finch_status st = finch_tokenize(m->tok, e->prompt, strlen(e->prompt),
                                     FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, ids, &k, err);
    if (st) {
        finch_err_prefix(err, "%s: line %lld", path, (long long)e->line);
        return st;
    }
    if (k == 0 || k >= n_ctx_train)
        return finch_err_set(err, k ? FINCH_E_RANGE : FINCH_E_FORMAT,
                             "%s: line %lld: the prompt has %lld tokens: need 1 to %d (the "
                             "model's context less one)",
                             path, (long long)e->line, (long long)k, n_ctx_train - 1);
    *n_ids = (int)k;
    return FINCH_OK;
}

/* What generating needs across examples: one KV cache for the longest prompt plus the new
 * tokens, the sampler's buffers and the growing output text. */
typedef struct {
    finch_kv_session kv;
    bool kv_ready; /* kv needs releasing */
    int n_ctx;     /* positions kv holds */
    float *logits; /* (V) */
    float *probs;  /* (V) sampler scratch */
    int32_t *idx;  /* (V) sampler scratch */
    char *text;    /* the output so far, NUL-terminated (NULL until the first piece) */
    size_t len, cap;
} gen_state;

static finch_status gen_state_init(gen_state *g, const finch_model *m, const finch_gen_options *gen,
                                   int max_prompt, finch_err *err) {
    const int V = m->cfg.n_vocab;
    int n_ctx = max_prompt + gen->max_tokens;
    if (n_ctx > m->cfg.n_ctx_train) n_ctx = m->cfg.n_ctx_train;
    finch_status st = finch_kv_session_init(&g->kv, m, n_ctx,
                                            n_ctx < FINCH_INFER_CHUNK ? n_ctx : FINCH_INFER_CHUNK,
                                            gen->numerics, err);
    if (st) return st;
    g->kv_ready = true;
    g->n_ctx = n_ctx;
    g->logits = finch_alloc((size_t)V * sizeof(float), "logits", err);
    g->probs = g->logits ? finch_alloc((size_t)V * sizeof(float), "sampler", err) : NULL;
    g->idx = g->probs ? finch_alloc((size_t)V * sizeof(int32_t), "sampler", err) : NULL;
    return g->idx ? FINCH_OK : FINCH_E_NOMEM;
}

static void gen_state_release(gen_state *g) {
    free(g->text);
    free(g->idx);
    free(g->probs);
    free(g->logits);
    if (g->kv_ready) finch_kv_session_release(&g->kv);
}

/* Generates example i's output from its prompt ids[0..n_ids) into res->outputs[i]: until
 * end-of-generation, a stop string, gen->max_tokens or a full cache, sampling with a
 * generator seeded from gen->seed and i. Counts tokens and cut examples in res. */
static finch_status generate_one(const finch_model *m, const finch_gen_options *gen, gen_state *g,
                                 const int32_t *ids, int n_ids, int64_t i, finch_gen_results *res,
                                 finch_err *err) {
    const int V = m->cfg.n_vocab;
    g->kv.pos = 0;
    g->len = 0;
    if (g->text) g->text[0] = 0;
    finch_status st = finch_eval_decode(m, &g->kv, ids, n_ids, NULL, g->logits, err);
    if (st) return st;
    finch_rng rng;
    finch_rng_seed(&rng, finch_mix64(gen->seed ^ finch_mix64((uint64_t)i + 1)));
    int room = g->n_ctx - n_ids; /* tokens that still fit in the cache */
    int max_new = gen->max_tokens < room + 1 ? gen->max_tokens : room + 1;
    res->n_cut += max_new < gen->max_tokens;
    for (int t = 0; t < max_new; t++) {
        int32_t tok = finch_sample(g->logits, V, gen->temperature, gen->top_k, gen->top_p, &rng,
                                   g->probs, g->idx);
        if (finch_tokenizer_is_eog(m->tok, tok)) break;
        res->n_tokens++;
        if (!append_piece(m->tok, tok, &g->text, &g->len, &g->cap))
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        if ((gen->stop && cut_at_stop(g->text, &g->len, gen->stop)) || t + 1 == max_new) break;
        if ((st = finch_eval_decode(m, &g->kv, &tok, 1, NULL, g->logits, err))) return st;
    }
    if (!(res->outputs[i] = finch_eval_strip(g->text ? g->text : "")))
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    return FINCH_OK;
}

finch_status finch_eval_generate(const finch_model *m, const finch_data_spec *spec,
                                 const finch_gen_options *gen, finch_progress_fn progress,
                                 void *user, finch_gen_results *out, finch_err *err) {
    finch_status st = check_options(m, gen, err);
    if (st) return st;
    finch_dataset *d = NULL;
    if ((st = load_examples(m, spec, &d, err))) return st;
    const int64_t n_read = d->n;
    if (spec->max_examples > 0 && d->n > spec->max_examples) d->n = spec->max_examples;
    const int64_t n = d->n;
    finch_gen_results res = {.n_skipped = d->n_skipped};
    int32_t **ids = finch_calloc((size_t)n, sizeof *ids, "prompts", err);
    int *n_ids = finch_calloc((size_t)n, sizeof *n_ids, "prompts", err);
    gen_state g = {.kv_ready = false};
    res.prompts = finch_calloc((size_t)n, sizeof(char *), "results", err);
    res.references = finch_calloc((size_t)n, sizeof(char *), "results", err);
    res.outputs = finch_calloc((size_t)n, sizeof(char *), "results", err);
    if (!ids || !n_ids || !res.prompts || !res.references || !res.outputs) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    res.n = n;
    /* every prompt first, so that one cache fits the longest */
    int max_prompt = 0;
    for (int64_t i = 0; i < n; i++) {
        if ((st = prepare_example(m, spec->path, &d->ex[i], i, &res, &ids[i], &n_ids[i], err)))
            goto done;
        if (n_ids[i] > max_prompt) max_prompt = n_ids[i];
    }
    if ((st = gen_state_init(&g, m, gen, max_prompt, err))) goto done;
    for (int64_t i = 0; i < n; i++) {
        if ((st = generate_one(m, gen, &g, ids[i], n_ids[i], i, &res, err))) goto done;
        if (progress) progress(i + 1, n, user);
    }
done:
    if (st)
        finch_gen_results_release(&res);
    else
        *out = res;
    gen_state_release(&g);
    for (int64_t i = 0; ids && i < n; i++) free(ids[i]);
    free(ids);
    free(n_ids);
    d->n = n_read;
    finch_dataset_free(d);
    return st;
}

finch_status finch_scores_compute(const char *const *preds, const char *const *refs, size_t n,
                                  int stem, finch_scores *out, finch_err *err) {
    if (n == 0) return finch_err_set(err, FINCH_E_USAGE, "no examples to score");
    finch_scores r = {0};
    int *n_refs = finch_alloc(n * sizeof *n_refs, "scores", err);
    const char *const **rl = n_refs ? finch_alloc(n * sizeof *rl, "scores", err) : NULL;
    if (!rl) {
        free(n_refs);
        return FINCH_E_NOMEM;
    }
    finch_status st = FINCH_OK;
    for (size_t i = 0; i < n && !st; i++) {
        finch_prf p[FINCH_ROUGE_COUNT];
        double em, f1;
        n_refs[i] = 1;
        rl[i] = &refs[i];
        if (finch_rouge(preds[i], &refs[i], 1, stem, p, err) ||
            finch_exact_match(preds[i], &refs[i], 1, &em, &f1, err)) {
            st = finch_err_prefix(err, "example %zu", i + 1);
            break;
        }
        for (int k = 0; k < FINCH_ROUGE_COUNT; k++) {
            r.rouge[k].precision += p[k].precision / (double)n;
            r.rouge[k].recall += p[k].recall / (double)n;
            r.rouge[k].f1 += p[k].f1 / (double)n;
        }
        r.exact_match += em / (double)n;
        r.token_f1 += f1 / (double)n;
    }
    if (!st) st = finch_bleu_corpus(preds, (const char *const *const *)rl, n_refs, n, &r.bleu, err);
    if (!st) *out = r;
    free(rl);
    free(n_refs);
    return st;
}

typedef struct {
    const char *text;
    size_t len;
    const char *path;
} text_file;

static finch_status write_text(FILE *f, void *user, finch_err *err) {
    const text_file *t = user;
    return finch_fwrite(f, t->text, t->len, t->path, err);
}

finch_status finch_eval_write_file(const char *path, const char *text, size_t len, finch_err *err) {
    text_file t = {text, len, path};
    return finch_file_commit(path, write_text, &t, err);
}
