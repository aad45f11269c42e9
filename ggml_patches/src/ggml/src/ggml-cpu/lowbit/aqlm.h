#pragma once

// AQLM's CPU kernels, between aqlm.c (portable, the method's struct) and its per-ISA files.

#include "lowbit-impl.h"

#define AQLM_RT_ROWS     32   // register-table kernel: rows per lookup (int16 lanes of a zmm)
#define AQLM_RT_MIN_ROWS 512  // fewer rows than this do not pay for the tables (every row shares them)

#ifdef LOWBIT_AVX2
// out[k] = <codeword k of one codebook transposed to cb [8][256], x[0..8)> for its 256 codewords
void aqlm_table_avx2(const float * x, const float * cb, float * out);
void aqlm_decode_rows_avx2(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                           int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides, float * out);
// a few tokens, no tables: codewords summed per group and multiply-added with the tokens
void aqlm_mul_mat_direct_avx2(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                              const struct ggml_lowbit_type_info * info, const void * const * sides, float * work);
#endif

#ifdef LOWBIT_REGISTER_TABLES
// a few tokens, 8-bit codes kept transposed: int16 tables held in zmm registers, 32 rows per lookup
void    aqlm_mul_mat_register_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                     const struct ggml_lowbit_type_info * info, const void * const * sides,
                                     float * work);
int64_t aqlm_register_tables_floats(const struct ggml_tensor * dst, int n_threads);
#endif
