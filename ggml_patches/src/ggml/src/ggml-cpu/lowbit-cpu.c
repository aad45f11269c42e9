// CPU MUL_MAT for the lowbit-gguf types.
//
// Three paths:
//  - look-up table (AQLM with 8-bit codes, a few tokens: decode): for every token, input group b and
//    codebook m, the products <codebook[m][k], x[b*8 : b*8+8]> for all 256 k are computed once; an output
//    row is then a sum of M gathers per group, one per code, times the row scale. Rows split over threads.
//  - prompts (SGEMM_MIN_TOKENS and more): SGEMM_ROWS rows at a time are decoded to f32 by all threads, then
//    multiplied with all tokens by ggml's own llamafile sgemm (all threads together).
//  - tiles (everything else): TILE_ROWS rows are decoded to f32 and dotted with every token.
// params->use_ref takes the tile path with the plain C decode and a scalar dot (the reference).

#include "lowbit-cpu.h"

#include "ggml-cpu-impl.h"
#include "ggml-lowbit.h"
#include "vec.h"

#include <string.h>

#ifdef GGML_USE_LLAMAFILE
#    include "llamafile/sgemm.h"
#endif

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#    include <immintrin.h>
#    define LOWBIT_AVX2 1
#endif

#define TILE_ROWS      16
#define LUT_MAX_TOKENS 4
#define LUT_CHUNK      16  // codes whose tables (16 x 256 floats) are gathered together
#define LUT_ROW_BLOCK  64  // rows whose codes are gathered together
#define ALIGN_FLOATS   16  // 64 bytes
#define SGEMM_ROWS     128
#define SGEMM_MIN_TOKENS 8

static inline int64_t align_floats(int64_t n) {
    return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

static int64_t n_tokens_of(const struct ggml_tensor * dst) {
    return dst->src[1]->ne[1] * dst->src[1]->ne[2] * dst->src[1]->ne[3];
}

static bool takes_lut_path(const struct ggml_lowbit_type_info * info, int64_t n_tokens, bool use_ref) {
    return !use_ref && info->method == GGML_LOWBIT_METHOD_AQLM && info->code_bits == 8 && info->block_size == 8 &&
           n_tokens <= LUT_MAX_TOKENS;
}

// floats: transposed codebooks [M][8][256], then tables [n_tokens][n_blocks][M][256]
static int64_t lut_floats(const struct ggml_lowbit_type_info * info, int64_t n_per_row, int64_t n_tokens) {
    const int64_t K = (int64_t) 1 << info->code_bits;
    return align_floats(info->num_codebooks * info->block_size * K) +
           n_tokens * (n_per_row / info->block_size) * info->num_codebooks * K;
}

static int64_t tile_floats_per_thread(int64_t n_per_row) {
    return align_floats(TILE_ROWS * n_per_row);
}

size_t ggml_lowbit_cpu_work_size(const struct ggml_tensor * dst, int n_threads) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(dst->src[0]->type);
    GGML_ASSERT(info != NULL);
    const int64_t n_per_row = dst->src[0]->ne[0];
    int64_t floats = n_threads * tile_floats_per_thread(n_per_row);
    const int64_t sgemm = SGEMM_ROWS * n_per_row;
    floats = sgemm > floats ? sgemm : floats;
    if (takes_lut_path(info, n_tokens_of(dst), false)) {
        const int64_t lut = lut_floats(info, n_per_row, n_tokens_of(dst));
        floats = lut > floats ? lut : floats;
    }
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

// rows [r0, r0 + nr) of the weight to f32
static void decode_rows(const struct ggml_compute_params * params, const struct ggml_tensor * w,
                        const struct ggml_lowbit_type_info * info, const void * const * sides, int64_t r0,
                        int64_t nr, float * out) {
    const uint8_t * rows = (const uint8_t *) w->data + r0 * w->nb[1];
#ifdef LOWBIT_AVX2
    if (!params->use_ref && info->method == GGML_LOWBIT_METHOD_AQLM && info->block_size == 8) {
        aqlm_decode_rows_avx2(info, rows, w->nb[1], w->ne[0], r0, nr, (const ggml_fp16_t *) sides[0],
                              (const ggml_fp16_t *) sides[1], out);
        return;
    }
#endif
    GGML_UNUSED(params);
    GGML_UNUSED(info);
    ggml_lowbit_dequantize_rows(w->type, rows, w->nb[1], w->ne[0], r0, nr, sides, out);
}

static float dot_scalar(const float * a, const float * b, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        sum += a[i] * b[i];
    }
    return sum;
}

