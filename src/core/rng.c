/*
 * rng.c: xoshiro256** (Blackman and Vigna), seeded through splitmix64. Explicit state so
 * every run with the same seed draws the same numbers.
 */
#include "core.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    return finch_mix64(*x += 0x9e3779b97f4a7c15ull);
}

void finch_rng_seed(finch_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t finch_rng_u64(finch_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

float finch_rng_float(finch_rng *r) {
    return (float)(finch_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

float finch_rng_normal(finch_rng *r) {
    /* Box-Muller on two uniforms in (0, 1] and [0, 1) */
    double u1 = ((double)(finch_rng_u64(r) >> 11) + 1.0) * 0x1p-53,
           u2 = (double)(finch_rng_u64(r) >> 11) * 0x1p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
