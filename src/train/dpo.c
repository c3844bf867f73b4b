/*
 * dpo.c: Direct Preference Optimization (Rafailov et al., 2023) as TRL's DPOTrainer computes
 * it with loss_type "sigmoid" and no label smoothing (FORMATS.md 3.4). For a pair of
 * completions of one prompt, chosen c and rejected r:
 *
 *   logp(y)  = sum over y's target tokens of log softmax(logits)[token]
 *   z        = beta ((logp_pi(c) - logp_pi(r)) - (logp_ref(c) - logp_ref(r)))
 *   loss     = mean over the P pairs of -log sigmoid(z)
 *   dloss / dlogp_pi(c) = -beta sigmoid(-z) / P,   dloss / dlogp_pi(r) = +beta sigmoid(-z) / P
 *   rewards: chosen = beta (logp_pi(c) - logp_ref(c)), rejected likewise
 *
 * pi is the model with the method attached, ref the model without it: its log-probs are
 * computed once per pair by the same training forward (finch_dpo_new, before the method
 * attaches, so prompt and prefix tuning's virtual tokens and full fine-tuning's copies
 * are not there) and kept; a resumed run computes them again, to the same bits.
 *
 * A micro-batch of P pairs is 2P rows of the batch: pair j's chosen in row 2j, its
 * rejected in row 2j + 1 (the token set holds them in that order, data.h). The loss
 * depends on the forward's result, so the step runs finch_model_train_forward, computes
 * every row's gradient scale, then finch_model_train_backward.
 *
 * Data parallelism (loop.c): with N ranks a global micro-batch is N x P pairs, rank
 * (lane) k computing pairs [k P, (k + 1) P) with the gradient scales of the mean over all
 * N P pairs, so the ranks' gradients sum to one process's. The reference and validation
 * passes give each MPI rank every procs-th batch and sum the results over the ranks,
 * validation's per batch and then in batch order, so every rank count gets the same bits.
 */
#include "data/data.h"   /* token sets, batches */
#include "dist/dist.h"   /* finch_dist_sum_f64: reference and validation across ranks */
#include "model/model.h" /* the training forward and backward */
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct finch_dpo {
    double beta;
    double *ref[2];   /* [train, val]: per example of the token set, logp_ref */
    int64_t n_ref[2]; /* examples */
    int B;            /* rows a micro-batch (2 per pair) */
    double *row_logp; /* (B) */
    float *row_scale; /* (B) */
    int64_t *idx;     /* (B) the examples of the batch's rows */
    int32_t pad;      /* the padding id */
};

/* -log sigmoid(z) and sigmoid(-z), without overflow for any z. */
static double softplus_neg(double z) {
    return z >= 0 ? log1p(exp(-z)) : -z + log1p(exp(z));
}
static double sigmoid_neg(double z) {
    return z >= 0 ? exp(-z) / (1 + exp(-z)) : 1 / (1 + exp(z));
}

/* Fills b's rows with the examples d->idx[0..B-1] of s, one a row; rows from n_real on
 * get no targets. */
static void fill(finch_dpo *d, finch_batch *b, const finch_token_set *s, int n_real) {
    finch_token_set view = {.ex = s->ex, .n = b->B}; /* idx holds exactly B entries */
    int64_t next = 0, epoch = 0;
    finch_batch_fill(b, &view, d->idx, &next, &epoch, false, d->pad);
    for (int64_t i = (int64_t)n_real * b->T; i < (int64_t)b->B * b->T; i++) b->targets[i] = -1;
}

/* The reference log-probs of every example of s into out (zeros on entry), B rows a
 * forward; with several MPI ranks each computes every procs-th forward and the ranks' out
 * are summed (each value plus zeros: the same bits as one process). */
static finch_status reference(finch_dpo *d, const finch_model *m, finch_train_acts *a,
                              finch_batch *b, const finch_token_set *s, double *out,
                              finch_err *err) {
    const int rank = finch_dist_rank(), procs = finch_dist_size();
    for (int64_t i = 0, j = 0; i < s->n; i += d->B, j++) {
        if (j % procs != rank) continue;
        int n = s->n - i < d->B ? (int)(s->n - i) : d->B;
        for (int k = 0; k < d->B; k++) d->idx[k] = i + (k < n ? k : 0);
        fill(d, b, s, n);
        finch_model_train_forward(m, a, b->ids, b->targets, b->pos, NULL, 0, false, d->row_logp);
        for (int k = 0; k < n; k++) out[i + k] = d->row_logp[k];
    }
    return finch_dist_sum_f64(out, (size_t)s->n, "the DPO reference log-probs", err);
}

