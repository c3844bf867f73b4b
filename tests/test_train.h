/*
 * test_train.h: what the training tests share: the tiny model, loaded once per program
 * (setup_tiny / teardown_tiny), and batches read from reference JSON. Include after
 * cmocka.h.
 */
#ifndef FINCH_TEST_TRAIN_H
#define FINCH_TEST_TRAIN_H

#include <jansson.h>

#include "model/model.h"

static finch_model *model;

static inline int setup_tiny(void **state) {
    (void)state;
    finch_err err;
    finch_threads_set(2);
    return finch_model_load(FINCH_FIXTURES "/model/tiny_llama.gguf", &model, &err) ? -1 : 0;
}

static inline int teardown_tiny(void **state) {
    (void)state;
    finch_model_free(model);
    return 0;
}

/* A reference batch {"ids": [[...]], "targets": [[...]]}: ids, targets (B, T) and
 * positions 0..T-1 of each row. */
static inline void json_batch(json_t *obj, int32_t *ids, int32_t *tg, int32_t *pos, int *B, int *T) {
    json_t *ji = json_object_get(obj, "ids"), *jt = json_object_get(obj, "targets");
    *B = (int)json_array_size(ji);
    *T = (int)json_array_size(json_array_get(ji, 0));
    for (int b = 0; b < *B; b++)
        for (int t = 0; t < *T; t++) {
            ids[b * *T + t] = (int32_t)json_integer_value(json_array_get(json_array_get(ji, b), t));
            tg[b * *T + t] = (int32_t)json_integer_value(json_array_get(json_array_get(jt, b), t));
            pos[b * *T + t] = t;
        }
}

#endif /* FINCH_TEST_TRAIN_H */
