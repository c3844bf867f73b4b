/*
 * test_report.c: the HTML run report (eval/report.c, eval/svg.c): the page made from the
 * fixture run directory (tests/fixtures/report/run: the metrics.jsonl of a 60-step WordNet
 * run, its run.json and adapter_config.json, and an evaluation file whose ROUGE and BLEU
 * come from rouge-score and sacrebleu, made by tests/reference/make_report_fixture.py):
 * one polyline point per logged step, each at the coordinate the linear axis map gives,
 * every hostile sample text escaped, nothing loaded from outside the page; the chart on
 * its own (nice domains, non-finite points left out, empty plots); missing files named on
 * the page; and every kind of bad input refused with the file and line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "eval/eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RUN_FIXTURE FINCH_FIXTURES "/report/run"

/* The fixture's metrics.jsonl: steps 5, 10, ..., 60 with these training losses and
 * learning rates; validation at steps 20, 40, 60. */
static const double fx_loss[12] = {3.781758, 3.663287, 3.119716, 2.937602, 3.264544, 2.615477,
                                   2.605694, 2.672120, 2.788449, 3.065653, 2.852036, 2.514410};
static const double fx_val[3] = {3.095313, 2.964128, 2.951598};

static char tmpdir[] = "/tmp/finch_report_XXXXXX";

static void write_file(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A fresh empty directory tmpdir/name. */
static const char *subdir(const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    mkdir(path, 0755);
    return path;
}

static char *render(const char *dir, const char *const *evals, int n) {
    finch_buf b = {0};
    finch_err err = {0};
    if (finch_report_render(dir, evals, n, &b, &err)) fail_msg("%s: %s", dir, err.msg);
    assert_non_null(b.p);
    return b.p;
}

static size_t count(const char *s, const char *what) {
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what)) n++;
    return n;
}

/* The k-th (from 0) plot in page: its domain and the points of its series s. */
typedef struct {
    double x0, x1, y0, y1;
    double px[256], py[256];
    int n;
} plot_pts;

static bool get_plot(const char *page, int k, int s, plot_pts *out) {
    const char *g = page;
    for (int i = 0; i <= k; i++) {
        if (!(g = strstr(g, "<g class=\"plot\""))) return false;
        if (i < k) g++;
    }
    assert_int_equal(
        sscanf(g,
               "<g class=\"plot\" data-x0=\"%lf\" data-x1=\"%lf\" data-y0=\"%lf\" data-y1=\"%lf\"",
               &out->x0, &out->x1, &out->y0, &out->y1),
        4);
    const char *end = strstr(g, "</g>\n");
    char tag[64];
    snprintf(tag, sizeof tag, "data-series=\"%d\"", s);
    const char *pl = strstr(g, tag);
    if (!pl || pl > end) return false;
    const char *p = strstr(pl, "points=\"") + 8;
    out->n = 0;
    while (*p != '"') {
        int used;
        assert_true(out->n < 256);
        assert_int_equal(sscanf(p, "%lf,%lf%n", &out->px[out->n], &out->py[out->n], &used), 2);
        out->n++;
        p += used;
        while (*p == ' ') p++;
    }
    return true;
}

/* Checks that points are (x[i], y[i]) under the plot's linear map, to the 0.005 px the
 * two-decimal coordinates allow. */
static void check_map(const plot_pts *pp, int width, int height, const double *x, const double *y,
                      int n) {
    assert_int_equal(pp->n, n);
    double L = FINCH_SVG_LEFT, R = width - FINCH_SVG_RIGHT, T = FINCH_SVG_TOP,
           B = height - FINCH_SVG_BOTTOM;
    for (int i = 0; i < n; i++) {
        double ex = L + (x[i] - pp->x0) / (pp->x1 - pp->x0) * (R - L);
        double ey = B - (y[i] - pp->y0) / (pp->y1 - pp->y0) * (B - T);
        if (fabs(pp->px[i] - ex) > 0.0051 || fabs(pp->py[i] - ey) > 0.0051)
            fail_msg("point %d: (%.3f, %.3f), expected (%.3f, %.3f)", i, pp->px[i], pp->py[i], ex,
                     ey);
    }
}

