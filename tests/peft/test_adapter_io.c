/*
 * test_adapter_io.c: LoRA adapters in and out of files (src/peft/adapter_io.c).
 *
 *   - PEFT folder round trip on the tiny model: save -> load gives the same adapter bit
 *     for bit (random A and B, several configs);
 *   - the written folder is what PEFT expects: config fields, key names, shapes, F32, and
 *     the B rows of q_proj/k_proj in Hugging Face order;
 *   - the q/k row permutation against an independent source: the float64 PyTorch reference
 *     matrices in tests/fixtures/lora/ (HF order, tests/reference/make_lora_reference.py)
 *     are written as a PEFT folder here, loaded by finch, and finch's in-memory B is
 *     compared with the fixture's rows moved by a formula written in this file;
 *   - bad PEFT folders, each with a message naming the file;
 *   - the GGUF adapter for llama.cpp read back with the GGUF reader.
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
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"
#include "peft/peft.h"
#include "test_lora.h"
#include "test_util.h"

#define MODEL FINCH_FIXTURES "/model/tiny_llama.gguf"
#define LORA_DIR FINCH_FIXTURES "/lora/"

static const char *const peft_names[FINCH_TARGET_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

typedef struct {
    finch_model *m;
} fixture;

static int setup(void **state) {
    static fixture f;
    finch_err err = {0};
    if (finch_model_load(MODEL, &f.m, &err)) fail_msg("%s", err.msg);
    *state = &f;
    return 0;
}

static int teardown(void **state) {
    finch_model_free(((fixture *)*state)->m);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------- */

/* A fresh folder under $TMPDIR (or /tmp), never in the working directory. */
static void make_tmpdir(char *buf, size_t n, const char *tag) {
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, n, "%s/peft_%s_XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    assert_non_null(mkdtemp(buf));
}

static void join(char *buf, size_t n, const char *dir, const char *name) {
    snprintf(buf, n, "%s/%s", dir, name);
}

