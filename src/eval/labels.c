/*
 * labels.c: classification by label likelihood. A prompt runs through the model once;
 * each label's tokens then run from the prompt's cached keys and values (the cache is
 * rewound to the prompt's end between labels), and the label scores the sum of its
 * tokens' log-probabilities. The most likely label is the prediction; exp(scores)
 * normalised over the label set give per-label probabilities.
 */
#include "data/data.h" /* finch_dataset_load */
#include "eval/eval.h"
#include "model/model.h" /* finch_kv_session, finch_model_forward */

#include <math.h>
#include <stdlib.h>
#include <string.h>

finch_status finch_eval_decode(const finch_model *m, finch_kv_session *kv, const int32_t *ids,
                               int n, float *all, float *last, finch_err *err) {
    const size_t V = (size_t)m->cfg.n_vocab;
    for (int done = 0; done < n;) {
        int T = n - done < kv->n_batch ? n - done : kv->n_batch;
        finch_model_forward(m, kv, ids + done, T, all != NULL);
        if (all) memcpy(all + (size_t)done * V, kv->logits, (size_t)T * V * sizeof(float));
        done += T;
        if (done == n && last)
            memcpy(last, kv->logits + (all ? (size_t)(T - 1) * V : 0), V * sizeof(float));
    }
    return finch_kv_session_status(kv, err);
}

double finch_eval_logprob(const float *row, int V, int32_t id) {
    float mx = row[0];
    for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    double z = 0;
    for (int v = 0; v < V; v++) z += exp((double)row[v] - mx);
    return (double)row[id] - mx - log(z);
}

static bool is_space(char c) {
    return c == ' ' || (c >= '\t' && c <= '\r');
}

char *finch_eval_strip(const char *s) {
    while (is_space(*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1])) n--;
    char *r = finch_mem_alloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = 0;
    }
    return r;
}

/* ---- scoring labels after a prompt --------------------------------------------------- */

typedef struct {
    int32_t *ids;
    int n;
} id_list;

/* A KV cache and logit buffers sized for prompts of n_prompt and labels of n_label tokens
 * at most. */
typedef struct {
    const finch_model *m;
    finch_kv_session kv;
    bool ready;
    float *last; /* (V): the prompt's last logits */
    float *rows; /* (n_label - 1, V): logits inside a label */
} scorer;

static finch_status scorer_init(scorer *s, const finch_model *m, int n_prompt, int n_label,
                                finch_numerics numerics, finch_err *err) {
    memset(s, 0, sizeof *s);
    s->m = m;
    int n_ctx = n_prompt + n_label;
    if (n_ctx > m->cfg.n_ctx_train)
        return finch_err_set(err, FINCH_E_RANGE,
                             "a prompt of %d tokens and a label of %d exceed the model's context "
                             "of %d",
                             n_prompt, n_label, m->cfg.n_ctx_train);
    finch_status st = finch_kv_session_init(
        &s->kv, m, n_ctx, n_ctx < FINCH_INFER_CHUNK ? n_ctx : FINCH_INFER_CHUNK, numerics, err);
    if (st) return st;
    s->ready = true;
    const size_t V = (size_t)m->cfg.n_vocab;
    s->last = finch_alloc(V * sizeof(float), "label logits", err);
    s->rows =
        s->last ? finch_alloc(V * (size_t)n_label * sizeof(float), "label logits", err) : NULL;
    return s->rows ? FINCH_OK : FINCH_E_NOMEM;
}

static void scorer_release(scorer *s) {
    if (s->ready) finch_kv_session_release(&s->kv);
    free(s->last);
    free(s->rows);
}

