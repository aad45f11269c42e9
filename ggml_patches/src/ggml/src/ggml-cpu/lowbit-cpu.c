// CPU MUL_MAT for the lowbit-gguf types.
//
// Three paths:
//  - look-up table (a few tokens: decode). Both methods store each row as bytes that index one 256-entry
//    table per byte position, built once per token; a row's dot product is then one gather per byte.
//    AQLM with 8-bit codes: the table of code m of group b holds <codebook[m][k], x[b*8 : b*8+8]> for all
//    256 k; the row sum is times the row scale. PTQ1.61: the input is first gathered into the row's channel
//    order (salient channels first); a sign byte's table holds the sums of every subset of its 8 (column
//    scaled) inputs, a salient byte's the products of its two 4-bit codes with their 2 inputs; with the
//    per-token sums of the inputs, the row's scales and offsets finish the dot product, no multiply per
//    weight. Rows split over threads. With AVX-512 VNNI, PTQ1.61 needs no tables: the gathered input is
//    rounded to int16 (one step for the salient inputs, one for the others: 15 bits, finer than the 8 of
//    ggml's own Q8 activations), each 32 sign bits select 32 inputs that one int16 dot product sums, each 32
//    salient codes are one int16 dot product. With AVX2, AQLM needs no tables either: a group's codewords
//    are summed from f32 codebooks kept in L1 (from the f16 codebook as stored with 16-bit codes, which take
//    the tiles without AVX2) and multiply-added with the tokens (ggml_lowbit_set_cpu_path pins the tables or
//    the tiles, for the tests and the benchmarks).
//  - register tables (AQLM with 8-bit codes in a CPU_LOWBIT buffer, codes transposed at load, AVX-512 BW, DQ and
//    BF16): the tables built with bf16 dot products, rounded to int16, each held in 8 zmm registers and looked up
//    for 32 rows at once with vpermi2w.
//  - prompts (SGEMM_MIN_TOKENS and more): SGEMM_ROWS rows at a time are decoded to f32 by all threads, then
//    multiplied with all tokens by ggml's own llamafile sgemm (all threads together). PTQ1.61 gathers the
//    tokens into the rows' channel order first, so its rows decode with SIMD straight from the sign bits. With
//    AVX-512 BF16 the rows and tokens go to sgemm in bf16 (vdpbf16ps, two products per lane; upstream's BF16
//    models take the same sgemm), which rounds them to 1/256 as the register tables do.
//  - tiles (everything else): TILE_ROWS rows are decoded to f32 and dotted with every token.
// params->use_ref takes the tile path with the plain C decode and a scalar dot (the reference). Every path but the
// register tables reads transposed codes by gathering rows back into row order first (decode_rows).

#include "lowbit-cpu.h"

#include "ggml-cpu-impl.h"
#include "ggml-cpu.h"
#include "ggml-lowbit.h"
#include "vec.h"

#include <float.h>
#include <math.h>
#include <string.h>

#ifdef GGML_USE_LLAMAFILE
#    include "llamafile/sgemm.h"
#endif

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#    include <immintrin.h>
#    define LOWBIT_AVX2 1
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#    define LOWBIT_AVX512 1
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512BF16__)
#    define LOWBIT_REGISTER_TABLES 1
#endif
#if defined(GGML_USE_LLAMAFILE) && defined(__AVX512BF16__)
#    define LOWBIT_BF16_SGEMM 1  // prompts through sgemm in bf16: 1.34x its f32 speed (pp512, BF16 vs F32 model)
#endif

#define TILE_ROWS      16
#define LUT_MAX_TOKENS 4
#define LUT_CHUNK      16  // codes whose tables (16 x 256 floats) are gathered together
#define LUT_ROW_BLOCK  64  // rows whose codes are gathered together
#define ALIGN_FLOATS   16  // 64 bytes
#define SGEMM_ROWS     128
#define SGEMM_MIN_TOKENS 8
#define GATHER_ROWS    16   // rows of transposed codes gathered back into row order at a time
#define RT_ROWS        32   // register-table kernel: rows per lookup (int16 lanes of a zmm)
#define RT_TABLES      16   // tables quantized together: 16 entries of at most RT_ENTRY_MAX sum within int16
#define RT_ENTRY_MAX   2047
#define RT_MIN_ROWS    512  // fewer rows than this do not pay for the tables (every row shares them)

static inline int64_t align_floats(int64_t n) {
    return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

static int64_t n_tokens_of(const struct ggml_tensor * dst) {
    return dst->src[1]->ne[1] * dst->src[1]->ne[2] * dst->src[1]->ne[3];
}

static bool takes_lut_path(const struct ggml_lowbit_type_info * info, int64_t n_tokens, bool use_ref) {
    const bool aqlm8 = info->method == GGML_LOWBIT_METHOD_AQLM && info->code_bits == 8 && info->block_size == 8;
    return !use_ref && (aqlm8 || info->method == GGML_LOWBIT_METHOD_PTQ161) && n_tokens <= LUT_MAX_TOKENS;
}

static int64_t ptq161_lut_floats(const struct ggml_tensor * w, int64_t n_tokens, int n_threads);

// AQLM: transposed codebooks [M][8][256], then tables [n_tokens][n_blocks][M][256]
static int64_t lut_floats(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * w, int64_t n_tokens,
                          int n_threads) {
    if (info->method == GGML_LOWBIT_METHOD_PTQ161) {
        return ptq161_lut_floats(w, n_tokens, n_threads);
    }
    const int64_t tables = align_floats(info->num_codebooks * 8 * 256) + n_tokens * (w->ne[0] / 8) * info->num_codebooks * 256;
    const int64_t direct = n_threads * align_floats(info->num_codebooks * 8 * 256);  // a codebook copy per thread
    return tables > direct ? tables : direct;
}

static int64_t tile_floats_per_thread(int64_t n_per_row) {
    return align_floats(TILE_ROWS * n_per_row);
}

// each thread's GATHER_ROWS rows of codes in row order (transposed weights), after the floats of every path
static int64_t scratch_floats_per_thread(const struct ggml_tensor * w) {
    return ggml_lowbit_cpu_codes_transposed(w) ? align_floats(((int64_t) w->nb[1] * GATHER_ROWS + 3) / 4) : 0;
}

static int64_t rt_floats(const struct ggml_tensor * dst, int n_threads);

// Prompt path work (offsets in floats): the decoded f32 rows of a chunk at 0, PTQ1.61's gathered tokens, and where
// sgemm runs in bf16 the chunk's rows and the tokens in bf16.
struct sgemm_layout {
    int64_t gathered, rows_bf16, tokens_bf16, floats;
};

static struct sgemm_layout sgemm_layout_of(const struct ggml_tensor * dst, const struct ggml_lowbit_type_info * info) {
    const int64_t       n_per_row = dst->src[0]->ne[0], n_tokens = n_tokens_of(dst);
    struct sgemm_layout l;
    l.gathered    = align_floats(SGEMM_ROWS * n_per_row);
    l.rows_bf16   = l.gathered + (info->method == GGML_LOWBIT_METHOD_PTQ161 ? align_floats(n_tokens * n_per_row) : 0);
    l.tokens_bf16 = l.rows_bf16;
    l.floats      = l.rows_bf16;
#ifdef LOWBIT_BF16_SGEMM
    l.tokens_bf16 = l.rows_bf16 + align_floats((SGEMM_ROWS * n_per_row + 1) / 2);
    l.floats      = l.tokens_bf16 + align_floats((n_tokens * n_per_row + 1) / 2);
#endif
    return l;
}

// floats of the path this op takes (shared by its threads), before the per-thread code scratch
static int64_t path_floats(const struct ggml_tensor * dst, int n_threads) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(dst->src[0]->type);
    GGML_ASSERT(info != NULL);
    const int64_t n_per_row = dst->src[0]->ne[0];
    int64_t       floats    = n_threads * tile_floats_per_thread(n_per_row);
    const int64_t sgemm     = sgemm_layout_of(dst, info).floats;
    floats                  = sgemm > floats ? sgemm : floats;
    if (takes_lut_path(info, n_tokens_of(dst), false)) {
        const int64_t lut = ggml_lowbit_cpu_codes_transposed(dst->src[0])
                                ? rt_floats(dst, n_threads)
                                : lut_floats(info, dst->src[0], n_tokens_of(dst), n_threads);
        floats = lut > floats ? lut : floats;
    }
    return align_floats(floats);
}

