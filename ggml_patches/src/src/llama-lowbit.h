#pragma once

// The model loader's side of the lowbit-gguf types: a weight of a lowbit type brings its side tensors.

#include "llama-arch.h"

#include <cstdint>
#include <functional>
#include <initializer_list>

struct ggml_context;
struct ggml_tensor;
struct llama_model_loader;

// creates one tensor the way the loader creates weights (same device and buffer choice as its weight)
using llama_lowbit_create_fn = std::function<ggml_tensor *(const LLM_TN_IMPL & tn, std::initializer_list<int64_t> ne)>;

// After the loader created `weight` (named by tn, suffix "weight"): if its type is a lowbit type, create its
// side tensors (names from the weight's, shapes from the file), check them, and hang them on weight->src[].
// Throws std::runtime_error with a message naming the tensor when a side tensor is missing or malformed.
void llama_lowbit_attach_sides(ggml_tensor * weight, const LLM_TN_IMPL & tn, const llama_model_loader & ml,
                               const llama_lowbit_create_fn & create);

// After the loader filled the tensors of ctx with data: for every lowbit weight among them, the checks that
// read side tensor data (ggml_lowbit_check_side_data; device buffers are read through a host copy).
// Throws std::runtime_error naming the tensor when they fail.
void llama_lowbit_check_loaded(ggml_context * ctx);