/* Removes the two adapter files (and a GGUF) and the folder. */
static void rm_dir(const char *dir) {
    const char *names[] = {"adapter_config.json", "adapter_model.safetensors", "lora.gguf"};
    char p[512];
    for (size_t i = 0; i < 3; i++) {
        join(p, sizeof p, dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

static bool contains(const char *s, const char *sub) {
    return strstr(s, sub) != NULL;
}

static finch_peft *random_lora(const finch_model *m, const finch_lora_config *cfg, uint64_t seed) {
    finch_rng rng;
    finch_rng_seed(&rng, seed);
    finch_peft *l = NULL;
    finch_err err = {0};
    if (!(l = lora_new(m, cfg, &rng, false))) fail_msg("%s", err.msg);
    for (int64_t i = 0; i < l->params.total; i++) l->params.data[i] = 2.0f * finch_rng_float(&rng) - 1.0f;
    return l;
}

static void key_of(char *buf, size_t n, int layer, finch_target t, char ab) {
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer,
             t <= FINCH_TARGET_O ? "self_attn" : "mlp", peft_names[t], ab);
}

/* The HF row that GGUF row g comes from, in a head of D rows: written from the
 * RoPE pairing (GGUF pairs adjacent rows 2i, 2i+1; HF pairs i, i + D/2), not as the
 * library's loop over pairs. */
static int64_t hf_row_of_gguf_row(int64_t g, int64_t D) {
    int64_t h = g / D, j = g % D;
    return h * D + (j % 2 == 0 ? j / 2 : D / 2 + j / 2);
}

static int heads_of(const finch_model *m, finch_target t) {
    return t == FINCH_TARGET_Q ? m->cfg.n_head : t == FINCH_TARGET_K ? m->cfg.n_head_kv : 0;
}

/* ---- round trip ------------------------------------------------------------------------ */

static void round_trip(const finch_model *m, const finch_lora_config *cfg, uint64_t seed) {
    char dir[256];
    finch_err err = {0};
    make_tmpdir(dir, sizeof dir, "rt");
    finch_peft *a = random_lora(m, cfg, seed), *b = NULL;
    /* into a folder that does not exist yet */
    char sub[512];
    join(sub, sizeof sub, dir, "adapter");
    if (finch_peft_save(a, m, sub, &err)) fail_msg("%s", err.msg);
    if (finch_peft_load(sub, m, &b, &err)) fail_msg("%s", err.msg);
    assert_int_equal(LORA_CFG(b)->r, cfg->r);
    assert_true(LORA_CFG(b)->alpha == cfg->alpha);
    assert_true(LORA_CFG(b)->dropout == cfg->dropout);
    assert_int_equal(LORA_CFG(b)->rslora, cfg->rslora);
    assert_int_equal(LORA_CFG(b)->targets, cfg->targets);
    assert_true(LORA(b)->sites[0].scale == LORA(a)->sites[0].scale);
    assert_int_equal(LORA(b)->n_sites, LORA(a)->n_sites);
    assert_int_equal(b->params.total, a->params.total);
    for (int i = 0; i < LORA(a)->n_sites; i++) {
        assert_int_equal(LORA(b)->sites[i].layer, LORA(a)->sites[i].layer);
        assert_int_equal(LORA(b)->sites[i].target, LORA(a)->sites[i].target);
    }
    assert_memory_equal(b->params.data, a->params.data, (size_t)a->params.total * sizeof(float));
    /* saving over an existing folder replaces it */
    if (finch_peft_save(b, m, sub, &err)) fail_msg("%s", err.msg);
    finch_peft_free(b);
    finch_peft_free(a);
    rm_dir(sub);
    rmdir(dir);
}

static void test_round_trip(void **state) {
    const finch_model *m = ((fixture *)*state)->m;
    finch_lora_config all = {
        .r = 4, .alpha = 16, .dropout = 0.05f, .targets = (1u << FINCH_TARGET_COUNT) - 1};
    round_trip(m, &all, 1);
    finch_lora_config qv = {.r = 3,
                            .alpha = 7.5f,
                            .rslora = true,
                            .targets = 1u << FINCH_TARGET_Q | 1u << FINCH_TARGET_V};
    round_trip(m, &qv, 2);
    finch_lora_config kdown = {
        .r = 1, .alpha = 0.1f, .targets = 1u << FINCH_TARGET_K | 1u << FINCH_TARGET_DOWN};
    round_trip(m, &kdown, 3);
}

/* ---- what PEFT expects ------------------------------------------------------------------ */

static void test_peft_layout(void **state) {
    const finch_model *m = ((fixture *)*state)->m;
    char dir[256], path[600], key[256];
    finch_err err = {0};
    make_tmpdir(dir, sizeof dir, "layout");
    finch_lora_config cfg = {.r = 4,
                             .alpha = 8,
                             .rslora = true,
                             .targets = 1u << FINCH_TARGET_Q | 1u << FINCH_TARGET_K |
                                        1u << FINCH_TARGET_O | 1u << FINCH_TARGET_DOWN};
    finch_peft *l = random_lora(m, &cfg, 4);
    if (finch_peft_save(l, m, dir, &err)) fail_msg("%s", err.msg);

    /* the config */
    join(path, sizeof path, dir, "adapter_config.json");
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "peft_type")), "LORA");
    assert_string_equal(json_string_value(json_object_get(j, "task_type")), "CAUSAL_LM");
    assert_string_equal(json_string_value(json_object_get(j, "bias")), "none");
    assert_string_equal(json_string_value(json_object_get(j, "base_model_name_or_path")),
                        m->cfg.name);
    assert_int_equal(json_integer_value(json_object_get(j, "r")), 4);
    assert_true(json_is_integer(json_object_get(j, "lora_alpha")));
    assert_int_equal(json_integer_value(json_object_get(j, "lora_alpha")), 8);
    assert_true(json_is_real(json_object_get(j, "lora_dropout")));
    assert_true(json_real_value(json_object_get(j, "lora_dropout")) == 0.0);
    assert_true(json_is_true(json_object_get(j, "use_rslora")));
    assert_true(json_is_true(json_object_get(j, "inference_mode")));
    assert_true(json_is_true(json_object_get(j, "init_lora_weights")));
    assert_true(json_is_false(json_object_get(j, "fan_in_fan_out")));
    assert_true(json_is_false(json_object_get(j, "use_dora")));
    json_t *tm = json_object_get(j, "target_modules");
    const char *want[] = {"down_proj", "k_proj", "o_proj", "q_proj"}; /* sorted */
    assert_int_equal(json_array_size(tm), 4);
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(json_string_value(json_array_get(tm, i)), want[i]);
    json_decref(j);
    /* keys sorted, two-space indent, as PEFT writes */
    size_t n;
    char *text = (char *)read_file(path, &n);
    assert_true(n > 20 && !strncmp(text, "{\n  \"alpha_pattern\": {},\n", 25));
    free(text);

    /* the weights */
    join(path, sizeof path, dir, "adapter_model.safetensors");
    finch_st *st = NULL;
    if (finch_st_open(path, &st, &err)) fail_msg("%s", err.msg);
    assert_string_equal(finch_st_get_meta(st, "format"), "pt");
    assert_int_equal(finch_st_n_tensors(st), 2 * 4 * m->cfg.n_layer);
    const int64_t C = m->cfg.n_embd, F = m->cfg.n_ff, D = m->cfg.head_dim;
    for (int L = 0; L < m->cfg.n_layer; L++)
        for (int t = 0; t < FINCH_TARGET_COUNT; t++) {
            if (!(cfg.targets >> t & 1)) continue;
            int64_t in = t == FINCH_TARGET_O ? m->cfg.n_head * D : t == FINCH_TARGET_DOWN ? F : C;
            int64_t out = t == FINCH_TARGET_Q      ? m->cfg.n_head * D
                          : t == FINCH_TARGET_K    ? m->cfg.n_head_kv * D
                          : t == FINCH_TARGET_DOWN ? C
                                                   : C;
            const finch_lora_site *s = lora_find(l, L, (finch_target)t);
            assert_non_null(s);
            key_of(key, sizeof key, L, (finch_target)t, 'A');
            const finch_st_tensor *a = finch_st_find(st, key);
            if (!a) fail_msg("missing %s", key);
            assert_int_equal(a->dtype, FINCH_ST_F32);
            assert_int_equal(a->n_dims, 2);
            assert_int_equal(a->shape[0], 4);
            assert_int_equal(a->shape[1], in);
            assert_memory_equal(a->data, s->A, (size_t)(4 * in) * sizeof(float));
            key_of(key, sizeof key, L, (finch_target)t, 'B');
            const finch_st_tensor *b = finch_st_find(st, key);
            if (!b) fail_msg("missing %s", key);
            assert_int_equal(b->dtype, FINCH_ST_F32);
            assert_int_equal(b->n_dims, 2);
            assert_int_equal(b->shape[0], out);
            assert_int_equal(b->shape[1], 4);
            const float *fb = (const float *)b->data;
            for (int64_t g = 0; g < out; g++) {
                int64_t hf = heads_of(m, (finch_target)t) ? hf_row_of_gguf_row(g, D) : g;
                assert_memory_equal(fb + hf * 4, s->B + g * 4, 4 * sizeof(float));
            }
        }
    finch_st_close(st);
    finch_peft_free(l);
    rm_dir(dir);
}

