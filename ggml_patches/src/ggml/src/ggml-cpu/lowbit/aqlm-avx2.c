// AQLM on AVX2 (with F16C and FMA): row decode for the prompt path and the tiles, table rows for the look-up
// tables, and the few-token kernel that needs no tables.

#include "aqlm.h"

#ifdef LOWBIT_AVX2

// out[k] = <codeword k, x> for the 256 codewords of one codebook transposed to [8][256]
void aqlm_table_avx2(const float * x, const float * cb, float * out) {
    __m256 xi[8];
    for (int i = 0; i < 8; ++i) {
        xi[i] = _mm256_set1_ps(x[i]);
    }
    for (int k = 0; k < 256; k += 8) {
        __m256 acc = _mm256_mul_ps(xi[0], _mm256_loadu_ps(cb + k));
        for (int i = 1; i < 8; ++i) {
            acc = _mm256_fmadd_ps(xi[i], _mm256_loadu_ps(cb + i * 256 + k), acc);
        }
        _mm256_storeu_ps(out + k, acc);
    }
}

// groups of 8: one f16 codeword is one 128-bit load and one conversion
void aqlm_decode_rows_avx2(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                           int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides, float * out) {
    const ggml_fp16_t * codebook  = (const ggml_fp16_t *) sides[0];
    const ggml_fp16_t * row_scale = (const ggml_fp16_t *) sides[1];
    const int           M         = info->aqlm.num_codebooks;
    const int64_t       K         = (int64_t) 1 << info->aqlm.code_bits;
    const int64_t       n_blocks  = n_per_row / 8;
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t * row   = codes + r * row_bytes;
        const __m256    scale = _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(row_scale[row0 + r]));
        float *         dst   = out + r * n_per_row;
        for (int64_t b = 0; b < n_blocks; ++b) {
            __m256 acc = _mm256_setzero_ps();
            for (int m = 0; m < M; ++m) {
                const uint32_t code = info->aqlm.code_bits == 8 ? row[b * M + m]
                                                           : ((const uint16_t *) row)[b * M + m];  // little-endian
                const __m128i  word = _mm_loadu_si128((const __m128i *) (codebook + ((int64_t) m * K + code) * 8));
                acc = _mm256_add_ps(acc, _mm256_cvtph_ps(word));
            }
            _mm256_storeu_ps(dst + b * 8, _mm256_mul_ps(acc, scale));
        }
    }
}

// AQLM, a few tokens, no tables: each group's M codewords are summed into the group's 8 weights, which
// multiply-add with NT tokens; NR rows at a time so NR x NT accumulators hide the FMA latency. 8-bit codes read
// f32 codewords from this thread's copy of the codebooks (8 KiB each, they stay in L1); a table per token would
// cost 256 x 8 multiply-adds per group and codebook, more than the matmul itself unless a layer has thousands of
// rows. 16-bit codes (WIDE) read the f16 codebook as stored (1 MiB: no copy, no tables), one load and one
// conversion per codeword. NR, NT, M and WIDE are constants at each call, so the loops unroll and the accumulators
// live in registers.
static inline __attribute__((always_inline)) void aqlm_direct_rows(const uint8_t * const * rows, const int M,
                                                                   const int WIDE, int64_t n_blocks,
                                                                   const float * cb, const ggml_fp16_t * cb16,
                                                                   const float * const * xs, const int NR,
                                                                   const int NT, float * sums) {
    __m256 acc[4][2];
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t) {
            acc[i][t] = _mm256_setzero_ps();
        }
    }
    for (int64_t b = 0; b < n_blocks; ++b) {
        __m256 x[2];
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t) {
            x[t] = _mm256_loadu_ps(xs[t] + b * 8);
        }
#pragma GCC unroll 8
        for (int i = 0; i < NR; ++i) {
            __m256 w;
            if (WIDE) {
                const uint16_t * code = (const uint16_t *) rows[i] + b * M;  // little-endian, as x86 reads it
                w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (cb16 + (size_t) code[0] * 8)));
