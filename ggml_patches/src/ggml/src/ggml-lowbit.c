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
        case GGML_LOWBIT_METHOD_PTQ161: {
            const int64_t d_in = weight->ne[0], d_out = weight->ne[1];
            const struct ggml_tensor * spill = sides[GGML_LOWBIT_PTQ161_SPILL];
            // the spill width (3 n_salient / 8 bytes) sets n_salient: a multiple of 8, leaving >= 8 binary channels
            const int64_t spill_bytes = spill != NULL ? spill->ne[0] : 0;
            if (spill != NULL && (spill_bytes % 3 != 0 || spill_bytes < 3 || spill_bytes / 3 * 8 > d_in - 8)) {
                snprintf(err, err_size, "side tensor '%s' is %lld bytes wide; expected 3 * n_salient / 8 with "
                         "8 <= n_salient <= %lld", spill->name, (long long) spill_bytes, (long long) (d_in - 8));
                return false;
            }
            const int64_t mask_ne[4]   = { d_in / 8, 1, 1, 1 };
            const int64_t spill_ne[4]  = { spill_bytes, d_out, 1, 1 };
            const int64_t params_ne[4] = { GGML_LOWBIT_PTQ161_ROW_PARAMS_N, d_out, 1, 1 };
            const int64_t col_ne[4]    = { d_in, 1, 1, 1 };
            return check_side(sides[0], info->sides[0], GGML_TYPE_I8, mask_ne, err, err_size) &&
                   check_side(sides[1], info->sides[1], GGML_TYPE_I8, spill_ne, err, err_size) &&
                   check_side(sides[2], info->sides[2], GGML_TYPE_F16, params_ne, err, err_size) &&
                   check_side(sides[3], info->sides[3], GGML_TYPE_F16, col_ne, err, err_size);
        }
    }
    snprintf(err, err_size, "no side tensor rule for %s", info->name);
    return false;
}

static enum ggml_lowbit_cpu_path cpu_path = GGML_LOWBIT_CPU_FASTEST;

void ggml_lowbit_set_cpu_path(enum ggml_lowbit_cpu_path path) {
    cpu_path = path;
}

enum ggml_lowbit_cpu_path ggml_lowbit_get_cpu_path(void) {
    return cpu_path;
}

int64_t ggml_lowbit_ptq161_n_salient(const struct ggml_tensor * spill) {
    return spill->ne[0] / 3 * 8;
}

static int64_t count_set_bits(const uint8_t * bytes, int64_t n) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
        count += __builtin_popcount(bytes[i]);
    }
    return count;
}

bool ggml_lowbit_check_side_data(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                                 char * err, size_t err_size) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(weight->type);
    if (info == NULL || info->method != GGML_LOWBIT_METHOD_PTQ161) {
        return info != NULL;
    }
    const struct ggml_tensor * mask  = sides[GGML_LOWBIT_PTQ161_MASK];
    const int64_t              n_sal = ggml_lowbit_ptq161_n_salient(sides[GGML_LOWBIT_PTQ161_SPILL]);
    const int64_t              set   = count_set_bits((const uint8_t *) mask->data, mask->ne[0]);
    if (set != n_sal) {
        snprintf(err, err_size, "side tensor '%s' marks %lld salient channels, but '%s' holds codes for %lld",
                 mask->name, (long long) set, sides[GGML_LOWBIT_PTQ161_SPILL]->name, (long long) n_sal);
        return false;
    }
    return true;
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

// PTQ1.61: walk the channels in their original order; the k-th salient one is 4-bit code k of the row's
// salient codes, the j-th other one is sign bit j (layout: lowbit_gguf/methods/ptq161.py, pack).
static void ptq161_dequantize_rows(const uint8_t * codes, size_t row_bytes, int64_t n_per_row, int64_t row0,
                                   int64_t n_rows, const void * const * sides, float * out) {
    const uint8_t *     mask       = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_MASK];
    const int64_t       n_sal      = count_set_bits(mask, n_per_row / 8);
    const int64_t       spill_row  = 3 * n_sal / 8;
    const int64_t       sign_bytes = (n_per_row - n_sal) / 8;
    const ggml_fp16_t * params     = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_ROW_PARAMS];
    const ggml_fp16_t * col_scale  = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_COL_SCALE];
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t *     row   = codes + r * row_bytes;
        const uint8_t *     spill = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SPILL] + (row0 + r) * spill_row;
        const ggml_fp16_t * p     = params + (row0 + r) * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
        const float a = ggml_fp16_to_fp32(p[0]), m = ggml_fp16_to_fp32(p[1]);
        const float scale = ggml_fp16_to_fp32(p[2]), lo = ggml_fp16_to_fp32(p[3]);
        int64_t     k = 0, j = 0;
        for (int64_t c = 0; c < n_per_row; ++c) {
            if (mask[c / 8] >> (c % 8) & 1) {
                const int pair = ggml_lowbit_ptq161_stream_byte(row, spill, (int64_t) row_bytes, sign_bytes + k / 2);
                const int     q    = k % 2 ? pair >> 4 : pair & 15;
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

void ggml_lowbit_dequantize_rows(enum ggml_type type, const void * codes, size_t row_bytes, int64_t n_per_row,
                                 int64_t row0, int64_t n_rows, const void * const * sides, float * out) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(type);
    GGML_ASSERT(info != NULL && info->block_size <= 64 && n_per_row % info->block_size == 0);
    switch (info->method) {
        case GGML_LOWBIT_METHOD_AQLM:
            aqlm_dequantize_rows(info, (const uint8_t *) codes, row_bytes, n_per_row, row0, n_rows,
                                 (const ggml_fp16_t *) sides[0], (const ggml_fp16_t *) sides[1], out);
            return;
        case GGML_LOWBIT_METHOD_PTQ161:
            ptq161_dequantize_rows((const uint8_t *) codes, row_bytes, n_per_row, row0, n_rows, sides, out);
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
    // AQLM codes of B = 8 or 16 bits address every entry of a 2^B codebook, PTQ1.61's bytes are sign bits and
    // 4-bit codes: any bit pattern is valid. (PTQ1.61's mask is checked against its spill: check_side_data.)
    return true;
}
