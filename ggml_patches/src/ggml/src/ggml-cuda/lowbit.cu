// CUDA MUL_MAT for the lowbit-gguf types. Two paths:
//  - GEMV (up to LOWBIT_GEMV_MAX_TOKENS tokens): one warp per output row. AQLM: each lane decodes groups of 8
//    weights (the sum of M codewords, codebooks in shared memory when they fit) and dots them with every
//    token. PTQ1.61: the inputs are first gathered into the rows' channel order (salient channels first,
//    the others times their column scale); each lane then takes sign bytes (8 weights of a*s+m) and
//    salient code bytes (2 weights of scale*q+min).
//  - prompts: the weight is decoded to F32 in the pool, then one cuBLAS SGEMM with all tokens.
// The CPU kernels (ggml-cpu/lowbit-cpu.c) and the Python reference decode define the arithmetic; lowbit-lanes.cuh
// holds this file's, which the test suite checks on the CPU.

#include "lowbit.cuh"

#include "ggml-lowbit.h"
#include "lowbit-lanes.cuh"

#define SHARED_CODEBOOK_BYTES (32 * 1024)

template <int M, int B, bool shared_codebook>
static __global__ void aqlm_gemv(const uint8_t * codes, const size_t row_bytes, const half * codebook,
                                 const half * row_scale, const float * x, const int64_t x_stride, float * dst,
                                 const int64_t dst_stride, const int64_t n_rows, const int64_t n_blocks,
                                 const int n_tokens) {
    extern __shared__ int4 smem[];
    const half * cb = codebook;
    if constexpr (shared_codebook) {
        const int n = M * (1 << B) * 8 * sizeof(half) / sizeof(int4);
        for (int i = threadIdx.y * WARP_SIZE + threadIdx.x; i < n; i += blockDim.x * blockDim.y) {
            smem[i] = ((const int4 *) codebook)[i];
        }
        __syncthreads();
        cb = (const half *) smem;
    }
    const int64_t r = (int64_t) blockIdx.x * blockDim.y + threadIdx.y;
    if (r >= n_rows) {
        return;
    }
    float acc[LOWBIT_GEMV_MAX_TOKENS] = { 0.0f };
    aqlm_gemv_lane<M, B>(codes + r * row_bytes, cb, x, x_stride, n_blocks, n_tokens, threadIdx.x, acc);
    const float scale = __half2float(row_scale[r]);
    for (int t = 0; t < n_tokens; ++t) {
        const float sum = warp_reduce_sum(acc[t]);
        if (threadIdx.x == 0) {
            dst[t * dst_stride + r] = sum * scale;
        }
    }
}

template <int M, int B>
static __global__ void aqlm_decode(const uint8_t * codes, const size_t row_bytes, const half * codebook,
                                   const half * row_scale, float * out, const int64_t n_rows, const int64_t n_blocks) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;  // one block of 8 weights per thread
    if (i >= n_rows * n_blocks) {
        return;
    }
    float w[8];
    aqlm_decoded_group<M, B>(codes, row_bytes, codebook, row_scale, i / n_blocks, i % n_blocks, w);
    float4 * o = (float4 *) (out + i * 8);
    o[0]       = make_float4(w[0], w[1], w[2], w[3]);
    o[1]       = make_float4(w[4], w[5], w[6], w[7]);
}

// ---- PTQ1.61 ----

static __global__ void ptq161_positions(const uint8_t * mask, const int64_t d_in, const int64_t n_sal, int * pos) {
    const int64_t c = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (c < d_in) {
        pos[c] = ptq161_position(mask, c, n_sal);
    }
}

// g[t][pos[c]] = x[t][c] (times the column scale on binarized channels)
static __global__ void ptq161_gather(const int * pos, const half * col_scale, const float * x, const int64_t x_stride,
                                     const int64_t d_in, const int64_t n_sal, float * g) {
    const int64_t c = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    const int     t = blockIdx.y;
    if (c < d_in) {
        g[t * d_in + pos[c]] = ptq161_gathered(col_scale, x[t * x_stride + c], c, pos[c], n_sal);
    }
}

