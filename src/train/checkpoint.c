/*
 * checkpoint.c: checkpoints that resume a run exactly.
 *
 * trainer_state.bin, little-endian:
 *   | "FINCHCKP" | u32 version (3) | u32 ranks | i64 step | i64 next | i64 epoch | u64 seed |
 *   | i64 n_params | i64 n_tensors | per tensor: u32 name length, name, u32 n_dims,
 *   i64 shape[2] | f32 params[n_params] | AdamW state record (optim/state_io.c) |
 *   | u32 n_tasks | per task: i64 units, f64 weight, i64 drawn, i64 seen |
 *   | f64 best_metric | i64 best_step | f64 best_ckpt_metric | i64 best_ckpt_step |
 *   | i64 bad_evals |
 * The tensor table lets a resume check that the run's method lays out its parameters the
 * same way. ranks is the number of data-parallel ranks of the run (its micro-batches are
 * that many slices; 0, written before finch had ranks, reads as 1). The tasks are the
 * training files, then come the validation bests and early stopping's counter
 * (finch_train_pos). Version 2 has no tasks (a run of one file); version 1
 * (LoRA only) had no table either and is read when the count matches. The
 * method's files beside it carry the same parameters for other tools; resuming reads the
 * exact f32 values from trainer_state.bin.
 */
#define _GNU_SOURCE /* mkdtemp */
#include "train/train.h"
#include "optim/optim.h" /* finch_optim_state_save/load */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static const char magic[8] = {'F', 'I', 'N', 'C', 'H', 'C', 'K', 'P'};
enum { VERSION = 3, HEADER = 8 + 4 + 4 + 5 * 8 };

typedef struct {
    const finch_params *par;
    const float *m, *v;
    const finch_train_pos *pos;
    const char *path;
} state_out;

static finch_status write_state(FILE *f, void *user, finch_err *err) {
    const state_out *s = user;
    const finch_params *r = s->par;
    uint32_t ver[2] = {VERSION, (uint32_t)s->pos->ranks};
    int64_t head[6] = {s->pos->step,          s->pos->next, s->pos->epoch,
                       (int64_t)s->pos->seed, r->total,     r->n};
    finch_status st;
    if ((st = finch_fwrite(f, magic, 8, s->path, err)) ||
        (st = finch_fwrite(f, ver, 8, s->path, err)) ||
        (st = finch_fwrite(f, head, sizeof head, s->path, err)))
        return st;
    for (int i = 0; i < r->n; i++) {
        const finch_param *p = &r->p[i];
        uint32_t len = (uint32_t)strlen(p->name), nd = (uint32_t)p->n_dims;
        if ((st = finch_fwrite(f, &len, 4, s->path, err)) ||
            (st = finch_fwrite(f, p->name, len, s->path, err)) ||
            (st = finch_fwrite(f, &nd, 4, s->path, err)) ||
            (st = finch_fwrite(f, p->shape, 16, s->path, err)))
            return st;
    }
    if ((st = finch_fwrite(f, r->data, (size_t)r->total * sizeof(float), s->path, err)) ||
        (st = finch_optim_state_save(f, s->path, s->m, s->v, (size_t)r->total, s->pos->step, err)))
        return st;
    const finch_train_pos *pos = s->pos;
    uint32_t n_tasks = (uint32_t)pos->n_tasks;
    if ((st = finch_fwrite(f, &n_tasks, 4, s->path, err))) return st;
    for (int k = 0; k < pos->n_tasks; k++) {
        const int64_t units = pos->task_units[k], drawn = pos->drawn[k], seen = pos->seen[k];
        const double weight = pos->task_weight[k];
        if ((st = finch_fwrite(f, &units, 8, s->path, err)) ||
            (st = finch_fwrite(f, &weight, 8, s->path, err)) ||
            (st = finch_fwrite(f, &drawn, 8, s->path, err)) ||
            (st = finch_fwrite(f, &seen, 8, s->path, err)))
            return st;
    }
    const double best[2] = {pos->best_metric, pos->best_ckpt_metric};
    const int64_t steps[3] = {pos->best_step, pos->best_ckpt_step, pos->bad_evals};
    if ((st = finch_fwrite(f, &best[0], 8, s->path, err)) ||
        (st = finch_fwrite(f, &steps[0], 8, s->path, err)) ||
        (st = finch_fwrite(f, &best[1], 8, s->path, err)) ||
        (st = finch_fwrite(f, &steps[1], 16, s->path, err)))
        return st;
    return FINCH_OK;
}

