#pragma once

// What each lowbit-gguf method gives ggml-base (ggml-lowbit.c): the expected shapes of its side tensors, the checks
// that read their data, and the plain C reference decode. One file per method: lowbit/<method>.c.

#include "ggml-lowbit.h"

#include <string.h>

struct ggml_lowbit_base_method {
    // expected ggml ne of each side tensor of weight, in src[] order; false with a message in err when the sides
    // cannot be given a shape (a side whose width sets a method parameter has an impossible one)
    bool (*side_shapes)(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * weight,
                        const struct ggml_tensor * const * sides, int64_t ne[][4], char * err, size_t err_size);
    // checks only the data can show (host memory, shapes already checked); NULL: none
    bool (*check_side_data)(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * weight,
                            const struct ggml_tensor * const * sides, char * err, size_t err_size);
    // rows [row0, row0 + n_rows) to f32, as ggml_lowbit_dequantize_rows
    void (*dequantize_rows)(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                            int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides, float * out);
};

#include "lowbit-methods.h"  // each method's struct, declared from lowbit_gguf/gguf/types.py

// number of bits set in n bytes
int64_t ggml_lowbit_count_set_bits(const uint8_t * bytes, int64_t n);
