/*
 * fuzz_files.h: what the targets over file-reading parsers share. Such a parser takes a
 * path (or a folder of files), so each input is written into a private temporary folder
 * first; an input may carry several files, separated by NUL bytes (a JSON file holds
 * none), which lets libFuzzer mutate a folder as one byte string.
 */
#ifndef FINCH_FUZZ_FILES_H
#define FINCH_FUZZ_FILES_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { FUZZ_MAX_PARTS = 4 };

static char fuzz_dir_path[64];

/* Removes every file of the folder (it holds no subfolders unless the caller made them,
 * and removes them itself). */
static inline void fuzz_dir_empty(void) {
    DIR *d = opendir(fuzz_dir_path);
    if (!d) return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", fuzz_dir_path, e->d_name);
            remove(path);
        }
    closedir(d);
}

static inline void fuzz_dir_remove(void) {
    fuzz_dir_empty();
    rmdir(fuzz_dir_path);
}

/* The private folder, made on first use (in /dev/shm when there is one) and removed at
 * exit. */
static inline const char *fuzz_dir(void) {
    if (!fuzz_dir_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/finch-fuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir_path)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir_path;
}

/* Writes n bytes to name inside the private folder; the full path goes to path. */
static inline void fuzz_write(const char *name, const void *data, size_t n, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        perror(path);
        abort();
    }
}

/* Splits data at NUL bytes into at most FUZZ_MAX_PARTS parts (the last keeps any further
 * NULs); returns how many. */
static inline int fuzz_split(const uint8_t *data, size_t size, const uint8_t *part[FUZZ_MAX_PARTS],
                      size_t len[FUZZ_MAX_PARTS]) {
    int n = 0;
    size_t start = 0;
    for (size_t i = 0; i < size && n < FUZZ_MAX_PARTS - 1; i++)
        if (data[i] == 0) {
            part[n] = data + start;
            len[n++] = i - start;
            start = i + 1;
        }
    part[n] = data + start;
    len[n++] = size - start;
    return n;
}

/* Aborts unless msg names the file (every parser's messages start with or include it). */
static inline void fuzz_expect_named(const char *msg, const char *name) {
    if (!strstr(msg, name)) {
        fprintf(stderr, "fuzz: message does not name %s: %s\n", name, msg);
        abort();
    }
}

#endif
