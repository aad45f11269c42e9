#pragma once

// MUL_MAT for the lowbit-gguf types on the CPU (weight = codes, its side tensors in weight->src[]).

#include "ggml.h"
#include "ggml-lowbit-cpu.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// bytes of the shared work buffer the op needs with n_threads threads
size_t ggml_lowbit_cpu_work_size(const struct ggml_tensor * dst, int n_threads);

// dst = W x with W = src[0] (a lowbit type), x = src[1] (F32); called by every thread of the op
void ggml_lowbit_cpu_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst);

// Codes transposed: byte c of row r at c * n_rows + r, so one load brings the same code position of 32 rows,
// the layout of the register-table kernel (AQLM with 8-bit codes, a few tokens). The CPU_LOWBIT buffer type
// (lowbit-repack.cpp) keeps the weights this kernel serves (ggml_lowbit_cpu_repackable) in it; every path reads
// either layout.
void ggml_lowbit_cpu_transpose_codes(const struct ggml_tensor * w, const void * codes, void * out);
// true when w lives in a CPU_LOWBIT buffer (defined in lowbit-repack.cpp)
bool ggml_lowbit_cpu_codes_transposed(const struct ggml_tensor * w);

#ifdef __cplusplus
}
#endif
