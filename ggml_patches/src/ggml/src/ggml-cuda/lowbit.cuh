#pragma once

// MUL_MAT for the lowbit-gguf types on CUDA (weight = codes, its side tensors in weight->src[]).

#include "common.cuh"

// whether the CUDA backend runs MUL_MAT of this lowbit weight with these activations
bool ggml_cuda_lowbit_supports_mul_mat(const ggml_tensor * src0, const ggml_tensor * src1);

// dst = W x: a fused decode + GEMV for a few tokens, a decode to F32 + cuBLAS SGEMM for prompts
void ggml_cuda_lowbit_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                              ggml_tensor * dst);
