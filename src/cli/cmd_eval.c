/*
 * cmd_eval.c: `finch eval`: measures a model on a dataset. --task loss reports the mean
 * cross-entropy and perplexity over the completion tokens.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: finch eval [-m MODEL] --data FILE [--task loss] [options]\n"
    "  -m, --model FILE     GGUF model (default: the cached SmolLM2-135M-Instruct)\n"
    "  --data FILE          JSONL dataset (prompt/completion, Alpaca, Dolly or chat lines)\n"
    "  --task loss          mean cross-entropy and perplexity over completion tokens\n"
    "  --format NAME        auto (default), completion, alpaca, dolly, chat\n"
    "  --template TEXT      prompt template with {field} placeholders (repeatable: sampled)\n"
    "  --chat               wrap prompts in the model's chat template\n"
    "  --max-seq-len N      tokens per example at most, 2..context (default 256 or the context)\n"
    "  --max-examples N     score only the first N examples\n"
    "  --train-on-prompt    count prompt tokens in the loss too\n"
    "  --skip-bad           skip malformed lines (counted) instead of stopping\n"
    "  --numerics MODE      exact (default) or llamacpp\n"
    "  --adapter DIR[:W]    a PEFT LoRA adapter (repeatable; W weights it, default 1)\n"
    "  --seed S             template sampling seed (default 0)\n"
    "  -t, --threads N      threads\n";

static void progress(int64_t done, int64_t total, void *user) {
    (void)user;
    if (done == total || done % 10 == 0) {
        fprintf(stderr, "\rfinch eval: %lld/%lld examples", (long long)done, (long long)total);
        if (done == total) fputc('\n', stderr);
    }
}

int cmd_eval(int argc, char **argv) {
    const char *path = NULL, *task = "loss", *templates[16];
    long threads = 0, n;
    finch_data_spec spec = {.max_seq_len = 0};
    finch_numerics numerics = FINCH_NUMERICS_EXACT;
    cli_adapters adapters = {.n = 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VALUE() if (!(v = cli_flag_value("eval", argc, argv, &i))) return EXIT_USAGE
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            VALUE();
            path = v;
        } else if (!strcmp(a, "--data")) {
            VALUE();
            spec.path = v;
        } else if (!strcmp(a, "--task")) {
            VALUE();
            task = v;
        } else if (!strcmp(a, "--format")) {
            VALUE();
            spec.format = v;
        } else if (!strcmp(a, "--template")) {
            VALUE();
            if (spec.n_templates == 16) return cli_usage_error("eval", "--template: at most 16");
            templates[spec.n_templates++] = v;
            spec.templates = templates;
        } else if (!strcmp(a, "--chat")) {
            spec.chat = 1;
        } else if (!strcmp(a, "--max-seq-len")) {
            VALUE();
            if (!cli_parse_int(v, 2, 1 << 20, &n))
                return cli_usage_error("eval", "--max-seq-len %s: must be an integer >= 2", v);
            spec.max_seq_len = (int)n;
        } else if (!strcmp(a, "--max-examples")) {
            VALUE();
            if (!cli_parse_int(v, 1, __LONG_MAX__, &n))
                return cli_usage_error("eval", "--max-examples %s: must be an integer >= 1", v);
            spec.max_examples = n;
        } else if (!strcmp(a, "--train-on-prompt")) {
            spec.train_on_prompt = 1;
        } else if (!strcmp(a, "--skip-bad")) {
            spec.skip_bad = 1;
        } else if (!strcmp(a, "--adapter")) {
            VALUE();
            if (!cli_adapter_add(&adapters, "eval", v)) return EXIT_USAGE;
        } else if (!strcmp(a, "--numerics")) {
            VALUE();
            if (!cli_parse_numerics("eval", v, &numerics)) return EXIT_USAGE;
        } else if (!strcmp(a, "--seed")) {
            VALUE();
            if (!cli_parse_int(v, 0, __LONG_MAX__, &n))
                return cli_usage_error("eval", "--seed %s: must be an integer >= 0", v);
            spec.seed = (uint64_t)n;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            VALUE();
            if (!cli_parse_threads("eval", v, &threads)) return EXIT_USAGE;
        } else {
            return cli_usage_error("eval", "unknown option '%s' (see finch eval --help)", a);
        }
#undef VALUE
    }
    if (!spec.path) return cli_usage_error("eval", "no dataset: give one with --data FILE");
    if (strcmp(task, "loss"))
        return cli_usage_error("eval", "--task %s: this build evaluates 'loss'", task);
    cli_set_threads(threads);
    finch_model *m = cli_load_model(path);
    if (!m) return EXIT_FAIL;
    finch_loss_report r;
    finch_err err;
    int rc = 0;
    if (!cli_adapters_attach(&adapters, m)) rc = EXIT_FAIL;
    else if (finch_eval_loss(m, &spec, numerics, isatty(2) ? progress : NULL, NULL, &r, &err)) {
        rc = cli_fail(&err);
    } else {
        printf("examples:     %lld (%lld target tokens)\n", (long long)r.n_examples,
               (long long)r.n_targets);
        printf("loss:         %.4f\n", r.loss);
        printf("perplexity:   %.3f\n", r.perplexity);
        if (r.n_truncated || r.n_dropped || r.n_skipped)
            printf("warnings:     %lld truncated to the maximum length, %lld dropped (nothing "
                   "left to score), %lld malformed lines skipped\n",
                   (long long)r.n_truncated, (long long)r.n_dropped, (long long)r.n_skipped);
    }
    cli_adapters_release(&adapters, m);
    finch_model_free(m);
    return rc;
}
