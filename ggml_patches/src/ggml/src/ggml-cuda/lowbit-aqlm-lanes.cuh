#pragma once

#include "lowbit-lanes.cuh"

// ---- AQLM (layout: lowbit_gguf/methods/aqlm.py, pack) ----

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

// a lane's share of one row's dot products with n_tokens tokens (blocks lane, lane + WARP_SIZE, ...), before the
// row scale; the warp's lanes sum to the row's results
template <int M, int B>
static __device__ __forceinline__ void aqlm_gemv_lane(const uint8_t * row, const half * codebook, const float * x,
                                                      const int64_t x_stride, const int64_t n_blocks,
                                                      const int n_tokens, const int lane,
                                                      float acc[LOWBIT_GEMV_MAX_TOKENS]) {
    for (int64_t b = lane; b < n_blocks; b += WARP_SIZE) {
        float w[8];
        aqlm_group<M, B>(row, b, codebook, w);
        for (int t = 0; t < n_tokens; ++t) {
            const float4 x0 = *(const float4 *) (x + t * x_stride + b * 8);
            const float4 x1 = *(const float4 *) (x + t * x_stride + b * 8 + 4);
            acc[t] += w[0] * x0.x + w[1] * x0.y + w[2] * x0.z + w[3] * x0.w + w[4] * x1.x + w[5] * x1.y +
                      w[6] * x1.z + w[7] * x1.w;
        }
    }
}

// the 8 decoded weights of block b of row r
template <int M, int B>
static __device__ __forceinline__ void aqlm_decoded_group(const uint8_t * codes, const size_t row_bytes,
                                                          const half * codebook, const half * row_scale,
                                                          const int64_t r, const int64_t b, float w[8]) {
    aqlm_group<M, B>(codes + r * row_bytes, b, codebook, w);
    const float scale = __half2float(row_scale[r]);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        w[i] *= scale;
    }
}
