// PTQ1.61 on the CPU: the portable look-up-table kernel for a few tokens, the prompt path's gather and row decode in
// the rows' channel order, and the method's struct, which picks the fastest kernels this build has
// (ptq161-avx2.c, ptq161-avx512.c).
//
// The input is first gathered into the row's channel order (salient channels first); a sign byte's table holds the
// sums of every subset of its 8 (column scaled) inputs, a salient byte's the products of its two 4-bit codes with
// their 2 inputs; with the per-token sums of the inputs, the row's scales and offsets finish the dot product, no
// multiply per weight. On the prompt path the tokens are gathered once, so the rows decode straight from the sign
// bits, without the column scale.

#include "ptq161.h"

#ifdef LOWBIT_AVX2
#    define ptq161_expand_signs       ptq161_expand_signs_avx2
#    define ptq161_table_from_nibbles ptq161_table_from_nibbles_avx2
#else
static void ptq161_expand_signs(const uint8_t * signs, int64_t n_bytes, float pos, float neg, float * out) {
    for (int64_t j = 0; j < 8 * n_bytes; ++j) {
        out[j] = (signs[j / 8] >> (j % 8) & 1) ? pos : neg;
    }
}

// table[16 h + l] = high[h] + low[l]: both tables split a byte into its two nibbles
static void ptq161_table_from_nibbles(const float low[16], const float high[16], float * table) {
    for (int h = 0; h < 16; ++h) {
        for (int l = 0; l < 16; ++l) {
            table[16 * h + l] = high[h] + low[l];
        }
    }
}
#endif

void ptq161_gather_token(const float * x, const uint8_t * mask, const ggml_fp16_t * col_scale, int64_t d_in,
                         int64_t n_sal, float * g, float * sum_bin, float * sum_sal) {
    float * bin = g + n_sal;
    float   sb = 0.0f, ss = 0.0f;
    int64_t k = 0, j = 0;
    for (int64_t c = 0; c < d_in; ++c) {
        if (mask[c / 8] >> (c % 8) & 1) {
            g[k++] = x[c];
            ss += x[c];
        } else {
            bin[j] = x[c] * GGML_CPU_FP16_TO_FP32(col_scale[c]);
            sb += bin[j++];
        }
    }
    *sum_bin = sb;
    *sum_sal = ss;
}

struct ptq161_layout ptq161_layout_of(const struct ggml_tensor * w) {
    struct ptq161_layout l;
    const int64_t        d_in = w->ne[0];
    l.n_sal                   = ggml_lowbit_ptq161_n_salient(w->src[GGML_LOWBIT_PTQ161_SALIENT_SPILL]);
    l.sign_bytes              = (d_in - l.n_sal) / 8;
    l.sal_bytes_in_row        = l.n_sal / 8;
    l.spill_bytes             = 3 * l.n_sal / 8;
    l.n_bytes                 = l.sign_bytes + l.n_sal / 2;
    l.token_floats            = align_floats(d_in + 2);
    l.bin_slots               = (d_in - l.n_sal + 31) / 32 * 32;
    l.sal_slots_row           = (l.sal_bytes_in_row + 15) / 16 * 32;
    l.sal_slots               = l.sal_slots_row + (l.spill_bytes + 15) / 16 * 32;
    l.i16_floats              = align_floats((l.bin_slots + l.sal_slots) / 2 + 2);  // and the two steps
    return l;
}

struct ptq161_op ptq161_op_of(const struct ggml_tensor * dst, const void * const * sides) {
    struct ptq161_op op;
    op.w          = dst->src[0];
    op.l          = ptq161_layout_of(op.w);
    op.d_in       = op.w->ne[0];
    op.n_tokens   = n_tokens_of(dst);
    op.mask       = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SALIENT_MASK];
    op.spill      = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SALIENT_SPILL];
    op.row_params = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_ROW_PARAMS];
    op.col_scale  = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_COL_SCALE];
    return op;
}

