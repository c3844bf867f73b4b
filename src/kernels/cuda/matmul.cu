/*
 * matmul.cu: products with stored weights on the device. A band of weight rows is
 * dequantized to f32 into the scratch buffer by one kernel (each thread one element, the
 * formulas of core/quant.c in the same f32 order, so the values are the host's bits),
 * then cuBLAS multiplies it in f32 (cublasSgemm, no TF32): only the summation order
 * differs from the CPU's GEMM. Every storage type with a host dequantizer is read: f32,
 * f16, bf16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, NF4.
 *
 * Row-major (T, n) arrays are column-major (n, T) ones to cuBLAS, so y = x W^T is
 * y^T = W x^T with W's band read transposed. Bands run in order and the input gradient's
 * bands accumulate one after another (beta 1), so results are the same every run.
 *
 * Not done: bf16 products (ws->bf16 is ignored: supports(FINCH_FEATURE_BF16) is false),
 * and dequantizing straight into a fused GEMM (one pass over the weight instead of two).
 */
#include "kernels/cuda/cuda.h"

#include <cuda_fp16.h>

namespace {

__device__ __forceinline__ uint16_t ld16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}
__device__ __forceinline__ uint32_t ld32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
__device__ __forceinline__ float h2f(const uint8_t *p) {
    return __half2float(__ushort_as_half(ld16(p)));
}
__device__ __forceinline__ float f32at(const uint8_t *p) {
    return __uint_as_float(ld32(p));
}

/* 6-bit scale and minimum of sub-block j of a Q4_K/Q5_K super-block (quant.c k_scale_min) */
__device__ __forceinline__ void k_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

__constant__ float nf4_code[16];

/* Element i of a stored row, as core/quant.c's dequantizer of the type computes it. The
 * byte offsets are those of the block structs in quant.h. */
