// VPTQ matrix-vector product for Metal, the same scheme as the CUDA kernel (ggml-cuda/lowbit-vptq.cu): one SIMD
// group (32 threads) per row group of v rows; each thread takes input channels (an index, two f16 centroids, the
// channel's scale and bias) and accumulates the group's v outputs, which simd_sum then totals.
// Layout: lowbit_gguf/methods/vptq.py (pack). Not yet wired into ggml-metal's pipeline table (that needs an Apple
// toolchain); until then patch 0006 makes the Metal backend decline lowbit weights, which run on the CPU kernels.
// The arithmetic is compiled as C++ and checked against Python (tests/gpu_shims/).

#ifdef __METAL_VERSION__
#include <metal_stdlib>
using namespace metal;
#endif

#define LOWBIT_VPTQ_MAX_LEN 16  // longest vector a thread keeps

struct lowbit_vptq_args {
    int64_t  n_groups;     // rows / v
    int64_t  d_in;
    uint64_t group_bytes;  // v * row bytes: one group's index stream
    int      v, bits, main_bits;
    uint     mask;         // k - 1
};

// entry j of a group's stream: `bits` wide, little-endian bit order, main index in the low main_bits
inline uint lowbit_vptq_entry(device const uchar * stream, int64_t j, int bits) {
    const int64_t bit   = j * bits;
    const int     shift = (int) (bit & 7);
    const int     n     = (shift + bits + 7) >> 3;
    ulong         value = 0;
    for (int i = 0; i < n; ++i) {
        value |= (ulong) stream[(bit >> 3) + i] << (8 * i);
    }
    return (uint) ((value >> shift) & ((1ul << bits) - 1));
}

// this thread's share of group g's outputs (acc[0..v), before the bias term) and of <col_bias, x> (returned)
inline float lowbit_vptq_lane_partial(device const uchar * codes, device const half * cb, device const half * res,
                                      device const half * scale, device const half * bias, device const float * x,
                                      constant lowbit_vptq_args & args, int64_t g, int lane,
                                      thread float * acc) {
    device const uchar * stream   = codes + g * (int64_t) args.group_bytes;
    float                bias_acc = 0.0f;
    for (int i = 0; i < args.v; ++i) {
        acc[i] = 0.0f;
    }
    for (int64_t j = lane; j < args.d_in; j += 32) {
        const uint  e  = lowbit_vptq_entry(stream, j, args.bits);
        const float xs = x[j] * (float) scale[j];
        bias_acc += x[j] * (float) bias[j];
        device const half * c  = cb + (int64_t) (e & args.mask) * args.v;
        device const half * rc = res + (int64_t) (e >> args.main_bits) * args.v;
        for (int i = 0; i < args.v; ++i) {
            acc[i] += xs * ((float) c[i] + (float) rc[i]);
        }
    }
    return bias_acc;
}

#ifdef __METAL_VERSION__
kernel void kernel_lowbit_vptq_gemv(
        device const uchar * codes [[buffer(0)]],
        device const half  * cb    [[buffer(1)]],
        device const half  * res   [[buffer(2)]],
        device const half  * scale [[buffer(3)]],
        device const half  * bias  [[buffer(4)]],
        device const float * x     [[buffer(5)]],
        device       float * dst   [[buffer(6)]],
        constant lowbit_vptq_args & args [[buffer(7)]],
        uint group [[threadgroup_position_in_grid]],
        uint lane  [[thread_index_in_simdgroup]]) {
    if ((int64_t) group >= args.n_groups) {
        return;
    }
    float       acc[LOWBIT_VPTQ_MAX_LEN];
    const float b = simd_sum(lowbit_vptq_lane_partial(codes, cb, res, scale, bias, x, args, group, lane, acc));
    for (int i = 0; i < args.v; ++i) {
        const float sum = simd_sum(acc[i]);
        if (lane == 0) {
            dst[group * args.v + i] = sum + b;
        }
    }
}
#endif
