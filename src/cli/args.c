/*
 * args.c: the one flag parser of the finch command. Each command describes its flags as a
 * table (cli.h: a row per flag with its spellings, type, range or choices, help text and
 * the field its value goes to); this file reads the command line and a config file by
 * that table and prints --help from it. It knows no command: what a command checks across
 * flags (one needs another, a flag that must be given) stays in the command's file.
 *
 * Conventions: a flag is given at most once (a repeatable row up to its max); its value is
 * the next argument whatever that starts with ("-n -1" reads -1 and says it is out of
 * range), or follows '=' (--name=value); '_' and '-' are the same in long names. A config
 * file and the command line are two sessions: the command line overrides the file, and a
 * flag given twice is refused within one session only.
 */
#include "cli.h"

#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_ROWS = 160, MAX_MORE = 64, MAX_NAME = 64 };

/* A row of the table with its groups flattened: the field is at base + f->offset. */
typedef struct {
    const cli_flag *f;
    size_t base;
} row;

/* What the item is when it is not a row of the table. */
enum { ROW_MORE = -1, ROW_HELP = -2, ROW_SKIP = -3 };

/* One flag or positional argument as read. */
typedef struct {
    int row;         /* an index into rows, or ROW_ */
    const char *tok; /* as spelled, tok_len bytes: "--max-steps", "-n", a placeholder */
    int tok_len;
    const char *value; /* NULL for a switch */
    bool positional;
} item;

typedef struct {
    const cli_command *cmd;
    void *dst;
    row rows[MAX_ROWS];
    int n_rows;
    /* the session: the config file, then the command line */
    const char *where;                  /* "" or "FILE: ", before every message */
    int count[MAX_ROWS];                /* times each row was given */
    const char *last[MAX_ROWS];         /* its last value */
    char more_seen[MAX_MORE][MAX_NAME]; /* the hook's flags given, '_' made '-' */
    int n_more_seen;
    finch_err *err;
} parser;

static finch_status fail(parser *p, finch_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static finch_status fail(parser *p, finch_status code, const char *fmt, ...) {
    finch_err *err = p->err;
    int n = snprintf(err->msg, sizeof err->msg, "%s", p->where);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < sizeof err->msg)
        vsnprintf(err->msg + n, sizeof err->msg - (size_t)n, fmt, ap);
    va_end(ap);
    err->code = code;
    return code;
}

/* ---- the table ------------------------------------------------------------------------- */

/* A table whose row does not fit its field is a bug in the command's file. */
static void check_row(const cli_command *cmd, const cli_flag *f) {
    bool ok = true;
    switch (f->type) {
    case CLI_T_SWITCH:
    case CLI_T_BOOL:
        ok = f->size == sizeof(bool) || f->size == sizeof(int);
        break;
    case CLI_T_INT:
        ok = f->size == sizeof(int64_t) ||
             (f->size == sizeof(int) && f->ilo >= INT_MIN && f->ihi <= INT_MAX);
        break;
    case CLI_T_FLOAT:
        ok = f->size == sizeof(float) || f->size == sizeof(double);
        break;
    case CLI_T_STRING:
    case CLI_T_ENUM:
        ok = f->size == sizeof(const char *) && (f->type == CLI_T_STRING || f->choices);
        break;
    case CLI_T_LIST:
        ok = f->size == sizeof(cli_list) && f->max > 0 && f->max <= CLI_LIST_MAX;
        break;
    case CLI_T_CUSTOM:
        ok = f->parse != NULL;
        break;
    case CLI_T_CONFIG:
        ok = f->size == sizeof(cli_config);
        break;
    case CLI_T_MORE:
        ok = cmd->more != NULL;
        break;
    default:
        break;
    }
    if (f->type > CLI_T_TEXT && f->type < CLI_T_GROUP)
        ok = ok && (f->flags || (f->positional && f->arg)) && f->help;
    if (!ok) {
        fprintf(stderr, "finch %s: bug: the flag row '%s' does not fit its field\n", cmd->name,
                f->flags  ? f->flags
                : f->help ? f->help
                          : "?");
        abort();
    }
}