__device__ float dq_elem(int type, const uint8_t *row, int64_t i) {
    switch (type) {
    case FINCH_DTYPE_F32:
        return f32at(row + 4 * i);
    case FINCH_DTYPE_F16:
        return h2f(row + 2 * i);
    case FINCH_DTYPE_BF16:
        return __uint_as_float((uint32_t)ld16(row + 2 * i) << 16);
    case FINCH_DTYPE_Q4_0: {
        const uint8_t *b = row + (i / QK) * 18;
        int j = (int)(i % QK), q = j < 16 ? b[2 + j] & 0x0f : b[2 + j - 16] >> 4;
        return (float)(q - 8) * h2f(b);
    }
    case FINCH_DTYPE_Q4_1: {
        const uint8_t *b = row + (i / QK) * 20;
        int j = (int)(i % QK), q = j < 16 ? b[4 + j] & 0x0f : b[4 + j - 16] >> 4;
        return (float)q * h2f(b) + h2f(b + 2);
    }
    case FINCH_DTYPE_Q5_0: {
        const uint8_t *b = row + (i / QK) * 22;
        int j = (int)(i % QK), q = j < 16 ? b[6 + j] & 0x0f : b[6 + j - 16] >> 4;
        q |= (int)((ld32(b + 2) >> j) & 1) << 4;
        return (float)(q - 16) * h2f(b);
    }
    case FINCH_DTYPE_Q5_1: {
        const uint8_t *b = row + (i / QK) * 24;
        int j = (int)(i % QK), q = j < 16 ? b[8 + j] & 0x0f : b[8 + j - 16] >> 4;
        q |= (int)((ld32(b + 4) >> j) & 1) << 4;
        return (float)q * h2f(b) + h2f(b + 2);
    }
    case FINCH_DTYPE_Q8_0: {
        const uint8_t *b = row + (i / QK) * 34;
        return (float)(int8_t)b[2 + i % QK] * h2f(b);
    }
    case FINCH_DTYPE_Q2_K: { /* scales[16] qs[64] d dmin */
        const uint8_t *b = row + (i / QK_K) * 84;
        int e = (int)(i % QK_K), h = e / 128, w = e % 128, p = w / 32, g = (w % 32) / 16;
        int l = w % 16, sc = b[h * 8 + p * 2 + g];
        float dl = h2f(b + 80) * (float)(sc & 0x0f), ml = h2f(b + 82) * (float)(sc >> 4);
        return dl * (float)((b[16 + h * 32 + 16 * g + l] >> (2 * p)) & 3) - ml;
    }
    case FINCH_DTYPE_Q3_K: { /* hmask[32] qs[64] scales[12] d */
        const uint8_t *b = row + (i / QK_K) * 110, *sb = b + 96;
        int e = (int)(i % QK_K), h = e / 128, w = e % 128, j = w / 32, g = (w % 32) / 16;
        int k = 16 * g + w % 16, s = h * 8 + j * 2 + g;
        int lo = s < 8 ? (sb[s] & 0x0f) : (sb[s - 8] >> 4);
        int hi = (sb[8 + s % 4] >> (2 * (s / 4))) & 3;
        float dl = h2f(b + 108) * (float)((lo | (hi << 4)) - 32);
        int v = ((b[32 + h * 32 + k] >> (2 * j)) & 3) - ((b[k] & (1 << (4 * h + j))) ? 0 : 4);
        return dl * (float)v;
    }
    case FINCH_DTYPE_Q4_K: { /* d dmin scales[12] qs[128] */
        const uint8_t *b = row + (i / QK_K) * 144;
        int e = (int)(i % QK_K), c = e / 64, hi = (e % 64) / 32, l = e % 32, sc, m;
        k_scale_min(2 * c + hi, b + 4, &sc, &m);
        float d1 = h2f(b) * (float)sc, m1 = h2f(b + 2) * (float)m;
        uint8_t q = b[16 + c * 32 + l];
        return d1 * (float)(hi ? q >> 4 : q & 0x0f) - m1;
    }
    case FINCH_DTYPE_Q5_K: { /* d dmin scales[12] qh[32] qs[128] */
        const uint8_t *b = row + (i / QK_K) * 176;
        int e = (int)(i % QK_K), c = e / 64, hi = (e % 64) / 32, l = e % 32, sc, m;
        k_scale_min(2 * c + hi, b + 4, &sc, &m);
        float d1 = h2f(b) * (float)sc, m1 = h2f(b + 2) * (float)m;
        uint8_t q = b[48 + c * 32 + l], u = (uint8_t)((hi ? 2u : 1u) << (2 * c));
        return d1 * (float)((hi ? q >> 4 : q & 0x0f) + ((b[16 + l] & u) ? 16 : 0)) - m1;
    }
    case FINCH_DTYPE_Q6_K: { /* ql[128] qh[64] scales[16] d */
        const uint8_t *b = row + (i / QK_K) * 210;
        int e = (int)(i % QK_K), h = e / 128, w = e % 128, part = w / 32, l = w % 32;
        const uint8_t *ql = b + h * 64, *qh = b + 128 + h * 32;
        const int8_t *sc = (const int8_t *)(b + 192) + h * 8;
        int low = part & 1 ? ql[l + 32] : ql[l];
        low = part >= 2 ? low >> 4 : low & 0x0f;
        int q = (low | (((qh[l] >> (2 * part)) & 3) << 4)) - 32;
        return h2f(b + 208) * (float)sc[l / 16 + 2 * part] * (float)q;
    }
    case FINCH_DTYPE_NF4: { /* d f32, qs[32], the first element of a pair high */
        const uint8_t *b = row + (i / QK_NF4) * 36;
        int j = (int)(i % QK_NF4);
        uint8_t byte = b[4 + j / 2];
        return nf4_code[j & 1 ? byte & 0x0f : byte >> 4] * f32at(b);
    }
    default:
        __trap();
    }
    return 0.0f;
}

/* dst (n, K) = rows of the weight, dequantized: row r of dst is stored row ids[r] when ids
 * is set, else r0 + r. */
__global__ void dequant_rows(float *dst, const uint8_t *data, size_t row_bytes, int type,
                             int64_t r0, const int32_t *ids, int64_t n, int64_t K) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n * K;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = e / K, c = e % K, src = ids ? (int64_t)ids[r] : r0 + r;
        dst[e] = dq_elem(type, data + (size_t)src * row_bytes, c);
    }
}

/* Rows of w per band: as many as fill the scratch buffer. */
int64_t band_rows(const finch_weight *w) {
    int64_t n = (int64_t)(FINCH_CUDA_SCRATCH / sizeof(float)) / w->cols;
    FINCH_ASSERT(n >= 1);
    return n < w->rows ? n : w->rows;
}

float *dequant_band(const finch_weight *w, int64_t r0, int64_t n) {
    float *tile = (float *)finch_cuda.scratch;
    dequant_rows<<<finch_cuda_blocks(n * w->cols, 256), 256>>>(
        tile, (const uint8_t *)w->data, w->row_bytes, (int)w->type, r0, nullptr, n, w->cols);
    FINCH_CU_LAUNCHED();
    return tile;
}

bool nf4_loaded = false;

} // namespace

bool finch_cuda_reads_type(finch_dtype t) {
    switch (t) {
    case FINCH_DTYPE_F32:
    case FINCH_DTYPE_F16:
    case FINCH_DTYPE_BF16:
    case FINCH_DTYPE_Q4_0:
    case FINCH_DTYPE_Q4_1:
    case FINCH_DTYPE_Q5_0:
    case FINCH_DTYPE_Q5_1:
    case FINCH_DTYPE_Q8_0:
    case FINCH_DTYPE_Q2_K:
    case FINCH_DTYPE_Q3_K:
    case FINCH_DTYPE_Q4_K:
    case FINCH_DTYPE_Q5_K:
    case FINCH_DTYPE_Q6_K:
    case FINCH_DTYPE_NF4:
        return true;
    default:
        return false;
    }
}

