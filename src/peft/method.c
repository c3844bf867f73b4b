/*
 * method.c: the method table and what every method shares: options (flags, --config,
 * adapter_config.json, --help) read from each method's option table, --layers, instances,
 * the default adapter writer and reader, merging.
 */
#include "peft/method.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "io/io.h" /* finch_file_commit */

/* The table: one row per method, in the order --help lists them. */
extern const finch_method finch_method_lora, finch_method_dora, finch_method_ia3,
    finch_method_prompt, finch_method_prefix, finch_method_adapter, finch_method_bitfit,
    finch_method_freeze, finch_method_full;
static const finch_method *const methods[] = {
    &finch_method_lora,   &finch_method_dora,   &finch_method_ia3,
    &finch_method_prompt, &finch_method_prefix, &finch_method_adapter,
    &finch_method_bitfit, &finch_method_freeze, &finch_method_full};
enum { N_METHODS = sizeof methods / sizeof methods[0] };

#define CONFIG_NAME "adapter_config.json"
#define WEIGHTS_NAME "adapter_model.safetensors"
#define LAYERS "layers"
#define LAYERS_KEY "layers_to_transform"

/* ---- the table, publicly ---------------------------------------------------------------- */

int finch_method_count(void) {
    return N_METHODS;
}

const char *finch_method_name(int i) {
    return i >= 0 && i < N_METHODS ? methods[i]->name : NULL;
}

const char *finch_method_description(int i) {
    return i >= 0 && i < N_METHODS ? methods[i]->description : NULL;
}

const finch_method *finch_method_find(const char *name) {
    for (int i = 0; i < N_METHODS; i++)
        if (!strcmp(methods[i]->name, name)) return methods[i];
    return NULL;
}

const char *finch_method_result(const char *name) {
    const finch_method *me = finch_method_find(name ? name : "lora");
    return me && me->writes_model ? "model" : "adapter";
}

static const char *placeholder(finch_opt_type t) {
    return t == FINCH_OPT_INT       ? " N"
           : t == FINCH_OPT_FLOAT   ? " X"
           : t == FINCH_OPT_TARGETS ? " LIST"
           : t == FINCH_OPT_CHOICE  ? " NAME"
           : t == FINCH_OPT_STRING  ? " TEXT"
                                    : "";
}

size_t finch_method_usage(int i, char *buf, size_t cap) {
    if (i < 0 || i >= N_METHODS) return 0;
    const finch_method *me = methods[i];
    size_t len = 0;
    for (int k = 0; k < me->n_opts; k++) {
        const finch_method_option *o = &me->opts[k];
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s", o->name, placeholder(o->type));
        bool no_def = o->type == FINCH_OPT_BOOL || !*o->def;
        int n = snprintf(len < cap ? buf + len : NULL, len < cap ? cap - len : 0,
                         "    %-24s %s%s%s%s%s%s\n", flag, o->help, o->choices ? ": " : "",
                         o->choices ? o->choices : "", no_def ? "" : " (default ",
                         no_def ? "" : o->def, no_def ? "" : ")");
        len += (size_t)n;
    }
    return len;
}

/* Flag names compare with '_' and '-' alike. */
static bool same_name(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (*a != *b && !((*a == '_' || *a == '-') && (*b == '_' || *b == '-'))) return false;
    return !*a && !*b;
}

static const finch_method_option *find_option(const finch_method *me, const char *name) {
    for (int k = 0; k < me->n_opts; k++)
        if (same_name(me->opts[k].name, name) ||
            (me->opts[k].alias && same_name(me->opts[k].alias, name)))
            return &me->opts[k];
    return NULL;
}

int finch_method_option_kind(const char *name) {
    if (same_name(name, LAYERS)) return 1;
    for (int i = 0; i < N_METHODS; i++) {
        const finch_method_option *o = find_option(methods[i], name);
        if (o) return o->type == FINCH_OPT_BOOL ? 2 : 1;
    }
    return 0;
}

/* ---- option values ---------------------------------------------------------------------- */

/* Parses v as option o into the config struct cfg. where names it in messages ("--lora-r"
 * or "adapter_config.json: \"r\""); code is the status of a bad value. */
