/*
 * fuzz_adapter_config.c: libFuzzer target for adapter folders: every method's
 * adapter_config.json (PEFT's and AdapterHub's). At start each saving method (LoRA,
 * DoRA, (IA)^3, prompt and prefix tuning, a bottleneck adapter, BitFit) makes an adapter
 * for the tiny test model, and its weight files are kept. The input's first byte picks
 * whose weight files go into the folder; the rest is adapter_config.json. An adapter
 * that loads must name a method, attach to the model and detach again; a failure must
 * name the folder.
 *
 * Built as fuzz_adapter_config with -fsanitize=fuzzer when FINCH_FUZZ is on, and always
 * as fuzz_adapter_config_replay, which runs tests/fuzz/corpus/adapter_config/ as a test.
 */
#include "fuzz_files.h"
#include "peft/peft.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static finch_model *model;

/* One method's weight files, as it saved them. */
typedef struct {
    int n;
    char name[4][256];
    uint8_t *bytes[4];
    size_t len[4];
} saved_files;

static const char *const methods[] = {"lora", "dora", "ia3", "prompt", "prefix", "adapter", "bitfit"};
enum { N_METHODS = sizeof methods / sizeof methods[0] };
static saved_files saved[N_METHODS];

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_adapter_config: %s: %s\n", what, msg);
    abort();
}

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("open", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) die("read", path);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void init(void) {
    finch_err err;
    if (finch_model_load(FINCH_FIXTURES "/model/tiny_llama.gguf", &model, &err))
        die("model", err.msg);
    for (int i = 0; i < N_METHODS; i++) {
        finch_rng rng;
        finch_rng_seed(&rng, 7);
        finch_peft *p;
        if (finch_peft_new(model, methods[i], NULL, 0, &rng, false, &p, &err))
            die(methods[i], err.msg);
        char dir[256];
        snprintf(dir, sizeof dir, "%s/%s", fuzz_dir(), methods[i]);
        if (finch_peft_save(p, model, dir, &err)) die(methods[i], err.msg);
        finch_peft_free(p);
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (e->d_name[0] != '.' && strcmp(e->d_name, "adapter_config.json")) {
                saved_files *s = &saved[i];
                if (s->n == 4) die(methods[i], "more than four files");
                char path[512];
                if (strlen(e->d_name) >= sizeof s->name[0]) die(methods[i], "long file name");
                memcpy(s->name[s->n], e->d_name, strlen(e->d_name) + 1);
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                s->bytes[s->n] = slurp(path, &s->len[s->n]);
                s->n++;
            }
        if (d) closedir(d);
        char path[1024];
        for (int k = 0; k < saved[i].n; k++) {
            snprintf(path, sizeof path, "%s/%s", dir, saved[i].name[k]);
            remove(path);
        }
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        remove(path);
        rmdir(dir);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model) init();
    if (size < 1) return 0;
    const saved_files *s = &saved[data[0] % N_METHODS];
    char path[256];
    for (int k = 0; k < s->n; k++) fuzz_write(s->name[k], s->bytes[k], s->len[k], path, sizeof path);
    fuzz_write("adapter_config.json", data + 1, size - 1, path, sizeof path);
    finch_peft *p = NULL;
    finch_err err;
    if (finch_peft_load(fuzz_dir(), model, &p, &err) == FINCH_OK) {
        if (!p || !finch_peft_method(p)) abort();
        if (finch_peft_attach(p, model, 1.0f, 16, &err)) die("attach after load", err.msg);
        finch_peft_detach(p, model);
        finch_peft_free(p);
    } else {
        if (p) abort();
        fuzz_expect_named(err.msg, fuzz_dir());
    }
    fuzz_dir_empty();
    return 0;
}
