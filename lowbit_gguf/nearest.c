/* Nearest-codeword search for the quantizers: for each query q (n rows of g floats), the minimum over K codewords
 * c of norms[c] - 2 <q, c> and its first index. With norms = |c|^2 that is the nearest codeword; AQLM's code search
 * passes c^T H c and a scaled gradient. The codebook comes coordinate-major ([g][K]) so the inner loop runs over
 * codewords, and in blocks that stay in L1/L2 while every query goes through them. Plain C: the compiler
 * vectorises both inner loops (the min needs -ffinite-math-only and -fno-signed-zeros). Inputs are finite. */
#include <float.h>
#include <stdint.h>

#define BLOCK 1024

void lowbit_nearest_codewords(const float * queries, int64_t n, int64_t g, const float * codebook_t,
                              const float * norms, int64_t K, float * values, int64_t * indices) {
    float score[BLOCK];
    for (int64_t i = 0; i < n; ++i) {
        values[i]  = FLT_MAX;
        indices[i] = 0;
    }
    for (int64_t k0 = 0; k0 < K; k0 += BLOCK) {
        const int64_t nb = K - k0 < BLOCK ? K - k0 : BLOCK;
        for (int64_t i = 0; i < n; ++i) {
            const float * q = queries + i * g;
            for (int64_t k = 0; k < nb; ++k) {
                score[k] = norms[k0 + k];
            }
            if (g == 8) {  /* AQLM's groups: one pass over the block, eight products per codeword */
                const float * c = codebook_t + k0;
                const float   q0 = -2 * q[0], q1 = -2 * q[1], q2 = -2 * q[2], q3 = -2 * q[3];
                const float   q4 = -2 * q[4], q5 = -2 * q[5], q6 = -2 * q[6], q7 = -2 * q[7];
                for (int64_t k = 0; k < nb; ++k) {
                    score[k] += q0 * c[k] + q1 * c[K + k] + q2 * c[2 * K + k] + q3 * c[3 * K + k] +
                                q4 * c[4 * K + k] + q5 * c[5 * K + k] + q6 * c[6 * K + k] + q7 * c[7 * K + k];
                }
            } else {
                for (int64_t d = 0; d < g; ++d) {
                    const float   qd = -2 * q[d];
                    const float * c  = codebook_t + d * K + k0;
                    for (int64_t k = 0; k < nb; ++k) {
                        score[k] += qd * c[k];
                    }
                }
            }
            float m = FLT_MAX;
            for (int64_t k = 0; k < nb; ++k) {
                m = score[k] < m ? score[k] : m;
            }
            if (m < values[i]) {
                for (int64_t k = 0; k < nb; ++k) {
                    if (score[k] == m) {
                        indices[i] = k0 + k;
                        break;
                    }
                }
                values[i] = m;
            }
        }
    }
}