/* ---- against the PyTorch reference ------------------------------------------------------ */

static float *read_f32(const char *name, size_t n) {
    char path[512];
    size_t size;
    snprintf(path, sizeof path, LORA_DIR "%s", name);
    float *v = (float *)read_file(path, &size);
    assert_int_equal(size, n * sizeof(float));
    return v;
}

static int target_of_gguf(const char *stem) {
    for (int t = 0; t < FINCH_TARGET_COUNT; t++)
        if (!strcmp(stem, finch_target_gguf_name((finch_target)t))) return t;
    fail_msg("unknown target %s", stem);
    return -1;
}

/* The reference's "grad" matrices (HF order), one entry per (layer, target). */
typedef struct {
    int n;
    int layer[64], target[64];
    int64_t in[64], out[64];
    float *A[64], *B[64];
    int r;
    double alpha;
} reference;

static void reference_load(reference *ref) {
    json_error_t je;
    json_t *j = json_load_file(LORA_DIR "lora_reference.json", 0, &je);
    if (!j) fail_msg("lora_reference.json: %s", je.text);
    memset(ref, 0, sizeof *ref);
    ref->r = (int)json_integer_value(json_object_get(j, "r"));
    ref->alpha = json_number_value(json_object_get(j, "alpha"));
    json_t *ts = json_object_get(json_object_get(j, "grad"), "tensors"), *e;
    size_t i;
    json_array_foreach(ts, i, e) {
        assert_true(ref->n < 64);
        int k = ref->n++;
        char name[256];
        const char *prefix = json_string_value(json_object_get(e, "prefix"));
        ref->layer[k] = (int)json_integer_value(json_object_get(e, "layer"));
        ref->target[k] = target_of_gguf(json_string_value(json_object_get(e, "target")));
        ref->in[k] = json_integer_value(json_array_get(json_object_get(e, "A_shape"), 1));
        ref->out[k] = json_integer_value(json_array_get(json_object_get(e, "B_shape"), 0));
        snprintf(name, sizeof name, "%s_A.f32", prefix);
        ref->A[k] = read_f32(name, (size_t)(ref->r * ref->in[k]));
        snprintf(name, sizeof name, "%s_B.f32", prefix);
        ref->B[k] = read_f32(name, (size_t)(ref->r * ref->out[k]));
    }
    json_decref(j);
}

