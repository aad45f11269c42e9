// CUDA MUL_MAT for the lowbit-gguf types. Two paths:
//  - GEMV (up to GEMV_MAX_TOKENS tokens): one warp per output row. AQLM: each lane decodes groups of 8
//    weights (the sum of M codewords, codebooks in shared memory when they fit) and dots them with every
//    token. PTQ1.61: the inputs are first gathered into the rows' channel order (salient channels first,
//    the others times their column scale); each lane then takes sign bytes (8 weights of a*s+m) and
//    salient code bytes (2 weights of scale*q+min).
//  - prompts: the weight is decoded to F32 in the pool, then one cuBLAS SGEMM with all tokens.
// The CPU kernels (ggml-cpu/lowbit-cpu.c) and the Python reference decode define the arithmetic.

#include "lowbit.cuh"

#include "ggml-lowbit.h"

#define GEMV_MAX_TOKENS 8
#define SHARED_CODEBOOK_BYTES (32 * 1024)

// code m of block b of a row: little-endian, B bits (8 or 16)
template <int M, int B> static __device__ __forceinline__ int aqlm_code(const uint8_t * row, int64_t b, int m) {
    if constexpr (B == 8) {
        return row[b * M + m];
    } else {
        const uint8_t * p = row + 2 * (b * M + m);
        return p[0] | (p[1] << 8);
    }
}

// the 8 weights of block b (before the row scale): sum over codebooks of one f16 codeword each
template <int M, int B>
static __device__ __forceinline__ void aqlm_group(const uint8_t * row, int64_t b, const half * codebook, float w[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        w[i] = 0.0f;
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
        const int4   raw  = *(const int4 *) (codebook + ((int64_t) m * (1 << B) + aqlm_code<M, B>(row, b, m)) * 8);
        const half * word = (const half *) &raw;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            w[i] += __half2float(word[i]);
        }
    }
}

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
    const uint8_t * row = codes + r * row_bytes;
    float           acc[GEMV_MAX_TOKENS] = { 0.0f };
    for (int64_t b = threadIdx.x; b < n_blocks; b += WARP_SIZE) {
        float w[8];
        aqlm_group<M, B>(row, b, cb, w);
        for (int t = 0; t < n_tokens; ++t) {
            const float4 x0 = *(const float4 *) (x + t * x_stride + b * 8);
            const float4 x1 = *(const float4 *) (x + t * x_stride + b * 8 + 4);
            acc[t] += w[0] * x0.x + w[1] * x0.y + w[2] * x0.z + w[3] * x0.w + w[4] * x1.x + w[5] * x1.y +
                      w[6] * x1.z + w[7] * x1.w;
        }
    }
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
    const int64_t r = i / n_blocks, b = i % n_blocks;
    float         w[8];
    aqlm_group<M, B>(codes + r * row_bytes, b, codebook, w);
    const float scale = __half2float(row_scale[r]);
    float4 *    o     = (float4 *) (out + r * n_blocks * 8 + b * 8);
    o[0]              = make_float4(w[0] * scale, w[1] * scale, w[2] * scale, w[3] * scale);
    o[1]              = make_float4(w[4] * scale, w[5] * scale, w[6] * scale, w[7] * scale);
}

// ---- PTQ1.61 (layout: lowbit_gguf/methods/ptq161.py, pack) ----

// position of channel c in the rows' order: salient channels first, then the others, each ascending
static __global__ void ptq161_positions(const uint8_t * mask, const int64_t d_in, const int64_t n_sal, int * pos) {
    const int64_t c = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d_in) {
        return;
    }
    int before = 0;  // salient channels before c
    for (int64_t i = 0; i < c / 8; ++i) {
        before += __popc(mask[i]);
    }
    before += __popc(mask[c / 8] & ((1u << (c % 8)) - 1));
    pos[c] = (mask[c / 8] >> (c % 8) & 1) ? before : (int) (n_sal + c - before);
}