static finch_status parse_value(const finch_method_option *o, const char *v, void *cfg,
                                const char *where, finch_status code, finch_err *err) {
    char *end;
    void *at = (char *)cfg + o->offset;
    switch (o->type) {
    case FINCH_OPT_INT: {
        errno = 0;
        long n = v ? strtol(v, &end, 10) : 0;
        if (!v || end == v || *end || errno || n < o->lo || n > o->hi)
            return finch_err_set(err, code, "%s %s: must be an integer from %.0f to %.0f", where,
                                 v ? v : "(none)", o->lo, o->hi);
        *(int *)at = (int)n;
        return FINCH_OK;
    }
    case FINCH_OPT_FLOAT: {
        double f = v ? strtod(v, &end) : NAN;
        if (!v || end == v || *end || !isfinite(f) || f < o->lo || f > o->hi)
            return finch_err_set(err, code, "%s %s: must be a number from %g to %g", where,
                                 v ? v : "(none)", o->lo, o->hi);
        *(float *)at = (float)f;
        return FINCH_OK;
    }
    case FINCH_OPT_BOOL:
        if (!v || !strcmp(v, "true") || !strcmp(v, "1"))
            *(bool *)at = true;
        else if (!strcmp(v, "false") || !strcmp(v, "0"))
            *(bool *)at = false;
        else
            return finch_err_set(err, code, "%s %s: must be true or false", where, v);
        return FINCH_OK;
    case FINCH_OPT_CHOICE: {
        int k = 0;
        for (const char *c = o->choices; v && *c; k++) {
            size_t n = strcspn(c, ",");
            if (strlen(v) == n && !strncmp(v, c, n)) {
                *(int *)at = k;
                return FINCH_OK;
            }
            c += n + (c[n] == ',');
        }
        return finch_err_set(err, code, "%s %s: must be one of %s", where, v ? v : "(none)",
                             o->choices);
    }
    case FINCH_OPT_STRING:
        if (!v || strlen(v) >= (size_t)o->hi)
            return finch_err_set(err, code, "%s: give a text of fewer than %.0f bytes", where,
                                 o->hi);
        memcpy(at, v, strlen(v) + 1);
        return FINCH_OK;
    case FINCH_OPT_TARGETS: {
        finch_status st = v ? finch_target_parse(v, (uint32_t *)at, err)
                            : finch_err_set(err, code, "%s needs a list", where);
        if (st) {
            finch_err_prefix(err, "%s", where);
            if (err) err->code = code;
            return code;
        }
        return FINCH_OK;
    }
    }
    return FINCH_E_USAGE;
}

/* --layers: "20-29", "0,2,5-7". Every layer must exist in a model of n_layer blocks. */
static finch_status parse_layers(finch_peft *p, const char *v, int n_layer, const char *where,
                                 finch_status code, finch_err *err) {
    memset(p->layers, 0, sizeof p->layers);
    p->all_layers = false;
    const char *s = v;
    if (!*s) return finch_err_set(err, code, "%s: the list is empty", where);
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s || a < 0) goto bad;
        if (*end == '-') {
            const char *t = end + 1;
            b = strtol(t, &end, 10);
            if (end == t || b < a) goto bad;
        }
        if (*end && *end != ',') goto bad;
        if (b >= n_layer)
            return finch_err_set(err, code,
                                 "%s %s: layer %ld is out of range (the model has %d blocks, "
                                 "0-%d)",
                                 where, v, b, n_layer, n_layer - 1);
        for (long l = a; l <= b; l++) p->layers[l >> 6] |= 1ull << (l & 63);
        s = *end ? end + 1 : end;
    }
    return FINCH_OK;
bad:
    return finch_err_set(err, code, "%s %s: give blocks as 20-29 or 0,2,5-7", where, v);
}

static void select_all_layers(finch_peft *p, int n_layer) {
    memset(p->layers, 0, sizeof p->layers);
    for (int l = 0; l < n_layer && l < 256; l++) p->layers[l >> 6] |= 1ull << (l & 63);
    p->all_layers = true;
}

