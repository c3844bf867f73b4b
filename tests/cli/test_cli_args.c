/*
 * test_cli_args.c: the flag parser of the finch command (src/cli/args.c) on a table of its
 * own with a row of every type: values read into the right fields (--name value,
 * --name=value, -x value, repeated and positional arguments, groups, the cli_more hook),
 * every kind of bad command line refused with FINCH_E_USAGE and a message naming the flag
 * and the value against its limit, a config file applied under the command line, and
 * --help made from the table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

typedef struct {
    bool on;
    int level;
} inner_t;

typedef struct {
    bool sw, yes;
    int small, sw_int;
    long big;
    int64_t wide;
    float f;
    double d, p;
    const char *s, *e, *opt, *pos;
    cli_list list;
    int custom;
    inner_t inner;
    cli_config config;
    char more_name[64];
    const char *more_value;
    int more_calls;
} dst_t;

#define CLI_DST inner_t
static const cli_flag inner_rows[] = {
    CLI_SWITCH("--inner-on", on, "a switch in a group"),
    CLI_INT("--inner-level", "N", 0, 9, level, "an int in a group"), CLI_END};
#undef CLI_DST

/* Counts its calls and refuses "bad". */
static bool count_parse(void *field, const char *flag, const char *v, char *msg, size_t n) {
    if (!strcmp(v, "bad")) return snprintf(msg, n, "%s %s: bad on purpose", flag, v), false;
    ++*(int *)field;
    return true;
}

/* The hook's flags: --hook-value V and --hook-switch. */
static int hook_kind(const char *name) {
    return !strcmp(name, "hook-value") || !strcmp(name, "hook_value") ? 1
           : !strcmp(name, "hook-switch")                             ? 2
                                                                      : 0;
}

static bool hook_set(void *dst, const char *name, const char *value, const char *where, char *msg,
                     size_t n) {
    dst_t *d = dst;
    (void)where;
    if (value && !strcmp(value, "refuse")) return snprintf(msg, n, "--%s: refused", name), false;
    snprintf(d->more_name, sizeof d->more_name, "%s", name);
    d->more_value = value;
    d->more_calls++;
    return true;
}

static void hook_help(FILE *f, int width) {
    cli_help_line(f, width, "--hook-value V", "the hook's flag");
}

static const cli_more hook = {hook_kind, hook_set, hook_help};

#define CLI_DST dst_t
static const cli_flag rows[] = {
    CLI_TEXT("section one:"),
    CLI_SWITCH("-s, --sw", sw, "a switch"),
    CLI_SWITCH("--sw-int", sw_int, "a switch into an int"),
    CLI_BOOL("--yes", yes, "true or false"),
    CLI_INT("-n, --small", "N", -5, 100, small, "an int from -5 to 100"),
    CLI_INT("--big", "N", 1, LONG_MAX, big, "a long of at least 1"),
    CLI_INT("--wide", "N", 0, 1000, wide, "an int64_t"),
    CLI_FLOAT("--float", "X", 0, 2, f, "a float"),
    CLI_FLOAT("--double, --dbl", "X", -1, 1, d, "a double with a second name\nand a second line"),
    CLI_FLOAT_OPEN("--open", "P", 0, 1, p, "in (0, 1]"),
    CLI_TEXT("section two:"),
    CLI_STRING("--string", "TEXT", s, "a text"),
    CLI_ENUM("--pick", "red|green|blue", e, "a colour"),
    CLI_STRING_OPT("--maybe", "FILE", opt, "a text that may be left out"),
    CLI_LIST("--item", "TEXT", 3, list, "up to three"),
    CLI_CUSTOM("--count", "X", 2, count_parse, custom, "counted, twice at most"),
    CLI_GROUP(inner_rows, inner),
    CLI_CONFIG("--config", "FILE", config, "settings"),
    CLI_MORE,
    CLI_POSITIONAL("--pos", "THING", pos, "the positional argument"),
    CLI_END};
