/*
 * test_cli_eval.c: `finch eval` as a user meets it: every new flag's bad values, bad
 * datasets and labels (clear message, exit 2 for usage and 1 for failures), --compare with
 * --general and the JSON schema on the tiny model with an adapter trained here, and
 * generation and classification on the real default model with a handful of examples.
 * Runs the built binary through /bin/sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "finch.h"
#include "test_util.h" /* run_capture, read_text, real_model */

static char tmpdir[] = "/tmp/finch_cli_eval_XXXXXX";
static char out[1 << 16];
static char data[512], cls[512];

/* Runs `finch ARGS`; returns the exit code and leaves stdout+stderr in out. */
static int run(const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s", FINCH_CLI, args);
    return run_capture(tmpdir, cmd, NULL, out, sizeof out);
}

#define EXPECT(args, code, fragment)                                                               \
    do {                                                                                           \
        int rc_ = run(args);                                                                       \
        if (rc_ != (code) || !strstr(out, fragment))                                               \
            fail_msg("finch %s: exit %d (want %d), output:\n%s\n(want '%s')", args, rc_, code,     \
                     out, fragment);                                                               \
    } while (0)

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

static const char *write_file(const char *name, const char *text) {
    static char path[8][512];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static void test_bad_flags(void **state) {
    (void)state;
    char a[2048];
    const struct {
        const char *flags, *want;
    } bad[] = {
        {"--task summarize", "--task summarize: must be loss, generate or classify"},
        {"--general x --general-task nope", "--general-task nope"},
        {"--task generate --metrics rouge,meteor", "unknown metric 'meteor'"},
        {"--task generate --metrics ,", "names no metric"},
        {"--metrics rouge", "--metrics applies to --task generate only"},
        {"--task classify --k-shot 2", "--k-shot 2 needs --shots-from"},
        {"--task classify --k-shot -1", "--k-shot -1"},
        {"--task classify --labels a,,b", "--labels: label 2 is empty"},
        {"--compare", "--compare needs at least one --adapter"},
        {"--task generate --max-new-tokens 0", "--max-new-tokens 0"},
        {"--task generate --temperature -1", "--temperature -1"},
        {"--task generate --top-p 0", "--top-p 0"},
        {"--task generate --top-k x", "--top-k x"},
        {"--general-max-examples 0", "--general-max-examples 0"},
        {"--json-out", "--json-out needs a value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(a, sizeof a, "eval -m " TINY " --data %s %s", data, bad[i].flags);
        EXPECT(a, 2, bad[i].want);
    }
    /* bad datasets and labels, through the library's checks */
    snprintf(a, sizeof a, "eval -m " TINY " --task classify --data %s --labels on", cls);
    EXPECT(a, 2, "at least two");
    snprintf(a, sizeof a, "eval -m " TINY " --task classify --data %s --labels on,' on'", cls);
    EXPECT(a, 2, "label 'on' is given twice");
    snprintf(a, sizeof a,
             "eval -m " TINY " --task classify --data %s --labels on,off,$(printf '\\303\\251')",
             cls);
    EXPECT(a, 2, "tokenizes to nothing");
    snprintf(a, sizeof a, "eval -m " TINY " --task classify --data %s --labels x,y", cls);
    EXPECT(a, 1, "line 1: the completion ' on' is not one of the labels (x, y)");
    snprintf(a, sizeof a, "eval -m " TINY " --task classify --data %s --k-shot 9 --shots-from %s",
             cls, cls);
    EXPECT(a, 2, "not enough for 9 shots");
    const char *empty = write_file("empty.jsonl", "\n");
    snprintf(a, sizeof a, "eval -m " TINY " --task generate --data %s", empty);
    EXPECT(a, 1, "empty.jsonl");
    const char *noref =
        write_file("noref.jsonl", "{\"prompt\": \"the cat\", \"completion\": \"\"}\n");
    snprintf(a, sizeof a, "eval -m " TINY " --task generate --data %s", noref);
    EXPECT(a, 1, "noref.jsonl: line 1: the reference (completion) is empty");
    snprintf(a, sizeof a,
             "eval -m " TINY " --task generate --data %s --json-out /nonexistent/dir/x.json", data);
    EXPECT(a, 1, "/nonexistent/dir");
}

/* --compare and --general on the tiny model with a freshly trained adapter. */
static void test_compare_tiny(void **state) {
    (void)state;
    char a[4096], adapter[600], json[600];
    snprintf(adapter, sizeof adapter, "%s/tiny-lora", tmpdir);
    snprintf(json, sizeof json, "%s/cmp.json", tmpdir);
    snprintf(a, sizeof a, "train -m " TINY " --data %s --out %s --max-steps 3 --lr 0.01", data,
             adapter);
    EXPECT(a, 0, "adapter written to");
    snprintf(a, sizeof a,
             "eval -m " TINY " --task generate --data %s --max-new-tokens 4 --metrics rouge,em "
             "--adapter %s --compare --general %s --general-max-examples 2 --json-out %s",
             data, adapter, cls, json);
    EXPECT(a, 0, "delta");
    assert_non_null(strstr(out, "tiny-lora"));
    assert_non_null(strstr(out, "rouge1"));
    assert_non_null(strstr(out, "ppl"));
    json_error_t je;
    json_t *j = json_load_file(json, 0, &je);
    if (!j) fail_msg("%s: %s", json, je.text);
    assert_string_equal(json_string_value(json_object_get(j, "task")), "generate");
    assert_int_equal(json_integer_value(json_object_get(j, "n_examples")), 3);
    json_t *sys = json_object_get(j, "systems"), *met = json_object_get(j, "metrics");
    assert_int_equal(json_array_size(sys), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(sys, 0), "name")), "base");
    assert_int_equal(json_array_size(json_object_get(json_array_get(sys, 0), "adapters")), 0);
    json_t *s1 = json_array_get(sys, 1), *ad = json_array_get(json_object_get(s1, "adapters"), 0);
    assert_string_equal(json_string_value(json_object_get(s1, "name")), "tiny-lora");
    assert_string_equal(json_string_value(json_object_get(ad, "path")), adapter);
    assert_true(json_real_value(json_object_get(ad, "weight")) == 1.0);
    assert_int_equal(json_array_size(met), 4); /* 2 systems x 2 datasets */
    for (size_t i = 0; i < 4; i++) {
        json_t *m = json_array_get(met, i);
        const char *task = json_string_value(json_object_get(m, "task"));
        if (!strcmp(task, "generate")) {
            double r1 = json_real_value(json_object_get(m, "rouge1"));
            assert_true(r1 >= 0 && r1 <= 1);
            assert_non_null(json_object_get(m, "em"));
            assert_null(json_object_get(m, "bleu")); /* only what was measured */
        } else {
            assert_string_equal(task, "loss");
            assert_string_equal(json_string_value(json_object_get(m, "data")), cls);
            assert_true(json_real_value(json_object_get(m, "loss")) > 0);
            assert_non_null(json_object_get(m, "ppl"));
        }
    }
    json_t *smp = json_object_get(j, "samples");
    assert_int_equal(json_array_size(smp), 3);
    json_t *o = json_object_get(json_array_get(smp, 0), "outputs");
    assert_non_null(json_object_get(o, "base"));
    assert_non_null(json_object_get(o, "tiny-lora"));
    assert_string_equal(json_string_value(json_object_get(json_array_get(smp, 0), "reference")),
                        "is on");
    json_decref(j);
    /* classify with the adapter's weight: one system named after it */
    snprintf(a, sizeof a, "eval -m " TINY " --task classify --data %s --adapter %s:0.5 --json-out %s",
             cls, adapter, json);
    EXPECT(a, 0, "accuracy");
    j = json_load_file(json, 0, &je);
    assert_non_null(j);
    sys = json_object_get(j, "systems");
    assert_int_equal(json_array_size(sys), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(sys, 0), "name")),
                        "tiny-lora");
    json_t *m = json_array_get(json_object_get(j, "metrics"), 0);
    assert_int_equal(json_array_size(json_object_get(m, "per_label")), 2);
    assert_int_equal(json_array_size(json_object_get(json_object_get(m, "confusion"), "matrix")),
                     2);
    json_decref(j);
}

