/*
 * test_tokenizer_ref.c: finch's tokenizer on the real SmolLM2-135M-Instruct vocabulary
 * against llama.cpp. tests/fixtures/tokenizer/smollm2_ids.jsonl holds more than a
 * thousand lines (prose, code, whitespace runs, numbers, CJK, emoji, scripts, control
 * token strings, invalid UTF-8) with the ids llama.cpp's tokenizer gives them; every line
 * must give the same ids here, decode back to the same text (or, for invalid UTF-8 and the
 * few bytes the vocabulary has no token for, to what llama.cpp decodes), and do so from
 * several threads at once.
 *
 * The model comes from $FINCH_MODEL, else $FINCH_CACHE or ~/.cache/finch (what
 * scripts/setup.sh fills). Without it the test fails saying how to fetch it;
 * FINCH_ALLOW_NO_MODEL=1 makes it skip instead.
 */
#include "tok_test.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

static finch_tokenizer *tok;
static tt_ref_line *lines;
static size_t n_lines;
static size_t n_lossy; /* lines llama.cpp does not decode back to themselves */

static bool model_path(char *buf, size_t cap) {
    const char *env = getenv("FINCH_MODEL");
    if (env) {
        snprintf(buf, cap, "%s", env);
    } else if (getenv("FINCH_CACHE")) {
        snprintf(buf, cap, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("FINCH_CACHE"));
    } else {
        const char *home = getenv("HOME");
        snprintf(buf, cap, "%s/.cache/finch/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    }
    return access(buf, R_OK) == 0;
}

static int setup(void **state) {
    (void)state;
    char path[4096];
    if (!model_path(path, sizeof path)) {
        fprintf(stderr,
                "the default model is missing at %s: run scripts/setup.sh (or set "
                "FINCH_MODEL; FINCH_ALLOW_NO_MODEL=1 skips this test)\n",
                path);
        return -1;
    }
    finch_err err;
    finch_gguf *g;
    if (finch_gguf_open(path, &g, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    finch_status st = finch_tokenizer_from_gguf(g, &tok, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    finch_gguf_close(g);
    if (st) return fprintf(stderr, "%s\n", err.msg), -1;
    printf("tokenizer loaded in %.1f ms\n",
           (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    return tt_ref_load(TOK_FIXTURES "smollm2_ids.jsonl", &lines, &n_lines, &n_lossy, NULL);
}

static int teardown(void **state) {
    (void)state;
    tt_ref_free(lines, n_lines);
    finch_tokenizer_free(tok);
    return 0;
}

/* Checks every line (tt_ref_check), timing it. */
static int check_all(bool verbose, double *ms) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int bad = tt_ref_check(tok, lines, n_lines, verbose, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (ms) *ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    return bad;
}

static void test_ids_match_llamacpp(void **state) {
    (void)state;
    assert_true(n_lines >= 1000);
    double ms;
    int bad = check_all(true, &ms);
    printf("%zu lines (%zu of them invalid UTF-8 or with bytes the vocabulary lacks): %d "
           "differ from llama.cpp or do not decode as llama.cpp does; %.1f ms\n",
           n_lines, n_lossy, bad, ms);
    assert_true(n_lossy < 50);
    assert_int_equal(bad, 0);
}

static void *thread_main(void *arg) {
    *(int *)arg = check_all(false, NULL);
    return NULL;
}

static void test_concurrent_calls(void **state) {
    (void)state;
    enum { N = 4 };
    pthread_t th[N];
    int bad[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &bad[i]), 0);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(bad[i], 0);
    }
}

static void test_metadata(void **state) {
    (void)state;
    assert_int_equal(finch_tokenizer_n_vocab(tok), 49152);
    assert_int_equal(finch_tokenizer_n_merges(tok), 48900);
    assert_int_equal(finch_tokenizer_bos(tok), 1);
    assert_int_equal(finch_tokenizer_eos(tok), 2);
    assert_string_equal(finch_tokenizer_model_name(tok), "gpt2");
    assert_string_equal(finch_tokenizer_pre_name(tok), "smollm");
    assert_string_equal(finch_tokenizer_token_text(tok, 1), "<|im_start|>");
    assert_string_equal(finch_tokenizer_token_text(tok, 216), "Ġ");
    assert_null(finch_tokenizer_token_text(tok, 49152));
    assert_null(finch_tokenizer_token_text(tok, -1));
    /* llama.cpp's EOG set for this file: <|endoftext|>, <|im_end|>, and <reponame> (its
     * FIM repo token, found by name) */
    for (int32_t id = 0; id < 49152; id++) {
        int want = id == 0 || id == 2 || id == 4;
        if (finch_tokenizer_is_eog(tok, id) != want) fail_msg("is_eog(%d) is wrong", id);
    }
    assert_int_equal(finch_tokenizer_is_eog(tok, -1), 0);
    const char *t = finch_tokenizer_chat_template(tok);
    assert_non_null(t);
    assert_int_equal(finch_chat_detect(t, strlen(t)), FINCH_CHAT_CHATML);
}

static void test_add_special_and_pieces(void **state) {
    (void)state;
    finch_err err;
    int32_t *ids;
    int64_t n;
    /* add_bos_token is false and there is no add_eos_token: nothing is added */
    assert_int_equal(finch_tokenize(tok, "Hello world", 11,
                                    FINCH_TOK_ADD_SPECIAL | FINCH_TOK_PARSE_SPECIAL, &ids, &n,
                                    &err),
                     FINCH_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 19556);
    assert_int_equal(ids[1], 905);
    free(ids);

    /* control tokens decode to nothing unless asked for */
    const int32_t chat[] = {1, 4093, 198, 6004, 2};
    char *text;
    size_t len;
    assert_int_equal(finch_detokenize(tok, chat, 5, 0, &text, &len, &err), FINCH_OK);
    assert_string_equal(text, "user\nhi");
    free(text);
    assert_int_equal(finch_detokenize(tok, chat, 5, FINCH_TOK_PARSE_SPECIAL, &text, &len, &err),
                     FINCH_OK);
    assert_string_equal(text, "<|im_start|>user\nhi<|im_end|>");
    assert_int_equal(len, strlen("<|im_start|>user\nhi<|im_end|>"));
    free(text);

    char buf[8];
    assert_int_equal(finch_tokenizer_piece(tok, 905, false, buf, sizeof buf), 6);
    assert_memory_equal(buf, " world", 6);
    assert_int_equal(finch_tokenizer_piece(tok, 2, false, buf, sizeof buf), 0);
    assert_int_equal(finch_tokenizer_piece(tok, 2, true, buf, 4), 10); /* truncated copy */
    assert_memory_equal(buf, "<|im", 4);
    assert_int_equal(finch_tokenizer_piece(tok, 49152, true, buf, sizeof buf), -1);
}

/* Long inputs: a whole fixture's worth of text in one call, and pathological runs. */
static void test_long_inputs(void **state) {
    (void)state;
    size_t total = 0;
    for (size_t i = 0; i < n_lines; i++) total += lines[i].len + 1;
    char *all = malloc(total + 1);
    size_t at = 0;
    for (size_t i = 0; i < n_lines; i++) {
        memcpy(all + at, lines[i].text, lines[i].len);
        at += lines[i].len;
        all[at++] = '\n';
    }
    finch_err err;
    int32_t *ids;
    int64_t n;
    char *dec;
    size_t dlen;
    assert_int_equal(finch_tokenize(tok, all, at, 0, &ids, &n, &err), FINCH_OK);
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &dlen, &err), FINCH_OK);
    free(ids);
    free(dec);
    free(all);

    const size_t big = 1 << 18;
    char *run = malloc(big);
    const char fill[] = {'a', ' ', '7', '\n', '!'};
    for (size_t k = 0; k < sizeof fill; k++) {
        memset(run, fill[k], big);
        if (finch_tokenize(tok, run, big, 0, &ids, &n, &err)) fail_msg("%s", err.msg);
        assert_true(n > 0);
        assert_int_equal(finch_detokenize(tok, ids, n, 0, &dec, &dlen, &err), FINCH_OK);
        assert_int_equal(dlen, big);
        assert_memory_equal(dec, run, big);
        free(ids);
        free(dec);
    }
    free(run);
}

int main(void) {
    char path[4096];
    if (!model_path(path, sizeof path) && getenv("FINCH_ALLOW_NO_MODEL")) {
        printf("skipped: no model at %s (FINCH_ALLOW_NO_MODEL set)\n", path);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_match_llamacpp), cmocka_unit_test(test_concurrent_calls),
        cmocka_unit_test(test_metadata),           cmocka_unit_test(test_add_special_and_pieces),
        cmocka_unit_test(test_long_inputs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
