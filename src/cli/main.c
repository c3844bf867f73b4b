/*
 * main.c: the finch command: dispatches to one subcommand per file (cmd_*.c).
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static int cmd_version(int argc, char **argv);

static void log_to_stderr(finch_log_level level, const char *msg, void *user) {
    (void)user;
    if (level == FINCH_LOG_DEBUG) return;
    fprintf(stderr, "finch: %s%s\n", level == FINCH_LOG_WARN ? "warning: " : "", msg);
}

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"info", cmd_info, "describe a model: architecture, sizes, tensor types, tokenizer"},
    {"generate", cmd_generate, "generate text from a prompt (streams tokens)"},
    {"train", cmd_train, "fine-tune a model on a JSONL dataset (LoRA or another method)"},
    {"merge", cmd_merge, "merge adapters into the base weights, write a GGUF model"},
    {"quantize", cmd_quantize,
     "write a GGUF model in another type: q8_0, q4_k_m, q6_k, ... (as llama-quantize)"},
    {"export", cmd_export, "write an adapter as a GGUF LoRA adapter for llama.cpp"},
    {"eval", cmd_eval, "measure a model on a dataset (--task loss: loss and perplexity)"},
    {"score", cmd_score, "ROUGE, BLEU, exact match, F1 of predictions against references"},
    {"tokenize", cmd_tokenize, "text on stdin to token ids on stdout (--decode: reverse)"},
    {"report", cmd_report, "an HTML report of a training run: curves, metrics, samples"},
    {"compare-methods", cmd_compare,
     "train several methods with one budget and compare them: size, speed, memory, quality"},
    {"version", cmd_version, "print finch's version (also finch --version)"},
};

static int cmd_version(int argc, char **argv) {
    if (argc > 1)
        return cli_usage_error("version", "unexpected argument '%s' (it takes none)", argv[1]);
    char kernels[256];
    finch_err err = {0};
    if (finch_kernels_describe(kernels, sizeof kernels, &err)) {
        fprintf(stderr, "finch: %s\n", err.msg);
        return 1;
    }
    printf("finch %s\nkernels: %s\n", FINCH_VERSION, kernels);
    return 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: finch <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'finch <command> --help' shows a command's options. Flags take their value as\n"
               "--name VALUE or --name=VALUE, each flag once unless it says it repeats.\n"
               "Results as JSON (eval, score, compare-methods): --json prints the JSON on stdout\n"
               "(the text for people then goes to stderr); --json-out FILE writes it to FILE.\n");
}

int main(int argc, char **argv) {
    finch_log_set(log_to_stderr, NULL);
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) return cmd_version(1, argv + 1);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "finch: error: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
