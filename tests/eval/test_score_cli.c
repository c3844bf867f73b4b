/*
 * test_score_cli.c: `finch score` as a user meets it: the happy paths (text files with
 * one or two reference files, JSON Lines with string and list references, --json, the
 * metric selection) and every bad input (missing files, empty files, mismatched line
 * counts, unknown metrics, JSONL lines that are not objects or lack a field), checking
 * exit codes (2 usage, 1 failure, 0 success) and a fragment of the output. Runs the
 * built binary through /bin/sh, as tests/cli/test_cli.c does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test_util.h" /* run_capture, read_text */

static char tmpdir[] = "/tmp/finch_score_XXXXXX";
static char out[1 << 16];

static void write_file(const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Runs `finch score ARGS` in tmpdir; returns the exit code, output in out. */
static int run(const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd %s && %s score %s", tmpdir, FINCH_CLI, args);
    return run_capture(tmpdir, cmd, NULL, out, sizeof out);
}

#define EXPECT(args, code, fragment)                                                               \
    do {                                                                                           \
        int rc_ = run(args);                                                                       \
        if (rc_ != (code) || !strstr(out, fragment))                                               \
            fail_msg("finch score %s: exit %d (want %d), output:\n%s\n(want '%s')", args, rc_,     \
                     code, out, fragment);                                                         \
    } while (0)

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(tmpdir)) return -1;
    write_file("pred.txt", "the cat sat on the mat\nhello world\n");
    write_file("ref.txt", "the cat sat on the mat\nhello there world\n");
    write_file("ref2.txt", "a cat sat\nhello world\n");
    write_file("short.txt", "one line\n");
    write_file("empty.txt", "");
    write_file("ok.jsonl",
               "{\"prediction\": \"the cat\", \"reference\": \"the cat\"}\n\n"
               "{\"prediction\": \"a dog\", \"reference\": [\"the dog\", \"a cat\"]}\n");
    write_file("array.jsonl", "{\"prediction\": \"x\", \"reference\": \"x\"}\n[1, 2]\n");
    write_file("nofield.jsonl", "{\"prediction\": \"x\"}\n");
    write_file("badref.jsonl", "{\"prediction\": \"x\", \"reference\": [\"a\", 3]}\n");
    write_file("notjson.jsonl", "{\"prediction\": \n");
    write_file("blank.jsonl", "\n\n");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd);
}

static void test_happy(void **state) {
    (void)state;
    EXPECT("--pred pred.txt --ref ref.txt", 0, "rougeLsum");
    EXPECT("--pred pred.txt --ref ref.txt", 0, "bleu");
    EXPECT("--pred pred.txt --ref ref.txt --ref ref2.txt --metrics em", 0, "em            1.0000");
    EXPECT("--pred pred.txt --ref ref.txt --metrics rouge,bleu,em,f1 --json", 0,
           "{\"examples\": 2, \"rouge1\"");
    EXPECT("--pred pred.txt --ref ref.txt --metrics bleu --json", 0, "\"bleu\": {\"score\": ");
    EXPECT("--jsonl ok.jsonl --metrics em,f1 --json", 0,
           "{\"examples\": 2, \"exact_match\": 1.000000, \"f1\": 1.000000}");
    EXPECT("--jsonl ok.jsonl --stem", 0, "2 examples");
    EXPECT("--help", 0, "usage: finch score");
}

/* The file tmpdir/name as a NUL-terminated string, malloc'd. */
static char *text_of(const char *name) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return read_text(path);
}

/* --json: the document alone on stdout, the table on stderr; --json-out FILE: the same
 * document in FILE, the table on stdout. */
static void test_json_rule(void **state) {
    (void)state;
    const char *doc = "{\"examples\": 2, \"exact_match\": 1.000000, \"f1\": 1.000000}\n";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd %s && %s score --jsonl ok.jsonl --metrics em,f1 --json >so 2>se",
             tmpdir, FINCH_CLI);
    assert_int_equal(system(cmd), 0);
    char *so = text_of("so"), *se = text_of("se");
    assert_string_equal(so, doc);
    assert_non_null(strstr(se, "2 examples\nem "));
    EXPECT("--jsonl ok.jsonl --metrics em,f1 --json-out s.json", 0, "2 examples\nem ");
    assert_null(strstr(out, "{\"examples\""));
    char *written = text_of("s.json");
    assert_string_equal(written, doc);
    free(so);
    free(se);
    free(written);
}

static void test_bad_input(void **state) {
    (void)state;
    EXPECT("--pred pred.txt --ref short.txt", 1, "pred.txt has 2 lines but short.txt has 1");
    EXPECT("--pred empty.txt --ref ref.txt", 1, "empty.txt is empty");
    EXPECT("--pred pred.txt --ref missing.txt", 1, "missing.txt");
    EXPECT("--jsonl missing.jsonl", 1, "missing.jsonl");
    EXPECT("--jsonl array.jsonl", 1, "array.jsonl:2: not a JSON object");
    EXPECT("--jsonl nofield.jsonl", 1, "nofield.jsonl:1: no field \"reference\"");
    EXPECT("--jsonl badref.jsonl", 1, "badref.jsonl:1: field \"reference\": entry 2");
    EXPECT("--jsonl notjson.jsonl", 1, "notjson.jsonl:1: not valid JSON");
    EXPECT("--jsonl blank.jsonl", 1, "no examples");
}

static void test_usage(void **state) {
    (void)state;
    EXPECT("--pred pred.txt --ref ref.txt --metrics rouge,meteor", 2,
           "unknown metric 'meteor' (known: rouge, bleu, em, f1)");
    EXPECT("--pred pred.txt --ref ref.txt --metrics ''", 2, "--metrics '' names no metric");
    EXPECT("--pred pred.txt", 2, "--pred needs at least one --ref");
    EXPECT("", 2, "nothing to score");
    EXPECT("--jsonl ok.jsonl --pred pred.txt", 2, "not both");
    EXPECT("--pred", 2, "--pred needs a value");
    EXPECT("--bogus", 2, "unknown option '--bogus'");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy),
        cmocka_unit_test(test_json_rule),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_usage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
