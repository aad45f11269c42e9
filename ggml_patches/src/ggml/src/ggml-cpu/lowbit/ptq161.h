#pragma once

// PTQ1.61's CPU kernels, between ptq161.c (portable, the method's struct) and its per-ISA files.

#include "lowbit-impl.h"

// Work of the few-token kernels: per token the gathered input [d_in] and its two sums, then (tables) the tables
// [n_bytes][256] or (AVX-512) the token in int16.
struct ptq161_layout {
    int64_t n_sal, sign_bytes, sal_bytes_in_row, spill_bytes;  // per row
    int64_t n_bytes;                                           // table positions: sign, then salient bytes
    int64_t token_floats;                                      // gathered input + 2 sums, aligned
    // AVX-512: int16 inputs, binarized ones padded to 32, salient ones in 32-slot chunks per 16 code bytes
    int64_t bin_slots, sal_slots_row, sal_slots, i16_floats;
};

struct ptq161_layout ptq161_layout_of(const struct ggml_tensor * w);

// what every PTQ1.61 kernel reads of one MUL_MAT
struct ptq161_op {
    const struct ggml_tensor * w;
    struct ptq161_layout       l;
    int64_t                    d_in, n_tokens;
    const uint8_t *            mask, *spill;
    const ggml_fp16_t *        row_params, *col_scale;
};

struct ptq161_op ptq161_op_of(const struct ggml_tensor * dst, const void * const * sides);

// one token's input in the rows' channel order, the binarized channels times their column scale; returns
// the sums of the binarized and of the salient inputs
void ptq161_gather_token(const float * x, const uint8_t * mask, const ggml_fp16_t * col_scale, int64_t d_in,
                         int64_t n_sal, float * g, float * sum_bin, float * sum_sal);

// one row's output from its sums against a gathered token: sum of sign * input = 2 * (inputs whose bit is set)
// - all of them; p = the row's params (binary scale, binary offset, salient scale, salient min)
static inline float ptq161_row_output(const ggml_fp16_t * p, float pos, float sal, float sum_bin, float sum_sal) {
    return GGML_CPU_FP16_TO_FP32(p[0]) * (2.0f * pos - sum_bin) + GGML_CPU_FP16_TO_FP32(p[1]) * sum_bin +
           GGML_CPU_FP16_TO_FP32(p[2]) * sal + GGML_CPU_FP16_TO_FP32(p[3]) * sum_sal;
}

#ifdef LOWBIT_AVX2
// out[j] = bit j of the sign bytes set ? pos : neg, for the 8 n_bytes bits
void ptq161_expand_signs_avx2(const uint8_t * signs, int64_t n_bytes, float pos, float neg, float * out);
// table[16 h + l] = high[h] + low[l]
void ptq161_table_from_nibbles_avx2(const float low[16], const float high[16], float * table);
#endif

#ifdef LOWBIT_AVX512
// a few tokens, no tables: the gathered input rounded to int16, sign bits as masks of int16 dot products
void ptq161_mul_mat_avx512(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                           const struct ggml_lowbit_type_info * info, const void * const * sides, float * work);
#endif