static void reference_free(reference *ref) {
    for (int k = 0; k < ref->n; k++) free(ref->A[k]), free(ref->B[k]);
}

/* How write_folder spoils the weights, for the bad-input table. */
typedef struct {
    int skip;          /* index of a tensor to leave out (2k: A of entry k, 2k+1: B), or -1 */
    const char *extra; /* name of an extra tensor, or NULL */
    int reshape;       /* index of a tensor stored with the wrong shape, or -1 */
    int retype;        /* index of a tensor stored as I32, or -1 */
    int bf16;          /* store every tensor as BF16 */
} spoil;

/* Writes the reference's matrices as a PEFT folder: config_text and the safetensors. */
static void write_folder(const char *dir, const reference *ref, const char *config_text,
                         const spoil *sp) {
    char path[256], key[256];
    finch_err err = {0};
    finch_st_writer *w = finch_st_writer_new(&err);
    assert_non_null(w);
    uint16_t *halves[128] = {0};
    static float extra_data[4];
    for (int k = 0; k < ref->n; k++)
        for (int ab = 0; ab < 2; ab++) {
            int idx = 2 * k + ab;
            if (sp && sp->skip == idx) continue;
            key_of(key, sizeof key, ref->layer[k], (finch_target)ref->target[k], ab ? 'B' : 'A');
            int64_t shape[2] = {ab ? ref->out[k] : ref->r, ab ? ref->r : ref->in[k]};
            const float *data = ab ? ref->B[k] : ref->A[k];
            finch_st_dtype dt = FINCH_ST_F32;
            if (sp && sp->reshape == idx) shape[0] /= 2, shape[1] *= 2;
            if (sp && sp->retype == idx) dt = FINCH_ST_I32;
            if (sp && sp->bf16) {
                size_t n = (size_t)(shape[0] * shape[1]);
                halves[idx] = malloc(n * 2);
                for (size_t e = 0; e < n; e++) halves[idx][e] = finch_f32_to_bf16(data[e]);
                data = (const float *)halves[idx];
                dt = FINCH_ST_BF16;
            }
            if (finch_st_writer_add(w, key, dt, 2, shape, data, &err)) fail_msg("%s", err.msg);
        }
    if (sp && sp->extra) {
        int64_t shape[2] = {1, 4};
        if (finch_st_writer_add(w, sp->extra, FINCH_ST_F32, 2, shape, extra_data, &err))
            fail_msg("%s", err.msg);
    }
    join(path, sizeof path, dir, "adapter_model.safetensors");
    if (finch_st_writer_save(w, path, &err)) fail_msg("%s", err.msg);
    finch_st_writer_free(w);
    for (int i = 0; i < 128; i++) free(halves[i]);
    if (config_text) {
        join(path, sizeof path, dir, "adapter_config.json");
        write_text(path, config_text);
    }
}

static void config_text(char *buf, size_t n, const char *peft_type, int r, double alpha,
                        const char *targets) {
    snprintf(buf, n,
             "{\"peft_type\": \"%s\", \"task_type\": \"CAUSAL_LM\", \"r\": %d, \"lora_alpha\": %g,"
             " \"lora_dropout\": 0.0, \"bias\": \"none\", \"use_rslora\": false,"
             " \"target_modules\": %s, \"rank_pattern\": {}, \"alpha_pattern\": {},"
             " \"some_future_field\": [1, 2]}",
             peft_type, r, alpha, targets);
}

#define ALL_TARGETS                                                                                \
    "[\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]"