static void test_fixture_page(void **state) {
    (void)state;
    char *page = render(RUN_FIXTURE, NULL, 0);
    assert_true(!strncmp(page, "<!DOCTYPE html>", 15));
    assert_non_null(strstr(page, "</html>\n"));
    /* self-contained: no scripts, links, imports or remote resources */
    assert_null(strstr(page, "<script"));
    assert_null(strstr(page, "<link"));
    assert_null(strstr(page, "@import"));
    assert_null(strstr(page, "src="));
    assert_null(strstr(page, "href="));
    assert_int_equal(count(page, "http"), count(page, "xmlns=\"http://www.w3.org/2000/svg\""));

    /* loss chart (plot 0): raw and smoothed training loss, one point per logged step */
    double steps[12], vsteps[3] = {20, 40, 60};
    for (int i = 0; i < 12; i++) steps[i] = 5.0 * (i + 1);
    plot_pts pp;
    assert_true(get_plot(page, 0, 0, &pp));
    assert_true(pp.x0 == 0 && pp.x1 == 60); /* ticks of 10 around 5..60 */
    assert_true(fabs(pp.y0 - 2.4) < 1e-12 &&
                fabs(pp.y1 - 3.8) < 1e-12); /* of 0.2 around 2.51..3.78 */
    check_map(&pp, 1100, 340, steps, fx_loss, 12);
    assert_true(get_plot(page, 0, 1, &pp));
    assert_int_equal(pp.n, 12);
    assert_true(get_plot(page, 0, 2, &pp));
    check_map(&pp, 1100, 340, vsteps, fx_val, 3);
    /* learning rate (plot 1) */
    static const double lr[12] = {0.0008,        0.00092727273, 0.00083636364, 0.00074545455,
                                  0.00065454545, 0.00056363636, 0.00047272727, 0.00038181818,
                                  0.00029090909, 0.0002,        0.00010909091, 1.8181818e-05};
    assert_true(get_plot(page, 1, 0, &pp));
    check_map(&pp, 540, 260, steps, lr, 12);
    assert_true(get_plot(page, 2, 0, &pp)); /* gradient norm */
    assert_int_equal(pp.n, 12);

    /* header and tables */
    assert_non_null(strstr(page, ">2.5144<")); /* final training loss */
    assert_non_null(strstr(page, ">2.9516<")); /* final validation loss */
    assert_non_null(strstr(page, "r 16, alpha 32"));
    assert_non_null(strstr(page, ">of 60, epoch 0.24<"));
    assert_non_null(strstr(page, "<td class=\"num best\">0.8216</td>")); /* ROUGE-1, tuned */
    assert_non_null(strstr(page, "<td class=\"num\">7.99</td>"));        /* BLEU, base */
    assert_non_null(strstr(page, "<td class=\"num best\">45.50</td>"));
    assert_non_null(strstr(page, "<th>target_modules</th><td>all-linear</td>"));
    assert_non_null(strstr(page, "<th>target_modules</th><td>down_proj, gate_proj"));
    assert_null(strstr(page, "class=\"notes\"")); /* nothing missing */

    /* hostile sample text, escaped */
    assert_non_null(strstr(page,
                           "Parenthood is &lt;b&gt;the state&lt;/b&gt; of being a parent &amp; "
                           "raising &quot;children&quot;."));
    assert_non_null(strstr(page, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert_non_null(strstr(page, "accusation&#xFFFD; of"));
    assert_null(strstr(page, "<b>the state"));
    free(page);
}

static void test_html_escape(void **state) {
    (void)state;
    finch_buf b = {0};
    finch_buf_html(&b, "a<b>&\"c'\x01\x7f\td\n\xc3\xa9");
    assert_string_equal(b.p, "a&lt;b&gt;&amp;&quot;c&#39;&#xFFFD;&#xFFFD;\td\n\xc3\xa9");
    finch_buf_free(&b);
    finch_buf_html(&b, "");
    finch_buf_printf(&b, "%s", "");
    assert_int_equal(b.n, 0);
    /* a long formatted append takes the slow path */
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    finch_buf_printf(&b, "<%s>", big);
    assert_int_equal(b.n, 1001);
    assert_int_equal(b.p[1000], '>');
    finch_buf_free(&b);
}

static void test_svg_chart(void **state) {
    (void)state;
    double x[10], y[10];
    for (int i = 0; i < 10; i++) {
        x[i] = 10.0 * (i + 1);  /* 10..100 */
        y[i] = 1 + 8.0 * i / 9; /* 1..9 */
    }
    y[4] = NAN; /* left out */
    finch_svg_series s[2] = {{x, y, 10, "a <series>", "#123456", 2, 1, false},
                             {x, y, 3, "b", "#654321", 0, 1, true}};
    finch_buf b = {0};
    finch_svg_plot_render(&b, &(finch_svg_plot){"T & t", "step", "y", 400, 300, s, 2});
    assert_false(b.oom);
    plot_pts pp;
    assert_true(get_plot(b.p, 0, 0, &pp));
    assert_true(pp.x0 == 0 && pp.x1 == 100 && pp.y0 == 0 && pp.y1 == 10);
    double fx[9], fy[9];
    for (int i = 0, k = 0; i < 10; i++)
        if (i != 4) fx[k] = x[i], fy[k++] = y[i];
    check_map(&pp, 400, 300, fx, fy, 9);
    assert_false(get_plot(b.p, 0, 1, &pp));            /* markers only: no polyline */
    assert_int_equal(count(b.p, "<circle cx"), 3 + 1); /* 3 markers, 1 legend dot */
    assert_non_null(strstr(b.p, "a &lt;series&gt;"));
    assert_non_null(strstr(b.p, "T &amp; t"));
    assert_non_null(strstr(b.p, ">100</text>"));
    finch_buf_free(&b);

    /* a learning-rate axis: ticks of 5e-5 labelled with the same decimals */
    double lrx[2] = {1, 100}, lry[2] = {0, 0.0002};
    finch_svg_series slr = {lrx, lry, 2, "lr", "#000", 1, 1, false};
    finch_svg_plot_render(&b, &(finch_svg_plot){"lr", "step", "lr", 400, 300, &slr, 1});
    assert_non_null(strstr(b.p, ">0</text>"));
    assert_non_null(strstr(b.p, ">0.00005</text>"));
    assert_non_null(strstr(b.p, ">0.00020</text>"));
    finch_buf_free(&b);

    /* one point: a band around it; no point: a note, no plot */
    double one = 5;
    finch_svg_series s1 = {&one, &one, 1, "one", "#000", 1, 1, true};
    finch_svg_plot_render(&b, &(finch_svg_plot){"one", "x", "y", 300, 200, &s1, 1});
    assert_true(get_plot(b.p, 0, 0, &pp));
    assert_int_equal(pp.n, 1);
    assert_true(pp.x0 < 5 && pp.x1 > 5 && pp.y0 < 5 && pp.y1 > 5);
    finch_buf_free(&b);
    finch_svg_series s0 = {&one, &one, 0, "none", "#000", 1, 1, false};
    finch_svg_plot_render(&b, &(finch_svg_plot){"none", "x", "y", 300, 200, &s0, 1});
    assert_non_null(strstr(b.p, "no data logged"));
    assert_null(strstr(b.p, "<polyline"));
    finch_buf_free(&b);
}

/* A resumed run logs steps again: the later lines replace the earlier ones. */
static void test_resumed_metrics(void **state) {
    (void)state;
    const char *d = subdir("resumed");
    write_file(
        d, "metrics.jsonl",
        "{\"step\": 1, \"loss\": 4.0, \"lr\": 0.1}\n{\"step\": 2, \"loss\": 3.5, \"lr\": 0.1}\n"
        "{\"step\": 3, \"loss\": 3.0, \"lr\": 0.1}\n\n"
        "{\"step\": 2, \"loss\": 3.4, \"lr\": 0.1}\r\n{\"step\": 3, \"loss\": 3.1, \"lr\": 0.1}\n"
        "{\"step\": 4, \"loss\": 2.5, \"lr\": 0.1, \"extra\": [1]}");
    char *page = render(d, NULL, 0);
    plot_pts pp;
    assert_true(get_plot(page, 0, 0, &pp));
    static const double xs[4] = {1, 2, 3, 4}, ys[4] = {4.0, 3.4, 3.1, 2.5};
    check_map(&pp, 1100, 340, xs, ys, 4);
    assert_false(get_plot(page, 0, 2, &pp)); /* no validation series */
    /* what is missing is named */
    assert_non_null(strstr(page, "<code>run.json</code> not found"));
    assert_non_null(strstr(page, "<code>adapter_config.json</code> not found"));
    assert_non_null(strstr(page, "no validation loss"));
    assert_non_null(strstr(page, "No evaluation file"));
    free(page);
}

/* A value that was not finite when logged is null (train/metrics.c): a gap in its series,
 * not an error. */
static void test_null_metrics(void **state) {
    (void)state;
    const char *d = subdir("nullmetrics");
    write_file(d, "metrics.jsonl",
               "{\"step\": 1, \"loss\": 4.0, \"val_loss\": 3.0}\n"
               "{\"step\": 2, \"loss\": 3.5, \"val_loss\": null}\n"
               "{\"step\": 3, \"loss\": 3.0, \"val_loss\": 2.0}\n");
    char *page = render(d, NULL, 0);
    plot_pts pp;
    assert_true(get_plot(page, 0, 0, &pp));
    assert_int_equal(pp.n, 3);
    assert_true(get_plot(page, 0, 2, &pp)); /* the validation series: steps 1 and 3 */
    assert_int_equal(pp.n, 2);
    free(page);
}

/* An evaluation file alone (from --eval) makes a page without curves. */
static void test_eval_only(void **state) {
    (void)state;
    const char *d = subdir("evalonly");
    const char *ev[] = {RUN_FIXTURE "/eval.json"};
    char *page = render(d, ev, 1);
    assert_non_null(strstr(page, "<code>metrics.jsonl</code> not found"));
    assert_null(strstr(page, "<svg"));
    assert_non_null(strstr(page, "SmolLM2-135M-Instruct.Q4_1.gguf")); /* model from the eval file */
    assert_int_equal(count(page, "<div class=\"sample\">"), 3);
    free(page);
    /* eval*.json files in the directory are found, in name order, beside --eval ones */
    write_file(d, "eval-b.json",
               "{\"task\": \"loss\", \"metrics\": [{\"system\": \"zz-b\", \"loss\": 2.5, \"ppl\": "
               "12.18}]}");
    write_file(d, "eval-a.json",
               "{\"task\": \"loss\", \"metrics\": [{\"system\": \"zz-a\", \"loss\": 3}]}");
    write_file(d, "notes.json", "not json, not an eval file");
    page = render(d, ev, 1);
    const char *a = strstr(page, "zz-a"), *b = strstr(page, "zz-b"),
               *c = strstr(page, ">eval.json<");
    assert_true(a && b && c && a < b && b < c);
    assert_non_null(strstr(page, "<td class=\"num\">12.180</td>"));
    free(page);
}

/* Each bad input: the error code and a fragment of the message. */
static void expect_error(const char *dir, const char *const *evals, int n, finch_status code,
                         const char *frag) {
    finch_buf b = {0};
    finch_err err = {0};
    finch_status st = finch_report_render(dir, evals, n, &b, &err);
    if (st != code || !strstr(err.msg, frag))
        fail_msg("%s: status %d (want %d), message '%s' (want '%s')", dir, st, code, err.msg, frag);
    assert_null(b.p);
}

static void test_bad_metrics(void **state) {
    (void)state;
    static const struct {
        const char *line, *frag;
    } cases[] = {
        {"{\"step\": 3, \"lo", "metrics.jsonl:3: column"},
        {"garbage", "metrics.jsonl:3: column 7: not valid JSON"},
        {"[1, 2]", "metrics.jsonl:3: not a JSON object"},
        {"{\"loss\": 1.0}", "metrics.jsonl:3: \"step\" is missing"},
        {"{\"step\": -1, \"loss\": 1.0}",
         "metrics.jsonl:3: \"step\" is not a non-negative integer"},
        {"{\"step\": 1.5}", "metrics.jsonl:3: \"step\" is not a non-negative integer"},
        {"{\"step\": 3, \"loss\": \"low\"}", "metrics.jsonl:3: \"loss\" is not a number"},
        {"{\"step\": 3, \"val_loss\": [1]}", "metrics.jsonl:3: \"val_loss\" is not a number"},
        {"{\"step\": 3, \"lr\": NaN}", "metrics.jsonl:3: column"},
    };
    const char *d = subdir("badmetrics");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[256];
        snprintf(text, sizeof text,
                 "{\"step\": 1, \"loss\": 2.0}\n\n%s\n{\"step\": 4, \"loss\": 1.0}\n",
                 cases[i].line);
        write_file(d, "metrics.jsonl", text);
        expect_error(d, NULL, 0, FINCH_E_FORMAT, cases[i].frag);
    }
}

static void test_bad_evals(void **state) {
    (void)state;
    static const struct {
        const char *text, *frag;
    } cases[] = {
        {"{\"task\": \"generate\",\n \"metrics\": [}", "eval.json:2: column"},
        {"[]", "eval.json: expected a JSON object"},
        {"{\"task\": \"generate\"}", "eval.json: \"metrics\" is missing"},
        {"{\"metrics\": {}}", "eval.json: \"metrics\" is not a list"},
        {"{\"metrics\": [], \"task\": 3}", "eval.json: \"task\" is not a string"},
        {"{\"metrics\": [{\"rouge1\": 0.5}]}",
         "eval.json: metrics[0]: expected an object with a string \"system\""},
        {"{\"metrics\": [], \"systems\": [{\"name\": 1}]}", "eval.json: systems[0]"},
        {"{\"metrics\": [], \"samples\": [{\"prompt\": \"p\", \"outputs\": {\"base\": 3}}]}",
         "eval.json: samples[0]: outputs[\"base\"] is not a string"},
        {"{\"metrics\": [], \"samples\": [1]}", "eval.json: samples[0]: not an object"},
        {"{\"metrics\": [], \"samples\": [{\"reference\": [\"a\"]}]}",
         "samples[0]: \"reference\" is not a string"},
    };
    const char *d = subdir("badeval");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(d, "eval.json", cases[i].text);
        expect_error(d, NULL, 0, FINCH_E_FORMAT, cases[i].frag);
    }
    /* an --eval file that is not there, and a bad run.json beside good metrics */
    const char *e = subdir("badrunjson");
    const char *missing[] = {"/nonexistent/eval.json"};
    write_file(e, "metrics.jsonl", "{\"step\": 1, \"loss\": 2.0}\n");
    expect_error(e, missing, 1, FINCH_E_IO, "/nonexistent/eval.json");
    write_file(e, "run.json", "{\"model\": \"m\",}");
    expect_error(e, NULL, 0, FINCH_E_FORMAT, "run.json:1: column");
}

