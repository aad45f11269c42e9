// Runs the Metal VPTQ kernel's arithmetic on the CPU: 32 lanes per row group, their partials summed like simd_sum.
#include "metal_shim.h"

#include "lowbit-vptq.metal"

extern "C" int shim_vptq_gemv(const uint8_t * codes, int v, int64_t k, int64_t k_res, const uint16_t * codebook,
                              const uint16_t * res_codebook, const uint16_t * col_scale, const uint16_t * col_bias,
                              const float * x, float * dst, int64_t n_rows, int64_t d_in, uint64_t row_bytes) {
    if (v < 1 || v > LOWBIT_VPTQ_MAX_LEN || n_rows % v) {
        return -1;
    }
    int main_bits = 0, res_bits = 0;
    while ((int64_t) 1 << main_bits < k) {
        ++main_bits;
    }
    while ((int64_t) 1 << res_bits < k_res) {
        ++res_bits;
    }
    const lowbit_vptq_args args = { n_rows / v, d_in, row_bytes * v, v, main_bits + res_bits, main_bits,
                                    (uint) (k - 1) };
    for (int64_t g = 0; g < args.n_groups; ++g) {
        float sum[LOWBIT_VPTQ_MAX_LEN] = { 0.0f }, bias = 0.0f;
        for (int lane = 0; lane < 32; ++lane) {
            float acc[LOWBIT_VPTQ_MAX_LEN];
            bias += lowbit_vptq_lane_partial(codes, (const half *) codebook, (const half *) res_codebook,
                                             (const half *) col_scale, (const half *) col_bias, x, args, g, lane,
                                             acc);
            for (int i = 0; i < v; ++i) {
                sum[i] += acc[i];
            }
        }
        for (int i = 0; i < v; ++i) {
            dst[g * v + i] = sum[i] + bias;
        }
    }
    return 0;
}
