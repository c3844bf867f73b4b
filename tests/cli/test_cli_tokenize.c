/*
 * test_cli_tokenize.c: `finch tokenize --jsonl` and `finch --version`. Texts read as JSON
 * lines (with newlines, tabs, quotes, escapes, non-ASCII) give the ids the library's
 * finch_tokenize gives for the same bytes; plain lines give the same ids through --jsonl as
 * without it; every kind of bad line is refused with its file and line number and nothing
 * after it is processed. The version printed is FINCH_VERSION, which CMake's project
 * version is read from.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finch.h"
#include "test_util.h" /* run_capture */

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

static char tmpdir[] = "/tmp/finch_cli_tok_XXXXXX";
static char out[1 << 16];

static int run(const char *args, const char *in_text) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "FINCH_CACHE=%s/cache %s %s", tmpdir, FINCH_CLI, args);
    return run_capture(tmpdir, cmd, in_text, out, sizeof out);
}

#define EXPECT(args, in, code, fragment)                                                           \
    do {                                                                                           \
        int rc_ = run(args, in);                                                                   \
        if (rc_ != (code) || !strstr(out, fragment))                                               \
            fail_msg("finch %s: exit %d (want %d), output:\n%s\n(want '%s')", args, rc_, code,     \
                     out, fragment);                                                               \
    } while (0)

static void test_version(void **state) {
    (void)state;
    char want[64];
    snprintf(want, sizeof want, "finch %s\n", FINCH_VERSION);
    EXPECT("--version", NULL, 0, want);
    assert_memory_equal(out, want, strlen(want)); /* then which kernels run */
    assert_non_null(strstr(out, "\nkernels: cpu-"));
    const char *built = strstr(out, "(built: ");
    assert_non_null(built);
    char first[32], expect[64];
    assert_int_equal(sscanf(built + 8, "%31[a-z0-9]", first), 1);
    EXPECT("-V", NULL, 0, want);
    EXPECT("version", NULL, 0, want);
    assert_memory_equal(out, want, strlen(want));
    EXPECT("version extra", NULL, 2, "unexpected argument 'extra'");
    /* the first instruction set built, forced by name, and a name the build lacks */
    snprintf(expect, sizeof expect, "kernels: cpu-%s (", first);
    setenv("FINCH_CPU", first, 1);
    EXPECT("--version", NULL, 0, expect);
    setenv("FINCH_CPU", "sse9", 1);
    EXPECT("--version", NULL, 1, "FINCH_CPU=sse9: unknown instruction set (this build has ");
    unsetenv("FINCH_CPU");
    EXPECT("--help", NULL, 0, "version");
}

/* "{\"ids\": [a, b, ...]}\n" for the library's ids of text. */
static void expected_line(const finch_tokenizer *tok, const char *text, size_t len, char *buf,
                          size_t cap) {
    int32_t *ids;
    int64_t n;
    finch_err err;
    assert_int_equal(finch_tokenize(tok, text, len, FINCH_TOK_ADD_SPECIAL, &ids, &n, &err),
                     FINCH_OK);
    assert_true(n > 0);
    size_t at = (size_t)snprintf(buf, cap, "{\"ids\": [");
    for (int64_t i = 0; i < n; i++)
        at += (size_t)snprintf(buf + at, cap - at, i ? ", %d" : "%d", ids[i]);
    snprintf(buf + at, cap - at, "]}\n");
    free(ids);
}

