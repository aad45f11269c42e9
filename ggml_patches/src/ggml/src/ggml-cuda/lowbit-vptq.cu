// VPTQ on CUDA. GEMV (a few tokens): one warp per row group of v rows, each lane takes input channels (an index, two
// f16 centroids, the channel's scale) and accumulates the group's v outputs for up to VPTQ_GEMV_TOKENS tokens; the
// codebooks sit in shared memory when they fit (as VPTQ's own v2 kernel). Prompts, and vectors longer than
// VPTQ_GEMV_MAX_LEN: the weight is decoded to F32 in the pool, then one cuBLAS SGEMM. The arithmetic is
// lowbit-vptq-lanes.cuh's.

#include "lowbit-impl.cuh"
#include "lowbit-vptq-lanes.cuh"

#define VPTQ_SHARED_CODEBOOK_BYTES (32 * 1024)

template <bool shared_codebook>
static __global__ void vptq_gemv(const uint8_t * codes, const int64_t group_bytes, const vptq_shape s,
                                 const half * cb, const int64_t cb_halves, const half * res,
                                 const int64_t res_halves, const half * scale, const half * bias, const float * x,
                                 const int64_t x_stride, const int64_t d_in, float * dst, const int64_t dst_stride,
                                 const int64_t n_groups, const int n_tokens) {
    extern __shared__ half smem_vptq[];
    if constexpr (shared_codebook) {
        for (int64_t i = threadIdx.y * WARP_SIZE + threadIdx.x; i < cb_halves + res_halves;
             i += blockDim.x * blockDim.y) {
            smem_vptq[i] = i < cb_halves ? cb[i] : res[i - cb_halves];
        }
        __syncthreads();
        cb  = smem_vptq;
        res = smem_vptq + cb_halves;
    }
    const int64_t g = (int64_t) blockIdx.x * blockDim.y + threadIdx.y;
    if (g >= n_groups) {
        return;
    }
    float acc[VPTQ_GEMV_TOKENS][VPTQ_GEMV_MAX_LEN] = { { 0.0f } };
    float bias_acc[VPTQ_GEMV_TOKENS]              = { 0.0f };
    vptq_gemv_lane(codes + g * group_bytes, s, cb, res, scale, bias, x, x_stride, d_in, n_tokens, threadIdx.x, acc,
                   bias_acc);
    for (int t = 0; t < n_tokens; ++t) {
        const float b = warp_reduce_sum(bias_acc[t]);
        for (int i = 0; i < s.v; ++i) {
            const float sum = warp_reduce_sum(acc[t][i]);
            if (threadIdx.x == 0) {
                dst[t * dst_stride + g * s.v + i] = sum + b;
            }
        }
    }
}

static __global__ void vptq_decode(const uint8_t * codes, const size_t row_bytes, const vptq_shape s, const half * cb,
                                   const half * res, const half * scale, const half * bias, float * out,
                                   const int64_t n_rows, const int64_t d_in) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_rows * d_in) {
        out[i] = vptq_weight(codes, row_bytes, s, cb, res, scale, bias, i / d_in, i % d_in);
    }
}

static void vptq_mul_mat(ggml_backend_cuda_context & ctx, const ggml_lowbit_type_info * info, const ggml_tensor * src0,
                         const ggml_tensor * src1, ggml_tensor * dst) {
    GGML_UNUSED(info);
    const ggml_tensor * cb_t   = src0->src[GGML_LOWBIT_VPTQ_CODEBOOK];
    const ggml_tensor * res_t  = src0->src[GGML_LOWBIT_VPTQ_RES_CODEBOOK];
    const half *        cb     = (const half *) cb_t->data;
    const half *        res    = (const half *) res_t->data;
    const half *        scale  = (const half *) src0->src[GGML_LOWBIT_VPTQ_COL_SCALE]->data;
    const half *        bias   = (const half *) src0->src[GGML_LOWBIT_VPTQ_COL_BIAS]->data;
    const int64_t       d_in   = src0->ne[0];
    const int64_t       n_rows = src0->ne[1];
    const int64_t       n_tok  = src1->ne[1];
    vptq_shape          s;
    s.v         = (int) cb_t->ne[0];
    s.main_bits = ggml_lowbit_log2(cb_t->ne[1]);
    s.bits      = s.main_bits + ggml_lowbit_log2(res_t->ne[1]);
    s.mask      = (uint32_t) (cb_t->ne[1] - 1);
    cudaStream_t stream = ctx.stream();

    if (n_tok <= LOWBIT_GEMV_MAX_TOKENS && s.v <= VPTQ_GEMV_MAX_LEN) {
        const int64_t n_groups   = n_rows / s.v;
        const int64_t cb_halves  = cb_t->ne[0] * cb_t->ne[1];
        const int64_t res_halves = res_t->ne[0] * res_t->ne[1];
        const size_t  bytes      = (size_t) (cb_halves + res_halves) * sizeof(half);
        const bool    shared     = bytes <= VPTQ_SHARED_CODEBOOK_BYTES;
        const dim3    block(WARP_SIZE, 4);
        const dim3    grid((n_groups + block.y - 1) / block.y);
        auto *        gemv = shared ? vptq_gemv<true> : vptq_gemv<false>;
        for (int64_t t0 = 0; t0 < n_tok; t0 += VPTQ_GEMV_TOKENS) {
            const int nt = (int) (n_tok - t0 < VPTQ_GEMV_TOKENS ? n_tok - t0 : VPTQ_GEMV_TOKENS);
            gemv<<<grid, block, shared ? bytes : 0, stream>>>(
                (const uint8_t *) src0->data, (int64_t) src0->nb[1] * s.v, s, cb, cb_halves, res, res_halves, scale,
                bias, (const float *) ((const char *) src1->data + t0 * src1->nb[1]), src1->nb[1] / sizeof(float),
                d_in, (float *) ((char *) dst->data + t0 * dst->nb[1]), dst->nb[1] / sizeof(float), n_groups, nt);
            CUDA_CHECK(cudaGetLastError());
        }
        return;
    }
    ggml_cuda_pool_alloc<float> weights(ctx.pool(), n_rows * d_in);
    vptq_decode<<<(n_rows * d_in + 255) / 256, 256, 0, stream>>>((const uint8_t *) src0->data, src0->nb[1], s, cb, res,
                                                                 scale, bias, weights.get(), n_rows, d_in);
    CUDA_CHECK(cudaGetLastError());
    ggml_cuda_lowbit_sgemm_decoded(ctx, weights.get(), src0, src1, dst);
}

static bool vptq_supports(const ggml_lowbit_type_info * info) {
    GGML_UNUSED(info);
    return true;
}

const ggml_cuda_lowbit_method ggml_cuda_lowbit_vptq = { vptq_supports, vptq_mul_mat };
