// VPTQ in ggml-base: the vector length and codebook sizes from the codebooks' shapes, checked, and the plain C
// reference decode.
//
// Weight row r is part of row group R = r / v; the group's index stream (d_in entries of log2(k) + log2(k_res) bits,
// one per input channel, lowbit_gguf/methods/vptq.py: pack) fills its v rows, so it starts v * row_bytes * R bytes
// into the weight. W[R*v + t][j] = (codebook[i][t] + res_codebook[ri][t]) * col_scale[j] + col_bias[j].

#include "lowbit-base.h"

#include <stdio.h>

static bool vptq_is_power_of_two(int64_t n) {
    return n > 0 && (n & (n - 1)) == 0;
}

// vector_len, n_centroids, n_res_centroids from the codebooks [v, k] and [v, k_res] (ggml ne). Missing codebooks
// give zeros (check_sides then names the missing tensor); a residual codebook of another width fails its shape check.
static bool vptq_weight_params(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * weight,
                               const struct ggml_tensor * const * sides, int64_t * params, char * err,
                               size_t err_size) {
    const struct ggml_tensor * cb  = sides[GGML_LOWBIT_VPTQ_CODEBOOK];
    const struct ggml_tensor * res = sides[GGML_LOWBIT_VPTQ_RES_CODEBOOK];
    if (cb == NULL || res == NULL) {
        return true;
    }
    const int64_t v = cb->ne[0], k = cb->ne[1], k_res = res->ne[1];
    const struct ggml_tensor * bad  = NULL;  // the codebook whose shape is wrong, and why
    char                       why[160] = "";
    if (v < 1 || v > GGML_LOWBIT_VPTQ_MAX_VECTOR_LEN || k < 2 || k > 65536 || !vptq_is_power_of_two(k)) {
        bad = cb;
        snprintf(why, sizeof(why), "VPTQ needs vectors of 1 to %d and a power of two 2 <= k <= 65536",
                 GGML_LOWBIT_VPTQ_MAX_VECTOR_LEN);
    } else if (k_res < 1 || k_res > 65536 || !vptq_is_power_of_two(k_res)) {
        bad = res;
        snprintf(why, sizeof(why), "the residual codebook needs a power of two 1 <= k_res <= 65536");
    } else if (weight->ne[1] % v != 0) {
        bad = cb;
        snprintf(why, sizeof(why), "vectors of %lld rows do not divide its %lld rows", (long long) v,
                 (long long) weight->ne[1]);
    } else if ((ggml_lowbit_log2(k) + ggml_lowbit_log2(k_res)) * info->block_size != 8 * info->type_size * v) {
        bad = cb;
        snprintf(why, sizeof(why), "%d-bit indices over vectors of %lld are not the %g index bits per weight of %s",
                 ggml_lowbit_log2(k) + ggml_lowbit_log2(k_res), (long long) v,
                 8.0 * info->type_size / info->block_size, info->name);
    }
    if (bad != NULL) {
        snprintf(err, err_size, "side tensor '%s' has shape [%lld, %lld]: %s", bad->name, (long long) bad->ne[0],
                 (long long) bad->ne[1], why);
        return false;
    }
    params[0] = v;
    params[1] = k;
    params[2] = k_res;
    return true;
}

static void vptq_dequantize_rows(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                                 int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides,
                                 const int64_t * weight_params, float * out) {
    GGML_UNUSED(info);
    const int64_t       v = weight_params[0], k = weight_params[1], k_res = weight_params[2];
    const int           main_bits = ggml_lowbit_log2(k), bits = main_bits + ggml_lowbit_log2(k_res);
    const ggml_fp16_t * cb        = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_CODEBOOK];
    const ggml_fp16_t * res       = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_RES_CODEBOOK];
    const ggml_fp16_t * scale     = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_COL_SCALE];
    const ggml_fp16_t * bias      = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_COL_BIAS];
    for (int64_t r = 0; r < n_rows; ++r) {
        const int64_t   t      = (row0 + r) % v;
        const uint8_t * stream = codes + (r - t) * (int64_t) row_bytes;  // the group's first row
        for (int64_t j = 0; j < n_per_row; ++j) {
            const uint32_t e  = ggml_lowbit_vptq_entry(stream, j, bits);
            const float    c  = ggml_fp16_to_fp32(cb[(int64_t) (e & (k - 1)) * v + t]);
            const float    rc = ggml_fp16_to_fp32(res[(int64_t) (e >> main_bits) * v + t]);
            out[r * n_per_row + j] = (c + rc) * ggml_fp16_to_fp32(scale[j]) + ggml_fp16_to_fp32(bias[j]);
        }
    }
}

const struct ggml_lowbit_base_method ggml_lowbit_base_vptq = {
    .weight_params   = vptq_weight_params,
    .dequantize_rows = vptq_dequantize_rows,
};
