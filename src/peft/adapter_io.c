/*
 * adapter_io.c: a LoRA adapter in and out of files.
 *
 *   PEFT folder   adapter_config.json + adapter_model.safetensors (FORMATS.md 2.1a, 2.1b):
 *                 keys base_model.model.model.layers.{L}.{self_attn|mlp}.{name}.lora_{A|B}.weight,
 *                 A (r, in), B (out, r), rows of q/k B in Hugging Face order.
 *   GGUF adapter  what llama.cpp loads with --lora (FORMATS.md 6): blk.{L}.{stem}.weight.lora_a
 *                 ne [in, r], .lora_b ne [r, out], rows of q/k B in GGUF order.
 *
 * finch holds B of q and k in GGUF row order (peft.h), so the PEFT writer un-permutes those
 * rows per head (n_head heads for q, n_head_kv for k) and the reader permutes them back;
 * the GGUF writer stores the arena as it is. Within a head of D rows (FORMATS.md 4.1):
 *
 *   GGUF row h*D + 2i = HF row h*D + i,   GGUF row h*D + 2i + 1 = HF row h*D + D/2 + i
 */
#include "peft/peft.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/io.h" /* finch_st_*, finch_gguf_writer */

#define CONFIG_NAME "adapter_config.json"
#define WEIGHTS_NAME "adapter_model.safetensors"
#define KEY_PREFIX "base_model.model.model.layers."
#define MAX_PATH 4096

/* ---- the q/k row permutation ----------------------------------------------------------- */

/* Heads of the rows of B for target t (q: n_head, k: n_head_kv), 0 when not permuted. */
static int permuted_heads(const finch_model *m, finch_target t) {
    if (t == FINCH_TARGET_Q) return m->cfg.n_head;
    if (t == FINCH_TARGET_K) return m->cfg.n_head_kv;
    return 0;
}

/* B (rows, r): GGUF order -> HF order (to_hf) or back, src and dst distinct. */
static void permute_rows(float *dst, const float *src, int64_t rows, int r, int heads, bool to_hf) {
    int64_t D = rows / heads;
    FINCH_ASSERT(D * heads == rows && D % 2 == 0);
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < D / 2; i++) {
            int64_t g0 = h * D + 2 * i, g1 = g0 + 1; /* GGUF rows */
            int64_t f0 = h * D + i, f1 = f0 + D / 2; /* HF rows */
            if (to_hf) {
                memcpy(dst + f0 * r, src + g0 * r, (size_t)r * sizeof *dst);
                memcpy(dst + f1 * r, src + g1 * r, (size_t)r * sizeof *dst);
            } else {
                memcpy(dst + g0 * r, src + f0 * r, (size_t)r * sizeof *dst);
                memcpy(dst + g1 * r, src + f1 * r, (size_t)r * sizeof *dst);
            }
        }
}

/* ---- names ----------------------------------------------------------------------------- */

static const char *module_of(finch_target t) {
    return t <= FINCH_TARGET_O ? "self_attn" : "mlp";
}

static void peft_key(char *buf, size_t n, int layer, finch_target t, char ab) {
    snprintf(buf, n, KEY_PREFIX "%d.%s.%s.lora_%c.weight", layer, module_of(t),
             finch_target_peft_name(t), ab);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The shortest decimal that reads back as the same float, as a JSON real (PEFT writes what
 * Python's repr of the user's number gives, which is this for the values people type). */
static json_t *json_float(float f) {
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f) break;
    }
    return json_real(strtod(buf, NULL));
}

/* ---- PEFT: save ------------------------------------------------------------------------- */

static finch_status write_text(FILE *f, void *user, finch_err *err) {
    const char **ctx = user; /* {text, path} */
    return finch_fwrite(f, ctx[0], strlen(ctx[0]), ctx[1], err);
}

