// Just enough of CUDA for the project's lowbit-lanes.cuh to compile as C++: qualifiers vanish, half converts
// exactly (as __half2float does), the vector types are plain structs, __popc is the compiler's popcount.
#pragma once

#include <cstdint>

#include "half.h"

#define __device__
#define __forceinline__ inline
#define WARP_SIZE 32

struct int4 {
    int x, y, z, w;
};

struct float4 {
    float x, y, z, w;
};

inline float __half2float(half h) { return (float) h; }

inline int __popc(unsigned int v) { return __builtin_popcount(v); }
