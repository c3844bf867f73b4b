/*
 * guarded_device.h: a device backend made of host memory that the host cannot touch, for
 * testing what runs on a device without one. Its ops are the CPU's, but only those the
 * CUDA backend has (kernels/cuda/backend.cu; the others are NULL, as there), and its
 * features are CUDA's (no bf16 products, no attention prefix). Each allocation is its own
 * mapping, kept PROT_NONE except while one of the backend's ops, copies or zeroings runs:
 * host code that reads or writes device memory directly, as a GPU would not let it, dies
 * by SIGSEGV, which the handler reports as such. The other way round, every array an op or
 * copy is handed must be device memory (the copies' host side host memory), or the test
 * ends saying which op. Its twin is the same table on host
 * memory (not a device): what the same ops compute without the device's copies.
 */
#ifndef FINCH_TEST_GUARDED_DEVICE_H
#define FINCH_TEST_GUARDED_DEVICE_H

#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels/kernels.h"

static const finch_backend *guard_cpu;
static struct {
    void *p;
    size_t n;
} guard_maps[8192];
static int guard_n, guard_depth;

static void guard_protect(int prot) {
    for (int i = 0; i < guard_n; i++)
        if (mprotect(guard_maps[i].p, guard_maps[i].n, prot)) abort();
}
static void guard_open(void) {
    if (guard_depth++ == 0) guard_protect(PROT_READ | PROT_WRITE);
}
static void guard_close(void) {
    if (--guard_depth == 0) guard_protect(PROT_NONE);
}

static void *guard_alloc(size_t bytes, const char *what, finch_err *err) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), n = (bytes + page - 1) / page * page;
    void *p = guard_n < 8192
                  ? mmap(NULL, n ? n : page, guard_depth ? PROT_READ | PROT_WRITE : PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                  : MAP_FAILED;
    if (p == MAP_FAILED) {
        finch_err_set(err, FINCH_E_NOMEM, "guarded device: no mapping for %s", what);
        return NULL;
    }
    guard_maps[guard_n].p = p;
    guard_maps[guard_n++].n = n ? n : page;
    return p;
}
static void guard_free(void *p) {
    for (int i = 0; i < guard_n; i++)
        if (guard_maps[i].p == p) {
            munmap(p, guard_maps[i].n);
            guard_maps[i] = guard_maps[--guard_n];
            return;
        }
}
/* Whether p lies in device memory. */
static bool guard_on_device(const void *p) {
    for (int i = 0; i < guard_n; i++)
        if ((const char *)p >= (const char *)guard_maps[i].p &&
            (const char *)p < (const char *)guard_maps[i].p + guard_maps[i].n)
            return true;
    return false;
}

/* The n array arguments op was handed are NULL or device memory, as a GPU needs them. */
static void guard_args(const char *op, const void *const *p, int n) {
    for (int i = 0; i < n; i++)
        if (p[i] && !guard_on_device(p[i])) {
            fprintf(stderr, "guarded device: %s was handed host memory (array argument %d)\n", op,
                    i + 1);
            _exit(3);
        }
}

static finch_status guard_copy(void *dst, const void *src, size_t bytes, bool in, finch_err *err) {
    if (!guard_on_device(in ? dst : src) || guard_on_device(in ? src : dst)) {
        fprintf(stderr, "guarded device: copy_%s between the wrong sides\n", in ? "in" : "out");
        _exit(3);
    }
    guard_open();
    finch_status st = guard_cpu->copy_in(dst, src, bytes, err);
    guard_close();
    return st;
}
static finch_status guard_copy_in(void *dst, const void *src, size_t bytes, finch_err *err) {
    return guard_copy(dst, src, bytes, true, err);
}
static finch_status guard_copy_out(void *dst, const void *src, size_t bytes, finch_err *err) {
    return guard_copy(dst, src, bytes, false, err);
}
static void guard_zero(void *p, size_t bytes) {
    const void *a[] = {p};
    guard_args("zero", a, 1);
    guard_open();
    guard_cpu->zero(p, bytes);
    guard_close();
}
static void guard_copy_within(void *dst, const void *src, size_t bytes) {
    const void *a[] = {dst, src};
    guard_args("copy", a, 2);
    guard_open();
    guard_cpu->copy(dst, src, bytes);
    guard_close();
}
static bool guard_supports(finch_feature f, int arg) {
    return f == FINCH_FEATURE_WEIGHT_TYPE && finch_backend_supports(guard_cpu, f, arg);
}

/* Each op: its array arguments checked, then the CPU's between an open and a close of
 * device memory. */
