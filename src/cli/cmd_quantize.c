/*
 * cmd_quantize.c: `finch quantize IN OUT --type T`: a GGUF model (or a Hugging Face folder)
 * written as GGUF in another storage type, each tensor's type chosen as llama-quantize
 * chooses it (finch_quantize).
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *in, *out, *type;
    bool force, verbose;
    long threads;
} args_t;

#define CLI_DST args_t
static const cli_flag flag_table[] = {
    CLI_POSITIONAL(NULL, "IN", in,
                   "the model to read: a GGUF file (f32, f16, bf16, or quantized: then\n"
                   "dequantized first and quantized again, which is lossy; a warning says\n"
                   "so), or a Hugging Face folder (config.json, safetensors, tokenizer.json,\n"
                   "tokenizer.model for SentencePiece scores when there: written as\n"
                   "llama.cpp's convert_hf_to_gguf.py would, then quantized)"),
    CLI_POSITIONAL(NULL, "OUT", out,
                   "the GGUF to write (atomically); never the input itself, and an existing\n"
                   "file only with --force"),
    CLI_ENUM("--type",
             "q8_0|q4_0|q4_1|q5_0|q5_1|q4_k_s|q4_k_m|q4_k|q5_k_s|q5_k_m|q5_k|q6_k|f16|bf16|f32",
             type,
             "the file type, as llama-quantize names it: a plain type for every\n"
             "quantized tensor (the output layer goes to q6_k, or q8_0), or a K-quant\n"
             "mix (q4_k = q4_k_m, q5_k = q5_k_m): attn_v and ffn_down raised in some\n"
             "layers; norms and vectors keep their type; rows that are not whole\n"
             "256-blocks fall back (q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0)"),
    CLI_SWITCH("--force", force, "replace OUT when it exists (it is still never the input)"),
    CLI_SWITCH("-v, --verbose", verbose, "list every tensor with its old and new type"),
    CLI_THREADS(threads),
    CLI_END};
#undef CLI_DST

static const cli_command command = {
    .name = "quantize",
    .usage = "usage: finch quantize IN.gguf|FOLDER OUT.gguf --type T [--force] [-v] [-t N]\n",
    .flags = flag_table};

typedef struct {
    bool verbose;
    int n_requant;
    const char *requant_from;
    int n_fallback;
    int64_t elems_by_type[64];
    const char *type_names[64];
    int n_types;
    cli_progress bar;
    bool bar_started;
} state;

static void on_tensor(const finch_quantize_tensor *t, void *user) {
    state *s = user;
    if (s->verbose)
        fprintf(stderr, "[%4d/%4d] %-40s %6s -> %-6s%s%s\n", t->index + 1, t->count, t->name,
                t->from, t->to, t->requantized ? "  (requantized)" : "",
                t->fallback ? "  (rows not whole blocks: fallback)" : "");
    if (t->requantized) {
        s->n_requant++;
        s->requant_from = t->from;
    }
    s->n_fallback += t->fallback;
    int k = 0;
    while (k < s->n_types && strcmp(s->type_names[k], t->to)) k++;
    if (k == s->n_types && k < 64) s->type_names[s->n_types++] = t->to;
    if (k < 64) s->elems_by_type[k] += t->n_elems;
}

/* Before the first tensor is written: what the plan says that the user should know. */
static void warn_plan(const state *s) {
    if (s->n_requant)
        fprintf(stderr,
                "finch quantize: warning: %d tensors are stored quantized (%s) and are "
                "quantized again, which is lossy: quantize from an f32, f16 or bf16 file when "
                "you have one\n",
                s->n_requant, s->requant_from);
    if (s->n_fallback)
        fprintf(stderr,
                "finch quantize: %d tensors have rows that are not whole blocks of their "
                "type and take llama.cpp's fallback type\n",
                s->n_fallback);
}

static void on_progress(int64_t done, int64_t total, void *user) {
    state *s = user;
    if (!s->bar_started) {
        warn_plan(s);
        cli_progress_begin(&s->bar, "quantize", total);
        s->bar_started = true;
    }
    cli_progress_update(&s->bar, done);
}

int cmd_quantize(int argc, char **argv) {
    args_t a = {0};
    int rc = cli_parse(&command, argc, argv, &a);
    if (rc != CLI_RUN) return rc;
    if (!a.in) return cli_usage_error("quantize", "no input: finch quantize IN OUT --type T");
    if (!a.out) return cli_usage_error("quantize", "no output: finch quantize IN OUT --type T");
    if (!a.type) return cli_usage_error("quantize", "no type: give --type (q8_0, q4_k_m, ...)");
    cli_set_threads(a.threads);
    state s = {.verbose = a.verbose};
    finch_quantize_options o = {.type = a.type,
                                .force = a.force,
                                .on_tensor = on_tensor,
                                .progress = on_progress,
                                .user = &s};
    finch_err err;
    finch_status st = finch_quantize(a.in, a.out, &o, &err);
    if (s.bar_started) cli_progress_end(&s.bar);
    if (st) return cli_fail(&err);
    if (!s.bar_started) warn_plan(&s); /* no tensor data: no progress was reported */
    fprintf(stderr, "finch quantize: wrote %s (%s):", a.out, a.type);
    for (int k = 0; k < s.n_types; k++) {
        const double pct =
            100.0 * (double)s.elems_by_type[k] / (double)(s.bar.total ? s.bar.total : 1);
        if (pct < 0.05) /* the norms: a share that would print as 0.0 % */
            fprintf(stderr, "%s %s < 0.1%%", k ? "," : "", s.type_names[k]);
        else
            fprintf(stderr, "%s %s %.1f%%", k ? "," : "", s.type_names[k], pct);
    }
    fprintf(stderr, " of the weights\n");
    return 0;
}
