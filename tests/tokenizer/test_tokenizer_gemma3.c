/*
 * test_tokenizer_gemma3.c: finch's SentencePiece tokenizer on the real Gemma 3 270M
 * vocabulary (262,144 tokens, tokenizer.ggml.model "llama") against llama.cpp.
 * tests/fixtures/tokenizer/gemma3_ids.jsonl (made by tests/reference/make_spm_fixtures.py)
 * holds more than a thousand lines (prose, code, numbers, runs of spaces, newlines and tabs,
 * accents, combining marks, CJK, emoji, right-to-left scripts, Gemma's control and HTML
 * tokens written out, U+2581 and <0xXX> written out, invalid UTF-8), some with special
 * tokens parsed or added, with the ids llama.cpp gives them; every line must give the same
 * ids here and decode back to its text, or where llama.cpp does not round-trip, to what
 * llama.cpp decodes; also from several threads at once. The end-of-generation set must be
 * llama.cpp's.
 *
 * The model comes from $FINCH_CACHE (default ~/.cache/finch)/gemma-3-270m-q4_k_m.gguf, which
 * scripts/setup.sh --with-gemma3 fetches (CI does). Without it the test fails saying so; it
 * never skips.
 */
#include "tok_test.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

static finch_tokenizer *tok;
static tt_ref_line *lines;
static size_t n_lines;
static size_t n_lossy; /* lines llama.cpp does not decode back to themselves */
static json_t *meta;   /* the fixture's first line */

static void model_path(char *buf, size_t cap) {
    const char *cache = getenv("FINCH_CACHE"), *home = getenv("HOME");
    if (cache)
        snprintf(buf, cap, "%s/gemma-3-270m-q4_k_m.gguf", cache);
    else
        snprintf(buf, cap, "%s/.cache/finch/gemma-3-270m-q4_k_m.gguf", home ? home : "");
}

static int setup(void **state) {
    (void)state;
    char path[4096];
    model_path(path, sizeof path);
    if (access(path, R_OK) != 0) {
        fprintf(stderr,
                "Gemma 3 270M is missing at %s: run scripts/setup.sh --with-gemma3 to fetch it "
                "(or set FINCH_CACHE to the folder that has it)\n",
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
    return tt_ref_load(TOK_FIXTURES "gemma3_ids.jsonl", &lines, &n_lines, &n_lossy, &meta);
}

static int teardown(void **state) {
    (void)state;
    tt_ref_free(lines, n_lines);
    json_decref(meta);
    finch_tokenizer_free(tok);
    return 0;
}

static void test_ids_match_llamacpp(void **state) {
    (void)state;
    assert_true(n_lines >= 1000);
    struct timespec t0, t1;
    size_t round_trips;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int bad = tt_ref_check(tok, lines, n_lines, true, &round_trips);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%zu lines: %d differ from llama.cpp or do not decode as llama.cpp does; %zu decode "
           "back to their text (llama.cpp does not round-trip the other %zu); %.1f ms\n",
           n_lines, bad, round_trips, n_lossy,
           (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    assert_int_equal(bad, 0);
    assert_int_equal(round_trips + n_lossy, n_lines);
    assert_true(n_lossy < n_lines / 10);
}

static void *thread_main(void *arg) {
    *(int *)arg = tt_ref_check(tok, lines, n_lines, false, NULL);
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
    assert_int_equal(finch_tokenizer_n_vocab(tok), 262144);
    assert_int_equal(finch_tokenizer_n_merges(tok), 0);
    assert_int_equal(finch_tokenizer_bos(tok), 2);
    assert_int_equal(finch_tokenizer_eos(tok), 1);
    assert_string_equal(finch_tokenizer_model_name(tok), "llama");
    assert_string_equal(finch_tokenizer_pre_name(tok), "default");
    assert_string_equal(finch_tokenizer_token_text(tok, 105), "<start_of_turn>");
    assert_string_equal(finch_tokenizer_token_text(tok, 106), "<end_of_turn>");
    assert_null(finch_tokenizer_token_text(tok, 262144));
    assert_null(finch_tokenizer_chat_template(tok)); /* a base model */

    /* llama.cpp's end-of-generation set, recorded in the fixture */
    int64_t n_eog;
    int32_t *eog = tt_ids(json_object_get(meta, "eog"), &n_eog);
    assert_true(n_eog >= 2);
    for (int32_t id = 0, k = 0; id < 262144; id++) {
        bool want = k < n_eog && eog[k] == id;
        k += want;
        if (finch_tokenizer_is_eog(tok, id) != want)
            fail_msg("is_eog(%d) ('%s') is %d, llama.cpp says %d", id,
                     finch_tokenizer_token_text(tok, id), finch_tokenizer_is_eog(tok, id), want);
    }
    free(eog);
}

static void test_add_special_and_pieces(void **state) {
    (void)state;
    finch_err err;
    int32_t *ids;
    int64_t n;
    /* add_bos_token is true, add_space_prefix false: BOS and no space before "Hello" */
    assert_int_equal(finch_tokenize(tok, "Hello world", 11, FINCH_TOK_ADD_SPECIAL, &ids, &n, &err),
                     FINCH_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 9259);
    assert_int_equal(ids[2], 1902);
    char *text;
    size_t len;
    assert_int_equal(finch_detokenize(tok, ids, n, 0, &text, &len, &err), FINCH_OK);
    assert_string_equal(text, "Hello world");
    free(text);
    assert_int_equal(finch_detokenize(tok, ids, n, FINCH_TOK_PARSE_SPECIAL, &text, &len, &err),
                     FINCH_OK);
    assert_string_equal(text, "<bos>Hello world");
    free(text);
    free(ids);

    char buf[8];
    assert_int_equal(finch_tokenizer_piece(tok, 1902, false, buf, sizeof buf), 6);
    assert_memory_equal(buf, " world", 6);
    assert_int_equal(finch_tokenizer_piece(tok, 106, false, buf, sizeof buf), 0);
    assert_int_equal(finch_tokenizer_piece(tok, 107, false, buf, sizeof buf), 1); /* "\n" */
    assert_int_equal(buf[0], '\n');
}

/* Long inputs: the whole fixture in one call, and runs of one character. */
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
    const char fill[] = {'a', ' ', '7', '\n', '\t', '!'};
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
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_match_llamacpp), cmocka_unit_test(test_concurrent_calls),
        cmocka_unit_test(test_metadata),           cmocka_unit_test(test_add_special_and_pieces),
        cmocka_unit_test(test_long_inputs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
