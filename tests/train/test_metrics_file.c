/*
 * test_metrics_file.c: metrics.jsonl lines (train/metrics.c) are JSON whatever the values:
 * a loss that is NaN or infinite is written as null, finite values as printf wrote them,
 * and text that only looks like nan (a task named "nanny") is left alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h" /* read_text_in */
#include "train/train.h"

static char dir[] = "/tmp/finch_metrics_XXXXXX";

static void test_non_finite_as_null(void **state) {
    (void)state;
    finch_append_file f;
    finch_err err;
    char buf[512];
    assert_int_equal(finch_metrics_open(dir, -1, &f, &err), FINCH_OK);
    assert_int_equal(finch_metrics_line(&f, buf, sizeof buf, &err,
                                        "{\"step\": 1, \"loss\": %.6f, \"grad_norm\": %.6f, "
                                        "\"val_loss\": %.6f, \"lr\": %.6f, \"task\": \"nanny\"}",
                                        (double)NAN, (double)-INFINITY, (double)INFINITY, 0.5),
                     FINCH_OK);
    assert_int_equal(finch_metrics_line(&f, buf, sizeof buf, &err,
                                        "{\"step\": 2, \"val_loss\": %.6f}", -(double)NAN),
                     FINCH_OK);
    finch_file_append_close(&f);
    char *text = read_text_in(dir, "metrics.jsonl");
    assert_string_equal(text, "{\"step\": 1, \"loss\": null, \"grad_norm\": null, \"val_loss\": "
                              "null, \"lr\": 0.500000, \"task\": \"nanny\"}\n"
                              "{\"step\": 2, \"val_loss\": null}\n");
    /* and jansson reads both lines */
    char *line = strtok(text, "\n");
    for (int i = 0; i < 2; i++, line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        if (!j) fail_msg("line %d is not JSON: %s", i + 1, je.text);
        assert_true(json_is_null(json_object_get(j, "val_loss")));
        json_decref(j);
    }
    free(text);
    char path[300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    unlink(path);
}

static int setup(void **state) {
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_non_finite_as_null)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