/* Reads version 3's tasks and validation state into pos. */
static finch_status read_tasks(FILE *f, const char *file, finch_train_pos *pos, finch_err *err) {
    uint32_t n;
    if (fread(&n, 4, 1, f) != 1)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: truncated before the training files", file);
    if (n < 1 || n > FINCH_MAX_TASKS)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: %u training files, expected 1 to %d", file,
                             n, FINCH_MAX_TASKS);
    pos->n_tasks = (int32_t)n;
    for (uint32_t k = 0; k < n; k++) {
        if (fread(&pos->task_units[k], 8, 1, f) != 1 || fread(&pos->task_weight[k], 8, 1, f) != 1 ||
            fread(&pos->drawn[k], 8, 1, f) != 1 || fread(&pos->seen[k], 8, 1, f) != 1)
            return finch_err_set(err, FINCH_E_FORMAT, "%s: training file %u is truncated", file,
                                 k + 1);
        if (pos->task_units[k] < 1 || !(pos->task_weight[k] > 0) ||
            !isfinite(pos->task_weight[k]) || pos->drawn[k] < 0 || pos->seen[k] < 0)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: training file %u: %lld units, weight %g, %lld drawn, %lld "
                                 "seen: out of range",
                                 file, k + 1, (long long)pos->task_units[k], pos->task_weight[k],
                                 (long long)pos->drawn[k], (long long)pos->seen[k]);
    }
    if (fread(&pos->best_metric, 8, 1, f) != 1 || fread(&pos->best_step, 8, 1, f) != 1 ||
        fread(&pos->best_ckpt_metric, 8, 1, f) != 1 || fread(&pos->best_ckpt_step, 8, 1, f) != 1 ||
        fread(&pos->bad_evals, 8, 1, f) != 1)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: truncated in the validation state", file);
    if (pos->best_step < 0 || pos->best_ckpt_step < 0 || pos->bad_evals < 0 ||
        pos->best_step > pos->step || pos->best_ckpt_step > pos->step)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: best step %lld, best checkpoint %lld, %lld evaluations without "
                             "improvement at step %lld: out of range",
                             file, (long long)pos->best_step, (long long)pos->best_ckpt_step,
                             (long long)pos->bad_evals, (long long)pos->step);
    return FINCH_OK;
}

static void fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static finch_status remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? FINCH_OK : FINCH_E_IO;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    return rmdir(dir) == 0 ? FINCH_OK : FINCH_E_IO;
}

/* "<anything>.tmp.XXXXXX" or ".checkpoint-<digits>.XXXXXX": the names finch_file_commit and
 * finch_checkpoint_save give their temporaries (mkstemp and mkdtemp fill six characters). */
static bool is_temp_name(const char *name) {
    size_t n = strlen(name);
    const char *dot = strrchr(name, '.');
    if (!dot || name + n - dot != 7) return false;
    if (n > 12 && !memcmp(dot - 4, ".tmp", 4)) return true;
    if (strncmp(name, ".checkpoint-", 12)) return false;
    const char *d = name + 12;
    if (d == dot) return false;
    for (; d < dot; d++)
        if (*d < '0' || *d > '9') return false;
    return true;
}

void finch_checkpoint_clean(const char *out_dir) {
    DIR *d = opendir(out_dir);
    if (!d) return;
    struct dirent *e;
    char p[4400];
    while ((e = readdir(d))) {
        if (!is_temp_name(e->d_name)) continue;
        snprintf(p, sizeof p, "%s/%s", out_dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode))
            remove_tree(p);
        else if (S_ISREG(st.st_mode))
            unlink(p);
    }
    closedir(d);
}

