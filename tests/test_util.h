/*
 * test_util.h: small helpers shared by the cmocka test programs. Include after cmocka.h.
 */
#ifndef FINCH_TEST_UTIL_H
#define FINCH_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

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

/* The whole file at path as a NUL-terminated string, malloc'd (the test fails if it cannot
 * be read). */
static inline char *read_text(const char *path) {
    size_t n;
    uint8_t *p = read_file(path, &n);
    char *s = realloc(p, n + 1);
    assert_non_null(s);
    s[n] = 0;
    return s;
}

/* The file dir/name as a NUL-terminated string, malloc'd (the test fails if it cannot be
 * read). */
static inline char *read_text_in(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return read_text(path);
}

/* Whether the files at paths a and b (both present) hold the same bytes. */
static inline int same_bytes(const char *a, const char *b) {
    size_t na, nb;
    uint8_t *x = read_file(a, &na), *y = read_file(b, &nb);
    int same = na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* Removes every '"tokens_per_s": <number>, ' field of a metrics.jsonl text (the speed
 * differs from run to run). */
static inline void strip_speed(char *s) {
    for (char *p; (p = strstr(s, "\"tokens_per_s\""));) {
        size_t n = strcspn(p, ",") + 1;
        memmove(p, p + n, strlen(p + n) + 1);
    }
}

/* The training runs in directories a and b logged the same metrics.jsonl (but for their
 * speed) and wrote the same bytes to each of the n files named (relative to each run). */
static inline void same_runs(const char *a, const char *b, const char *const *files, int n) {
    char *ma = read_text_in(a, "metrics.jsonl"), *mb = read_text_in(b, "metrics.jsonl");
    strip_speed(ma);
    strip_speed(mb);
    assert_string_equal(ma, mb);
    free(ma);
    free(mb);
    for (int f = 0; f < n; f++) {
        char pa[1024], pb[1024];
        snprintf(pa, sizeof pa, "%s/%s", a, files[f]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[f]);
        if (!same_bytes(pa, pb)) fail_msg("%s differs from %s", pb, pa);
    }
}

/* Runs the shell command line cmd with stdin from in_text (NULL: empty) and stdout and
 * stderr captured into out (cap bytes, NUL-terminated), through files in dir. Returns the
 * exit code, -1 when the command did not exit. */
static inline int run_capture(const char *dir, const char *cmd, const char *in_text, char *out,
                              size_t cap) {
    char line[8192], inpath[512], outpath[512];
    snprintf(inpath, sizeof inpath, "%s/stdin", dir);
    snprintf(outpath, sizeof outpath, "%s/out", dir);
    FILE *f = fopen(inpath, "w");
    if (!f) fail_msg("cannot write %s", inpath);
    if (in_text) fputs(in_text, f);
    fclose(f);
    if (snprintf(line, sizeof line, "%s <%s >%s 2>&1", cmd, inpath, outpath) >= (int)sizeof line)
        fail_msg("command line too long: %s", cmd);
    int st = system(line);
    f = fopen(outpath, "r");
    if (!f) fail_msg("cannot read %s", outpath);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = 0;
    fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The training tests' memorisable task: six colours and their nouns. */
static const char *const colour_pairs[6][2] = {{"red", " apple"},   {"blue", " sky"},
                                               {"green", " grass"}, {"white", " snow"},
                                               {"black", " night"}, {"gold", " sun"}};

/* Writes the colour pairs as completion lines to path, repeats times over; 0 on success. */
static inline int write_colours(const char *path, int repeats) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (int r = 0; r < repeats; r++)
        for (int i = 0; i < 6; i++)
            fprintf(f, "{\"prompt\": \"color %s:\", \"completion\": \"%s\"}\n", colour_pairs[i][0],
                    colour_pairs[i][1]);
    return fclose(f) ? -1 : 0;
}

#ifdef FINCH_H
#include <unistd.h> /* access */
/* The real default model (FINCH_MODEL, else the cache scripts/setup.sh fills), or NULL
 * when it is not there. */
static inline const char *real_model(void) {
    static char path[4096];
    finch_err err;
    const char *env = getenv("FINCH_MODEL");
    if (env) return env;
    if (finch_default_model_path(path, sizeof path, &err)) return NULL;
    return access(path, R_OK) == 0 ? path : NULL;
}
#endif

#ifdef FINCH_KERNELS_H
/* The CPU backend under test: the one FINCH_CPU names (CTest runs the kernel tests once
 * per instruction set compiled in), else this machine's widest. Exits 77, which CTest
 * counts as skipped, when this CPU lacks the named set. */
static inline const finch_backend *test_backend(void) {
    finch_err err = {0};
    const finch_backend *be = finch_cpu_backend(&err);
    if (!be) {
        printf("skipped: %s\n", err.msg);
        exit(77);
    }
    printf("backend %s\n", be->name);
    return be;
}

/* For a test compiled against one copy of kernels/cpu/ (-DFINCH_ISA=set): exits 77 when
 * this CPU cannot run that copy. */
static inline void test_require_isa(const char *name) {
    for (int i = 0; i < finch_cpu_isa_count(); i++)
        if (!strcmp(finch_cpu_isa_name(i), name)) {
            if (finch_cpu_isa_supported(i)) return;
            printf("skipped: this CPU lacks %s\n", name);
            exit(77);
        }
    fail_msg("instruction set %s is not compiled in", name);
}
#endif

#endif /* FINCH_TEST_UTIL_H */