static __global__ void ptq161_gemv(const uint8_t * codes, const int64_t row_bytes, const uint8_t * spill,
                                   const int64_t spill_bytes, const half * params, const float * g,
                                   const int64_t d_in, const int64_t n_sal, float * dst, const int64_t dst_stride,
                                   const int64_t n_rows, const int n_tokens) {
    const int64_t r = (int64_t) blockIdx.x * blockDim.y + threadIdx.y;
    if (r >= n_rows) {
        return;
    }
    float acc[LOWBIT_GEMV_MAX_TOKENS] = { 0.0f };
    ptq161_gemv_lane(codes + r * row_bytes, spill + r * spill_bytes, row_bytes,
                     params + r * GGML_LOWBIT_PTQ161_ROW_PARAMS_N, g, d_in, n_sal, n_tokens, threadIdx.x, acc);
    for (int t = 0; t < n_tokens; ++t) {
        const float sum = warp_reduce_sum(acc[t]);
        if (threadIdx.x == 0) {
            dst[t * dst_stride + r] = sum;
        }
    }
}

// one weight per thread, in the original channel order (as the C reference decode)
static __global__ void ptq161_decode(const uint8_t * codes, const int64_t row_bytes, const uint8_t * spill,
                                     const int64_t spill_bytes, const half * params, const half * col_scale,
                                     const int * pos, const int64_t d_in, const int64_t n_sal, float * out,
                                     const int64_t n_rows) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_rows * d_in) {
        return;
    }
    const int64_t r = i / d_in, c = i % d_in;
    out[i] = ptq161_weight(codes + r * row_bytes, spill + r * spill_bytes, row_bytes,
                           params + r * GGML_LOWBIT_PTQ161_ROW_PARAMS_N, col_scale, pos[c], c, d_in, n_sal);
}

// dst^T = W x^T with W row-major [n_rows][d_in] (column-major d_in x n_rows) through cuBLAS
static void sgemm_decoded(ggml_backend_cuda_context & ctx, const float * weights, const ggml_tensor * src0,
                          const ggml_tensor * src1, ggml_tensor * dst) {
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasSetStream(ctx.cublas_handle(), ctx.stream()));
    CUBLAS_CHECK(cublasSgemm(ctx.cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, (int) src0->ne[1], (int) src1->ne[1],
                             (int) src0->ne[0], &alpha, weights, (int) src0->ne[0], (const float *) src1->data,
                             (int) (src1->nb[1] / sizeof(float)), &beta, (float *) dst->data,
                             (int) (dst->nb[1] / sizeof(float))));
}

static void ptq161_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                           ggml_tensor * dst) {
    const ggml_tensor * spill_t   = src0->src[GGML_LOWBIT_PTQ161_SALIENT_SPILL];
    const uint8_t *     mask      = (const uint8_t *) src0->src[GGML_LOWBIT_PTQ161_SALIENT_MASK]->data;
    const uint8_t *     spill     = (const uint8_t *) spill_t->data;
    const half *        params    = (const half *) src0->src[GGML_LOWBIT_PTQ161_ROW_PARAMS]->data;
    const half *        col_scale = (const half *) src0->src[GGML_LOWBIT_PTQ161_COL_SCALE]->data;
    const int64_t       d_in      = src0->ne[0];
    const int64_t       n_rows    = src0->ne[1];
    const int64_t       n_tokens  = src1->ne[1];
    const int64_t       n_sal     = ggml_lowbit_ptq161_n_salient(spill_t);
    cudaStream_t        stream    = ctx.stream();

    ggml_cuda_pool_alloc<int> pos(ctx.pool(), d_in);
    ptq161_positions<<<(d_in + 255) / 256, 256, 0, stream>>>(mask, d_in, n_sal, pos.get());
    CUDA_CHECK(cudaGetLastError());
    if (n_tokens <= LOWBIT_GEMV_MAX_TOKENS) {
        ggml_cuda_pool_alloc<float> g(ctx.pool(), n_tokens * d_in);
        ptq161_gather<<<dim3((d_in + 255) / 256, n_tokens), 256, 0, stream>>>(
            pos.get(), col_scale, (const float *) src1->data, src1->nb[1] / sizeof(float), d_in, n_sal, g.get());
        CUDA_CHECK(cudaGetLastError());
        const dim3 block(WARP_SIZE, 4);
        ptq161_gemv<<<(n_rows + block.y - 1) / block.y, block, 0, stream>>>(
            (const uint8_t *) src0->data, src0->nb[1], spill, spill_t->nb[1], params, g.get(), d_in, n_sal,
            (float *) dst->data, dst->nb[1] / sizeof(float), n_rows, (int) n_tokens);
        CUDA_CHECK(cudaGetLastError());
        return;
    }
    ggml_cuda_pool_alloc<float> weights(ctx.pool(), n_rows * d_in);
    ptq161_decode<<<(n_rows * d_in + 255) / 256, 256, 0, stream>>>((const uint8_t *) src0->data, src0->nb[1], spill,
                                                                   spill_t->nb[1], params, col_scale, pos.get(), d_in,
                                                                   n_sal, weights.get(), n_rows);
    CUDA_CHECK(cudaGetLastError());
    sgemm_decoded(ctx, weights.get(), src0, src1, dst);
}

