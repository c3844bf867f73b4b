/*
 * emu.h: kernels/cuda/ on the host, for scripts/cuda_emu_check.sh: what the CUDA sources use
 * of CUDA C++, the runtime and cuBLAS, on host memory. Blocks run one after another; each
 * thread of a block is a std::thread, __syncthreads a barrier of the block, and a warp
 * shuffle goes through an exchange buffer between two barriers of the warp, so the
 * kernels' block and warp logic (reductions, shuffles, early returns of whole warps) runs as
 * written. cublasSgemm and cublasSgeam are their column-major definitions from cuBLAS's
 * documentation, summed in double: the check is of the operands finch hands them. The
 * script puts the declarations of the real kernels/cuda/cuda.h after this file and turns
 * each kernel<<<grid, block>>>(args) into launch(grid, block, [&] { kernel(args); }).
 *
 * Not emulated: anything about speed, memory spaces (all is host memory), races between
 * blocks (they run in turn), the device's own expf, cos and sin (the host's libm here).
 */
#ifndef FINCH_CUDA_EMU_H
#define FINCH_CUDA_EMU_H
#define _Noreturn [[noreturn]]
#define _Static_assert static_assert
extern "C" {
#include "core/quant.h"
#include "kernels/kernels.h"
}
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
/* blocks run in turn, so a function-static array is the running block's shared memory */
#define __shared__ static
/* ---- blocks, warps, launches ---- */
struct dim3_ {
    unsigned x;
};
inline thread_local dim3_ threadIdx, blockIdx, blockDim, gridDim;
struct BlockCtx {
    std::barrier<> *block;
    std::vector<std::barrier<> *> warps;
    std::vector<double> xbuf; /* the shuffles' exchange, 8 bytes a thread */
};
inline thread_local BlockCtx *ctx;
inline void __syncthreads() {
    ctx->block->arrive_and_wait();
}
template <typename F> F shfl(F v, int src_lane) {
    int w = threadIdx.x / 32;
    memcpy(&ctx->xbuf[threadIdx.x], &v, sizeof v);
    ctx->warps[w]->arrive_and_wait();
    F r;
    memcpy(&r, &ctx->xbuf[w * 32 + src_lane], sizeof r);
    ctx->warps[w]->arrive_and_wait();
    return r;
}
template <typename F> F __shfl_xor_sync(unsigned, F v, int o) {
    return shfl(v, (threadIdx.x % 32) ^ o);
}
template <typename F> F __shfl_down_sync(unsigned, F v, int o) {
    int l = threadIdx.x % 32;
    return shfl(v, l + o < 32 ? l + o : l);
}
template <typename K> void launch(unsigned grid, unsigned block, K kern) {
    for (unsigned b = 0; b < grid; b++) {
        std::barrier<> bb(block);
        std::vector<std::barrier<> *> ws;
        for (unsigned w = 0; w < block / 32; w++) ws.push_back(new std::barrier<>(32));
        BlockCtx c{&bb, ws, std::vector<double>(block)};
        std::vector<std::thread> th;
        for (unsigned t = 0; t < block; t++)
            th.emplace_back([&, t] {
                ctx = &c;
                threadIdx.x = t;
                blockIdx.x = b;
                blockDim.x = block;
                gridDim.x = grid;
                kern();
            });
        for (auto &x : th) x.join();
        for (auto *w : ws) delete w;
    }
}
/* ---- the runtime: host memory, every call succeeds ---- */
#include <cstdio>
#include <cstdlib>
#define __constant__ static
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100 };
enum cudaMemcpyKind {
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3
};
struct cudaDeviceProp {
    char name[256];
    int multiProcessorCount;
};
inline const char *cudaGetErrorString(cudaError_t) {
    return "emulated error";
}
inline cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return 0;
}
inline cudaError_t cudaSetDevice(int) {
    return 0;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    strcpy(p->name, "host emulation");
    p->multiProcessorCount = 1;
    return 0;
}
inline cudaError_t cudaMalloc(void **p, size_t n) {
    *p = n > ((size_t)1 << 40) ? nullptr : malloc(n);
    return *p ? 0 : 2;
}
inline cudaError_t cudaFree(void *p) {
    free(p);
    return 0;
}
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) {
    memcpy(d, s, n);
    return 0;
}
#define cudaMemcpyToSymbol(sym, src, n) (memcpy((void *)sym, src, n), 0)
inline cudaError_t cudaMemset(void *p, int v, size_t n) {
    memset(p, v, n);
    return 0;
}
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, int) {
    memset(p, v, n);
    return 0;
}
inline cudaError_t cudaMemset2DAsync(void *p, size_t pitch, int v, size_t w, size_t h, int) {
    for (size_t i = 0; i < h; i++) memset((char *)p + i * pitch, v, w);
    return 0;
}
inline cudaError_t cudaDeviceSynchronize() {
    return 0;
}
inline cudaError_t cudaPeekAtLastError() {
    return 0;
}
inline cudaError_t cudaGetLastError() {
    return 0;
}
/* ---- cuBLAS ---- */
typedef int cublasStatus_t;
typedef int cublasHandle_t;
typedef int cublasOperation_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_DEFAULT_MATH = 0 };
inline const char *cublasGetStatusString(cublasStatus_t) {
    return "emulated";
}
inline cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = 1;
    return 0;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t) {
    return 0;
}
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, int) {
    return 0;
}
/* column-major, as cuBLAS documents it: C (m, n) = alpha op(A) op(B) + beta C, beta 0
 * ignoring what C holds; the leading dimensions checked against the shapes */