// the tables path, or (AVX-512) each thread's own gathered tokens
static int64_t ptq161_lut_floats(const struct ggml_tensor * w, int64_t n_tokens, int n_threads) {
    const struct ptq161_layout l      = ptq161_layout_of(w);
    const int64_t              tables = n_tokens * (l.token_floats + l.n_bytes * 256);
    const int64_t              own    = n_threads * n_tokens * (l.token_floats + l.i16_floats);
    return tables > own ? tables : own;
}

// rows [r0, r0 + nr) in gathered order, without the column scale (the gathered input carries it)
static void ptq161_decode_rows_gathered(const struct ggml_tensor * w, const void * const * sides, int64_t r0,
                                        int64_t nr, float * out) {
    const int64_t       d_in       = w->ne[0];
    const int64_t       row_bytes  = (int64_t) w->nb[1];
    const int64_t       n_sal      = ggml_lowbit_ptq161_n_salient(w->src[GGML_LOWBIT_PTQ161_SALIENT_SPILL]);
    const int64_t       spill_row  = 3 * n_sal / 8;
    const int64_t       sign_bytes = (d_in - n_sal) / 8;
    const ggml_fp16_t * params     = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_ROW_PARAMS];
    for (int64_t r = 0; r < nr; ++r) {
        const uint8_t *     row   = (const uint8_t *) w->data + (r0 + r) * row_bytes;
        const uint8_t *     spill = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SALIENT_SPILL] + (r0 + r) * spill_row;
        const ggml_fp16_t * p     = params + (r0 + r) * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
        const float a = GGML_CPU_FP16_TO_FP32(p[0]), m = GGML_CPU_FP16_TO_FP32(p[1]);
        const float scale = GGML_CPU_FP16_TO_FP32(p[2]), lo = GGML_CPU_FP16_TO_FP32(p[3]);
        float *     o = out + r * d_in;
        for (int64_t k = 0; k < n_sal / 2; ++k) {
            const int pair = ggml_lowbit_ptq161_stream_byte(row, spill, row_bytes, sign_bytes + k);
            o[2 * k]       = scale * (float) (pair & 15) + lo;
            o[2 * k + 1]   = scale * (float) (pair >> 4) + lo;
        }
        float * ob = o + n_sal;
        ptq161_expand_signs(row, sign_bytes, m + a, m - a, ob);
    }
}

static void ptq161_build_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                const struct ptq161_op * op, float * work) {
    const struct ptq161_layout * l        = &op->l;
    const int64_t                d_in     = op->d_in;
    const int64_t                n_tokens = op->n_tokens;
    float *                      tables   = work + n_tokens * l->token_floats;

    // the input in the row's channel order: salient ones as they are, the others times their column scale
    for (int64_t t = params->ith; t < n_tokens; t += params->nth) {
        float * g = work + t * l->token_floats;  // then its two sums
        ptq161_gather_token(token_row(dst->src[1], t), op->mask, op->col_scale, d_in, l->n_sal, g, g + d_in,
                            g + d_in + 1);
    }
    ggml_barrier(params->threadpool);

    for (int64_t p = params->ith; p < n_tokens * l->n_bytes; p += params->nth) {
        const int64_t t = p / l->n_bytes, b = p % l->n_bytes;
        const float * g = work + t * l->token_floats;
        float         low[16], high[16];
        if (b < l->sign_bytes) {  // sums of the subsets of 8 inputs: bit i set adds input i
            const float * xb = g + l->n_sal + b * 8;
            for (int v = 0; v < 16; ++v) {
                low[v]  = ((v & 1) ? xb[0] : 0.0f) + ((v & 2) ? xb[1] : 0.0f) + ((v & 4) ? xb[2] : 0.0f) +
                          ((v & 8) ? xb[3] : 0.0f);
                high[v] = ((v & 1) ? xb[4] : 0.0f) + ((v & 2) ? xb[5] : 0.0f) + ((v & 4) ? xb[6] : 0.0f) +
                          ((v & 8) ? xb[7] : 0.0f);
            }
        } else {  // two salient 4-bit codes, low nibble first, times their inputs
            const float * xs = g + 2 * (b - l->sign_bytes);
            for (int v = 0; v < 16; ++v) {
                low[v]  = (float) v * xs[0];
                high[v] = (float) v * xs[1];
            }
        }
        ptq161_table_from_nibbles(low, high, tables + p * 256);
    }
    ggml_barrier(params->threadpool);
}