static json_t *make_config(const finch_lora *l, const finch_model *m) {
    const finch_lora_config *c = &l->cfg;
    json_t *j = json_object(), *targets = json_array();
    const char *names[FINCH_TARGET_COUNT];
    int n = 0;
    for (int t = 0; t < FINCH_TARGET_COUNT; t++)
        if (c->targets >> t & 1) names[n++] = finch_target_peft_name((finch_target)t);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) json_array_append_new(targets, json_string(names[i]));
    /* LoraConfig's fields as PEFT writes them (FORMATS.md 2.1a); the rest keep PEFT's
     * defaults, which finch's adapters match */
    json_object_set_new(j, "alpha_pattern", json_object());
    json_object_set_new(j, "auto_mapping", json_null());
    json_object_set_new(j, "base_model_name_or_path", json_string(m->cfg.name));
    json_object_set_new(j, "bias", json_string("none"));
    json_object_set_new(j, "corda_config", json_null());
    json_object_set_new(j, "eva_config", json_null());
    json_object_set_new(j, "exclude_modules", json_null());
    json_object_set_new(j, "fan_in_fan_out", json_false());
    json_object_set_new(j, "inference_mode", json_true());
    json_object_set_new(j, "init_lora_weights", json_true());
    json_object_set_new(j, "layer_replication", json_null());
    json_object_set_new(j, "layers_pattern", json_null());
    json_object_set_new(j, "layers_to_transform", json_null());
    json_object_set_new(j, "loftq_config", json_object());
    if (c->alpha == floorf(c->alpha) && fabsf(c->alpha) < 1e9f)
        json_object_set_new(j, "lora_alpha", json_integer((json_int_t)c->alpha));
    else
        json_object_set_new(j, "lora_alpha", json_float(c->alpha));
    json_object_set_new(j, "lora_bias", json_false());
    json_object_set_new(j, "lora_dropout", json_float(c->dropout));
    json_object_set_new(j, "megatron_config", json_null());
    json_object_set_new(j, "megatron_core", json_string("megatron.core"));
    json_object_set_new(j, "modules_to_save", json_null());
    json_object_set_new(j, "peft_type", json_string("LORA"));
    json_object_set_new(j, "r", json_integer(c->r));
    json_object_set_new(j, "rank_pattern", json_object());
    json_object_set_new(j, "revision", json_null());
    json_object_set_new(j, "target_modules", targets);
    json_object_set_new(j, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(j, "use_dora", json_false());
    json_object_set_new(j, "use_rslora", json_boolean(c->rslora));
    return j;
}

finch_status finch_lora_save_peft(const finch_lora *l, const finch_model *m, const char *dir,
                                  finch_err *err) {
    finch_status st;
    char path[MAX_PATH], key[256];
    float *hf = NULL; /* the arena with q/k B rows in HF order */
    char *text = NULL;
    json_t *cfg = NULL;
    finch_st_writer *w = NULL;
    if (strlen(dir) + sizeof CONFIG_NAME + sizeof WEIGHTS_NAME + 2 > sizeof path)
        return finch_err_set(err, FINCH_E_USAGE, "adapter folder '%.200s...': path too long", dir);
    if ((st = finch_mkdir_p(dir, err))) return st;

    if (!(hf = finch_alloc((size_t)l->n_params * sizeof(float), "adapter copy", err)))
        return FINCH_E_NOMEM;
    memcpy(hf, l->params, (size_t)l->n_params * sizeof(float));
    if (!(w = finch_st_writer_new(err))) {
        st = FINCH_E_NOMEM;
        goto fail;
    }
    if ((st = finch_st_writer_set_meta(w, "format", "pt", err))) goto fail;
    for (int i = 0; i < l->n_sites; i++) {
        const finch_lora_site *s = &l->sites[i];
        float *A = hf + (s->A - l->params), *B = hf + (s->B - l->params);
        int heads = permuted_heads(m, s->target);
        if (heads) permute_rows(B, s->B, s->out, s->r, heads, true);
        int64_t shape_a[2] = {s->r, s->in}, shape_b[2] = {s->out, s->r};
        peft_key(key, sizeof key, s->layer, s->target, 'A');
        if ((st = finch_st_writer_add(w, key, FINCH_ST_F32, 2, shape_a, A, err))) goto fail;
        peft_key(key, sizeof key, s->layer, s->target, 'B');
        if ((st = finch_st_writer_add(w, key, FINCH_ST_F32, 2, shape_b, B, err))) goto fail;
    }
    snprintf(path, sizeof path, "%s/" WEIGHTS_NAME, dir);
    if ((st = finch_st_writer_save(w, path, err))) goto fail;

    /* the config last: a folder with a config has complete weights */
    cfg = make_config(l, m);
    if (!cfg ||
        !(text = json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9)))) {
        st =
            finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory building the adapter config", dir);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/" CONFIG_NAME, dir);
    const char *ctx[2] = {text, path};
    st = finch_file_commit(path, write_text, (void *)ctx, err);