static void mul_mat_tiles(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                          const struct ggml_lowbit_type_info * info, const void * const * sides, float * buf) {
    const struct ggml_tensor * w         = dst->src[0];
    const struct ggml_tensor * x         = dst->src[1];
    const int64_t              n_per_row = w->ne[0];
    const int64_t              n_rows    = w->ne[1];
    const int64_t              n_tokens  = n_tokens_of(dst);
    int64_t                    r_begin, r_end;
    thread_rows(params, n_rows, &r_begin, &r_end);

    for (int64_t r0 = r_begin; r0 < r_end; r0 += TILE_ROWS) {
        const int64_t nr = r_end - r0 < TILE_ROWS ? r_end - r0 : TILE_ROWS;
        decode_rows(params, w, info, sides, r0, nr, buf);
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

// ---- prompt path: decoded row chunks through ggml's sgemm ----

// false (before touching dst) when sgemm does not take these shapes; every thread gets the same answer
static bool mul_mat_sgemm(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                          const struct ggml_lowbit_type_info * info, const void * const * sides, float * buf) {
#ifdef GGML_USE_LLAMAFILE
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * x = dst->src[1];
    if (params->use_ref || x->ne[2] * x->ne[3] != 1 || dst->ne[2] * dst->ne[3] != 1) {
        return false;
    }
    const int64_t n_per_row = w->ne[0];
    for (int64_t r0 = 0; r0 < w->ne[1]; r0 += SGEMM_ROWS) {
        const int64_t nr     = w->ne[1] - r0 < SGEMM_ROWS ? w->ne[1] - r0 : SGEMM_ROWS;
        int64_t       a, b;
        thread_rows(params, nr, &a, &b);
        if (a < b) {
            decode_rows(params, w, info, sides, r0 + a, b - a, buf + a * n_per_row);
        }
        ggml_barrier(params->threadpool);
        // sgemm ends with a barrier, so the next chunk's decode cannot overwrite rows still in use
        if (!llamafile_sgemm(params, nr, x->ne[1], n_per_row, buf, n_per_row, x->data, x->nb[1] / sizeof(float),
                             (char *) dst->data + r0 * sizeof(float), dst->nb[1] / sizeof(float), GGML_TYPE_F32,
                             GGML_TYPE_F32, GGML_TYPE_F32)) {
            GGML_ASSERT(r0 == 0);  // the shapes decide, so the first chunk answers for all
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
    return false;
#endif
}

// ---- look-up table path (AQLM, 8-bit codes, groups of 8) ----

static void build_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                         const struct ggml_lowbit_type_info * info, const ggml_fp16_t * codebook, float * cb_t,
                         float * lut) {
    const int     M        = info->num_codebooks;
    const int64_t n_blocks = dst->src[0]->ne[0] / 8;
    const int64_t n_tokens = n_tokens_of(dst);

    // codebooks transposed to [M][8][256] so a table row is 8 multiply-adds over 256 contiguous floats
    if (params->ith == 0) {
        for (int m = 0; m < M; ++m) {
            for (int k = 0; k < 256; ++k) {
                for (int i = 0; i < 8; ++i) {
                    cb_t[(m * 8 + i) * 256 + k] = GGML_CPU_FP16_TO_FP32(codebook[(m * 256 + k) * 8 + i]);
                }
            }
        }
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

static void mul_mat_lut(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                        const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const int                  M         = info->num_codebooks;
    const int64_t              n_blocks  = w->ne[0] / 8;
    const int64_t              n_rows    = w->ne[1];
    const int64_t              n_tokens  = n_tokens_of(dst);
    const ggml_fp16_t *        row_scale = (const ggml_fp16_t *) sides[1];
    float *                    cb_t      = work;
    float *                    lut       = work + align_floats(M * 8 * 256);

    build_tables(params, dst, info, (const ggml_fp16_t *) sides[0], cb_t, lut);

    int64_t       r_begin, r_end;
    thread_rows(params, n_rows, &r_begin, &r_end);
    const int64_t n_codes = n_blocks * M;
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float * table = lut + t * n_codes * 256;  // [n_blocks][M][256]
        float *       yt    = token_row(dst, t);
        // Blocks of LUT_ROW_BLOCK rows (their codes, ~10 KiB, stay in L1), and within a block LUT_CHUNK codes
        // at a time over its rows (their 16 KiB of tables stay in L1 too).
        for (int64_t rb = r_begin; rb < r_end; rb += LUT_ROW_BLOCK) {
            const int64_t nrb = r_end - rb < LUT_ROW_BLOCK ? r_end - rb : LUT_ROW_BLOCK;
            float         acc[LUT_ROW_BLOCK] = { 0.0f };
            for (int64_t c0 = 0; c0 < n_codes; c0 += LUT_CHUNK) {
                const float * chunk = table + c0 * 256;
                const int64_t nc    = n_codes - c0 < LUT_CHUNK ? n_codes - c0 : LUT_CHUNK;
                for (int64_t r = 0; r < nrb; ++r) {
                    const uint8_t * codes = (const uint8_t *) w->data + (rb + r) * w->nb[1] + c0;  // [n_blocks][M]
                    if (c0 == 0 && rb + LUT_ROW_BLOCK + r < r_end) {
                        // codes stream from memory row block after row block: ask for the next one early
                        const char * next = (const char *) codes + LUT_ROW_BLOCK * w->nb[1];
                        for (size_t off = 0; off < w->nb[1]; off += 64) {
                            __builtin_prefetch(next + off);
                        }
                    }
                    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;  // partial sums break the add chain
                    int64_t i = 0;
                    if (nc == LUT_CHUNK) {
                        // codes as two 64-bit words: one load per 8 codes instead of one per code
                        uint64_t lo, hi;
                        memcpy(&lo, codes, 8);
                        memcpy(&hi, codes + 8, 8);
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
                        s0 += chunk[i * 256 + codes[i]];
                    }
                    acc[r] += (s0 + s1) + (s2 + s3);
                }
            }
            for (int64_t r = 0; r < nrb; ++r) {
                yt[rb + r] = acc[r] * GGML_CPU_FP16_TO_FP32(row_scale[rb + r]);
            }
        }
    }
}

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
    if (!ggml_lowbit_check_sides(w, (const struct ggml_tensor * const *) w->src, err, sizeof(err))) {
        GGML_ABORT("%s: %s", w->name, err);
    }
    const void * sides[GGML_LOWBIT_MAX_SIDES] = { NULL };
    for (int i = 0; i < info->n_sides; ++i) {
        sides[i] = w->src[i]->data;
    }

    float * work = (float *) GGML_PAD((uintptr_t) params->wdata, ALIGN_FLOATS * sizeof(float));
    GGML_ASSERT(params->wsize >= ggml_lowbit_cpu_work_size(dst, params->nth));
    if (takes_lut_path(info, n_tokens_of(dst), params->use_ref)) {
        mul_mat_lut(params, dst, info, sides, work);
    } else if (n_tokens_of(dst) >= SGEMM_MIN_TOKENS && mul_mat_sgemm(params, dst, info, sides, work)) {
        return;
    } else {
        mul_mat_tiles(params, dst, info, sides, work + params->ith * tile_floats_per_thread(w->ne[0]));
    }
}
