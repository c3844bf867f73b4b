/*
 * eval.h: what the files of eval/ share: token sequences interned to ids, n-gram ids,
 * Python's notion of whitespace, and the Porter stemmer. The metrics themselves are
 * public (include/finch.h, "Evaluation metrics").
 */
#ifndef FINCH_EVAL_H
#define FINCH_EVAL_H

#include "core/core.h"   /* finch_err_set, finch_alloc, finch_size_* */
#include "model/model.h" /* finch_kv_session, for the model-running helpers */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Stems the lowercase ASCII word in[0..n) as nltk's PorterStemmer (NLTK_EXTENSIONS
 * mode) does; out has room for n + 8 bytes and may equal in. Returns the stem's length. */
size_t finch_porter_stem(char *out, const char *in, size_t n);

/* Bytes of the whitespace character at s (what Python's str.split() splits on: ASCII
 * \t\n\v\f\r, \x1c-\x1f, space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
 * U+202F, U+205F, U+3000), or 0 when s (before end) does not start with one. */
size_t finch_utf8_space(const char *s, const char *end);

/* Sequences of tokens (byte strings, borrowed), then interned: equal strings get equal
 * ids, and n-grams of any order get ids the same way. */
typedef struct {
    const char **s; /* token bytes (borrowed) */
    size_t *len;    /* token lengths */
    size_t n, cap;  /* tokens */
    size_t *off;    /* sequence k is tokens off[k] .. off[k+1] */
    size_t n_seq, seq_cap;
    int32_t *ids; /* after finch_toks_intern: ids[n], in [0, n_ids) */
    int32_t n_ids;
} finch_toks;

/* Starts a new, empty sequence. */
finch_status finch_toks_begin(finch_toks *t, finch_err *err);
/* Appends a token to the current sequence. */
finch_status finch_toks_push(finch_toks *t, const char *s, size_t len, finch_err *err);
/* Starts a new sequence holding the words of s[0..n): the runs between whitespace (as
 * finch_utf8_space defines it), as Python's str.split() makes them. The tokens borrow s. */
finch_status finch_toks_push_words(finch_toks *t, const char *s, size_t n, finch_err *err);
/* Assigns ids to all tokens. */
finch_status finch_toks_intern(finch_toks *t, finch_err *err);
void finch_toks_free(finch_toks *t);

static inline size_t finch_toks_len(const finch_toks *t, size_t k) {
    return t->off[k + 1] - t->off[k];
}

/* Given ids of the (order-1)-grams starting at each token (prev, -1 where none) fills
 * next with ids of order-grams (-1 where the sequence ends too soon); *n_ids the count. */
finch_status finch_toks_ngrams(const finch_toks *t, const int32_t *prev, int order, int32_t *next,
                               int32_t *n_ids, finch_err *err);

/* ---- the HTML report (report.c, svg.c) ---------------------------------------------- */

/* A growing text buffer. Appends never fail: running out of memory sets oom (and stops
 * appending), checked once at the end. */
typedef struct {
    char *p;  /* NUL-terminated text (NULL while empty) */
    size_t n; /* bytes, without the NUL */
    size_t cap;
    bool oom;
} finch_buf;

void finch_buf_put(finch_buf *b, const char *s, size_t n);
void finch_buf_puts(finch_buf *b, const char *s);
void finch_buf_printf(finch_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s with &, <, >, " and ' as HTML entities and control characters other than
 * tab, newline and carriage return as U+FFFD, so any text is safe in an element or a
 * quoted attribute. */
void finch_buf_html(finch_buf *b, const char *s);
void finch_buf_free(finch_buf *b);

/* One line of a plot: n points (x[i], y[i]); points with a non-finite coordinate are left
 * out. Borrowed by the plot. */
typedef struct {
    const double *x, *y;
    size_t n;
    const char *label; /* legend text */
    const char *color; /* CSS colour */
    double stroke;     /* line width in px; 0: markers only */
    double opacity;    /* of the line, 0..1 */
    bool markers;      /* a dot at every point */
} finch_svg_series;

/* Pixel margins of the plot area inside the SVG (axes, tick labels, title, legend). */
enum { FINCH_SVG_LEFT = 72, FINCH_SVG_RIGHT = 18, FINCH_SVG_TOP = 40, FINCH_SVG_BOTTOM = 46 };

typedef struct {
    const char *title, *x_label, *y_label;
    int width, height; /* of the SVG, px */
    const finch_svg_series *series;
    int n_series;
} finch_svg_plot;

/* Appends an inline <svg> line chart: axes with "nice" ticks (1, 2 or 5 times a power of
 * ten) whose outer ticks bound the data, grid lines, axis labels, a legend, and one
 * <polyline> per series with one point per finite (x, y). The plot area is the SVG less
 * the FINCH_SVG_* margins; x maps linearly from [x0, x1] to [LEFT, width - RIGHT] and y
 * from [y0, y1] to [height - BOTTOM, TOP], with the domain written on the plot's <g> as
 * data-x0, data-x1, data-y0, data-y1. A plot with no finite point says so instead. */
void finch_svg_plot_render(finch_buf *b, const finch_svg_plot *p);

/* Renders the report of run_dir (see finch_report_write) into out, which the caller
 * frees with finch_buf_free. */
finch_status finch_report_render(const char *run_dir, const char *const *eval_paths, int n_eval,
                                 finch_buf *out, finch_err *err);

/* ---- running the model (labels.c, generate_eval.c) ---------------------------------- */

/* Runs ids[0..n) through the model at the session's next positions in chunks of its batch
 * size (n >= 1, capacity checked by the caller). all (n x V) receives every position's
 * logits, last (V) the last position's; either may be NULL. FINCH_E_IO when a device
 * session met a device error. */
finch_status finch_eval_decode(const finch_model *m, finch_kv_session *kv, const int32_t *ids,
                               int n, float *all, float *last, finch_err *err);

/* log softmax(row)[id] over V logits, in double. */
double finch_eval_logprob(const float *row, int V, int32_t id);

/* Text without leading and trailing ASCII whitespace, malloc'd (NULL when out of memory). */
char *finch_eval_strip(const char *s);

#endif /* FINCH_EVAL_H */
