/*
 * test_util.h: small helpers shared by the cmocka test programs. Include after cmocka.h.
 */
#ifndef FINCH_TEST_UTIL_H
#define FINCH_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The whole file at path, malloc'd (the test fails if it cannot be read); *size its length. */
static inline uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return p;
}

#endif /* FINCH_TEST_UTIL_H */