/* name is not an option of method me: say whose it is. */
static finch_status not_an_option(const finch_method *me, const char *where, const char *name,
                                  finch_err *err) {
    char owners[128] = "";
    for (int k = 0; k < N_METHODS; k++)
        if (find_option(methods[k], name))
            snprintf(owners + strlen(owners), sizeof owners - strlen(owners), "%s%s",
                     owners[0] ? ", " : "", methods[k]->name);
    return owners[0] ? finch_err_set(err, FINCH_E_USAGE, "%s is an option of %s, not of %s", where,
                                     owners, me->name)
                     : finch_err_set(err, FINCH_E_USAGE, "%s: no method has this option", where);
}

static finch_status unknown_method(const char *name, finch_err *err) {
    char list[256] = "";
    for (int i = 0; i < N_METHODS; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                 methods[i]->name);
    return finch_err_set(err, FINCH_E_USAGE, "--method %s: unknown; finch has %s", name, list);
}

finch_status finch_method_check_option(const char *method, const char *name, const char *value,
                                       finch_err *err) {
    const finch_method *me = finch_method_find(method ? method : "lora");
    if (!me) return unknown_method(method, err);
    char where[80];
    snprintf(where, sizeof where, "--%s", name);
    for (char *c = where; *c; c++)
        if (*c == '_') *c = '-';
    if (same_name(name, LAYERS)) {
        finch_peft p = {0};
        return value ? parse_layers(&p, value, 256, where, FINCH_E_USAGE, err)
                     : finch_err_set(err, FINCH_E_USAGE, "--layers needs a value");
    }
    const finch_method_option *o = find_option(me, name);
    if (!o) return not_an_option(me, where, name, err);
    void *cfg = finch_calloc(1, me->config_size, "method options", err);
    if (!cfg) return FINCH_E_NOMEM;
    finch_status st = parse_value(o, value, cfg, where, FINCH_E_USAGE, err);
    free(cfg);
    return st;
}

int finch_method_options_resolved(const char *method, const finch_option *given, int n_given,
                                  finch_option *out, int cap) {
    const finch_method *me = finch_method_find(method ? method : "lora");
    if (!me) return 0;
    int n = 0;
    for (int k = 0; k < me->n_opts; k++) {
        const finch_method_option *o = &me->opts[k];
        finch_option v = {o->name, o->def};
        for (int i = 0; i < n_given; i++)
            if (find_option(me, given[i].name) == o)
                v.value = given[i].value ? given[i].value : "true";
        if (n < cap) out[n] = v;
        n++;
    }
    for (int i = n_given - 1; i >= 0; i--)
        if (same_name(given[i].name, LAYERS)) {
            if (n < cap) out[n] = (finch_option){LAYERS, given[i].value};
            n++;
            break;
        }
    return n;
}

/* ---- instances -------------------------------------------------------------------------- */

/* An instance with its options at their defaults, all layers selected. */
static finch_status instance_new(const finch_method *me, const finch_model *m, finch_peft **out,
                                 finch_err *err) {
    /* before the method reads anything of the model: on a device the base is not host
     * memory */
    if (m->be->device && !me->device)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s does not run on %s yet (lora and ia3 do): use --device cpu",
                             me->name, m->be->name);
    finch_peft *p = finch_calloc(1, sizeof *p, "method", err);
    if (!p) return FINCH_E_NOMEM;
    p->method = me;
    if (!(p->cfg = finch_calloc(1, me->config_size, "method options", err))) {
        free(p);
        return FINCH_E_NOMEM;
    }
    for (int k = 0; k < me->n_opts; k++) {
        finch_status st = parse_value(&me->opts[k], me->opts[k].def, p->cfg, me->opts[k].name,
                                      FINCH_E_USAGE, err);
        FINCH_ASSERT(st == FINCH_OK);
    }
    if (m->cfg.n_layer > 256) {
        finch_peft_free(p);
        return finch_err_set(err, FINCH_E_UNSUPPORTED, "%s: %d blocks; finch adapts up to 256",
                             m->path, m->cfg.n_layer);
    }
    select_all_layers(p, m->cfg.n_layer);
    *out = p;
    return FINCH_OK;
}