finch_status finch_dpo_new(const finch_model *m, const finch_token_set *train,
                           const finch_token_set *val, int64_t val_max_pairs, int pairs, int T,
                           double beta, finch_dpo **out, finch_err *err) {
    FINCH_ASSERT(train->pairs && (val->n == 0 || val->pairs) && pairs >= 1);
    finch_dpo *d = finch_calloc(1, sizeof *d, "DPO state", err);
    if (!d) return FINCH_E_NOMEM;
    d->beta = beta;
    d->B = 2 * pairs;
    d->pad = finch_tokenizer_eos(m->tok);
    /* validation scores its first val_max_pairs pairs only: those need a reference */
    finch_token_set vpart = *val;
    if (val_max_pairs > 0 && vpart.n > 2 * val_max_pairs) vpart.n = 2 * val_max_pairs;
    const finch_token_set *sets[2] = {train, &vpart};
    finch_status st = FINCH_OK;
    for (int s = 0; s < 2 && !st; s++) {
        d->n_ref[s] = sets[s]->n;
        if (!(d->ref[s] = finch_calloc((size_t)sets[s]->n + 1, sizeof(double), "reference", err)))
            st = FINCH_E_NOMEM;
    }
    if (!st && (!(d->row_logp = finch_calloc((size_t)d->B, sizeof(double), "DPO rows", err)) ||
                !(d->row_scale = finch_calloc((size_t)d->B, sizeof(float), "DPO rows", err)) ||
                !(d->idx = finch_calloc((size_t)d->B, sizeof(int64_t), "DPO rows", err))))
        st = FINCH_E_NOMEM;
    finch_train_acts *a = NULL;
    finch_batch b = {0};
    if (!st && !(st = finch_train_acts_create(m, d->B, T, FINCH_ACTS_RECOMPUTE, &a, err)) &&
        !(st = finch_batch_init(&b, d->B, T, err)))
        for (int s = 0; s < 2 && !st; s++) st = reference(d, m, a, &b, sets[s], d->ref[s], err);
    finch_batch_release(&b);
    finch_train_acts_free(a);
    if (st) {
        finch_dpo_free(d);
        return st;
    }
    *out = d;
    return FINCH_OK;
}

void finch_dpo_free(finch_dpo *d) {
    if (!d) return;
    free(d->ref[0]);
    free(d->ref[1]);
    free(d->row_logp);
    free(d->row_scale);
    free(d->idx);
    free(d);
}

/* The summed loss of the pairs of the batch's first 2 n rows (their examples in d->idx)
 * from the forward's d->row_logp and the reference ref; the rows' gradient scales, those
 * of the mean over n_all pairs times scale. Adds to *acc. */
static double pairs_loss(finch_dpo *d, const double *ref, int n, int64_t n_all, float scale,
                         finch_dpo_stats *acc) {
    double loss = 0;
    for (int j = 0; j < n; j++) {
        const double pc = d->row_logp[2 * j], pr = d->row_logp[2 * j + 1];
        const double rc = ref[d->idx[2 * j]], rr = ref[d->idx[2 * j + 1]];
        const double chosen = d->beta * (pc - rc), rejected = d->beta * (pr - rr);
        const double z = chosen - rejected, l = softplus_neg(z);
        loss += l;
        const double g = d->beta * sigmoid_neg(z) * (double)scale / (double)n_all;
        d->row_scale[2 * j] = (float)-g;
        d->row_scale[2 * j + 1] = (float)g;
        acc->loss += l;
        acc->chosen += chosen;
        acc->rejected += rejected;
        acc->accuracy += chosen > rejected;
        acc->logp_chosen += pc;
        acc->logp_rejected += pr;
        acc->n++;
    }
    return loss;
}

double finch_dpo_step(finch_dpo *d, const finch_model *m, finch_train_acts *a, finch_batch *b,
                      const finch_token_set *ts, const int64_t *order, int64_t *next,
                      int64_t *epoch, int lane, int ranks, float scale, uint64_t dropout_seed,
                      finch_dpo_stats *acc, int64_t *tokens) {
    FINCH_ASSERT(b->B == d->B && ts->n == d->n_ref[0] && lane >= 0 && lane < ranks);
    const int P = d->B / 2;
    const int64_t n_pairs = ts->n / 2;
    for (int64_t j = 0; j < (int64_t)ranks * P; j++) {
        int64_t p = order[*next], k = j - (int64_t)lane * P;
        if (k >= 0 && k < P) {
            d->idx[2 * k] = 2 * p;
            d->idx[2 * k + 1] = 2 * p + 1;
        }
        if (tokens) *tokens += ts->ex[2 * p].n + ts->ex[2 * p + 1].n;
        if (++*next == n_pairs) *next = 0, ++*epoch;
    }
    fill(d, b, ts, d->B);
    finch_model_train_forward(m, a, b->ids, b->targets, b->pos, NULL, dropout_seed, true,
                              d->row_logp);
    const int64_t n_all = (int64_t)ranks * P;
    double loss = pairs_loss(d, d->ref[0], P, n_all, scale, acc) / (double)n_all;
    finch_model_train_backward(m, a, d->row_scale);
    return loss;
}