static void add_rows(parser *p, const cli_flag *t, size_t base) {
    for (; t->type != CLI_T_END; t++) {
        if (t->type == CLI_T_GROUP) {
            add_rows(p, t->group, base + t->offset);
            continue;
        }
        check_row(p->cmd, t);
        if (p->n_rows == MAX_ROWS) {
            fprintf(stderr, "finch %s: bug: more than %d flag rows\n", p->cmd->name, MAX_ROWS);
            abort();
        }
        p->rows[p->n_rows++] = (row){t, base};
    }
}

static bool same_char(char a, char b) {
    return a == b || ((a == '_' || a == '-') && (b == '_' || b == '-'));
}

/* Whether one of f's spellings with `dashes` leading dashes (0: any) is name (len bytes,
 * without its dashes). */
static bool spelled(const cli_flag *f, const char *name, size_t len, int dashes) {
    for (const char *s = f->flags; s && *s;) {
        size_t n = strcspn(s, ",");
        int d = s[0] == '-' ? s[1] == '-' ? 2 : 1 : 0;
        if ((!dashes || d == dashes) && n - (size_t)d == len) {
            size_t k = 0;
            while (k < len && same_char(s[d + k], name[k])) k++;
            if (k == len) return true;
        }
        s += n;
        while (*s == ',' || *s == ' ') s++;
    }
    return false;
}

static int find_row(const parser *p, const char *name, size_t len, int dashes) {
    for (int r = 0; r < p->n_rows; r++)
        if (spelled(p->rows[r].f, name, len, dashes)) return r;
    return -1;
}

/* ---- messages -------------------------------------------------------------------------- */

/* Edit distance of a (la bytes) and b (lb), counting an insertion, a deletion, a change
 * or two neighbours swapped as one edit (optimal string alignment); '_' and '-' alike. */