#undef CLI_DST

static const cli_command command = {.name = "test",
                                    .usage = "usage: finch test [options] [THING]\n",
                                    .flags = rows,
                                    .epilog = "the end\n",
                                    .more = &hook};

static char tmpdir[] = "/tmp/finch_cli_args_XXXXXX";
static dst_t d;
static finch_err err;
static bool help;

/* Parses the arguments (NULL-terminated, argv[0] added) into d, fresh; the status. */
static finch_status parse(const char *first, ...) {
    char *argv[64] = {"finch-test"};
    int argc = 1;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    cli_config_free(&d.config);
    memset(&d, 0, sizeof d);
    memset(&err, 0, sizeof err);
    return cli_args_read(&command, argc, argv, &d, &help, &err);
}

#define REFUSED(fragment, ...)                                                                     \
    do {                                                                                           \
        finch_status st_ = parse(__VA_ARGS__, NULL);                                               \
        if (st_ != FINCH_E_USAGE || !strstr(err.msg, fragment))                                    \
            fail_msg("status %d, message '%s' (want '%s')", st_, err.msg, fragment);               \
    } while (0)

static void test_types(void **state) {
    (void)state;
    assert_int_equal(parse("-s", "--sw-int", "--yes", "false", "-n", "-5", "--big",
                           "9223372036854775807", "--wide", "1000", "--float", "1.5", "--dbl",
                           "-0.25", "--open", "1", "--string", "-x", "--pick", "green", NULL),
                     FINCH_OK);
    assert_false(help);
    assert_true(d.sw);
    assert_int_equal(d.sw_int, 1);
    assert_false(d.yes);
    assert_int_equal(d.small, -5);
    assert_true(d.big == LONG_MAX);
    assert_true(d.wide == 1000);
    assert_true(d.f == 1.5f);
    assert_true(d.d == -0.25);
    assert_true(d.p == 1.0);
    assert_string_equal(d.s, "-x"); /* a value is the next argument, whatever it starts with */
    assert_string_equal(d.e, "green");
    /* --name=value, '_' for '-', a switch set to false, 1 for true */
    assert_int_equal(
        parse("--small=7", "--string=a=b", "--inner_level=3", "--sw=false", "--yes=1", NULL),
        FINCH_OK);
    assert_int_equal(d.small, 7);
    assert_int_equal(d.inner.level, 3);
    assert_string_equal(d.s, "a=b");
    assert_false(d.sw);
    assert_true(d.yes);
    /* an optional value: the next argument unless it looks like a flag, or after '=' */
    assert_int_equal(parse("--maybe", "--sw", NULL), FINCH_OK);
    assert_string_equal(d.opt, "");
    assert_true(d.sw);
    assert_int_equal(parse("--maybe", "file.json", NULL), FINCH_OK);
    assert_string_equal(d.opt, "file.json");
    assert_null(d.pos);
    assert_int_equal(parse("--maybe=-", NULL), FINCH_OK);
    assert_string_equal(d.opt, "-");
    /* repeatable rows, a group, the positional argument and "--" */
    assert_int_equal(parse("--item", "a", "thing", "--item", "b", "--count", "x", "--count", "y",
                           "--inner-on", "--inner-level", "9", NULL),
                     FINCH_OK);
    assert_int_equal(d.list.n, 2);
    assert_string_equal(d.list.v[0], "a");
    assert_string_equal(d.list.v[1], "b");
    assert_int_equal(d.custom, 2);
    assert_true(d.inner.on);
    assert_int_equal(d.inner.level, 9);
    assert_string_equal(d.pos, "thing");
    assert_int_equal(parse("--", "-s", NULL), FINCH_OK);
    assert_string_equal(d.pos, "-s");
    assert_false(d.sw);
    /* the hook's flags */
    assert_int_equal(parse("--hook_value", "7", "--hook-switch", NULL), FINCH_OK);
    assert_int_equal(d.more_calls, 2);
    assert_string_equal(d.more_name, "hook-switch");
    assert_null(d.more_value);
    /* --help, wherever it is */
    assert_int_equal(parse("-s", "--help", "--bogus", NULL), FINCH_OK);
    assert_true(help);
    assert_int_equal(parse("-h", NULL), FINCH_OK);
    assert_true(help);
}