size_t ggml_lowbit_cpu_work_size(const struct ggml_tensor * dst, int n_threads) {
    const int64_t floats = path_floats(dst, n_threads) + n_threads * scratch_floats_per_thread(dst->src[0]);
    return (size_t) (floats + ALIGN_FLOATS) * sizeof(float);
}

// row of token t in x or dst (either may be 2-, 3- or 4-d)
static float * token_row(const struct ggml_tensor * a, int64_t t) {
    const int64_t i1 = t % a->ne[1], i2 = (t / a->ne[1]) % a->ne[2], i3 = t / (a->ne[1] * a->ne[2]);
    return (float *) ((char *) a->data + i1 * a->nb[1] + i2 * a->nb[2] + i3 * a->nb[3]);
}

// this thread's share [*begin, *end) of n rows, in contiguous slices
static void thread_rows(const struct ggml_compute_params * params, int64_t n, int64_t * begin, int64_t * end) {
    const int64_t per_th = (n + params->nth - 1) / params->nth;
    *begin = params->ith * per_th < n ? params->ith * per_th : n;
    *end   = *begin + per_th < n ? *begin + per_th : n;
}

// ---- tile path ----

#ifdef LOWBIT_AVX2
// AQLM with groups of 8: one f16 codeword is one 128-bit load and one conversion
static void aqlm_decode_rows_avx2(const struct ggml_lowbit_type_info * info, const uint8_t * codes, size_t row_bytes,
                                  int64_t n_per_row, int64_t row0, int64_t n_rows, const ggml_fp16_t * codebook,
                                  const ggml_fp16_t * row_scale, float * out) {
    const int     M        = info->num_codebooks;
    const int64_t K        = (int64_t) 1 << info->code_bits;
    const int64_t n_blocks = n_per_row / 8;
    for (int64_t r = 0; r < n_rows; ++r) {
        const uint8_t * row   = codes + r * row_bytes;
        const __m256    scale = _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(row_scale[row0 + r]));
        float *         dst   = out + r * n_per_row;
        for (int64_t b = 0; b < n_blocks; ++b) {
            __m256 acc = _mm256_setzero_ps();
            for (int m = 0; m < M; ++m) {
                const uint32_t code = info->code_bits == 8 ? row[b * M + m]
                                                           : ((const uint16_t *) row)[b * M + m];  // little-endian
                const __m128i  word = _mm_loadu_si128((const __m128i *) (codebook + ((int64_t) m * K + code) * 8));
                acc = _mm256_add_ps(acc, _mm256_cvtph_ps(word));
            }
            _mm256_storeu_ps(dst + b * 8, _mm256_mul_ps(acc, scale));
        }
    }
}
#endif

// rows [r0, r0 + nr) of the weight to f32, from row-ordered codes (rows row_bytes apart)
static void decode_row_codes(const struct ggml_compute_params * params, const struct ggml_tensor * w,
                             const struct ggml_lowbit_type_info * info, const void * const * sides,
                             const uint8_t * rows, size_t row_bytes, int64_t r0, int64_t nr, float * out) {
#ifdef LOWBIT_AVX2
    if (!params->use_ref && info->method == GGML_LOWBIT_METHOD_AQLM && info->block_size == 8) {
        aqlm_decode_rows_avx2(info, rows, row_bytes, w->ne[0], r0, nr, (const ggml_fp16_t *) sides[0],
                              (const ggml_fp16_t *) sides[1], out);
        return;
    }
#endif
    GGML_UNUSED(params);
    GGML_UNUSED(info);
    ggml_lowbit_dequantize_rows(w->type, rows, row_bytes, w->ne[0], r0, nr, sides, out);
}

// rows [r0, r0 + nr) of the weight to f32. Transposed codes are first gathered back into row order,
// GATHER_ROWS rows at a time, in this thread's part of the work buffer (codes_scratch).
static void decode_rows(const struct ggml_compute_params * params, const struct ggml_tensor * w,
                        const struct ggml_lowbit_type_info * info, const void * const * sides, int64_t r0,
                        int64_t nr, uint8_t * codes_scratch, float * out) {
    if (!ggml_lowbit_cpu_codes_transposed(w)) {
        decode_row_codes(params, w, info, sides, (const uint8_t *) w->data + r0 * w->nb[1], w->nb[1], r0, nr, out);
        return;
    }
    const int64_t   n_rows = w->ne[1], row_bytes = (int64_t) w->nb[1];
    const uint8_t * codes  = (const uint8_t *) w->data;
    for (int64_t g0 = 0; g0 < nr; g0 += GATHER_ROWS) {
        const int64_t ng = nr - g0 < GATHER_ROWS ? nr - g0 : GATHER_ROWS;
        for (int64_t c = 0; c < row_bytes; ++c) {
            const uint8_t * column = codes + c * n_rows + r0 + g0;
            for (int64_t i = 0; i < ng; ++i) {
                codes_scratch[i * row_bytes + c] = column[i];
            }
        }
        decode_row_codes(params, w, info, sides, codes_scratch, row_bytes, r0 + g0, ng, out + g0 * w->ne[0]);
    }
}

static float dot_scalar(const float * a, const float * b, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        sum += a[i] * b[i];
    }
    return sum;
}

static void mul_mat_tiles(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                          const struct ggml_lowbit_type_info * info, const void * const * sides, float * buf,
                          uint8_t * codes_scratch) {
    const struct ggml_tensor * w         = dst->src[0];
    const struct ggml_tensor * x         = dst->src[1];
    const int64_t              n_per_row = w->ne[0];
    const int64_t              n_rows    = w->ne[1];
    const int64_t              n_tokens  = n_tokens_of(dst);
    int64_t                    r_begin, r_end;
    thread_rows(params, n_rows, &r_begin, &r_end);

    for (int64_t r0 = r_begin; r0 < r_end; r0 += TILE_ROWS) {
        const int64_t nr = r_end - r0 < TILE_ROWS ? r_end - r0 : TILE_ROWS;
        decode_rows(params, w, info, sides, r0, nr, codes_scratch, buf);
        for (int64_t t = 0; t < n_tokens; ++t) {
            const float * xt = token_row(x, t);
            float *       yt = token_row(dst, t);
            for (int64_t r = 0; r < nr; ++r) {
                if (params->use_ref) {
                    yt[r0 + r] = dot_scalar(buf + r * n_per_row, xt, n_per_row);
                } else {
                    ggml_vec_dot_f32((int) n_per_row, yt + r0 + r, 0, buf + r * n_per_row, 0, xt, 0, 1);
                }
            }
        }
    }
}

