/*
 * test_cli_qlora.c: QLoRA through the command line. `--load-in-4bit` on an f32 GGUF must
 * train, evaluate and generate exactly as the same commands on an f32 GGUF whose
 * projections hold the NF4-rounded values (what bitsandbytes' Linear4bit computes with).
 * The model is the tiny LLaMA fixture with its FFN widened from 96 to 128 (new random
 * columns), so every projection row is whole NF4 blocks of 64; its tokenizer is the
 * fixture's own. Runs the built binary through /bin/sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finch.h"
#include "core/core.h"
#include "io/io.h"
#include "kernels/kernels.h" /* finch_weight_rows_f32 */
#include "model/model.h"
#include "test_gguf_edit.h"
#include "test_util.h"

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"
#define N_FF 128

static char tmpdir[] = "/tmp/finch_qlora_XXXXXX";
static char out[1 << 16];
static char base[600], rounded[600], data[600];

static int run(const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s", FINCH_CLI, args);
    return run_capture(tmpdir, cmd, NULL, out, sizeof out);
}

/* Writes the tiny model with an FFN of N_FF: gate/up gain rows, down gains columns; the
 * old values stay where they were. */
static void write_wide_model(const char *path) {
    finch_gguf *g;
    finch_err err;
    if (finch_gguf_open(TINY, &g, &err)) fail_msg("%s", err.msg);
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    assert_non_null(w);
    assert_int_equal(finch_gguf_set_kvs_from(w, g, "llama.feed_forward_length", &err), FINCH_OK);
    assert_int_equal(finch_gguf_set_u32(w, "llama.feed_forward_length", N_FF, &err), FINCH_OK);
    const int64_t nt = finch_gguf_n_tensors(g);
    float **bufs = calloc((size_t)nt, sizeof *bufs);
    uint64_t seed = 42;
    for (int64_t i = 0; i < nt; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        assert_int_equal(t->type, FINCH_DTYPE_F32);
        int64_t ne[2] = {t->ne[0], t->ne[1]};
        const float *src = (const float *)t->data;
        if (strstr(t->name, "ffn_gate") || strstr(t->name, "ffn_up")) { /* ne (64, 96) */
            ne[1] = N_FF;
            bufs[i] = malloc((size_t)(ne[0] * ne[1]) * sizeof(float));
            for (int64_t r = 0; r < ne[1]; r++)
                for (int64_t c = 0; c < ne[0]; c++)
                    bufs[i][r * ne[0] + c] = r < t->ne[1] ? src[r * ne[0] + c] : lcg_weight(&seed);
        } else if (strstr(t->name, "ffn_down")) { /* ne (96, 64) */
            ne[0] = N_FF;
            bufs[i] = malloc((size_t)(ne[0] * ne[1]) * sizeof(float));
            for (int64_t r = 0; r < ne[1]; r++)
                for (int64_t c = 0; c < ne[0]; c++)
                    bufs[i][r * ne[0] + c] =
                        c < t->ne[0] ? src[r * t->ne[0] + c] : lcg_weight(&seed);
        }
        assert_int_equal(finch_gguf_add_tensor(w, t->name, FINCH_DTYPE_F32, t->n_dims, ne,
                                               bufs[i] ? (const void *)bufs[i] : t->data, &err),
                         FINCH_OK);
    }
    gguf_edit_save(w, path, (void **)bufs, nt, g);
}

/* Writes src with every block projection replaced by the f32 values of its NF4 blocks as
 * finch's load_in_4bit makes them (double quantization as given). */
static void write_rounded_model(const char *src, const char *path, int double_quant) {
    finch_model *m;
    finch_err err;
    if (finch_model_load(src, &m, &err)) fail_msg("%s", err.msg);
    if (finch_model_load_in_4bit(m, "nf4", double_quant, &err)) fail_msg("%s", err.msg);
    finch_gguf *g;
    if (finch_gguf_open(src, &g, &err)) fail_msg("%s", err.msg);
    finch_gguf_writer *w = finch_gguf_writer_new(&err);
    assert_non_null(w);
    assert_int_equal(finch_gguf_set_kvs_from(w, g, NULL, &err), FINCH_OK);
    static const char *const stems[FINCH_LAYER_LINEARS] = {
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    const int64_t nt = finch_gguf_n_tensors(g);
    float **bufs = calloc((size_t)nt, sizeof *bufs);
    int replaced = 0;
    for (int64_t i = 0; i < nt; i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        for (int l = 0; l < m->cfg.n_layer; l++)
            for (int k = 0; k < FINCH_LAYER_LINEARS; k++) {
                char name[64];
                snprintf(name, sizeof name, "blk.%d.%s.weight", l, stems[k]);
                if (strcmp(name, t->name)) continue;
                const finch_weight *fw = &finch_layer_linear(&m->layers[l], k)->w;
                assert_int_equal(fw->type, FINCH_DTYPE_NF4);
                assert_true(fw->rows == t->ne[1] && fw->cols == t->ne[0]);
                bufs[i] = malloc((size_t)(fw->rows * fw->cols) * sizeof(float));
                finch_weight_rows_f32(fw, 0, fw->rows, bufs[i]);
                replaced++;
            }
        assert_int_equal(finch_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne,
                                               bufs[i] ? (const void *)bufs[i] : t->data, &err),
                         FINCH_OK);
    }
    assert_int_equal(replaced, m->cfg.n_layer * FINCH_LAYER_LINEARS);
    gguf_edit_save(w, path, (void **)bufs, nt, g);
    finch_model_free(m);
}

/* The "loss" values of a metrics.jsonl text, in order; returns how many (at most cap). */
static int losses(const char *metrics, double *v, int cap) {
    int n = 0;
    for (const char *p = metrics; n < cap && (p = strstr(p, "\"loss\": ")); p += 8)
        v[n++] = strtod(p + 8, NULL);
    return n;
}