static void test_reference_permutation(void **state) {
    const finch_model *m = ((fixture *)*state)->m;
    reference ref;
    reference_load(&ref);
    assert_int_equal(ref.n, m->cfg.n_layer * FINCH_TARGET_COUNT);
    char dir[256], cfg[1024];
    finch_err err = {0};
    make_tmpdir(dir, sizeof dir, "ref");
    config_text(cfg, sizeof cfg, "LORA", ref.r, ref.alpha, ALL_TARGETS);
    write_folder(dir, &ref, cfg, NULL);
    finch_peft *l = NULL;
    if (finch_peft_load(dir, m, &l, &err)) fail_msg("%s", err.msg);
    assert_true(LORA(l)->sites[0].scale == (float)(ref.alpha / ref.r));
    const int64_t D = m->cfg.head_dim;
    int permuted = 0;
    for (int k = 0; k < ref.n; k++) {
        const finch_lora_site *s = lora_find(l, ref.layer[k], (finch_target)ref.target[k]);
        assert_non_null(s);
        assert_int_equal(s->in, ref.in[k]);
        assert_int_equal(s->out, ref.out[k]);
        assert_memory_equal(s->A, ref.A[k], (size_t)(ref.r * ref.in[k]) * sizeof(float));
        bool qk = heads_of(m, (finch_target)ref.target[k]) != 0;
        for (int64_t g = 0; g < ref.out[k]; g++) {
            int64_t hf = qk ? hf_row_of_gguf_row(g, D) : g;
            assert_memory_equal(s->B + g * ref.r, ref.B[k] + hf * ref.r,
                                (size_t)ref.r * sizeof(float));
        }
        /* the permutation moves rows: GGUF order differs from the fixture's for q/k */
        if (qk && memcmp(s->B, ref.B[k], (size_t)(ref.r * ref.out[k]) * sizeof(float))) permuted++;
    }
    assert_int_equal(permuted, 2 * m->cfg.n_layer);

    /* and back out: finch's PEFT file holds the reference's matrices exactly */
    char dir2[256], path[600], key[256];
    make_tmpdir(dir2, sizeof dir2, "ref_out");
    if (finch_peft_save(l, m, dir2, &err)) fail_msg("%s", err.msg);
    join(path, sizeof path, dir2, "adapter_model.safetensors");
    finch_st *st = NULL;
    if (finch_st_open(path, &st, &err)) fail_msg("%s", err.msg);
    for (int k = 0; k < ref.n; k++) {
        key_of(key, sizeof key, ref.layer[k], (finch_target)ref.target[k], 'B');
        const finch_st_tensor *b = finch_st_find(st, key);
        assert_non_null(b);
        assert_memory_equal(b->data, ref.B[k], (size_t)(ref.r * ref.out[k]) * sizeof(float));
    }
    finch_st_close(st);
    rm_dir(dir2);

    /* the GGUF adapter of these matrices is the committed fixture that
     * tests/reference/check_gguf_lora_llamacpp.py ran in llama.cpp (FINCH_UPDATE_FIXTURES=1
     * rewrites it) */
    const char *fixture_gguf = FINCH_FIXTURES "/peft/tiny_lora_ref.gguf";
    if (getenv("FINCH_UPDATE_FIXTURES")) {
        if (finch_peft_save_gguf(l, m, fixture_gguf, &err)) fail_msg("%s", err.msg);
    } else {
        join(path, sizeof path, dir, "lora.gguf");
        if (finch_peft_save_gguf(l, m, path, &err)) fail_msg("%s", err.msg);
        size_t n_new, n_old;
        uint8_t *mine = read_file(path, &n_new), *committed = read_file(fixture_gguf, &n_old);
        assert_int_equal(n_new, n_old);
        assert_memory_equal(mine, committed, n_new);
        free(mine);
        free(committed);
    }

    /* BF16 weights are read and widened */
    spoil bf = {.skip = -1, .reshape = -1, .retype = -1, .bf16 = 1};
    write_folder(dir, &ref, cfg, &bf);
    finch_peft *h = NULL;
    if (finch_peft_load(dir, m, &h, &err)) fail_msg("%s", err.msg);
    for (int k = 0; k < ref.n; k++) {
        const finch_lora_site *s = lora_find(h, ref.layer[k], (finch_target)ref.target[k]);
        for (int64_t e = 0; e < ref.r * ref.in[k]; e++)
            assert_true(s->A[e] == finch_bf16_to_f32(finch_f32_to_bf16(ref.A[k][e])));
    }
    finch_peft_free(h);
    finch_peft_free(l);
    rm_dir(dir);
    reference_free(&ref);
}

