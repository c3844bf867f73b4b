/*
 * svg.c: the text buffer the report is assembled in, HTML escaping, and line charts drawn
 * as inline SVG (axes, ticks, grid, legend, one polyline per series) for finch report.
 *
 * Not here: what is plotted (report.c). The charts need no script and no font beyond the
 * page's own: everything is SVG 1.1 elements styled by attributes, so the page renders
 * the same offline in any browser.
 */
#include "eval/eval.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- text buffer -------------------------------------------------------------------- */

/* Makes room for n more bytes plus the NUL; false (oom set) when that fails. */
static bool reserve(finch_buf *b, size_t n) {
    if (b->oom) return false;
    size_t need;
    if (!finch_size_add(b->n, n, &need) || !finch_size_add(need, 1, &need)) {
        b->oom = true;
        return false;
    }
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) {
        if (!finch_size_mul(cap, 2, &cap)) {
            b->oom = true;
            return false;
        }
    }
    char *p = finch_mem_realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void finch_buf_put(finch_buf *b, const char *s, size_t n) {
    if (!reserve(b, n)) return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void finch_buf_puts(finch_buf *b, const char *s) {
    finch_buf_put(b, s, strlen(s));
}

void finch_buf_printf(finch_buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        finch_buf_put(b, small, (size_t)n);
        return;
    }
    if (!reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

void finch_buf_html(finch_buf *b, const char *s) {
    const char *run = s;
    for (const char *p = s;; p++) {
        unsigned char c = (unsigned char)*p;
        const char *ent = NULL;
        if (c == '&')
            ent = "&amp;";
        else if (c == '<')
            ent = "&lt;";
        else if (c == '>')
            ent = "&gt;";
        else if (c == '"')
            ent = "&quot;";
        else if (c == '\'')
            ent = "&#39;";
        else if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c) || c == 0x7f)
            ent = "&#xFFFD;";
        if (!ent && c) continue;
        finch_buf_put(b, run, (size_t)(p - run));
        if (!c) break;
        finch_buf_puts(b, ent);
        run = p + 1;
    }
}

void finch_buf_free(finch_buf *b) {
    free(b->p);
    *b = (finch_buf){0};
}

/* ---- axes --------------------------------------------------------------------------- */

/* Ticks over [lo, hi]: a step of 1, 2 or 5 times a power of ten giving about five
 * intervals, and the outer ticks at the multiples of it just outside the data. */
typedef struct {
    double lo, hi, step;
    int n; /* ticks: lo + i * step for i in [0, n) */
} ticks;

static ticks nice_ticks(double lo, double hi) {
    if (!(hi > lo)) { /* one value: a unit-wide (or 10%-wide) band around it */
        double pad = fabs(lo) > 0 ? fabs(lo) * 0.1 : 1.0;
        lo -= pad;
        hi += pad;
    }
    double raw = (hi - lo) / 5, mag = pow(10, floor(log10(raw))), norm = raw / mag;
    double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
    ticks t = {floor(lo / step) * step, ceil(hi / step) * step, step, 0};
    t.n = (int)llround((t.hi - t.lo) / step) + 1;
    return t;
}

/* A tick label: as many decimals as the step needs (the same on every tick of an axis:
 * 0.00005, 0.00010, 0.00015), exponent form only for extreme steps. */
static void tick_label(char *buf, size_t size, double v, double step) {
    if (fabs(v) < step * 1e-6) { /* no "-0" or "1e-17" from lo + i * step */
        snprintf(buf, size, "0");
        return;
    }
    if (step < 1e-6 || fabs(v) >= 1e7) {
        snprintf(buf, size, "%.3g", v);
    } else {
        int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
        snprintf(buf, size, "%.*f", dec, v);
    }
}

/* ---- the chart ---------------------------------------------------------------------- */