static int distance(const char *a, size_t la, const char *b, size_t lb) {
    int d[MAX_NAME + 1][MAX_NAME + 1];
    if (la > MAX_NAME || lb > MAX_NAME) return INT_MAX;
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int best = d[i - 1][j - 1] + !same_char(a[i - 1], b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && same_char(a[i - 1], b[j - 2]) && same_char(a[i - 2], b[j - 1]) &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

/* "; did you mean --x?" for the table's long name nearest to name, or "" when none is
 * near: at most two edits, and fewer than a third of the name's length. */
static void suggest(const parser *p, const char *name, size_t len, char *buf, size_t n) {
    int best = INT_MAX;
    const char *found = NULL;
    size_t found_len = 0;
    buf[0] = 0;
    for (int r = 0; r < p->n_rows; r++)
        for (const char *s = p->rows[r].f->flags; s && *s;) {
            size_t k = strcspn(s, ",");
            if (k > 2 && s[1] == '-') {
                int d = distance(name, len, s + 2, k - 2);
                if (d < best) {
                    best = d;
                    found = s;
                    found_len = k;
                }
            }
            s += k;
            while (*s == ',' || *s == ' ') s++;
        }
    if (found && best <= 2 && 3 * (size_t)best < len)
        snprintf(buf, n, "; did you mean %.*s?", (int)found_len, found);
}

/* "a, b or c" for choices "a|b|c". */
static void choices_text(const char *choices, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    for (const char *c = choices; *c && len < n;) {
        size_t k = strcspn(c, "|");
        const char *sep = c == choices ? "" : c[k] ? ", " : " or ";
        len += (size_t)snprintf(buf + len, n - len, "%s%.*s", sep, (int)k, c);
        c += k + (c[k] == '|');
    }
}

static bool is_choice(const char *choices, const char *v) {
    for (const char *c = choices; *c;) {
        size_t k = strcspn(c, "|");
        if (strlen(v) == k && !strncmp(c, v, k)) return true;
        c += k + (c[k] == '|');
    }
    return false;
}

/* ---- reading one argument -------------------------------------------------------------- */

/* A command may have several positional rows (finch quantize IN OUT): each argument fills
 * the first one not given yet; once all are, the last (which then reports a second value). */
static finch_status positional(parser *p, const char *a, item *it) {
    int last = -1;
    for (int r = 0; r < p->n_rows; r++)
        if (p->rows[r].f->positional) {
            last = r;
            if (!p->count[r]) break;
        }
    if (last >= 0) {
        *it = (item){last, p->rows[last].f->arg, (int)strlen(p->rows[last].f->arg), a, true};
        return FINCH_OK;
    }
    return fail(p, FINCH_E_USAGE, "unexpected argument '%s' (see finch %s --help)", a,
                p->cmd->name);
}

/* Reads argv[*i] (and its value, advancing *i) into it; *rest is set after "--". */
static finch_status decode(parser *p, int argc, char **argv, int *i, bool *rest, item *it) {
    const char *a = argv[*i];
    *it = (item){.row = ROW_SKIP};
    if (*rest || a[0] != '-' || !a[1]) return positional(p, a, it);
    if (!strcmp(a, "--")) {
        *rest = true;
        return FINCH_OK;
    }
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
        it->row = ROW_HELP;
        return FINCH_OK;
    }
    const int dashes = a[1] == '-' ? 2 : 1;
    const char *name = a + dashes, *eq = dashes == 2 ? strchr(name, '=') : NULL;
    const size_t len = eq ? (size_t)(eq - name) : strlen(name);
    it->tok = a;
    it->tok_len = (int)(dashes + len);
    it->row = find_row(p, name, len, dashes);
    int kind = 0; /* 1: it takes a value, 2: a switch */
    if (it->row >= 0) {
        kind = p->rows[it->row].f->type == CLI_T_SWITCH ? 2 : 1;
    } else if (dashes == 2 && p->cmd->more && len < MAX_NAME) {
        char key[MAX_NAME];
        memcpy(key, name, len);
        key[len] = 0;
        kind = p->cmd->more->kind(key);
        it->row = ROW_MORE;
    }
    if (!kind) {
        char hint[MAX_NAME + 32];
        suggest(p, name, len, hint, sizeof hint);
        return fail(p, FINCH_E_USAGE, "unknown option '%.*s'%s (see finch %s --help)", it->tok_len,
                    a, hint, p->cmd->name);
    }
    if (eq) {
        it->value = eq + 1;
    } else if (kind == 1 && it->row >= 0 && p->rows[it->row].f->optional) {
        it->value = *i + 1 < argc && argv[*i + 1][0] != '-' ? argv[++*i] : "";
    } else if (kind == 1) {
        if (*i + 1 >= argc) return fail(p, FINCH_E_USAGE, "%s needs a value", a);
        it->value = argv[++*i];
    }
    return FINCH_OK;
}

/* ---- applying a value ------------------------------------------------------------------ */

static void store_int(void *at, size_t size, long v) {
    if (size == sizeof(bool))
        *(bool *)at = v != 0;
    else if (size == sizeof(int))
        *(int *)at = (int)v;
    else
        *(int64_t *)at = v;
}

static bool parse_bool(const char *v, bool *out) {
    if (!strcmp(v, "true") || !strcmp(v, "1"))
        *out = true;
    else if (!strcmp(v, "false") || !strcmp(v, "0"))
        *out = false;
    else
        return false;
    return true;
}

/* A flag of the cli_more hook: once per session, then the hook's. */
static finch_status apply_more(parser *p, const item *it) {
    char key[MAX_NAME];
    snprintf(key, sizeof key, "%.*s", it->tok_len - 2, it->tok + 2);
    for (char *c = key; *c; c++)
        if (*c == '_') *c = '-';
    for (int k = 0; k < p->n_more_seen; k++)
        if (!strcmp(p->more_seen[k], key))
            return fail(p, FINCH_E_USAGE, "--%s given twice; give it once", key);
    if (p->n_more_seen < MAX_MORE) memcpy(p->more_seen[p->n_more_seen++], key, sizeof key);
    char msg[sizeof p->err->msg];
    if (!p->cmd->more->set(p->dst, key, it->value, p->where, msg, sizeof msg))
        return fail(p, FINCH_E_USAGE, "%s", msg);
    return FINCH_OK;
}

static finch_status apply(parser *p, const item *it) {
    if (it->row == ROW_MORE) return apply_more(p, it);
    const cli_flag *f = p->rows[it->row].f;
    void *at = (char *)p->dst + p->rows[it->row].base + f->offset;
    const int n = ++p->count[it->row], tl = it->tok_len;
    const char *prev = p->last[it->row], *v = it->value, *t = it->tok;
    p->last[it->row] = v;
    if (n > 1 && !f->max) {
        if (f->positional)
            return fail(p, FINCH_E_USAGE, "more than one %s given ('%.200s' and '%.200s')", f->arg,
                        prev, v);
        if (!v || !prev || !*v || !*prev)
            return fail(p, FINCH_E_USAGE, "%.*s given twice; give it once", tl, t);
        return fail(p, FINCH_E_USAGE, "%.*s given twice ('%.200s' and '%.200s'); give it once", tl,
                    t, prev, v);
    }
    if (f->max && n > f->max) return fail(p, FINCH_E_USAGE, "%.*s: at most %d", tl, t, f->max);
    switch (f->type) {
    case CLI_T_SWITCH:
    case CLI_T_BOOL: {
        bool b = true;
        if (v && !parse_bool(v, &b))
            return fail(p, FINCH_E_USAGE, "%.*s %s: must be true or false", tl, t, v);
        store_int(at, f->size, b);
        return FINCH_OK;
    }
    case CLI_T_INT: {
        long x;
        if (cli_parse_int(v, f->ilo, f->ihi, &x)) {
            store_int(at, f->size, x);
            return FINCH_OK;
        }
        if (f->ihi == LONG_MAX)
            return fail(p, FINCH_E_USAGE, "%.*s %s: must be an integer >= %ld", tl, t, v, f->ilo);
        return fail(p, FINCH_E_USAGE, "%.*s %s: must be an integer from %ld to %ld", tl, t, v,
                    f->ilo, f->ihi);
    }
    case CLI_T_FLOAT: {
        double x;
        if (!cli_parse_float(v, f->flo, f->fhi, &x) || (f->lo_open && x <= f->flo)) {
            if (f->lo_open)
                return fail(p, FINCH_E_USAGE, "%.*s %s: must be in (%g, %g]", tl, t, v, f->flo,
                            f->fhi);
            return fail(p, FINCH_E_USAGE, "%.*s %s: must be a number from %g to %g", tl, t, v,
                        f->flo, f->fhi);
        }
        if (f->size == sizeof(float))
            *(float *)at = (float)x;
        else
            *(double *)at = x;
        return FINCH_OK;
    }
    case CLI_T_ENUM:
        if (!is_choice(f->choices, v)) {
            char list[256];
            choices_text(f->choices, list, sizeof list);
            return fail(p, FINCH_E_USAGE, "%.*s %s: must be %s", tl, t, v, list);
        }
        /* fall through */
    case CLI_T_STRING:
        *(const char **)at = v;
        return FINCH_OK;
    case CLI_T_LIST: {
        cli_list *l = at;
        if (n == 1) l->n = 0; /* this session's values replace the last session's */
        l->v[l->n++] = v;
        return FINCH_OK;
    }
    case CLI_T_CUSTOM: {
        char flag[MAX_NAME + 4], msg[sizeof p->err->msg];
        snprintf(flag, sizeof flag, "%.*s", tl, t);
        if (!f->parse(at, flag, v, msg, sizeof msg)) return fail(p, FINCH_E_USAGE, "%s", msg);
        return FINCH_OK;
    }
    default:
        return FINCH_OK;
    }
}

/* ---- the config file ------------------------------------------------------------------- */

static void new_session(parser *p, const char *where) {
    p->where = where;
    memset(p->count, 0, sizeof p->count);
    memset(p->last, 0, sizeof p->last);
    p->n_more_seen = 0;
}

/* The text of a JSON scalar; numbers become strings in their container (so that they live
 * as long as the document): obj's member key, or arr's element i. NULL for anything else. */
static const char *text_of(json_t *val, json_t *obj, const char *key, json_t *arr, size_t i) {
    if (json_is_string(val)) return json_string_value(val);
    if (json_is_boolean(val)) return json_is_true(val) ? "true" : "false";
    if (!json_is_number(val)) return NULL;
    char buf[64];
    if (json_is_integer(val))
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(val));
    else
        snprintf(buf, sizeof buf, "%.17g", json_real_value(val));
    json_t *s = json_string(buf);
    if (!s || (obj ? json_object_set_new(obj, key, s) : json_array_set_new(arr, i, s))) return NULL;
    return json_string_value(s);
}

