// AQLM on the CPU: the portable look-up-table kernel for a few tokens, and the method's struct, which picks the
// fastest kernels this build has (aqlm-avx2.c, aqlm-avx512.c).
//
// Look-up tables (8-bit codes): the table of code m of group b holds <codebook[m][k], x[b*8 : b*8+8]> for all 256 k,
// built once per token; a row's dot product is then one gather per code byte, times the row scale. With AVX2 no
// tables are needed: a group's codewords are summed from f32 codebooks kept in L1 (from the f16 codebook as stored
// with 16-bit codes, which take the tiles without AVX2) and multiply-added with the tokens. With AVX-512 BF16, 8-bit
// codes in CPU_LOWBIT buffers (transposed at load) take the register tables.

#include "aqlm.h"

#include "ggml-cpu.h"

#ifdef LOWBIT_AVX2
#    define aqlm_table aqlm_table_avx2
#else
static void aqlm_table(const float * x, const float * cb, float * out) {
    for (int k = 0; k < 256; ++k) {
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            acc += x[i] * cb[i * 256 + k];
        }
        out[k] = acc;
    }
}
#endif

// codebooks [M][256][8] f16 -> [M][8][256] f32, so 16 table entries are 8 multiply-adds over contiguous floats
static void aqlm_transpose_codebooks(const ggml_fp16_t * codebook, int M, float * cb_t) {
    for (int m = 0; m < M; ++m) {
        for (int k = 0; k < 256; ++k) {
            float word[8];
            ggml_cpu_fp16_to_fp32(codebook + (m * 256 + k) * 8, word, 8);
            for (int i = 0; i < 8; ++i) {
                cb_t[(m * 8 + i) * 256 + k] = word[i];
            }
        }
    }
}

// tables [n_tokens][n_blocks][M][256] from codebooks transposed to [M][8][256] (cb_t)
static void aqlm_build_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                              const struct ggml_lowbit_type_info * info, const ggml_fp16_t * codebook, float * cb_t,
                              float * lut) {
    const int     M        = info->aqlm.num_codebooks;
    const int64_t n_blocks = dst->src[0]->ne[0] / 8;
    const int64_t n_tokens = n_tokens_of(dst);

    if (params->ith == 0) {
        aqlm_transpose_codebooks(codebook, M, cb_t);
    }
    ggml_barrier(params->threadpool);

    for (int64_t p = params->ith; p < n_tokens * n_blocks; p += params->nth) {
        const int64_t t = p / n_blocks, b = p % n_blocks;
        const float * xb = token_row(dst->src[1], t) + b * 8;
        for (int m = 0; m < M; ++m) {
            aqlm_table(xb, cb_t + m * 8 * 256, lut + (p * M + m) * 256);
        }
    }
    ggml_barrier(params->threadpool);
}

static void aqlm_mul_mat_lut(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                             const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const int64_t              n_codes   = w->ne[0] / 8 * info->aqlm.num_codebooks;  // per row, one byte each
    const int64_t              n_rows    = w->ne[1];
    const ggml_fp16_t *        row_scale = (const ggml_fp16_t *) sides[1];
    float *                    cb_t      = work;
    float *                    lut       = work + align_floats(info->aqlm.num_codebooks * 8 * 256);

    aqlm_build_tables(params, dst, info, (const ggml_fp16_t *) sides[0], cb_t, lut);

    int64_t r_begin, r_end;
    thread_rows(params, n_rows, &r_begin, &r_end);
    for (int64_t t = 0; t < n_tokens_of(dst); ++t) {
        float * yt = token_row(dst, t);
        // blocks of LUT_ROW_BLOCK rows: their codes (~10 KiB) stay in L1 while the chunks pass over them
        for (int64_t rb = r_begin; rb < r_end; rb += LUT_ROW_BLOCK) {
            const int64_t nrb = r_end - rb < LUT_ROW_BLOCK ? r_end - rb : LUT_ROW_BLOCK;
            float         acc[LUT_ROW_BLOCK] = { 0.0f };
            lowbit_lut_accumulate((const uint8_t *) w->data + rb * w->nb[1], w->nb[1], nrb, n_codes,
                                  lut + t * n_codes * 256, r_end - rb - nrb, acc);
            for (int64_t r = 0; r < nrb; ++r) {
                yt[rb + r] = acc[r] * GGML_CPU_FP16_TO_FP32(row_scale[rb + r]);
            }
        }
    }
}

static bool aqlm_has_tables(const struct ggml_lowbit_type_info * info) {
    return info->aqlm.code_bits == 8 && info->block_size == 8;
}

static lowbit_cpu_kernel aqlm_few_tokens(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * w,
                                         enum ggml_lowbit_cpu_path path) {
    if (info->block_size != 8) {
        return NULL;
    }
    if (ggml_lowbit_cpu_codes_transposed(w)) {  // only aqlm_repackable weights are
#ifdef LOWBIT_REGISTER_TABLES
        return aqlm_mul_mat_register_tables;
#else
        GGML_ABORT("%s: transposed codes without the register-table kernel", w->name);
#endif
    }
#ifdef LOWBIT_AVX2
    if (path == GGML_LOWBIT_CPU_FASTEST) {
        return aqlm_mul_mat_direct_avx2;
    }
#endif
    GGML_UNUSED(path);
    return aqlm_has_tables(info) ? aqlm_mul_mat_lut : NULL;
}

// the tables, or (AVX2) a codebook copy per thread; the register tables for transposed codes
static int64_t aqlm_few_tokens_floats(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * dst,
                                      int n_threads) {
#ifdef LOWBIT_REGISTER_TABLES
    if (ggml_lowbit_cpu_codes_transposed(dst->src[0])) {
        return aqlm_register_tables_floats(dst, n_threads);
    }
#endif
    if (!aqlm_has_tables(info)) {
        return 0;
    }
    const int64_t codebooks = align_floats(info->aqlm.num_codebooks * 8 * 256);
    const int64_t tables    = codebooks + n_tokens_of(dst) * (dst->src[0]->ne[0] / 8) * info->aqlm.num_codebooks * 256;
    const int64_t direct    = n_threads * codebooks;
    return tables > direct ? tables : direct;
}

static bool aqlm_repackable(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * w) {
#ifdef LOWBIT_REGISTER_TABLES
    return aqlm_has_tables(info) && w->ne[2] == 1 && w->ne[3] == 1 && w->ne[1] % AQLM_RT_ROWS == 0 &&
           w->ne[1] >= AQLM_RT_MIN_ROWS;
#else
    GGML_UNUSED(info);
    GGML_UNUSED(w);
    return false;
#endif
}

static void aqlm_decode_rows(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                             int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides,
                             const int64_t * weight_params, float * out) {
#ifdef LOWBIT_AVX2
    if (info->block_size == 8) {
        aqlm_decode_rows_avx2(info, codes, row_bytes, n_per_row, row0, n_rows, sides, out);
        return;
    }
#endif
    ggml_lowbit_dequantize_rows(info->type, codes, row_bytes, n_per_row, row0, n_rows, sides, weight_params, out);
}

const struct lowbit_cpu_method lowbit_cpu_aqlm = {
    .few_tokens        = aqlm_few_tokens,
    .few_tokens_floats = aqlm_few_tokens_floats,
    .decode_rows       = aqlm_decode_rows,
    .repackable        = aqlm_repackable,
};
