/*
 * test_hf_bnb.c: Hugging Face folders saved with bitsandbytes 4-bit NF4 load as they are
 * (model/load_hf.c). The fixtures (tests/reference/make_bnb_folder_fixtures.py) were
 * quantized by bitsandbytes, with and without double quantization, each beside the same
 * model whose projections hold the f32 values bitsandbytes dequantizes them to:
 *  - every projection finch reads from the 4-bit folder has bitsandbytes' values, bit for bit;
 *  - so the logits equal those of the f32 folder, bit for bit;
 *  - finch's own --load-in-4bit of the f32 folder (no double quantization: requantizing
 *    dequantized NF4 values gives back the same codes and absmax) makes the very blocks
 *    bitsandbytes stored;
 *  - quantization configs finch does not read are refused by name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finch.h"
#include "model/model.h" /* finch_layer_linear */
#include "model_util.h"  /* run_in */
#include "test_util.h"   /* read_text */

#define DIR FINCH_FIXTURES "/hf_bnb/"

static finch_model *load(const char *path) {
    finch_model *m;
    finch_err err;
    if (finch_model_load(path, &m, &err)) fail_msg("%s", err.msg);
    return m;
}

static void check_folder(const char *name) {
    char q[512], f[512];
    snprintf(q, sizeof q, DIR "%s", name);
    snprintf(f, sizeof f, DIR "%s_f32", name);
    finch_model *mq = load(q), *mf = load(f);
    const finch_model_config *c = &mq->cfg;
    assert_int_equal(c->n_params, mf->cfg.n_params);
    int n_nf4 = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int i = 0; i < FINCH_LAYER_LINEARS; i++) {
            const finch_weight *wq = &finch_layer_linear(&mq->layers[l], i)->w;
            const finch_weight *wf = &finch_layer_linear(&mf->layers[l], i)->w;
            assert_int_equal(wq->type, FINCH_DTYPE_NF4);
            assert_int_equal(wq->rows, wf->rows);
            assert_int_equal(wq->cols, wf->cols);
            float *a = malloc((size_t)(wq->rows * wq->cols) * sizeof *a);
            float *b = malloc((size_t)(wq->rows * wq->cols) * sizeof *b);
            assert_non_null(a);
            assert_non_null(b);
            finch_weight_rows_f32(wq, 0, wq->rows, a);
            finch_weight_rows_f32(wf, 0, wf->rows, b);
            assert_memory_equal(a, b, (size_t)(wq->rows * wq->cols) * sizeof *a);
            free(a);
            free(b);
            n_nf4++;
        }
    assert_int_equal(n_nf4, c->n_layer * FINCH_LAYER_LINEARS);
    int32_t ids[12] = {5, 88, 23, 61, 2, 40, 77, 13, 96, 31, 9, 70};
    float *x = run_in(mq, ids, 12, c->n_vocab, FINCH_NUMERICS_EXACT);
    float *y = run_in(mf, ids, 12, c->n_vocab, FINCH_NUMERICS_EXACT);
    double worst = 0;
    for (size_t i = 0; i < 12 * (size_t)c->n_vocab; i++)
        if (fabs((double)x[i] - y[i]) > worst) worst = fabs((double)x[i] - y[i]);
    printf("  %s: 4-bit folder vs its f32 dequantization: max |logit difference| = %.3g\n", name,
           worst);
    assert_true(worst == 0);
    free(x);
    free(y);
    finch_model_free(mq);
    finch_model_free(mf);
}

static void test_double_quant(void **state) {
    (void)state;
    check_folder("nf4_dq");
}

static void test_plain(void **state) {
    (void)state;
    check_folder("nf4");
}

static void test_load_in_4bit_equals_bitsandbytes(void **state) {
    (void)state;
    finch_model *mq = load(DIR "nf4"), *mf = load(DIR "nf4_f32");
    finch_err err;
    if (finch_model_load_in_4bit(mf, "nf4", 0, &err)) fail_msg("%s", err.msg);
    for (int l = 0; l < mq->cfg.n_layer; l++)
        for (int i = 0; i < FINCH_LAYER_LINEARS; i++) {
            const finch_weight *a = &finch_layer_linear(&mq->layers[l], i)->w;
            const finch_weight *b = &finch_layer_linear(&mf->layers[l], i)->w;
            assert_int_equal(b->type, FINCH_DTYPE_NF4);
            assert_int_equal(a->row_bytes, b->row_bytes);
            assert_memory_equal(a->data, b->data, (size_t)a->rows * a->row_bytes);
        }
    finch_model_free(mq);
    finch_model_free(mf);
}

/* config.json's quantization_config, edited into a copy of the double-quant folder (the
 * weights linked): each must be refused with a message naming what. */
static void test_unsupported_configs(void **state) {
    (void)state;
    char dir[] = "/tmp/finch_bnb_XXXXXX", path[512], weights[512];
    assert_non_null(mkdtemp(dir));
    snprintf(weights, sizeof weights, "%s/model.safetensors", dir);
    assert_int_equal(symlink(DIR "nf4_dq/model.safetensors", weights), 0);
    char *orig = read_text(DIR "nf4_dq/config.json");
    static const struct {
        const char *from, *to, *frag;
    } cases[] = {
        {"\"bnb_4bit_quant_type\": \"nf4\"", "\"bnb_4bit_quant_type\": \"fp4\"",
         "bnb_4bit_quant_type 'fp4' (finch reads nf4)"},
        {"\"quant_method\": \"bitsandbytes\"", "\"quant_method\": \"gptq\"", "quant_method 'gptq'"},
        {"\"load_in_4bit\": true", "\"load_in_4bit\": false", "bitsandbytes 8-bit"},
        {"\"bnb_4bit_quant_storage\": \"uint8\"", "\"bnb_4bit_quant_storage\": \"bfloat16\"",
         "bnb_4bit_quant_storage"},
        {"\"quant_method\": \"bitsandbytes\",", "", "has no string 'quant_method'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *at = strstr(orig, cases[i].from);
        if (!at) fail_msg("fixture config lacks %s", cases[i].from);
        snprintf(path, sizeof path, "%s/config.json", dir);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "%.*s%s%s", (int)(at - orig), orig, cases[i].to, at + strlen(cases[i].from));
        fclose(f);
        finch_model *m;
        finch_err err;
        assert_int_not_equal(finch_model_load(dir, &m, &err), FINCH_OK);
        if (!strstr(err.msg, cases[i].frag) || !strstr(err.msg, "quantization_config"))
            fail_msg("case %zu: message '%s' lacks '%s'", i, err.msg, cases[i].frag);
        printf("  %s\n", err.msg);
    }
    free(orig);
    unlink(path);
    unlink(weights);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_double_quant),
                                       cmocka_unit_test(test_plain),
                                       cmocka_unit_test(test_load_in_4bit_equals_bitsandbytes),
                                       cmocka_unit_test(test_unsupported_configs)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