/* Called once by the context's set-up (backend.cu) before any op. */
void finch_cuda_matmul_init(void) {
    if (!nf4_loaded) FINCH_CU(cudaMemcpyToSymbol(nf4_code, finch_nf4_code, sizeof nf4_code));
    nf4_loaded = true;
}

/* y^T (R, T) = W (R, K) x^T (K, T), one band of rows [r0, r0 + n) at a time:
 * y^T[r0 ..] = tile^T' . x^T, the tile (n, K) row-major being (K, n) column-major. */
void finch_cuda_matmul(float *y, const float *x, const finch_weight *w, int64_t T,
                       finch_workspace *ws) {
    (void)ws;
    FINCH_ASSERT(finch_cuda_reads_type(w->type));
    if (T <= 0) return;
    const float one = 1.0f, zero = 0.0f;
    const int64_t R = w->rows, K = w->cols, nb = band_rows(w);
    for (int64_t r0 = 0; r0 < R; r0 += nb) {
        int64_t n = R - r0 < nb ? R - r0 : nb;
        const float *tile = dequant_band(w, r0, n);
        FINCH_CUBLAS(cublasSgemm(finch_cuda.blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)T, (int)K,
                                 &one, tile, (int)K, x, (int)K, &zero, y + r0, (int)R));
    }
}

/* dx^T (K, T) = sum over bands of tile^T (K, n) . dy^T[r0 ..] (n, T). */
void finch_cuda_matmul_backward_input(float *dx, const float *dy, const finch_weight *w, int64_t T,
                                      finch_workspace *ws) {
    (void)ws;
    FINCH_ASSERT(finch_cuda_reads_type(w->type));
    if (T <= 0) return;
    const float one = 1.0f, zero = 0.0f;
    const int64_t R = w->rows, K = w->cols, nb = band_rows(w);
    if (R == 0) {
        FINCH_CU(cudaMemsetAsync(dx, 0, (size_t)(T * K) * sizeof(float), 0));
        return;
    }
    for (int64_t r0 = 0; r0 < R; r0 += nb) {
        int64_t n = R - r0 < nb ? R - r0 : nb;
        const float *tile = dequant_band(w, r0, n);
        FINCH_CUBLAS(cublasSgemm(finch_cuda.blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)T, (int)n,
                                 &one, tile, (int)K, dy + r0, (int)R, r0 ? &one : &zero, dx,
                                 (int)K));
    }
}

/* dw^T (K, R) += x^T (K, T) . dy (T, R), dy row-major (T, R) being dy^T column-major. */
void finch_cuda_matmul_backward_weight(float *dw, const float *dy, const float *x, int64_t T,
                                       int64_t rows, int64_t cols, finch_workspace *ws) {
    (void)ws;
    if (T <= 0 || rows <= 0 || cols <= 0) return;
    const float one = 1.0f;
    FINCH_CUBLAS(cublasSgemm(finch_cuda.blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)cols, (int)rows,
                             (int)T, &one, x, (int)cols, dy, (int)rows, &one, dw, (int)cols));
}

/* C (M, N) row-major is C^T (N, M) column-major = op(B)^T op(A)^T. */
void finch_cuda_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* an empty sum: C = beta C, as BLAS gives */
        const float zero = 0.0f;
        if (beta == 0.0f)
            FINCH_CU(cudaMemset2DAsync(C, (size_t)ldc * sizeof(float), 0, (size_t)N * sizeof(float),
                                       (size_t)M, 0));
        else
            FINCH_CUBLAS(cublasSgeam(finch_cuda.blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M,
                                     &beta, C, (int)ldc, &zero, C, (int)ldc, C, (int)ldc));
        return;
    }
    FINCH_CUBLAS(cublasSgemm(finch_cuda.blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                             ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, B,
                             (int)ldb, A, (int)lda, &beta, C, (int)ldc));
}

void finch_cuda_embed(float *x, const int32_t *ids, int64_t T, const finch_weight *emb) {
    FINCH_ASSERT(finch_cuda_reads_type(emb->type));
    if (T <= 0) return;
    dequant_rows<<<finch_cuda_blocks(T * emb->cols, 256), 256>>>(
        x, (const uint8_t *)emb->data, emb->row_bytes, (int)emb->type, 0, ids, T, emb->cols);
    FINCH_CU_LAUNCHED();
}
