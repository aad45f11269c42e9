// Runs the Metal PTQ1.61 kernels' arithmetic on the CPU: the gather for every channel, then 32 lanes per row
// with their partials summed like simd_sum.
#include "metal_shim.h"

#include <vector>

#include "lowbit-ptq161.metal"

extern "C" int shim_ptq161_gemv(const uint8_t * codes, const uint8_t * spill, const uint16_t * params,
                                const uint8_t * mask, const uint16_t * col_scale, const float * x, float * dst,
                                int64_t n_rows, int64_t d_in, int64_t n_sal) {
    const lowbit_ptq161_args args = { n_rows, d_in, n_sal, (uint64_t) d_in / 8, (uint64_t) (3 * n_sal / 8) };
    const half *             cs   = (const half *) col_scale;
    std::vector<float>       g(d_in);
    for (int64_t c = 0; c < d_in; ++c) {
        const int64_t pos = lowbit_ptq161_position(mask, c, n_sal);
        g[pos] = lowbit_ptq161_gathered(cs, x, c, pos, n_sal);
    }
    for (int64_t r = 0; r < n_rows; ++r) {
        float sum = 0.0f;
        for (int lane = 0; lane < 32; ++lane) {
            sum += lowbit_ptq161_lane_partial(codes, spill, (const half *) params, g.data(), args, r, lane);
        }
        dst[r] = sum;
    }
    return 0;
}
