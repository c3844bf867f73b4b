/*
 * test_cli.c: the finch command as a user meets it: every flag's bad values, bad model
 * files, and the happy paths, checking exit codes (2 usage, 1 failure, 0 success) and a
 * fragment of what is printed. Runs the built binary through /bin/sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/core.h"
#include "io/io.h" /* to write a copy of the tiny model without its tokenizer */
#include "test_util.h" /* read_file, read_text, run_capture */

static char tmpdir[] = "/tmp/finch_cli_XXXXXX";
static char out[1 << 16];

/* Runs `finch ARGS` (a shell fragment) with stdin from in_text; returns the exit code and
 * leaves stdout+stderr in out. */
static int run(const char *args, const char *in_text) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "FINCH_CACHE=%s/cache %s %s", tmpdir, FINCH_CLI, args);
    return run_capture(tmpdir, cmd, in_text, out, sizeof out);
}

#define EXPECT(args, in, code, fragment)                                                   \
    do {                                                                                   \
        int rc_ = run(args, in);                                                           \
        if (rc_ != (code) || !strstr(out, fragment))                                       \
            fail_msg("finch %s: exit %d (want %d), output:\n%s\n(want '%s')", args, rc_,    \
                     code, out, fragment);                                                 \
    } while (0)

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"
#define TINY_TIED FINCH_FIXTURES "/model/tiny_llama_tied.gguf"

static void test_usage_errors(void **state) {
    (void)state;
    EXPECT("", NULL, 2, "usage: finch <command>");
    EXPECT("frobnicate", NULL, 2, "unknown command 'frobnicate'");
    EXPECT("--help", NULL, 0, "generate");
    EXPECT("generate -m " TINY, NULL, 2, "no prompt");
    EXPECT("generate -m " TINY " -p ''", NULL, 2, "the prompt is empty");
    EXPECT("generate -m " TINY " -p hi -n -1", NULL, 2, "-n -1: must be an integer");
    EXPECT("generate -m " TINY " -p hi -n 12x", NULL, 2, "-n 12x");
    EXPECT("generate -m " TINY " -p hi --temp abc", NULL, 2, "--temp abc");
    EXPECT("generate -m " TINY " -p hi --temp -1", NULL, 2, "--temp -1");
    EXPECT("generate -m " TINY " -p hi --top-p 0", NULL, 2, "--top-p 0: must be in (0, 1]");
    EXPECT("generate -m " TINY " -p hi --top-p 1.5", NULL, 2, "--top-p 1.5");
    EXPECT("generate -m " TINY " -p hi --top-k -3", NULL, 2, "--top-k -3");
    EXPECT("generate -m " TINY " -p hi --seed x", NULL, 2, "--seed x");
    EXPECT("generate -m " TINY " -p hi --threads 0", NULL, 2, "--threads 0");
    EXPECT("generate -m " TINY " -p hi --system x", NULL, 2, "--system needs --chat");
    EXPECT("generate -m " TINY " -p hi --stop ''", NULL, 2, "stop text is empty");
    EXPECT("generate -m " TINY " -p hi --bogus", NULL, 2, "unknown option '--bogus'");
    EXPECT("generate -m " TINY " -p", NULL, 2, "-p needs a value");
    EXPECT("generate -m " TINY " -p hi --numerics approx", NULL, 2,
           "--numerics approx: must be exact, llamacpp or bf16");
    EXPECT("generate -m " TINY " -p 'a b c d e f' -n 2 --numerics bf16", NULL, 0, "");
    EXPECT("generate -m " TINY " -p hi --load-in-4bit --bnb-4bit-quant-type fp4", NULL, 2,
           "--bnb-4bit-quant-type fp4: not implemented");
    EXPECT("generate -m " TINY " -p hi --bnb-4bit-quant-type int4", NULL, 2,
           "--bnb-4bit-quant-type int4: must be nf4");
    EXPECT("generate -m " TINY " -p hi --bnb-4bit-use-double-quant maybe", NULL, 2,
           "--bnb-4bit-use-double-quant maybe: must be true or false");
    EXPECT("generate -m " TINY " -p hi --bnb-4bit-frobnicate 1", NULL, 2,
           "unknown option '--bnb-4bit-frobnicate'");
    EXPECT("eval -m " TINY " --data x.jsonl --bnb-4bit-quant-type fp4", NULL, 2,
           "--bnb-4bit-quant-type fp4: not implemented");
    EXPECT("train -m " TINY " --data x.jsonl --out o --bnb-4bit-quant-type fp4", NULL, 2,
           "--bnb-4bit-quant-type fp4: not implemented");
    /* --device: cuda is refused with its reason where there is no CUDA build or device;
     * where there is one, these requests fail after it (llama.cpp numerics are the CPU's;
     * the tiny model's rows are not whole NF4 blocks) */
    EXPECT("generate -m " TINY " -p hi --device tpu", NULL, 2, "--device tpu");
    EXPECT("generate -m " TINY " -p hi --device cuda --numerics llamacpp", NULL, 1,
           "finch: error: ");
    EXPECT("eval -m " TINY " --data x.jsonl --device cuda --load-in-4bit", NULL, 1,
           "finch: error: ");
    EXPECT("generate -m " TINY " -p hi -n 1 --device cpu", NULL, 0, "");
    /* the tiny model's FFN is 96 wide: its down projection's rows are not whole NF4 blocks */
    EXPECT("generate -m " TINY " -p hi --load-in-4bit", NULL, 1,
           "blk.0.ffn_down.weight: rows of 96 are not whole NF4 blocks of 64");
    EXPECT("info a.gguf b.gguf", NULL, 2, "more than one MODEL given ('a.gguf' and 'b.gguf')");
    EXPECT("tokenize --bogus", NULL, 2, "unknown option");
    /* one parser for every command: flags given twice, near misses, --name=value */
    EXPECT("generate -m " TINY " -p hi --prompt ho", NULL, 2,
           "finch generate: error: --prompt given twice ('hi' and 'ho'); give it once");
    EXPECT("generate -m " TINY " -p hi --tmep 1", NULL, 2,
           "unknown option '--tmep'; did you mean --temp?");
    EXPECT("generate -m " TINY " -p hi --top-k=x", NULL, 2, "--top-k x: must be an integer");
    EXPECT("generate -m " TINY " --prompt=hi --n-predict=2 --seed=3", NULL, 0, "");
    EXPECT("merge -m " TINY " --adapter a --type q3_k -o x.gguf", NULL, 2,
           "--type q3_k: must be f16, f32, bf16, q8_0, q4_0, q4_1, q5_0 or q5_1");
    EXPECT("export -m " TINY " --adapter a -o x.gguf", NULL, 2, "no format: give --format gguf");
    EXPECT("report a -o x.html -o y.html", NULL, 2, "-o given twice");
    EXPECT("eval -m " TINY " --data x.jsonl --json a.json --json-out b.json", NULL, 2,
           "give the file once, with --json-out");
    EXPECT("score --pred p --ref r --json-out", NULL, 2, "--json-out needs a value");
    EXPECT("--help", NULL, 0, "--json-out FILE writes it to FILE");
    /* every command's --help comes from its table, ends with a newline, lists -h */
    const char *cmds[] = {"info",  "generate", "tokenize", "score",  "eval",
                          "train", "merge",    "export",   "report", "compare-methods",
                          "quantize"};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        char args[128];
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        EXPECT(args, NULL, 0, "usage: finch ");
        size_t len = strlen(out);
        if (!strstr(out, "\n  -h, --help") || len < 2 || out[len - 1] != '\n')
            fail_msg("finch %s --help:\n%s", cmds[i], out);
    }
    EXPECT("train --help", NULL, 0, "--lora-r N");
    assert_non_null(strstr(out, "--learning-rate, --lr LR"));
    assert_non_null(strstr(out, "--lr-scheduler linear|cosine|constant"));
}

