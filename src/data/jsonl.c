/*
 * jsonl.c: instruction datasets from JSONL: shape detection, per-line validation with
 * file:line messages, {field} templates (built-in per shape, or the user's, sampled per
 * example), the model's chat template, and train/validation splits.
 *
 * Built-in templates: Stanford Alpaca's two prompts (with and without input) for alpaca,
 * the same wording with "context" for dolly, the bare prompt for prompt/completion.
 */
#include "data/data.h"

#include <jansson.h>
#include <stdlib.h>

static const char *const shape_names[FINCH_SHAPE_COUNT] = {
    [FINCH_SHAPE_AUTO] = "auto",     [FINCH_SHAPE_COMPLETION] = "completion",
    [FINCH_SHAPE_ALPACA] = "alpaca", [FINCH_SHAPE_DOLLY] = "dolly",
    [FINCH_SHAPE_CHAT] = "chat",     [FINCH_SHAPE_PREFERENCE] = "preference",
};

/* The field each shape trains on, and the fields that identify it. */
static const char *const target_field[FINCH_SHAPE_COUNT] = {
    [FINCH_SHAPE_COMPLETION] = "completion",
    [FINCH_SHAPE_ALPACA] = "output",
    [FINCH_SHAPE_DOLLY] = "response",
};
static const char *const key_field[FINCH_SHAPE_COUNT] = {
    [FINCH_SHAPE_COMPLETION] = "prompt", [FINCH_SHAPE_ALPACA] = "output",
    [FINCH_SHAPE_DOLLY] = "response",    [FINCH_SHAPE_CHAT] = "messages",
    [FINCH_SHAPE_PREFERENCE] = "chosen",
};

static const char alpaca_input[] =
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
static const char alpaca_plain[] =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";
static const char dolly_context[] =
    "Below is an instruction that describes a task, paired with context that provides "
    "further information. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n### Response:\n";

const char *finch_shape_name(finch_shape s) {
    return (unsigned)s < FINCH_SHAPE_COUNT ? shape_names[s] : NULL;
}

finch_status finch_shape_parse(const char *name, finch_shape *out, finch_err *err) {
    for (int s = 0; s < FINCH_SHAPE_COUNT; s++)
        if (!strcmp(name, shape_names[s])) {
            *out = (finch_shape)s;
            return FINCH_OK;
        }
    return finch_err_set(
        err, FINCH_E_USAGE,
        "unknown dataset format '%s': use auto, completion, alpaca, dolly, chat or "
        "preference",
        name);
}

/* ---- a growing string ---------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static bool sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = finch_mem_realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

/* ---- templates ------------------------------------------------------------------------ */

/* A string field of obj, or NULL; *bad set when present but not a string. */
static const char *str_field(json_t *obj, const char *name, bool *bad) {
    json_t *v = json_object_get(obj, name);
    *bad = v && !json_is_string(v);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Renders tmpl with obj's fields into *out (malloc'd). */
static finch_status render(const char *tmpl, json_t *obj, const char *where, char **out,
                           finch_err *err) {
    sbuf b = {0};
    for (const char *p = tmpl; *p;) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            if (!sb_add(&b, p, 1)) goto nomem;
            p += 2;
        } else if (*p == '{') {
            const char *end = strchr(p, '}');
            if (!end) {
                free(b.p);
                return finch_err_set(err, FINCH_E_USAGE,
                                     "template: '{' without a closing '}': %.40s", p);
            }
            char name[128];
            size_t n = (size_t)(end - p - 1);
            if (n == 0 || n >= sizeof name) {
                free(b.p);
                return finch_err_set(err, FINCH_E_USAGE, "template: bad placeholder %.*s",
                                     (int)(n + 2), p);
            }
            memcpy(name, p + 1, n);
            name[n] = 0;
            bool bad;
            const char *v = str_field(obj, name, &bad);
            if (!v) {
                free(b.p);
                return finch_err_set(err, FINCH_E_FORMAT, "%s: the template's field {%s} is %s",
                                     where, name, bad ? "not a string" : "missing");
            }
            if (!sb_add(&b, v, strlen(v))) goto nomem;
            p = end + 1;
        } else {
            size_t n = strcspn(p, "{}");
            if (n == 0) n = 1; /* a lone '}' is literal */
            if (!sb_add(&b, p, n)) goto nomem;
            p += n;
        }
    }
    if (!b.p && !sb_add(&b, "", 0)) goto nomem;
    *out = b.p;
    return FINCH_OK;
nomem:
    free(b.p);
    return finch_err_set(err, FINCH_E_NOMEM, "out of memory rendering a template");
}