// ---- PTQ1.61 in gathered channel order (salient channels first, then the others) ----

// one token's input in the rows' channel order, the binarized channels times their column scale; returns
// the sums of the binarized and of the salient inputs
static void ptq161_gather_token(const float * x, const uint8_t * mask, const ggml_fp16_t * col_scale, int64_t d_in,
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

// rows [r0, r0 + nr) in gathered order, without the column scale (the gathered input carries it)
static void ptq161_decode_rows_gathered(const struct ggml_tensor * w, const void * const * sides, int64_t r0,
                                        int64_t nr, float * out) {
    const int64_t       d_in       = w->ne[0];
    const int64_t       row_bytes  = (int64_t) w->nb[1];
    const int64_t       n_sal      = ggml_lowbit_ptq161_n_salient(w->src[GGML_LOWBIT_PTQ161_SPILL]);
    const int64_t       spill_row  = 3 * n_sal / 8;
    const int64_t       sign_bytes = (d_in - n_sal) / 8;
    const ggml_fp16_t * params     = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_ROW_PARAMS];
    for (int64_t r = 0; r < nr; ++r) {
        const uint8_t *     row   = (const uint8_t *) w->data + (r0 + r) * row_bytes;
        const uint8_t *     spill = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SPILL] + (r0 + r) * spill_row;
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
#ifdef LOWBIT_AVX2
        const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        const __m256  pos = _mm256_set1_ps(m + a), neg = _mm256_set1_ps(m - a);
        for (int64_t b = 0; b < sign_bytes; ++b) {
            const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(row[b]), bit), bit);
            _mm256_storeu_ps(ob + 8 * b, _mm256_blendv_ps(neg, pos, _mm256_castsi256_ps(set)));
        }
#else
        for (int64_t j = 0; j < 8 * sign_bytes; ++j) {
            ob[j] = (row[j / 8] >> (j % 8) & 1) ? m + a : m - a;
        }
#endif
    }
}

// ---- prompt path: decoded row chunks through ggml's sgemm ----

// false (before touching dst) when sgemm does not take these shapes; every thread gets the same answer
static bool mul_mat_sgemm(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                          const struct ggml_lowbit_type_info * info, const void * const * sides, float * buf,
                          uint8_t * codes_scratch) {
#ifdef GGML_USE_LLAMAFILE
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * x = dst->src[1];
    // sgemm takes row counts that are multiples of 4: every chunk's count is when the weight's is
    if (params->use_ref || x->ne[2] * x->ne[3] != 1 || dst->ne[2] * dst->ne[3] != 1 || w->ne[1] % 4 != 0) {
        return false;
    }
    const int64_t             n_per_row = w->ne[0];
    const bool                ptq161    = info->method == GGML_LOWBIT_METHOD_PTQ161;
    const struct sgemm_layout l         = sgemm_layout_of(dst, info);
    const void *              xs        = x->data;
    int64_t                   ldx       = x->nb[1] / sizeof(float);
    const void *              rows      = buf;
    int                       type      = GGML_TYPE_F32;
    if (ptq161) {
        // PTQ1.61: the tokens gathered into the rows' channel order once, the rows decoded in that order
        float *       g     = buf + l.gathered;
        const int64_t n_sal = ggml_lowbit_ptq161_n_salient(w->src[GGML_LOWBIT_PTQ161_SPILL]);
        for (int64_t t = params->ith; t < x->ne[1]; t += params->nth) {
            float sum_bin, sum_sal;
            ptq161_gather_token(token_row(x, t), (const uint8_t *) sides[GGML_LOWBIT_PTQ161_MASK],
                                (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_COL_SCALE], n_per_row, n_sal,
                                g + t * n_per_row, &sum_bin, &sum_sal);
        }
        xs  = g;
        ldx = n_per_row;
    }
#ifdef LOWBIT_BF16_SGEMM
    const bool bf16 = ggml_lowbit_get_cpu_path() == GGML_LOWBIT_CPU_FASTEST;
    if (bf16) {  // each thread converts the tokens it gathered (PTQ1.61) or would have
        ggml_bf16_t * xb = (ggml_bf16_t *) (buf + l.tokens_bf16);
        for (int64_t t = params->ith; t < x->ne[1]; t += params->nth) {
            ggml_cpu_fp32_to_bf16((const float *) xs + t * ldx, xb + t * n_per_row, n_per_row);
        }
        xs   = xb;
        ldx  = n_per_row;
        rows = buf + l.rows_bf16;
        type = GGML_TYPE_BF16;
    }
#endif
    for (int64_t r0 = 0; r0 < w->ne[1]; r0 += SGEMM_ROWS) {
        const int64_t nr     = w->ne[1] - r0 < SGEMM_ROWS ? w->ne[1] - r0 : SGEMM_ROWS;
        int64_t       a, b;
        thread_rows(params, nr, &a, &b);
        if (a < b && ptq161) {
            ptq161_decode_rows_gathered(w, sides, r0 + a, b - a, buf + a * n_per_row);
        } else if (a < b) {
            decode_rows(params, w, info, sides, r0 + a, b - a, codes_scratch, buf + a * n_per_row);
        }
#ifdef LOWBIT_BF16_SGEMM
        if (bf16 && a < b) {
            ggml_cpu_fp32_to_bf16(buf + a * n_per_row, (ggml_bf16_t *) rows + a * n_per_row, (b - a) * n_per_row);
        }
#endif
        ggml_barrier(params->threadpool);  // also orders the gather and conversions before the first sgemm
        // sgemm ends with a barrier, so the next chunk's decode cannot overwrite rows still in use
        if (!llamafile_sgemm(params, nr, x->ne[1], n_per_row, rows, n_per_row, xs, ldx,
                             (char *) dst->data + r0 * sizeof(float), dst->nb[1] / sizeof(float), type, type,
                             GGML_TYPE_F32)) {
            GGML_ASSERT(r0 == 0);  // the shapes decide (k, chunk rows % 4), so the first chunk answers for all
            return false;
        }
    }
    return true;
#else
    GGML_UNUSED(params);
    GGML_UNUSED(dst);
    GGML_UNUSED(info);
    GGML_UNUSED(sides);
    GGML_UNUSED(buf);
    GGML_UNUSED(codes_scratch);
    return false;
#endif
}

// ---- look-up table path ----

