// Runs the CUDA kernels' arithmetic (lowbit-<method>-lanes.cuh) on the CPU as lowbit-<method>.cu's kernels
// combine it: for the GEMV, the 32 lanes of a row's warp in turn, their partials summed as warp_reduce_sum does;
// for the prompt path's decode, every group or weight.
#include "cuda_shim.h"

#include <vector>

#include "ggml-lowbit.h"
#include "lowbit-aqlm-lanes.cuh"
#include "lowbit-ptq161-lanes.cuh"
#include "lowbit-vptq-lanes.cuh"

// dst [n_tokens][n_rows] = W x for x [n_tokens][n_blocks * 8]; decoded [n_rows][n_blocks * 8] = W
template <int M, int B>
static void aqlm(const uint8_t * codes, size_t row_bytes, const half * codebook, const half * row_scale,
                 const float * x, int n_tokens, float * dst, float * decoded, int64_t n_rows, int64_t n_blocks) {
    for (int64_t r = 0; r < n_rows; ++r) {
        float sum[LOWBIT_GEMV_MAX_TOKENS] = { 0.0f };
        for (int lane = 0; lane < WARP_SIZE; ++lane) {
            float acc[LOWBIT_GEMV_MAX_TOKENS] = { 0.0f };
            aqlm_gemv_lane<M, B>(codes + r * row_bytes, codebook, x, n_blocks * 8, n_blocks, n_tokens, lane, acc);
            for (int t = 0; t < n_tokens; ++t) {
                sum[t] += acc[t];
            }
        }
        for (int t = 0; t < n_tokens; ++t) {
            dst[t * n_rows + r] = sum[t] * __half2float(row_scale[r]);
        }
        for (int64_t b = 0; b < n_blocks; ++b) {
            aqlm_decoded_group<M, B>(codes, row_bytes, codebook, row_scale, r, b, decoded + (r * n_blocks + b) * 8);
        }
    }
}

extern "C" int shim_cuda_aqlm(int m, int b, const uint8_t * codes, uint64_t row_bytes, const uint16_t * codebook,
                              const uint16_t * row_scale, const float * x, int n_tokens, float * dst, float * decoded,
                              int64_t n_rows, int64_t n_blocks) {
    if (n_tokens < 1 || n_tokens > LOWBIT_GEMV_MAX_TOKENS) {
        return -1;
    }
    const half * cb = (const half *) codebook;
    const half * sc = (const half *) row_scale;
    if (m == 1 && b == 16) {
        aqlm<1, 16>(codes, row_bytes, cb, sc, x, n_tokens, dst, decoded, n_rows, n_blocks);
    } else if (m == 2 && b == 8) {
        aqlm<2, 8>(codes, row_bytes, cb, sc, x, n_tokens, dst, decoded, n_rows, n_blocks);
    } else if (m == 1 && b == 8) {
        aqlm<1, 8>(codes, row_bytes, cb, sc, x, n_tokens, dst, decoded, n_rows, n_blocks);
    } else {
        return -1;
    }
    return 0;
}

