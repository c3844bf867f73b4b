/*
 * test_mix.c: the example order of multi-task mixtures (data/mix.c): the share of each task
 * over many draws within a binomial bound of its weight; every pass of a task visits each of
 * its examples once; the sampler's state after an epoch counts that epoch's draws, and an
 * epoch recomputed from the saved state is the same; the order depends on the seed; one
 * task gives the plain shuffle of each epoch (the order runs had before mixtures). And
 * "FILE[:WEIGHT]" arguments, good and bad; and token sets joined task after task.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "data/data.h"

/* Runs epochs 0..n_epochs-1 of mx from a fresh state, checking that each epoch's order holds
 * valid units and that the state moves by the epoch's draws of each task. counts[k] = slots
 * of task k; seq[k] (when seq is not NULL) = task k's units in the order drawn, numbered
 * within the task. */
static void draw(const finch_mixture *mx, int n_epochs, int64_t *counts, int64_t **seq) {
    int64_t total = 0, start[FINCH_MAX_TASKS];
    for (int k = 0; k < mx->n_tasks; k++) {
        start[k] = total;
        total += mx->size[k];
        counts[k] = 0;
    }
    int64_t *order = malloc((size_t)total * sizeof *order);
    int64_t *scratch = malloc((size_t)total * sizeof *scratch);
    int64_t drawn[FINCH_MAX_TASKS] = {0}, end[FINCH_MAX_TASKS];
    for (int e = 0; e < n_epochs; e++) {
        int64_t in_epoch[FINCH_MAX_TASKS] = {0};
        finch_mix_order(order, mx, e, drawn, end, scratch);
        for (int64_t i = 0; i < total; i++) {
            assert_true(order[i] >= 0 && order[i] < total);
            int k = mx->n_tasks - 1;
            while (start[k] > order[i]) k--;
            if (seq) seq[k][counts[k]] = order[i] - start[k];
            counts[k]++;
            in_epoch[k]++;
        }
        for (int k = 0; k < mx->n_tasks; k++) assert_int_equal(end[k] - drawn[k], in_epoch[k]);
        memcpy(drawn, end, sizeof drawn);
    }
    free(order);
    free(scratch);
}

/* Each task's share of 200 epochs' slots is its weight's within 5 standard deviations of
 * the binomial count, for 0.7 / 0.3 and for three tasks of other sizes. */
static void test_proportions(void **state) {
    (void)state;
    static const struct {
        int n;
        int64_t size[3];
        double weight[3];
    } cases[] = {{2, {50, 20}, {0.7, 0.3}}, {3, {10, 40, 25}, {5, 3, 2}}, {2, {30, 30}, {1, 1}}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        finch_mixture mx = {cases[c].n, cases[c].size, cases[c].weight, 42};
        int64_t counts[FINCH_MAX_TASKS], draws = 0;
        double wsum = 0;
        draw(&mx, 200, counts, NULL);
        for (int k = 0; k < mx.n_tasks; k++) draws += counts[k], wsum += mx.weight[k];
        for (int k = 0; k < mx.n_tasks; k++) {
            double p = mx.weight[k] / wsum, sd = sqrt((double)draws * p * (1 - p));
            printf("  case %zu task %d: %lld of %lld draws, expected %.0f +- %.0f\n", c, k,
                   (long long)counts[k], (long long)draws, p * (double)draws, sd);
            assert_true(fabs((double)counts[k] - p * (double)draws) < 5 * sd);
        }
    }
}

/* A task drawn far more often than its size (10 examples, weight 0.9) repeats an example
 * only after each pass has visited all 10 once; one drawn less often than its size goes
 * through its examples across epochs, each pass a permutation too. */
static void test_passes(void **state) {
    (void)state;
    int64_t size[2] = {10, 90};
    double weight[2] = {0.9, 0.1};
    finch_mixture mx = {2, size, weight, 7};
    int64_t counts[2], *seq[2] = {malloc(100 * 20 * 8), malloc(100 * 20 * 8)};
    draw(&mx, 20, counts, seq);
    for (int k = 0; k < 2; k++) {
        int64_t passes = counts[k] / size[k];
        assert_true(passes >= 1);
        for (int64_t p = 0; p < passes; p++) {
            char seen[90] = {0};
            for (int64_t i = 0; i < size[k]; i++) {
                int64_t u = seq[k][p * size[k] + i];
                assert_false(seen[u]);
                seen[u] = 1;
            }
        }
        printf("  task %d (%lld examples): %lld draws, %lld whole passes, each a permutation\n",
               k, (long long)size[k], (long long)counts[k], (long long)passes);
    }
    free(seq[0]);
    free(seq[1]);
}

/* The order of an epoch depends on the seed, the epoch and the state only: recomputed from
 * the state saved at its start it is the same; another seed or epoch gives another. One
 * task's epoch e is finch_shuffle(size, seed, e), as before mixtures. */