static void ptq161_mul_mat_lut(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                               const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    GGML_UNUSED(info);
    const struct ptq161_op op = ptq161_op_of(dst, sides);
    ptq161_build_tables(params, dst, &op, work);

    int64_t r_begin, r_end;
    thread_rows(params, op.w->ne[1], &r_begin, &r_end);
    for (int64_t t = 0; t < op.n_tokens; ++t) {
        const float * g       = work + t * op.l.token_floats;
        const float * tables  = work + op.n_tokens * op.l.token_floats + t * op.l.n_bytes * 256;
        const float   sum_bin = g[op.d_in], sum_sal = g[op.d_in + 1];
        float *       yt      = token_row(dst, t);
        for (int64_t rb = r_begin; rb < r_end; rb += LUT_ROW_BLOCK) {
            const int64_t   nrb  = r_end - rb < LUT_ROW_BLOCK ? r_end - rb : LUT_ROW_BLOCK;
            const uint8_t * rows = (const uint8_t *) op.w->data + rb * op.w->nb[1];
            float           pos[LUT_ROW_BLOCK] = { 0.0f };  // sums of the inputs whose sign bit is set
            float           sal[LUT_ROW_BLOCK] = { 0.0f };  // salient codes . inputs
            lowbit_lut_accumulate(rows, op.w->nb[1], nrb, op.l.sign_bytes, tables, r_end - rb - nrb, pos);
            lowbit_lut_accumulate(rows + op.l.sign_bytes, op.w->nb[1], nrb, op.l.sal_bytes_in_row,
                                  tables + op.l.sign_bytes * 256, 0, sal);
            lowbit_lut_accumulate(op.spill + rb * op.l.spill_bytes, op.l.spill_bytes, nrb, op.l.spill_bytes,
                                  tables + (op.l.sign_bytes + op.l.sal_bytes_in_row) * 256, 0, sal);
            for (int64_t r = 0; r < nrb; ++r) {
                yt[rb + r] = ptq161_row_output(op.row_params + (rb + r) * GGML_LOWBIT_PTQ161_ROW_PARAMS_N, pos[r],
                                               sal[r], sum_bin, sum_sal);
            }
        }
    }
}

static void ptq161_prompt_tokens(const struct ggml_compute_params * params, const struct ggml_tensor * dst,
                                 const void * const * sides, float * out) {
    const struct ggml_tensor * x     = dst->src[1];
    const int64_t              d_in  = x->ne[0];
    const int64_t              n_sal = ggml_lowbit_ptq161_n_salient(dst->src[0]->src[GGML_LOWBIT_PTQ161_SALIENT_SPILL]);
    for (int64_t t = params->ith; t < x->ne[1]; t += params->nth) {
        float sum_bin, sum_sal;
        ptq161_gather_token(token_row(x, t), (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SALIENT_MASK],
                            (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_COL_SCALE], d_in, n_sal, out + t * d_in,
                            &sum_bin, &sum_sal);
    }
}

static lowbit_cpu_kernel ptq161_few_tokens(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * w,
                                           enum ggml_lowbit_cpu_path path) {
    GGML_UNUSED(info);
    GGML_UNUSED(w);
#ifdef LOWBIT_AVX512
    if (path == GGML_LOWBIT_CPU_FASTEST) {
        return ptq161_mul_mat_avx512;
    }
#endif
    GGML_UNUSED(path);
    return ptq161_mul_mat_lut;
}

static int64_t ptq161_few_tokens_floats(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * dst,
                                        int n_threads) {
    GGML_UNUSED(info);
    return ptq161_lut_floats(dst->src[0], n_tokens_of(dst), n_threads);
}

const struct lowbit_cpu_method lowbit_cpu_ptq161 = {
    .few_tokens        = ptq161_few_tokens,
    .few_tokens_floats = ptq161_few_tokens_floats,
    .prompt_tokens     = ptq161_prompt_tokens,
    .prompt_rows       = ptq161_decode_rows_gathered,
};
