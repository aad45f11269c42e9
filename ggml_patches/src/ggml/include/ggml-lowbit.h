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

// The method enum, each method's side indices and parameter struct, generated from lowbit_gguf/gguf/types.py
#include "ggml-lowbit-ids.inc"

struct ggml_lowbit_type_info {
    enum ggml_type          type;
    const char *            name;
    enum ggml_lowbit_method method;
    int                     block_size;  // weights per block
    int                     type_size;   // bytes per block
    int                     n_sides;
    const char *            sides[GGML_LOWBIT_MAX_SIDES];       // side tensor suffixes, in src[] order
    enum ggml_type          side_types[GGML_LOWBIT_MAX_SIDES];  // and their ggml types
    union {
        GGML_LOWBIT_METHOD_PARAMS  // the method's parameters: info->aqlm.num_codebooks, ...
    };
};

// NULL when type is not a lowbit type
GGML_API const struct ggml_lowbit_type_info * ggml_lowbit_get_type_info(enum ggml_type type);
GGML_API bool ggml_lowbit_is_type(enum ggml_type type);

// Checks a weight's side tensors (types, shapes, contiguity) before anything indexes them with codes.
// On failure writes a message naming the side tensor into err and returns false.
GGML_API bool ggml_lowbit_check_sides(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                                      char * err, size_t err_size);

// Checks what the side tensors' shapes cannot show, reading their data (host memory): PTQ1.61's mask must
// mark exactly as many salient channels as its spill tensor has room for. True for types without such a check.
GGML_API bool ggml_lowbit_check_side_data(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                                          char * err, size_t err_size);
// whether check_side_data reads anything for this type (the loader copies the sides to the host only then)
GGML_API bool ggml_lowbit_reads_side_data(enum ggml_type type);

// PTQ1.61: the number of salient input channels, from the spill tensor's width (checked by check_sides)
GGML_API int64_t ggml_lowbit_ptq161_n_salient(const struct ggml_tensor * spill);

// PTQ1.61: byte i of a row's code stream (sign bytes, then salient code pairs); the row tensor holds the first
// row_bytes of it, the spill row the rest
#ifdef __CUDACC__
#    define GGML_LOWBIT_INLINE static inline __host__ __device__  // the CUDA kernels read the same helpers
#else
#    define GGML_LOWBIT_INLINE static inline
#endif
GGML_LOWBIT_INLINE uint8_t ggml_lowbit_ptq161_stream_byte(const uint8_t * row, const uint8_t * spill, int64_t row_bytes,
                                                          int64_t i) {
    return i < row_bytes ? row[i] : spill[i - row_bytes];
}

// The method's per-weight parameters (lowbit_gguf/gguf/types.py: Method.weight_params, e.g. VPTQ's vector length
// and codebook sizes) read from the side tensors' shapes, checked; GGML_LOWBIT_MAX_WEIGHT_PARAMS entries. False with
// a message in err when they are out of range.
GGML_API bool ggml_lowbit_weight_params(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                                        int64_t * params, char * err, size_t err_size);

// the smallest b with 2^b >= n (VPTQ's index bits from its codebook sizes)
GGML_LOWBIT_INLINE int ggml_lowbit_log2(int64_t n) {
    int b = 0;
    while (((int64_t) 1 << b) < n) {
        ++b;
    }
    return b;
}

// VPTQ: entry j of a row group's index stream, `bits` (<= 32) wide, little-endian bit order (main index in the low
// log2(k) bits, residual index above); reads only the entry's own bytes
GGML_LOWBIT_INLINE uint32_t ggml_lowbit_vptq_entry(const uint8_t * stream, int64_t j, int bits) {
    const int64_t   bit   = j * bits;
    const uint8_t * p     = stream + (bit >> 3);
    const int       shift = (int) (bit & 7);
    const int       n     = (shift + bits + 7) >> 3;
    uint64_t        value = 0;
    for (int i = 0; i < n; ++i) {
        value |= (uint64_t) p[i] << (8 * i);
    }
    return (uint32_t) ((value >> shift) & ((1ull << bits) - 1));
}

// Plain C reference decode of rows [row0, row0 + n_rows) of a weight with n_per_row columns, whose rows
// start at codes (row0's codes first, rows row_bytes apart; for types that read rows in groups, VPTQ's, the
// codes of the group's earlier rows lie before them). sides as in the table, data pointers, already checked
// (check_sides, check_side_data); weight_params from ggml_lowbit_weight_params.
GGML_API void ggml_lowbit_dequantize_rows(enum ggml_type type, const void * codes, size_t row_bytes,
                                          int64_t n_per_row, int64_t row0, int64_t n_rows,
                                          const void * const * sides, const int64_t * weight_params, float * out);

// CPU kernels: the fastest this build has (for a few tokens AVX-512 for PTQ1.61, AVX2 for AQLM; prompts in bf16
// with AVX-512 BF16; where compiled in), or the portable ones (look-up tables, f32 sgemm). Process-wide; the tests
// pin the portable ones to check both on one machine.
enum ggml_lowbit_cpu_path {
    GGML_LOWBIT_CPU_FASTEST = 0,
    GGML_LOWBIT_CPU_TABLES  = 1,
};
GGML_API void                      ggml_lowbit_set_cpu_path(enum ggml_lowbit_cpu_path path);
GGML_API enum ggml_lowbit_cpu_path ggml_lowbit_get_cpu_path(void);

// ggml_validate_row_data for the lowbit types (codes of 8 or 16 bits and sign bits cannot be out of range)
GGML_API bool ggml_lowbit_validate_row_data(enum ggml_type type, const void * data, size_t nbytes);

#ifdef __cplusplus
}
#endif
