/*
 * test_cli_report.c: `finch report` as a user meets it: a page from the fixture run
 * directory (tests/fixtures/report/run) at -o FILE and at the default RUN_DIR/report.html,
 * extra --eval files, and every bad input (no directory, two directories, unknown flags,
 * a missing value, a directory with nothing to report, a missing --eval file, a malformed
 * metrics line), checking exit codes (2 usage, 1 failure, 0 success) and a fragment of the
 * output. Runs the built binary through /bin/sh, as tests/cli/test_cli.c does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "test_util.h" /* run_capture */

#define RUN_FIXTURE FINCH_FIXTURES "/report/run"
#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

static char tmpdir[] = "/tmp/finch_cli_report_XXXXXX";
static char out[1 << 16];

/* Runs `finch CMD ARGS` in tmpdir; returns the exit code, output in out. */
static int run(const char *cmd_name, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd %s && %s %s %s", tmpdir, FINCH_CLI, cmd_name, args);
    return run_capture(tmpdir, cmd, NULL, out, sizeof out);
}

#define EXPECT_CMD(cmd, args, code, fragment)                                                      \
    do {                                                                                           \
        int rc_ = run(cmd, args);                                                                  \
        if (rc_ != (code) || !strstr(out, fragment))                                               \
            fail_msg("finch %s %s: exit %d (want %d), output:\n%s\n(want '%s')", cmd, args, rc_,   \
                     code, out, fragment);                                                         \
    } while (0)
#define EXPECT(args, code, fragment) EXPECT_CMD("report", args, code, fragment)

/* The first bytes of tmpdir/name (empty when it cannot be read). */
static const char *head(const char *name) {
    static char buf[4096];
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_happy_paths(void **state) {
    (void)state;
    EXPECT("--help", 0, "usage: finch report RUN_DIR");
    EXPECT(RUN_FIXTURE " -o page.html", 0, "wrote page.html");
    assert_true(!strncmp(head("page.html"), "<!DOCTYPE html>", 15));
    /* the default output is RUN_DIR/report.html; --eval adds a file */
    char args[1024];
    snprintf(args, sizeof args, "cp -r %s %s/run", RUN_FIXTURE, tmpdir);
    assert_int_equal(system(args), 0);
    EXPECT("run --eval run/eval.json", 0, "wrote run/report.html");
    assert_non_null(strstr(head("run/report.html"), "<title>finch report: run</title>"));
    EXPECT("--out page2.html --eval " RUN_FIXTURE "/eval.json empty", 1, "empty: cannot open");
    mkdir(strcat(strcpy(args, tmpdir), "/empty"), 0755);
    EXPECT("empty --out page2.html --eval " RUN_FIXTURE "/eval.json", 0, "wrote page2.html");
}

/* finch train writes run.json (every option, defaults resolved) into a directory it makes,
 * and the report of that run shows it. */
static void test_train_then_report(void **state) {
    (void)state;
    char path[512], args[2048];
    snprintf(path, sizeof path, "%s/train.jsonl", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 8; i++)
        fprintf(f, "{\"prompt\": \"n %d:\", \"completion\": \" %d\"}\n", i, i * 2);
    fclose(f);
    snprintf(args, sizeof args,
             "-m %s --data train.jsonl --val train.jsonl --out a/b/run --lora-r 2 "
             "--lora-dropout 0.1 --max-steps 3 --log-steps 1 --learning-rate 0.01",
             TINY);
    EXPECT_CMD("train", args, 0, "adapter written to");
    snprintf(path, sizeof path, "%s/a/b/run/run.json", tmpdir);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s", path, je.text);
    assert_string_equal(json_string_value(json_object_get(j, "model")), TINY);
    assert_string_equal(json_string_value(json_object_get(j, "data")), "train.jsonl");
    assert_string_equal(json_string_value(json_object_get(j, "method")), "lora");
    assert_string_equal(json_string_value(json_object_get(j, "target_modules")), "q,v");
    assert_string_equal(json_string_value(json_object_get(j, "lr_scheduler")), "linear");
    assert_string_equal(json_string_value(json_object_get(j, "format")), "auto");
    assert_int_equal(json_integer_value(json_object_get(j, "lora_r")), 2);
    assert_int_equal(json_integer_value(json_object_get(j, "max_steps")), 3);
    assert_true(json_real_value(json_object_get(j, "lora_dropout")) == 0.1);
    assert_true(json_real_value(json_object_get(j, "learning_rate")) == 0.01);
    assert_true(json_integer_value(json_object_get(j, "max_seq_len")) > 0); /* 0 resolved */
    assert_true(json_is_integer(json_object_get(j, "started_unix")));
    assert_true(json_is_null(json_object_get(j, "resume")));
    assert_true(json_is_false(json_object_get(j, "chat")));
    json_decref(j);
    EXPECT("a/b/run", 0, "wrote a/b/run/report.html");
    const char *page = head("a/b/run/report.html");
    assert_non_null(strstr(page, "tiny_llama.gguf"));
    assert_null(strstr(page, "class=\"notes\"")); /* run.json, adapter and validation present */
}

static void test_bad_input(void **state) {
    (void)state;
    EXPECT("", 2, "no run directory");
    EXPECT("a b", 2, "more than one RUN_DIR given ('a' and 'b')");
    EXPECT(RUN_FIXTURE " --bogus", 2, "unknown option '--bogus'");
    EXPECT(RUN_FIXTURE " -o", 2, "-o needs a value");
    EXPECT(RUN_FIXTURE " --eval", 2, "--eval needs a value");
    EXPECT("/nonexistent/run -o x.html", 1,
           "finch: error: /nonexistent/run: cannot open the run directory");
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/nothing %s/bad && printf '{\"step\": 1}\\n{\"step\": 2, \"loss\": x}\\n' "
             "> %s/bad/metrics.jsonl",
             tmpdir, tmpdir, tmpdir);
    assert_int_equal(system(cmd), 0);
    EXPECT("nothing -o x.html", 1, "nothing: no metrics.jsonl and no eval*.json");
    EXPECT(RUN_FIXTURE " -o x.html --eval missing.json", 1, "missing.json");
    EXPECT("bad -o x.html", 1, "bad/metrics.jsonl:2: column");
    EXPECT(RUN_FIXTURE " -o /nonexistent/dir/x.html", 1, "finch: error: ");
    struct stat sb;
    char path[512];
    snprintf(path, sizeof path, "%s/x.html", tmpdir);
    assert_int_not_equal(stat(path, &sb), 0); /* no failed run left a page behind */
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
        cmocka_unit_test(test_happy_paths),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_train_then_report),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
