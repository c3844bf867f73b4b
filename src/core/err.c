/*
 * err.c: status names, error messages, assertions, logging and allocation helpers.
 */
#include "core.h"

#include <stdio.h>
#include <stdlib.h>

static const char *const status_names[FINCH_STATUS_COUNT] = {
    [FINCH_OK] = "ok",
    [FINCH_E_IO] = "io",
    [FINCH_E_FORMAT] = "format",
    [FINCH_E_RANGE] = "range",
    [FINCH_E_UNSUPPORTED] = "unsupported",
    [FINCH_E_NOMEM] = "out of memory",
    [FINCH_E_USAGE] = "usage",
    [FINCH_E_INTERRUPTED] = "interrupted",
};

const char *finch_status_str(finch_status code) {
    if ((unsigned)code >= FINCH_STATUS_COUNT) return "unknown status";
    return status_names[code];
}

void finch_assert_fail(const char *file, int line, const char *cond) {
    fprintf(stderr, "finch: internal error: %s:%d: assertion failed: %s\n", file, line, cond);
    abort();
}

finch_status finch_err_set(finch_err *err, finch_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

finch_status finch_err_prefix(finch_err *err, const char *fmt, ...) {
    if (!err) return FINCH_E_USAGE;
    char head[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = 0;
    /* "<head>: <old>", truncated to the message size */
    size_t hl = strnlen(head, sizeof err->msg - 3), ol = strlen(old);
    memcpy(err->msg, head, hl);
    memcpy(err->msg + hl, ": ", 2);
    if (ol > sizeof err->msg - hl - 3) ol = sizeof err->msg - hl - 3;
    memcpy(err->msg + hl + 2, old, ol);
    err->msg[hl + 2 + ol] = 0;
    return err->code;
}

/* The log callback is process-wide configuration, set once at start-up. */
static finch_log_fn log_fn;
static void *log_user;

void finch_log_set(finch_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
}

void finch_log(finch_log_level level, const char *fmt, ...) {
    if (!log_fn) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_user);
}

void *finch_alloc(size_t bytes, const char *what, finch_err *err) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        finch_err_set(err, FINCH_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *finch_calloc(size_t n, size_t size, const char *what, finch_err *err) {
    size_t bytes;
    if (!finch_size_mul(n, size, &bytes)) {
        finch_err_set(err, FINCH_E_NOMEM, "%s: %zu x %zu bytes overflows", what, n, size);
        return NULL;
    }
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        finch_err_set(err, FINCH_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *finch_aalloc(size_t bytes, const char *what, finch_err *err) {
    size_t rounded;
    if (!finch_size_add(bytes, 63, &rounded)) {
        finch_err_set(err, FINCH_E_NOMEM, "%s: %zu bytes overflows", what, bytes);
        return NULL;
    }
    rounded &= ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p)
        finch_err_set(err, FINCH_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void finch_afree(void *p) {
    free(p);
}
