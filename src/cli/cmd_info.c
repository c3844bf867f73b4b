/*
 * cmd_info.c: `finch info [MODEL]`: prints the model's architecture, hyperparameters,
 * parameter count, tensor types, tokenizer and chat template family.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void print_line(const char *line, void *user) {
    (void)user;
    puts(line);
}

int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf(
                "usage: finch info [MODEL.gguf]   (default: the cached SmolLM2-135M-Instruct)\n");
            return 0;
        } else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (!(path = cli_flag_value("info", argc, argv, &i))) return EXIT_USAGE;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage_error("info", "unknown option '%s'", argv[i]);
        } else if (path) {
            return cli_usage_error("info", "more than one model given ('%s', '%s')", path, argv[i]);
        } else {
            path = argv[i];
        }
    }
    finch_model *m = cli_load_model(path);
    if (!m) return EXIT_FAIL;
    finch_model_describe(m, print_line, NULL);
    finch_model_free(m);
    return 0;
}
