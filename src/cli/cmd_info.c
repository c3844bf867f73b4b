/*
 * cmd_info.c: `finch info [MODEL]`: prints the model's architecture, hyperparameters,
 * parameter count, tensor types, tokenizer and chat template family.
 */
#include "cli.h"

#include <stdio.h>

static void print_line(const char *line, void *user) {
    (void)user;
    puts(line);
}

typedef struct {
    const char *model;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_POSITIONAL("-m, --model", "MODEL", model,
                   "a GGUF file or a Hugging Face folder (default: the cached\n"
                   "SmolLM2-135M-Instruct)"),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "info", .usage = "usage: finch info [MODEL]\n", .flags = flag_table};

int cmd_info(int argc, char **argv) {
    args_t a = {0};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc != CLI_RUN) return rc;
    finch_model *m = cli_load_model(a.model);
    if (!m) return EXIT_FAIL;
    finch_model_describe(m, print_line, NULL);
    finch_model_free(m);
    return 0;
}
