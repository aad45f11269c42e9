// lowbit-gguf types in ggml-base: the type table, side tensor checks (shapes generated from the type table) and the
// plain C reference decode, handed to each method's file (lowbit/<method>.c) through its struct.

#include "ggml-lowbit.h"
#include "ggml-lowbit-table.h"
#include "lowbit/lowbit-base.h"
#include "lowbit/lowbit-side-shapes.h"

#include <stdio.h>
#include <string.h>

#define N_LOWBIT_TYPES (sizeof(ggml_lowbit_type_table) / sizeof(ggml_lowbit_type_table[0]))

static const struct ggml_lowbit_base_method * const base_methods[] = {
#include "lowbit/lowbit-methods.inc"
};

static const struct ggml_lowbit_base_method * method_of(const struct ggml_lowbit_type_info * info) {
    GGML_ASSERT((size_t) info->method < sizeof(base_methods) / sizeof(base_methods[0]) &&
                base_methods[info->method] != NULL);
    return base_methods[info->method];
}

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

bool ggml_lowbit_weight_params(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                               int64_t * params, char * err, size_t err_size) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(weight->type);
    if (info == NULL) {
        snprintf(err, err_size, "%s is not a lowbit type", ggml_type_name(weight->type));
        return false;
    }
    memset(params, 0, GGML_LOWBIT_MAX_WEIGHT_PARAMS * sizeof(int64_t));
    return method_of(info)->weight_params == NULL ||
           method_of(info)->weight_params(info, weight, sides, params, err, err_size);
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
    int64_t params[GGML_LOWBIT_MAX_WEIGHT_PARAMS];
    if (!ggml_lowbit_weight_params(weight, sides, params, err, err_size)) {
        return false;
    }
    int64_t ne[GGML_LOWBIT_MAX_SIDES][4];
    ggml_lowbit_side_ne[info->method](info, weight->ne[1], weight->ne[0], params, ne);
    for (int i = 0; i < info->n_sides; ++i) {
        if (!check_side(sides[i], info->sides[i], info->side_types[i], ne[i], err, err_size)) {
            return false;
        }
    }
    return true;
}

bool ggml_lowbit_check_side_data(const struct ggml_tensor * weight, const struct ggml_tensor * const * sides,
                                 char * err, size_t err_size) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(weight->type);
    if (info == NULL || method_of(info)->check_side_data == NULL) {
        return info != NULL;
    }
    return method_of(info)->check_side_data(info, weight, sides, err, err_size);
}

bool ggml_lowbit_reads_side_data(enum ggml_type type) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(type);
    return info != NULL && method_of(info)->check_side_data != NULL;
}

void ggml_lowbit_dequantize_rows(enum ggml_type type, const void * codes, size_t row_bytes, int64_t n_per_row,
                                 int64_t row0, int64_t n_rows, const void * const * sides,
                                 const int64_t * weight_params, float * out) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(type);
    GGML_ASSERT(info != NULL && info->block_size <= 64 && n_per_row % info->block_size == 0);
    method_of(info)->dequantize_rows(info, (const uint8_t *) codes, row_bytes, n_per_row, row0, n_rows, sides,
                                     weight_params, out);
}

int64_t ggml_lowbit_count_set_bits(const uint8_t * bytes, int64_t n) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
        count += __builtin_popcount(bytes[i]);
    }
    return count;
}

static enum ggml_lowbit_cpu_path cpu_path = GGML_LOWBIT_CPU_FASTEST;

void ggml_lowbit_set_cpu_path(enum ggml_lowbit_cpu_path path) {
    cpu_path = path;
}

enum ggml_lowbit_cpu_path ggml_lowbit_get_cpu_path(void) {
    return cpu_path;
}

bool ggml_lowbit_validate_row_data(enum ggml_type type, const void * data, size_t nbytes) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(type);
    GGML_UNUSED(data);
    if (info == NULL || nbytes % info->type_size != 0) {
        fprintf(stderr, "%s: invalid size %zu for type %s\n", __func__, nbytes, ggml_type_name(type));
        return false;
    }
    // Every bit pattern of a lowbit weight is valid: the types' codes address every entry of their tables (AQLM's
    // B-bit codes a 2^B codebook, PTQ1.61's bytes are sign bits and 4-bit codes). What ties the side tensors
    // together is checked by ggml_lowbit_check_sides and ggml_lowbit_check_side_data.
    return true;
}