/* The method's checks, parameters, arena and initial values. */
static finch_status instance_build(finch_peft *p, const finch_model *m, finch_rng *rng,
                                   bool with_grads, finch_err *err) {
    const finch_method *me = p->method;
    finch_status st;
    if (me->validate && (st = me->validate(p, m, err))) return st;
    if ((st = me->create(p, m, err))) return st;
    if (!p->params.n)
        return finch_err_set(err, FINCH_E_USAGE,
                             "--method %s: nothing to train with these options on this model",
                             me->name);
    if ((st = finch_params_alloc(&p->params, with_grads, err))) return st;
    if (rng && me->init) me->init(p, m, rng);
    return FINCH_OK;
}

finch_status finch_peft_new(const finch_model *m, const char *method, const finch_option *opts,
                            int n_opts, finch_rng *rng, bool with_grads, finch_peft **out,
                            finch_err *err) {
    const finch_method *me = finch_method_find(method ? method : "lora");
    if (!me) return unknown_method(method, err);
    finch_peft *p;
    finch_status st = instance_new(me, m, &p, err);
    if (st) return st;
    for (int i = 0; i < n_opts && !st; i++) {
        char where[80];
        snprintf(where, sizeof where, "--%s", opts[i].name);
        for (char *c = where; *c; c++)
            if (*c == '_') *c = '-';
        if (same_name(opts[i].name, LAYERS) && me->layerless) {
            st = finch_err_set(err, FINCH_E_USAGE,
                               "--layers: %s acts before the first block, on every block at "
                               "once; it has no layer selection",
                               me->name);
            continue;
        }
        if (same_name(opts[i].name, LAYERS)) {
            st = opts[i].value
                     ? parse_layers(p, opts[i].value, m->cfg.n_layer, where, FINCH_E_USAGE, err)
                     : finch_err_set(err, FINCH_E_USAGE, "--layers needs a value");
            continue;
        }
        const finch_method_option *o = find_option(me, opts[i].name);
        if (o) {
            st = parse_value(o, opts[i].value, p->cfg, where, FINCH_E_USAGE, err);
            continue;
        }
        st = not_an_option(me, where, opts[i].name, err);
    }
    if (!st) st = instance_build(p, m, rng, with_grads, err);
    if (st) {
        finch_peft_free(p);
        return st;
    }
    *out = p;
    return FINCH_OK;
}

void finch_peft_free(finch_peft *p) {
    if (!p) return;
    if (p->method->free_state) p->method->free_state(p);
    finch_params_release(&p->params);
    free(p->cfg);
    free(p);
}

finch_status finch_peft_attach(finch_peft *p, finch_model *m, float weight, int64_t max_tokens,
                               finch_err *err) {
    if (p->attached) return finch_err_set(err, FINCH_E_USAGE, "the adapter is already attached");
    finch_status st = p->method->attach(p, m, weight, max_tokens, err);
    if (!st) p->attached = true;
    return st;
}

void finch_peft_detach(finch_peft *p, finch_model *m) {
    if (!p->attached) return;
    p->method->detach(p, m);
    p->attached = false;
}

finch_params *finch_peft_params(const finch_peft *p) {
    return (finch_params *)&p->params;
}
const char *finch_peft_method(const finch_peft *p) {
    return p->method->name;
}
bool finch_peft_writes_model(const finch_peft *p) {
    return p->method->writes_model;
}
bool finch_peft_can_merge(const finch_peft *p) {
    return p->method->merge_row != NULL;
}

bool finch_peft_merge_row(const finch_peft *p, const finch_model *m, const char *gguf_name,
                          int64_t r, float *row, int64_t cols, float weight) {
    return p->method->merge_row && p->method->merge_row(p, m, gguf_name, r, row, cols, weight);
}

int finch_peft_new_tensors(const finch_peft *p, const finch_model *m, finch_new_tensor *out,
                           int cap) {
    return p->method->new_tensors ? p->method->new_tensors(p, m, out, cap) : 0;
}

