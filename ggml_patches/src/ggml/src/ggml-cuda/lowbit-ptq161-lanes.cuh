#pragma once

#include "lowbit-lanes.cuh"

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
        const int   pair = ggml_lowbit_ptq161_stream_byte(row, row_spill, row_bytes, sign_bytes + k);
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
        const int pair = ggml_lowbit_ptq161_stream_byte(row, row_spill, row_bytes, (d_in - n_sal) / 8 + q / 2);
        return __half2float(params[2]) * (float) (q % 2 ? pair >> 4 : pair & 15) + __half2float(params[3]);
    }
    const int   j    = q - (int) n_sal;
    const float sign = (row[j / 8] >> (j % 8) & 1) ? 1.0f : -1.0f;
    return __half2float(col_scale[c]) * (__half2float(params[0]) * sign + __half2float(params[1]));
}
