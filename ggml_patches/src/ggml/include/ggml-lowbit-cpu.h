#pragma once

// The CPU buffer type of lowbit-gguf weights whose codes are kept transposed for the register-table kernel
// (AQLM with 8-bit codes and enough rows, on builds with AVX-512BW). llama.cpp offers it among the CPU's extra
// buffer types, so the model loader places those weights there as upstream's CPU_REPACK does for Q4_0;
// use_extra_bufts = false (llama-bench -nr 1, --no-repack) keeps every weight as stored in the file.

#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

GGML_BACKEND_API ggml_backend_buffer_type_t ggml_backend_cpu_lowbit_buffer_type(void);

// whether this build keeps w's codes transposed in that buffer type (and runs the register-table kernel on them)
GGML_BACKEND_API bool ggml_lowbit_cpu_repackable(const struct ggml_tensor * w);

#ifdef __cplusplus
}
#endif
