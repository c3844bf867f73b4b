/*
 * backend.cu: the CUDA backend's table and its device part. finch_cuda_backend makes the
 * process's context once (the first device, or with several processes on a machine the
 * local MPI rank's turn of them; a cuBLAS handle in its default math mode, so
 * no TF32, and the scratch buffer) and hands out the table, or says why it cannot: finch
 * built without CUDA is kernels/host.c's answer; here, no device, no usable driver, or a
 * failed allocation.
 *
 * The table holds every op but llama.cpp's numerics: matmul_q8, the attention over an f16
 * cache, rmsnorm_llamacpp, swiglu_llamacpp and the other _llamacpp ops are NULL.
 */
#include "kernels/cuda/cuda.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

finch_cuda_ctx finch_cuda;

void finch_cuda_matmul_init(void); /* matmul.cu */

void finch_cuda_fail(const char *file, int line, const char *what, const char *msg) {
    fprintf(stderr, "finch: CUDA error at %s:%d: %s: %s\n", file, line, what, msg);
    abort();
}

namespace {

void *dev_alloc(size_t bytes, const char *what, finch_err *err) {
    void *p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure does not stick; clear it */
        finch_err_set(err, FINCH_E_NOMEM, "out of device memory: %zu bytes for %s (%s)", bytes,
                      what, cudaGetErrorString(e));
        return nullptr;
    }
    return p;
}

void dev_free(void *p) {
    if (p) cudaFree(p);
}

finch_status copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, finch_err *err) {
    if (!bytes) return FINCH_OK;
    cudaError_t e = cudaMemcpy(dst, src, bytes, kind);
    if (e != cudaSuccess)
        return finch_err_set(err, FINCH_E_IO, "CUDA copy of %zu bytes %s the device: %s", bytes,
                             kind == cudaMemcpyHostToDevice ? "to" : "from", cudaGetErrorString(e));
    return FINCH_OK;
}

finch_status copy_in(void *dst, const void *src, size_t bytes, finch_err *err) {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, err);
}

finch_status copy_out(void *dst, const void *src, size_t bytes, finch_err *err) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, err);
}

void dev_zero(void *p, size_t bytes) {
    if (bytes) FINCH_CU(cudaMemset(p, 0, bytes));
}

void dev_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) FINCH_CU(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

finch_status dev_sync(finch_err *err) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess)
        return finch_err_set(err, FINCH_E_IO, "CUDA device error: %s", cudaGetErrorString(e));
    return FINCH_OK;
}

bool supports(finch_feature f, int arg) {
    switch (f) {
    case FINCH_FEATURE_WEIGHT_TYPE:
        return arg >= 0 && arg < FINCH_DTYPE_COUNT && finch_cuda_reads_type((finch_dtype)arg);
    case FINCH_FEATURE_ATTN_PREFIX:
        return false;
    case FINCH_FEATURE_BF16:
        return false;
    default:
        return false;
    }
}

char name[300]; /* "cuda (the device's name)" */