/* One setting "key": val of the config file obj. */
static finch_status config_setting(parser *p, json_t *obj, const char *key, json_t *val) {
    const size_t len = strlen(key);
    const int r = find_row(p, key, len, 0);
    const cli_flag *f = r >= 0 ? p->rows[r].f : NULL;
    const int kind = f                                ? (f->type == CLI_T_SWITCH ? 2 : 1)
                     : p->cmd->more && len < MAX_NAME ? p->cmd->more->kind(key)
                                                      : 0;
    if (!kind) {
        char hint[MAX_NAME + 32];
        suggest(p, key, len, hint, sizeof hint);
        return fail(p, FINCH_E_USAGE, "unknown setting '%s'%s (see finch %s --help)", key, hint,
                    p->cmd->name);
    }
    if (f && f->type == CLI_T_CONFIG)
        return fail(p, FINCH_E_USAGE, "\"%s\": a config file cannot name another", key);
    char tok[MAX_NAME + 2];
    snprintf(tok, sizeof tok, "--%s", key);
    for (char *c = tok; *c; c++)
        if (*c == '_') *c = '-';
    item it = {.row = f ? r : ROW_MORE, .tok = tok, .tok_len = (int)strlen(tok)};
    if (kind == 2) {
        if (!json_is_boolean(val))
            return fail(p, FINCH_E_FORMAT, "\"%s\" must be true or false", key);
        if (!f && !json_is_true(val)) return FINCH_OK; /* a hook's switch left off */
        it.value = json_is_true(val) ? NULL : "false";
        return apply(p, &it);
    }
    if (f && f->type == CLI_T_LIST && json_is_array(val)) {
        size_t i;
        json_t *e;
        json_array_foreach(val, i, e) {
            if (!(it.value = text_of(e, NULL, NULL, val, i)))
                return fail(p, FINCH_E_FORMAT, "\"%s\": entry %zu must be a string or a number",
                            key, i + 1);
            finch_status st = apply(p, &it);
            if (st) return st;
        }
        return FINCH_OK;
    }
    if (!(it.value = text_of(val, obj, key, NULL, 0)))
        return fail(p, FINCH_E_FORMAT, "\"%s\" must be a string, a number or a boolean%s", key,
                    f && f->type == CLI_T_LIST ? " (or a list of them)" : "");
    return apply(p, &it);
}