fail:
    free(text);
    json_decref(cfg);
    finch_st_writer_free(w);
    free(hf);
    return st;
}

/* ---- PEFT: load ------------------------------------------------------------------------- */

/* A number field: absent keeps *out; present must be a number. */
static finch_status get_number(json_t *j, const char *key, const char *path, double *out,
                               finch_err *err) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return FINCH_OK;
    if (!json_is_number(v))
        return finch_err_set(err, FINCH_E_FORMAT, "%s: \"%s\" must be a number", path, key);
    *out = json_number_value(v);
    return FINCH_OK;
}

/* Fields PEFT allows that finch does not implement: present with a non-default value is
 * FINCH_E_UNSUPPORTED rather than an adapter that silently computes something else. */
static finch_status check_unsupported(json_t *j, const char *path, finch_err *err) {
    static const char *const must_be_false[] = {"use_dora", "lora_bias", "use_qalora"};
    static const char *const must_be_empty[] = {
        "rank_pattern",        "alpha_pattern",           "modules_to_save",
        "layers_to_transform", "layer_replication",       "exclude_modules",
        "target_parameters",   "trainable_token_indices", "alora_invocation_tokens"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof *must_be_false; i++) {
        json_t *v = json_object_get(j, must_be_false[i]);
        if (v && !json_is_null(v) && !json_is_false(v))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: \"%s\" is set; finch loads plain "
                                 "LoRA adapters only",
                                 path, must_be_false[i]);
    }
    for (size_t i = 0; i < sizeof must_be_empty / sizeof *must_be_empty; i++) {
        json_t *v = json_object_get(j, must_be_empty[i]);
        if (v && !json_is_null(v) &&
            !((json_is_object(v) && !json_object_size(v)) ||
              (json_is_array(v) && !json_array_size(v))))
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s: \"%s\" is set; finch does not "
                                 "support it (remove it or merge the adapter in PEFT)",
                                 path, must_be_empty[i]);
    }
    json_t *bias = json_object_get(j, "bias");
    if (bias && !json_is_null(bias) &&
        !(json_is_string(bias) && !strcmp(json_string_value(bias), "none")))
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"bias\" must be \"none\" (finch "
                             "adapters train no biases)",
                             path);
    return FINCH_OK;
}

static finch_status parse_targets(json_t *j, const char *path, uint32_t *mask, finch_err *err) {
    json_t *v = json_object_get(j, "target_modules");
    uint32_t m = 0;
    if (!v || json_is_null(v)) { /* PEFT's default for llama */
        *mask = 1u << FINCH_TARGET_Q | 1u << FINCH_TARGET_V;
        return FINCH_OK;
    }
    if (json_is_string(v)) {
        if (!strcmp(json_string_value(v), "all-linear")) {
            *mask = (1u << FINCH_TARGET_COUNT) - 1;
            return FINCH_OK;
        }
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: \"target_modules\" is the regex "
                             "'%.100s'; finch reads a list of module names or \"all-linear\"",
                             path, json_string_value(v));
    }
    if (!json_is_array(v))
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: \"target_modules\" must be a list of "
                             "module names or \"all-linear\"",
                             path);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        const char *s = json_is_string(e) ? json_string_value(e) : NULL;
        if (!s)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: \"target_modules\"[%zu] is not a "
                                 "string",
                                 path, i);
        int found = -1;
        for (int t = 0; t < FINCH_TARGET_COUNT && found < 0; t++)
            if (!strcmp(s, finch_target_peft_name((finch_target)t))) found = t;
        if (found < 0)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: target module '%.100s' is not a "
                                 "LLaMA projection finch knows (q_proj, k_proj, v_proj, o_proj, "
                                 "gate_proj, up_proj, down_proj)",
                                 path, s);
        m |= 1u << found;
    }
    if (!m) return finch_err_set(err, FINCH_E_FORMAT, "%s: \"target_modules\" is empty", path);
    *mask = m;
    return FINCH_OK;
}

