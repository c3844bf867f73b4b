/*
 * cmd_export.c: `finch export`: an adapter in another format. --format gguf writes the
 * GGUF LoRA adapter llama.cpp loads with --lora.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "usage: finch export [-m MODEL] --adapter DIR --format gguf -o OUT.gguf\n"
    "  -m, --model FILE     the base model the adapter was trained on (default: the cached\n"
    "                       SmolLM2-135M-Instruct)\n"
    "  --adapter DIR        PEFT LoRA adapter folder\n"
    "  --format gguf        GGUF LoRA adapter for llama.cpp's --lora\n"
    "  -o, --out FILE       output path\n";

int cmd_export(int argc, char **argv) {
    const char *path = NULL, *adapter = NULL, *format = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VALUE()                                                                                    \
    if (!(v = cli_flag_value("export", argc, argv, &i))) return EXIT_USAGE
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            VALUE();
            path = v;
        } else if (!strcmp(a, "--adapter")) {
            VALUE();
            adapter = v;
        } else if (!strcmp(a, "--format")) {
            VALUE();
            format = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            VALUE();
            out = v;
        } else {
            return cli_usage_error("export", "unknown option '%s' (see finch export --help)", a);
        }
#undef VALUE
    }
    if (!adapter) return cli_usage_error("export", "no adapter: give --adapter DIR");
    if (!out) return cli_usage_error("export", "no output: give -o FILE");
    if (!format || strcmp(format, "gguf"))
        return cli_usage_error("export", "--format %s: this build exports 'gguf'",
                               format ? format : "(none)");
    finch_model *m = cli_load_model(path);
    if (!m) return EXIT_FAIL;
    finch_adapter *a = NULL;
    finch_err err;
    int rc = 0;
    if (finch_adapter_load(m, adapter, &a, &err) || finch_adapter_export_gguf(m, a, out, &err))
        rc = cli_fail(&err);
    else
        fprintf(stderr, "finch export: wrote %s (llama.cpp: --lora %s)\n", out, out);
    finch_adapter_free(a);
    finch_model_free(m);
    return rc;
}