/* out[j] = log p(labels[j] | prompt); the prompt runs once, each label from its end. */
static finch_status score_labels(scorer *s, const int32_t *prompt, int n_prompt,
                                 const id_list *labels, int n_labels, double *out, finch_err *err) {
    const int V = s->m->cfg.n_vocab;
    s->kv.pos = 0;
    finch_status st = finch_eval_decode(s->m, &s->kv, prompt, n_prompt, NULL, s->last, err);
    for (int j = 0; j < n_labels && !st; j++) {
        const id_list *l = &labels[j];
        double lp = finch_eval_logprob(s->last, V, l->ids[0]);
        if (l->n > 1) {
            if ((st = finch_eval_decode(s->m, &s->kv, l->ids, l->n - 1, s->rows, NULL, err))) break;
            for (int k = 1; k < l->n; k++)
                lp += finch_eval_logprob(s->rows + (size_t)(k - 1) * V, V, l->ids[k]);
            s->kv.pos =
                s->kv.start + n_prompt; /* forget the label: the next starts after the prompt */
        }
        out[j] = lp;
    }
    return st;
}

static finch_status tokenize_label(const finch_tokenizer *tok, const char *text, id_list *out,
                                   finch_err *err) {
    int64_t n = 0;
    out->ids = NULL;
    finch_status st = finch_tokenize(tok, text, strlen(text), 0, &out->ids, &n, err);
    if (st) return st;
    if (n == 0) {
        free(out->ids);
        out->ids = NULL;
        return finch_err_set(err, FINCH_E_USAGE, "label '%s' tokenizes to nothing", text);
    }
    out->n = (int)n;
    return FINCH_OK;
}

finch_status finch_label_logprobs(const finch_model *m, finch_numerics numerics, const char *prompt,
                                  const char *const *labels, int n_labels, double *out,
                                  finch_err *err) {
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: the model has no tokenizer", m->path);
    if (n_labels < 1) return finch_err_set(err, FINCH_E_USAGE, "no labels to score");
    id_list *l = finch_calloc((size_t)n_labels, sizeof *l, "labels", err);
    int32_t *p = NULL;
    int64_t np = 0;
    scorer sc = {0};
    if (!l) return FINCH_E_NOMEM;
    finch_status st = finch_tokenize(m->tok, prompt, strlen(prompt),
                                     FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, &p, &np, err);
    if (!st && np == 0) st = finch_err_set(err, FINCH_E_USAGE, "the prompt is empty");
    int max_label = 0;
    for (int j = 0; !st && j < n_labels; j++) {
        st = tokenize_label(m->tok, labels[j], &l[j], err);
        if (!st && l[j].n > max_label) max_label = l[j].n;
    }
    if (!st && np > m->cfg.n_ctx_train)
        st = finch_err_set(err, FINCH_E_RANGE,
                           "the prompt of %lld tokens exceeds the model's context of %d",
                           (long long)np, m->cfg.n_ctx_train);
    if (!st) st = scorer_init(&sc, m, (int)np, max_label, numerics, err);
    if (!st) st = score_labels(&sc, p, (int)np, l, n_labels, out, err);
    scorer_release(&sc);
    for (int j = 0; j < n_labels; j++) free(l[j].ids);
    free(l);
    free(p);
    return st;
}

/* ---- classifying a dataset ---------------------------------------------------------- */

void finch_classify_results_release(finch_classify_results *r) {
    if (!r) return;
    for (int j = 0; j < r->n_labels && r->labels; j++) free(r->labels[j]);
    free(r->labels);
    free(r->gold);
    free(r->pred);
    free(r->logprob);
    free(r->prob);
    memset(r, 0, sizeof *r);
}

/* A growing string. */
typedef struct {
    char *p;
    size_t n, cap;
} str;

static bool str_add(str *s, const char *t, size_t n) {
    if (s->n + n + 1 > s->cap) {
        size_t cap = (s->n + n + 1) * 2;
        char *q = finch_mem_realloc(s->p, cap);
        if (!q) return false;
        s->p = q;
        s->cap = cap;
    }
    memcpy(s->p + s->n, t, n);
    s->n += n;
    s->p[s->n] = 0;
    return true;
}

/* Length of t without trailing whitespace. */
static size_t rstrip_len(const char *t) {
    size_t n = strlen(t);
    while (n > 0 && is_space(t[n - 1])) n--;
    return n;
}