finch_backend make_table() {
    finch_backend be = {};
    be.name = name;
    be.matmul = finch_cuda_matmul;
    be.embed = finch_cuda_embed;
    be.rmsnorm_forward = finch_cuda_rmsnorm_forward;
    be.rope_forward = finch_cuda_rope_forward;
    be.attention_forward = finch_cuda_attention_forward;
    be.to_f16 = finch_cuda_to_f16;
    be.swiglu_forward = finch_cuda_swiglu_forward;
    be.add = finch_cuda_add;
    be.scale = finch_cuda_scale;
    be.geglu_forward = finch_cuda_geglu_forward;
    be.geglu_backward = finch_cuda_geglu_backward;
    be.gemm = finch_cuda_gemm;
    be.scale_cols = finch_cuda_scale_cols;
    be.col_dot = finch_cuda_col_dot;
    be.dropout_forward = finch_cuda_dropout_forward;
    be.dropout_backward = finch_cuda_dropout_backward;
    be.matmul_backward_input = finch_cuda_matmul_backward_input;
    be.matmul_backward_weight = finch_cuda_matmul_backward_weight;
    be.embed_backward = finch_cuda_embed_backward;
    be.rmsnorm_backward = finch_cuda_rmsnorm_backward;
    be.rope_backward = finch_cuda_rope_backward;
    be.attention_forward_train = finch_cuda_attention_forward_train;
    be.attention_backward = finch_cuda_attention_backward;
    be.swiglu_backward = finch_cuda_swiglu_backward;
    be.softmax_xent = finch_cuda_softmax_xent;
    be.layernorm_forward = finch_cuda_layernorm_forward;
    be.layernorm_backward = finch_cuda_layernorm_backward;
    be.gelu_forward = finch_cuda_gelu_forward;
    be.gelu_backward = finch_cuda_gelu_backward;
    be.adamw_step = finch_cuda_adamw_step;
    be.device = true;
    be.supports = supports;
    be.alloc = dev_alloc;
    be.free = dev_free;
    be.copy_in = copy_in;
    be.copy_out = copy_out;
    be.zero = dev_zero;
    be.copy = dev_copy;
#ifdef FINCH_HAVE_NCCL
    if (finch_cuda_nccl_load()) {
        be.group_id = finch_cuda_group_id;
        be.group_join = finch_cuda_group_join;
        be.group_sum = finch_cuda_group_sum;
    }
#endif
    be.sync = dev_sync;
    return be;
}

/* Made once per process; what failed is kept and given to every later caller. */
pthread_once_t once = PTHREAD_ONCE_INIT;
finch_backend table;
finch_err init_err;

void init(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        /* without a GPU the runtime finds no driver, and says the driver is too old */
        bool no_driver = e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice;
        finch_err_set(&init_err, FINCH_E_UNSUPPORTED, "no CUDA device: %s%s",
                      e != cudaSuccess ? cudaGetErrorString(e) : "the driver lists none",
                      no_driver ? " (no NVIDIA GPU and driver here, or a driver older than "
                                  "the CUDA runtime finch was built with)"
                                : "");
        return;
    }
    /* several processes on one machine (mpirun) take its devices in turn by local rank */
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (!local) local = getenv("MPI_LOCALRANKID");
    finch_cuda.device = local ? (int)(strtoul(local, nullptr, 10) % (unsigned long)n) : 0;
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(finch_cuda.device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, finch_cuda.device)) != cudaSuccess) {
        finch_err_set(&init_err, FINCH_E_UNSUPPORTED, "CUDA device %d cannot be used: %s",
                      finch_cuda.device, cudaGetErrorString(e));
        return;
    }
    finch_cuda.sm_count = prop.multiProcessorCount;
    cublasStatus_t s = cublasCreate(&finch_cuda.blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        finch_err_set(&init_err, FINCH_E_UNSUPPORTED, "cuBLAS cannot start on %s: %s", prop.name,
                      cublasGetStatusString(s));
        return;
    }
    /* the default math mode: f32 products stay f32 (no TF32 tensor cores) */
    FINCH_CUBLAS(cublasSetMathMode(finch_cuda.blas, CUBLAS_DEFAULT_MATH));
    if (!(finch_cuda.scratch =
              dev_alloc(FINCH_CUDA_SCRATCH, "the CUDA backend's scratch", &init_err))) {
        cublasDestroy(finch_cuda.blas);
        return;
    }
    finch_cuda_matmul_init();
    snprintf(name, sizeof name, "cuda %d (%s)", finch_cuda.device, prop.name);
    table = make_table();
}

} // namespace

extern "C" const finch_backend *finch_cuda_backend(finch_err *err) {
    pthread_once(&once, init);
    if (init_err.code != FINCH_OK) {
        finch_err_set(err, init_err.code, "%s", init_err.msg);
        return nullptr;
    }
    return &table;
}