// as shim_cuda_aqlm: positions and the gather for every channel and token, then the lanes; the decode per weight
extern "C" int shim_cuda_ptq161(const uint8_t * codes, const uint8_t * spill, const uint16_t * params,
                                const uint8_t * mask, const uint16_t * col_scale, const float * x, int n_tokens,
                                float * dst, float * decoded, int64_t n_rows, int64_t d_in, int64_t n_sal) {
    if (n_tokens < 1 || n_tokens > LOWBIT_GEMV_MAX_TOKENS) {
        return -1;
    }
    const int64_t    row_bytes = d_in / 8, spill_bytes = 3 * n_sal / 8;
    const half *     cs        = (const half *) col_scale;
    std::vector<int> pos(d_in);
    std::vector<float> g(n_tokens * d_in);
    for (int64_t c = 0; c < d_in; ++c) {
        pos[c] = ptq161_position(mask, c, n_sal);
        for (int t = 0; t < n_tokens; ++t) {
            g[t * d_in + pos[c]] = ptq161_gathered(cs, x[t * d_in + c], c, pos[c], n_sal);
        }
    }
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t * row       = codes + r * row_bytes;
        const uint8_t * row_spill = spill + r * spill_bytes;
        const half *    p         = (const half *) params + r * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
        float           sum[LOWBIT_GEMV_MAX_TOKENS] = { 0.0f };
        for (int lane = 0; lane < WARP_SIZE; ++lane) {
            float acc[LOWBIT_GEMV_MAX_TOKENS] = { 0.0f };
            ptq161_gemv_lane(row, row_spill, row_bytes, p, g.data(), d_in, n_sal, n_tokens, lane, acc);
            for (int t = 0; t < n_tokens; ++t) {
                sum[t] += acc[t];
            }
        }
        for (int t = 0; t < n_tokens; ++t) {
            dst[t * n_rows + r] = sum[t];
        }
        for (int64_t c = 0; c < d_in; ++c) {
            decoded[r * d_in + c] = ptq161_weight(row, row_spill, row_bytes, p, cs, pos[c], c, d_in, n_sal);
        }
    }
    return 0;
}

// as lowbit-vptq.cu: one warp per row group (its 32 lanes in turn, partials summed), tokens VPTQ_GEMV_TOKENS at a
// time; the decode per weight
extern "C" int shim_cuda_vptq(const uint8_t * codes, uint64_t row_bytes, int v, int64_t k, int64_t k_res,
                              const uint16_t * codebook, const uint16_t * res_codebook, const uint16_t * col_scale,
                              const uint16_t * col_bias, const float * x, int n_tokens, float * dst, float * decoded,
                              int64_t n_rows, int64_t d_in) {
    if (n_tokens < 1 || n_tokens > LOWBIT_GEMV_MAX_TOKENS || v < 1 || v > VPTQ_GEMV_MAX_LEN || n_rows % v) {
        return -1;
    }
    vptq_shape s;
    s.v = v;
    s.main_bits = ggml_lowbit_log2(k);
    s.bits      = s.main_bits + ggml_lowbit_log2(k_res);
    s.mask = (uint32_t) (k - 1);
    const half * cb = (const half *) codebook, * res = (const half *) res_codebook;
    const half * sc = (const half *) col_scale, * bi = (const half *) col_bias;
    for (int64_t g = 0; g < n_rows / v; ++g) {
        for (int t0 = 0; t0 < n_tokens; t0 += VPTQ_GEMV_TOKENS) {
            const int nt = n_tokens - t0 < VPTQ_GEMV_TOKENS ? n_tokens - t0 : VPTQ_GEMV_TOKENS;
            float sum[VPTQ_GEMV_TOKENS][VPTQ_GEMV_MAX_LEN] = { { 0.0f } };
            float bias_sum[VPTQ_GEMV_TOKENS] = { 0.0f };
            for (int lane = 0; lane < WARP_SIZE; ++lane) {
                float acc[VPTQ_GEMV_TOKENS][VPTQ_GEMV_MAX_LEN] = { { 0.0f } };
                float bias_acc[VPTQ_GEMV_TOKENS] = { 0.0f };
                vptq_gemv_lane(codes + g * v * row_bytes, s, cb, res, sc, bi, x + t0 * d_in, d_in, d_in, nt, lane,
                               acc, bias_acc);
                for (int t = 0; t < nt; ++t) {
                    bias_sum[t] += bias_acc[t];
                    for (int i = 0; i < v; ++i) {
                        sum[t][i] += acc[t][i];
                    }
                }
            }
            for (int t = 0; t < nt; ++t) {
                for (int i = 0; i < v; ++i) {
                    dst[(t0 + t) * n_rows + g * v + i] = sum[t][i] + bias_sum[t];
                }
            }
        }
    }
    for (int64_t r = 0; r < n_rows; ++r) {
        for (int64_t j = 0; j < d_in; ++j) {
            decoded[r * d_in + j] = vptq_weight(codes, row_bytes, s, cb, res, sc, bi, r, j);
        }
    }
    return 0;
}
