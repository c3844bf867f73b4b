/*
 * replay.c: runs a fuzz target's LLVMFuzzerTestOneInput over every file of a corpus
 * directory (or over the files named), so the committed seeds and crash reproducers are
 * ordinary tests in every build. Each input is copied into a buffer of exactly its size,
 * so a sanitizer build catches any read past its end. Fails when the directory holds no
 * file or cannot be read.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs the target on one file; returns 1 when it ran, 0 when the path is not a file. */
static int replay_file(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        exit(1);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf || fread(buf, 1, size, f) != size) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    LLVMFuzzerTestOneInput(size ? buf : NULL, size);
    free(buf);
    return 1;
}

static int replay_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return replay_file(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        n += replay_file(path);
    }
    closedir(d);
    return n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    int n = 0;
    for (int i = 1; i < argc; i++) n += replay_dir(argv[i]);
    if (n == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    printf("replayed %d inputs\n", n);
    return 0;
}
