// Just enough of the Metal Shading Language for the project's .metal arithmetic to compile as C++:
// address-space qualifiers vanish, half is IEEE binary16 converted the way the GPU does (exactly).
#pragma once

#include <cstdint>

#include "half.h"

#define device
#define constant const
#define thread

typedef uint8_t  uchar;
typedef uint32_t uint;
typedef uint64_t ulong;

inline uint popcount(uint v) { return (uint) __builtin_popcount(v); }