#pragma GCC unroll 4
                for (int m = 1; m < M; ++m) {
                    const __m128i h = _mm_loadu_si128((const __m128i *) (cb16 + ((size_t) m * 65536 + code[m]) * 8));
                    w               = _mm256_add_ps(w, _mm256_cvtph_ps(h));
                }
            } else {
                const uint8_t * code = rows[i] + b * M;
                w                    = _mm256_load_ps(cb + (size_t) code[0] * 8);
#pragma GCC unroll 4
                for (int m = 1; m < M; ++m) {
                    w = _mm256_add_ps(w, _mm256_load_ps(cb + ((size_t) m * 256 + code[m]) * 8));
                }
            }
#pragma GCC unroll 2
            for (int t = 0; t < NT; ++t) {
                acc[i][t] = _mm256_fmadd_ps(w, x[t], acc[i][t]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t) {
            const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[i][t]), _mm256_extractf128_ps(acc[i][t], 1));
            const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
            sums[t * 4 + i] = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
        }
    }
}

// the code width as a constant, and for 8-bit codes the codebook count where it is 2 or 1 (2x8, 1x8), so the
// loops unroll too
static inline __attribute__((always_inline)) void aqlm_direct_rows_m(const uint8_t * const * rows, int M, bool wide,
                                                                     int64_t n_blocks, const float * cb,
                                                                     const ggml_fp16_t * cb16,
                                                                     const float * const * xs, const int NR,
                                                                     const int NT, float * sums) {
    if (wide) {
        aqlm_direct_rows(rows, M, 1, n_blocks, cb, cb16, xs, NR, NT, sums);
    } else if (M == 2) {
        aqlm_direct_rows(rows, 2, 0, n_blocks, cb, cb16, xs, NR, NT, sums);
    } else if (M == 1) {
        aqlm_direct_rows(rows, 1, 0, n_blocks, cb, cb16, xs, NR, NT, sums);
    } else {
        aqlm_direct_rows(rows, M, 0, n_blocks, cb, cb16, xs, NR, NT, sums);
    }
}

// tokens in pairs (2 rows at a time), then a single one (4 rows); a last group short of rows repeats its last
// row and drops the extra sums. With 8-bit codes each thread converts its own copy of the codebooks (no barrier).
void aqlm_mul_mat_direct_avx2(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                              const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const int                  M         = info->aqlm.num_codebooks;
    const int64_t              n_blocks  = w->ne[0] / 8;
    const int64_t              n_tokens  = n_tokens_of(dst);
    const ggml_fp16_t *        codebook  = (const ggml_fp16_t *) sides[0];
    const ggml_fp16_t *        row_scale = (const ggml_fp16_t *) sides[1];
    const bool                 wide      = info->aqlm.code_bits == 16;
    float *                    cb        = wide ? NULL : work + params->ith * align_floats(M * 256 * 8);

    int64_t r_begin, r_end;
    thread_rows(params, w->ne[1], &r_begin, &r_end);
    if (r_begin == r_end) {
        return;
    }
    if (!wide) {
        ggml_cpu_fp16_to_fp32(codebook, cb, M * 256 * 8);
    }
    for (int64_t t0 = 0; t0 < n_tokens; t0 += 2) {
        const int     nt    = n_tokens - t0 >= 2 ? 2 : 1;
        const int     group = nt == 2 ? 2 : 4;
        const float * xs[2] = { token_row(dst->src[1], t0), token_row(dst->src[1], t0 + nt - 1) };
        float *       ys[2] = { token_row(dst, t0), token_row(dst, t0 + nt - 1) };
        for (int64_t r = r_begin; r < r_end; r += group) {
            const int       nr = r_end - r < group ? (int) (r_end - r) : group;
            const uint8_t * rows[4];
            for (int i = 0; i < 4; ++i) {
                rows[i] = (const uint8_t *) w->data + (r + (i < nr ? i : nr - 1)) * w->nb[1];
            }
            float sums[8];
            if (group == 2) {
                aqlm_direct_rows_m(rows, M, wide, n_blocks, cb, codebook, xs, 2, 2, sums);
            } else {
                aqlm_direct_rows_m(rows, M, wide, n_blocks, cb, codebook, xs, 4, 1, sums);
            }
            for (int t = 0; t < nt; ++t) {
                for (int i = 0; i < nr; ++i) {
                    ys[t][r + i] = sums[t * 4 + i] * GGML_CPU_FP16_TO_FP32(row_scale[r + i]);
                }
            }
        }
    }
}

#endif  // LOWBIT_AVX2