/* A finch_dpo_stats as the doubles an allreduce sums, and back. */
enum { STATS_F64 = 7 };
static void stats_put(const finch_dpo_stats *s, double *v) {
    v[0] = s->loss, v[1] = s->chosen, v[2] = s->rejected, v[3] = s->accuracy;
    v[4] = s->logp_chosen, v[5] = s->logp_rejected, v[6] = (double)s->n;
}
static void stats_add(finch_dpo_stats *s, const double *v) {
    s->loss += v[0], s->chosen += v[1], s->rejected += v[2], s->accuracy += v[3];
    s->logp_chosen += v[4], s->logp_rejected += v[5], s->n += (int64_t)v[6];
}

void finch_dpo_stats_add(finch_dpo_stats *s, const finch_dpo_stats *t) {
    double v[STATS_F64];
    stats_put(t, v);
    stats_add(s, v);
}

finch_status finch_dpo_stats_sum(finch_dpo_stats *s, finch_err *err) {
    double v[STATS_F64];
    stats_put(s, v);
    finch_status st = finch_dist_sum_f64(v, STATS_F64, "the DPO statistics", err);
    if (st) return st;
    *s = (finch_dpo_stats){0};
    stats_add(s, v);
    return FINCH_OK;
}

finch_status finch_dpo_eval(finch_dpo *d, const finch_model *m, finch_train_acts *a, finch_batch *b,
                            const finch_token_set *vs, int64_t max_pairs, finch_dpo_stats *out,
                            finch_err *err) {
    FINCH_ASSERT(b->B == d->B && vs->n >= d->n_ref[1]);
    int64_t n_pairs = d->n_ref[1] / 2;
    if (max_pairs > 0 && n_pairs > max_pairs) n_pairs = max_pairs;
    *out = (finch_dpo_stats){0};
    const int rank = finch_dist_rank(), procs = finch_dist_size(), P = d->B / 2;
    const int64_t n_batches = (n_pairs + P - 1) / P;
    double *part = finch_calloc((size_t)(n_batches * STATS_F64) + 1, sizeof(double),
                                "DPO validation", err); /* each batch's sums */
    if (!part) return FINCH_E_NOMEM;
    for (int64_t i = 0, j = 0; i < n_pairs; i += P, j++) {
        if (j % procs != rank) continue;
        int n = n_pairs - i < P ? (int)(n_pairs - i) : P;
        for (int k = 0; k < d->B; k++) d->idx[k] = 2 * i + (k < 2 * n ? k : 0);
        fill(d, b, vs, 2 * n);
        finch_model_train_forward(m, a, b->ids, b->targets, b->pos, NULL, 0, false, d->row_logp);
        finch_dpo_stats s = {0};
        pairs_loss(d, d->ref[1], n, n, 0.0f, &s);
        stats_put(&s, part + j * STATS_F64);
    }
    finch_status st =
        finch_dist_sum_f64(part, (size_t)(n_batches * STATS_F64), "the DPO validation", err);
    for (int64_t j = 0; j < n_batches && !st; j++) stats_add(out, part + j * STATS_F64);
    free(part);
    return st;
}

double finch_dpo_reference(const finch_dpo *d, int set, int64_t i) {
    FINCH_ASSERT((set == 0 || set == 1) && i >= 0 && i < d->n_ref[set]);
    return d->ref[set][i];
}

void finch_dpo_stats_mean(const finch_dpo_stats *s, finch_dpo_stats *mean) {
    const double n = s->n ? (double)s->n : NAN;
    *mean = (finch_dpo_stats){.loss = s->loss / n,
                              .chosen = s->chosen / n,
                              .rejected = s->rejected / n,
                              .accuracy = s->accuracy / n,
                              .logp_chosen = s->logp_chosen / n,
                              .logp_rejected = s->logp_rejected / n,
                              .n = s->n};
}

int finch_dpo_stats_json(const finch_dpo_stats *s, const char *prefix, char *buf, size_t n) {
    finch_dpo_stats m;
    finch_dpo_stats_mean(s, &m);
    return snprintf(buf, n,
                    ", \"%srewards/chosen\": %.6f, \"%srewards/rejected\": %.6f, "
                    "\"%srewards/accuracies\": %.4f, \"%srewards/margins\": %.6f, "
                    "\"%slogps/chosen\": %.4f, \"%slogps/rejected\": %.4f",
                    prefix, m.chosen, prefix, m.rejected, prefix, m.accuracy, prefix,
                    m.chosen - m.rejected, prefix, m.logp_chosen, prefix, m.logp_rejected);
}
