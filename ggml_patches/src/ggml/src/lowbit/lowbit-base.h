#pragma once

// What each lowbit-gguf method gives ggml-base (ggml-lowbit.c): its per-weight parameters, the checks that read its
// side tensors' data, and the plain C reference decode. One file per method: lowbit/<method>.c.

#include "ggml-lowbit.h"

#include <string.h>

struct ggml_lowbit_base_method {
    // the per-weight parameters (types.py: Method.weight_params) from the sides, checked; NULL: the method has
    // none. The side shapes follow from them (lowbit-side-shapes.h, generated).
    bool (*weight_params)(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * weight,
                          const struct ggml_tensor * const * sides, int64_t * params, char * err, size_t err_size);
    // checks only the data can show (host memory, shapes already checked); NULL: none
    bool (*check_side_data)(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * weight,
                            const struct ggml_tensor * const * sides, char * err, size_t err_size);
    // rows [row0, row0 + n_rows) to f32, as ggml_lowbit_dequantize_rows
    void (*dequantize_rows)(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                            int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides,
                            const int64_t * weight_params, float * out);
};

#include "lowbit-methods.h"  // each method's struct, declared from lowbit_gguf/gguf/types.py

// number of bits set in n bytes
int64_t ggml_lowbit_count_set_bits(const uint8_t * bytes, int64_t n);