#define GUARD_V(name, params, args, ...)                                                           \
    static void guard_##name params {                                                              \
        const void *p_[] = {__VA_ARGS__};                                                          \
        guard_args(#name, p_, (int)(sizeof p_ / sizeof *p_));                                      \
        guard_open();                                                                              \
        guard_cpu->name args;                                                                      \
        guard_close();                                                                             \
    }
GUARD_V(matmul, (float *y, const float *x, const finch_weight *w, int64_t T, finch_workspace *ws),
        (y, x, w, T, ws), y, x, w->data)
GUARD_V(embed, (float *x, const int32_t *ids, int64_t T, const finch_weight *emb), (x, ids, T, emb),
        x, ids, emb->data)
GUARD_V(rmsnorm_forward,
        (float *y, float *rstd, const float *x, const float *w, int64_t T, int64_t C, float eps),
        (y, rstd, x, w, T, C, eps), y, rstd, x, w)
GUARD_V(rope_forward, (float *x, const int32_t *pos, int64_t T, int nh, int D, float theta),
        (x, pos, T, nh, D, theta), x, pos)
GUARD_V(attention_forward,
        (float *out, const float *q, const float *k, const float *v, int64_t T, int64_t pos0, int H,
         int KVH, int D, int64_t window, finch_workspace *ws),
        (out, q, k, v, T, pos0, H, KVH, D, window, ws), out, q, k, v)
GUARD_V(to_f16, (uint16_t * dst, const float *src, int64_t n), (dst, src, n), dst, src)
GUARD_V(swiglu_forward, (float *h, const float *gate, const float *up, int64_t n), (h, gate, up, n),
        h, gate, up)
GUARD_V(geglu_forward, (float *h, const float *gate, const float *up, int64_t n), (h, gate, up, n),
        h, gate, up)
GUARD_V(geglu_backward,
        (float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n),
        (dgate, dup, dh, gate, up, n), dgate, dup, dh, gate, up)
GUARD_V(swiglu_backward,
        (float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n),
        (dgate, dup, dh, gate, up, n), dgate, dup, dh, gate, up)
GUARD_V(add, (float *y, const float *x, int64_t n), (y, x, n), y, x)
GUARD_V(scale, (float *x, int64_t n, float a), (x, n, a), x)
GUARD_V(gemm,
        (bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
         int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc),
        (ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), A, B, C)
GUARD_V(scale_cols, (float *y, const float *x, const float *s, int64_t T, int64_t n),
        (y, x, s, T, n), y, x, s)
GUARD_V(col_dot, (float *ds, const float *a, const float *b, int64_t T, int64_t n),
        (ds, a, b, T, n), ds, a, b)
GUARD_V(dropout_forward, (float *y, const float *x, int64_t n, const finch_dropout *d),
        (y, x, n, d), y, x)
GUARD_V(dropout_backward, (float *dx, const float *g, int64_t n, const finch_dropout *d),
        (dx, g, n, d), dx, g)
GUARD_V(matmul_backward_input,
        (float *dx, const float *dy, const finch_weight *w, int64_t T, finch_workspace *ws),
        (dx, dy, w, T, ws), dx, dy, w->data)
GUARD_V(matmul_backward_weight,
        (float *dw, const float *dy, const float *x, int64_t T, int64_t rows, int64_t cols,
         finch_workspace *ws),
        (dw, dy, x, T, rows, cols, ws), dw, dy, x)
GUARD_V(embed_backward, (float *demb, const float *dx, const int32_t *ids, int64_t T, int64_t C),
        (demb, dx, ids, T, C), demb, dx, ids)
GUARD_V(rmsnorm_backward,
        (float *dx, float *dw, const float *dy, const float *rstd, const float *x, const float *w,
         int64_t T, int64_t C),
        (dx, dw, dy, rstd, x, w, T, C), dx, dw, dy, rstd, x, w)
GUARD_V(rope_backward, (float *dx, const int32_t *pos, int64_t T, int nh, int D, float theta),
        (dx, pos, T, nh, D, theta), dx, pos)
GUARD_V(attention_forward_train,
        (float *out, float *stats, const float *q, const float *k, const float *v,
         const int32_t *seg, const finch_attn_prefix *pre, int64_t B, int64_t T, int H, int KVH,
         int D, int64_t window, finch_workspace *ws),
        (out, stats, q, k, v, seg, pre, B, T, H, KVH, D, window, ws), out, stats, q, k, v, seg)
GUARD_V(attention_backward,
        (float *dq, float *dk, float *dv, float *sps, const float *dout, const float *out,
         const float *stats, const float *q, const float *k, const float *v, const int32_t *seg,
         const finch_attn_prefix *pre, int64_t B, int64_t T, int H, int KVH, int D, int64_t window,
         finch_workspace *ws),
        (dq, dk, dv, sps, dout, out, stats, q, k, v, seg, pre, B, T, H, KVH, D, window, ws), dq, dk,
        dv, sps, dout, out, stats, q, k, v, seg)
