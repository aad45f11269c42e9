// PTQ1.61 on AVX-512 (VNNI), a few tokens, no tables: the gathered input is rounded to int16 (one step for the
// salient inputs, one for the others: 15 bits, finer than the 8 of ggml's own Q8 activations), each 32 sign bits
// select 32 inputs that one int16 dot product sums, each 32 salient codes are one int16 dot product.

#include "ptq161.h"

#ifdef LOWBIT_AVX512

#include <math.h>
#include <string.h>

static float absmax(const float * x, int64_t n) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    }
    return m;
}

// one gathered token (ptq161_gather_token) as int16 for ptq161_rows_avx512; returns {binary step, salient step}
// at i16 + bin_slots + sal_slots. Salient inputs go in the codes' order: a chunk of 16 code bytes holds the 16
// even inputs (low nibbles) in its first 16 slots and the 16 odd ones (high nibbles) in the next; the row's
// code bytes and the spill row's are chunked separately. Unused slots are 0.
static void ptq161_token_to_int16(const float * g, const struct ptq161_layout * l, int16_t * i16) {
    const int64_t n_bin = 8 * l->sign_bytes;
    const float   sb = absmax(g + l->n_sal, n_bin) / 32767.0f, ss = absmax(g, l->n_sal) / 32767.0f;
    const float   ib = sb > 0.0f ? 1.0f / sb : 0.0f, is = ss > 0.0f ? 1.0f / ss : 0.0f;
    int16_t *     bin = i16, *sal = i16 + l->bin_slots;
    memset(i16, 0, (l->bin_slots + l->sal_slots) * sizeof(int16_t));
    for (int64_t j = 0; j < n_bin; ++j) {
        bin[j] = (int16_t) lrintf(g[l->n_sal + j] * ib);
    }
    for (int64_t k = 0; k < l->n_sal / 2; ++k) {  // code byte k holds salient inputs 2k and 2k + 1
        const int64_t b    = k < l->sal_bytes_in_row ? k : k - l->sal_bytes_in_row;  // byte within its stretch
        int16_t *     slot = sal + (k < l->sal_bytes_in_row ? 0 : l->sal_slots_row) + b / 16 * 32 + b % 16;
        slot[0]            = (int16_t) lrintf(g[2 * k] * is);
        slot[16]           = (int16_t) lrintf(g[2 * k + 1] * is);
    }
    float steps[2] = { sb, ss };
    memcpy(i16 + l->bin_slots + l->sal_slots, steps, sizeof(steps));
}

// salient codes . int16 inputs over one stretch of n_bytes code bytes per row (rows stride apart): 16 bytes
// -> their 16 low nibbles then 16 high nibbles as int16, one dot product with 32 arranged inputs
static inline __attribute__((always_inline)) void ptq161_salient_avx512(const uint8_t * codes, size_t stride,
                                                                        int n_rows, int64_t n_bytes,
                                                                        const int16_t * xs, __m512i * s) {
    const __m128i nibble = _mm_set1_epi8(15);
    for (int64_t k = 0; k < n_bytes; k += 16, xs += 32) {
        const int       nb    = n_bytes - k < 16 ? (int) (n_bytes - k) : 16;
        const __mmask16 bytes = (__mmask16) ((1u << nb) - 1);
        const __m512i   x     = _mm512_loadu_si512(xs);
        for (int i = 0; i < n_rows; ++i) {
            const __m128i b  = _mm_maskz_loadu_epi8(bytes, codes + i * stride + k);
            const __m128i lo = _mm_and_si128(b, nibble), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nibble);
            s[i] = _mm512_dpwssd_epi32(s[i], _mm512_cvtepu8_epi16(_mm256_set_m128i(hi, lo)), x);
        }
    }
}

