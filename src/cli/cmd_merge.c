/*
 * cmd_merge.c: `finch merge`: a model with adapters merged into its weights, as GGUF.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "usage: finch merge [-m MODEL] --adapter DIR[:W] [--adapter ...] -o OUT.gguf [--type T]\n"
    "  -m, --model FILE     base GGUF model (default: the cached SmolLM2-135M-Instruct)\n"
    "  --adapter DIR[:W]    PEFT LoRA adapter, weighted by W (default 1); repeatable\n"
    "  -o, --out FILE       the merged GGUF\n"
    "  --type T             storage of merged projections: f16 (default), f32, bf16, q8_0,\n"
    "                       q4_0, q4_1, q5_0, q5_1; other tensors keep their types\n";

int cmd_merge(int argc, char **argv) {
    const char *path = NULL, *out = NULL, *type = "f16";
    cli_adapters adapters = {.n = 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VALUE()                                                                                    \
    if (!(v = cli_flag_value("merge", argc, argv, &i))) return EXIT_USAGE
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            VALUE();
            path = v;
        } else if (!strcmp(a, "--adapter")) {
            VALUE();
            if (!cli_adapter_add(&adapters, "merge", v)) return EXIT_USAGE;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            VALUE();
            out = v;
        } else if (!strcmp(a, "--type")) {
            VALUE();
            type = v;
        } else {
            return cli_usage_error("merge", "unknown option '%s' (see finch merge --help)", a);
        }
#undef VALUE
    }
    if (!adapters.n) return cli_usage_error("merge", "no adapter: give --adapter DIR");
    if (!out) return cli_usage_error("merge", "no output: give -o OUT.gguf");
    finch_model *m = cli_load_model(path);
    if (!m) return EXIT_FAIL;
    int rc = 0;
    finch_err err;
    /* load (attaching is how cli_adapters loads; merging reads the adapters only) */
    if (!cli_adapters_attach(&adapters, m)) {
        rc = EXIT_FAIL;
    } else {
        if (type[0] == 'q')
            fprintf(stderr,
                    "finch merge: warning: the merged projections are re-quantized to %s, "
                    "which is lossy: the merged model computes close to, not exactly, the "
                    "base with its adapters (f32 or f16 keep them)\n",
                    type);
        if (finch_merge(m, adapters.loaded, adapters.weight, adapters.n, type, out, &err))
            rc = cli_fail(&err);
        else
            fprintf(stderr, "finch merge: wrote %s\n", out);
    }
    cli_adapters_release(&adapters, m);
    finch_model_free(m);
    return rc;
}
