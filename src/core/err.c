/*
 * err.c: status names, error messages, assertions, logging and allocation helpers.
 */
#include "core.h"

#include <errno.h>
#include <stdatomic.h>
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

/* Fault injection: the only mutable globals of the library, touched by tests alone. The
 * counters count every allocation (and write) always; the trap fires only when set. */
static _Atomic int64_t alloc_count, alloc_trap, write_count, write_trap;

void finch_fault_alloc_set(int64_t n) {
    atomic_store(&alloc_count, 0);
    atomic_store(&alloc_trap, n);
}

int64_t finch_fault_alloc_count(void) {
    return atomic_load(&alloc_count);
}

void finch_fault_write_set(int64_t n) {
    atomic_store(&write_count, 0);
    atomic_store(&write_trap, n);
}

int64_t finch_fault_write_count(void) {
    return atomic_load(&write_count);
}

static bool alloc_fails(void) {
    int64_t n = atomic_fetch_add(&alloc_count, 1) + 1;
    return n == atomic_load(&alloc_trap);
}

bool finch_fault_write_hit(void) {
    int64_t n = atomic_fetch_add(&write_count, 1) + 1;
    if (n != atomic_load(&write_trap)) return false;
    errno = ENOSPC;
    return true;
}

void *finch_mem_alloc(size_t bytes) {
    return alloc_fails() ? NULL : malloc(bytes ? bytes : 1);
}

void *finch_mem_calloc(size_t n, size_t size) {
    return alloc_fails() ? NULL : calloc(n ? n : 1, size ? size : 1);
}

void *finch_mem_realloc(void *p, size_t bytes) {
    return alloc_fails() ? NULL : realloc(p, bytes ? bytes : 1);
}

char *finch_mem_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = finch_mem_alloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void *finch_alloc(size_t bytes, const char *what, finch_err *err) {
    void *p = finch_mem_alloc(bytes);
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
    void *p = finch_mem_calloc(n, size);
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
    void *p = alloc_fails() ? NULL : aligned_alloc(64, rounded ? rounded : 64);
    if (!p)
        finch_err_set(err, FINCH_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void finch_afree(void *p) {
    free(p);
}
