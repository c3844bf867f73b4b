/*
 * cmd_export.c: `finch export`: an adapter in another format. --format gguf writes the
 * GGUF LoRA adapter llama.cpp loads with --lora.
 */
#include "cli.h"

#include <stdio.h>

typedef struct {
    const char *model, *adapter, *format, *out;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_STRING("-m, --model", "FILE", model,
               "the base model the adapter was trained on (default: the cached\n"
               "SmolLM2-135M-Instruct)"),
    CLI_STRING("--adapter", "DIR", adapter, "PEFT LoRA adapter folder"),
    CLI_ENUM("--format", "gguf", format, "GGUF LoRA adapter for llama.cpp's --lora"),
    CLI_STRING("-o, --out", "FILE", out, "output path"), CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "export",
    .usage = "usage: finch export [-m MODEL] --adapter DIR --format gguf -o OUT.gguf\n",
    .flags = flag_table};

int cmd_export(int argc, char **argv) {
    args_t a = {0};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc != CLI_RUN) return rc;
    if (!a.adapter) return cli_usage_error("export", "no adapter: give --adapter DIR");
    if (!a.out) return cli_usage_error("export", "no output: give -o FILE");
    if (!a.format) return cli_usage_error("export", "no format: give --format gguf");
    finch_model *m = cli_load_model(a.model);
    if (!m) return EXIT_FAIL;
    finch_adapter *ad = NULL;
    finch_err err;
    rc = 0;
    if (finch_adapter_load(m, a.adapter, &ad, &err) ||
        finch_adapter_export_gguf(m, ad, a.out, &err))
        rc = cli_fail(&err);
    else
        fprintf(stderr, "finch export: wrote %s (llama.cpp: --lora %s)\n", a.out, a.out);
    finch_adapter_free(ad);
    finch_model_free(m);
    return rc;
}
