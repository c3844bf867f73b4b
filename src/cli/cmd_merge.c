/*
 * cmd_merge.c: `finch merge`: a model with adapters merged into its weights, as GGUF.
 */
#include "cli.h"

#include <stdio.h>

typedef struct {
    const char *model, *out, *type;
    bool all_tensors;
    cli_adapters adapters;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_STRING("-m, --model", "FILE", model,
               "base GGUF model (default: the cached SmolLM2-135M-Instruct)"),
    CLI_CUSTOM("--adapter", "DIR[:W]", 8, cli_adapter_parse, adapters,
               "PEFT LoRA adapter, weighted by W (default 1); repeatable"),
    CLI_STRING("-o, --out", "FILE", out, "the merged GGUF"),
    CLI_ENUM("--type", "f16|f32|bf16|q8_0|q4_0|q4_1|q5_0|q5_1", type,
             "storage of merged projections (default f16); other tensors keep\n"
             "their types"),
    CLI_SWITCH("--all-tensors", all_tensors,
               "write every matrix in --type, the embeddings too (with --type f32\n"
               "and --adapter DIR:0: the base dequantized whole)"),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "merge",
    .usage = "usage: finch merge [-m MODEL] --adapter DIR[:W] [--adapter ...] -o OUT.gguf "
             "[--type T] [--all-tensors]\n",
    .flags = flag_table};

int cmd_merge(int argc, char **argv) {
    args_t a = {.type = "f16"};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc != CLI_RUN) return rc;
    if (!a.adapters.n) return cli_usage_error("merge", "no adapter: give --adapter DIR");
    if (!a.out) return cli_usage_error("merge", "no output: give -o OUT.gguf");
    finch_model *m = cli_load_model(a.model);
    if (!m) return EXIT_FAIL;
    rc = 0;
    finch_err err;
    /* load (attaching is how cli_adapters loads; merging reads the adapters only) */
    if (!cli_adapters_attach(&a.adapters, m)) {
        rc = EXIT_FAIL;
    } else {
        if (a.type[0] == 'q')
            fprintf(stderr,
                    "finch merge: warning: the merged projections are re-quantized to %s, "
                    "which is lossy: the merged model computes close to, not exactly, the "
                    "base with its adapters (f32 or f16 keep them)\n",
                    a.type);
        if ((a.all_tensors ? finch_merge_all : finch_merge)(m, a.adapters.loaded, a.adapters.weight,
                                                            a.adapters.n, a.type, a.out, &err))
            rc = cli_fail(&err);
        else
            fprintf(stderr, "finch merge: wrote %s\n", a.out);
    }
    cli_adapters_release(&a.adapters, m);
    finch_model_free(m);
    return rc;
}