// acc[r] += sum over c < n_codes of tables[c][codes[r * stride + c]] for n_rows rows. Codes LUT_CHUNK at a
// time over all rows, so the chunk's tables (16 KiB) stay in L1; prefetch_rows: how many rows after these
// the caller will read next (their codes are asked for early).
static void lut_accumulate(const uint8_t * codes, size_t stride, int64_t n_rows, int64_t n_codes,
                           const float * tables, int64_t prefetch_rows, float * acc) {
    for (int64_t c0 = 0; c0 < n_codes; c0 += LUT_CHUNK) {
        const float * chunk = tables + c0 * 256;
        const int64_t nc    = n_codes - c0 < LUT_CHUNK ? n_codes - c0 : LUT_CHUNK;
        for (int64_t r = 0; r < n_rows; ++r) {
            const uint8_t * row = codes + r * stride + c0;
            if (c0 == 0 && r < prefetch_rows) {
                // codes stream from memory block after block of rows: ask for the next block early
                const char * next = (const char *) row + n_rows * stride;
                for (size_t off = 0; off < (size_t) n_codes; off += 64) {
                    __builtin_prefetch(next + off);
                }
            }
            float   s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;  // partial sums break the add chain
            int64_t i  = 0;
            if (nc == LUT_CHUNK) {
                // codes as two 64-bit words: one load per 8 codes instead of one per code
                uint64_t lo, hi;
                memcpy(&lo, row, 8);
                memcpy(&hi, row + 8, 8);
                for (int k = 0; k < 8; k += 4, lo >>= 32, hi >>= 32) {
                    s0 += chunk[(k + 0) * 256 + (lo & 255)];
                    s1 += chunk[(k + 1) * 256 + ((lo >> 8) & 255)];
                    s2 += chunk[(k + 2) * 256 + ((lo >> 16) & 255)];
                    s3 += chunk[(k + 3) * 256 + ((lo >> 24) & 255)];
                    s0 += chunk[(k + 8) * 256 + (hi & 255)];
                    s1 += chunk[(k + 9) * 256 + ((hi >> 8) & 255)];
                    s2 += chunk[(k + 10) * 256 + ((hi >> 16) & 255)];
                    s3 += chunk[(k + 11) * 256 + ((hi >> 24) & 255)];
                }
                i = nc;
            }
            for (; i < nc; ++i) {
                s0 += chunk[i * 256 + row[i]];
            }
            acc[r] += (s0 + s1) + (s2 + s3);
        }
    }
}

// table[16 h + l] = high[h] + low[l]: both PTQ1.61 tables split a byte into its two nibbles
static void table_from_nibbles(const float low[16], const float high[16], float * table) {
    for (int h = 0; h < 16; ++h) {
#ifdef LOWBIT_AVX2
        const __m256 hv = _mm256_set1_ps(high[h]);
        _mm256_storeu_ps(table + 16 * h, _mm256_add_ps(hv, _mm256_loadu_ps(low)));
        _mm256_storeu_ps(table + 16 * h + 8, _mm256_add_ps(hv, _mm256_loadu_ps(low + 8)));
#else
        for (int l = 0; l < 16; ++l) {
            table[16 * h + l] = high[h] + low[l];
        }
#endif
    }
}

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

// AQLM: tables [n_tokens][n_blocks][M][256] from codebooks transposed to [M][8][256] (cb_t)
static void aqlm_build_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                              const struct ggml_lowbit_type_info * info, const ggml_fp16_t * codebook, float * cb_t,
                              float * lut) {
    const int     M        = info->num_codebooks;
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
            float *       out = lut + (p * M + m) * 256;
            const float * cb  = cb_t + m * 8 * 256;
#ifdef LOWBIT_AVX2
            __m256 xi[8];
            for (int i = 0; i < 8; ++i) {
                xi[i] = _mm256_set1_ps(xb[i]);
            }
            for (int k = 0; k < 256; k += 8) {
                __m256 acc = _mm256_mul_ps(xi[0], _mm256_loadu_ps(cb + k));
                for (int i = 1; i < 8; ++i) {
                    acc = _mm256_fmadd_ps(xi[i], _mm256_loadu_ps(cb + i * 256 + k), acc);
                }
                _mm256_storeu_ps(out + k, acc);
            }
#else
            for (int k = 0; k < 256; ++k) {
                float acc = 0.0f;
                for (int i = 0; i < 8; ++i) {
                    acc += xb[i] * cb[i * 256 + k];
                }
                out[k] = acc;
            }
#endif
        }
    }
    ggml_barrier(params->threadpool);
}

static void aqlm_mul_mat_lut(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                             const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const int64_t              n_codes   = w->ne[0] / 8 * info->num_codebooks;  // per row, one byte each
    const int64_t              n_rows    = w->ne[1];
    const ggml_fp16_t *        row_scale = (const ggml_fp16_t *) sides[1];
    float *                    cb_t      = work;
    float *                    lut       = work + align_floats(info->num_codebooks * 8 * 256);

    aqlm_build_tables(params, dst, info, (const ggml_fp16_t *) sides[0], cb_t, lut);

    int64_t r_begin, r_end;
    thread_rows(params, n_rows, &r_begin, &r_end);
    for (int64_t t = 0; t < n_tokens_of(dst); ++t) {
        float * yt = token_row(dst, t);
        // blocks of LUT_ROW_BLOCK rows: their codes (~10 KiB) stay in L1 while the chunks pass over them
        for (int64_t rb = r_begin; rb < r_end; rb += LUT_ROW_BLOCK) {
            const int64_t nrb = r_end - rb < LUT_ROW_BLOCK ? r_end - rb : LUT_ROW_BLOCK;
            float         acc[LUT_ROW_BLOCK] = { 0.0f };
            lut_accumulate((const uint8_t *) w->data + rb * w->nb[1], w->nb[1], nrb, n_codes,
                           lut + t * n_codes * 256, r_end - rb - nrb, acc);
            for (int64_t r = 0; r < nrb; ++r) {
                yt[rb + r] = acc[r] * GGML_CPU_FP16_TO_FP32(row_scale[rb + r]);
            }
        }
    }
}

#ifdef LOWBIT_AVX2
// AQLM, a few tokens, no tables: each group's M codewords are summed into the group's 8 weights, which
// multiply-add with NT tokens; NR rows at a time so NR x NT accumulators hide the FMA latency. 8-bit codes read
// f32 codewords from this thread's copy of the codebooks (8 KiB each, they stay in L1); a table per token would
// cost 256 x 8 multiply-adds per group and codebook, more than the matmul itself unless a layer has thousands of
// rows. 16-bit codes (WIDE) read the f16 codebook as stored (1 MiB: no copy, no tables), one load and one
// conversion per codeword. NR, NT, M and WIDE are constants at each call, so the loops unroll and the accumulators
// live in registers.
static inline __attribute__((always_inline)) void aqlm_direct_rows(const uint8_t * const * rows, const int M,
                                                                   const int WIDE, int64_t n_blocks,
                                                                   const float * cb, const ggml_fp16_t * cb16,
                                                                   const float * const * xs, const int NR,
                                                                   const int NT, float * sums) {
    __m256 acc[4][2];
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t) {
            acc[i][t] = _mm256_setzero_ps();
        }
    }
    for (int64_t b = 0; b < n_blocks; ++b) {
        __m256 x[2];
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t) {
            x[t] = _mm256_loadu_ps(xs[t] + b * 8);
        }
#pragma GCC unroll 8
        for (int i = 0; i < NR; ++i) {
            __m256 w;
            if (WIDE) {
                const uint16_t * code = (const uint16_t *) rows[i] + b * M;  // little-endian, as x86 reads it
                w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (cb16 + (size_t) code[0] * 8)));