static void test_bad_models(void **state) {
    (void)state;
    char args[1024], path[512];
    EXPECT("info /nonexistent/model.gguf", NULL, 1, "/nonexistent/model.gguf: cannot open");
    snprintf(args, sizeof args, "info %s", tmpdir);
    EXPECT(args, NULL, 1, "is a directory");
    /* not a GGUF */
    snprintf(path, sizeof path, "%s/text.gguf", tmpdir);
    FILE *f = fopen(path, "w");
    fputs("hello, this is not a model file at all", f);
    fclose(f);
    snprintf(args, sizeof args, "info %s", path);
    EXPECT(args, NULL, 1, "text.gguf");
    /* a real model cut in half: the tensor data runs past the end */
    snprintf(path, sizeof path, "%s/cut.gguf", tmpdir);
    snprintf(args, sizeof args, "head -c 150000 %s > %s", TINY, path);
    assert_int_equal(system(args), 0);
    snprintf(args, sizeof args, "generate -m %s -p hi", path);
    EXPECT(args, NULL, 1, "cut.gguf");
    /* no model given and none in the cache */
    EXPECT("info", NULL, 1, "run scripts/setup.sh");
    /* a model without a tokenizer: the tiny model copied without its tokenizer.* keys */
    finch_gguf *g;
    finch_gguf_writer *w;
    finch_err err;
    assert_int_equal(finch_gguf_open(TINY, &g, &err), FINCH_OK);
    assert_non_null(w = finch_gguf_writer_new(&err));
    for (int64_t i = 0; i < finch_gguf_n_kv(g); i++) {
        const finch_gguf_kv *kv = finch_gguf_kv_at(g, i);
        if (strncmp(kv->key, "tokenizer.", 10)) assert_int_equal(finch_gguf_set_kv(w, kv, &err), FINCH_OK);
    }
    for (int64_t i = 0; i < finch_gguf_n_tensors(g); i++) {
        const finch_gguf_tensor *t = finch_gguf_tensor_at(g, i);
        assert_int_equal(finch_gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err), FINCH_OK);
    }
    snprintf(path, sizeof path, "%s/notok.gguf", tmpdir);
    assert_int_equal(finch_gguf_writer_save(w, path, &err), FINCH_OK);
    finch_gguf_writer_free(w);
    finch_gguf_close(g);
    snprintf(args, sizeof args, "generate -m %s -p hi -n 3", path);
    EXPECT(args, NULL, 1, "no tokenizer");
    snprintf(args, sizeof args, "tokenize -m %s", path);
    EXPECT(args, "hello\n", 1, "no tokenizer");
    snprintf(args, sizeof args, "info %s", path);
    EXPECT(args, NULL, 0, "tokenizer:       (none)");
    /* prompt longer than the context the model was trained for */
    EXPECT("generate -m " TINY " -p hi -n 200", NULL, 1, "exceeds the context");
}