finch_status finch_checkpoint_save(const char *out_dir, const finch_peft *p,
                                   const finch_model *model, const float *m, const float *v,
                                   const finch_train_pos *pos, finch_err *err) {
    char tmp[4096], final[4096], file[4200];
    snprintf(final, sizeof final, "%s/checkpoint-%lld", out_dir, (long long)pos->step);
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.checkpoint-%lld.XXXXXX", out_dir,
                         (long long)pos->step) >= sizeof tmp)
        return finch_err_set(err, FINCH_E_RANGE, "%s: path too long", out_dir);
    if (!mkdtemp(tmp))
        return finch_err_set(err, FINCH_E_IO, "%s: cannot create a checkpoint directory: %s",
                             out_dir, strerror(errno));
    snprintf(file, sizeof file, "%s/trainer_state.bin", tmp);
    state_out s = {finch_peft_params(p), m, v, pos, file};
    finch_status st = finch_file_commit(file, write_state, &s, err);
    if (!st) st = finch_peft_save(p, model, tmp, err);
    if (!st && remove_tree(final) != FINCH_OK)
        st = finch_err_set(err, FINCH_E_IO, "%s: cannot replace the old checkpoint", final);
    if (!st && rename(tmp, final) != 0)
        st = finch_err_set(err, FINCH_E_IO, "%s: rename failed: %s", final, strerror(errno));
    if (st) {
        remove_tree(tmp);
        return finch_err_prefix(err, "saving %s", final);
    }
    fsync_path(out_dir);
    return FINCH_OK;
}

static int cmp_step(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? 1 : x > y ? -1 : 0; /* newest first */
}

finch_status finch_checkpoint_prune(const char *out_dir, int64_t keep, int64_t protect,
                                    finch_err *err) {
    DIR *d = opendir(out_dir);
    if (!d) return finch_err_set(err, FINCH_E_IO, "%s: cannot list: %s", out_dir, strerror(errno));
    long long *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        if (strncmp(e->d_name, "checkpoint-", 11)) continue;
        long long s = strtoll(e->d_name + 11, &end, 10);
        if (*end || s < 0 || end == e->d_name + 11) continue;
        if (n == cap) {
            long long *more = finch_mem_realloc(steps, (cap = cap ? 2 * cap : 16) * sizeof *steps);
            if (!more) {
                closedir(d);
                free(steps);
                return finch_err_set(err, FINCH_E_NOMEM, "%s: out of memory listing checkpoints",
                                     out_dir);
            }
            steps = more;
        }
        steps[n++] = s;
    }
    closedir(d);
    if (steps) qsort(steps, n, sizeof *steps, cmp_step);
    finch_status st = FINCH_OK;
    for (size_t i = (size_t)keep; i < n && !st; i++) {
        if (protect > 0 && steps[i] == protect) continue;
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/checkpoint-%lld", out_dir, steps[i]);
        if (remove_tree(dir) != FINCH_OK)
            st = finch_err_set(err, FINCH_E_IO, "%s: cannot delete the old checkpoint", dir);
    }
    free(steps);
    return st;
}

