// VPTQ on the CPU: the portable few-token kernel, the preparation every few-token kernel shares, and the method's
// struct, which picks the fastest kernel this build has (vptq-avx2.c). Prompts and tiles decode rows a row group
// at a time (vptq_decode_rows).
//
// A few tokens: y[R*v + t] = sum_j x_j s_j (C[i_Rj][t] + R[r_Rj][t]) + <col_bias, x>: one pass over each group's
// index stream accumulates v outputs, so each weight costs one multiply-add and each index two vector loads.

#include "vptq.h"

#include "ggml-cpu.h"

#include <string.h>

static int64_t vptq_padded_len(int64_t v) {
    return (v + 7) / 8 * 8;
}

// work layout: centroids, residual centroids, tokens, bias terms (offsets in floats)
static void vptq_layout(int64_t k, int64_t k_res, int64_t padded, int64_t d_in, int64_t n_tokens, int64_t off[5]) {
    off[0] = 0;
    off[1] = off[0] + align_floats(k * padded);
    off[2] = off[1] + align_floats(k_res * padded);
    off[3] = off[2] + align_floats(n_tokens * d_in);
    off[4] = off[3] + align_floats(n_tokens);
}

static void vptq_convert_codebook(const ggml_fp16_t * cb, int64_t v, int64_t padded, int64_t begin, int64_t end,
                                  float * out) {
    for (int64_t i = begin; i < end; ++i) {
        float * row = out + i * padded;
        ggml_cpu_fp16_to_fp32(cb + i * v, row, v);
        memset(row + v, 0, (size_t) (padded - v) * sizeof(float));
    }
}

void vptq_prepare(const struct ggml_compute_params * params, struct ggml_tensor * dst, const void * const * sides,
                  float * work, struct vptq_op * op) {
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * cb_t  = w->src[GGML_LOWBIT_VPTQ_CODEBOOK];
    const struct ggml_tensor * res_t = w->src[GGML_LOWBIT_VPTQ_RES_CODEBOOK];
    op->v           = cb_t->ne[0];
    op->k           = cb_t->ne[1];
    op->k_res       = res_t->ne[1];
    op->padded      = vptq_padded_len(op->v);
    op->main_bits   = ggml_lowbit_log2(op->k);
    op->bits        = op->main_bits + ggml_lowbit_log2(op->k_res);
    op->d_in        = w->ne[0];
    op->n_groups    = w->ne[1] / op->v;
    op->n_tokens    = n_tokens_of(dst);
    op->group_bytes = (int64_t) w->nb[1] * op->v;
    op->codes       = (const uint8_t *) w->data;
    int64_t off[5];
    vptq_layout(op->k, op->k_res, op->padded, op->d_in, op->n_tokens, off);
    op->centroids     = work + off[0];
    op->res_centroids = work + off[1];
    op->xs            = work + off[2];
    op->bias_dot      = work + off[3];

    int64_t a, b;
    thread_rows(params, op->k, &a, &b);
    vptq_convert_codebook((const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_CODEBOOK], op->v, op->padded, a, b,
                          work + off[0]);
    thread_rows(params, op->k_res, &a, &b);
    vptq_convert_codebook((const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_RES_CODEBOOK], op->v, op->padded, a, b,
                          work + off[1]);
    const ggml_fp16_t * scale = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_COL_SCALE];
    const ggml_fp16_t * bias  = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_COL_BIAS];
    for (int64_t t = params->ith; t < op->n_tokens; t += params->nth) {
        const float * x  = token_row(dst->src[1], t);
        float *       xs = work + off[2] + t * op->d_in;
        float         bd = 0.0f;
        for (int64_t j = 0; j < op->d_in; ++j) {
            xs[j] = x[j] * GGML_CPU_FP16_TO_FP32(scale[j]);
            bd += x[j] * GGML_CPU_FP16_TO_FP32(bias[j]);
        }
        work[off[3] + t] = bd;
    }
    ggml_barrier(params->threadpool);
}

static void vptq_mul_mat_portable(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                  const struct ggml_lowbit_type_info * info, const void * const * sides,
                                  float * work) {
    GGML_UNUSED(info);
    struct vptq_op op;
    vptq_prepare(params, dst, sides, work, &op);
    const uint32_t mask = (uint32_t) (op.k - 1);
    int64_t        g0, g1;
    thread_rows(params, op.n_groups, &g0, &g1);
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t * stream = op.codes + g * op.group_bytes;
        float           acc[FEW_TOKENS_MAX][GGML_LOWBIT_VPTQ_MAX_VECTOR_LEN] = { { 0.0f } };
        for (int64_t j = 0; j < op.d_in; ++j) {
            const uint32_t e = vptq_entry_fast(stream, op.group_bytes, j, op.bits);
            const float *  c = op.centroids + (int64_t) (e & mask) * op.padded;
            const float *  r = op.res_centroids + (int64_t) (e >> op.main_bits) * op.padded;
            for (int64_t t = 0; t < op.n_tokens; ++t) {
                const float xj = op.xs[t * op.d_in + j];
                for (int64_t i = 0; i < op.v; ++i) {
                    acc[t][i] += xj * (c[i] + r[i]);
                }
            }
        }
        for (int64_t t = 0; t < op.n_tokens; ++t) {
            float * y = token_row(dst, t) + g * op.v;
            for (int64_t i = 0; i < op.v; ++i) {
                y[i] = acc[t][i] + op.bias_dot[t];
            }
        }
    }
}

