/*
 * cmd_generate.c: `finch generate`: text from a prompt, streamed token by token, with
 * greedy or sampled decoding, stop strings and the model's chat template.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: finch generate [-m MODEL] -p PROMPT [options]\n"
    "  -m, --model FILE    GGUF model (default: the cached SmolLM2-135M-Instruct)\n"
    "  -p, --prompt TEXT   the prompt (required, not empty)\n"
    "  -n, --n-predict N   tokens to generate, 0..1000000 (default 128)\n"
    "  --temp T            temperature, 0 = greedy (default 0)\n"
    "  --top-k K           keep the K most likely tokens, 0 = off (default 0)\n"
    "  --top-p P           nucleus sampling, in (0, 1], 1 = off (default 1)\n"
    "  --seed S            sampler seed (default 0)\n"
    "  --chat              format the prompt as a user turn with the model's chat template\n"
    "  --system TEXT       system message for --chat\n"
    "  --stop TEXT         stop when TEXT is generated (repeatable)\n"
    "  --adapter DIR[:W]   a PEFT LoRA adapter (repeatable; W weights it, default 1)\n"
    "  --numerics MODE     exact: dequantized weights, f32 throughout (default);\n"
    "                      llamacpp: llama.cpp's arithmetic (8-bit activations, f16 KV cache)\n"
    "  --load-in-4bit      quantize the base's projections to NF4 at load (QLoRA; an f32,\n"
    "                      f16 or bf16 base); --bnb-4bit-use-double-quant true|false (true),\n"
    "                      --bnb-4bit-quant-type nf4\n"
    "  -t, --threads N     threads (default: FINCH_THREADS or all cores)\n";

static int print_piece(const char *piece, size_t len, void *user) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL, *system = NULL;
    const char *stops[17] = {0};
    int n_stops = 0;
    bool chat = false;
    cli_adapters adapters = {.n = 0};
    long threads = 0;
    finch_gen_options opt = finch_gen_defaults();
    cli_quant quant = CLI_QUANT_DEFAULTS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        double f;
#define VALUE()                                                                                    \
    if (!(v = cli_flag_value("generate", argc, argv, &i))) return EXIT_USAGE
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            VALUE();
            path = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            VALUE();
            prompt = v;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            VALUE();
            if (!cli_parse_int(v, 0, 1000000, &n))
                return cli_usage_error("generate", "-n %s: must be an integer from 0 to 1000000",
                                       v);
            opt.max_tokens = (int)n;
        } else if (!strcmp(a, "--temp")) {
            VALUE();
            if (!cli_parse_float(v, 0, 100, &f))
                return cli_usage_error("generate", "--temp %s: must be a number from 0 to 100", v);
            opt.temperature = (float)f;
        } else if (!strcmp(a, "--top-k")) {
            VALUE();
            if (!cli_parse_int(v, 0, 1 << 24, &n))
                return cli_usage_error("generate", "--top-k %s: must be an integer >= 0", v);
            opt.top_k = (int)n;
        } else if (!strcmp(a, "--top-p")) {
            VALUE();
            if (!cli_parse_float(v, 1e-9, 1, &f))
                return cli_usage_error("generate", "--top-p %s: must be in (0, 1]", v);
            opt.top_p = (float)f;
        } else if (!strcmp(a, "--seed")) {
            VALUE();
            if (!cli_parse_int(v, 0, __LONG_MAX__, &n))
                return cli_usage_error("generate", "--seed %s: must be an integer >= 0", v);
            opt.seed = (uint64_t)n;
        } else if (!strcmp(a, "--chat")) {
            chat = true;
        } else if (!strcmp(a, "--system")) {
            VALUE();
            system = v;
        } else if (!strcmp(a, "--stop")) {
            VALUE();
            if (!*v) return cli_usage_error("generate", "--stop: the stop text is empty");
            if (n_stops == 16)
                return cli_usage_error("generate", "--stop: at most 16 stop strings");
            stops[n_stops++] = v;
        } else if (!strcmp(a, "--adapter")) {
            VALUE();
            if (!cli_adapter_add(&adapters, "generate", v)) return EXIT_USAGE;
        } else if (!strcmp(a, "--load-in-4bit")) {
            quant.load_in_4bit = true;
        } else if (!strncmp(a, "--bnb-4bit-", 11)) {
            VALUE();
            int q = cli_quant_set("generate", &quant, a + 2, v);
            if (q < 0) return EXIT_USAGE;
            if (!q)
                return cli_usage_error("generate",
                                       "unknown option '%s' (see finch generate --help)", a);
        } else if (!strcmp(a, "--numerics")) {
            VALUE();
            if (!cli_parse_numerics("generate", v, &opt.numerics)) return EXIT_USAGE;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            VALUE();
            if (!cli_parse_threads("generate", v, &threads)) return EXIT_USAGE;
        } else {
            return cli_usage_error("generate", "unknown option '%s' (see finch generate --help)",
                                   a);
        }
#undef VALUE
    }
    if (!prompt) return cli_usage_error("generate", "no prompt: give one with -p TEXT");
    if (!*prompt) return cli_usage_error("generate", "the prompt is empty: give some text with -p");
    if (system && !chat) return cli_usage_error("generate", "--system needs --chat");
    cli_set_threads(threads);
    opt.stop = n_stops ? stops : NULL;

    finch_model *m = cli_load_model_quant(path, &quant);
    if (!m) return EXIT_FAIL;
    finch_err err;
    char *text = NULL;
    int rc = 0;
    if (!cli_adapters_attach(&adapters, m)) {
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
    cli_adapters_release(&adapters, m);
    finch_model_free(m);
    return rc;
}
