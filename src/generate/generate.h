/*
 * generate.h: sampling. The session and generation calls are public (include/finch.h);
 * the sampler is exposed here so tests and the evaluation module can use it directly.
 */
#ifndef FINCH_GENERATE_H
#define FINCH_GENERATE_H

#include "core/core.h"

/* Picks the next token from logits (V): argmax when temperature <= 0 (the lowest id
 * among equal maxima), else top-k (0 = off), softmax at the temperature, top-p nucleus
 * (1 = off), and a draw from rng. probs (V floats) and idx (V ints) are scratch. */
int32_t finch_sample(const float *logits, int32_t V, float temperature, int top_k, float top_p,
                     finch_rng *rng, float *probs, int32_t *idx);

#endif /* FINCH_GENERATE_H */