static finch_status read_config(const char *path, finch_lora_config *out, finch_err *err) {
    json_error_t je;
    FILE *f = fopen(path, "rb");
    if (!f) return finch_err_set(err, FINCH_E_IO, "%s: cannot open: %s", path, strerror(errno));
    json_t *j = json_loadf(f, 0, &je);
    fclose(f);
    if (!j)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: line %d, column %d: not valid JSON: %s",
                             path, je.line, je.column, je.text);
    finch_status st = FINCH_OK;
    finch_lora_config c = {.r = 8, .alpha = 8, .dropout = 0};
    double r = 8, alpha = 8, dropout = 0;
    if (!json_is_object(j)) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: the config must be a JSON object", path);
        goto done;
    }
    json_t *pt = json_object_get(j, "peft_type");
    if (!json_is_string(pt)) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: \"peft_type\" is missing or not a string "
                           "(is this a PEFT adapter folder?)",
                           path);
        goto done;
    }
    if (strcmp(json_string_value(pt), "LORA")) {
        st = finch_err_set(err, FINCH_E_UNSUPPORTED,
                           "%s: \"peft_type\" is '%.50s'; finch loads "
                           "LORA adapters",
                           path, json_string_value(pt));
        goto done;
    }
    if ((st = get_number(j, "r", path, &r, err)) ||
        (st = get_number(j, "lora_alpha", path, &alpha, err)) ||
        (st = get_number(j, "lora_dropout", path, &dropout, err)))
        goto done;
    if (!(r >= 1 && r <= 4096 && r == floor(r))) {
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: \"r\" is %g; must be an integer from 1 to 4096", path, r);
        goto done;
    }
    if (!(alpha > 0 && alpha < 1e9)) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: \"lora_alpha\" is %g; must be > 0", path,
                           alpha);
        goto done;
    }
    if (!(dropout >= 0 && dropout < 1)) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: \"lora_dropout\" is %g; must be in [0, 1)",
                           path, dropout);
        goto done;
    }
    json_t *rs = json_object_get(j, "use_rslora");
    if (rs && !json_is_null(rs) && !json_is_boolean(rs)) {
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: \"use_rslora\" must be true or false", path);
        goto done;
    }
    if ((st = check_unsupported(j, path, err)) || (st = parse_targets(j, path, &c.targets, err)))
        goto done;
    c.r = (int)r;
    c.alpha = (float)alpha;
    c.dropout = (float)dropout;
    c.rslora = rs && json_is_true(rs);
    *out = c;
done:
    json_decref(j);
    return st;
}

/* Parses a LoRA key; false when it is not one. */
static bool parse_key(const char *name, int *layer, finch_target *t, char *ab) {
    if (strncmp(name, KEY_PREFIX, strlen(KEY_PREFIX))) return false;
    const char *p = name + strlen(KEY_PREFIX);
    char *end;
    if (*p < '0' || *p > '9') return false;
    long L = strtol(p, &end, 10);
    if (*end != '.' || L > 1000000) return false;
    p = end + 1;
    for (int i = 0; i < FINCH_TARGET_COUNT; i++) {
        char tail[128];
        snprintf(tail, sizeof tail, "%s.%s.lora_", module_of((finch_target)i),
                 finch_target_peft_name((finch_target)i));
        size_t n = strlen(tail);
        if (!strncmp(p, tail, n) && (p[n] == 'A' || p[n] == 'B') && !strcmp(p + n + 1, ".weight")) {
            *layer = (int)L;
            *t = (finch_target)i;
            *ab = p[n];
            return true;
        }
    }
    return false;
}