#pragma GCC unroll 4
                for (int m = 1; m < M; ++m) {
                    const __m128i h = _mm_loadu_si128((const __m128i *) (cb16 + ((size_t) m * 65536 + code[m]) * 8));
                    w               = _mm256_add_ps(w, _mm256_cvtph_ps(h));
                }
            } else {
                const uint8_t * code = rows[i] + b * M;
                w                    = _mm256_load_ps(cb + (size_t) code[0] * 8);
#pragma GCC unroll 4
                for (int m = 1; m < M; ++m) {
                    w = _mm256_add_ps(w, _mm256_load_ps(cb + ((size_t) m * 256 + code[m]) * 8));
                }
            }
#pragma GCC unroll 2
            for (int t = 0; t < NT; ++t) {
                acc[i][t] = _mm256_fmadd_ps(w, x[t], acc[i][t]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
#pragma GCC unroll 2
        for (int t = 0; t < NT; ++t) {
            const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[i][t]), _mm256_extractf128_ps(acc[i][t], 1));
            const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
            sums[t * 4 + i] = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
        }
    }
}

// the code width as a constant, and for 8-bit codes the codebook count where it is 2 or 1 (2x8, 1x8), so the
// loops unroll too
static inline __attribute__((always_inline)) void aqlm_direct_rows_m(const uint8_t * const * rows, int M, bool wide,
                                                                     int64_t n_blocks, const float * cb,
                                                                     const ggml_fp16_t * cb16,
                                                                     const float * const * xs, const int NR,
                                                                     const int NT, float * sums) {
    if (wide) {
        aqlm_direct_rows(rows, M, 1, n_blocks, cb, cb16, xs, NR, NT, sums);
    } else if (M == 2) {
        aqlm_direct_rows(rows, 2, 0, n_blocks, cb, cb16, xs, NR, NT, sums);
    } else if (M == 1) {
        aqlm_direct_rows(rows, 1, 0, n_blocks, cb, cb16, xs, NR, NT, sums);
    } else {
        aqlm_direct_rows(rows, M, 0, n_blocks, cb, cb16, xs, NR, NT, sums);
    }
}

// tokens in pairs (2 rows at a time), then a single one (4 rows); a last group short of rows repeats its last
// row and drops the extra sums. With 8-bit codes each thread converts its own copy of the codebooks (no barrier).
static void aqlm_mul_mat_direct(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const int                  M         = info->num_codebooks;
    const int64_t              n_blocks  = w->ne[0] / 8;
    const int64_t              n_tokens  = n_tokens_of(dst);
    const ggml_fp16_t *        codebook  = (const ggml_fp16_t *) sides[0];
    const ggml_fp16_t *        row_scale = (const ggml_fp16_t *) sides[1];
    const bool                 wide      = info->code_bits == 16;
    float *                    cb        = wide ? NULL : work + params->ith * align_floats(M * 256 * 8);

    int64_t r_begin, r_end;
    thread_rows(params, w->ne[1], &r_begin, &r_end);
    if (r_begin == r_end) {
        return;
    }
    if (!wide) {
        ggml_cpu_fp16_to_fp32(codebook, cb, M * 256 * 8);
    }
    for (int64_t t0 = 0; t0 < n_tokens; t0 += 2) {
        const int     nt    = n_tokens - t0 >= 2 ? 2 : 1;
        const int     group = nt == 2 ? 2 : 4;
        const float * xs[2] = { token_row(dst->src[1], t0), token_row(dst->src[1], t0 + nt - 1) };
        float *       ys[2] = { token_row(dst, t0), token_row(dst, t0 + nt - 1) };
        for (int64_t r = r_begin; r < r_end; r += group) {
            const int       nr = r_end - r < group ? (int) (r_end - r) : group;
            const uint8_t * rows[4];
            for (int i = 0; i < 4; ++i) {
                rows[i] = (const uint8_t *) w->data + (r + (i < nr ? i : nr - 1)) * w->nb[1];
            }
            float sums[8];
            if (group == 2) {
                aqlm_direct_rows_m(rows, M, wide, n_blocks, cb, codebook, xs, 2, 2, sums);
            } else {
                aqlm_direct_rows_m(rows, M, wide, n_blocks, cb, codebook, xs, 4, 1, sums);
            }
            for (int t = 0; t < nt; ++t) {
                for (int i = 0; i < nr; ++i) {
                    ys[t][r + i] = sums[t * 4 + i] * GGML_CPU_FP16_TO_FP32(row_scale[r + i]);
                }
            }
        }
    }
}
#endif

// ---- register tables: AQLM with 8-bit codes kept transposed (CPU_LOWBIT buffers), a few tokens ----

bool ggml_lowbit_cpu_repackable(const struct ggml_tensor * w) {
#ifdef LOWBIT_REGISTER_TABLES
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(w->type);
    return info != NULL && info->method == GGML_LOWBIT_METHOD_AQLM && info->code_bits == 8 &&
           info->block_size == 8 && w->ne[2] == 1 && w->ne[3] == 1 && w->ne[1] % RT_ROWS == 0 &&
           w->ne[1] >= RT_MIN_ROWS;
#else
    GGML_UNUSED(w);
    return false;
#endif
}

void ggml_lowbit_cpu_transpose_codes(const struct ggml_tensor * w, const void * codes, void * out) {
    const int64_t   n_rows = w->ne[1], row_bytes = (int64_t) ggml_row_size(w->type, w->ne[0]);
    const uint8_t * in     = (const uint8_t *) codes;
    uint8_t *       t      = (uint8_t *) out;
    for (int64_t r = 0; r < n_rows; ++r) {
        for (int64_t c = 0; c < row_bytes; ++c) {
            t[c * n_rows + r] = in[r * row_bytes + c];
        }
    }
}

// Work: every thread's f32 sums of all rows [n_threads][n_tokens][n_rows], then each thread's own part: its
// codebooks as bf16 pairs [M][4][256] (at 0), the token's input in bf16, one group's tables in f32 and int16, and
// the rows' int16 sums of a group. Offsets in floats from the start of the thread's part.
struct rt_layout {
    int64_t x16, tabf, tabw, acc16, floats;
};

static struct rt_layout rt_layout_of(const struct ggml_tensor * w) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(w->type);
    struct rt_layout                     l;
    l.x16    = align_floats(info->num_codebooks * 4 * 256);
    l.tabf   = l.x16 + align_floats((w->ne[0] + 1) / 2);
    l.tabw   = l.tabf + RT_TABLES * 256;
    l.acc16  = l.tabw + RT_TABLES * 128;
    l.floats = l.acc16 + align_floats(w->ne[1] / 2);
    return l;
}

static int64_t rt_floats(const struct ggml_tensor * dst, int n_threads) {
    const struct ggml_tensor * w = dst->src[0];
    return n_threads * (align_floats(n_tokens_of(dst) * w->ne[1]) + rt_layout_of(w).floats);
}

#ifdef LOWBIT_REGISTER_TABLES
// rows per thread: whole RT_ROWS chunks
static void rt_thread_rows(const struct ggml_compute_params * params, int64_t n_rows, int64_t * begin,
                           int64_t * end) {
    thread_rows(params, n_rows / RT_ROWS, begin, end);
    *begin *= RT_ROWS;
    *end *= RT_ROWS;
}