static finch_status chat_wrap(const finch_tokenizer *tok, const finch_chat_msg *msgs, int n,
                              const char *where, char **out, finch_err *err) {
    const char *tmpl = tok ? finch_tokenizer_chat_template(tok) : NULL;
    finch_chat_family_id fam = finch_chat_detect(tmpl, tmpl ? strlen(tmpl) : 0);
    if (fam == FINCH_CHAT_NONE)
        return finch_err_set(err, FINCH_E_UNSUPPORTED,
                             "%s: chat formatting needs a model with a chat template", where);
    finch_status st = finch_chat_render(fam, tmpl, msgs, n, 1, out, err);
    if (st) finch_err_prefix(err, "%s", where);
    return st;
}

/* ---- one line ------------------------------------------------------------------------- */

static finch_shape detect(json_t *obj) {
    /* preference lines have a "prompt" too: their own key first */
    if (json_object_get(obj, key_field[FINCH_SHAPE_PREFERENCE])) return FINCH_SHAPE_PREFERENCE;
    for (int s = FINCH_SHAPE_COMPLETION; s < FINCH_SHAPE_COUNT; s++)
        if (json_object_get(obj, key_field[s])) return (finch_shape)s;
    return FINCH_SHAPE_AUTO;
}

static finch_status chat_example(json_t *obj, const finch_data_options *opt, const char *where,
                                 finch_text_example *ex, finch_err *err) {
    json_t *msgs = json_object_get(obj, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) < 2)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: \"messages\" must be an array of at least 2 messages", where);
    size_t n = json_array_size(msgs);
    finch_chat_msg *m = finch_mem_calloc(n, sizeof *m);
    if (!m) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    finch_status st = FINCH_OK;
    for (size_t i = 0; i < n && !st; i++) {
        json_t *e = json_array_get(msgs, i);
        json_t *role = json_object_get(e, "role"), *content = json_object_get(e, "content");
        if (!json_is_string(role) || !json_is_string(content))
            st = finch_err_set(err, FINCH_E_FORMAT,
                               "%s: message %zu needs string \"role\" and \"content\"", where,
                               i + 1);
        else
            m[i] = (finch_chat_msg){json_string_value(role), json_string_value(content)};
    }
    if (!st && strcmp(m[n - 1].role, "assistant"))
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: the last message is from '%s'; it must be the assistant's (the "
                           "text to learn)",
                           where, m[n - 1].role);
    if (!st) st = chat_wrap(opt->tok, m, (int)n - 1, where, &ex->prompt, err);
    if (!st && !(ex->completion = finch_mem_strdup(m[n - 1].content)))
        st = finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    free(m);
    return st;
}

/* A preference line's chosen or rejected side: a string, an assistant message, or a list
 * of one assistant message; not empty. */
static finch_status pref_side(json_t *obj, const char *field, const char *where, char **out,
                              finch_err *err) {
    json_t *v = json_object_get(obj, field);
    if (json_is_array(v)) {
        if (json_array_size(v) != 1)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: \"%s\" is a list of %zu messages; expected one assistant "
                                 "message",
                                 where, field, json_array_size(v));
        v = json_array_get(v, 0);
        if (!json_is_object(v))
            return finch_err_set(err, FINCH_E_FORMAT, "%s: \"%s\"[0] is not a message object",
                                 where, field);
    }
    if (json_is_object(v)) {
        json_t *role = json_object_get(v, "role");
        v = json_object_get(v, "content");
        if (!json_is_string(role) || !json_is_string(v))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: the \"%s\" message needs string \"role\" and \"content\"",
                                 where, field);
        if (strcmp(json_string_value(role), "assistant"))
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: the \"%s\" message is from '%s'; it must be the assistant's",
                                 where, field, json_string_value(role));
    } else if (!json_is_string(v)) {
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field \"%s\" is %s, expected a string or an assistant message",
                             where, field, v ? "of the wrong type" : "missing");
    }
    if (!*json_string_value(v))
        return finch_err_set(err, FINCH_E_FORMAT, "%s: field \"%s\" is empty", where, field);
    if (!(*out = finch_mem_strdup(json_string_value(v))))
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    return FINCH_OK;
}

/* A preference line: the prompt as a list of messages is rendered with the chat template
 * (asking for the assistant's turn); as a string it takes the prompt/completion path. */
static finch_status line_example(json_t *obj, finch_shape shape, const finch_data_options *opt,
                                 finch_rng *rng, const char *where, finch_text_example *ex,
                                 finch_err *err);