/* The JSON rule: --json prints the document on stdout and the text for people on stderr;
 * --json-out FILE writes the same document; --json FILE is the old spelling of --json-out. */
static void test_json_rule(void **state) {
    (void)state;
    char cmd[4096], so[600], se[600], file[600];
    snprintf(so, sizeof so, "%s/stdout.json", tmpdir);
    snprintf(se, sizeof se, "%s/stderr.txt", tmpdir);
    snprintf(file, sizeof file, "%s/out.json", tmpdir);
    snprintf(cmd, sizeof cmd, "%s eval -m " TINY " --data %s --max-examples 2 --json >%s 2>%s",
             FINCH_CLI, data, so, se);
    assert_int_equal(system(cmd), 0);
    json_error_t je;
    json_t *j = json_load_file(so, 0, &je); /* stdout is the document and nothing else */
    if (!j) fail_msg("%s: %s", so, je.text);
    assert_string_equal(json_string_value(json_object_get(j, "task")), "loss");
    double loss = json_real_value(json_object_get(json_array_get(json_object_get(j, "metrics"), 0),
                                                  "loss"));
    assert_true(loss > 0);
    json_decref(j);
    char *err_text = read_text(se);
    if (!strstr(err_text, "perplexity:")) fail_msg("stderr:\n%s", err_text);
    free(err_text);
    char *printed = read_text(so);
    /* --json-out: the same document in the file, the text on stdout */
    snprintf(cmd, sizeof cmd, "eval -m " TINY " --data %s --max-examples 2 --json-out %s", data,
             file);
    EXPECT(cmd, 0, "perplexity:");
    assert_non_null(strstr(out, "finch eval: wrote "));
    char *written = read_text(file);
    assert_string_equal(written, printed);
    free(written);
    remove(file);
    /* the old spelling */
    snprintf(cmd, sizeof cmd, "eval -m " TINY " --data %s --max-examples 2 --json %s", data, file);
    EXPECT(cmd, 0, "warning: --json FILE is read as --json-out FILE (the old spelling)");
    written = read_text(file);
    assert_string_equal(written, printed);
    free(written);
    free(printed);
    remove(file);
    remove(so);
    remove(se);
}