// g[t][pos[c]] = x[t][c] (times the column scale on binarized channels)
static __global__ void ptq161_gather(const int * pos, const half * col_scale, const float * x, const int64_t x_stride,
                                     const int64_t d_in, const int64_t n_sal, float * g) {
    const int64_t c = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    const int     t = blockIdx.y;
    if (c >= d_in) {
        return;
    }
    const int   p = pos[c];
    const float v = x[t * x_stride + c];
    g[t * d_in + p] = p < n_sal ? v : v * __half2float(col_scale[c]);
}

// byte i of a row's stream: sign bytes, then salient code bytes; the row keeps row_bytes, the rest spilled
static __device__ __forceinline__ int ptq161_byte(const uint8_t * row, const uint8_t * spill, const int64_t row_bytes,
                                                  const int64_t i) {
    return i < row_bytes ? row[i] : spill[i - row_bytes];
}

static __global__ void ptq161_gemv(const uint8_t * codes, const int64_t row_bytes, const uint8_t * spill,
                                   const int64_t spill_bytes, const half * params, const float * g,
                                   const int64_t d_in, const int64_t n_sal, float * dst, const int64_t dst_stride,
                                   const int64_t n_rows, const int n_tokens) {
    const int64_t r = (int64_t) blockIdx.x * blockDim.y + threadIdx.y;
    if (r >= n_rows) {
        return;
    }
    const uint8_t * row        = codes + r * row_bytes;
    const uint8_t * row_spill  = spill + r * spill_bytes;
    const half *    p          = params + r * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
    const float     a = __half2float(p[0]), m = __half2float(p[1]), scale = __half2float(p[2]), lo = __half2float(p[3]);
    const int64_t   sign_bytes = (d_in - n_sal) / 8;
    float           acc[GEMV_MAX_TOKENS] = { 0.0f };
    for (int64_t b = threadIdx.x; b < sign_bytes; b += WARP_SIZE) {
        const int bits = row[b];
        float     w[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            w[i] = (bits >> i & 1) ? m + a : m - a;
        }
        for (int t = 0; t < n_tokens; ++t) {
            const float * xb = g + t * d_in + n_sal + b * 8;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                acc[t] += w[i] * xb[i];
            }
        }
    }
    for (int64_t k = threadIdx.x; k < n_sal / 2; k += WARP_SIZE) {
        const int   pair = ptq161_byte(row, row_spill, row_bytes, sign_bytes + k);
        const float w0 = scale * (float) (pair & 15) + lo, w1 = scale * (float) (pair >> 4) + lo;
        for (int t = 0; t < n_tokens; ++t) {
            acc[t] += w0 * g[t * d_in + 2 * k] + w1 * g[t * d_in + 2 * k + 1];
        }
    }
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
    const half *  p = params + r * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
    const int     q = pos[c];
    if (q < n_sal) {
        const int pair = ptq161_byte(codes + r * row_bytes, spill + r * spill_bytes, row_bytes, (d_in - n_sal) / 8 + q / 2);
        out[i] = __half2float(p[2]) * (float) (q % 2 ? pair >> 4 : pair & 15) + __half2float(p[3]);
    } else {
        const int   j    = q - (int) n_sal;
        const float sign = (codes[r * row_bytes + j / 8] >> (j % 8) & 1) ? 1.0f : -1.0f;
        out[i] = __half2float(col_scale[c]) * (__half2float(p[0]) * sign + __half2float(p[1]));
    }
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
    const ggml_tensor * spill_t   = src0->src[GGML_LOWBIT_PTQ161_SPILL];
    const uint8_t *     mask      = (const uint8_t *) src0->src[GGML_LOWBIT_PTQ161_MASK]->data;
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
    if (n_tokens <= GEMV_MAX_TOKENS) {
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

    if (n_tokens <= GEMV_MAX_TOKENS) {
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