// Codebooks [M][256][8] f16 as bf16 pairs [M][4][256] (pair p of a code: components 2p and 2p + 1, the operand
// layout of vdpbf16ps), codes in pack order: within each 32 codes, the order in which _mm512_packs_epi32 of two
// 16-code vectors of table entries gives them back in order (it interleaves its sources 4 lanes at a time), so
// 16-lane vector j holds codes 32 (j / 2) + 4 (j % 2) + 8 a + b for a, b in 0..3. Returns false if a codebook
// entry is infinite or NaN.
static bool rt_codebook_pairs(const ggml_fp16_t * codebook, int M, uint32_t * pairs) {
    __mmask32 unfit = 0;
    for (int m = 0; m < M; ++m) {
        for (int j = 0; j < 16; ++j) {
            __m512i group[4];  // codes 4 g .. 4 g + 3 of this vector, as 16 pairs each (code-major)
            for (int a = 0; a < 4; ++a) {
                const int     first = 32 * (j / 2) + 4 * (j % 2) + 8 * a;
                const __m512i h     = _mm512_loadu_si512(codebook + (m * 256 + first) * 8);
                unfit |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(h, _mm512_set1_epi16(0x7C00)), _mm512_set1_epi16(0x7C00));
                const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
                const __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
                group[a]        = (__m512i) _mm512_cvtne2ps_pbh(hi, lo);
            }
            for (int p = 0; p < 4; ++p) {
                // lanes 4 a + b: pair p of code b of group a (word 4 b + p of group a)
                const __m512i idx = _mm512_setr_epi32(p, 4 + p, 8 + p, 12 + p, 16 + p, 20 + p, 24 + p, 28 + p,
                                                      p, 4 + p, 8 + p, 12 + p, 16 + p, 20 + p, 24 + p, 28 + p);
                const __m512i x   = _mm512_permutex2var_epi32(group[0], idx, group[1]);
                const __m512i y   = _mm512_permutex2var_epi32(group[2], idx, group[3]);
                _mm512_store_si512(pairs + (m * 4 + p) * 256 + j * 16, _mm512_shuffle_i64x2(x, y, _MM_SHUFFLE(1, 0, 1, 0)));
            }
        }
    }
    return unfit == 0;
}

// the token's n inputs in bf16 (rounded to nearest even): its 32-bit words are the input pairs vdpbf16ps takes
static void rt_input_bf16(const float * x, int64_t n, uint16_t * out) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 mask = n - i >= 16 ? 0xFFFF : (__mmask16) ((1u << (n - i)) - 1);
        const __m256bh  h    = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
        _mm256_mask_storeu_epi16(out + i, mask, (__m256i) h);
    }
}

// The tables of code positions c0 .. c0 + nc - 1 (nc <= RT_TABLES) for the input pairs xp: <codeword, the
// position's 8 inputs> in f32 from bf16 codewords and inputs (16 entries are 4 vdpbf16ps, two products per lane,
// half the FMAs of f32: the build's cost; codebook m's pairs loaded once for every position it serves; bf16 rounds
// to 1/256, about ggml's own 8-bit activations) into tabf, then int16 into tabw with one step for the group so that
// the largest entry is RT_ENTRY_MAX and a row's sum over the group fits in int16. Returns the step. Inputs
// (rt_finite) and codebooks (rt_codebook_pairs) are finite, so an infinite step means the entries overflowed.
static float rt_build_group(const uint32_t * xp, const uint32_t * pairs, int M, int64_t c0, int64_t nc, float * tabf,
                            int16_t * tabw) {
    __m512 largest = _mm512_setzero_ps();
    for (int m = 0; m < M; ++m) {
        const int64_t first = c0 + ((m - c0 % M) + M) % M;
        for (int j = 0; j < 16; ++j) {
            __m512bh column[4];
            for (int p = 0; p < 4; ++p) {
                column[p] = (__m512bh) _mm512_load_si512(pairs + (m * 4 + p) * 256 + j * 16);
            }
            for (int64_t c = first, b = first / M; c < c0 + nc; c += M, ++b) {
                const uint32_t * xb = xp + b * 4;
                __m512           e  = _mm512_setzero_ps();
                for (int p = 0; p < 4; ++p) {
                    e = _mm512_dpbf16_ps(e, column[p], (__m512bh) _mm512_set1_epi32((int) xb[p]));
                }
                _mm512_store_ps(tabf + (c - c0) * 256 + j * 16, e);
                largest = _mm512_range_ps(largest, e, 0x0B);  // the larger magnitude, sign cleared
            }
        }
    }
    const float  top = _mm512_reduce_max_ps(largest);
    const __m512 inv = _mm512_set1_ps(top > 0.0f && top <= FLT_MAX ? RT_ENTRY_MAX / top : 0.0f);
    for (int64_t i = 0; i < nc * 256; i += 32) {
        const __m512i lo = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(tabf + i), inv));
        const __m512i hi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(tabf + i + 16), inv));
        _mm512_store_si512(tabw + i, _mm512_packs_epi32(lo, hi));  // codes i .. i + 31 in order (pack order)
    }
    return top / RT_ENTRY_MAX;
}

// whether n floats are all finite: x - x is 0 for them, NaN for infinities and NaN
static bool rt_finite(const float * v, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __m512 x = _mm512_maskz_loadu_ps(n - i >= 16 ? 0xFFFF : (__mmask16) ((1u << (n - i)) - 1), v + i);
        acc            = _mm512_add_ps(acc, _mm512_sub_ps(x, x));
    }
    return _mm512_cmp_ps_mask(acc, _mm512_setzero_ps(), _CMP_EQ_OQ) == 0xFFFF;
}