// n_rows rows (1 or 4, a constant once inlined: the sums stay in registers) against one int16 token (i16,
// float sums sum_bin, sum_sal) into y: P = inputs whose sign bit is set (32 bits select 32 inputs, one dot
// product with ones sums them), Q = salient codes . inputs, both exact in int32, then ptq161_row_output.
static inline __attribute__((always_inline)) void ptq161_rows_avx512(const uint8_t * rows, size_t row_bytes,
                                                                     const uint8_t * spill, const ggml_fp16_t * rp,
                                                                     const struct ptq161_layout * l, int n_rows,
                                                                     const int16_t * i16, float sum_bin,
                                                                     float sum_sal, float * y) {
    const __m512i ones = _mm512_set1_epi16(1);
    __m512i       p[4], s[4];
    for (int i = 0; i < n_rows; ++i) {
        p[i] = s[i] = _mm512_setzero_si512();
    }
    int64_t k = 0;  // sign byte
    for (; k + 4 <= l->sign_bytes; k += 4) {
        const __m512i x = _mm512_loadu_si512(i16 + 8 * k);
        for (int i = 0; i < n_rows; ++i) {
            uint32_t m;
            memcpy(&m, rows + i * row_bytes + k, 4);
            p[i] = _mm512_dpwssd_epi32(p[i], _mm512_maskz_mov_epi16((__mmask32) m, x), ones);
        }
    }
    if (k < l->sign_bytes) {  // 1 to 3 sign bytes left; their inputs are padded with zeros to 32
        const __m512i x = _mm512_loadu_si512(i16 + 8 * k);
        for (int i = 0; i < n_rows; ++i) {
            uint32_t m = 0;
            memcpy(&m, rows + i * row_bytes + k, (size_t) (l->sign_bytes - k));
            p[i] = _mm512_dpwssd_epi32(p[i], _mm512_maskz_mov_epi16((__mmask32) m, x), ones);
        }
    }
    const int16_t * xs = i16 + l->bin_slots;
    ptq161_salient_avx512(rows + l->sign_bytes, row_bytes, n_rows, l->sal_bytes_in_row, xs, s);
    ptq161_salient_avx512(spill, l->spill_bytes, n_rows, l->spill_bytes, xs + l->sal_slots_row, s);
    float steps[2];
    memcpy(steps, i16 + l->bin_slots + l->sal_slots, sizeof(steps));
    for (int i = 0; i < n_rows; ++i) {
        y[i] = ptq161_row_output(rp + i * GGML_LOWBIT_PTQ161_ROW_PARAMS_N,
                                 steps[0] * (float) _mm512_reduce_add_epi32(p[i]),
                                 steps[1] * (float) _mm512_reduce_add_epi32(s[i]), sum_bin, sum_sal);
    }
}

// no tables, so no barrier: each thread gathers and rounds the tokens into its own part of work
void ptq161_mul_mat_avx512(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                           const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    GGML_UNUSED(info);
    const struct ptq161_op op        = ptq161_op_of(dst, sides);
    const int64_t          per_token = op.l.token_floats + op.l.i16_floats;
    float *                own       = work + params->ith * op.n_tokens * per_token;

    int64_t r_begin, r_end;
    thread_rows(params, op.w->ne[1], &r_begin, &r_end);
    if (r_begin == r_end) {
        return;
    }
    for (int64_t t = 0; t < op.n_tokens; ++t) {
        float * g = own + t * per_token;
        ptq161_gather_token(token_row(dst->src[1], t), op.mask, op.col_scale, op.d_in, op.l.n_sal, g, g + op.d_in,
                            g + op.d_in + 1);
        ptq161_token_to_int16(g, &op.l, (int16_t *) (g + op.l.token_floats));
    }
    for (int64_t t = 0; t < op.n_tokens; ++t) {
        const float *   g   = own + t * per_token;
        const int16_t * i16 = (const int16_t *) (g + op.l.token_floats);
        float *         yt  = token_row(dst, t);
        for (int64_t r = r_begin; r < r_end;) {
            const uint8_t *     rows = (const uint8_t *) op.w->data + r * op.w->nb[1];
            const uint8_t *     sp   = op.spill + r * op.l.spill_bytes;
            const ggml_fp16_t * p    = op.row_params + r * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
            if (r_end - r >= 4) {
                ptq161_rows_avx512(rows, op.w->nb[1], sp, p, &op.l, 4, i16, g[op.d_in], g[op.d_in + 1], yt + r);
                r += 4;
            } else {
                ptq161_rows_avx512(rows, op.w->nb[1], sp, p, &op.l, 1, i16, g[op.d_in], g[op.d_in + 1], yt + r);
                r += 1;
            }
        }
    }
}

#endif  // LOWBIT_AVX512