/* A run that has logged nothing yet still gets a page, saying so. */
static void test_empty_metrics(void **state) {
    (void)state;
    const char *d = subdir("fresh");
    write_file(d, "metrics.jsonl", "");
    char *page = render(d, NULL, 0);
    assert_int_equal(count(page, "no data logged"), 3);
    assert_non_null(strstr(page, "<code>metrics.jsonl</code> has no lines yet"));
    assert_null(strstr(page, "<polyline"));
    free(page);
}

static void test_bad_dirs(void **state) {
    (void)state;
    expect_error(subdir("empty"), NULL, 0, FINCH_E_IO, "no metrics.jsonl and no eval*.json");
    expect_error("/nonexistent/run", NULL, 0, FINCH_E_IO,
                 "/nonexistent/run: cannot open the run directory");
}

static void test_write_atomic(void **state) {
    (void)state;
    char out[512];
    snprintf(out, sizeof out, "%s/report.html", tmpdir);
    finch_err err = {0};
    assert_int_equal(finch_report_write(RUN_FIXTURE, NULL, 0, out, &err), FINCH_OK);
    char *page = render(RUN_FIXTURE, NULL, 0);
    FILE *f = fopen(out, "rb");
    assert_non_null(f);
    size_t n = strlen(page);
    char *got = malloc(n + 1);
    assert_int_equal(fread(got, 1, n + 1, f), n);
    fclose(f);
    assert_memory_equal(got, page, n);
    free(got);
    free(page);
    /* a failed report leaves the previous file as it was */
    assert_int_not_equal(finch_report_write(subdir("empty2"), NULL, 0, out, &err), FINCH_OK);
    struct stat sb;
    assert_int_equal(stat(out, &sb), 0);
    assert_int_equal((size_t)sb.st_size, n);
    assert_int_not_equal(finch_report_write(RUN_FIXTURE, NULL, 0, "/nonexistent/dir/r.html", &err),
                         FINCH_OK);
    assert_non_null(strstr(err.msg, "/nonexistent/dir"));
}

static int setup(void **state) {
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_page),  cmocka_unit_test(test_html_escape),
        cmocka_unit_test(test_svg_chart),     cmocka_unit_test(test_resumed_metrics),
        cmocka_unit_test(test_null_metrics),  cmocka_unit_test(test_eval_only),
        cmocka_unit_test(test_bad_metrics),   cmocka_unit_test(test_bad_evals),
        cmocka_unit_test(test_empty_metrics), cmocka_unit_test(test_bad_dirs),
        cmocka_unit_test(test_write_atomic),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
