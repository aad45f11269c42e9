// PTQ1.61 matrix-vector product for Metal, the same scheme as the CUDA kernel (ggml-cuda/lowbit.cu):
//  1. kernel_lowbit_ptq161_gather: each thread places one input channel at its position in the rows' order
//     (salient channels first, then the others times their column scale);
//  2. kernel_lowbit_ptq161_gemv: one SIMD group (32 threads) per output row; each thread takes sign bytes
//     (8 weights of a*s+m) and salient code bytes (2 weights of scale*q+min) of the row's byte stream.
// Layout: lowbit_gguf/methods/ptq161.py (pack). Not yet wired into ggml-metal's pipeline table (that needs
// an Apple toolchain); until then patch 0006 makes the Metal backend decline lowbit weights, which run on
// the CPU kernels. The arithmetic is compiled as C++ and checked against Python (tests/metal_shim/).

#ifdef __METAL_VERSION__
#include <metal_stdlib>
using namespace metal;
#endif

struct lowbit_ptq161_args {
    int64_t  n_rows;
    int64_t  d_in;
    int64_t  n_sal;        // salient channels
    uint64_t row_bytes;    // d_in / 8
    uint64_t spill_bytes;  // 3 * n_sal / 8
};

// position of channel c in the rows' order
inline int64_t lowbit_ptq161_position(device const uchar * mask, int64_t c, int64_t n_sal) {
    int64_t before = 0;  // salient channels before c
    for (int64_t i = 0; i < c / 8; ++i) {
        before += popcount((uint) mask[i]);
    }
    before += popcount((uint) (mask[c / 8] & ((1u << (c % 8)) - 1)));
    return (mask[c / 8] >> (c % 8) & 1) ? before : n_sal + c - before;
}

// the gathered input value of channel c
inline float lowbit_ptq161_gathered(device const half * col_scale, device const float * x, int64_t c, int64_t pos,
                                    int64_t n_sal) {
    return pos < n_sal ? x[c] : x[c] * (float) col_scale[c];
}

// this thread's share of the row's dot product with the gathered input g
inline float lowbit_ptq161_lane_partial(device const uchar * codes, device const uchar * spill,
                                        device const half * params, device const float * g,
                                        constant lowbit_ptq161_args & args, int64_t r, int lane) {
    device const uchar * row       = codes + r * args.row_bytes;
    device const uchar * row_spill = spill + r * args.spill_bytes;
    device const half *  p         = params + r * 4;
    const float a = (float) p[0], m = (float) p[1], scale = (float) p[2], lo = (float) p[3];
    const int64_t sign_bytes = (args.d_in - args.n_sal) / 8;
    float acc = 0.0f;
    for (int64_t b = lane; b < sign_bytes; b += 32) {
        for (int i = 0; i < 8; ++i) {
            acc += ((row[b] >> i & 1) ? m + a : m - a) * g[args.n_sal + b * 8 + i];
        }
    }
    for (int64_t k = lane; k < args.n_sal / 2; k += 32) {
        const int64_t byte = sign_bytes + k;
        const int     pair = byte < (int64_t) args.row_bytes ? row[byte] : row_spill[byte - (int64_t) args.row_bytes];
        acc += (scale * (float) (pair & 15) + lo) * g[2 * k] + (scale * (float) (pair >> 4) + lo) * g[2 * k + 1];
    }
    return acc;
}

#ifdef __METAL_VERSION__
kernel void kernel_lowbit_ptq161_gather(
        device const uchar * mask      [[buffer(0)]],
        device const half  * col_scale [[buffer(1)]],
        device const float * x         [[buffer(2)]],
        device       float * g         [[buffer(3)]],
        constant lowbit_ptq161_args & args [[buffer(4)]],
        uint c [[thread_position_in_grid]]) {
    if ((int64_t) c >= args.d_in) {
        return;
    }
    const int64_t pos = lowbit_ptq161_position(mask, c, args.n_sal);
    g[pos] = lowbit_ptq161_gathered(col_scale, x, c, pos, args.n_sal);
}

kernel void kernel_lowbit_ptq161_gemv(
        device const uchar * codes  [[buffer(0)]],
        device const uchar * spill  [[buffer(1)]],
        device const half  * params [[buffer(2)]],
        device const float * g      [[buffer(3)]],
        device       float * dst    [[buffer(4)]],
        constant lowbit_ptq161_args & args [[buffer(5)]],
        uint row  [[threadgroup_position_in_grid]],
        uint lane [[thread_index_in_simdgroup]]) {
    if ((int64_t) row >= args.n_rows) {
        return;
    }
    const float sum = simd_sum(lowbit_ptq161_lane_partial(codes, spill, params, g, args, row, lane));
    if (lane == 0) {
        dst[row] = sum;
    }
}
#endif