/* Reads the config file at path into the cli_config field of row r and applies its
 * settings, as one session. */
static finch_status read_config(parser *p, int r, const char *path) {
    cli_config *c = (cli_config *)((char *)p->dst + p->rows[r].base + p->rows[r].f->offset);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (je.line < 1) return fail(p, FINCH_E_IO, "%s", je.text);
        return fail(p, FINCH_E_FORMAT, "%s: line %d, column %d: %s", path, je.line, je.column,
                    je.text);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(p, FINCH_E_FORMAT, "%s: the config must be a JSON object of settings", path);
    }
    cli_config_free(c);
    c->doc = root;
    char where[600];
    snprintf(where, sizeof where, "%s: ", path);
    new_session(p, where);
    finch_status st = FINCH_OK;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if ((st = config_setting(p, root, key, val))) break;
    }
    new_session(p, "");
    return st;
}

void cli_config_free(cli_config *c) {
    json_decref(c->doc);
    c->doc = NULL;
}

/* ---- the command line ------------------------------------------------------------------ */

finch_status cli_args_read(const cli_command *cmd, int argc, char **argv, void *dst, bool *help,
                           finch_err *err) {
    parser p = {.cmd = cmd, .dst = dst, .where = "", .err = err};
    add_rows(&p, cmd->flags, 0);
    *help = false;
    /* first the syntax, --help and the config file, which applies before the flags */
    int config_row = -1;
    const char *config_path = NULL;
    bool rest = false;
    finch_status st;
    item it;
    for (int i = 1; i < argc; i++) {
        if ((st = decode(&p, argc, argv, &i, &rest, &it))) return st;
        if (it.row == ROW_HELP) {
            *help = true;
            return FINCH_OK;
        }
        if (it.row >= 0 && p.rows[it.row].f->type == CLI_T_CONFIG) {
            if (config_path)
                return fail(&p, FINCH_E_USAGE, "%.*s given twice ('%s' and '%s'); give it once",
                            it.tok_len, it.tok, config_path, it.value);
            config_row = it.row;
            config_path = it.value;
        }
    }
    if (config_path && (st = read_config(&p, config_row, config_path))) return st;
    rest = false;
    for (int i = 1; i < argc; i++) {
        if ((st = decode(&p, argc, argv, &i, &rest, &it))) return st;
        if (it.row == ROW_SKIP || (it.row >= 0 && p.rows[it.row].f->type == CLI_T_CONFIG)) continue;
        if ((st = apply(&p, &it))) return st;
    }
    return FINCH_OK;
}