/* The number after "loss: " in out. */
static double printed_loss(void) {
    const char *p = strstr(out, "loss: ");
    if (!p) fail_msg("no 'loss: ' in:\n%s", out);
    return strtod(p + 6, NULL);
}

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(tmpdir)) return -1;
    snprintf(base, sizeof base, "%s/wide.gguf", tmpdir);
    snprintf(data, sizeof data, "%s/colours.jsonl", tmpdir);
    write_wide_model(base);
    return write_colours(data, 4);
}

static int teardown(void **state) {
    (void)state;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) ? -1 : 0;
}

/* Train, eval and generate with --load-in-4bit equal the same on the rounded f32 model. */
static void check_against_rounded(int double_quant) {
    const char *dq = double_quant ? "true" : "false";
    snprintf(rounded, sizeof rounded, "%s/rounded_%s.gguf", tmpdir, dq);
    write_rounded_model(base, rounded, double_quant);
    const char *common = "--max-steps 12 --batch-size 4 --learning-rate 5e-3 --lora-r 4 "
                         "--target-modules all-linear --seed 3 --log-steps 1 -t 1";
    char args[4096], q_out[700], r_out[700];
    snprintf(q_out, sizeof q_out, "%s/q_%s", tmpdir, dq);
    snprintf(r_out, sizeof r_out, "%s/r_%s", tmpdir, dq);
    snprintf(args, sizeof args,
             "train -m %s --load-in-4bit --bnb-4bit-use-double-quant %s --data %s --out %s %s",
             base, dq, data, q_out, common);
    if (run(args)) fail_msg("finch %s:\n%s", args, out);
    snprintf(args, sizeof args, "train -m %s --data %s --out %s %s", rounded, data, r_out, common);
    if (run(args)) fail_msg("finch %s:\n%s", args, out);

    char *mq = read_text_in(q_out, "metrics.jsonl"), *mr = read_text_in(r_out, "metrics.jsonl");
    double lq[64], lr[64];
    int nq = losses(mq, lq, 64), nr = losses(mr, lr, 64);
    assert_int_equal(nq, 12);
    assert_int_equal(nr, nq);
    for (int i = 0; i < nq; i++)
        if (fabs(lq[i] - lr[i]) > 1e-5 * fabs(lr[i]))
            fail_msg("double quant %s, step %d: loss %.9g with --load-in-4bit, %.9g on the "
                     "rounded model",
                     dq, i + 1, lq[i], lr[i]);
    assert_true(lq[nq - 1] < 0.7 * lq[0]); /* it learns */
    free(mq);
    free(mr);
    /* the tolerance tells the bases apart: on the unrounded f32 base the first loss moves */
    char f_out[700];
    snprintf(f_out, sizeof f_out, "%s/f_%s", tmpdir, dq);
    snprintf(args, sizeof args, "train -m %s --data %s --out %s %s", base, data, f_out, common);
    if (run(args)) fail_msg("finch %s:\n%s", args, out);
    char *mf = read_text_in(f_out, "metrics.jsonl");
    double lf[64];
    assert_int_equal(losses(mf, lf, 64), nq);
    free(mf);
    if (fabs(lf[0] - lq[0]) < 1e-4 * fabs(lq[0]))
        fail_msg("step 1: the f32 base's loss %.9g is the NF4 one's %.9g", lf[0], lq[0]);

    /* the adapter trained over NF4 evaluates and generates the same on both */
    snprintf(args, sizeof args,
             "eval -m %s --load-in-4bit --bnb-4bit-use-double-quant %s "
             "--data %s --adapter %s -t 1",
             base, dq, data, q_out);
    if (run(args)) fail_msg("finch %s:\n%s", args, out);
    const double eq = printed_loss();
    snprintf(args, sizeof args, "eval -m %s --data %s --adapter %s -t 1", rounded, data, q_out);
    if (run(args)) fail_msg("finch %s:\n%s", args, out);
    const double er = printed_loss();
    if (fabs(eq - er) > 1e-4 * fabs(er)) fail_msg("eval loss %.6g against %.6g", eq, er);

    static char gq[sizeof out];
    snprintf(args, sizeof args,
             "generate -m %s --load-in-4bit --bnb-4bit-use-double-quant %s "
             "-p 'color gold:' -n 6 --adapter %s -t 1",
             base, dq, q_out);
    if (run(args)) fail_msg("finch %s:\n%s", args, out);
    memcpy(gq, out, sizeof out);
    snprintf(args, sizeof args, "generate -m %s -p 'color gold:' -n 6 --adapter %s -t 1", rounded,
             q_out);
    if (run(args)) fail_msg("finch %s:\n%s", args, out);
    assert_string_equal(gq, out);
}

static void test_qlora_no_double_quant(void **state) {
    (void)state;
    check_against_rounded(0);
}

static void test_qlora_double_quant(void **state) {
    (void)state;
    check_against_rounded(1);
}

/* Double quantization changes the base: its rounded model is not the plain NF4 one. */
static void test_double_quant_differs(void **state) {
    (void)state;
    char a[700], b[700];
    snprintf(a, sizeof a, "%s/rounded_false.gguf", tmpdir);
    snprintf(b, sizeof b, "%s/rounded_true.gguf", tmpdir);
    write_rounded_model(base, a, 0);
    write_rounded_model(base, b, 1);
    assert_false(same_bytes(a, b));
    /* and neither is the f32 base */
    assert_false(same_bytes(a, base));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qlora_no_double_quant),
        cmocka_unit_test(test_qlora_double_quant),
        cmocka_unit_test(test_double_quant_differs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