finch_status finch_peft_save_gguf(const finch_peft *p, const finch_model *m, const char *path,
                                  finch_err *err) {
    if (!p->method->save_gguf)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "llama.cpp has no GGUF adapter for %s: merge it into the model "
                             "instead (finch merge)",
                             p->method->name);
    return p->method->save_gguf(p, m, path, err);
}

/* ---- adapter_config.json out ------------------------------------------------------------ */

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

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A target mask as PEFT writes target_modules for model m: a sorted list of names. */
static json_t *json_targets(const finch_model *m, uint32_t mask) {
    const char *names[FINCH_TARGET_COUNT];
    int n = 0;
    if (m && finch_targets_check(m, &mask, NULL) != FINCH_OK) mask = 0;
    finch_targets_json(m, mask, names, &n);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_string(names[i]));
    return a;
}

static json_t *option_json(const finch_method_option *o, const void *cfg, const finch_model *m) {
    const void *at = (const char *)cfg + o->offset;
    switch (o->type) {
    case FINCH_OPT_INT:
        return json_integer(*(const int *)at);
    case FINCH_OPT_FLOAT: {
        /* a whole number whose default is written as one (lora_alpha 16) stays an integer */
        float f = *(const float *)at;
        if (!strchr(o->def, '.') && f == floorf(f) && fabsf(f) < 1e9f)
            return json_integer((json_int_t)f);
        return json_float(f);
    }
    case FINCH_OPT_BOOL:
        return json_boolean(*(const bool *)at);
    case FINCH_OPT_STRING:
        return *(const char *)at ? json_string(at) : json_null();
    case FINCH_OPT_TARGETS:
        return json_targets(m, *(const uint32_t *)at);
    case FINCH_OPT_CHOICE: {
        const char *c = o->choices;
        for (int k = *(const int *)at; k > 0 && *c; k--) c += strcspn(c, ",") + 1;
        return json_stringn(c, strcspn(c, ","));
    }
    }
    return json_null();
}

static json_t *make_config(const finch_peft *p, const finch_model *m) {
    const finch_method *me = p->method;
    json_t *j = json_object();
    json_object_set_new(j, "auto_mapping", json_null());
    json_object_set_new(j, "base_model_name_or_path", json_string(m->cfg.name));
    json_object_set_new(j, "inference_mode", json_true());
    json_object_set_new(j, "peft_type", json_string(me->peft_type));
    json_object_set_new(j, "revision", json_null());
    json_object_set_new(j, "task_type", json_string("CAUSAL_LM"));
    for (int k = 0; k < me->n_opts; k++)
        if (me->opts[k].peft_key)
            json_object_set_new(j, me->opts[k].peft_key, option_json(&me->opts[k], p->cfg, m));
    if (!me->layerless) {
        json_t *layers = json_null();
        if (!p->all_layers) {
            layers = json_array();
            for (int l = 0; l < m->cfg.n_layer; l++)
                if (finch_peft_layer(p, l)) json_array_append_new(layers, json_integer(l));
        }
        json_object_set_new(j, LAYERS_KEY, layers);
    }
    if (me->write_config) me->write_config(p, m, j);
    return j;
}

finch_status finch_peft_save(const finch_peft *p, const finch_model *m, const char *dir,
                             finch_err *err) {
    if (p->method->save) return p->method->save(p, m, dir, err);
    char path[4096];
    if (strlen(dir) + sizeof WEIGHTS_NAME + 2 > sizeof path)
        return finch_err_set(err, FINCH_E_USAGE, "adapter folder '%.200s...': path too long", dir);
    finch_status st = finch_mkdir_p(dir, err);
    if (st) return st;
    snprintf(path, sizeof path, "%s/" WEIGHTS_NAME, dir);
    const finch_params *saved =
        p->method->saved ? p->method->saved((finch_peft *)p, m) : &p->params;
    if ((st = finch_params_save_st(saved, path, err))) return st;
    /* the config last: a folder with a config has complete weights */
    finch_json_begin(); /* the writing sees a failed allocation of the building */
    json_t *cfg = make_config(p, m);
    snprintf(path, sizeof path, "%s/" CONFIG_NAME, dir);
    st = cfg ? finch_json_write_file(cfg, path, err)
             : finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    json_decref(cfg);
    finch_json_end();
    return st;
}