/* ---- bad input --------------------------------------------------------------------------- */

typedef struct {
    const char *what;
    const char *peft_type; /* NULL: no config file */
    int r;
    const char *targets;
    const char *raw_config; /* replaces the generated config */
    spoil sp;
    int truncate; /* bytes cut from the end of the safetensors */
    finch_status code;
    const char *file; /* the file the message must name */
    const char *msg;  /* and a fragment of it */
} bad_case;

static void test_bad_input(void **state) {
    const finch_model *m = ((fixture *)*state)->m;
    reference ref;
    reference_load(&ref);
    /* entry 0 is layer 0 q_proj: index 1 its B; the last entry is layer 1 down_proj */
    const spoil ok = {.skip = -1, .reshape = -1, .retype = -1};
    bad_case cases[] = {
        {"missing config", NULL, 4, ALL_TARGETS, NULL, ok, 0, FINCH_E_IO, "adapter_config.json",
         "cannot open"},
        {"config not JSON", "LORA", 4, ALL_TARGETS, "{\"peft_type\": \"LORA\", r: 4", ok, 0,
         FINCH_E_FORMAT, "adapter_config.json", "not valid JSON"},
        {"config not an object", "LORA", 4, ALL_TARGETS, "[1, 2]", ok, 0, FINCH_E_FORMAT,
         "adapter_config.json", "object"},
        {"no peft_type", "LORA", 4, ALL_TARGETS, "{\"r\": 4}", ok, 0, FINCH_E_FORMAT,
         "adapter_config.json", "peft_type"},
        {"unsupported peft_type", "LOHA", 4, ALL_TARGETS, NULL, ok, 0, FINCH_E_UNSUPPORTED,
         "adapter_config.json", "'LOHA'"},
        {"IA3 config over LoRA weights", "IA3", 4, ALL_TARGETS, NULL, ok, 0, FINCH_E_FORMAT,
         "adapter_model.safetensors", "unexpected tensor 'base_model.model.model.layers.0.mlp"},
        {"r 0", "LORA", 0, ALL_TARGETS, NULL, ok, 0, FINCH_E_FORMAT, "adapter_config.json",
         "\"r\" 0: must be an integer"},
        {"r not a number", "LORA", 4, ALL_TARGETS, "{\"peft_type\": \"LORA\", \"r\": \"4\"}", ok, 0,
         FINCH_E_FORMAT, "adapter_config.json", "\"r\" must be a number"},
        {"unknown target module", "LORA", 4, "[\"q_proj\", \"qkv_proj\"]", NULL, ok, 0,
         FINCH_E_FORMAT, "adapter_config.json", "'qkv_proj'"},
        {"regex targets", "LORA", 4, "\".*proj\"", NULL, ok, 0, FINCH_E_UNSUPPORTED,
         "adapter_config.json", "regex"},
        {"use_dora without magnitudes", "LORA", 4, ALL_TARGETS,
         "{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": \"all-linear\", \"use_dora\": "
         "true}",
         ok, 0, FINCH_E_FORMAT, "adapter_model.safetensors",
         "missing tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector'"},
        {"missing key",
         "LORA",
         4,
         ALL_TARGETS,
         NULL,
         {.skip = 1, .reshape = -1, .retype = -1},
         0,
         FINCH_E_FORMAT,
         "adapter_model.safetensors",
         "missing tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'"},
        {"extra key",
         "LORA",
         4,
         ALL_TARGETS,
         NULL,
         {.skip = -1, .reshape = -1, .retype = -1, .extra = "base_model.model.lm_head.weight"},
         0,
         FINCH_E_FORMAT,
         "adapter_model.safetensors",
         "unexpected tensor 'base_model.model.lm_head.weight'"},
        {"key for an untargeted module", "LORA", 4,
         "[\"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]", NULL,
         ok, 0, FINCH_E_FORMAT, "adapter_model.safetensors",
         "unexpected tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'"},
        {"layer out of range",
         "LORA",
         4,
         ALL_TARGETS,
         NULL,
         {.skip = -1,
          .reshape = -1,
          .retype = -1,
          .extra = "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"},
         0,
         FINCH_E_FORMAT,
         "adapter_model.safetensors",
         "layer 7, beyond this adapter's layers (0..1)"},
        {"wrong shape (another model)",
         "LORA",
         4,
         ALL_TARGETS,
         NULL,
         {.skip = -1, .reshape = 1, .retype = -1},
         0,
         FINCH_E_FORMAT,
         "adapter_model.safetensors",
         "q_proj.lora_B.weight' is [32, 8], this model needs [64, 4]"},
        {"rank differs from config", "LORA", 8, ALL_TARGETS, NULL, ok, 0, FINCH_E_FORMAT,
         "adapter_model.safetensors", "lora_A.weight' is [4, 64], this model needs [8, 64]"},
        {"wrong dtype",
         "LORA",
         4,
         ALL_TARGETS,
         NULL,
         {.skip = -1, .reshape = -1, .retype = 3},
         0,
         FINCH_E_FORMAT,
         "adapter_model.safetensors",
         "dtype I32"},
        {"truncated safetensors", "LORA", 4, ALL_TARGETS, NULL, ok, 10, FINCH_E_FORMAT,
         "adapter_model.safetensors", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const bad_case *c = &cases[i];
        char dir[256], cfg[1024], path[600];
        make_tmpdir(dir, sizeof dir, "bad");
        if (c->raw_config)
            snprintf(cfg, sizeof cfg, "%s", c->raw_config);
        else if (c->peft_type)
            config_text(cfg, sizeof cfg, c->peft_type, c->r, ref.alpha, c->targets);
        write_folder(dir, &ref, c->peft_type ? cfg : NULL, &c->sp);
        if (c->truncate) {
            join(path, sizeof path, dir, "adapter_model.safetensors");
            size_t n;
            uint8_t *bytes = read_file(path, &n);
            FILE *f = fopen(path, "wb");
            assert_non_null(f);
            assert_int_equal(fwrite(bytes, 1, n - (size_t)c->truncate, f), n - (size_t)c->truncate);
            fclose(f);
            free(bytes);
        }
        finch_peft *l = (finch_peft *)&ref; /* must stay untouched */
        finch_err err = {0};
        finch_status st = finch_peft_load(dir, m, &l, &err);
        if (st != c->code || !contains(err.msg, c->file) || !contains(err.msg, c->msg))
            fail_msg("case '%s': status %d (expected %d), message: %s", c->what, (int)st,
                     (int)c->code, err.msg);
        assert_ptr_equal(l, (finch_peft *)&ref);
        rm_dir(dir);
    }
    reference_free(&ref);
}

/* ---- GGUF adapter ------------------------------------------------------------------------ */

static void check_gguf(const finch_model *m, const finch_lora_config *cfg, float want_alpha) {
    char dir[256], path[600], name[64];
    finch_err err = {0};
    make_tmpdir(dir, sizeof dir, "gguf");
    join(path, sizeof path, dir, "lora.gguf");
    finch_peft *l = random_lora(m, cfg, 5);
    if (finch_peft_save_gguf(l, m, path, &err)) fail_msg("%s", err.msg);
    finch_gguf *g = NULL;
    if (finch_gguf_open(path, &g, &err)) fail_msg("%s", err.msg);
    finch_str s;
    const char *str_keys[][2] = {
        {"general.architecture", "llama"}, {"general.type", "adapter"}, {"adapter.type", "lora"}};
    for (int i = 0; i < 3; i++) {
        if (finch_gguf_get_str(g, str_keys[i][0], true, &s, &err)) fail_msg("%s", err.msg);
        assert_int_equal(s.len, strlen(str_keys[i][1]));
        assert_memory_equal(s.ptr, str_keys[i][1], s.len);
    }
    const finch_gguf_kv *kv = finch_gguf_find_kv(g, "adapter.lora.alpha");
    assert_non_null(kv);
    assert_int_equal(kv->type, FINCH_GGUF_FLOAT32);
    assert_true((float)kv->v.f == want_alpha);
    assert_int_equal(finch_gguf_n_tensors(g), 2 * LORA(l)->n_sites);
    for (int i = 0; i < LORA(l)->n_sites; i++) {
        const finch_lora_site *site = &LORA(l)->sites[i];
        for (int ab = 0; ab < 2; ab++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_%c", site->layer,
                     finch_target_gguf_name(site->target), ab ? 'b' : 'a');
            const finch_gguf_tensor *t = finch_gguf_find_tensor(g, name);
            if (!t) fail_msg("missing %s", name);
            assert_int_equal(t->type, FINCH_DTYPE_F32);
            assert_int_equal(t->n_dims, 2);
            /* lora_a ne [in, r], lora_b ne [r, out]; llama.cpp's checks (FORMATS.md 6.2) */
            assert_int_equal(t->ne[0], ab ? site->r : site->in);
            assert_int_equal(t->ne[1], ab ? site->out : site->r);
            char base[64];
            snprintf(base, sizeof base, "blk.%d.%s.weight", site->layer,
                     finch_target_gguf_name(site->target));
            const finch_gguf_tensor *w = finch_gguf_find_tensor(m->gguf, base);
            assert_non_null(w);
            assert_int_equal(ab ? t->ne[1] : t->ne[0], ab ? w->ne[1] : w->ne[0]);
            /* B in GGUF row order: the arena as it is */
            assert_memory_equal(t->data, ab ? site->B : site->A,
                                (size_t)(site->r * (ab ? site->out : site->in)) * sizeof(float));
        }
    }
    finch_gguf_close(g);
    finch_peft_free(l);
    rm_dir(dir);
}

