// AQLM on AVX-512 (BW, DQ, BF16): the register-table kernel for 8-bit codes kept transposed (CPU_LOWBIT buffers,
// lowbit-repack.cpp), a few tokens. The tables are built with bf16 dot products, rounded to int16, each held in 8
// zmm registers and looked up for 32 rows at once with vpermi2w.

#include "aqlm.h"

#ifdef LOWBIT_REGISTER_TABLES

#include <float.h>
#include <math.h>
#include <string.h>

#define RT_TABLES    16  // tables quantized together: 16 entries of at most RT_ENTRY_MAX sum within int16
#define RT_ENTRY_MAX 2047

// Work: every thread's f32 sums of all rows [n_threads][n_tokens][n_rows], then each thread's own part: its
// codebooks as bf16 pairs [M][4][256] (at 0), the token's input in bf16, one group's tables in f32 and int16, and
// the rows' int16 sums of a group. Offsets in floats from the start of the thread's part.
struct rt_layout {
    int64_t x16, tabf, tabw, acc16, floats;
};

static struct rt_layout rt_layout_of(const struct ggml_tensor * w) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(w->type);
    struct rt_layout                     l;
    l.x16    = align_floats(info->aqlm.num_codebooks * 4 * 256);
    l.tabf   = l.x16 + align_floats((w->ne[0] + 1) / 2);
    l.tabw   = l.tabf + RT_TABLES * 256;
    l.acc16  = l.tabw + RT_TABLES * 128;
    l.floats = l.acc16 + align_floats(w->ne[1] / 2);
    return l;
}

int64_t aqlm_register_tables_floats(const struct ggml_tensor * dst, int n_threads) {
    const struct ggml_tensor * w = dst->src[0];
    return n_threads * (align_floats(n_tokens_of(dst) * w->ne[1]) + rt_layout_of(w).floats);
}

// rows per thread: whole AQLM_RT_ROWS chunks
static void rt_thread_rows(const struct ggml_compute_params * params, int64_t n_rows, int64_t * begin,
                           int64_t * end) {
    thread_rows(params, n_rows / AQLM_RT_ROWS, begin, end);
    *begin *= AQLM_RT_ROWS;
    *end *= AQLM_RT_ROWS;
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
void aqlm_mul_mat_register_tables(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                  const struct ggml_lowbit_type_info * info, const void * const * sides,
                                  float * work) {
    const struct ggml_tensor * w         = dst->src[0];
    const int                  M         = info->aqlm.num_codebooks;
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
                for (int64_t r = 0; r < n_rows; r += AQLM_RT_ROWS) {
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

#endif  // LOWBIT_REGISTER_TABLES
