/*
 * progress.c: the progress line of long-running commands: a bar with done/total, rate
 * and time left, redrawn in place when stderr is a terminal, a single summary line when
 * it is not (logs stay readable).
 */
#include "cli.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds as m:ss or h:mm:ss. */
static void fmt_time(char *buf, size_t n, double s) {
    long t = s < 0 ? 0 : (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

/* A count (whole) or a rate for people: as it is below 10,000 (a rate with 2 decimals
 * below 100), else with a unit: 268.1 M, 77.9 M/s. */
static void fmt_count(char *buf, size_t n, double v, bool whole) {
    static const char *unit[] = {"k", "M", "G", "T"};
    if (v < 1e4) {
        snprintf(buf, n, whole || v >= 100 ? "%.0f" : "%.2f", v);
        return;
    }
    int u = 0;
    for (v /= 1e3; v >= 1e3 && u < 3; u++) v /= 1e3;
    snprintf(buf, n, "%.1f %s", v, unit[u]);
}

/* done, total and the rate, formatted. */
typedef struct {
    char done[32], total[32], rate[32];
} counts;

static counts fmt_counts(const cli_progress *p, double rate) {
    counts c;
    fmt_count(c.done, sizeof c.done, (double)p->done, true);
    fmt_count(c.total, sizeof c.total, (double)p->total, true);
    fmt_count(c.rate, sizeof c.rate, rate, false);
    return c;
}

static void draw(cli_progress *p, double t) {
    enum { WIDTH = 24 };
    double el = t - p->t0, rate = el > 0 ? (double)p->done / el : 0;
    int fill = p->total > 0 ? (int)(WIDTH * p->done / p->total) : 0;
    char bar[WIDTH + 1], eta[32], spent[32];
    for (int i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = 0;
    fmt_time(spent, sizeof spent, el);
    if (rate > 0)
        fmt_time(eta, sizeof eta, (double)(p->total - p->done) / rate);
    else
        snprintf(eta, sizeof eta, "?");
    const counts c = fmt_counts(p, rate);
    fprintf(stderr, "\r\033[K%s [%s] %s/%s  %s/s  %s elapsed, ETA %s", p->label, bar, c.done,
            c.total, c.rate, spent, eta);
    fflush(stderr);
    p->last_draw = t;
}

void cli_progress_begin(cli_progress *p, const char *label, int64_t total) {
    *p = (cli_progress){.label = label, .total = total, .t0 = now_s(), .tty = isatty(2) != 0};
    if (p->tty && total > 0) draw(p, p->t0);
}

void cli_progress_update(cli_progress *p, int64_t done) {
    p->done = done;
    if (!p->tty) return;
    double t = now_s();
    if (t - p->last_draw >= 0.1 || done == p->total) draw(p, t);
}

void cli_progress_end(cli_progress *p) {
    double t = now_s(), el = t - p->t0;
    if (p->tty) {
        draw(p, t);
        fputc('\n', stderr);
    } else {
        const counts c = fmt_counts(p, el > 0 ? (double)p->done / el : 0.0);
        fprintf(stderr, "%s: %s/%s in %.1f s (%s/s)\n", p->label, c.done, c.total, el, c.rate);
    }
}
