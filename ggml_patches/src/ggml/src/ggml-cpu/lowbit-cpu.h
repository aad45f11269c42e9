#pragma once

// MUL_MAT for the lowbit-gguf types on the CPU (weight = codes, its side tensors in weight->src[]).

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// bytes of the shared work buffer the op needs with n_threads threads
size_t ggml_lowbit_cpu_work_size(const struct ggml_tensor * dst, int n_threads);

// dst = W x with W = src[0] (a lowbit type), x = src[1] (F32); called by every thread of the op
void ggml_lowbit_cpu_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