static void test_refused(void **state) {
    (void)state;
    /* numbers out of range or not numbers */
    REFUSED("-n 101: must be an integer from -5 to 100", "-n", "101");
    REFUSED("--small -6: must be an integer from -5 to 100", "--small", "-6");
    REFUSED("--small 12x: must be an integer", "--small", "12x");
    REFUSED("--small : must be an integer", "--small=");
    REFUSED("--big 0: must be an integer >= 1", "--big", "0");
    REFUSED("--big 9223372036854775808: must be an integer >= 1", "--big", "9223372036854775808");
    REFUSED("--float 2.5: must be a number from 0 to 2", "--float", "2.5");
    REFUSED("--float nan: must be a number", "--float", "nan");
    REFUSED("--float inf: must be a number", "--float", "inf");
    REFUSED("--open 0: must be in (0, 1]", "--open", "0");
    REFUSED("--yes maybe: must be true or false", "--yes", "maybe");
    REFUSED("--sw maybe: must be true or false", "--sw=maybe");
    /* choices */
    REFUSED("--pick purple: must be red, green or blue", "--pick", "purple");
    REFUSED("--pick : must be red, green or blue", "--pick=");
    /* given twice; repeatable past their max */
    REFUSED("-n given twice ('1' and '2'); give it once", "--small", "1", "-n", "2");
    REFUSED("-s given twice", "--sw", "-s");
    REFUSED("--item: at most 3", "--item", "a", "--item", "b", "--item", "c", "--item", "d");
    REFUSED("--count: at most 2", "--count", "a", "--count", "b", "--count", "c");
    REFUSED("more than one THING given ('a' and 'b')", "a", "b");
    REFUSED("more than one THING given ('a' and 'b')", "--pos", "a", "b");
    REFUSED("--hook-value given twice", "--hook-value", "1", "--hook_value", "2");
    /* a custom value and the hook refusing */
    REFUSED("--count bad: bad on purpose", "--count", "bad");
    REFUSED("--hook-value: refused", "--hook-value", "refuse");
    /* missing values, unknown flags, with and without a near name */
    REFUSED("--small needs a value", "--small");
    REFUSED("-n needs a value", "-s", "-n");
    REFUSED("--hook-value needs a value", "--hook-value");
    REFUSED("unknown option '--smal'; did you mean --small? (see finch test --help)", "--smal",
            "1");
    REFUSED("unknown option '--inner-levle'; did you mean --inner-level?", "--inner-levle", "1");
    REFUSED("unknown option '--bogus' (see finch test --help)", "--bogus");
    REFUSED("unknown option '-x'", "-x");
    REFUSED("unknown option '-ns'", "-ns");
    /* the first error is the one reported, and nothing after --help is read */
    REFUSED("unknown option '--bogus'", "--bogus", "--help");
}

