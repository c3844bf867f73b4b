/*
 * fault_util.h: what the fault-injection tests share: a scratch directory, removing a tree
 * without a shell, finding temporary files a failed write left behind, and the small
 * datasets the tiny model trains and evaluates on. Include after cmocka.h, in a file that
 * defines _XOPEN_SOURCE 700 (nftw) before its first include.
 */
#ifndef FINCH_FAULT_UTIL_H
#define FINCH_FAULT_UTIL_H


#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TINY FINCH_FIXTURES "/model/tiny_llama.gguf"

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Makes a scratch directory "<base>/<name>_XXXXXX" into buf, in /dev/shm where it can
 * (fsync there costs nothing, and these tests commit thousands of files), else /tmp. */
static inline int scratch_dir(char *buf, size_t cap, const char *name) {
    const char *bases[] = {"/dev/shm", "/tmp"};
    for (int i = 0; i < 2; i++) {
        snprintf(buf, cap, "%s/%s_XXXXXX", bases[i], name);
        if (mkdtemp(buf)) return 0;
    }
    return -1;
}

/* rm -rf path (missing is fine). */
static inline void rm_tree(const char *path) {
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static char stray[1024];
static int find_stray(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag;
    const char *base = path + ftw->base;
    if (strstr(base, ".tmp.") || !strncmp(base, ".checkpoint-", 12)) {
        snprintf(stray, sizeof stray, "%s", path);
        return 1;
    }
    return 0;
}

/* The first temporary file or directory (a commit's "X.tmp.XXXXXX", a checkpoint's
 * ".checkpoint-N.XXXXXX") under dir, or NULL. */
static inline const char *stray_temp(const char *dir) {
    stray[0] = 0;
    return nftw(dir, find_stray, 16, FTW_PHYS) == 1 ? stray : NULL;
}

/* Writes n lines of a small prompt/completion dataset to path. */
static inline void write_dataset(const char *path, int n, int offset) {
    FILE *f = fopen(path, "w");
    if (!f) fail_msg("cannot write %s", path);
    for (int i = 0; i < n; i++)
        fprintf(f, "{\"prompt\": \"n %d:\", \"completion\": \" %d\"}\n", i + offset,
                (i + offset) * 3);
    fclose(f);
}

#endif /* FINCH_FAULT_UTIL_H */
