#pragma once

// What the CPU kernels of the lowbit-gguf types share: the ISA switches, the work-buffer and row-split helpers, the
// look-up-table accumulator, and the struct through which each method hands its kernels to the dispatcher
// (lowbit-cpu.c). A method's kernels live in files named after it: <method>.c (portable, and the method's struct),
// <method>-<isa>.c (one per instruction set it has SIMD kernels for).

#include "ggml-cpu-impl.h"
#include "ggml-cpu.h"
#include "ggml-lowbit.h"
#include "lowbit-cpu.h"
#include "simd-mappings.h"

#include <stdbool.h>
#include <stdint.h>

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
#    define LOWBIT_BF16_SGEMM 1  // prompts through sgemm in bf16 (vdpbf16ps, as upstream's BF16 models)
#endif

#define TILE_ROWS        16
#define FEW_TOKENS_MAX   4   // the few-token kernels (decode) serve up to this many tokens
#define LUT_CHUNK        16  // codes whose tables (16 x 256 floats) are gathered together
#define LUT_ROW_BLOCK    64  // rows whose codes are gathered together
#define ALIGN_FLOATS     16  // 64 bytes
#define SGEMM_ROWS       128
#define SGEMM_MIN_TOKENS 8
#define GATHER_ROWS      16  // rows of transposed codes gathered back into row order at a time

static inline int64_t align_floats(int64_t n) {
    return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

static inline int64_t n_tokens_of(const struct ggml_tensor * dst) {
    return dst->src[1]->ne[1] * dst->src[1]->ne[2] * dst->src[1]->ne[3];
}

// row of token t in x or dst (either may be 2-, 3- or 4-d)
static inline float * token_row(const struct ggml_tensor * a, int64_t t) {
    const int64_t i1 = t % a->ne[1], i2 = (t / a->ne[1]) % a->ne[2], i3 = t / (a->ne[1] * a->ne[2]);
    return (float *) ((char *) a->data + i1 * a->nb[1] + i2 * a->nb[2] + i3 * a->nb[3]);
}

// this thread's share [*begin, *end) of n rows, in contiguous slices
static inline void thread_rows(const struct ggml_compute_params * params, int64_t n, int64_t * begin, int64_t * end) {
    const int64_t per_th = (n + params->nth - 1) / params->nth;
    *begin = params->ith * per_th < n ? params->ith * per_th : n;
    *end   = *begin + per_th < n ? *begin + per_th : n;
}

// acc[r] += sum over c < n_codes of tables[c][codes[r * stride + c]] for n_rows rows (one 256-entry table per byte
// position); prefetch_rows: how many rows after these the caller reads next
void lowbit_lut_accumulate(const uint8_t * codes, size_t stride, int64_t n_rows, int64_t n_codes, const float * tables,
                           int64_t prefetch_rows, float * acc);

// dst = W x for a few tokens (n_tokens <= FEW_TOKENS_MAX), all threads; work: the op's shared work buffer
typedef void (*lowbit_cpu_kernel)(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                                  const struct ggml_lowbit_type_info * info, const void * const * sides, float * work);

// rows [row0, row0 + n_rows) to f32 from row-ordered codes (rows row_bytes apart), as ggml_lowbit_dequantize_rows
typedef void (*lowbit_cpu_decode_rows)(const struct ggml_lowbit_type_info * info, const uint8_t * codes,
                                       size_t row_bytes, int64_t n_per_row, int64_t row0, int64_t n_rows,
                                       const void * const * sides, const int64_t * weight_params, float * out);

// One method's CPU kernels. The dispatcher takes, in order: the few-token kernel few_tokens picks, the prompt path
// (rows decoded SGEMM_ROWS at a time, then ggml's sgemm), the tiles (rows decoded, dotted with every token). NULL
// members fall back to the shared code: no few-token kernel, the reference decode, tokens as they are.
struct lowbit_cpu_method {
    // the few-token kernel this build has for w on the process-wide path (ggml_lowbit_get_cpu_path), or NULL
    lowbit_cpu_kernel (*few_tokens)(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * w,
                                    enum ggml_lowbit_cpu_path path);
    // floats of shared work the few-token kernels need at most (any path)
    int64_t (*few_tokens_floats)(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * dst,
                                 int n_threads);
    lowbit_cpu_decode_rows decode_rows;  // the fastest decode this build has
    // Prompt path in the rows' own channel order: prompt_tokens writes token t of x, in that order, at
    // out + t * n_per_row (each thread its tokens t = ith, ith + nth, ...); prompt_rows decodes rows in it.
    void (*prompt_tokens)(const struct ggml_compute_params * params, const struct ggml_tensor * dst,
                          const void * const * sides, float * out);
    void (*prompt_rows)(const struct ggml_tensor * w, const void * const * sides, int64_t row0, int64_t n_rows,
                        float * out);
    // whether w's codes may be kept transposed (CPU_LOWBIT buffers) for one of the few-token kernels
    bool (*repackable)(const struct ggml_lowbit_type_info * info, const struct ggml_tensor * w);
};

#include "lowbit-methods.h"  // each method's struct, declared from lowbit_gguf/gguf/types.py
