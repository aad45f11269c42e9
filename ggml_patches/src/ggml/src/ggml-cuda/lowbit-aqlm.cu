// AQLM on CUDA. GEMV (a few tokens): one warp per output row, each lane decodes groups of 8 weights (the sum of M
// codewords, codebooks in shared memory when they fit) and dots them with every token. Prompts: the weight is
// decoded to F32 in the pool, then one cuBLAS SGEMM. The arithmetic is lowbit-aqlm-lanes.cuh's.

#include "lowbit-impl.cuh"
#include "lowbit-aqlm-lanes.cuh"

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

template <int M, int B>
static void aqlm_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                         ggml_tensor * dst) {
    const uint8_t * codes     = (const uint8_t *) src0->data;
    const half *    codebook  = (const half *) src0->src[GGML_LOWBIT_AQLM_CODEBOOK]->data;
    const half *    row_scale = (const half *) src0->src[GGML_LOWBIT_AQLM_ROW_SCALE]->data;
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
    ggml_cuda_lowbit_sgemm_decoded(ctx, weights.get(), src0, src1, dst);
}

static bool aqlm_supports(const ggml_lowbit_type_info * info) {
    return info->block_size == 8;
}

// the kernels take M and B as template parameters: one instance per AQLM type
static void aqlm_dispatch(ggml_backend_cuda_context & ctx, const ggml_lowbit_type_info * info, const ggml_tensor * src0,
                          const ggml_tensor * src1, ggml_tensor * dst) {
    const int M = info->aqlm.num_codebooks, B = info->aqlm.code_bits;
    if (M == 1 && B == 16) {
        aqlm_mul_mat<1, 16>(ctx, src0, src1, dst);
    } else if (M == 2 && B == 8) {
        aqlm_mul_mat<2, 8>(ctx, src0, src1, dst);
    } else if (M == 1 && B == 8) {
        aqlm_mul_mat<1, 8>(ctx, src0, src1, dst);
    } else {
        GGML_ABORT("no CUDA kernel for AQLM %dx%d", M, B);
    }
}

const ggml_cuda_lowbit_method ggml_cuda_lowbit_aqlm = { aqlm_supports, aqlm_dispatch };
