// PTQ1.61 on CUDA. GEMV (a few tokens): the inputs are first gathered into the rows' channel order (salient
// channels first, the others times their column scale); one warp per output row, each lane then takes sign bytes
// (8 weights of a*s+m) and salient code bytes (2 weights of scale*q+min). Prompts: the weight is decoded to F32 in
// the pool, then one cuBLAS SGEMM. The arithmetic is lowbit-ptq161-lanes.cuh's.

#include "lowbit-impl.cuh"
#include "lowbit-ptq161-lanes.cuh"

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

static void ptq161_mul_mat(ggml_backend_cuda_context & ctx, const ggml_lowbit_type_info * info,
                           const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst) {
    GGML_UNUSED(info);
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
    ggml_cuda_lowbit_sgemm_decoded(ctx, weights.get(), src0, src1, dst);
}

static bool ptq161_supports(const ggml_lowbit_type_info * info) {
    GGML_UNUSED(info);
    return true;
}

const ggml_cuda_lowbit_method ggml_cuda_lowbit_ptq161 = { ptq161_supports, ptq161_mul_mat };