static void test_real_model(void **state) {
    (void)state;
    const char *m = real_model();
    if (!m) {
        if (getenv("FINCH_ALLOW_NO_MODEL")) skip();
        fail_msg("the default model is missing: run scripts/setup.sh");
    }
    char a[6000];
    const char *qa = write_file("qa.jsonl", "{\"prompt\": \"What is the capital of France?\", "
                                            "\"completion\": \"The capital of France is Paris.\"}\n"
                                            "{\"prompt\": \"What is the capital of Italy?\", "
                                            "\"completion\": \"The capital of Italy is Rome.\"}\n");
    snprintf(a, sizeof a,
             "eval -m %s --task generate --chat --data %s --max-new-tokens 10 --metrics "
             "rouge,bleu,em,f1",
             m, qa);
    EXPECT(a, 0, "rouge1");
    assert_non_null(strstr(out, "(generate, 2 examples)"));
    /* the model answers these: ROUGE-1 well above zero */
    char *r1 = strstr(out, "\nrouge1");
    assert_non_null(r1);
    assert_true(atof(r1 + 7) > 0.5);
    const char *yn = write_file("yn.jsonl", "{\"prompt\": \"Is Paris the capital of France? Answer "
                                            "yes or no.\", \"completion\": \"yes\"}\n"
                                            "{\"prompt\": \"Is Rome the capital of France? Answer "
                                            "yes or no.\", \"completion\": \"no\"}\n"
                                            "{\"prompt\": \"Is Berlin the capital of Germany? "
                                            "Answer yes or no.\", \"completion\": \"yes\"}\n");
    snprintf(
        a, sizeof a,
        "eval -m %s --task classify --chat --data %s --labels Yes,No --template '{prompt}{label}'",
        m, yn);
    EXPECT(a, 1, "line 1: the completion 'yes' is not one of the labels (Yes, No)");
    snprintf(a, sizeof a, "eval -m %s --task classify --chat --data %s", m, yn);
    EXPECT(a, 0, "accuracy");
    assert_non_null(strstr(out, "(classify, 3 examples)"));
    snprintf(a, sizeof a,
             "eval -m %s --task classify --data %s --k-shot 1 --shots-from %s --max-examples 2", m,
             yn, yn);
    EXPECT(a, 0, "accuracy");
    assert_non_null(strstr(out, "(classify, 2 examples)"));
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(tmpdir)) return -1;
    snprintf(data, sizeof data, "%s",
             write_file("data.jsonl",
                        "{\"prompt\": \"the cat\", \"completion\": \" is on\"}\n"
                        "{\"prompt\": \"a dog is\", \"completion\": \" singing\"}\n"
                        "{\"prompt\": \"the\", \"completion\": \" cat and the dog\"}\n"));
    snprintf(cls, sizeof cls, "%s",
             write_file("cls.jsonl", "{\"prompt\": \"is it\", \"completion\": \" on\"}\n"
                                     "{\"prompt\": \"it is not\", \"completion\": \" off\"}\n"
                                     "{\"prompt\": \"the cat is\", \"completion\": \" on\"}\n"));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_compare_tiny),
        cmocka_unit_test(test_json_rule),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