/* Copies a (rows, cols) tensor into dst as f32 after checking its dtype and shape. */
static finch_status read_matrix(float *dst, const finch_st_tensor *te, int64_t rows, int64_t cols,
                                const char *path, const finch_lora_site *s, char ab,
                                finch_err *err) {
    const char *name = finch_target_peft_name(s->target);
    if (te->dtype != FINCH_ST_F32 && te->dtype != FINCH_ST_F16 && te->dtype != FINCH_ST_BF16)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: %s of layer %d: lora_%c has dtype %s; "
                             "finch reads F32, F16 or BF16",
                             path, name, s->layer, ab, finch_st_dtype_name(te->dtype));
    if (te->n_dims != 2 || te->shape[0] != rows || te->shape[1] != cols) {
        char got[128] = "[";
        for (int d = 0; d < te->n_dims; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)te->shape[d]);
        strncat(got, "]", sizeof got - strlen(got) - 1);
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: adapter made for another model? %s of "
                             "layer %d: lora_%c is %s, this model needs [%lld, %lld]",
                             path, name, s->layer, ab, got, (long long)rows, (long long)cols);
    }
    int64_t n = rows * cols;
    if (te->dtype == FINCH_ST_F32) {
        memcpy(dst, te->data, (size_t)n * sizeof *dst);
    } else {
        for (int64_t k = 0; k < n; k++) {
            uint16_t h;
            memcpy(&h, te->data + 2 * k, 2);
            dst[k] = te->dtype == FINCH_ST_F16 ? finch_f16_to_f32(h) : finch_bf16_to_f32(h);
        }
    }
    return FINCH_OK;
}

finch_status finch_lora_load_peft(const char *dir, const finch_model *m, finch_lora **out,
                                  finch_err *err) {
    char path[MAX_PATH], key[256];
    finch_lora_config cfg;
    finch_lora *l = NULL;
    finch_st *st_file = NULL;
    float *tmp = NULL;
    finch_status st;
    if (strlen(dir) + sizeof CONFIG_NAME + sizeof WEIGHTS_NAME + 2 > sizeof path)
        return finch_err_set(err, FINCH_E_USAGE, "adapter folder '%.200s...': path too long", dir);
    snprintf(path, sizeof path, "%s/" CONFIG_NAME, dir);
    if ((st = read_config(path, &cfg, err))) return st;
    snprintf(path, sizeof path, "%s/" WEIGHTS_NAME, dir);
    if ((st = finch_st_open(path, &st_file, err))) return st;

    /* every tensor must be one this adapter needs */
    for (int64_t i = 0; i < finch_st_n_tensors(st_file); i++) {
        const char *name = finch_st_tensor_at(st_file, i)->name;
        int layer;
        finch_target t;
        char ab;
        if (!parse_key(name, &layer, &t, &ab)) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: unexpected tensor '%.200s' (finch "
                               "reads LoRA lora_A/lora_B weights of a LLaMA model only)",
                               path, name);
            goto fail;
        }
        if (layer >= m->cfg.n_layer) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: tensor '%.200s': layer %d, this model "
                               "has %d layers (adapter made for another model?)",
                               path, name, layer, m->cfg.n_layer);
            goto fail;
        }
        if (!(cfg.targets >> t & 1)) {
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: tensor '%.200s': %s is not in the "
                               "config's target_modules",
                               path, name, finch_target_peft_name(t));
            goto fail;
        }
    }

    finch_rng rng;
    finch_rng_seed(&rng, 0); /* A is overwritten below */
    if ((st = finch_lora_new(m, &cfg, &rng, false, &l, err))) {
        finch_err_prefix(err, "%s", dir);
        goto fail;
    }
    for (int i = 0; i < l->n_sites; i++) {
        finch_lora_site *s = &l->sites[i];
        for (char ab = 'A'; ab <= 'B'; ab++) {
            peft_key(key, sizeof key, s->layer, s->target, ab);
            const finch_st_tensor *te = finch_st_find(st_file, key);
            if (!te) {
                st = finch_err_set(err, FINCH_E_FORMAT,
                                   "%s: missing tensor '%s' (%s of layer %d "
                                   "is a target in the config)",
                                   path, key, finch_target_peft_name(s->target), s->layer);
                goto fail;
            }
            if (ab == 'A') {
                if ((st = read_matrix(s->A, te, s->r, s->in, path, s, ab, err))) goto fail;
                continue;
            }
            int heads = permuted_heads(m, s->target);
            if (!heads) {
                if ((st = read_matrix(s->B, te, s->out, s->r, path, s, ab, err))) goto fail;
                continue;
            }
            free(tmp);
            if (!(tmp = finch_alloc((size_t)(s->out * s->r) * sizeof *tmp, "adapter B", err))) {
                st = FINCH_E_NOMEM;
                goto fail;
            }
            if ((st = read_matrix(tmp, te, s->out, s->r, path, s, ab, err))) goto fail;
            permute_rows(s->B, tmp, s->out, s->r, heads, false);
        }
    }
    free(tmp);
    finch_st_close(st_file);
    *out = l;
    return FINCH_OK;