/* The index of the label equal to text (both without surrounding whitespace), or -1. */
static int find_label(char *const *labels, int n, const char *text) {
    while (is_space(*text)) text++;
    size_t len = rstrip_len(text);
    for (int j = 0; j < n; j++)
        if (strlen(labels[j]) == len && !memcmp(labels[j], text, len)) return j;
    return -1;
}

/* Everything one classification run holds. */
typedef struct {
    const finch_model *m;
    const finch_data_spec *spec;
    const finch_classify_options *opt;
    finch_dataset *d, *shots;
    int64_t n_read;  /* examples in d before max_examples cut it */
    char **prefixes; /* the templates cut before {label} */
    int n_prefixes;
    char **label_text; /* what each label's tokens are made from */
    id_list *lab[2];   /* label tokens as given, and with a space before them */
    int32_t **prompt;  /* per example: prompt ids */
    int *n_prompt;
    bool *moved;   /* per example: the prompt's end space moved onto the label */
    int64_t *perm; /* shot order (partial Fisher-Yates, kept across examples) */
} run;

/* Splits every template at {label}, which must end it. */
static finch_status cut_templates(run *r, finch_err *err) {
    const finch_data_spec *sp = r->spec;
    if (sp->n_templates <= 0) return FINCH_OK;
    r->prefixes = finch_calloc((size_t)sp->n_templates, sizeof *r->prefixes, "templates", err);
    if (!r->prefixes) return FINCH_E_NOMEM;
    r->n_prefixes = sp->n_templates;
    for (int i = 0; i < sp->n_templates; i++) {
        const char *t = sp->templates[i], *slot = strstr(t, "{label}");
        size_t n = slot ? (size_t)(slot - t) : strlen(t);
        if (slot && slot[7] && rstrip_len(slot + 7) > 0)
            return finch_err_set(err, FINCH_E_USAGE,
                                 "template %d: {label} must end the template (found '%.40s' after "
                                 "it)",
                                 i + 1, slot + 7);
        if (!(r->prefixes[i] = finch_mem_alloc(n + 1)))
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        memcpy(r->prefixes[i], t, n);
        r->prefixes[i][n] = 0;
    }
    return FINCH_OK;
}

/* The label set: given, or the distinct completions in order of first appearance. */
static finch_status make_labels(run *r, finch_classify_results *out, finch_err *err) {
    const finch_classify_options *o = r->opt;
    int cap = o->labels ? o->n_labels : 16;
    out->labels = finch_calloc((size_t)(cap > 0 ? cap : 1), sizeof *out->labels, "labels", err);
    r->label_text = finch_calloc((size_t)(cap > 0 ? cap : 1), sizeof *r->label_text, "labels", err);
    if (!out->labels || !r->label_text) return FINCH_E_NOMEM;
    /* from the whole file, so that --max-examples does not change the label set */
    int64_t n_src = o->labels ? o->n_labels : r->n_read;
    for (int64_t i = 0; i < n_src; i++) {
        const char *text = o->labels ? o->labels[i] : r->d->ex[i].completion;
        int j = find_label(out->labels, out->n_labels, text);
        if (j >= 0) {
            if (o->labels)
                return finch_err_set(err, FINCH_E_USAGE, "label '%s' is given twice",
                                     out->labels[j]);
            continue;
        }
        if (out->n_labels == cap) {
            if (cap >= 1 << 16)
                return finch_err_set(err, FINCH_E_RANGE,
                                     "%s: more than %d distinct completions: is this a "
                                     "classification set? Give the labels with --labels",
                                     r->spec->path, cap);
            char **a = finch_mem_realloc(out->labels, (size_t)cap * 2 * sizeof *a);
            if (a) out->labels = a;
            char **b = a ? finch_mem_realloc(r->label_text, (size_t)cap * 2 * sizeof *b) : NULL;
            if (b) r->label_text = b;
            if (!a || !b) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
            cap *= 2;
        }
        /* the scored text keeps a completion's leading space (its separator) */
        size_t n = rstrip_len(text);
        char *t = finch_mem_alloc(n + 1), *s = finch_eval_strip(text);
        if (t) memcpy(t, text, n), t[n] = 0;
        r->label_text[out->n_labels] = t;
        out->labels[out->n_labels++] = s;
        if (!t || !s) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        if (!*s)
            return o->labels
                       ? finch_err_set(err, FINCH_E_USAGE, "label %lld is empty", (long long)i + 1)
                       : finch_err_set(err, FINCH_E_FORMAT,
                                       "%s: line %lld: the completion "
                                       "(the label) is empty",
                                       r->spec->path, (long long)r->d->ex[i].line);
    }
    if (out->n_labels < 2)
        return finch_err_set(
            err, FINCH_E_USAGE, "%d label%s ('%s'): classification needs at least two%s",
            out->n_labels, out->n_labels == 1 ? "" : "s", out->n_labels ? out->labels[0] : "",
            o->labels ? "" : " (the dataset's completions are all the same)");
    for (int v = 0; v < 2; v++) {
        r->lab[v] = finch_calloc((size_t)out->n_labels, sizeof *r->lab[v], "labels", err);
        if (!r->lab[v]) return FINCH_E_NOMEM;
    }
    for (int j = 0; j < out->n_labels; j++) {
        const char *t = r->label_text[j];
        finch_status st = tokenize_label(r->m->tok, t, &r->lab[0][j], err);
        if (st) return st;
        /* with a space in front, unless the label starts with one already */
        char *sp = finch_mem_alloc(strlen(t) + 2);
        if (!sp) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        sp[0] = ' ';
        strcpy(sp + 1, t);
        st = tokenize_label(r->m->tok, is_space(t[0]) ? t : sp, &r->lab[1][j], err);
        free(sp);
        if (st) return st;
    }
    return FINCH_OK;
}

