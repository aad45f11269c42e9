#pragma once

// MUL_MAT for the lowbit-gguf types on the CPU (weight = codes, its side tensors in weight->src[]).

#include "ggml.h"
#include "ggml-lowbit-cpu.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// What the CPU runs of the types a file chooses: ops with a lowbit tensor only as a MUL_MAT of a lowbit weight (src[0])
// by F32 tokens whose side tensors pass ggml_lowbit_check_sides; element-wise ops (norm and bias weights) only in the
// type combinations their kernels have. The model loader asks before it places each weight, so a file with any other
// is refused naming the tensor instead of aborting at compute.
bool ggml_lowbit_cpu_supports_op(const struct ggml_tensor * op);

// bytes of the shared work buffer the op needs with n_threads threads (0 for a weight that fails the checks, which
// the op then reports)
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