static void test_info_tiny(void **state) {
    (void)state;
    EXPECT("info " TINY, NULL, 0, "layers:          2");
    assert_non_null(strstr(out, "4 query, 2 key/value, head dim 16"));
    assert_non_null(strstr(out, "f32"));
}

/* The tiny Qwen2 and Mistral GGUFs (tests/reference/make_qwen2_mistral_gguf.py). */
static void test_info_qwen2_mistral(void **state) {
    (void)state;
    EXPECT("info " FINCH_FIXTURES "/model/tiny_qwen2.gguf", NULL, 0,
           "architecture:    qwen2 (q/k/v biases)");
    assert_non_null(strstr(out, "output head:     tied to token embeddings"));
    assert_non_null(strstr(out, "pre-tokenizer 'qwen2'"));
    EXPECT("info " FINCH_FIXTURES "/model/tiny_mistral.gguf", NULL, 0, "architecture:    llama\n");
    assert_non_null(strstr(out, "output head:     separate"));
    assert_non_null(strstr(out, "context:         128 (trained)"));
}

static void test_real_model(void **state) {
    (void)state;
    const char *m = real_model();
    if (!m) {
        if (getenv("FINCH_ALLOW_NO_MODEL")) skip();
        fail_msg("the default model is missing: run scripts/setup.sh");
    }
    char args[4600];
    snprintf(args, sizeof args, "info %s", m);
    EXPECT(args, NULL, 0, "parameters:      134515008");
    assert_non_null(strstr(out, "q4_1"));
    assert_non_null(strstr(out, "chat template:   chatml"));
    assert_non_null(strstr(out, "pre-tokenizer 'smollm'"));
    snprintf(args, sizeof args, "generate -m %s -p 'The capital of France is' -n 2", m);
    EXPECT(args, NULL, 0, " Paris.");
    snprintf(args, sizeof args, "generate -m %s -p 'The capital' -n 2 --load-in-4bit", m);
    EXPECT(args, NULL, 1, "blk.0.attn_q.weight is q4_1 already: load it without --load-in-4bit");
    snprintf(args, sizeof args, "tokenize -m %s", m);
    EXPECT(args, "The capital of France is\nhello world\n", 0, "504 3575 282 4649 314\n");
    snprintf(args, sizeof args, "tokenize -m %s --decode", m);
    EXPECT(args, "504 3575 282 4649 314\n", 0, "The capital of France is\n");
    EXPECT(args, "504 x 314\n", 1, "line 1: 'x' is not a token id");
    EXPECT(args, "1\n99999999\n", 1, "line 2");
    snprintf(args, sizeof args, "generate -m %s --chat -p 'What is the capital of France?' -n 24 --numerics exact", m);
    EXPECT(args, NULL, 0, "Paris");
}

/* --data FILE:WEIGHT, repeated: a mixture, its counts in the progress lines, metrics.jsonl and
 * run.json; the same as a --config list, which --data flags replace; bad weights, a missing
 * file and bad config entries. */
