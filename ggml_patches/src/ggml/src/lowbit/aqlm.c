// AQLM in ggml-base: the plain C reference decode (its side shapes come from the type table).

#include "lowbit-base.h"

// code m of block b in a row: little-endian, B bits each (B = 8 or 16)
static inline uint32_t aqlm_code(const uint8_t * row, int64_t b, int m, const struct ggml_lowbit_type_info * info) {
    if (info->aqlm.code_bits == 8) {
        return row[b * info->aqlm.num_codebooks + m];
    }
    const uint8_t * p = row + 2 * (b * info->aqlm.num_codebooks + m);
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8);
}

static void aqlm_dequantize_rows(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                                 int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides,
                                 const int64_t * weight_params, float * out) {
    GGML_UNUSED(weight_params);
    const ggml_fp16_t * codebook  = (const ggml_fp16_t *) sides[0];
    const ggml_fp16_t * row_scale = (const ggml_fp16_t *) sides[1];
    const int           g         = info->block_size;
    const int64_t       n_blocks  = n_per_row / g;
    const int64_t       K         = (int64_t) 1 << info->aqlm.code_bits;
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t * row   = codes + r * row_bytes;
        const float     scale = ggml_fp16_to_fp32(row_scale[row0 + r]);
        float *         dst   = out + r * n_per_row;
        for (int64_t b = 0; b < n_blocks; ++b) {
            float group[64] = { 0 };  // g <= 64
            for (int m = 0; m < info->aqlm.num_codebooks; ++m) {
                const ggml_fp16_t * word = codebook + ((int64_t) m * K + aqlm_code(row, b, m, info)) * g;
                for (int i = 0; i < g; ++i) {
                    group[i] += ggml_fp16_to_fp32(word[i]);
                }
            }
            for (int i = 0; i < g; ++i) {
                dst[b * g + i] = scale * group[i];
            }
        }
    }
}

const struct ggml_lowbit_base_method ggml_lowbit_base_aqlm = {
    .dequantize_rows = aqlm_dequantize_rows,
};