static finch_status preference_example(json_t *obj, const finch_data_options *opt, finch_rng *rng,
                                       const char *where, finch_text_example *ex, finch_err *err) {
    json_t *prompt = json_object_get(obj, "prompt");
    finch_status st = FINCH_OK;
    if (json_is_array(prompt)) {
        size_t n = json_array_size(prompt);
        if (n == 0)
            return finch_err_set(err, FINCH_E_FORMAT, "%s: \"prompt\" is an empty list", where);
        finch_chat_msg *m = finch_mem_calloc(n, sizeof *m);
        if (!m) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        for (size_t i = 0; i < n && !st; i++) {
            json_t *e = json_array_get(prompt, i);
            json_t *role = json_object_get(e, "role"), *content = json_object_get(e, "content");
            if (!json_is_string(role) || !json_is_string(content))
                st = finch_err_set(err, FINCH_E_FORMAT,
                                   "%s: prompt message %zu needs string \"role\" and \"content\"",
                                   where, i + 1);
            else
                m[i] = (finch_chat_msg){json_string_value(role), json_string_value(content)};
        }
        if (!st) st = chat_wrap(opt->tok, m, (int)n, where, &ex->prompt, err);
        free(m);
        if (!st) st = pref_side(obj, "chosen", where, &ex->completion, err);
    } else if (prompt && !json_is_string(prompt)) {
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: field \"prompt\" is of the wrong type, expected a string or a "
                             "list of messages",
                             where);
    } else {
        /* the prompt/completion path renders the prompt; its completion is replaced */
        json_t *copy = json_copy(obj);
        if (!copy) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        if (json_object_set_new(copy, "completion", json_string("-"))) {
            json_decref(copy);
            return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
        }
        if (!prompt && !opt->templates.n)
            st = finch_err_set(err, FINCH_E_FORMAT, "%s: field \"prompt\" is missing", where);
        if (!st) st = line_example(copy, FINCH_SHAPE_COMPLETION, opt, rng, where, ex, err);
        json_decref(copy);
        if (!st) {
            free(ex->completion);
            ex->completion = NULL;
            st = pref_side(obj, "chosen", where, &ex->completion, err);
        }
    }
    if (!st) st = pref_side(obj, "rejected", where, &ex->rejected, err);
    return st;
}

static finch_status line_example(json_t *obj, finch_shape shape, const finch_data_options *opt,
                                 finch_rng *rng, const char *where, finch_text_example *ex,
                                 finch_err *err) {
    if (shape == FINCH_SHAPE_CHAT) return chat_example(obj, opt, where, ex, err);
    if (shape == FINCH_SHAPE_PREFERENCE) return preference_example(obj, opt, rng, where, ex, err);
    bool bad;
    const char *target = str_field(obj, target_field[shape], &bad);
    if (!target)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: field \"%s\" is %s, expected a string",
                             where, target_field[shape], bad ? "not a string" : "missing");
    const char *tmpl;
    if (opt->templates.n > 0) {
        tmpl = opt->templates.prompts[finch_rng_u64(rng) % (uint64_t)opt->templates.n];
    } else if (shape == FINCH_SHAPE_COMPLETION) {
        tmpl = "{prompt}";
    } else {
        const char *extra = shape == FINCH_SHAPE_ALPACA ? "input" : "context";
        const char *v = str_field(obj, extra, &bad);
        if (bad)
            return finch_err_set(err, FINCH_E_FORMAT, "%s: field \"%s\" is not a string", where,
                                 extra);
        bool has = v && *v;
        tmpl = shape == FINCH_SHAPE_ALPACA ? (has ? alpaca_input : alpaca_plain)
                                           : (has ? dolly_context : alpaca_plain);
    }
    char *prompt = NULL;
    finch_status st = render(tmpl, obj, where, &prompt, err);
    if (st) return st;
    if (opt->templates.chat) {
        finch_chat_msg user = {"user", prompt};
        st = chat_wrap(opt->tok, &user, 1, where, &ex->prompt, err);
        if (st) {
            free(prompt);
            return st;
        }
        ex->user = prompt;
    } else {
        ex->prompt = prompt;
    }
    if (!(ex->completion = finch_mem_strdup(target)))
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    return FINCH_OK;
}

/* ---- files ---------------------------------------------------------------------------- */

