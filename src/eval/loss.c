/*
 * loss.c: validation loss and perplexity of a model on an instruction dataset: each
 * example runs through an inference session with the logits of every position kept, and
 * the cross-entropy -log softmax(logits)[target] (the backend's fused softmax_xent) is
 * summed in double over the target positions (those data/ marks for loss: completion and
 * end-of-sequence by default).
 */
#include "data/data.h"   /* finch_dataset_load, finch_tokenize_dataset */
#include "model/model.h" /* struct finch_model: its tokenizer */

#include <math.h>
#include <stdlib.h>

finch_status finch_eval_loss(const finch_model *m, const finch_data_spec *spec,
                             finch_numerics numerics,
                             void (*progress)(int64_t done, int64_t total, void *user), void *user,
                             finch_loss_report *out, finch_err *err) {
    if (!m->tok)
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: the model has no tokenizer", m->path);
    int max_len = spec->max_seq_len;
    if (max_len == 0) max_len = m->cfg.n_ctx_train < 256 ? m->cfg.n_ctx_train : 256;
    if (max_len < 2 || max_len > m->cfg.n_ctx_train)
        return finch_err_set(err, FINCH_E_USAGE,
                             "max sequence length %d: must be from 2 to %d (the model's context)",
                             max_len, m->cfg.n_ctx_train);
    finch_data_options opt = {.skip_bad = spec->skip_bad != 0,
                              .seed = spec->seed,
                              .tok = m->tok,
                              .templates = {spec->templates, spec->n_templates, spec->chat != 0}};
    finch_status st = finch_shape_parse(spec->format ? spec->format : "auto", &opt.shape, err);
    if (st) return st;
    finch_dataset *d = NULL;
    int64_t n_read = 0;
    finch_token_set ts = {0};
    finch_session *s = NULL;
    float *logits = NULL;
    int32_t *targets = NULL;
    if ((st = finch_dataset_load(spec->path, &opt, &d, err))) return st;
    n_read = d->n; /* all are freed at the end; only the first max_examples are scored */
    if (spec->max_examples > 0 && d->n > spec->max_examples) d->n = spec->max_examples;
    if ((st = finch_tokenize_dataset(m->tok, d, max_len, spec->train_on_prompt != 0, &ts, err)))
        goto done;
    const int V = m->cfg.n_vocab;
    if ((st = finch_session_new(m, max_len, numerics, &s, err))) goto done;
    logits = finch_alloc((size_t)max_len * V * sizeof(float), "logits", err);
    targets = logits ? finch_alloc((size_t)max_len * sizeof(int32_t), "targets", err) : NULL;
    if (!targets) {
        st = FINCH_E_NOMEM;
        goto done;
    }
    double total = 0;
    int64_t n_targets = 0;
    for (int64_t i = 0; i < ts.n; i++) {
        const finch_token_example *e = &ts.ex[i];
        finch_session_reset(s);
        /* the last id is never an input whose prediction counts */
        if ((st = finch_session_decode(s, e->ids, e->n - 1, logits, NULL, err))) goto done;
        int64_t n = 0;
        for (int32_t k = 0; k + 1 < e->n; k++) {
            targets[k] = e->mask[k + 1] ? e->ids[k + 1] : -1;
            n += targets[k] >= 0;
        }
        total += m->be->softmax_xent(NULL, logits, targets, e->n - 1, V, 0.0f) * (double)n;
        n_targets += n;
        if (progress) progress(i + 1, ts.n, user);
    }
    *out = (finch_loss_report){.loss = total / (double)n_targets,
                               .perplexity = exp(total / (double)n_targets),
                               .n_examples = ts.n,
                               .n_targets = n_targets,
                               .n_truncated = ts.n_truncated,
                               .n_dropped = ts.n_dropped,
                               .n_skipped = d->n_skipped};
done:
    free(targets);
    free(logits);
    finch_session_free(s);
    finch_token_set_release(&ts);
    if (d) d->n = n_read;
    finch_dataset_free(d);
    return st;
}