/* ---- adapter_config.json in ------------------------------------------------------------- */

/* Option o from the config file's value v (not NULL) into p's config. */
static finch_status option_from_json(finch_peft *p, const finch_method_option *o, json_t *v,
                                     const char *path, finch_err *err) {
    char where[4200], buf[64];
    snprintf(where, sizeof where, "%s: \"%s\"", path, o->peft_key);
    const char *text = NULL;
    switch (o->type) {
    case FINCH_OPT_INT:
    case FINCH_OPT_FLOAT:
        if (!json_is_number(v))
            return finch_err_set(err, FINCH_E_FORMAT, "%s must be a number", where);
        snprintf(buf, sizeof buf, "%.17g", json_number_value(v));
        text = buf;
        break;
    case FINCH_OPT_BOOL:
        if (!json_is_boolean(v))
            return finch_err_set(err, FINCH_E_FORMAT, "%s must be true or false", where);
        text = json_is_true(v) ? "true" : "false";
        break;
    case FINCH_OPT_CHOICE:
    case FINCH_OPT_STRING:
        if (!json_is_string(v))
            return finch_err_set(err, FINCH_E_FORMAT, "%s must be a string", where);
        text = json_string_value(v);
        break;
    case FINCH_OPT_TARGETS: {
        uint32_t *mask = (uint32_t *)((char *)p->cfg + o->offset);
        if (json_is_string(v)) {
            if (!strcmp(json_string_value(v), "all-linear")) {
                *mask = (1u << FINCH_TARGET_COUNT) - 1;
                return FINCH_OK;
            }
            return finch_err_set(err, FINCH_E_UNSUPPORTED,
                                 "%s is the regex '%.100s'; finch reads a list of module names "
                                 "or \"all-linear\"",
                                 where, json_string_value(v));
        }
        if (!json_is_array(v) || !json_array_size(v))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s must be a non-empty list of module names or \"all-linear\"",
                                 where);
        *mask = 0;
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            const char *s = json_is_string(e) ? json_string_value(e) : NULL;
            if (!s) return finch_err_set(err, FINCH_E_FORMAT, "%s[%zu] is not a string", where, i);
            uint32_t bits = strlen(s) < 64 ? finch_target_lookup(s, strlen(s)) : 0;
            /* only full names here, as PEFT writes them */
            if (bits && strlen(s) <= 4 && strcmp(s, "c_fc") != 0) bits = 0;
            if (!bits)
                return finch_err_set(err, FINCH_E_FORMAT,
                                     "%s: target module '%.100s' is not a projection finch "
                                     "knows (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                                     "up_proj, down_proj; GPT-2: c_attn, c_proj, c_fc)",
                                     where, s);
            *mask |= bits;
        }
        return FINCH_OK;
    }
    }
    return parse_value(o, text, p->cfg, where, FINCH_E_FORMAT, err);
}

static finch_status layers_from_json(finch_peft *p, json_t *v, int n_layer, const char *path,
                                     finch_err *err) {
    char list[2048] = "", where[4200];
    snprintf(where, sizeof where, "%s: \"" LAYERS_KEY "\"", path);
    json_t *one = json_array();
    if (json_is_integer(v)) json_array_append(one, v);
    json_t *arr = json_is_integer(v) ? one : v;
    if (!json_is_array(arr) || !json_array_size(arr)) {
        json_decref(one);
        return finch_err_set(err, FINCH_E_FORMAT, "%s must be a layer index or a list of them",
                             where);
    }
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e) {
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > 1000000) {
            json_decref(one);
            return finch_err_set(err, FINCH_E_FORMAT, "%s[%zu] is not a layer index", where, i);
        }
        size_t at = strlen(list);
        snprintf(list + at, sizeof list - at, "%s%lld", at ? "," : "",
                 (long long)json_integer_value(e));
    }
    json_decref(one);
    return parse_layers(p, list, n_layer, where, FINCH_E_FORMAT, err);
}