/* Writes text to tmpdir/name; the path. */
static const char *write_config(const char *name, const char *text) {
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_config(void **state) {
    (void)state;
    const char *cfg = write_config(
        "ok.json", "{\"small\": 3, \"n\": 4, \"string\": 5, \"sw\": true, \"yes\": false, "
                   "\"item\": [\"a\", 2], \"inner_level\": 8, \"hook_value\": 1.5, "
                   "\"hook-switch\": false, \"dbl\": 0.5}");
    /* keys by any name, '-' or '_'; numbers as text */
    REFUSED("ok.json: --n given twice ('3' and '4'); give it once", "--config", cfg);
    cfg = write_config("ok.json", "{\"small\": 3, \"string\": 5, \"sw\": true, \"yes\": false, "
                                  "\"item\": [\"a\", 2], \"inner_level\": 8, \"hook_value\": 1.5, "
                                  "\"hook-switch\": false, \"dbl\": 0.5}");
    assert_int_equal(parse("--config", cfg, NULL), FINCH_OK);
    assert_int_equal(d.small, 3);
    assert_string_equal(d.s, "5");
    assert_true(d.sw);
    assert_false(d.yes);
    assert_int_equal(d.list.n, 2);
    assert_string_equal(d.list.v[1], "2");
    assert_int_equal(d.inner.level, 8);
    assert_true(d.d == 0.5);
    assert_int_equal(d.more_calls, 1); /* the hook's switch left off */
    assert_string_equal(d.more_name, "hook-value");
    assert_string_equal(d.more_value, "1.5");
    /* the command line overrides the file wherever the flags stand; a list is replaced */
    assert_int_equal(parse("-n", "9", "--config", cfg, "--item", "z", "--sw=false", NULL),
                     FINCH_OK);
    assert_int_equal(d.small, 9);
    assert_false(d.sw);
    assert_int_equal(d.list.n, 1);
    assert_string_equal(d.list.v[0], "z");
    assert_string_equal(d.s, "5");
    /* bad files */
    const struct {
        const char *json, *fragment;
        finch_status st;
    } bad[] = {
        {"{\"small\": 3,", "bad.json: line 1", FINCH_E_FORMAT},
        {"[1]", "bad.json: the config must be a JSON object of settings", FINCH_E_FORMAT},
        {"{\"sw\": 1}", "bad.json: \"sw\" must be true or false", FINCH_E_FORMAT},
        {"{\"small\": [1]}", "\"small\" must be a string, a number or a boolean", FINCH_E_FORMAT},
        {"{\"item\": {}}", "\"item\" must be a string, a number or a boolean (or a list of them)",
         FINCH_E_FORMAT},
        {"{\"item\": [[1]]}", "\"item\": entry 1 must be a string or a number", FINCH_E_FORMAT},
        {"{\"smal\": 1}", "bad.json: unknown setting 'smal'; did you mean --small?",
         FINCH_E_USAGE},
        {"{\"small\": 500}", "bad.json: --small 500: must be an integer from -5 to 100",
         FINCH_E_USAGE},
        {"{\"config\": \"x\"}", "\"config\": a config file cannot name another", FINCH_E_USAGE},
        {"{\"item\": [1, 2, 3, 4]}", "--item: at most 3", FINCH_E_USAGE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cfg = write_config("bad.json", bad[i].json);
        finch_status st = parse("--config", cfg, NULL);
        if (st != bad[i].st || !strstr(err.msg, bad[i].fragment))
            fail_msg("%s: status %d, message '%s' (want '%s')", bad[i].json, st, err.msg,
                     bad[i].fragment);
    }
    REFUSED("--config given twice", "--config", cfg, "--config", cfg);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/missing.json", tmpdir);
    assert_int_equal(parse("--config", missing, NULL), FINCH_E_IO);
    assert_non_null(strstr(err.msg, "missing.json"));
}

static void test_help(void **state) {
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cli_help_print(&command, f);
    fclose(f);
    const char *want[] = {
        "usage: finch test [options] [THING]\nsection one:\n",
        "\n  -s, --sw               a switch\n",
        "\n  --double, --dbl X      a double with a second name\n"
        "                         and a second line\n",
        "\n  --pick red|green|blue  a colour\n",
        "\n  --maybe [FILE]         a text that may be left out\n",
        "\n  --inner-level N        an int in a group\n",
        "\n  --hook-value V         the hook's flag\n",
        "\nsection two:\n",
        "\n  -h, --help             this help\nthe end\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        if (!strstr(text, want[i])) fail_msg("--help lacks '%s':\n%s", want[i], text);
    assert_true(len > 0 && text[len - 1] == '\n');
    free(text);
}

static int setup(void **state) {
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    cli_config_free(&d.config);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
