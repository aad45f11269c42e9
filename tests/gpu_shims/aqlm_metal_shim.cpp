// Runs the Metal AQLM GEMV's arithmetic on the CPU: 32 lanes per row, their partials summed like simd_sum.
#include "metal_shim.h"

#include "lowbit-aqlm.metal"

template <int M, int B>
static void gemv(const uchar * codes, const half * codebook, const half * row_scale, const float * x, float * dst,
                 const lowbit_aqlm_args & args) {
    for (int64_t r = 0; r < args.n_rows; ++r) {
        float sum = 0.0f;
        for (int lane = 0; lane < 32; ++lane) {
            sum += lowbit_aqlm_lane_partial<M, B>(codes, codebook, x, args, r, lane);
        }
        dst[r] = sum * (float) row_scale[r];
    }
}

extern "C" int shim_aqlm_gemv(int m, int b, const uint8_t * codes, const uint16_t * codebook,
                              const uint16_t * row_scale, const float * x, float * dst, int64_t n_rows,
                              int64_t n_blocks, uint64_t row_bytes) {
    const lowbit_aqlm_args args = { n_rows, n_blocks, row_bytes };
    const half * cb = (const half *) codebook;
    const half * sc = (const half *) row_scale;
    if (m == 1 && b == 16) {
        gemv<1, 16>(codes, cb, sc, x, dst, args);
    } else if (m == 2 && b == 8) {
        gemv<2, 8>(codes, cb, sc, x, dst, args);
    } else if (m == 1 && b == 8) {
        gemv<1, 8>(codes, cb, sc, x, dst, args);
    } else {
        return -1;
    }
    return 0;
}