finch_status finch_dataset_parse(const char *text, size_t len, const char *name,
                                 const finch_data_options *opt, finch_dataset **out,
                                 finch_err *err) {
    finch_dataset *d = finch_mem_calloc(1, sizeof *d);
    if (!d) return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    d->shape = opt->shape;
    finch_rng rng;
    finch_rng_seed(&rng, opt->seed);
    int64_t cap = 0, lineno = 0;
    finch_status st = FINCH_OK;
    for (size_t pos = 0; pos < len && !st;) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + 1;
        lineno++;
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k == n) continue; /* blank */
        char where[600];
        snprintf(where, sizeof where, "%s: line %lld", name, (long long)lineno);
        json_error_t je;
        json_t *obj;
        finch_text_example ex = {.line = lineno};
        finch_err line_err;
        finch_status ls = finch_json_loadb(line, n, 0, where, &obj, &je, &line_err);
        if (ls == FINCH_E_NOMEM) {
            /* line_err says so; never skipped */
        } else if (!obj) {
            ls = finch_err_set(&line_err, FINCH_E_FORMAT, "%s: column %d: not valid JSON: %s",
                               where, je.column, je.text);
        } else if (!json_is_object(obj)) {
            ls = finch_err_set(&line_err, FINCH_E_FORMAT, "%s: expected a JSON object", where);
        } else {
            if (d->shape == FINCH_SHAPE_AUTO) d->shape = detect(obj);
            if (d->shape == FINCH_SHAPE_AUTO)
                ls = finch_err_set(&line_err, FINCH_E_FORMAT,
                                   "%s: cannot tell the dataset format: no \"prompt\", \"output\", "
                                   "\"response\" or \"messages\" field (or name it with --format)",
                                   where);
            else
                ls = line_example(obj, d->shape, opt, &rng, where, &ex, &line_err);
        }
        json_decref(obj);
        if (ls) {
            finch_text_example_release(&ex);
            if (ls == FINCH_E_FORMAT && opt->skip_bad) {
                d->n_skipped++;
                finch_log(FINCH_LOG_DEBUG, "%s", line_err.msg);
                continue;
            }
            if (err) *err = line_err;
            st = ls;
            break;
        }
        if (d->n == cap) {
            cap = cap ? cap * 2 : 64;
            finch_text_example *grown = finch_mem_realloc(d->ex, (size_t)cap * sizeof *grown);
            if (!grown) {
                finch_text_example_release(&ex);
                st = finch_err_set(err, FINCH_E_NOMEM, "out of memory reading %s", name);
                break;
            }
            d->ex = grown;
        }
        d->ex[d->n++] = ex;
    }
    if (!st && d->n == 0)
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: no examples%s", name,
                           d->n_skipped ? " (every line was malformed and skipped)" : "");
    if (st) {
        finch_dataset_free(d);
        return st;
    }
    *out = d;
    return FINCH_OK;
}

finch_status finch_dataset_load(const char *path, const finch_data_options *opt,
                                finch_dataset **out, finch_err *err) {
    finch_mapped_file f;
    finch_status st = finch_file_map(path, &f, err);
    if (st) return st;
    st = finch_dataset_parse((const char *)f.data, f.size, path, opt, out, err);
    finch_file_unmap(&f);
    return st;
}

void finch_text_example_release(finch_text_example *ex) {
    free(ex->prompt);
    free(ex->completion);
    free(ex->user);
    free(ex->rejected);
}

void finch_dataset_free(finch_dataset *d) {
    if (!d) return;
    for (int64_t i = 0; i < d->n; i++) finch_text_example_release(&d->ex[i]);
    free(d->ex);
    free(d);
}

finch_status finch_dataset_split(finch_dataset *d, double fraction, uint64_t seed,
                                 finch_dataset **val, finch_err *err) {
    if (!(fraction > 0 && fraction < 1))
        return finch_err_set(err, FINCH_E_USAGE, "validation fraction %g: must be in (0, 1)",
                             fraction);
    int64_t n_val = (int64_t)(fraction * (double)d->n + 0.5);
    if (n_val < 1 || n_val >= d->n)
        return finch_err_set(err, FINCH_E_RANGE,
                             "a validation fraction of %g of %lld examples leaves %lld for "
                             "validation: need at least one on each side",
                             fraction, (long long)d->n, (long long)n_val);
    finch_dataset *v = finch_mem_calloc(1, sizeof *v);
    finch_text_example *vex = finch_mem_alloc((size_t)n_val * sizeof *vex);
    if (!v || !vex) {
        free(v);
        free(vex);
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    }
    finch_rng rng;
    finch_rng_seed(&rng, seed);
    for (int64_t i = d->n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)(finch_rng_u64(&rng) % (uint64_t)(i + 1));
        finch_text_example t = d->ex[i];
        d->ex[i] = d->ex[j];
        d->ex[j] = t;
    }
    memcpy(vex, d->ex + d->n - n_val, (size_t)n_val * sizeof *vex);
    d->n -= n_val;
    *v = (finch_dataset){.ex = vex, .n = n_val, .shape = d->shape};
    *val = v;
    return FINCH_OK;
}