static void test_determinism(void **state) {
    (void)state;
    int64_t size[2] = {13, 29}, a[42], b[42], scratch[42], d0[2] = {0}, d1[2], d2[2], d3[2];
    double weight[2] = {2, 1};
    finch_mixture mx = {2, size, weight, 42};
    finch_mix_order(a, &mx, 0, d0, d1, scratch);
    finch_mix_order(a, &mx, 1, d1, d2, scratch); /* epoch 1 after epoch 0 */
    finch_mix_order(b, &mx, 1, d1, d3, scratch); /* again, from the saved state */
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(d2, d3, sizeof d2);
    finch_mix_order(b, &mx, 2, d1, d3, scratch); /* another epoch number */
    assert_memory_not_equal(a, b, sizeof a);
    mx.seed = 43;
    finch_mix_order(b, &mx, 1, d1, d3, scratch);
    assert_memory_not_equal(a, b, sizeof a);
    /* one task */
    int64_t one[1] = {29}, drawn[1] = {0}, end[1], want[29];
    double w1[1] = {3};
    finch_mixture single = {1, one, w1, 42};
    for (int e = 0; e < 5; e++) {
        finch_mix_order(a, &single, e, drawn, end, scratch);
        finch_shuffle(want, 29, 42, e);
        assert_memory_equal(a, want, sizeof want);
        assert_int_equal(end[0], (e + 1) * 29);
        drawn[0] = end[0];
    }
}

/* "FILE", "FILE:WEIGHT", a file whose name holds ':', and bad weights, each named. */
static void test_source_parse(void **state) {
    (void)state;
    char path[64], dir[] = "/tmp/finch_mix_XXXXXX", odd[128];
    double w;
    finch_err err;
    assert_int_equal(finch_data_source_parse("a.jsonl", path, sizeof path, &w, &err), FINCH_OK);
    assert_string_equal(path, "a.jsonl");
    assert_true(w == 1.0);
    assert_int_equal(finch_data_source_parse("a.jsonl:0.7", path, sizeof path, &w, &err), FINCH_OK);
    assert_string_equal(path, "a.jsonl");
    assert_true(w == 0.7);
    assert_int_equal(finch_data_source_parse("dir:x/a.jsonl", path, sizeof path, &w, &err),
                     FINCH_OK);
    assert_string_equal(path, "dir:x/a.jsonl"); /* no weight after a '/' */
    assert_true(w == 1.0);
    /* a file named "b.jsonl:2" is taken whole */
    assert_non_null(mkdtemp(dir));
    snprintf(odd, sizeof odd, "%s/b.jsonl:2", dir);
    fclose(fopen(odd, "w"));
    assert_int_equal(finch_data_source_parse(odd, path, sizeof path, &w, &err), FINCH_OK);
    assert_string_equal(path, odd);
    assert_true(w == 1.0);
    unlink(odd);
    rmdir(dir);
    static const struct {
        const char *arg, *msg;
    } bad[] = {{"a.jsonl:abc", "--data a.jsonl:abc: no such file, and 'abc' is not a weight"},
               {"a.jsonl:", "'' is not a weight"},
               {"a.jsonl:0", "--data a.jsonl:0: weight 0: must be > 0"},
               {"a.jsonl:-0.5", "weight -0.5: must be > 0"},
               {"a.jsonl:inf", "'inf' is not a weight"},
               {"a.jsonl:nan", "'nan' is not a weight"},
               {":2", "no file before ':'"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(finch_data_source_parse(bad[i].arg, path, sizeof path, &w, &err),
                         FINCH_E_USAGE);
        if (!strstr(err.msg, bad[i].msg)) fail_msg("%s: '%s'", bad[i].arg, err.msg);
    }
    assert_int_equal(finch_data_source_parse("a-rather-long-name.jsonl", path, 8, &w, &err),
                     FINCH_E_USAGE);
}

/* Joining token sets moves the examples and adds the counts, task after task. */
static void test_append(void **state) {
    (void)state;
    finch_token_set all = {0}, part[2] = {{0}, {0}};
    for (int k = 0; k < 2; k++) {
        part[k].n = 2 + k;
        part[k].ex = calloc((size_t)part[k].n, sizeof *part[k].ex);
        for (int64_t i = 0; i < part[k].n; i++) part[k].ex[i].n = (int32_t)(10 * k + i);
        part[k].n_tokens = 5 + k;
        part[k].n_truncated = k;
    }
    finch_err err;
    for (int k = 0; k < 2; k++) assert_int_equal(finch_token_set_append(&all, &part[k], &err), 0);
    assert_int_equal(all.n, 5);
    assert_int_equal(all.n_tokens, 11);
    assert_int_equal(all.n_truncated, 1);
    assert_int_equal(all.ex[1].n, 1);
    assert_int_equal(all.ex[2].n, 10);
    assert_int_equal(part[0].n, 0);
    assert_null(part[0].ex);
    finch_token_set_release(&all);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proportions), cmocka_unit_test(test_passes),
        cmocka_unit_test(test_determinism), cmocka_unit_test(test_source_parse),
        cmocka_unit_test(test_append),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
