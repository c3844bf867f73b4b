/*
 * json.c: JSON documents written as files.
 */
#include "io/io.h"

#include <jansson.h>
#include <stdlib.h>

static finch_status write_text(FILE *f, void *user, finch_err *err) {
    const char **ctx = user; /* {text, path} */
    return finch_fwrite(f, ctx[0], strlen(ctx[0]), ctx[1], err);
}

finch_status finch_json_write_file(const json_t *j, const char *path, finch_err *err) {
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    if (!text) return finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory", path);
    const char *ctx[2] = {text, path};
    finch_status st = finch_file_commit(path, write_text, (void *)ctx, err);
    free(text);
    return st;
}