static void test_train_mixture(void **state) {
    (void)state;
    char args[8192], a[512], b[512], cfg[512], outdir[512];
    snprintf(a, sizeof a, "%s/mix_a.jsonl", tmpdir);
    snprintf(b, sizeof b, "%s/mix_b.jsonl", tmpdir);
    FILE *f = fopen(a, "w");
    for (int i = 0; i < 8; i++) fprintf(f, "{\"prompt\": \"n %d:\", \"completion\": \" %d\"}\n", i, i * 2);
    fclose(f);
    f = fopen(b, "w");
    for (int i = 0; i < 4; i++) fprintf(f, "{\"prompt\": \"m %d:\", \"completion\": \" %d\"}\n", i, i + 1);
    fclose(f);
    snprintf(outdir, sizeof outdir, "%s/mix", tmpdir);
    const char *common = "--max-steps 3 --batch-size 2 --log-steps 1 -t 1";
    snprintf(args, sizeof args, "train -m " TINY " --data %s:0.7 --data %s:0.3 --out %s %s", a, b, outdir, common);
    EXPECT(args, NULL, 0, "| tasks mix_a ");
    assert_non_null(strstr(out, "step 3/3"));
    char *m = read_text_in(outdir, "metrics.jsonl");
    assert_non_null(strstr(m, "\"step\": 3, "));
    assert_non_null(strstr(m, "\"tasks\": {\"mix_a\": "));
    free(m);
    m = read_text_in(outdir, "run.json");
    assert_non_null(strstr(m, "\"weight\": 0.7"));
    assert_non_null(strstr(m, "\"weight\": 0.3"));
    free(m);
    const struct {
        const char *suffix, *fragment;
        int code;
    } bad[] = {{":abc", "is not a weight", 2}, {":0", "weight 0: must be > 0", 2},
               {":-2", "weight -2: must be > 0", 2}, {".missing:0.5", ".missing: cannot open", 1}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(args, sizeof args, "train -m " TINY " --data %s --data %s%s --out %s %s", a, b,
                 bad[i].suffix, outdir, common);
        EXPECT(args, NULL, bad[i].code, bad[i].fragment);
    }
    /* the config's list, strings and objects; flags replace it */
    snprintf(cfg, sizeof cfg, "%s/mix.json", tmpdir);
    f = fopen(cfg, "w");
    fprintf(f, "{\"data\": [\"%s:2\", \"%s\"]}", a, b);
    fclose(f);
    snprintf(args, sizeof args, "train -m " TINY " --config %s --out %s %s", cfg, outdir, common);
    EXPECT(args, NULL, 0, "| tasks mix_a ");
    m = read_text_in(outdir, "run.json");
    assert_non_null(strstr(m, "\"weight\": 2"));
    free(m);
    snprintf(args, sizeof args, "train -m " TINY " --config %s --data %s --out %s %s", cfg, a, outdir, common);
    EXPECT(args, NULL, 0, "adapter written to");
    assert_null(strstr(out, "| tasks"));
    m = read_text_in(outdir, "metrics.jsonl");
    assert_null(strstr(m, "\"tasks\""));
    free(m);
    const struct {
        const char *json, *fragment;
        int code;
    } cfgs[] = {{"{\"data\": [{\"path\": \"x.jsonl\"}]}", "\"data\": entry 1 must be a string", 1},
                {"{\"data\": [\"x.jsonl:0\"]}", "--data x.jsonl:0: weight 0: must be > 0", 2},
                {"{\"data\": []}", "no training data", 2},
                {"{\"data\": [\"x.jsonl:y\"]}", "'y' is not a weight", 2}};
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        f = fopen(cfg, "w");
        fputs(cfgs[i].json, f);
        fclose(f);
        snprintf(args, sizeof args, "train -m " TINY " --config %s --out %s %s", cfg, outdir, common);
        EXPECT(args, NULL, cfgs[i].code, cfgs[i].fragment);
    }
}

