#pragma once

// The model loader's side of the lowbit-gguf types (a weight of a lowbit type brings its side tensors), and the checks
// that turn what a malformed file could make llama.cpp assert on into load errors. Every function here throws
// std::runtime_error with a message naming the tensor or key.

#include "llama-arch.h"
#include "llama.h"

#include <cstdint>
#include <functional>
#include <initializer_list>

struct ggml_context;
struct ggml_tensor;
struct llama_model_loader;

// Before the hyperparameters are read: the metadata values upstream asserts on (block, expert and expert-group
// counts, norm epsilons) and the tensor data offsets (mapped tensors must be 32-byte aligned).
void llama_lowbit_check_metadata(llama_model_loader & ml);

// creates one tensor the way the loader creates weights (same device and buffer choice as its weight)
using llama_lowbit_create_fn = std::function<ggml_tensor *(const LLM_TN_IMPL & tn, std::initializer_list<int64_t> ne)>;

// Before the loader creates the tensor named by tn: if the file holds it in a lowbit type, checks that it is a
// matmul weight (llama.cpp's tensor info table: op MUL_MAT, suffix "weight") and that its side tensors are there
// with the types and shapes its type needs, and hangs the sides' metadata on the weight's, so the loader's probe of
// buffer types sees a whole weight. Nothing is built on a weight or side before this has passed. A matmul weight or
// embedding of another type must be of a float or quantized type.
void llama_lowbit_prepare_tensor(const LLM_TN_IMPL & tn, const llama_model_loader & ml);

// After the loader created `weight` (named by tn): if its type is a lowbit type, create its side tensors (names from
// the weight's, shapes from the file, checked by llama_lowbit_prepare_tensor) and hang them on weight->src[].
void llama_lowbit_attach_sides(ggml_tensor * weight, const LLM_TN_IMPL & tn, const llama_model_loader & ml,
                               const llama_lowbit_create_fn & create);

// After the loader filled the tensors of ctx with data: for every lowbit weight among them, the checks that
// read side tensor data (ggml_lowbit_check_side_data; device buffers are read through a host copy).
void llama_lowbit_check_loaded(ggml_context * ctx);

// After llama.cpp chose the architecture's RoPE: a file that keeps Llama's q/k rows in Hugging Face's order (an
// imported VPTQ checkpoint, whose vectors span consecutive rows) says lowbit_gguf.rope_type = "neox", and RoPE then
// rotates pairs of halves, as Hugging Face does, instead of the pairs of neighbours the converter's permutation
// makes. Only a normal RoPE can be switched so; anything else is a load error naming the key.
void llama_lowbit_rope_type(llama_model_loader & ml, enum llama_rope_type & rope_type);