/* Picks opt->k_shot shots for example i into pick (never one equal to the example). */
static finch_status pick_shots(run *r, int64_t i, int64_t *pick, finch_err *err) {
    const finch_text_example *e = &r->d->ex[i];
    finch_rng rng;
    finch_rng_seed(&rng, finch_mix64(r->spec->seed ^ finch_mix64((uint64_t)i + 1)));
    int64_t ns = r->shots->n, got = 0;
    for (int64_t j = 0; j < ns && got < r->opt->k_shot; j++) {
        int64_t k = j + (int64_t)(finch_rng_u64(&rng) % (uint64_t)(ns - j));
        int64_t t = r->perm[j];
        r->perm[j] = r->perm[k];
        r->perm[k] = t;
        const finch_text_example *s = &r->shots->ex[r->perm[j]];
        if (!strcmp(s->prompt, e->prompt) && !strcmp(s->completion, e->completion)) continue;
        pick[got++] = r->perm[j];
    }
    if (got < r->opt->k_shot)
        return finch_err_set(err, FINCH_E_USAGE,
                             "%s: %lld examples, not enough for %d shots other than line %lld of "
                             "%s",
                             r->opt->shots_path, (long long)ns, r->opt->k_shot, (long long)e->line,
                             r->spec->path);
    return FINCH_OK;
}