static void test_gguf_adapter(void **state) {
    const finch_model *m = ((fixture *)*state)->m;
    finch_lora_config all = {.r = 4, .alpha = 8, .targets = (1u << FINCH_TARGET_COUNT) - 1};
    check_gguf(m, &all, 8.0f);
    /* rsLoRA: llama.cpp computes alpha / r, so alpha * sqrt(r) is stored (scale alpha/sqrt(r)) */
    finch_lora_config rs = {.r = 16,
                            .alpha = 8,
                            .rslora = true,
                            .targets = 1u << FINCH_TARGET_Q | 1u << FINCH_TARGET_V};
    check_gguf(m, &rs, 32.0f);
}

/* A qwen2 base (loaded from a Hugging Face folder): llama.cpp's qwen2 applies rotate-half
 * RoPE to rows in HF order, so lora_b of q and k goes out in HF order, the rest as held. */
static void test_gguf_adapter_qwen2(void **state) {
    (void)state;
    finch_model *m = NULL;
    finch_err err = {0};
    if (finch_model_load(FINCH_FIXTURES "/hf/tiny_qwen2", &m, &err)) fail_msg("%s", err.msg);
    assert_string_equal(m->cfg.arch, "qwen2");
    char dir[256], path[600], name[64];
    make_tmpdir(dir, sizeof dir, "gguf_qwen2");
    join(path, sizeof path, dir, "lora.gguf");
    finch_lora_config all = {.r = 4, .alpha = 8, .targets = (1u << FINCH_TARGET_COUNT) - 1};
    finch_peft *l = random_lora(m, &all, 9);
    if (finch_peft_save_gguf(l, m, path, &err)) fail_msg("%s", err.msg);
    finch_gguf *g = NULL;
    if (finch_gguf_open(path, &g, &err)) fail_msg("%s", err.msg);
    finch_str s;
    if (finch_gguf_get_str(g, "general.architecture", true, &s, &err)) fail_msg("%s", err.msg);
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.ptr, "qwen2", 5);
    int n_permuted = 0;
    for (int i = 0; i < LORA(l)->n_sites; i++) {
        const finch_lora_site *site = &LORA(l)->sites[i];
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", site->layer,
                 finch_target_gguf_name(site->target));
        const finch_gguf_tensor *t = finch_gguf_find_tensor(g, name);
        if (!t) fail_msg("missing %s", name);
        const float *got = (const float *)t->data;
        int heads = site->target == FINCH_TARGET_Q   ? m->cfg.n_head
                    : site->target == FINCH_TARGET_K ? m->cfg.n_head_kv
                                                     : 0;
        if (!heads) {
            assert_memory_equal(got, site->B, (size_t)(site->r * site->out) * sizeof(float));
            continue;
        }
        n_permuted++;
        const int64_t D = site->out / heads;
        for (int64_t row = 0; row < site->out; row++) /* finch's row `row` is HF row ... */
            assert_memory_equal(got + hf_row_of_gguf_row(row, D) * site->r,
                                site->B + row * site->r, (size_t)site->r * sizeof(float));
    }
    assert_int_equal(n_permuted, 2 * m->cfg.n_layer);
    finch_gguf_close(g);
    finch_peft_free(l);
    finch_model_free(m);
    rm_dir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_peft_layout),
        cmocka_unit_test(test_reference_permutation),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_gguf_adapter),
        cmocka_unit_test(test_gguf_adapter_qwen2),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
