#pragma once

// The arithmetic of the lowbit CUDA kernels, one warp lane (or one decoded weight) at a time and free of launch
// details, one header per method (lowbit-<method>-lanes.cuh): lowbit-<method>.cu wraps each function in a kernel,
// and the test suite compiles these headers as C++ on the CPU (tests/gpu_shims) to check them against the Python
// reference decode on the same bytes.
// From CUDA (common.cuh) or the shim: half, __half2float, int4, float4, __popc, WARP_SIZE, __device__,
// __forceinline__; from ggml-lowbit.h: the side indices and ggml_lowbit_ptq161_stream_byte.

#define LOWBIT_GEMV_MAX_TOKENS 8
