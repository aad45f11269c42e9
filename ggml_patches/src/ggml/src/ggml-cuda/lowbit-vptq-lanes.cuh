#pragma once

#include "lowbit-lanes.cuh"

// ---- VPTQ (layout: lowbit_gguf/methods/vptq.py, pack; ggml-base: lowbit/vptq.c) ----

#define VPTQ_GEMV_TOKENS  4   // tokens one GEMV launch serves (more are served in launches of this many)
#define VPTQ_GEMV_MAX_LEN 16  // longest vector the GEMV keeps in registers (longer ones take the decode + cuBLAS)

struct vptq_shape {
    int      v, bits, main_bits;
    uint32_t mask;  // k - 1
};

// a lane's share of one row group's products with n_tokens tokens (channels lane, lane + WARP_SIZE, ...):
// acc[t][i] for the group's output i, before the bias term; bias_acc[t] its share of <col_bias, x_t>
static __device__ __forceinline__ void vptq_gemv_lane(const uint8_t * stream, const vptq_shape s, const half * cb,
                                                      const half * res, const half * scale, const half * bias,
                                                      const float * x, const int64_t x_stride, const int64_t d_in,
                                                      const int n_tokens, const int lane,
                                                      float acc[VPTQ_GEMV_TOKENS][VPTQ_GEMV_MAX_LEN],
                                                      float bias_acc[VPTQ_GEMV_TOKENS]) {
    for (int64_t j = lane; j < d_in; j += WARP_SIZE) {
        const uint32_t e  = ggml_lowbit_vptq_entry(stream, j, s.bits);
        const half *   c  = cb + (int64_t) (e & s.mask) * s.v;
        const half *   rc = res + (int64_t) (e >> s.main_bits) * s.v;
        const float    sj = __half2float(scale[j]), bj = __half2float(bias[j]);
        float          word[VPTQ_GEMV_MAX_LEN];
        for (int i = 0; i < s.v; ++i) {
            word[i] = __half2float(c[i]) + __half2float(rc[i]);
        }
        for (int t = 0; t < n_tokens; ++t) {
            const float xj = x[t * x_stride + j];
            const float xs = xj * sj;
            bias_acc[t] += xj * bj;
            for (int i = 0; i < s.v; ++i) {
                acc[t][i] += xs * word[i];
            }
        }
    }
}

// decoded weight (r, j): row r is output r % v of row group r / v, whose stream starts v * row_bytes * (r / v) in
static __device__ __forceinline__ float vptq_weight(const uint8_t * codes, const size_t row_bytes, const vptq_shape s,
                                                    const half * cb, const half * res, const half * scale,
                                                    const half * bias, const int64_t r, const int64_t j) {
    const int64_t   t      = r % s.v;
    const uint8_t * stream = codes + (r - t) * (int64_t) row_bytes;
    const uint32_t  e      = ggml_lowbit_vptq_entry(stream, j, s.bits);
    const float     c      = __half2float(cb[(int64_t) (e & s.mask) * s.v + t]);
    const float     rc     = __half2float(res[(int64_t) (e >> s.main_bits) * s.v + t]);
    return (c + rc) * __half2float(scale[j]) + __half2float(bias[j]);
}
