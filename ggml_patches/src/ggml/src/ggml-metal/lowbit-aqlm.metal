// AQLM matrix-vector product for Metal: one SIMD group (32 threads) per output row; each thread takes the
// groups of 8 weights b = lane, lane + 32, ..., decodes each (the sum of M f16 codewords) and dots it with x.
//
// Not yet wired into ggml-metal's pipeline table (that needs an Apple toolchain to build and test); until
// then patch 0006 makes the Metal backend decline lowbit weights, which run on the CPU kernels. The
// arithmetic below is compiled as C++ and checked against the Python reference decode on any machine
// (tests/metal_shim/).

#ifdef __METAL_VERSION__
#include <metal_stdlib>
using namespace metal;
#endif

struct lowbit_aqlm_args {
    int64_t n_rows;
    int64_t n_blocks;   // groups of 8 weights per row
    uint64_t row_bytes;
};

// code m of group b of a row: little-endian, B bits (8 or 16)
template <int M, int B>
inline int lowbit_aqlm_code(device const uchar * row, int64_t b, int m) {
    if (B == 8) {
        return row[b * M + m];
    }
    device const uchar * p = row + 2 * (b * M + m);
    return p[0] | (p[1] << 8);
}

// this thread's share of <row, x> before the row scale: groups lane, lane + 32, ...
template <int M, int B>
inline float lowbit_aqlm_lane_partial(device const uchar * codes, device const half * codebook,
                                      device const float * x, constant lowbit_aqlm_args & args, int64_t r,
                                      int lane) {
    device const uchar * row = codes + r * args.row_bytes;
    float acc = 0.0f;
    for (int64_t b = lane; b < args.n_blocks; b += 32) {
        float w[8] = { 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f };
        for (int m = 0; m < M; ++m) {
            device const half * word = codebook + ((int64_t) m * (1 << B) + lowbit_aqlm_code<M, B>(row, b, m)) * 8;
            for (int i = 0; i < 8; ++i) {
                w[i] += (float) word[i];
            }
        }
        for (int i = 0; i < 8; ++i) {
            acc += w[i] * x[b * 8 + i];
        }
    }
    return acc;
}

#ifdef __METAL_VERSION__
template <int M, int B>
kernel void kernel_lowbit_aqlm_gemv(
        device const uchar * codes     [[buffer(0)]],
        device const half  * codebook  [[buffer(1)]],
        device const half  * row_scale [[buffer(2)]],
        device const float * x         [[buffer(3)]],
        device       float * dst       [[buffer(4)]],
        constant lowbit_aqlm_args & args [[buffer(5)]],
        uint  row  [[threadgroup_position_in_grid]],
        uint  lane [[thread_index_in_simdgroup]]) {
    if ((int64_t) row >= args.n_rows) {
        return;
    }
    const float sum = simd_sum(lowbit_aqlm_lane_partial<M, B>(codes, codebook, x, args, row, lane));
    if (lane == 0) {
        dst[row] = sum * (float) row_scale[row];
    }
}

typedef decltype(kernel_lowbit_aqlm_gemv<2, 8>) lowbit_aqlm_gemv_t;
template [[host_name("kernel_lowbit_aqlm_gemv_1x16")]] kernel lowbit_aqlm_gemv_t kernel_lowbit_aqlm_gemv<1, 16>;
template [[host_name("kernel_lowbit_aqlm_gemv_2x8")]]  kernel lowbit_aqlm_gemv_t kernel_lowbit_aqlm_gemv<2, 8>;
template [[host_name("kernel_lowbit_aqlm_gemv_1x8")]]  kernel lowbit_aqlm_gemv_t kernel_lowbit_aqlm_gemv<1, 8>;
#endif