void finch_svg_plot_render(finch_buf *b, const finch_svg_plot *p) {
    const double W = p->width, H = p->height;
    const double L = FINCH_SVG_LEFT, R = W - FINCH_SVG_RIGHT, T = FINCH_SVG_TOP,
                 B = H - FINCH_SVG_BOTTOM;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int s = 0; s < p->n_series; s++)
        for (size_t i = 0; i < p->series[s].n; i++) {
            double x = p->series[s].x[i], y = p->series[s].y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            xmin = fmin(xmin, x);
            xmax = fmax(xmax, x);
            ymin = fmin(ymin, y);
            ymax = fmax(ymax, y);
        }
    finch_buf_printf(
        b,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 %d %d\" "
        "width=\"%d\" height=\"%d\" role=\"img\" font-family=\"inherit\" font-size=\"11\">\n",
        p->width, p->height, p->width, p->height);
    finch_buf_puts(
        b, "<text x=\"12\" y=\"20\" font-size=\"13\" font-weight=\"600\" fill=\"#1f2937\">");
    finch_buf_html(b, p->title ? p->title : "");
    finch_buf_puts(b, "</text>\n");
    if (!(xmin <= xmax)) {
        finch_buf_printf(
            b,
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#6b7280\">no data "
            "logged</text>\n</svg>\n",
            W / 2, H / 2);
        return;
    }
    ticks tx = nice_ticks(xmin, xmax), ty = nice_ticks(ymin, ymax);
    /* x -> L + (x - x0) / (x1 - x0) * (R - L);  y -> B - (y - y0) / (y1 - y0) * (B - T) */
    const double sx = (R - L) / (tx.hi - tx.lo), sy = (B - T) / (ty.hi - ty.lo);
    finch_buf_printf(b,
                     "<g class=\"plot\" data-x0=\"%.17g\" data-x1=\"%.17g\" data-y0=\"%.17g\" "
                     "data-y1=\"%.17g\">\n",
                     tx.lo, tx.hi, ty.lo, ty.hi);
    finch_buf_printf(b,
                     "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#fbfcfe\" "
                     "stroke=\"#d1d5db\"/>\n",
                     L, T, R - L, B - T);
    char lab[64];
    for (int i = 0; i < ty.n; i++) {
        double v = ty.lo + i * ty.step, py = B - (v - ty.lo) * sy;
        tick_label(lab, sizeof lab, v, ty.step);
        finch_buf_printf(
            b,
            "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"#e5e7eb\"/>"
            "<text x=\"%.1f\" y=\"%.2f\" text-anchor=\"end\" dominant-baseline=\"middle\" "
            "fill=\"#4b5563\">%s</text>\n",
            L, py, R, py, L - 6, py, lab);
    }
    for (int i = 0; i < tx.n; i++) {
        double v = tx.lo + i * tx.step, px = L + (v - tx.lo) * sx;
        tick_label(lab, sizeof lab, v, tx.step);
        finch_buf_printf(
            b,
            "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\" stroke=\"#e5e7eb\"/>"
            "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\" stroke=\"#9ca3af\"/>"
            "<text x=\"%.2f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#4b5563\">%s</text>\n",
            px, T, px, B, px, B, px, B + 4, px, B + 16, lab);
    }
    /* axis titles */
    finch_buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#374151\">",
                     (L + R) / 2, H - 8);
    finch_buf_html(b, p->x_label ? p->x_label : "");
    finch_buf_printf(
        b,
        "</text>\n<text transform=\"translate(14 %.1f) rotate(-90)\" text-anchor=\"middle\" "
        "fill=\"#374151\">",
        (T + B) / 2);
    finch_buf_html(b, p->y_label ? p->y_label : "");
    finch_buf_puts(b, "</text>\n");
    for (int s = 0; s < p->n_series; s++) {
        const finch_svg_series *se = &p->series[s];
        if (se->stroke > 0) {
            finch_buf_printf(
                b,
                "<polyline class=\"series\" data-series=\"%d\" fill=\"none\" stroke=\"%s\" "
                "stroke-width=\"%.2g\" stroke-opacity=\"%.2g\" stroke-linejoin=\"round\" points=\"",
                s, se->color, se->stroke, se->opacity);
            bool first = true;
            for (size_t i = 0; i < se->n; i++) {
                if (!isfinite(se->x[i]) || !isfinite(se->y[i])) continue;
                finch_buf_printf(b, "%s%.2f,%.2f", first ? "" : " ", L + (se->x[i] - tx.lo) * sx,
                                 B - (se->y[i] - ty.lo) * sy);
                first = false;
            }
            finch_buf_puts(b, "\"/>\n");
        }
        if (se->markers)
            for (size_t i = 0; i < se->n; i++) {
                if (!isfinite(se->x[i]) || !isfinite(se->y[i])) continue;
                finch_buf_printf(
                    b,
                    "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"3\" fill=\"%s\" stroke=\"#fff\">"
                    "<title>%g: %.4g</title></circle>\n",
                    L + (se->x[i] - tx.lo) * sx, B - (se->y[i] - ty.lo) * sy, se->color, se->x[i],
                    se->y[i]);
            }
    }
    finch_buf_puts(b, "</g>\n");
    /* legend, right-aligned on the title line; about 6.5 px per character at 11 px */
    double lx = R;
    for (int s = p->n_series - 1; s >= 0; s--) {
        const finch_svg_series *se = &p->series[s];
        if (!se->label) continue;
        lx -= 6.5 * (double)strlen(se->label) + 26;
        finch_buf_printf(b,
                         "<g class=\"legend\"><line x1=\"%.1f\" y1=\"16\" x2=\"%.1f\" y2=\"16\" "
                         "stroke=\"%s\" stroke-width=\"%.2g\" stroke-opacity=\"%.2g\"/>",
                         lx, lx + 16, se->color, se->stroke > 0 ? fmax(se->stroke, 2) : 2,
                         se->stroke > 0 ? fmax(se->opacity, 0.5) : 1);
        if (se->markers)
            finch_buf_printf(b, "<circle cx=\"%.1f\" cy=\"16\" r=\"3\" fill=\"%s\"/>", lx + 8,
                             se->color);
        finch_buf_printf(
            b, "<text x=\"%.1f\" y=\"16\" dominant-baseline=\"middle\" fill=\"#374151\">", lx + 21);
        finch_buf_html(b, se->label);
        finch_buf_puts(b, "</text></g>\n");
    }
    finch_buf_puts(b, "</svg>\n");
}