GUARD_V(layernorm_forward,
        (float *y, float *stats, const float *x, const float *w, const float *b, int64_t T,
         int64_t C, float eps),
        (y, stats, x, w, b, T, C, eps), y, stats, x, w, b)
GUARD_V(layernorm_backward,
        (float *dx, float *dw, float *db, const float *dy, const float *stats, const float *x,
         const float *w, int64_t T, int64_t C),
        (dx, dw, db, dy, stats, x, w, T, C), dx, dw, db, dy, stats, x, w)
GUARD_V(gelu_forward, (float *y, const float *x, int64_t n), (y, x, n), y, x)
GUARD_V(gelu_backward, (float *dx, const float *dy, const float *x, int64_t n), (dx, dy, x, n), dx,
        dy, x)
#undef GUARD_V
static double guard_softmax_xent(float *dlogits, const float *logits, const int32_t *targets,
                                 int64_t N, int64_t V, float grad_scale) {
    const void *p[] = {dlogits, logits, targets};
    guard_args("softmax_xent", p, 3);
    guard_open();
    double r = guard_cpu->softmax_xent(dlogits, logits, targets, N, V, grad_scale);
    guard_close();
    return r;
}

/* A fault inside device memory is reported as the host touching it; any other fault goes
 * on to the default action (SA_RESETHAND). */
static void guard_segv(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    for (int i = 0; i < guard_n; i++)
        if ((char *)si->si_addr >= (char *)guard_maps[i].p &&
            (char *)si->si_addr < (char *)guard_maps[i].p + guard_maps[i].n) {
            static const char msg[] = "guarded device: the host touched device memory\n";
            if (write(2, msg, sizeof msg - 1) < 0) _exit(3);
            _exit(3);
        }
}

/* The ops the CUDA backend has (kernels/cuda/backend.cu). */
/* clang-format off */
#define GUARD_OPS(X)           \
    X(matmul)                  \
    X(embed)                   \
    X(rmsnorm_forward)         \
    X(rope_forward)            \
    X(attention_forward)       \
    X(to_f16)                  \
    X(swiglu_forward)          \
    X(geglu_forward)           \
    X(geglu_backward)          \
    X(swiglu_backward)         \
    X(add)                     \
    X(scale)                   \
    X(gemm)                    \
    X(scale_cols)              \
    X(col_dot)                 \
    X(dropout_forward)         \
    X(dropout_backward)        \
    X(matmul_backward_input)   \
    X(matmul_backward_weight)  \
    X(embed_backward)          \
    X(rmsnorm_backward)        \
    X(rope_backward)           \
    X(attention_forward_train) \
    X(attention_backward)      \
    X(layernorm_forward)       \
    X(layernorm_backward)      \
    X(gelu_forward)            \
    X(gelu_backward)           \
    X(softmax_xent)
/* clang-format on */

/* The guarded device's table, over this machine's CPU table. */
static const finch_backend *guarded_device(void) {
    static finch_backend be;
    finch_err err;
    /* on every call: a test runner may have put its own handler in since */
    struct sigaction sa = {.sa_sigaction = guard_segv, .sa_flags = SA_SIGINFO | SA_RESETHAND};
    sigaction(SIGSEGV, &sa, NULL);
    if (be.name) return &be;
    if (!(guard_cpu = finch_cpu_backend(&err))) return NULL;
    be = (finch_backend){.name = "a guarded host device", .device = true};
#define OP(name) be.name = guard_##name;
    GUARD_OPS(OP)
#undef OP
    be.supports = guard_supports;
    be.alloc = guard_alloc;
    be.free = guard_free;
    be.copy_in = guard_copy_in;
    be.copy_out = guard_copy_out;
    be.zero = guard_zero;
    be.copy = guard_copy_within;
    be.sync = guard_cpu->sync;
    return &be;
}

/* The same ops (the CPU's, the CUDA backend's set) on host memory. */
static const finch_backend *guarded_twin(void) {
    static finch_backend be;
    if (be.name) return &be;
    if (!guarded_device()) return NULL;
    be = (finch_backend){.name = "the guarded device's ops on the host"};
#define OP(name) be.name = guard_cpu->name;
    GUARD_OPS(OP)
#undef OP
    be.supports = guard_supports;
    be.alloc = guard_cpu->alloc;
    be.free = guard_cpu->free;
    be.copy_in = guard_cpu->copy_in;
    be.copy_out = guard_cpu->copy_out;
    be.zero = guard_cpu->zero;
    be.copy = guard_cpu->copy;
    be.sync = guard_cpu->sync;
    return &be;
}

#endif /* FINCH_TEST_GUARDED_DEVICE_H */