inline cublasStatus_t cublasSgemm(cublasHandle_t, int ta, int tb, int m, int n, int k,
                                  const float *alpha, const float *A, int lda, const float *B,
                                  int ldb, const float *beta, float *C, int ldc) {
    if (ta == CUBLAS_OP_N && lda < m) abort();
    if (ta == CUBLAS_OP_T && lda < k) abort();
    if (tb == CUBLAS_OP_N && ldb < k) abort();
    if (tb == CUBLAS_OP_T && ldb < n) abort();
    if (ldc < m) abort();
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int l = 0; l < k; l++) {
                float a = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                float b = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                s += (double)a * b;
            }
            float *c = &C[i + (size_t)j * ldc];
            *c = (float)(*alpha * s + (*beta == 0.0f ? 0.0 : (double)*beta * *c));
        }
    return 0;
}
inline cublasStatus_t cublasSgeam(cublasHandle_t, int, int, int m, int n, const float *alpha,
                                  const float *A, int lda, const float *beta, const float *B,
                                  int ldb, float *C, int ldc) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
            C[i + (size_t)j * ldc] = *alpha * A[i + (size_t)j * lda] +
                                     (*beta == 0.0f ? 0.0f : *beta * B[i + (size_t)j * ldb]);
    return 0;
}
/* ---- half floats and bit casts ---- */
struct __half {
    uint16_t u;
};
inline __half __ushort_as_half(uint16_t u) {
    return {u};
}
inline float __half2float(__half h) {
    return finch_f16_to_f32_soft(h.u);
}
inline __half __float2half_rn(float f) {
    return {finch_f32_to_f16_soft(f)};
}
inline uint16_t __half_as_ushort(__half h) {
    return h.u;
}
inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#define __trap() abort()
typedef int cudaStream_t;

/* ---- NCCL, for scripts/cuda_emu_check.sh --nccl: a group is MPI_COMM_WORLD, and the sum
 * of device memory (host memory here) is MPI's, so ranks of an MPI job whose devices
 * are emulated sum their gradients through this path ---- */
#ifdef FINCH_NCCL_LINKED
#define OMPI_SKIP_MPICXX 1 /* the C API alone */
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
typedef int ncclResult_t;
typedef int ncclDataType_t;
typedef int ncclRedOp_t;
typedef int *ncclComm_t;
enum { ncclSuccess = 0, ncclFloat = 7, ncclSum = 0 };
struct ncclUniqueId {
    char internal[128];
};
inline ncclResult_t ncclGetUniqueId(ncclUniqueId *u) {
    memset(u, 7, sizeof *u);
    return 0;
}
inline ncclResult_t ncclCommInitRank(ncclComm_t *c, int n, ncclUniqueId u, int rank) {
    static int comm;
    int size = 0, me = -1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    if (size != n || me != rank || u.internal[0] != 7) return 1;
    *c = &comm;
    return 0;
}
inline ncclResult_t ncclCommDestroy(ncclComm_t) {
    return 0;
}
inline ncclResult_t ncclAllReduce(const void *s, void *r, size_t n, ncclDataType_t t,
                                  ncclRedOp_t op, ncclComm_t, cudaStream_t) {
    if (s != r || t != ncclFloat || op != ncclSum) return 1;
    return MPI_Allreduce(MPI_IN_PLACE, r, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) ? 1 : 0;
}
inline const char *ncclGetErrorString(ncclResult_t) {
    return "emulated NCCL error";
}
#endif

#endif /* FINCH_CUDA_EMU_H */