bool ggml_cuda_lowbit_supports_mul_mat(const ggml_tensor * src0, const ggml_tensor * src1) {
    const ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(src0->type);
    const bool kernel = info != nullptr && ((info->method == GGML_LOWBIT_METHOD_AQLM && info->block_size == 8) ||
                                            info->method == GGML_LOWBIT_METHOD_PTQ161);
    return kernel && src1->type == GGML_TYPE_F32 && src1->ne[2] * src1->ne[3] == 1 && src0->ne[2] * src0->ne[3] == 1 &&
           src1->nb[1] % 16 == 0;  // float4 loads of activations
}

template <int M, int B>
static void aqlm_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                         ggml_tensor * dst) {
    const uint8_t * codes     = (const uint8_t *) src0->data;
    const half *    codebook  = (const half *) src0->src[0]->data;
    const half *    row_scale = (const half *) src0->src[1]->data;
    const int64_t   n_rows    = src0->ne[1];
    const int64_t   n_blocks  = src0->ne[0] / 8;
    const int64_t   n_tokens  = src1->ne[1];
    cudaStream_t    stream    = ctx.stream();

    if (n_tokens <= LOWBIT_GEMV_MAX_TOKENS) {
        const dim3   block(WARP_SIZE, 4);
        const dim3   grid((n_rows + block.y - 1) / block.y);
        const size_t cb_bytes = (size_t) M * (1 << B) * 8 * sizeof(half);
        const bool   shared   = cb_bytes <= SHARED_CODEBOOK_BYTES;
        auto *       gemv     = shared ? aqlm_gemv<M, B, true> : aqlm_gemv<M, B, false>;
        gemv<<<grid, block, shared ? cb_bytes : 0, stream>>>(
            codes, src0->nb[1], codebook, row_scale, (const float *) src1->data, src1->nb[1] / sizeof(float),
            (float *) dst->data, dst->nb[1] / sizeof(float), n_rows, n_blocks, (int) n_tokens);
        CUDA_CHECK(cudaGetLastError());
        return;
    }

    ggml_cuda_pool_alloc<float> weights(ctx.pool(), n_rows * n_blocks * 8);
    const int64_t               n_groups = n_rows * n_blocks;
    aqlm_decode<M, B><<<(n_groups + 255) / 256, 256, 0, stream>>>(codes, src0->nb[1], codebook, row_scale,
                                                                     weights.get(), n_rows, n_blocks);
    CUDA_CHECK(cudaGetLastError());
    sgemm_decoded(ctx, weights.get(), src0, src1, dst);
}

void ggml_cuda_lowbit_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                              ggml_tensor * dst) {
    char err[256];
    if (!ggml_lowbit_check_sides(src0, (const ggml_tensor * const *) src0->src, err, sizeof(err))) {
        GGML_ABORT("%s: %s", src0->name, err);
    }
    const ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(src0->type);
    for (int i = 0; i < info->n_sides; ++i) {
        // the loader places side tensors like their weight; a host copy here would be read from the device
        GGML_ASSERT(!ggml_backend_buffer_is_host(src0->src[i]->buffer) && "lowbit side tensor is not on the GPU");
    }
    GGML_ASSERT(ggml_cuda_lowbit_supports_mul_mat(src0, src1));
    switch (src0->type) {
        case GGML_TYPE_LOWBIT_AQLM_1X16: aqlm_mul_mat<1, 16>(ctx, src0, src1, dst); break;
        case GGML_TYPE_LOWBIT_AQLM_2X8:  aqlm_mul_mat<2, 8>(ctx, src0, src1, dst);  break;
        case GGML_TYPE_LOWBIT_AQLM_1X8:  aqlm_mul_mat<1, 8>(ctx, src0, src1, dst);  break;
        case GGML_TYPE_LOWBIT_PTQ161:    ptq161_mul_mat(ctx, src0, src1, dst);      break;
        default: GGML_ABORT("no CUDA kernel for %s", ggml_type_name(src0->type));
    }
}
