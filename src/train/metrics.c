/*
 * metrics.c: metrics.jsonl, the run's log: one JSON object a line, each starting with the
 * optimizer step it belongs to ({"step": N, ...}). Lines are appended whole, one write each
 * (finch_file_append), so a crash or a full disk loses at most the line being written.
 *
 * A run resumed from the checkpoint of step S runs steps S+1, ... again, and logs them again:
 * opening the log for a resumed run first cuts it back to the lines of steps up to S (and
 * drops a torn last line), atomically (finch_file_commit), so the log of an interrupted and
 * resumed run is line for line the uninterrupted run's. Lines that do not start with a step
 * (written by something else) are kept where they are.
 */
#include "train/train.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The step a line starts with ({"step": N), or -1 when it does not start with one. */
static int64_t line_step(const char *p, size_t n) {
    static const char key[] = "{\"step\": ";
    const size_t k = sizeof key - 1;
    if (n <= k || memcmp(p, key, k)) return -1;
    int64_t step = 0;
    size_t i = k;
    for (; i < n && i < k + 18 && p[i] >= '0' && p[i] <= '9'; i++) step = step * 10 + (p[i] - '0');
    return i > k ? step : -1;
}

/* A log cut back to a step: the mapped text, and how many lines it drops. */
typedef struct {
    const char *text;
    size_t size;
    int64_t step;
    const char *path;
    int64_t dropped;
} cut;

/* Writes the lines to keep to f (f NULL: none) and counts the ones dropped: those of later
 * steps, and a last line without its newline. */
static finch_status each_kept(cut *c, FILE *f, finch_err *err) {
    c->dropped = 0;
    for (size_t pos = 0; pos < c->size;) {
        const char *p = c->text + pos, *nl = memchr(p, '\n', c->size - pos);
        if (!nl) { /* torn: the process died inside the write */
            c->dropped++;
            break;
        }
        size_t n = (size_t)(nl - p) + 1;
        pos += n;
        if (line_step(p, n) > c->step) {
            c->dropped++;
            continue;
        }
        finch_status st = f ? finch_fwrite(f, p, n, c->path, err) : FINCH_OK;
        if (st) return st;
    }
    return FINCH_OK;
}

static finch_status write_kept(FILE *f, void *user, finch_err *err) {
    return each_kept(user, f, err);
}

finch_status finch_metrics_open(const char *out_dir, int64_t resume_step, finch_append_file *out,
                                finch_err *err) {
    char path[4200];
    if ((size_t)snprintf(path, sizeof path, "%s/metrics.jsonl", out_dir) >= sizeof path)
        return finch_err_set(err, FINCH_E_RANGE, "%s: path too long", out_dir);
    if (resume_step >= 0 && access(path, F_OK) == 0) {
        finch_mapped_file m;
        finch_status st = finch_file_map(path, &m, err);
        if (st) return finch_err_prefix(err, "resuming the metrics");
        cut c = {(const char *)m.data, m.size, resume_step, path, 0};
        each_kept(&c, NULL, err); /* counts only */
        if (c.dropped) st = finch_file_commit(path, write_kept, &c, err);
        finch_file_unmap(&m);
        if (st) return st;
        if (c.dropped)
            finch_log(FINCH_LOG_INFO,
                      "%s: %lld lines logged after step %lld (the checkpoint resumed from) "
                      "removed: those steps run again",
                      path, (long long)c.dropped, (long long)resume_step);
    }
    return finch_file_append_open(path, resume_step < 0, out, err);
}

/* JSON has no NaN or infinity: a value printf wrote as nan, -nan, inf or -inf (after ": ",
 * before ',' or '}') becomes null, in place. Returns the new length. */
static int non_finite_to_null(char *buf, int n, size_t cap) {
    for (int i = 0; i + 2 < n; i++) {
        if (buf[i] != ':' || buf[i + 1] != ' ') continue;
        int v = i + 2, e = v + (buf[v] == '-');
        if (e + 3 > n || (strncmp(buf + e, "nan", 3) && strncmp(buf + e, "inf", 3))) continue;
        if (e + 3 < n && buf[e + 3] != ',' && buf[e + 3] != '}') continue;
        int grow = 4 - (e + 3 - v); /* "null" over what printf wrote */
        FINCH_ASSERT((size_t)(n + grow) < cap - 1);
        memmove(buf + v + 4, buf + e + 3, (size_t)(n - (e + 3)));
        memcpy(buf + v, "null", 4);
        n += grow;
    }
    return n;
}

finch_status finch_metrics_line(finch_append_file *f, char *buf, size_t cap, finch_err *err,
                                const char *fmt, ...) {
    if (!f || !f->path) return FINCH_OK;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap - 1, fmt, ap);
    va_end(ap);
    FINCH_ASSERT(n > 0 && (size_t)n < cap - 1); /* the caller sized buf for its lines */
    n = non_finite_to_null(buf, n, cap);
    buf[n++] = '\n';
    return finch_file_append(f, buf, (size_t)n, err);
}