static json_t *read_config(const char *path, finch_err *err) {
    json_error_t je;
    FILE *f = fopen(path, "rb");
    if (!f) {
        finch_err_set(err, FINCH_E_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    finch_json_begin();
    json_t *j = json_loadf(f, 0, &je);
    fclose(f);
    if (finch_json_end()) {
        json_decref(j);
        finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory reading JSON", path);
        return NULL;
    }
    if (!j)
        finch_err_set(err, FINCH_E_FORMAT, "%s: line %d, column %d: not valid JSON: %s", path,
                      je.line, je.column, je.text);
    else if (!json_is_object(j)) {
        finch_err_set(err, FINCH_E_FORMAT, "%s: the config must be a JSON object", path);
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* The method an adapter config describes. */
static finch_status method_of(json_t *j, const char *path, const finch_method **out,
                              finch_err *err) {
    json_t *pt = json_object_get(j, "peft_type");
    if (!pt) /* another format a method reads (AdapterHub's) */
        for (int i = 0; i < N_METHODS; i++)
            if (!methods[i]->peft_type && methods[i]->claims && methods[i]->claims(j)) {
                *out = methods[i];
                return FINCH_OK;
            }
    if (!json_is_string(pt))
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: \"peft_type\" is missing or not a string (is this a PEFT "
                             "adapter folder?)",
                             path);
    for (int i = 0; i < N_METHODS; i++)
        if (methods[i]->peft_type && !strcmp(methods[i]->peft_type, json_string_value(pt)) &&
            (!methods[i]->claims || methods[i]->claims(j))) {
            *out = methods[i];
            return FINCH_OK;
        }
    char list[256] = "";
    for (int i = 0; i < N_METHODS; i++)
        if (methods[i]->peft_type && !methods[i]->writes_model &&
            !strstr(list, methods[i]->peft_type))
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "",
                     methods[i]->peft_type);
    return finch_err_set(err, FINCH_E_UNSUPPORTED,
                         "%s: \"peft_type\" is '%.50s'; finch loads %s adapters", path,
                         json_string_value(pt), list);
}

finch_status finch_peft_load(const char *dir, const finch_model *m, finch_peft **out,
                             finch_err *err) {
    char path[4096];
    if (strlen(dir) + sizeof WEIGHTS_NAME + 2 > sizeof path)
        return finch_err_set(err, FINCH_E_USAGE, "adapter folder '%.200s...': path too long", dir);
    snprintf(path, sizeof path, "%s/" CONFIG_NAME, dir);
    json_t *j = read_config(path, err);
    if (!j) return err ? err->code : FINCH_E_FORMAT;
    const finch_method *me = NULL;
    finch_peft *p = NULL;
    finch_status st = method_of(j, path, &me, err);
    if (!st && me->check_file) st = me->check_file(j, path, err);
    if (!st) st = instance_new(me, m, &p, err);
    if (!st && me->read_config) st = me->read_config(p, m, j, path, err);
    for (int k = 0; !st && !me->read_config && k < me->n_opts; k++) {
        const finch_method_option *o = &me->opts[k];
        if (!o->peft_key) continue;
        json_t *v = json_object_get(j, o->peft_key);
        if (v && !json_is_null(v))
            st = option_from_json(p, o, v, path, err);
        else if (o->peft_def)
            st = parse_value(o, o->peft_def, p->cfg, o->name, FINCH_E_FORMAT, err);
    }
    json_t *layers = json_object_get(j, LAYERS_KEY);
    if (!st && layers && !json_is_null(layers) && !me->layerless && !me->read_config)
        st = layers_from_json(p, layers, m->cfg.n_layer, path, err);
    json_decref(j);
    if (!st) {
        st = instance_build(p, m, NULL, false, err);
        if (st) finch_err_prefix(err, "%s", path);
    }
    snprintf(path, sizeof path, "%s/%s", dir,
             me && me->weights_file ? me->weights_file : WEIGHTS_NAME);
    if (!st) st = finch_params_load_st(&p->params, path, err);
    if (st) {
        finch_peft_free(p);
        return st;
    }
    *out = p;
    return FINCH_OK;
}
