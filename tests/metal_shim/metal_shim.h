// Just enough of the Metal Shading Language for the project's .metal arithmetic to compile as C++:
// address-space qualifiers vanish, half is IEEE binary16 converted the way the GPU does (exactly).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define device
#define constant const
#define thread

typedef uint8_t  uchar;
typedef uint32_t uint;

inline uint popcount(uint v) { return (uint) __builtin_popcount(v); }

struct half {
    uint16_t bits;
    explicit operator float() const {
        const uint32_t sign = (uint32_t) (bits >> 15) << 31, exp = (bits >> 10) & 31, man = bits & 1023;
        if (exp == 0) {  // zero and subnormals: man * 2^-24
            const float v = std::ldexp((float) man, -24);
            return sign ? -v : v;
        }
        const uint32_t f = sign | ((exp == 31 ? 255 : exp + 112) << 23) | (man << 13);
        float out;
        std::memcpy(&out, &f, sizeof(out));
        return out;
    }
};
