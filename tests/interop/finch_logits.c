/* finch_interop_logits: the logits finch computes for given token ids, for the live
 * interoperability checks (tests/interop/), through the public API only.
 *
 *   finch_interop_logits MODEL OUT.f32 [--adapter DIR[:WEIGHT]]... < ids.txt
 *
 * Each line of standard input is one sequence of token ids (decimal, space-separated),
 * run from position 0 in exact numerics. OUT.f32 receives the logits of every position of
 * every sequence, one after the other, as little-endian float32 rows of n_vocab values.
 * Standard output gets "n_vocab N". OUT.f32 is written as OUT.f32.part and renamed into
 * place when complete. Exit status 0, 1 on errors (message on stderr), 2 on usage errors. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finch.h"

#define MAX_ADAPTERS 8
#define MAX_IDS 4096

static int fail(const char *what, const finch_err *err) {
    fprintf(stderr, "finch_interop_logits: error: %s: %s\n", what, err->msg);
    return 1;
}

/* Parses one line of ids into ids[]; returns the count, or -1 (message printed). */
static int parse_ids(char *line, int line_no, int32_t n_vocab, int32_t *ids) {
    int n = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) {
        char *end;
        errno = 0;
        long v = strtol(tok, &end, 10);
        if (errno || *end || v < 0 || v >= n_vocab) {
            fprintf(stderr, "finch_interop_logits: error: stdin:%d: '%s' is not a token id "
                    "in [0, %d)\n", line_no, tok, (int)n_vocab);
            return -1;
        }
        if (n == MAX_IDS) {
            fprintf(stderr, "finch_interop_logits: error: stdin:%d: more than %d ids\n",
                    line_no, MAX_IDS);
            return -1;
        }
        ids[n++] = (int32_t)v;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 3 || (argc - 3) % 2) {
        fprintf(stderr, "usage: finch_interop_logits MODEL OUT.f32 [--adapter DIR[:WEIGHT]]... "
                "< ids.txt\n");
        return 2;
    }
    finch_err err;
    finch_model *m = NULL;
    if (finch_model_load(argv[1], &m, &err)) return fail(argv[1], &err);

    finch_adapter *ads[MAX_ADAPTERS];
    int n_ads = 0, n_attached = 0, rc = 1;
    for (int i = 3; i < argc; i += 2) {
        if (strcmp(argv[i], "--adapter") || n_ads == MAX_ADAPTERS) {
            fprintf(stderr, "finch_interop_logits: error: expected --adapter DIR[:W] (at most "
                    "%d), got '%s'\n", MAX_ADAPTERS, argv[i]);
            rc = 2;
            goto done;
        }
        /* DIR[:WEIGHT]: a trailing ":number" is the weight. */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", argv[i + 1]);
        float w = 1.0f;
        char *colon = strrchr(dir, ':');
        if (colon) {
            char *end;
            float v = strtof(colon + 1, &end);
            if (end != colon + 1 && !*end) {
                w = v;
                *colon = '\0';
            }
        }
        if (finch_adapter_load(m, dir, &ads[n_ads], &err)) {
            fail(dir, &err);
            goto done;
        }
        n_ads++;
        if (finch_adapter_attach(m, ads[n_ads - 1], w, &err)) {
            fail(dir, &err);
            goto done;
        }
        n_attached++;
    }

    /* the model's vocabulary: a folder finch wrote may have no tokenizer */
    finch_model_config cfg;
    finch_model_config_get(m, &cfg);
    int32_t n_vocab = cfg.n_vocab;
    int32_t *ids = malloc(sizeof *ids * MAX_IDS);
    float *logits = NULL;
    char part[4096];
    snprintf(part, sizeof part, "%s.part", argv[2]);
    FILE *out = fopen(part, "wb");
    if (!ids || !out) {
        fprintf(stderr, "finch_interop_logits: error: %s: %s\n", part, strerror(errno));
        goto close;
    }
    char line[65536];
    int line_no = 0;
    rc = 0;
    while (!rc && fgets(line, sizeof line, stdin)) {
        int n = parse_ids(line, ++line_no, n_vocab, ids);
        if (n <= 0) {
            rc = n < 0;
            continue;
        }
        finch_session *s = NULL;
        float *grown = realloc(logits, sizeof *logits * (size_t)n * (size_t)n_vocab);
        if (!grown) {
            fprintf(stderr, "finch_interop_logits: error: out of memory\n");
            rc = 1;
            break;
        }
        logits = grown;
        if (finch_session_new(m, n, FINCH_NUMERICS_EXACT, &s, &err) ||
            finch_session_decode(s, ids, n, logits, NULL, &err)) {
            rc = fail("decode", &err);
        } else if (fwrite(logits, sizeof *logits * (size_t)n_vocab, (size_t)n, out) != (size_t)n) {
            fprintf(stderr, "finch_interop_logits: error: %s: write failed\n", argv[2]);
            rc = 1;
        }
        finch_session_free(s);
    }
    if (fclose(out) && !rc) {
        fprintf(stderr, "finch_interop_logits: error: %s: %s\n", part, strerror(errno));
        rc = 1;
    }
    out = NULL;
    if (!rc && rename(part, argv[2])) {
        fprintf(stderr, "finch_interop_logits: error: %s: %s\n", argv[2], strerror(errno));
        rc = 1;
    }
    if (rc) remove(part);
    if (!rc) printf("n_vocab %d\n", (int)n_vocab);
close:
    if (out) fclose(out);
    free(logits);
    free(ids);
done:
    for (int i = 0; i < n_ads; i++) {
        if (i < n_attached) finch_adapter_detach(m, ads[i]);
        finch_adapter_free(ads[i]);
    }
    finch_model_free(m);
    return rc;
}
