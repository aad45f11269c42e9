// PTQ1.61 on AVX2: sign bits to floats (the prompt path's row decode) and the look-up tables' rows.

#include "ptq161.h"

#ifdef LOWBIT_AVX2

void ptq161_expand_signs_avx2(const uint8_t * signs, int64_t n_bytes, float pos, float neg, float * out) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256  p = _mm256_set1_ps(pos), n = _mm256_set1_ps(neg);
    for (int64_t b = 0; b < n_bytes; ++b) {
        const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(signs[b]), bit), bit);
        _mm256_storeu_ps(out + 8 * b, _mm256_blendv_ps(n, p, _mm256_castsi256_ps(set)));
    }
}

void ptq161_table_from_nibbles_avx2(const float low[16], const float high[16], float * table) {
    for (int h = 0; h < 16; ++h) {
        const __m256 hv = _mm256_set1_ps(high[h]);
        _mm256_storeu_ps(table + 16 * h, _mm256_add_ps(hv, _mm256_loadu_ps(low)));
        _mm256_storeu_ps(table + 16 * h + 8, _mm256_add_ps(hv, _mm256_loadu_ps(low + 8)));
    }
}

#endif  // LOWBIT_AVX2
