// VPTQ on AVX2 (with F16C and FMA): the few-token kernel, 8 lanes of a vector at a time (v <= 8 is one register, v <=
// 16 two, and so on; the codebooks are padded with zeros to whole registers by vptq_prepare). Channels are taken
// `unroll` at a time into independent accumulators, so the multiply-adds of one group do not wait on each other, and
// tokens two at a time, which keeps the accumulators in registers.

#include "vptq.h"

#ifdef LOWBIT_AVX2

#define VPTQ_MAX_CHUNKS (GGML_LOWBIT_VPTQ_MAX_VECTOR_LEN / 8)
#define VPTQ_MAX_UNROLL 4

// inlined where called, so constant arguments unroll the loops and keep the accumulators in registers
#define VPTQ_INLINE static inline __attribute__((always_inline))

// entry j of a group's stream; 8- and 16-bit entries (k = 256 without a residual, 256 + 256) are whole bytes
VPTQ_INLINE uint32_t vptq_entry_at(const uint8_t * stream, int64_t group_bytes, int64_t j, int bits) {
    if (bits == 8) {
        return stream[j];
    }
    if (bits == 16) {
        uint16_t e;
        memcpy(&e, stream + 2 * j, 2);
        return e;
    }
    return vptq_entry_fast(stream, group_bytes, j, bits);
}

// groups [g0, g1) for tokens t0 and t0 + 1 (nt of them); n_chunks, unroll, bits and has_res are constants where it
// is called. d_in is a multiple of 64 (the types' block), so of unroll.
VPTQ_INLINE void vptq_groups_avx2(const struct vptq_op * op, struct ggml_tensor * dst, int64_t g0, int64_t g1,
                                  int64_t t0, int nt, int n_chunks, int unroll, int bits, bool has_res) {
    const uint32_t mask = (uint32_t) (op->k - 1);
    const float *  xs0  = op->xs + t0 * op->d_in;
    const float *  xs1  = op->xs + (t0 + nt - 1) * op->d_in;
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t * stream = op->codes + g * op->group_bytes;
        __m256          acc[2][VPTQ_MAX_UNROLL][VPTQ_MAX_CHUNKS];
        for (int t = 0; t < 2; ++t) {
            for (int u = 0; u < unroll; ++u) {
                for (int c = 0; c < n_chunks; ++c) {
                    acc[t][u][c] = _mm256_setzero_ps();
                }
            }
        }
        for (int64_t j = 0; j < op->d_in; j += unroll) {
            __m256 word[VPTQ_MAX_UNROLL][VPTQ_MAX_CHUNKS];
            for (int u = 0; u < unroll; ++u) {
                const uint32_t e = vptq_entry_at(stream, op->group_bytes, j + u, bits);
                const float *  c = op->centroids + (int64_t) (e & mask) * op->padded;
                for (int k = 0; k < n_chunks; ++k) {
                    word[u][k] = _mm256_loadu_ps(c + 8 * k);
                }
                if (has_res) {
                    const float * r = op->res_centroids + (int64_t) (e >> op->main_bits) * op->padded;
                    for (int k = 0; k < n_chunks; ++k) {
                        word[u][k] = _mm256_add_ps(word[u][k], _mm256_loadu_ps(r + 8 * k));
                    }
                }
            }
            for (int u = 0; u < unroll; ++u) {
                const __m256 x0 = _mm256_broadcast_ss(xs0 + j + u);
                for (int k = 0; k < n_chunks; ++k) {
                    acc[0][u][k] = _mm256_fmadd_ps(x0, word[u][k], acc[0][u][k]);
                }
                if (nt == 2) {
                    const __m256 x1 = _mm256_broadcast_ss(xs1 + j + u);
                    for (int k = 0; k < n_chunks; ++k) {
                        acc[1][u][k] = _mm256_fmadd_ps(x1, word[u][k], acc[1][u][k]);
                    }
                }
            }
        }
        for (int t = 0; t < nt; ++t) {
            float sums[GGML_LOWBIT_VPTQ_MAX_VECTOR_LEN];
            for (int k = 0; k < n_chunks; ++k) {
                __m256 s = acc[t][0][k];
                for (int u = 1; u < unroll; ++u) {
                    s = _mm256_add_ps(s, acc[t][u][k]);
                }
                _mm256_storeu_ps(sums + 8 * k, s);
            }
            float * y = token_row(dst, t0 + t) + g * op->v;
            for (int64_t i = 0; i < op->v; ++i) {
                y[i] = sums[i] + op->bias_dot[t0 + t];
            }
        }
    }
}

// one instance per common shape, so the loops above unroll with constant bounds
#define VPTQ_CASE(chunks, unroll, bits, res) vptq_groups_avx2(&op, dst, g0, g1, t0, nt, chunks, unroll, bits, res)

void vptq_mul_mat_avx2(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                       const struct ggml_lowbit_type_info * info, const void * const * sides, float * work) {
    GGML_UNUSED(info);
    struct vptq_op op;
    vptq_prepare(params, dst, sides, work, &op);
    int64_t g0, g1;
    thread_rows(params, op.n_groups, &g0, &g1);
    const bool has_res = op.k_res > 1;
    const int  chunks  = (int) (op.padded / 8);
    for (int64_t t0 = 0; t0 < op.n_tokens; t0 += 2) {
        const int nt = op.n_tokens - t0 >= 2 ? 2 : 1;
        if (chunks == 1 && op.bits == 16 && has_res) {
            VPTQ_CASE(1, 4, 16, true);
        } else if (chunks == 1 && op.bits == 8 && !has_res) {
            VPTQ_CASE(1, 4, 8, false);
        } else if (chunks == 1) {
            has_res ? VPTQ_CASE(1, 4, op.bits, true) : VPTQ_CASE(1, 4, op.bits, false);
        } else if (chunks == 2) {
            has_res ? VPTQ_CASE(2, 2, op.bits, true) : VPTQ_CASE(2, 2, op.bits, false);
        } else {
            VPTQ_CASE(chunks, 1, op.bits, has_res);
        }
    }
}

#endif  // LOWBIT_AVX2
