/*
 * file.c: read-only mapping of whole files and atomic file writes (temp file in the same
 * directory, write, fflush, fsync, rename, fsync of the directory), so a crash never leaves
 * a half-written file under the destination name.
 */
#define _GNU_SOURCE
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

finch_status finch_file_map(const char *path, finch_mapped_file *out, finch_err *err) {
    finch_mapped_file f = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return finch_err_set(err, FINCH_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return finch_err_set(err, FINCH_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return finch_err_set(err, FINCH_E_IO, "%s: is a directory, expected a file", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return finch_err_set(err, FINCH_E_IO, "%s: not a regular file", path);
    }
    f.size = (size_t)st.st_size;
    if (f.size > 0) {
        void *p = mmap(NULL, f.size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return finch_err_set(err, FINCH_E_IO, "%s: cannot map %zu bytes: %s", path, f.size,
                                 strerror(e));
        }
        f.data = p;
    }
    close(fd);
    f.path = finch_mem_strdup(path);
    if (!f.path) {
        if (f.data) munmap((void *)f.data, f.size);
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory");
    }
    *out = f;
    return FINCH_OK;
}

void finch_file_evict(const finch_mapped_file *f) {
    if (f && f->data) madvise((void *)f->data, f->size, MADV_DONTNEED);
}

void finch_file_evict_range(const finch_mapped_file *f, const void *p, size_t n) {
    if (!f || !f->data) return;
    const uintptr_t base = (uintptr_t)f->data, a = (uintptr_t)p;
    if (a < base || a - base > f->size || n > f->size - (a - base)) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (a + page - 1) & ~(page - 1), hi = (a + n) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

void finch_file_unmap(finch_mapped_file *f) {
    if (!f) return;
    if (f->data) munmap((void *)f->data, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

finch_status finch_mkdir_p(const char *path, finch_err *err) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return finch_err_set(err, FINCH_E_IO, "%s: bad directory path", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        struct stat st;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return finch_err_set(err, FINCH_E_IO, "%s: cannot create %s: %s", path, buf,
                                 strerror(errno));
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
            return finch_err_set(err, FINCH_E_IO, "%s: %s exists and is not a directory", path,
                                 buf);
        buf[i] = c;
    }
    return FINCH_OK;
}

finch_status finch_fwrite(FILE *f, const void *p, size_t n, const char *path, finch_err *err) {
    if (n && (finch_fault_write_hit() || fwrite(p, 1, n, f) != n))
        return finch_err_set(err, FINCH_E_IO, "%s: write failed: %s", path, strerror(errno));
    return FINCH_OK;
}

finch_status finch_file_append_open(const char *path, bool truncate, finch_append_file *out,
                                    finch_err *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
    if (fd < 0)
        return finch_err_set(err, FINCH_E_IO, "%s: cannot write: %s", path, strerror(errno));
    char *copy = finch_mem_strdup(path);
    if (!copy) {
        close(fd);
        return finch_err_set(err, FINCH_E_NOMEM, "out of memory opening %s", path);
    }
    *out = (finch_append_file){fd, copy};
    return FINCH_OK;
}

finch_status finch_file_append(finch_append_file *f, const void *p, size_t n, finch_err *err) {
    off_t end = lseek(f->fd, 0, SEEK_END);
    const char *b = p;
    size_t done = 0;
    while (done < n) {
        ssize_t w = finch_fault_write_hit() ? -1 : write(f->fd, b + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            /* a partial record would corrupt the file's last line: cut it off again */
            if (end >= 0 && ftruncate(f->fd, end) != 0) {
                /* nothing more to do: the write error below is what the caller needs */
            }
            return finch_err_set(err, FINCH_E_IO, "%s: write failed: %s", f->path, strerror(e));
        }
        done += (size_t)w;
    }
    return FINCH_OK;
}

void finch_file_append_close(finch_append_file *f) {
    if (!f || !f->path) return;
    close(f->fd);
    free(f->path);
    *f = (finch_append_file){-1, NULL};
}

/* fsyncs the directory holding path; dir is a buffer of strlen(path) + 2 bytes (allocated
 * with the temp name, so that nothing can fail once the file is renamed). */
static void fsync_dir_of(const char *path, char *dir) {
    strcpy(dir, path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        slash[1] = 0;
    else
        *slash = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

finch_status finch_file_commit(const char *path, finch_write_fn write, void *user, finch_err *err) {
    size_t n = strlen(path);
    char *tmp = finch_mem_alloc(2 * n + 18); /* the temp name, then room for the directory */
    if (!tmp) return finch_err_set(err, FINCH_E_NOMEM, "out of memory writing %s", path);
    snprintf(tmp, n + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        finch_status st = finch_err_set(err, FINCH_E_IO, "%s: cannot create a temp file: %s", path,
                                        strerror(errno));
        free(tmp);
        return st;
    }
    fchmod(fd, 0644);
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return finch_err_set(err, FINCH_E_IO, "%s: fdopen failed", path);
    }
    finch_status st = write(f, user, err);
    if (st == FINCH_OK && (finch_fault_write_hit() || fflush(f) != 0))
        st = finch_err_set(err, FINCH_E_IO, "%s: write failed: %s", path, strerror(errno));
    if (st == FINCH_OK && fsync(fileno(f)) != 0)
        st = finch_err_set(err, FINCH_E_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (fclose(f) != 0 && st == FINCH_OK)
        st = finch_err_set(err, FINCH_E_IO, "%s: close failed: %s", path, strerror(errno));
    if (st == FINCH_OK && rename(tmp, path) != 0)
        st = finch_err_set(err, FINCH_E_IO, "%s: rename failed: %s", path, strerror(errno));
    if (st != FINCH_OK)
        unlink(tmp);
    else
        fsync_dir_of(path, tmp + n + 16);
    free(tmp);
    return st;
}

finch_status finch_default_model_path(char *buf, size_t size, finch_err *err) {
    const char *cache = getenv("FINCH_CACHE");
    int n;
    if (cache && *cache) {
        n = snprintf(buf, size, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    } else {
        const char *home = getenv("HOME");
        if (!home || !*home)
            return finch_err_set(
                err, FINCH_E_USAGE,
                "neither FINCH_CACHE nor HOME is set: cannot find the default model");
        n = snprintf(buf, size, "%s/.cache/finch/SmolLM2-135M-Instruct.Q4_1.gguf", home);
    }
    if (n < 0 || (size_t)n >= size)
        return finch_err_set(err, FINCH_E_RANGE, "default model path is too long");
    return FINCH_OK;
}
