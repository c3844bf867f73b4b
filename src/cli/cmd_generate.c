/*
 * cmd_generate.c: `finch generate`: text from a prompt, streamed token by token, with
 * greedy or sampled decoding, stop strings and the model's chat template.
 */
#include "cli.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

static int print_piece(const char *piece, size_t len, void *user) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

typedef struct {
    const char *model, *prompt, *system, *numerics;
    bool chat;
    cli_list stops;
    cli_adapters adapters;
    long threads;
    finch_gen_options opt;
    cli_quant quant;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_STRING("-m, --model", "FILE", model,
               "GGUF model (default: the cached SmolLM2-135M-Instruct)"),
    CLI_STRING("-p, --prompt", "TEXT", prompt, "the prompt (required, not empty)"),
    CLI_INT("-n, --n-predict", "N", 0, 1000000, opt.max_tokens,
            "tokens to generate, 0..1000000 (default 128)"),
    CLI_FLOAT("--temp", "T", 0, 100, opt.temperature, "temperature, 0 = greedy (default 0)"),
    CLI_INT("--top-k", "K", 0, 1 << 24, opt.top_k,
            "keep the K most likely tokens, 0 = off (default 0)"),
    CLI_FLOAT_OPEN("--top-p", "P", 0, 1, opt.top_p, "nucleus sampling, 1 = off (default 1)"),
    CLI_INT("--seed", "S", 0, LONG_MAX, opt.seed, "sampler seed (default 0)"),
    CLI_SWITCH("--chat", chat, "format the prompt as a user turn with the model's chat template"),
    CLI_STRING("--system", "TEXT", system, "system message for --chat"),
    CLI_LIST("--stop", "TEXT", 16, stops, "stop when TEXT is generated (repeatable)"),
    CLI_CUSTOM("--adapter", "DIR[:W]", 8, cli_adapter_parse, adapters,
               "a PEFT LoRA adapter (repeatable; W weights it, default 1)"),
    CLI_ENUM("--numerics", CLI_NUMERICS, numerics,
             "exact: dequantized weights, f32 throughout (default);\n"
             "llamacpp: llama.cpp's arithmetic (8-bit activations, f16 KV cache);\n"
             "bf16: exact, but the prompt's products in bf16 (as train --bf16)"),
    CLI_GROUP(cli_quant_flags, quant),
    CLI_THREADS(threads),
    CLI_END};
#undef CLI_DST

static const cli_command command = {.name = "generate",
                                    .usage =
                                        "usage: finch generate [-m MODEL] -p PROMPT [options]\n",
                                    .flags = flag_table};

int cmd_generate(int argc, char **argv) {
    args_t a = {.numerics = "exact", .opt = finch_gen_defaults(), .quant = CLI_QUANT_DEFAULTS};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc != CLI_RUN) return rc;
    const char *prompt = a.prompt, *system = a.system;
    const bool chat = a.chat;
    finch_gen_options opt = a.opt;
    opt.numerics = cli_numerics(a.numerics);
    const char *stops[17] = {0};
    for (int i = 0; i < a.stops.n; i++) {
        if (!*a.stops.v[i]) return cli_usage_error("generate", "--stop: the stop text is empty");
        stops[i] = a.stops.v[i];
    }
    if (!prompt) return cli_usage_error("generate", "no prompt: give one with -p TEXT");
    if (!*prompt) return cli_usage_error("generate", "the prompt is empty: give some text with -p");
    if (system && !chat) return cli_usage_error("generate", "--system needs --chat");
    cli_set_threads(a.threads);
    opt.stop = a.stops.n ? stops : NULL;

    finch_model *m = cli_load_model_quant(a.model, &a.quant);
    if (!m) return EXIT_FAIL;
    finch_err err;
    char *text = NULL;
    rc = 0;
    if (!cli_adapters_attach(&a.adapters, m)) {
        rc = EXIT_FAIL;
        goto done;
    }
    if (chat) {
        finch_chat_msg msgs[2];
        int n = 0;
        if (system) msgs[n++] = (finch_chat_msg){"system", system};
        msgs[n++] = (finch_chat_msg){"user", prompt};
        if (finch_chat_format(m, msgs, n, 1, &text, &err)) {
            rc = cli_fail(&err);
            goto done;
        }
    }
    if (finch_generate(m, text ? text : prompt, &opt, print_piece, NULL, &err)) {
        fputc('\n', stdout);
        rc = cli_fail(&err);
        goto done;
    }
    fputc('\n', stdout);
done:
    free(text);
    cli_adapters_release(&a.adapters, m);
    finch_model_free(m);
    return rc;
}
