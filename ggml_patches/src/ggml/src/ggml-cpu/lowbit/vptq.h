#pragma once

// VPTQ's CPU kernels, between vptq.c (portable, the method's struct) and its per-ISA files.

#include "lowbit-impl.h"

// What every few-token kernel reads, prepared once per op by all threads (vptq_prepare): the codebooks in f32, each
// vector padded to `padded` floats (a multiple of 8, zeros past v), the tokens times the column scales, and per token
// the bias term <col_bias, x>, which every output row shares.
struct vptq_op {
    int64_t         v, k, k_res, padded, n_groups, d_in, n_tokens, group_bytes;
    int             main_bits, bits;
    const float *   centroids;      // [k][padded]
    const float *   res_centroids;  // [k_res][padded]
    const float *   xs;             // [n_tokens][d_in]
    const float *   bias_dot;       // [n_tokens]
    const uint8_t * codes;
};

void vptq_prepare(const struct ggml_compute_params * params, struct ggml_tensor * dst, const void * const * sides,
                  float * work, struct vptq_op * op);

// entry j of a group's stream (group_bytes long): one unaligned 8-byte load where it fits inside the stream
static inline uint32_t vptq_entry_fast(const uint8_t * stream, int64_t group_bytes, int64_t j, int bits) {
    const int64_t bit = j * bits;
    if ((bit >> 3) + 8 <= group_bytes) {
        uint64_t value;
        memcpy(&value, stream + (bit >> 3), 8);
        return (uint32_t) ((value >> (bit & 7)) & ((1ull << bits) - 1));
    }
    return ggml_lowbit_vptq_entry(stream, j, bits);
}

#ifdef LOWBIT_AVX2
// a few tokens: per group of v rows, acc += x'_j * (C[i] + R[ri]) over the input channels, 8 lanes at a time
void vptq_mul_mat_avx2(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                       const struct ggml_lowbit_type_info * info, const void * const * sides, float * work);
#endif