int cli_parse(const cli_command *cmd, int argc, char **argv, void *dst) {
    bool help;
    finch_err err;
    finch_status st = cli_args_read(cmd, argc, argv, dst, &help, &err);
    if (st == FINCH_E_USAGE) return cli_usage_error(cmd->name, "%s", err.msg);
    if (st) return cli_fail(&err);
    if (!help) return CLI_RUN;
    cli_help_print(cmd, stdout);
    return 0;
}

/* ---- --help ---------------------------------------------------------------------------- */

/* The left column of a flag's line: "-m, --model FILE", "--jsonl [FILE]", "RUN_DIR". */
static void left_column(const cli_flag *f, char *buf, size_t n) {
    const char *arg = f->type == CLI_T_SWITCH ? NULL : f->arg;
    if (!f->flags)
        snprintf(buf, n, "%s", arg);
    else if (!arg)
        snprintf(buf, n, "%s", f->flags);
    else
        snprintf(buf, n, f->optional ? "%s [%s]" : "%s %s", f->flags, arg);
}

enum { HELP_COLUMN_MAX = 24 };

void cli_help_line(FILE *f, int width, const char *left, const char *help) {
    if ((int)strlen(left) > width)
        fprintf(f, "  %s\n  %*s  ", left, width, "");
    else
        fprintf(f, "  %-*s  ", width, left);
    for (const char *h = help; *h;) {
        size_t k = strcspn(h, "\n");
        fprintf(f, "%.*s\n", (int)k, h);
        h += k;
        if (*h && *++h) fprintf(f, "  %*s  ", width, "");
    }
}

void cli_help_print(const cli_command *cmd, FILE *f) {
    parser p = {.cmd = cmd};
    add_rows(&p, cmd->flags, 0);
    char left[256];
    int width = 10;
    for (int r = 0; r < p.n_rows; r++) {
        const cli_flag *row = p.rows[r].f;
        if (row->type == CLI_T_TEXT || row->type == CLI_T_MORE) continue;
        left_column(row, left, sizeof left);
        int len = (int)strlen(left);
        if (len <= HELP_COLUMN_MAX && len > width) width = len;
    }
    fputs(cmd->usage, f);
    for (int r = 0; r < p.n_rows; r++) {
        const cli_flag *row = p.rows[r].f;
        if (row->type == CLI_T_TEXT) {
            fprintf(f, "%s\n", row->help);
        } else if (row->type == CLI_T_MORE) {
            cmd->more->help(f, width);
        } else {
            left_column(row, left, sizeof left);
            cli_help_line(f, width, left, row->help);
        }
    }
    cli_help_line(f, width, "-h, --help", "this help");
    if (cmd->epilog) fputs(cmd->epilog, f);
}
