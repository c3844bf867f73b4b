/*
 * json.c: jansson's allocations through core's hooks, and JSON documents written as files.
 */
#include "io/io.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>

static pthread_once_t json_once = PTHREAD_ONCE_INIT;
/* per thread: open stretches, and whether an allocation of the outermost one failed */
static _Thread_local int json_depth;
static _Thread_local bool json_failed;

static void *json_alloc(size_t bytes) {
    if (json_depth && json_failed) return NULL;
    void *p = finch_mem_alloc(bytes);
    if (!p && json_depth) json_failed = true;
    return p;
}

static void json_hook(void) {
    json_set_alloc_funcs(json_alloc, free);
}

void finch_json_begin(void) {
    pthread_once(&json_once, json_hook);
    if (json_depth++ == 0) json_failed = false;
}

bool finch_json_end(void) {
    FINCH_ASSERT(json_depth > 0);
    bool failed = json_failed;
    if (--json_depth == 0) json_failed = false;
    return failed;
}

/* The end of a parse's stretch: FINCH_E_NOMEM (dropping what jansson returned) when one of
 * its allocations failed. */
static finch_status loaded(json_t **out, const char *name, finch_err *err) {
    if (!finch_json_end()) return FINCH_OK;
    json_decref(*out);
    *out = NULL;
    return finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory reading JSON", name);
}

finch_status finch_json_loadb(const char *text, size_t len, size_t flags, const char *name,
                              json_t **out, json_error_t *je, finch_err *err) {
    finch_json_begin();
    *out = json_loadb(text, len, flags, je);
    return loaded(out, name, err);
}

finch_status finch_json_load_file(const char *path, size_t flags, json_t **out, json_error_t *je,
                                  finch_err *err) {
    finch_json_begin();
    *out = json_load_file(path, flags, je);
    return loaded(out, path, err);
}

static finch_status write_text(FILE *f, void *user, finch_err *err) {
    const char **ctx = user; /* {text, path} */
    return finch_fwrite(f, ctx[0], strlen(ctx[0]), ctx[1], err);
}

finch_status finch_json_write_file(const json_t *j, const char *path, finch_err *err) {
    finch_json_begin();
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    if (finch_json_end() || !text) {
        free(text);
        return finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory", path);
    }
    const char *ctx[2] = {text, path};
    finch_status st = finch_file_commit(path, write_text, (void *)ctx, err);
    free(text);
    return st;
}