static void test_train_flags(void **state) {
    (void)state;
    char args[8192], data[512], cfg[512], outdir[512];
    snprintf(data, sizeof data, "%s/train.jsonl", tmpdir);
    FILE *f = fopen(data, "w");
    for (int i = 0; i < 8; i++) fprintf(f, "{\"prompt\": \"n %d:\", \"completion\": \" %d\"}\n", i, i * 2);
    fclose(f);
    snprintf(outdir, sizeof outdir, "%s/run", tmpdir);
    EXPECT("train -m " TINY " --out x", NULL, 2, "no training data");
    snprintf(args, sizeof args, "train -m " TINY " --data %s", data);
    EXPECT(args, NULL, 2, "no output directory");
    const struct {
        const char *flag, *fragment;
    } bad[] = {
        {"--lora-r 0", "--lora-r 0"},           {"--lora-r x", "--lora-r x"},
        {"--learning-rate 0", "--learning-rate 0"}, {"--learning-rate -1", "--learning-rate -1"},
        {"--batch-size 0", "--batch-size 0"},   {"--grad-accum 0", "--grad-accum 0"},
        {"--lora-dropout 1.5", "--lora-dropout 1.5"}, {"--epochs 0", "--epochs 0"},
        {"--max-steps -2", "--max-steps -2"},   {"--bogus 1", "unknown option '--bogus'"},
        {"--max-seq-len 1", "--max-seq-len 1"}, {"--target-modules q,attention", "'attention'"},
        {"--lr-scheduler exp", "--lr-scheduler exp"}, {"--method lokr", "--method lokr: unknown"},
        {"--seed", "--seed needs a value"},
        /* methods: another method's option, layers out of range, unknown choices */
        {"--method ia3 --lora-r 4", "--lora-r is an option of lora, dora, not of ia3"},
        {"--lora-r 4 --method bitfit", "--lora-r is an option of lora, dora, not of bitfit"},
        {"--method dora --layers 1-5", "layer 5 is out of range (the model has 2 blocks"},
        {"--layers 2-1", "--layers 2-1"},
        {"--method ia3 --feedforward-modules up", "subset of --target-modules"},
        {"--method freeze --save-type q3_k", "--save-type q3_k: must be one of"},
        {"--method full --layers 1", "use --method freeze"},
        {"--method freeze --train-head 1", "unexpected argument '1'"},
        /* the objective */
        {"--objective ppo", "--objective ppo: must be sft or dpo"}, {"--objective dpo --beta 0", "--beta 0"},
        {"--objective dpo", "--objective dpo needs preference lines"},
        /* prompt, prefix and bottleneck adapters */
        {"--method prompt --num-virtual-tokens 0", "--num-virtual-tokens 0"},
        {"--method prefix --num-virtual-tokens 5000", "--num-virtual-tokens 5000"},
        {"--method prompt --prompt-init text", "--prompt-init text needs --prompt-init-text"},
        {"--method prompt --prompt-init-text hello", "used by --prompt-init text only"},
        {"--method prompt --prompt-init words", "--prompt-init words: must be one of"},
        {"--method prefix --layers 1", "has no layer selection"},
        {"--method prefix --encoder-hidden 8", "give both"},
        {"--method prefix --prefix-projection --encoder-hidden -1", "--encoder-hidden -1"},
        {"--method prompt --packing", "train without --packing"},
        {"--method adapter --adapter-type serial", "--adapter-type serial: must be one of"},
        {"--method adapter --reduction-factor 0.5", "--reduction-factor 0.5"},
        {"--method adapter --reduction-factor 65", "more than the hidden size 64"},
        {"--method adapter --adapter-nonlinearity tanh", "--adapter-nonlinearity tanh"},
        {"--method adapter --adapter-name a/b", "--adapter-name 'a/b'"},
        {"--method adapter --layers 3", "layer 3 is out of range"},
        /* the optimizer step fused into backward */
        {"--fused-optimizer", "give --max-grad-norm 0 (clipping off; now 1)"},
        {"--fused-optimizer --max-grad-norm 0 --grad-accum 4", "give --grad-accum 1 (now 4)"},
        {"--fused-optimizer --max-grad-norm 0 --simulate-ranks 2",
         "--fused-optimizer: with 2 data-parallel ranks"},
        {"--fused-optimizer 1", "unexpected argument '1'"},
        /* early stopping and the best checkpoint */
        {"--early-stopping-patience 2", "give --eval-steps N and validation data"},
        {"--early-stopping-patience 0", "--early-stopping-patience 0: must be an integer >= 1"},
        {"--early-stopping-threshold -1", "--early-stopping-threshold -1"},
        {"--eval-steps 2 --val-fraction 0.25 --save-steps 3 --load-best-model-at-end",
         "round multiple of --eval-steps (here 3 and 2)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s %s", data, outdir, bad[i].flag);
        EXPECT(args, NULL, 2, bad[i].fragment);
    }
    /* preference data: a bad line names the file and line (exit 1); a DPO run's progress
     * line carries TRL's reward names */
    char pref[512];
    snprintf(pref, sizeof pref, "%s/pref.jsonl", tmpdir);
    f = fopen(pref, "w");
    fprintf(f, "{\"prompt\": \"n 1:\", \"chosen\": \" 2\", \"rejected\": \" 3\"}\n"
               "{\"prompt\": \"n 2:\", \"chosen\": \" 4\", \"rejected\": \" 5\"}\n");
    fclose(f);
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s --objective dpo --max-steps 2 -t 1", pref,
             outdir);
    EXPECT(args, NULL, 0, "rewards/accuracies");
    f = fopen(pref, "a");
    fprintf(f, "{\"prompt\": \"n 3:\", \"chosen\": \" 6\"}\n");
    fclose(f);
    EXPECT(args, NULL, 1, "pref.jsonl: line 3: field \"rejected\" is missing");
    /* a config file: bad JSON, bad types, unknown keys; then a run it configures, with a
     * flag overriding one of its settings */
    snprintf(cfg, sizeof cfg, "%s/run.json", tmpdir);
    const struct {
        const char *json, *fragment;
        int code;
    } cfgs[] = {
        {"{\"lora_r\": 4,", "run.json: line", 1},
        {"[1, 2]", "must be a JSON object", 1},
        {"{\"lora_r\": [4]}", "\"lora_r\" must be a string, a number or a boolean", 1},
        {"{\"chat\": 1}", "\"chat\" must be true or false", 1},
        {"{\"lora_rank\": 4}", "unknown setting 'lora_rank'", 2},
        {"{\"lora_r\": 0}", "run.json: --lora-r 0", 2},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        f = fopen(cfg, "w");
        fputs(cfgs[i].json, f);
        fclose(f);
        snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s --config %s", data, outdir, cfg);
        EXPECT(args, NULL, cfgs[i].code, cfgs[i].fragment);
    }
    f = fopen(cfg, "w");
    fprintf(f, "{\"lora_r\": 2, \"max_steps\": 50, \"batch-size\": 2, \"target_modules\": \"all-linear\", "
               "\"learning_rate\": 0.01, \"log_steps\": 1, \"train_on_prompt\": false}");
    fclose(f);
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s --config %s --max-steps 3", data, outdir, cfg);
    EXPECT(args, NULL, 0, "adapter written to");
    snprintf(args, sizeof args, "%s/metrics.jsonl", outdir);
    size_t n;
    char *m = (char *)read_file(args, &n);
    m = realloc(m, n + 1);
    m[n] = 0;
    assert_non_null(strstr(m, "\"step\": 3,"));
    assert_null(strstr(m, "\"step\": 4,")); /* --max-steps 3 overrode the file's 50 */
    free(m);
    snprintf(args, sizeof args, "%s/adapter_config.json", outdir);
    m = (char *)read_file(args, &n);
    m = realloc(m, n + 1);
    m[n] = 0;
    assert_non_null(strstr(m, "\"r\": 2")); /* the file's lora_r */
    free(m);
    /* a repeatable setting: a list in the file, replaced by the flags on the command line;
     * run.json records what the run used */
    f = fopen(cfg, "w");
    fprintf(f, "{\"template\": [\"A {prompt}\", \"B {prompt}\"], \"max_steps\": 1, "
               "\"gradient_checkpointing\": true}");
    fclose(f);
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s/tpl --config %s", data, tmpdir, cfg);
    EXPECT(args, NULL, 0, "adapter written to");
    snprintf(args, sizeof args, "%s/tpl/run.json", tmpdir);
    m = read_text(args);
    if (!strstr(m, "\"A {prompt}\",") || !strstr(m, "\"B {prompt}\"") ||
        !strstr(m, "\"gradient_checkpointing\": true"))
        fail_msg("run.json:\n%s", m);
    free(m);
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s/tpl --config %s --template 'C {prompt}'",
             data, tmpdir, cfg);
    EXPECT(args, NULL, 0, "adapter written to");
    snprintf(args, sizeof args, "%s/tpl/run.json", tmpdir);
    m = read_text(args);
    if (!strstr(m, "\"C {prompt}\"") || strstr(m, "A {prompt}")) fail_msg("run.json:\n%s", m);
    free(m);
    /* early stopping: its settings and the best validation loss in run.json */
    snprintf(args, sizeof args,
             "train -m " TINY " --data %s --out %s/es --val-fraction 0.25 --eval-steps 1 "
             "--early-stopping-patience 1 --save-steps 2 --load-best-model-at-end --max-steps 4",
             data, tmpdir);
    EXPECT(args, NULL, 0, "validation loss");
    char es[600];
    snprintf(es, sizeof es, "%s/es", tmpdir);
    m = read_text_in(es, "run.json");
    assert_non_null(strstr(m, "\"early_stopping_patience\": 1"));
    assert_non_null(strstr(m, "\"load_best_model_at_end\": true"));
    assert_non_null(strstr(m, "\"best_step\": "));
    free(m);
    /* a method that writes a model refuses a folder holding an adapter */
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s --method full --max-steps 1", data, outdir);
    EXPECT(args, NULL, 2, "holds an adapter; --method full writes a whole model");
    /* an adapter for the two-layer model on the one-layer one */
    snprintf(args, sizeof args, "eval -m " TINY_TIED " --data %s --adapter %s", data, outdir);
    EXPECT(args, NULL, 1, "adapter made for another model?");
    /* the adapter in generate and eval; bad adapters */
    snprintf(args, sizeof args, "generate -m " TINY " -p 'n 3:' -n 4 --adapter %s", outdir);
    EXPECT(args, NULL, 0, "");
    snprintf(args, sizeof args, "generate -m " TINY " -p 'n 3:' -n 4 --adapter %s:0.5 --adapter %s", outdir, outdir);
    EXPECT(args, NULL, 0, "");
    snprintf(args, sizeof args, "eval -m " TINY " --data %s --adapter %s", data, outdir);
    EXPECT(args, NULL, 0, "loss:");
    snprintf(args, sizeof args, "generate -m " TINY " -p hi --adapter %s/nowhere", tmpdir);
    EXPECT(args, NULL, 1, "nowhere/adapter_config.json: cannot open");
    snprintf(args, sizeof args, "export -m " TINY " --adapter %s --format gguf -o %s/lora.gguf", outdir, tmpdir);
    EXPECT(args, NULL, 0, "lora.gguf");
    snprintf(args, sizeof args, "export -m " TINY " --adapter %s --format onnx -o %s/x", outdir, tmpdir);
    EXPECT(args, NULL, 2, "--format onnx");
    snprintf(args, sizeof args, "merge -m " TINY " --adapter %s -o %s/merged.gguf --type q4_1", outdir, tmpdir);
    EXPECT(args, NULL, 0, "merged.gguf");
    snprintf(args, sizeof args, "info %s/merged.gguf", tmpdir);
    EXPECT(args, NULL, 0, "q4_1");
    snprintf(args, sizeof args, "merge -m " TINY " --adapter %s", outdir);
    EXPECT(args, NULL, 2, "no output");
    /* Ctrl-C: the run stops after its current step with a checkpoint, and resumes */
    char cmd[9000], outfile[600];
    snprintf(outfile, sizeof outfile, "%s/sigint.txt", tmpdir);
    snprintf(cmd, sizeof cmd,
             "%s train -m " TINY " --data %s --out %s/int --max-steps 1000000 --batch-size 1 "
             ">%s 2>&1 & pid=$!; "
             "for i in $(seq 300); do [ -e %s/int/metrics.jsonl ] && break; sleep 0.1; done; "
             "sleep 0.5; kill -INT $pid; wait $pid; echo \"exit $?\" >>%s",
             FINCH_CLI, data, tmpdir, outfile, tmpdir, outfile);
    assert_int_equal(system(cmd), 0);
    size_t len;
    char *txt = (char *)read_file(outfile, &len);
    txt = realloc(txt, len + 1);
    txt[len] = 0;
    if (!strstr(txt, "interrupted at step") || !strstr(txt, "exit 1")) fail_msg("Ctrl-C run printed:\n%s", txt);
    const char *at = strstr(txt, "checkpoint saved in ");
    assert_non_null(at);
    char ckpt[600];
    snprintf(ckpt, sizeof ckpt, "%.*s/trainer_state.bin", (int)strcspn(at + 20, " "), at + 20);
    assert_int_equal(access(ckpt, R_OK), 0);
    long step = atol(strstr(ckpt, "checkpoint-") + 11);
    free(txt);
    assert_true(step >= 1);
    snprintf(args, sizeof args, "train -m " TINY " --data %s --out %s/int --batch-size 1 --max-steps %ld --resume %s/int",
             data, tmpdir, step + 2, tmpdir);
    EXPECT(args, NULL, 0, "adapter written to");
    const char *real = real_model();
    if (real) {
        snprintf(args, sizeof args, "generate -m %s -p hi --adapter %s", real, outdir);
        EXPECT(args, NULL, 1, "adapter made for another model?");
    }
}