fail:
    free(tmp);
    finch_lora_free(l);
    finch_st_close(st_file);
    return st;
}

/* ---- GGUF adapter ----------------------------------------------------------------------- */

finch_status finch_lora_save_gguf(const finch_lora *l, const finch_model *m, const char *path,
                                  finch_err *err) {
    finch_status st;
    char name[64];
    float **tmp = NULL;
    finch_gguf_writer *w = finch_gguf_writer_new(err);
    if (!w) return FINCH_E_NOMEM;
    /* llama.cpp scales by alpha / r with r read from lora_b; for rsLoRA (scale
     * alpha / sqrt(r)) store alpha * sqrt(r), so that the stored alpha / r is that scale */
    float alpha =
        l->cfg.rslora ? (float)((double)l->cfg.alpha * sqrt((double)l->cfg.r)) : l->cfg.alpha;
    if ((st = finch_gguf_set_str(w, "general.architecture", m->cfg.arch, err)) ||
        (st = finch_gguf_set_str(w, "general.type", "adapter", err)) ||
        (st = finch_gguf_set_str(w, "adapter.type", "lora", err)) ||
        (st = finch_gguf_set_f32(w, "adapter.lora.alpha", alpha, err)))
        goto done;
    if (m->cfg.name[0] && (st = finch_gguf_set_str(w, "general.name", m->cfg.name, err))) goto done;
    /* llama.cpp's llama arch keeps q/k rows in interleaved (GGUF) order, as finch does;
     * qwen2 uses rotate-half RoPE on rows in Hugging Face order, so there B of q and k
     * goes out un-permuted. The writer keeps pointers: the copies live until the save. */
    const bool hf_rows = strcmp(m->cfg.arch, "llama") != 0;
    tmp = calloc((size_t)l->n_sites, sizeof *tmp);
    if (!tmp) {
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < l->n_sites; i++) {
        const finch_lora_site *s = &l->sites[i];
        int64_t ne_a[2] = {s->in, s->r}, ne_b[2] = {s->r, s->out};
        const float *B = s->B;
        int heads = hf_rows ? permuted_heads(m, s->target) : 0;
        if (heads) {
            if (!(tmp[i] = malloc((size_t)s->out * (size_t)s->r * sizeof(float)))) {
                st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
                goto done;
            }
            permute_rows(tmp[i], s->B, s->out, s->r, heads, true);
            B = tmp[i];
        }
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", s->layer,
                 finch_target_gguf_name(s->target));
        if ((st = finch_gguf_add_tensor(w, name, FINCH_DTYPE_F32, 2, ne_a, s->A, err))) goto done;
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", s->layer,
                 finch_target_gguf_name(s->target));
        if ((st = finch_gguf_add_tensor(w, name, FINCH_DTYPE_F32, 2, ne_b, B, err))) goto done;
    }
    st = finch_gguf_writer_save(w, path, err);
done:
    if (tmp)
        for (int i = 0; i < l->n_sites; i++) free(tmp[i]);
    free(tmp);
    finch_gguf_writer_free(w);
    return st;
}