// AQLM with 8-bit codes kept transposed, a few tokens. Each thread takes a contiguous share of the code positions
// (its codes are one stream) and all rows: per group of up to RT_TABLES positions it builds the tables
// (rt_build_group); a table then sits in 8 zmm registers, one vpermi2w looks up 32 rows' codes (one load of
// transposed codes) in 64 entries and two blends pick the quarter; the group's int16 sums go to the thread's f32
// sums times its step. After a barrier each thread adds up its share of the rows over the threads. Codewords and
// inputs round to bf16 (1/256 relative, as fine as ggml's 8-bit activations, which round to 1/254 of a block's
// largest), table entries to 1/4094 of their group's largest.
static void aqlm_mul_mat_register_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                         const struct ggml_lowbit_type_info * info, const void * const * sides,
                                         float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const int                  M         = info->num_codebooks;
    const int64_t              n_rows    = w->ne[1];
    const int64_t              n_codes   = (int64_t) w->nb[1];  // per row, one byte each
    const int64_t              n_tokens  = n_tokens_of(dst);
    const uint8_t *            codes     = (const uint8_t *) w->data;
    const ggml_fp16_t *        codebook  = (const ggml_fp16_t *) sides[0];
    const ggml_fp16_t *        row_scale = (const ggml_fp16_t *) sides[1];
    const int64_t              sums_floats = align_floats(n_tokens * n_rows);

    const struct rt_layout l     = rt_layout_of(w);
    float *                sums  = work + params->ith * sums_floats;  // this thread's [n_tokens][n_rows]
    float *                mine  = work + params->nth * sums_floats + params->ith * l.floats;
    uint32_t *             pairs = (uint32_t *) mine;
    uint16_t *             x16   = (uint16_t *) (mine + l.x16);
    float *                tabf  = mine + l.tabf;
    int16_t *              tabw  = (int16_t *) (mine + l.tabw);
    int16_t *              acc16 = (int16_t *) (mine + l.acc16);

    int64_t c_begin, c_end;
    thread_rows(params, n_codes, &c_begin, &c_end);
    bool codebook_finite = true;
    if (c_begin < c_end) {
        codebook_finite = rt_codebook_pairs(codebook, M, pairs);
    }
    const __m512i bit6 = _mm512_set1_epi16(64), bit7 = _mm512_set1_epi16(128);
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float * x   = token_row(dst->src[1], t);
        float *       acc = sums + t * n_rows;
        memset(acc, 0, n_rows * sizeof(float));
        if (c_begin < c_end && !(codebook_finite && rt_finite(x, w->ne[0]))) {
            for (int64_t r = 0; r < n_rows; ++r) {
                acc[r] = NAN;  // as a float dot product with a NaN or an infinity in it mostly is
            }
            continue;
        }
        rt_input_bf16(x, w->ne[0], x16);
        for (int64_t c0 = c_begin; c0 < c_end; c0 += RT_TABLES) {
            const int64_t nc   = c_end - c0 < RT_TABLES ? c_end - c0 : RT_TABLES;
            // the group's codes stream in while its tables are built
            for (int64_t off = 0; off < nc * n_rows; off += 64) {
                _mm_prefetch((const char *) (codes + c0 * n_rows + off), _MM_HINT_T1);
            }
            const __m512  step = _mm512_set1_ps(rt_build_group((const uint32_t *) x16, pairs, M, c0, nc, tabf, tabw));
            memset(acc16, 0, n_rows * sizeof(int16_t));
            for (int64_t tb = 0; tb < nc; ++tb) {
                __m512i table[8];
                for (int j = 0; j < 8; ++j) {
                    table[j] = _mm512_load_si512(tabw + tb * 256 + j * 32);
                }
                const uint8_t * column = codes + (c0 + tb) * n_rows;
                for (int64_t r = 0; r < n_rows; r += RT_ROWS) {
                    const __m512i   idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *) (column + r)));
                    const __mmask32 hi1 = _mm512_test_epi16_mask(idx, bit6), hi2 = _mm512_test_epi16_mask(idx, bit7);
                    __m512i q0 = _mm512_permutex2var_epi16(table[0], idx, table[1]);
                    __m512i q1 = _mm512_permutex2var_epi16(table[2], idx, table[3]);
                    __m512i q2 = _mm512_permutex2var_epi16(table[4], idx, table[5]);
                    __m512i q3 = _mm512_permutex2var_epi16(table[6], idx, table[7]);
                    q0 = _mm512_mask_blend_epi16(hi1, q0, q1);
                    q2 = _mm512_mask_blend_epi16(hi1, q2, q3);
                    q0 = _mm512_mask_blend_epi16(hi2, q0, q2);
                    _mm512_storeu_si512(acc16 + r, _mm512_add_epi16(_mm512_loadu_si512(acc16 + r), q0));
                }
            }
            for (int64_t r = 0; r < n_rows; r += 16) {
                const __m512 s16 = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *) (acc16 + r))));
                _mm512_storeu_ps(acc + r, _mm512_fmadd_ps(s16, step, _mm512_loadu_ps(acc + r)));
            }
        }
    }
    ggml_barrier(params->threadpool);

    int64_t r_begin, r_end;
    rt_thread_rows(params, n_rows, &r_begin, &r_end);
    for (int64_t t = 0; t < n_tokens; ++t) {
        float * yt = token_row(dst, t);
        for (int64_t r = r_begin; r < r_end; r += 16) {
            __m512 sum = _mm512_setzero_ps();
            for (int th = 0; th < params->nth; ++th) {
                sum = _mm512_add_ps(sum, _mm512_loadu_ps(work + th * sums_floats + t * n_rows + r));
            }
            const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (row_scale + r)));
            _mm512_storeu_ps(yt + r, _mm512_mul_ps(sum, scale));
        }
    }
}
#endif

// PTQ1.61 work: per token the gathered input [d_in] and its two sums, then the tables [n_bytes][256]
struct ptq161_layout {
    int64_t n_sal, sign_bytes, sal_bytes_in_row, spill_bytes;  // per row
    int64_t n_bytes;                                           // table positions: sign, then salient bytes
    int64_t token_floats;                                      // gathered input + 2 sums, aligned
    // AVX-512: int16 inputs, binarized ones padded to 32, salient ones in 32-slot chunks per 16 code bytes
    int64_t bin_slots, sal_slots_row, sal_slots, i16_floats;
};

static struct ptq161_layout ptq161_layout_of(const struct ggml_tensor * w) {
    struct ptq161_layout l;
    const int64_t        d_in = w->ne[0];
    l.n_sal                   = ggml_lowbit_ptq161_n_salient(w->src[GGML_LOWBIT_PTQ161_SPILL]);
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

// the tables path, or (AVX-512) each thread's own gathered tokens
static int64_t ptq161_lut_floats(const struct ggml_tensor * w, int64_t n_tokens, int n_threads) {
    const struct ptq161_layout l      = ptq161_layout_of(w);
    const int64_t              tables = n_tokens * (l.token_floats + l.n_bytes * 256);
    const int64_t              own    = n_threads * n_tokens * (l.token_floats + l.i16_floats);
    return tables > own ? tables : own;
}

// one row's output from its sums against a gathered token: sum of sign * input = 2 * (inputs whose bit is set)
// - all of them; p = the row's params (binary scale, binary offset, salient scale, salient min)
static inline float ptq161_row_output(const ggml_fp16_t * p, float pos, float sal, float sum_bin, float sum_sal) {
    return GGML_CPU_FP16_TO_FP32(p[0]) * (2.0f * pos - sum_bin) + GGML_CPU_FP16_TO_FP32(p[1]) * sum_bin +
           GGML_CPU_FP16_TO_FP32(p[2]) * sal + GGML_CPU_FP16_TO_FP32(p[3]) * sum_sal;
}

static void ptq161_build_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                const void * const * sides, const struct ptq161_layout * l, float * work) {
    const int64_t       d_in      = dst->src[0]->ne[0];
    const int64_t       n_tokens  = n_tokens_of(dst);
    const uint8_t *     mask      = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_MASK];
    const ggml_fp16_t * col_scale = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_COL_SCALE];
    float *             tables    = work + n_tokens * l->token_floats;

    // the input in the row's channel order: salient ones as they are, the others times their column scale
    for (int64_t t = params->ith; t < n_tokens; t += params->nth) {
        float * g = work + t * l->token_floats;  // then its two sums
        ptq161_gather_token(token_row(dst->src[1], t), mask, col_scale, d_in, l->n_sal, g, g + d_in, g + d_in + 1);
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
        table_from_nibbles(low, high, tables + p * 256);
    }
    ggml_barrier(params->threadpool);
}

