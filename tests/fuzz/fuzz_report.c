/*
 * fuzz_report.c: libFuzzer target for what finch report reads: the input is a run's
 * metrics.jsonl, run.json and one evaluation JSON, separated by NUL bytes (a part left
 * out is a file that is not there). A page that renders must be a whole HTML document
 * whose text from the files is escaped (no "<script" can appear, whatever the files
 * hold); a failure must name the file.
 *
 * Built as fuzz_report with -fsanitize=fuzzer when FINCH_FUZZ is on, and always as
 * fuzz_report_replay, which runs tests/fuzz/corpus/report/ as a test.
 */
#include "eval/eval.h"
#include "fuzz_files.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[] = {"metrics.jsonl", "run.json", "given.json"};
    const uint8_t *part[FUZZ_MAX_PARTS];
    size_t len[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, part, len);
    char path[256], eval_path[256] = "";
    for (int k = 0; k < n && k < 3; k++)
        if (len[k]) fuzz_write(names[k], part[k], len[k], k == 2 ? eval_path : path, sizeof path);
    const char *evals[] = {eval_path};
    finch_buf page = {0};
    finch_err err;
    if (finch_report_render(fuzz_dir(), evals, eval_path[0] ? 1 : 0, &page, &err) == FINCH_OK) {
        if (!page.p || page.oom) abort();
        if (strncmp(page.p, "<!DOCTYPE html>", 15) || !strstr(page.p, "</html>")) abort();
        if (strstr(page.p, "<script")) abort();
    } else {
        fuzz_expect_named(err.msg, fuzz_dir());
    }
    finch_buf_free(&page);
    fuzz_dir_empty();
    return 0;
}
