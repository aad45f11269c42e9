// PTQ1.61 in ggml-base: n_salient from the spill width, the salient-count check that reads the mask, and the plain C
// reference decode.

#include "lowbit-base.h"

#include <stdio.h>

int64_t ggml_lowbit_ptq161_n_salient(const struct ggml_tensor * spill) {
    return spill->ne[0] / 3 * 8;
}

// n_salient from the spill width (3 n_salient / 8 bytes): a multiple of 8, leaving >= 8 binary channels. A missing
// spill tensor gives 0 (check_sides then names the missing tensor).
static bool ptq161_weight_params(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * weight,
                                 const struct ggml_tensor * const * sides, int64_t * params, char * err,
                                 size_t err_size) {
    GGML_UNUSED(info);
    const int64_t              d_in        = weight->ne[0];
    const struct ggml_tensor * spill       = sides[GGML_LOWBIT_PTQ161_SALIENT_SPILL];
    const int64_t              spill_bytes = spill != NULL ? spill->ne[0] : 0;
    if (spill != NULL && (spill_bytes % 3 != 0 || spill_bytes < 3 || spill_bytes / 3 * 8 > d_in - 8)) {
        snprintf(err, err_size, "side tensor '%s' is %lld bytes wide; expected 3 * n_salient / 8 with "
                 "8 <= n_salient <= %lld", spill->name, (long long) spill_bytes, (long long) (d_in - 8));
        return false;
    }
    params[0] = spill_bytes / 3 * 8;
    return true;
}

// the mask must mark exactly as many salient channels as the spill tensor has room for
static bool ptq161_check_side_data(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * weight,
                                   const struct ggml_tensor * const * sides, char * err, size_t err_size) {
    GGML_UNUSED(info);
    GGML_UNUSED(weight);
    const struct ggml_tensor * mask  = sides[GGML_LOWBIT_PTQ161_SALIENT_MASK];
    const int64_t              n_sal = ggml_lowbit_ptq161_n_salient(sides[GGML_LOWBIT_PTQ161_SALIENT_SPILL]);
    const int64_t              set   = ggml_lowbit_count_set_bits((const uint8_t *) mask->data, mask->ne[0]);
    if (set != n_sal) {
        snprintf(err, err_size, "side tensor '%s' marks %lld salient channels, but '%s' holds codes for %lld",
                 mask->name, (long long) set, sides[GGML_LOWBIT_PTQ161_SALIENT_SPILL]->name, (long long) n_sal);
        return false;
    }
    return true;
}

// Walk the channels in their original order; the k-th salient one is 4-bit code k of the row's salient codes, the
// j-th other one is sign bit j (layout: lowbit_gguf/methods/ptq161.py, pack).
static void ptq161_dequantize_rows(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                                   int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides,
                                   const int64_t * weight_params, float * out) {
    GGML_UNUSED(info);
    const uint8_t *     mask       = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SALIENT_MASK];
    const int64_t       n_sal      = weight_params[0];
    const int64_t       spill_row  = 3 * n_sal / 8;
    const int64_t       sign_bytes = (n_per_row - n_sal) / 8;
    const ggml_fp16_t * params     = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_ROW_PARAMS];
    const ggml_fp16_t * col_scale  = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_COL_SCALE];
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t *     row   = codes + r * row_bytes;
        const uint8_t *     spill = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SALIENT_SPILL] + (row0 + r) * spill_row;
        const ggml_fp16_t * p     = params + (row0 + r) * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
        const float a = ggml_fp16_to_fp32(p[0]), m = ggml_fp16_to_fp32(p[1]);
        const float scale = ggml_fp16_to_fp32(p[2]), lo = ggml_fp16_to_fp32(p[3]);
        int64_t     k = 0, j = 0;
        for (int64_t c = 0; c < n_per_row; ++c) {
            if (mask[c / 8] >> (c % 8) & 1) {
                const int pair = ggml_lowbit_ptq161_stream_byte(row, spill, (int64_t) row_bytes, sign_bytes + k / 2);
                const int q    = k % 2 ? pair >> 4 : pair & 15;
                out[r * n_per_row + c] = scale * (float) q + lo;
                ++k;
            } else {
                const float sign = (row[j / 8] >> (j % 8) & 1) ? 1.0f : -1.0f;
                out[r * n_per_row + c] = ggml_fp16_to_fp32(col_scale[c]) * (a * sign + m);
                ++j;
            }
        }
    }
}

const struct ggml_lowbit_base_method ggml_lowbit_base_ptq161 = {
    .weight_params   = ptq161_weight_params,
    .check_side_data = ptq161_check_side_data,
    .dequantize_rows = ptq161_dequantize_rows,
};