// rows [row0, row0 + n_rows) to f32 (prompts, tiles), a row group at a time: each entry is read once for the group's
// rows in the range, and converted with the CPU's f16 conversion
static void vptq_decode_rows(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                             int64_t n_per_row, int64_t row0, int64_t n_rows, const void * const * sides,
                             const int64_t * weight_params, float * out) {
    GGML_UNUSED(info);
    const int64_t       v = weight_params[0], k = weight_params[1], k_res = weight_params[2];
    const int           main_bits = ggml_lowbit_log2(k), bits = main_bits + ggml_lowbit_log2(k_res);
    const uint32_t      mask      = (uint32_t) (k - 1);
    const ggml_fp16_t * cb        = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_CODEBOOK];
    const ggml_fp16_t * res       = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_RES_CODEBOOK];
    const ggml_fp16_t * scale     = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_COL_SCALE];
    const ggml_fp16_t * bias      = (const ggml_fp16_t *) sides[GGML_LOWBIT_VPTQ_COL_BIAS];
    const int64_t       group_bytes = v * (int64_t) row_bytes;
    for (int64_t r = row0; r < row0 + n_rows;) {
        const int64_t   t0     = r % v;  // the group's rows [t0, t1) are in the range
        const int64_t   t1     = row0 + n_rows - (r - t0) < v ? row0 + n_rows - (r - t0) : v;
        const uint8_t * stream = codes + (r - row0 - t0) * (int64_t) row_bytes;  // the group's first row
        float *         dst    = out + (r - row0) * n_per_row;                   // row r, output t0 of the group
        for (int64_t j = 0; j < n_per_row; ++j) {
            const uint32_t      e  = vptq_entry_fast(stream, group_bytes, j, bits);
            const ggml_fp16_t * c  = cb + (int64_t) (e & mask) * v;
            const ggml_fp16_t * rc = res + (int64_t) (e >> main_bits) * v;
            const float         s  = GGML_CPU_FP16_TO_FP32(scale[j]), b = GGML_CPU_FP16_TO_FP32(bias[j]);
            for (int64_t t = t0; t < t1; ++t) {
                dst[(t - t0) * n_per_row + j] = (GGML_CPU_FP16_TO_FP32(c[t]) + GGML_CPU_FP16_TO_FP32(rc[t])) * s + b;
            }
        }
        r += t1 - t0;
    }
}

static lowbit_cpu_kernel vptq_few_tokens(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * w,
                                         enum ggml_lowbit_cpu_path path) {
    GGML_UNUSED(info);
    GGML_UNUSED(w);
#ifdef LOWBIT_AVX2
    if (path == GGML_LOWBIT_CPU_FASTEST) {
        return vptq_mul_mat_avx2;
    }
#endif
    GGML_UNUSED(path);
    return vptq_mul_mat_portable;
}

static int64_t vptq_few_tokens_floats(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * dst,
                                      int n_threads) {
    GGML_UNUSED(info);
    GGML_UNUSED(n_threads);
    const struct ggml_tensor * w = dst->src[0];
    if (w->src[GGML_LOWBIT_VPTQ_CODEBOOK] == NULL || w->src[GGML_LOWBIT_VPTQ_RES_CODEBOOK] == NULL) {
        return 0;  // the op refuses the weight (ggml_lowbit_check_sides) before it runs
    }
    const int64_t v = w->src[GGML_LOWBIT_VPTQ_CODEBOOK]->ne[0];
    int64_t                    off[5];
    vptq_layout(w->src[GGML_LOWBIT_VPTQ_CODEBOOK]->ne[1], w->src[GGML_LOWBIT_VPTQ_RES_CODEBOOK]->ne[1],
                vptq_padded_len(v), w->ne[0], n_tokens_of(dst), off);
    return off[4];
}

const struct lowbit_cpu_method lowbit_cpu_vptq = {
    .few_tokens        = vptq_few_tokens,
    .few_tokens_floats = vptq_few_tokens_floats,
    .decode_rows       = vptq_decode_rows,
};