static void ptq161_mul_mat_lut(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                               const void * const * sides, float * work) {
    const struct ggml_tensor * w        = dst->src[0];
    const struct ptq161_layout l        = ptq161_layout_of(w);
    const int64_t              d_in     = w->ne[0];
    const int64_t              n_tokens = n_tokens_of(dst);
    const uint8_t *            spill    = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SPILL];
    const ggml_fp16_t *        rp       = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_ROW_PARAMS];

    ptq161_build_tables(params, dst, sides, &l, work);

    int64_t r_begin, r_end;
    thread_rows(params, w->ne[1], &r_begin, &r_end);
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float * g       = work + t * l.token_floats;
        const float * tables  = work + n_tokens * l.token_floats + t * l.n_bytes * 256;
        const float   sum_bin = g[d_in], sum_sal = g[d_in + 1];
        float *       yt      = token_row(dst, t);
        for (int64_t rb = r_begin; rb < r_end; rb += LUT_ROW_BLOCK) {
            const int64_t   nrb  = r_end - rb < LUT_ROW_BLOCK ? r_end - rb : LUT_ROW_BLOCK;
            const uint8_t * rows = (const uint8_t *) w->data + rb * w->nb[1];
            float           pos[LUT_ROW_BLOCK] = { 0.0f };  // sums of the inputs whose sign bit is set
            float           sal[LUT_ROW_BLOCK] = { 0.0f };  // salient codes . inputs
            lut_accumulate(rows, w->nb[1], nrb, l.sign_bytes, tables, r_end - rb - nrb, pos);
            lut_accumulate(rows + l.sign_bytes, w->nb[1], nrb, l.sal_bytes_in_row, tables + l.sign_bytes * 256, 0,
                           sal);
            lut_accumulate(spill + rb * l.spill_bytes, l.spill_bytes, nrb, l.spill_bytes,
                           tables + (l.sign_bytes + l.sal_bytes_in_row) * 256, 0, sal);
            for (int64_t r = 0; r < nrb; ++r) {
                yt[rb + r] = ptq161_row_output(rp + (rb + r) * GGML_LOWBIT_PTQ161_ROW_PARAMS_N, pos[r], sal[r],
                                               sum_bin, sum_sal);
            }
        }
    }
}

#ifdef LOWBIT_AVX512
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
static void ptq161_mul_mat_avx512(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                  const void * const * sides, float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const struct ptq161_layout l         = ptq161_layout_of(w);
    const int64_t              d_in      = w->ne[0];
    const int64_t              n_tokens  = n_tokens_of(dst);
    const int64_t              per_token = l.token_floats + l.i16_floats;
    const uint8_t *            spill     = (const uint8_t *) sides[GGML_LOWBIT_PTQ161_SPILL];
    const ggml_fp16_t *        rp        = (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_ROW_PARAMS];
    float *                    own       = work + params->ith * n_tokens * per_token;

    int64_t r_begin, r_end;
    thread_rows(params, w->ne[1], &r_begin, &r_end);
    if (r_begin == r_end) {
        return;
    }
    for (int64_t t = 0; t < n_tokens; ++t) {
        float * g = own + t * per_token;
        ptq161_gather_token(token_row(dst->src[1], t), (const uint8_t *) sides[GGML_LOWBIT_PTQ161_MASK],
                            (const ggml_fp16_t *) sides[GGML_LOWBIT_PTQ161_COL_SCALE], d_in, l.n_sal, g, g + d_in,
                            g + d_in + 1);
        ptq161_token_to_int16(g, &l, (int16_t *) (g + l.token_floats));
    }
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float *   g   = own + t * per_token;
        const int16_t * i16 = (const int16_t *) (g + l.token_floats);
        float *         yt  = token_row(dst, t);
        for (int64_t r = r_begin; r < r_end;) {
            const uint8_t *     rows = (const uint8_t *) w->data + r * w->nb[1];
            const uint8_t *     sp   = spill + r * l.spill_bytes;
            const ggml_fp16_t * p    = rp + r * GGML_LOWBIT_PTQ161_ROW_PARAMS_N;
            if (r_end - r >= 4) {
                ptq161_rows_avx512(rows, w->nb[1], sp, p, &l, 4, i16, g[d_in], g[d_in + 1], yt + r);
                r += 4;
            } else {
                ptq161_rows_avx512(rows, w->nb[1], sp, p, &l, 1, i16, g[d_in], g[d_in + 1], yt + r);
                r += 1;
            }
        }
    }
}
#endif

void ggml_lowbit_cpu_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor *           w    = dst->src[0];
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(w->type);
    GGML_ASSERT(info != NULL);
    GGML_ASSERT(dst->src[1]->type == GGML_TYPE_F32 && dst->src[1]->nb[0] == sizeof(float));
    GGML_ASSERT(dst->type == GGML_TYPE_F32 && dst->nb[0] == sizeof(float));
    GGML_ASSERT(dst->ne[0] == w->ne[1] && dst->src[1]->ne[0] == w->ne[0]);

    // The loader checked the side tensors with a message for the user; a graph built by other code
    // gets the same check before any code indexes a codebook.
    char err[256];
    if (!ggml_lowbit_check_sides(w, (const struct ggml_tensor * const *) w->src, err, sizeof(err)) ||
        !ggml_lowbit_check_side_data(w, (const struct ggml_tensor * const *) w->src, err, sizeof(err))) {
        GGML_ABORT("%s: %s", w->name, err);
    }
    const void * sides[GGML_LOWBIT_MAX_SIDES] = { NULL };
    for (int i = 0; i < info->n_sides; ++i) {
        sides[i] = w->src[i]->data;
    }

    float * work = (float *) GGML_PAD((uintptr_t) params->wdata, ALIGN_FLOATS * sizeof(float));
    GGML_ASSERT(params->wsize >= ggml_lowbit_cpu_work_size(dst, params->nth));
    uint8_t * codes_scratch = (uint8_t *) (work + path_floats(dst, params->nth) +
                                           params->ith * scratch_floats_per_thread(w));
#ifdef LOWBIT_AVX2
    // AQLM with 16-bit codes (1x16), a few tokens: no tables (2^16 entries per group); the codeword sums
    if (info->method == GGML_LOWBIT_METHOD_AQLM && info->code_bits == 16 && info->block_size == 8 &&
        !params->use_ref && n_tokens_of(dst) <= LUT_MAX_TOKENS &&
        ggml_lowbit_get_cpu_path() == GGML_LOWBIT_CPU_FASTEST) {
        aqlm_mul_mat_direct(params, dst, info, sides, work);
        return;
    }
#endif
    if (takes_lut_path(info, n_tokens_of(dst), params->use_ref)) {
        if (info->method == GGML_LOWBIT_METHOD_PTQ161) {
#ifdef LOWBIT_AVX512
            if (ggml_lowbit_get_cpu_path() == GGML_LOWBIT_CPU_FASTEST) {
                ptq161_mul_mat_avx512(params, dst, sides, work);
                return;
            }
#endif
            ptq161_mul_mat_lut(params, dst, sides, work);
        } else if (ggml_lowbit_cpu_codes_transposed(w)) {
#ifdef LOWBIT_REGISTER_TABLES
            aqlm_mul_mat_register_tables(params, dst, info, sides, work);
#else
            GGML_ABORT("%s: transposed codes without the register-table kernel", w->name);
#endif
        } else {
#ifdef LOWBIT_AVX2
            if (ggml_lowbit_get_cpu_path() == GGML_LOWBIT_CPU_FASTEST) {
                aqlm_mul_mat_direct(params, dst, info, sides, work);
                return;
            }
#endif
            aqlm_mul_mat_lut(params, dst, info, sides, work);
        }
    } else if (n_tokens_of(dst) >= SGEMM_MIN_TOKENS && mul_mat_sgemm(params, dst, info, sides, work, codes_scratch)) {
        return;
    } else {
        mul_mat_tiles(params, dst, info, sides, work + params->ith * tile_floats_per_thread(w->ne[0]), codes_scratch);
    }
}