/* The checkpoint-<n> directory with the highest n inside dir, into best. */
static bool latest_checkpoint(const char *dir, char *best, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return false;
    long long top = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        if (strncmp(e->d_name, "checkpoint-", 11)) continue;
        long long n = strtoll(e->d_name + 11, &end, 10);
        if (*end || n < 0 || n <= top) continue;
        top = n;
        snprintf(best, cap, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    return top >= 0;
}

/* Reads version 2's tensor table and checks it against the registry. */
static finch_status check_table(FILE *f, const char *file, const finch_params *r, finch_err *err) {
    int64_t n;
    if (fread(&n, 8, 1, f) != 1)
        return finch_err_set(err, FINCH_E_FORMAT, "%s: truncated tensor table", file);
    if (n != r->n)
        return finch_err_set(err, FINCH_E_FORMAT,
                             "%s: holds %lld trainable tensors, this run's method has %d: it was "
                             "made with another model or method configuration",
                             file, (long long)n, r->n);
    for (int i = 0; i < r->n; i++) {
        const finch_param *p = &r->p[i];
        uint32_t len, nd;
        char name[FINCH_PARAM_MAX_NAME + 1];
        int64_t shape[2];
        if (fread(&len, 4, 1, f) != 1 || len > FINCH_PARAM_MAX_NAME ||
            fread(name, 1, len, f) != len || fread(&nd, 4, 1, f) != 1 || fread(shape, 8, 2, f) != 2)
            return finch_err_set(err, FINCH_E_FORMAT,
                                 "%s: tensor table entry %d is truncated or "
                                 "malformed",
                                 file, i);
        name[len] = 0;
        if (strcmp(name, p->name) || nd != (uint32_t)p->n_dims || shape[0] != p->shape[0] ||
            shape[1] != p->shape[1])
            return finch_err_set(
                err, FINCH_E_FORMAT,
                "%s: tensor %d is '%s' [%lld, %lld], this run's is '%s' [%lld, %lld]: "
                "the checkpoint was made with another model or method configuration",
                file, i, name, (long long)shape[0], (long long)shape[1], p->name,
                (long long)p->shape[0], (long long)p->shape[1]);
    }
    return FINCH_OK;
}

finch_status finch_checkpoint_load(const char *path, finch_params *r, float *m, float *v,
                                   finch_train_pos *pos, finch_err *err) {
    char dir[4096], file[4200];
    snprintf(file, sizeof file, "%s/trainer_state.bin", path);
    if (access(file, F_OK) == 0)
        snprintf(dir, sizeof dir, "%s", path);
    else if (!latest_checkpoint(path, dir, sizeof dir))
        return finch_err_set(err, FINCH_E_IO,
                             "%s: no checkpoint here (no trainer_state.bin, no "
                             "checkpoint-<step> directory)",
                             path);
    snprintf(file, sizeof file, "%s/trainer_state.bin", dir);
    FILE *f = fopen(file, "rb");
    if (!f) return finch_err_set(err, FINCH_E_IO, "%s: cannot open: %s", file, strerror(errno));
    char mg[8];
    uint32_t ver[2];
    int64_t head[5];
    finch_status st = FINCH_OK;
    if (fread(mg, 1, 8, f) != 8 || fread(ver, 4, 2, f) != 2 || fread(head, 8, 5, f) != 5)
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: truncated header (%d bytes expected)", file,
                           HEADER);
    else if (memcmp(mg, magic, 8))
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: offset 0x0: not a finch checkpoint (bad magic)", file);
    else if (ver[0] < 1 || ver[0] > VERSION)
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: offset 0x8: version %u, this finch reads 1 to %d", file, ver[0],
                           VERSION);
    else if (ver[1] > 65536)
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: offset 0xc: %u data-parallel ranks, at most 65536", file, ver[1]);
    else if (head[0] < 0 || head[1] < 0 || head[2] < 0)
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: offset 0x10: negative step or position", file);
    else if (head[4] != r->total)
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: holds %lld trainable parameters, this run's method has %lld: it "
                           "was made with another model or method configuration",
                           file, (long long)head[4], (long long)r->total);
    else if (ver[0] >= 2)
        st = check_table(f, file, r, err);
    if (!st && fread(r->data, sizeof(float), (size_t)r->total, f) != (size_t)r->total)
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: truncated in the parameters", file);
    int64_t step = 0;
    if (!st) st = finch_optim_state_load(f, file, m, v, (size_t)r->total, &step, err);
    if (!st && step != head[0])
        st = finch_err_set(err, FINCH_E_FORMAT,
                           "%s: optimizer state is at step %lld, the run at %lld", file,
                           (long long)step, (long long)head[0]);
    finch_train_pos p = {0};
    if (!st) {
        p = (finch_train_pos){.step = head[0],
                              .next = head[1],
                              .epoch = head[2],
                              .seed = (uint64_t)head[3],
                              .ranks = ver[1] ? (int32_t)ver[1] : 1};
        if (ver[0] >= 3) st = read_tasks(f, file, &p, err);
    }
    if (!st && fgetc(f) != EOF)
        st = finch_err_set(err, FINCH_E_FORMAT, "%s: trailing bytes after the run state", file);
    fclose(f);
    if (st) return st;
    for (int64_t i = 0; i < r->total; i++)
        if (!isfinite(r->data[i]))
            return finch_err_set(err, FINCH_E_FORMAT, "%s: parameter %lld is not finite", file,
                                 (long long)i);
    *pos = p;
    return FINCH_OK;
}
