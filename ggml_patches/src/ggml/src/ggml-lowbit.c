// lowbit-gguf types in ggml-base: the type table, side tensor checks and the plain C reference decode.

#include "ggml-lowbit.h"
#include "ggml-lowbit-table.h"

#include <stdio.h>
#include <string.h>

#define N_LOWBIT_TYPES (sizeof(ggml_lowbit_type_table) / sizeof(ggml_lowbit_type_table[0]))

const struct ggml_lowbit_type_info * ggml_lowbit_get_type_info(enum ggml_type type) {
    for (size_t i = 0; i < N_LOWBIT_TYPES; ++i) {
        if (ggml_lowbit_type_table[i].type == type) {
            return &ggml_lowbit_type_table[i];
        }
    }
    return NULL;
}

bool ggml_lowbit_is_type(enum ggml_type type) {
    return ggml_lowbit_get_type_info(type) != NULL;
}

static bool check_side(const struct ggml_tensor * side, const char * suffix, enum ggml_type type,
                       const int64_t ne[4], char * err, size_t err_size) {
    if (side == NULL) {
        snprintf(err, err_size, "side tensor '%s' is missing", suffix);
        return false;
    }
    if (side->type != type) {
        snprintf(err, err_size, "side tensor '%s' has type %s, expected %s", side->name, ggml_type_name(side->type),
                 ggml_type_name(type));
        return false;
    }
    if (side->ne[0] != ne[0] || side->ne[1] != ne[1] || side->ne[2] != ne[2] || side->ne[3] != ne[3]) {
        snprintf(err, err_size,
                 "side tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]",
                 side->name, (long long) side->ne[0], (long long) side->ne[1], (long long) side->ne[2],
                 (long long) side->ne[3], (long long) ne[0], (long long) ne[1], (long long) ne[2], (long long) ne[3]);
        return false;
    }
    if (!ggml_is_contiguous(side)) {
        snprintf(err, err_size, "side tensor '%s' is not contiguous", side->name);
        return false;
    }
    return true;
}

bool ggml_lowbit_check_sides(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                             char * err, size_t err_size) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(weight->type);
    if (info == NULL) {
        snprintf(err, err_size, "%s is not a lowbit type", ggml_type_name(weight->type));
        return false;
    }
    if (weight->ne[2] != 1 || weight->ne[3] != 1) {
        snprintf(err, err_size, "lowbit weights are matrices; '%s' has %lld x %lld slices", weight->name,
                 (long long) weight->ne[2], (long long) weight->ne[3]);
        return false;
    }
    switch (info->method) {
        case GGML_LOWBIT_METHOD_AQLM: {
            // codebook: f16 [M][2^B][g] (ggml ne = g, 2^B, M); row scale: f16 [d_out]
            const int64_t codebook_ne[4] = { info->block_size, (int64_t) 1 << info->code_bits, info->num_codebooks, 1 };
            const int64_t scale_ne[4]    = { weight->ne[1], 1, 1, 1 };
            return check_side(sides[0], info->sides[0], GGML_TYPE_F16, codebook_ne, err, err_size) &&
                   check_side(sides[1], info->sides[1], GGML_TYPE_F16, scale_ne, err, err_size);
        }
    }
    snprintf(err, err_size, "no side tensor rule for %s", info->name);
    return false;
}

// code m of block b in a row: little-endian, B bits each (B = 8 or 16)
static inline uint32_t aqlm_code(const uint8_t * row, int64_t b, int m, const struct ggml_lowbit_type_info * info) {
    if (info->code_bits == 8) {
        return row[b * info->num_codebooks + m];
    }
    const uint8_t * p = row + 2 * (b * info->num_codebooks + m);
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8);
}

static void aqlm_dequantize_rows(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                                 int64_t n_per_row, int64_t row0, int64_t n_rows, const ggml_fp16_t * codebook,
                                 const ggml_fp16_t * row_scale, float * out) {
    const int     g        = info->block_size;
    const int64_t n_blocks = n_per_row / g;
    const int64_t K        = (int64_t) 1 << info->code_bits;
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t * row   = codes + r * row_bytes;
        const float     scale = ggml_fp16_to_fp32(row_scale[row0 + r]);
        float *         dst   = out + r * n_per_row;
        for (int64_t b = 0; b < n_blocks; ++b) {
            float group[64] = { 0 };  // g <= 64
            for (int m = 0; m < info->num_codebooks; ++m) {
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

void ggml_lowbit_dequantize_rows(enum ggml_type type, const void * codes, size_t row_bytes, int64_t n_per_row,
                                 int64_t row0, int64_t n_rows, const void * const * sides, float * out) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(type);
    GGML_ASSERT(info != NULL && info->block_size <= 64 && n_per_row % info->block_size == 0);
    switch (info->method) {
        case GGML_LOWBIT_METHOD_AQLM:
            aqlm_dequantize_rows(info, (const uint8_t *) codes, row_bytes, n_per_row, row0, n_rows,
                                 (const ggml_fp16_t *) sides[0], (const ggml_fp16_t *) sides[1], out);
            return;
    }
    GGML_ABORT("no decode for %s", info->name);
}

bool ggml_lowbit_validate_row_data(enum ggml_type type, const void * data, size_t nbytes) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(type);
    GGML_UNUSED(data);
    if (info == NULL || nbytes % info->type_size != 0) {
        fprintf(stderr, "%s: invalid size %zu for type %s\n", __func__, nbytes, ggml_type_name(type));
        return false;
    }
    // AQLM codes of B = 8 or 16 bits address every entry of a 2^B codebook: any bit pattern is valid.
    return true;
}
