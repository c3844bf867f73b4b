/*
 * model_util.h: what the model tests share. Include after cmocka.h, jansson.h, finch.h and
 * model/model.h.
 */
#ifndef FINCH_TEST_MODEL_UTIL_H
#define FINCH_TEST_MODEL_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* The token ids of a fixture sequence's "ids" array (malloc'd); *n their count. */
static inline int32_t *seq_ids(json_t *seq, int *n) {
    json_t *jids = json_object_get(seq, "ids");
    *n = (int)json_array_size(jids);
    int32_t *ids = malloc((size_t)*n * sizeof *ids);
    assert_non_null(ids);
    for (int k = 0; k < *n; k++) ids[k] = (int32_t)json_integer_value(json_array_get(jids, k));
    return ids;
}

/* All logits (n, V) of ids (malloc'd), fed through one session: the first `first` tokens,
 * then `step` at a time. */
static inline float *run_split(finch_model *m, const int32_t *ids, int n, int V,
                               finch_numerics numerics, int first, int step) {
    float *got = malloc((size_t)n * V * sizeof *got);
    assert_non_null(got);
    finch_session *s;
    finch_err err;
    if (finch_session_new(m, n, numerics, &s, &err)) fail_msg("%s", err.msg);
    for (int t = 0, k = first; t < n; t += k, k = step) {
        if (k > n - t) k = n - t;
        if (k && finch_session_decode(s, ids + t, k, got + (size_t)t * V, NULL, &err))
            fail_msg("%s", err.msg);
    }
    finch_session_free(s);
    return got;
}

/* In two chunks, so the KV cache between the calls is exercised too. */
static inline float *run_in(finch_model *m, const int32_t *ids, int n, int V,
                            finch_numerics numerics) {
    return run_split(m, ids, n, V, numerics, n / 2, n - n / 2);
}

/* One token at a time: every product takes the few-token path. */
static inline float *run_one_by_one(finch_model *m, const int32_t *ids, int n, int V,
                                    finch_numerics numerics) {
    return run_split(m, ids, n, V, numerics, 1, 1);
}

/* The training forward (model/train.c) on ids, each token predicting the next, has the
 * mean cross-entropy of the reference logits ref (n, V) within tol. */
static inline void check_train_loss(finch_model *m, const int32_t *ids, int n, const float *ref,
                                    const char *name, double tol) {
    const int V = m->cfg.n_vocab;
    int32_t *tgt = malloc((size_t)n * sizeof *tgt), *pos = malloc((size_t)n * sizeof *pos);
    assert_non_null(tgt);
    assert_non_null(pos);
    double want = 0;
    for (int t = 0; t < n; t++) {
        tgt[t] = t + 1 < n ? ids[t + 1] : -1;
        pos[t] = t;
        if (t + 1 == n) continue;
        double mx = -INFINITY, z = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, ref[(size_t)t * V + v]);
        for (int v = 0; v < V; v++) z += exp(ref[(size_t)t * V + v] - mx);
        want += mx + log(z) - ref[(size_t)t * V + tgt[t]];
    }
    want /= n - 1;
    finch_train_acts *a;
    finch_err err;
    if (finch_train_acts_new(m, 1, n, &a, &err)) fail_msg("%s", err.msg);
    double got = finch_model_train_step(m, a, ids, tgt, pos, NULL, 0, 1, false);
    printf("  %s: training loss %.7f, from the reference logits %.7f\n", name, got, want);
    assert_true(fabs(got - want) < tol);
    finch_train_acts_free(a);
    free(tgt);
    free(pos);
}

/* A model test's fixture state: the manifest at path in *manifest, the temporary directory
 * tmp (a mkdtemp template, made) and tmp/train.jsonl with 8 prompt/completion lines.
 * 0, or -1 with the reason on stderr. */
static inline int model_fixture_setup(const char *path, json_t **manifest, char *tmp) {
    json_error_t e;
    *manifest = json_load_file(path, 0, &e);
    if (!*manifest) fprintf(stderr, "%s: line %d: %s\n", path, e.line, e.text);
    if (!*manifest || !mkdtemp(tmp)) return -1;
    char data[400];
    snprintf(data, sizeof data, "%s/train.jsonl", tmp);
    FILE *f = fopen(data, "w");
    if (!f) return -1;
    for (int k = 0; k < 8; k++)
        fprintf(f, "{\"prompt\": \"the cat %d is\", \"completion\": \" singing and %d\"}\n", k,
                7 * k);
    return fclose(f) ? -1 : 0;
}

/* Undoes model_fixture_setup. */
static inline int model_fixture_teardown(json_t *manifest, const char *tmp) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    json_decref(manifest);
    return system(cmd) ? -1 : 0;
}

#endif /* FINCH_TEST_MODEL_UTIL_H */