/* Builds and tokenizes example i's prompt: shots, the prompt, the chat template. */
static finch_status build_prompt(run *r, int64_t i, finch_err *err) {
    const finch_text_example *e = &r->d->ex[i];
    const int k = r->opt->k_shot;
    const bool chat = r->spec->chat && r->d->shape != FINCH_SHAPE_CHAT;
    int64_t pick[64];
    finch_status st = FINCH_OK;
    if (k > 0 && (st = pick_shots(r, i, pick, err))) return st;
    str s = {0};
    char *text = NULL;
    if (chat) {
        finch_chat_msg msgs[2 * 64 + 1];
        int n = 0;
        for (int j = 0; j < k; j++) {
            const finch_text_example *x = &r->shots->ex[pick[j]];
            msgs[n++] = (finch_chat_msg){"user", x->prompt};
            msgs[n++] = (finch_chat_msg){"assistant", x->completion};
        }
        msgs[n++] = (finch_chat_msg){"user", e->prompt};
        if ((st = finch_chat_format(r->m, msgs, n, 1, &text, err)))
            return finch_err_prefix(err, "%s: line %lld", r->spec->path, (long long)e->line);
    } else {
        bool ok = true;
        for (int j = 0; j < k && ok; j++) {
            const finch_text_example *x = &r->shots->ex[pick[j]];
            ok = str_add(&s, x->prompt, strlen(x->prompt)) &&
                 str_add(&s, x->completion, rstrip_len(x->completion)) && str_add(&s, "\n\n", 2);
        }
        if (!ok || !str_add(&s, e->prompt, strlen(e->prompt))) {
            free(s.p);
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory building a prompt");
        }
        text = s.p;
    }
    /* spaces ending the prompt go onto the label */
    size_t len = strlen(text);
    r->moved[i] = len > 0 && text[len - 1] == ' ';
    while (len > 0 && text[len - 1] == ' ') len--;
    int64_t n = 0;
    st = finch_tokenize(r->m->tok, text, len, FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL,
                        &r->prompt[i], &n, err);
    free(text);
    if (st) return finch_err_prefix(err, "%s: line %lld", r->spec->path, (long long)e->line);
    if (n == 0)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: line %lld: the prompt is empty",
                             r->spec->path, (long long)e->line);
    if (n > r->m->cfg.n_ctx_train)
        return finch_err_set(err, FINCH_E_RANGE,
                             "%s: line %lld: the prompt of %lld tokens exceeds the model's "
                             "context of %d",
                             r->spec->path, (long long)e->line, (long long)n,
                             r->m->cfg.n_ctx_train);
    r->n_prompt[i] = (int)n;
    return FINCH_OK;
}

static finch_status load(run *r, const char *path, finch_dataset **out, finch_err *err) {
    const finch_data_spec *sp = r->spec;
    finch_data_options o = {.skip_bad = sp->skip_bad != 0,
                            .seed = sp->seed,
                            .tok = r->m->tok,
                            .templates = {(const char *const *)r->prefixes, r->n_prefixes, false}};
    finch_status st = finch_shape_parse(sp->format ? sp->format : "auto", &o.shape, err);
    if (!st) st = finch_dataset_load(path, &o, out, err);
    return st;
}

