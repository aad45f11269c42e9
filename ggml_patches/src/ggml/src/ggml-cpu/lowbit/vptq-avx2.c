// VPTQ on AVX2 (with F16C and FMA): the few-token kernel, 8 lanes of a vector at a time (v <= 8 is one register per
// token, v <= 16 two, and so on; the codebooks are padded with zeros to whole registers by vptq_prepare).

#include "vptq.h"

#ifdef LOWBIT_AVX2

#define VPTQ_MAX_CHUNKS (GGML_LOWBIT_VPTQ_MAX_VECTOR_LEN / 8)

// the groups [g0, g1) for n_tokens tokens; n_chunks and has_res are constants where it is called
static inline void vptq_groups_avx2(const struct vptq_op * op, struct ggml_tensor * dst, int64_t g0, int64_t g1,
                                    int n_chunks, bool has_res) {
    const uint32_t mask = (uint32_t) (op->k - 1);
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t * stream = op->codes + g * op->group_bytes;
        __m256          acc[FEW_TOKENS_MAX][VPTQ_MAX_CHUNKS];
        for (int t = 0; t < FEW_TOKENS_MAX; ++t) {
            for (int c = 0; c < n_chunks; ++c) {
                acc[t][c] = _mm256_setzero_ps();
            }
        }
        for (int64_t j = 0; j < op->d_in; ++j) {
            const uint32_t e = vptq_entry_fast(stream, op->group_bytes, j, op->bits);
            const float *  c = op->centroids + (int64_t) (e & mask) * op->padded;
            __m256         word[VPTQ_MAX_CHUNKS];
            for (int k = 0; k < n_chunks; ++k) {
                word[k] = _mm256_loadu_ps(c + 8 * k);
            }
            if (has_res) {
                const float * r = op->res_centroids + (int64_t) (e >> op->main_bits) * op->padded;
                for (int k = 0; k < n_chunks; ++k) {
                    word[k] = _mm256_add_ps(word[k], _mm256_loadu_ps(r + 8 * k));
                }
            }
            for (int64_t t = 0; t < op->n_tokens; ++t) {
                const __m256 xj = _mm256_broadcast_ss(op->xs + t * op->d_in + j);
                for (int k = 0; k < n_chunks; ++k) {
                    acc[t][k] = _mm256_fmadd_ps(xj, word[k], acc[t][k]);
                }
            }
        }
        for (int64_t t = 0; t < op->n_tokens; ++t) {
            float sums[GGML_LOWBIT_VPTQ_MAX_VECTOR_LEN];
            for (int k = 0; k < n_chunks; ++k) {
                _mm256_storeu_ps(sums + 8 * k, acc[t][k]);
            }
            float * y = token_row(dst, t) + g * op->v;
            for (int64_t i = 0; i < op->v; ++i) {
                y[i] = sums[i] + op->bias_dot[t];
            }
        }
    }
}

void vptq_mul_mat_avx2(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                       const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    GGML_UNUSED(info);
    struct vptq_op op;
    vptq_prepare(params, dst, sides, work, &op);
    int64_t g0, g1;
    thread_rows(params, op.n_groups, &g0, &g1);
    const bool has_res = op.k_res > 1;
    switch (op.padded / 8) {
        case 1:
            has_res ? vptq_groups_avx2(&op, dst, g0, g1, 1, true) : vptq_groups_avx2(&op, dst, g0, g1, 1, false);
            break;
        case 2:
            has_res ? vptq_groups_avx2(&op, dst, g0, g1, 2, true) : vptq_groups_avx2(&op, dst, g0, g1, 2, false);
            break;
        default:
            vptq_groups_avx2(&op, dst, g0, g1, (int) (op.padded / 8), has_res);
            break;
    }
}

#endif  // LOWBIT_AVX2
