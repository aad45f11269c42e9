#pragma once

// The arithmetic of the lowbit CUDA kernels, one warp lane (or one decoded weight) at a time and free of launch
// details: lowbit.cu wraps each function in a kernel, and the test suite compiles this file as C++ on the CPU
// (tests/gpu_shims) to check it against the Python reference decode on the same bytes.
// From CUDA (common.cuh) or the shim: half, __half2float, int4, float4, __popc, WARP_SIZE, __device__,
// __forceinline__; from ggml-lowbit.h: GGML_LOWBIT_PTQ161_ROW_PARAMS_N.

#define LOWBIT_GEMV_MAX_TOKENS 8

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

// ---- PTQ1.61 (layout: lowbit_gguf/methods/ptq161.py, pack) ----

// position of channel c in the rows' order: salient channels first, then the others, each ascending
static __device__ __forceinline__ int ptq161_position(const uint8_t * mask, const int64_t c, const int64_t n_sal) {
    int before = 0;  // salient channels before c
    for (int64_t i = 0; i < c / 8; ++i) {
        before += __popc(mask[i]);
    }
    before += __popc(mask[c / 8] & ((1u << (c % 8)) - 1));
    return (mask[c / 8] >> (c % 8) & 1) ? before : (int) (n_sal + c - before);
}

// input v of channel c as the rows' order takes it at position p: times the column scale on binarized channels
static __device__ __forceinline__ float ptq161_gathered(const half * col_scale, const float v, const int64_t c,
                                                        const int p, const int64_t n_sal) {
    return p < n_sal ? v : v * __half2float(col_scale[c]);
}

// byte i of a row's stream: sign bytes, then salient code bytes; the row keeps row_bytes, the rest spilled
static __device__ __forceinline__ int ptq161_byte(const uint8_t * row, const uint8_t * spill, const int64_t row_bytes,
                                                  const int64_t i) {
    return i < row_bytes ? row[i] : spill[i - row_bytes];
}

// a lane's share of one row's dot products with n_tokens gathered tokens g [n_tokens][d_in]: sign bytes (8 weights
// of a*s+m) lane, lane + WARP_SIZE, ..., then salient code bytes (2 weights of scale*q+min) likewise
static __device__ __forceinline__ void ptq161_gemv_lane(const uint8_t * row, const uint8_t * row_spill,
                                                        const int64_t row_bytes, const half * params, const float * g,
                                                        const int64_t d_in, const int64_t n_sal, const int n_tokens,
                                                        const int lane, float acc[LOWBIT_GEMV_MAX_TOKENS]) {
    const float   a = __half2float(params[0]), m = __half2float(params[1]);
    const float   scale = __half2float(params[2]), lo = __half2float(params[3]);
    const int64_t sign_bytes = (d_in - n_sal) / 8;
    for (int64_t b = lane; b < sign_bytes; b += WARP_SIZE) {
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
    for (int64_t k = lane; k < n_sal / 2; k += WARP_SIZE) {
        const int   pair = ptq161_byte(row, row_spill, row_bytes, sign_bytes + k);
        const float w0 = scale * (float) (pair & 15) + lo, w1 = scale * (float) (pair >> 4) + lo;
        for (int t = 0; t < n_tokens; ++t) {
            acc[t] += w0 * g[t * d_in + 2 * k] + w1 * g[t * d_in + 2 * k + 1];
        }
    }
}

// the decoded weight of channel c (at position q in the rows' order) of a row, in the original channel order
static __device__ __forceinline__ float ptq161_weight(const uint8_t * row, const uint8_t * row_spill,
                                                      const int64_t row_bytes, const half * params,
                                                      const half * col_scale, const int q, const int64_t c,
                                                      const int64_t d_in, const int64_t n_sal) {
    if (q < n_sal) {
        const int pair = ptq161_byte(row, row_spill, row_bytes, (d_in - n_sal) / 8 + q / 2);
        return __half2float(params[2]) * (float) (q % 2 ? pair >> 4 : pair & 15) + __half2float(params[3]);
    }
    const int   j    = q - (int) n_sal;
    const float sign = (row[j / 8] >> (j % 8) & 1) ? 1.0f : -1.0f;
    return __half2float(col_scale[c]) * (__half2float(params[0]) * sign + __half2float(params[1]));
}