finch_status finch_eval_classify(const finch_model *m, const finch_data_spec *spec,
                                 const finch_classify_options *opt, finch_numerics numerics,
                                 finch_progress_fn progress, void *user,
                                 finch_classify_results *out, finch_err *err) {
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: the model has no tokenizer", m->path);
    if (opt->k_shot < 0 || opt->k_shot > 64)
        return finch_err_set(err, FINCH_E_USAGE, "%d shots: must be from 0 to 64", opt->k_shot);
    if (opt->k_shot > 0 && !opt->shots_path)
        return finch_err_set(err, FINCH_E_USAGE,
                             "%d shots but no file to draw them from: give --shots-from FILE",
                             opt->k_shot);
    if (opt->labels && opt->n_labels < 2)
        return finch_err_set(err, FINCH_E_USAGE, "%d label%s: classification needs at least two",
                             opt->n_labels, opt->n_labels == 1 ? "" : "s");
    run r = {.m = m, .spec = spec, .opt = opt};
    finch_classify_results res = {0};
    scorer sc = {0};
    double *lp = NULL;
    finch_status st = cut_templates(&r, err);
    if (!st) st = load(&r, spec->path, &r.d, err);
    if (!st) {
        r.n_read = r.d->n;
        if (spec->max_examples > 0 && r.d->n > spec->max_examples) r.d->n = spec->max_examples;
        res.n_skipped = r.d->n_skipped;
    }
    if (!st && opt->k_shot > 0) {
        if (r.d->shape == FINCH_SHAPE_CHAT)
            st = finch_err_set(err, FINCH_E_UNSUPPORTED,
                               "%s: shots with a chat dataset are not supported: use a "
                               "prompt/completion file",
                               spec->path);
        else if (!(st = load(&r, opt->shots_path, &r.shots, err)) &&
                 !(r.perm = finch_alloc((size_t)r.shots->n * sizeof *r.perm, "shots", err)))
            st = FINCH_E_NOMEM;
        for (int64_t j = 0; !st && j < r.shots->n; j++) r.perm[j] = j;
    }
    if (!st) st = make_labels(&r, &res, err);
    const int64_t n = st ? 0 : r.d->n;
    const int L = res.n_labels;
    if (!st) {
        res.n = n;
        r.prompt = finch_calloc((size_t)n, sizeof *r.prompt, "prompts", err);
        r.n_prompt = finch_calloc((size_t)n, sizeof *r.n_prompt, "prompts", err);
        r.moved = finch_calloc((size_t)n, sizeof *r.moved, "prompts", err);
        res.gold = finch_calloc((size_t)n, sizeof *res.gold, "results", err);
        res.pred = finch_calloc((size_t)n, sizeof *res.pred, "results", err);
        res.logprob = finch_calloc((size_t)n * L, sizeof *res.logprob, "results", err);
        res.prob = finch_calloc((size_t)n * L, sizeof *res.prob, "results", err);
        if (!r.prompt || !r.n_prompt || !r.moved || !res.gold || !res.pred || !res.logprob ||
            !res.prob)
            st = FINCH_E_NOMEM;
    }
    /* every prompt first, so one cache fits the longest */
    int max_prompt = 0, max_label = 0;
    for (int64_t i = 0; !st && i < n; i++) {
        res.gold[i] = find_label(res.labels, L, r.d->ex[i].completion);
        if (res.gold[i] < 0) {
            str s = {0};
            bool ok = true;
            for (int j = 0; j < L && ok && s.n < 200; j++)
                ok = (j == 0 || str_add(&s, ", ", 2)) &&
                     str_add(&s, res.labels[j], strlen(res.labels[j]));
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: line %lld: the completion '%.60s' is not one of the labels "
                               "(%.200s)",
                               spec->path, (long long)r.d->ex[i].line, r.d->ex[i].completion,
                               s.p ? s.p : "");
            free(s.p);
            break;
        }
        if ((st = build_prompt(&r, i, err))) break;
        if (r.n_prompt[i] > max_prompt) max_prompt = r.n_prompt[i];
    }
    for (int j = 0; !st && j < L; j++)
        for (int v = 0; v < 2; v++)
            if (r.lab[v][j].n > max_label) max_label = r.lab[v][j].n;
    if (!st) st = scorer_init(&sc, m, max_prompt, max_label, numerics, err);
    int64_t correct = 0;
    for (int64_t i = 0; !st && i < n; i++) {
        lp = res.logprob + (size_t)i * L;
        if ((st = score_labels(&sc, r.prompt[i], r.n_prompt[i], r.lab[r.moved[i]], L, lp, err)))
            break;
        int best = 0;
        for (int j = 1; j < L; j++)
            if (lp[j] > lp[best]) best = j;
        double z = 0, *p = res.prob + (size_t)i * L;
        for (int j = 0; j < L; j++) z += p[j] = exp(lp[j] - lp[best]);
        for (int j = 0; j < L; j++) p[j] /= z;
        res.pred[i] = best;
        correct += best == res.gold[i];
        if (progress) progress(i + 1, n, user);
    }
    if (!st) {
        res.accuracy = (double)correct / (double)n;
        *out = res;
    } else {
        finch_classify_results_release(&res);
    }
    scorer_release(&sc);
    for (int64_t i = 0; r.prompt && i < n; i++) free(r.prompt[i]);
    free(r.prompt);
    free(r.n_prompt);
    free(r.moved);
    free(r.perm);
    for (int v = 0; v < 2; v++) {
        for (int j = 0; r.lab[v] && j < L; j++) free(r.lab[v][j].ids);
        free(r.lab[v]);
    }
    for (int j = 0; r.label_text && j < L; j++) free(r.label_text[j]);
    free(r.label_text);
    for (int j = 0; j < r.n_prefixes; j++) free(r.prefixes[j]);
    free(r.prefixes);
    if (r.d) r.d->n = r.n_read;
    finch_dataset_free(r.d);
    finch_dataset_free(r.shots);
    return st;
}
