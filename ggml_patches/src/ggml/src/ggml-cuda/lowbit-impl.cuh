#pragma once

// What the CUDA kernels of the lowbit-gguf types share: the struct through which each method (lowbit-<method>.cu)
// hands its MUL_MAT to the launcher (lowbit.cu), and the cuBLAS product of a decoded weight.

#include "common.cuh"
#include "ggml-lowbit.h"

struct ggml_cuda_lowbit_method {
    // whether the method has a kernel for this type
    bool (*supports)(const ggml_lowbit_type_info * info);
    // dst = W x, sides checked and on the device: a fused decode + GEMV for up to LOWBIT_GEMV_MAX_TOKENS tokens, a
    // decode to F32 + cuBLAS SGEMM for prompts
    void (*mul_mat)(ggml_backend_cuda_context & ctx, const ggml_lowbit_type_info * info, const ggml_tensor * src0,
                    const ggml_tensor * src1, ggml_tensor * dst);
};

#include "lowbit-methods.cuh"  // each method's struct, declared from lowbit_gguf/gguf/types.py

// dst^T = W x^T for a decoded weight W [n_rows][d_in] (row-major) in device memory
void ggml_cuda_lowbit_sgemm_decoded(ggml_backend_cuda_context & ctx, const float * weights, const ggml_tensor * src0,
                                    const ggml_tensor * src1, ggml_tensor * dst);