/* finch compare-methods: bad input, then two methods and every method that needs the
 * model's shape on the tiny model: the table, compare.json with numbers, the page. */
static void test_compare_methods(void **state) {
    (void)state;
    char args[8192], data[512], cdir[512], path[600];
    snprintf(data, sizeof data, "%s/cmp.jsonl", tmpdir);
    FILE *f = fopen(data, "w");
    for (int i = 0; i < 30; i++) fprintf(f, "{\"prompt\": \"n %d:\", \"completion\": \" %d\"}\n", i, i * 2);
    fclose(f);
    snprintf(cdir, sizeof cdir, "%s/cmp", tmpdir);
    const struct {
        const char *flag, *fragment;
    } bad[] = {
        {"--methods lora,lokr", "unknown method 'lokr'"},
        {"--methods lora,lora", "'lora' is listed twice"},
        {"--methods ,", "the list is empty"},
        {"--max-steps 0", "--max-steps 0"},
        {"--batch-size x", "--batch-size x"},
        {"--lr lora", "--lr lora: give METHOD=X"},
        {"--lr lokr=1e-3", "--lr lokr=1e-3"},
        {"--lr lora=-1", "--lr lora=-1"},
        {"--bogus 1", "unknown option '--bogus'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "compare-methods -m " TINY " --data %s --out %s %s", data, cdir,
                 bad[i].flag);
        EXPECT(args, NULL, 2, bad[i].fragment);
    }
    EXPECT("compare-methods --out x", NULL, 2, "no training data");
    snprintf(args, sizeof args,
             "compare-methods -m " TINY " --data %s --general %s --methods lora,prompt,freeze "
             "--max-steps 2 --batch-size 2 --max-seq-len 16 --eval-max-examples 4 --out %s",
             data, data, cdir);
    EXPECT(args, NULL, 0, "| prompt | 1280 |");
    assert_non_null(strstr(out, "| freeze |"));
    snprintf(path, sizeof path, "%s/compare.json", cdir);
    char *j = read_text(path);
    assert_non_null(strstr(j, "\"trainable_params\": 29696"));
    assert_null(strstr(j, "\"error\""));
    assert_non_null(strstr(j, "\"general_loss_change\": "));
    free(j);
    snprintf(path, sizeof path, "%s/report.html", cdir);
    char *html = read_text(path);
    assert_non_null(strstr(html, "<svg"));
    assert_non_null(strstr(html, ">prompt<"));
    free(html);
    /* methods that fail (rows longer than the model's context): each row says why, the
     * run exits 1 */
    snprintf(args, sizeof args,
             "compare-methods -m " TINY " --data %s --methods lora,prompt --max-seq-len 70000 "
             "--max-steps 2 --eval-max-examples 4 --out %s/cmp2",
             data, tmpdir);
    EXPECT(args, NULL, 1, "| prompt | failed: ");
}

