// IEEE binary16 for the GPU shims: converted to float exactly, as the GPUs do.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

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

