#pragma once

// lowbit-gguf tensor types. A weight of one of these types holds only codes; the tables that decode them
// (codebooks, row scales, ...) are side tensors in the same file, named from the weight
// (blk.0.attn_q.weight -> blk.0.attn_q.codebook). The model loader hangs them on the weight as
// weight->src[0..n_sides) (a weight is a leaf, so its src slots are otherwise unused), and every
// backend's MUL_MAT reads them from there.
//
// The type table is generated from lowbit_gguf/gguf/types.py into ggml-lowbit-table.h.

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

enum ggml_lowbit_method {
    GGML_LOWBIT_METHOD_AQLM = 1,
};

#define GGML_LOWBIT_MAX_SIDES 4

struct ggml_lowbit_type_info {
    enum ggml_type          type;
    const char *            name;
    enum ggml_lowbit_method method;
    int                     block_size;    // weights per block
    int                     type_size;     // bytes per block
    int                     num_codebooks; // AQLM: M codes per block
    int                     code_bits;     // AQLM: bits per code (8 or 16)
    int                     n_sides;
    const char *            sides[GGML_LOWBIT_MAX_SIDES]; // side tensor suffixes, in src[] order
};

// NULL when type is not a lowbit type
GGML_API const struct ggml_lowbit_type_info * ggml_lowbit_get_type_info(enum ggml_type type);
GGML_API bool ggml_lowbit_is_type(enum ggml_type type);

// Checks a weight's side tensors (types, shapes, contiguity) before anything indexes them with codes.
// On failure writes a message naming the side tensor into err and returns false.
GGML_API bool ggml_lowbit_check_sides(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                                      char * err, size_t err_size);

// Plain C reference decode of rows [row0, row0 + n_rows) of a weight with n_per_row columns, whose rows
// start at codes (row0's codes first, rows row_bytes apart). sides as in the table, data pointers.
GGML_API void ggml_lowbit_dequantize_rows(enum ggml_type type, const void * codes, size_t row_bytes,
                                          int64_t n_per_row, int64_t row0, int64_t n_rows,
                                          const void * const * sides, float * out);

// ggml_validate_row_data for the lowbit types (codes of 8 or 16 bits cannot be out of range)
GGML_API bool ggml_lowbit_validate_row_data(enum ggml_type type, const void * data, size_t nbytes);

#ifdef __cplusplus
}
#endif