static void test_jsonl_texts(void **state) {
    (void)state;
    finch_model *m;
    finch_err err;
    assert_int_equal(finch_model_load(TINY, &m, &err), FINCH_OK);
    const finch_tokenizer *tok = finch_model_tokenizer(m);
    /* each JSON line and the bytes its "text" decodes to */
    static const struct {
        const char *json, *text;
        size_t len;
    } cases[] = {
        {"{\"text\": \"hello world\"}", "hello world", 11},
        {"{\"text\": \"two\\nlines\\n\"}", "two\nlines\n", 10},
        {"{\"text\": \"tab\\there \\\"quoted\\\" back\\\\slash\"}",
         "tab\there \"quoted\" back\\slash", 28},
        {"  {\"text\":\"caf\\u00e9 \\u2603\"}  ", "caf\xc3\xa9 \xe2\x98\x83", 9},
        {"{\"text\": \"\\r\\n\\r\\nblank lines\"}", "\r\n\r\nblank lines", 15},
    };
    const size_t n_cases = sizeof cases / sizeof cases[0];
    char in[4096] = "", want[1 << 14] = "";
    for (size_t i = 0; i < n_cases; i++) {
        strcat(in, cases[i].json);
        strcat(in, i == 1 ? "\n\n   \n" : "\n"); /* blank lines are skipped */
        assert_int_equal(strlen(cases[i].text), cases[i].len);
        expected_line(tok, cases[i].text, cases[i].len, want + strlen(want),
                      sizeof want - strlen(want));
    }
    EXPECT("tokenize --jsonl -m " TINY, in, 0, "{\"ids\": [");
    assert_string_equal(out, want);
    /* the same input from a file */
    char path[512], args[1024];
    snprintf(path, sizeof path, "%s/texts.jsonl", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(in, f);
    fclose(f);
    snprintf(args, sizeof args, "tokenize -m " TINY " --jsonl %s", path);
    EXPECT(args, NULL, 0, "{\"ids\": [");
    assert_string_equal(out, want);
    /* a one-line text gives the same ids with and without --jsonl */
    EXPECT("tokenize -m " TINY, "hello world\n", 0, "");
    char plain[1024];
    snprintf(plain, sizeof plain, "%.1000s", out);
    EXPECT("tokenize --jsonl -m " TINY, "{\"text\": \"hello world\"}\n", 0, "");
    char *ids = strchr(out, '[');
    assert_non_null(ids);
    for (char *c = plain; *c; c++) /* "1 2 3\n" against "[1, 2, 3]}\n" */
        if (*c == ' ') *c = ',';
    char *p = plain, *q = ids + 1;
    while (*p && *p != '\n') {
        if (*q == ' ') q++;
        assert_int_equal(*p, *q);
        p++, q++;
    }
    assert_int_equal(*q, ']');
    finch_model_free(m);
}

static void test_jsonl_bad_lines(void **state) {
    (void)state;
    const char *ok = "{\"text\": \"fine\"}\n";
    static const struct {
        const char *line, *fragment;
    } bad[] = {
        {"{\"text\": \"unterminated}", "stdin: line 2:"},
        {"[\"text\", \"a list\"]", "expected a JSON object"},
        {"{\"prompt\": \"hi\"}", "no field \"text\""},
        {"{\"text\": 17}", "field \"text\" is not a string"},
        {"{\"text\": null}", "field \"text\" is not a string"},
        {"{\"text\": \"a\", \"id\": 3}", "unknown field beside \"text\""},
        {"{\"text\": \"a\", \"text\": \"b\"}", "stdin: line 2:"},
        {"\"just a string\"", "'[' or '{' expected"},
        {"{\"text\": \"bad \xff byte\"}", "stdin: line 2:"},
        {"{\"text\": \"a\"} trailing", "stdin: line 2:"},
    };
    char in[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(in, sizeof in, "%s%s\n%s", ok, bad[i].line, ok);
        EXPECT("tokenize --jsonl -m " TINY, in, 1, bad[i].fragment);
        assert_non_null(strstr(out, "line 2"));
        /* the first line was written, nothing after the bad one */
        char *first = strstr(out, "{\"ids\":");
        assert_non_null(first);
        assert_null(strstr(first + 1, "{\"ids\":"));
    }
    char args[1024];
    snprintf(args, sizeof args, "tokenize -m " TINY " --jsonl %s/missing.jsonl", tmpdir);
    EXPECT(args, NULL, 1, "missing.jsonl: cannot open");
    char path[512];
    snprintf(path, sizeof path, "%s/bad.jsonl", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"text\": \"a\"}\n\n{\"text\": 1}\n", f);
    fclose(f);
    snprintf(args, sizeof args, "tokenize -m " TINY " --jsonl %s", path);
    EXPECT(args, NULL, 1, "bad.jsonl: line 3: field \"text\" is not a string");
    EXPECT("tokenize -m " TINY " --jsonl --decode", "", 2, "not with --decode");
}

static int setup(void **state) {
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_jsonl_texts),
        cmocka_unit_test(test_jsonl_bad_lines),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