/* finch quantize: its usage errors, bad inputs, the refusals that protect files, the
 * requantization warning, and an output finch generates from. */
static void test_quantize_cli(void **state) {
    (void)state;
    char args[2048], half[512], q[512], q8[512];
    snprintf(half, sizeof half, "%s/half.gguf", tmpdir);
    snprintf(q, sizeof q, "%s/q.gguf", tmpdir);
    snprintf(q8, sizeof q8, "%s/q8.gguf", tmpdir);
#define QEXPECT(code, fragment, ...)                                                               \
    do {                                                                                           \
        snprintf(args, sizeof args, __VA_ARGS__);                                                  \
        EXPECT(args, NULL, code, fragment);                                                        \
    } while (0)
    EXPECT("quantize", NULL, 2, "no input: finch quantize IN OUT --type T");
    EXPECT("quantize " TINY, NULL, 2, "no output");
    QEXPECT(2, "no type: give --type", "quantize %s %s", TINY, q);
    QEXPECT(2, "--type q3_k_m: must be q8_0", "quantize %s %s --type q3_k_m", TINY, q);
    EXPECT("quantize " TINY " q.gguf r.gguf --type q8_0", NULL, 2,
           "more than one OUT given ('q.gguf' and 'r.gguf')");
    QEXPECT(1, "/nonexistent/in.gguf: cannot read the input",
            "quantize /nonexistent/in.gguf %s --type q8_0", q);
    EXPECT("quantize " TINY " " TINY " --type q8_0 --force", NULL, 2, "is the input file itself");
    QEXPECT(2, "lies inside the input folder", "quantize %s %s --type q8_0", tmpdir, q);
    snprintf(args, sizeof args, "head -c 150000 %s > %s", TINY, half);
    assert_int_equal(system(args), 0);
    QEXPECT(1, "half.gguf: offset", "quantize %s %s --type q4_k_m", half, q);
    QEXPECT(0, "(q4_k_m)", "quantize %s %s --type q4_k_m", TINY, q);
    QEXPECT(2, "q.gguf: already exists; give --force to replace it",
            "quantize %s %s --type q4_k_m", TINY, q);
    QEXPECT(0, "output.weight", "quantize %s %s --type q6_k --force -v -t 2", TINY, q);
    assert_non_null(strstr(out, "f32 -> q8_0"));
    QEXPECT(0, "(q4_0)", "quantize %s %s --type q4_0 --force", TINY, q);
    /* the summary: 74,240 weights as 74.2 k, the f32 norms' share as it is */
    assert_non_null(strstr(out, "74.2 k/74.2 k in"));
    assert_non_null(strstr(out, "q4_0 91.2%, f32 0.4%, q8_0 8.4% of the weights"));
    QEXPECT(0, "quantized again, which is lossy", "quantize %s %s --type q8_0", q, q8);
    QEXPECT(0, "", "generate -m %s -p hi -n 3", q8);
#undef QEXPECT
    unlink(half);
    unlink(q);
    unlink(q8);
}

static int setup(void **state) {
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_bad_models),
        cmocka_unit_test(test_quantize_cli),
        cmocka_unit_test(test_info_tiny),
        cmocka_unit_test(test_info_qwen2_mistral),
        cmocka_unit_test(test_real_model),
        cmocka_unit_test(test_train_flags),
        cmocka_unit_test(test_train_mixture),
        cmocka_unit_test(test_compare_methods),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
