/* lowbit-gguf's narrow C API over the patched llama.cpp, loaded from Python through cffi (ABI mode).
 * Plain types only, so the cffi declarations are this file itself (minus the preprocessor lines).
 * Every function that can fail returns a negative value and leaves a message in lb_last_error(). */

#include <stddef.h>
#include <stdint.h>

typedef struct lb_model lb_model;

/* Tag of the patch series compiled into libllama, e.g. "lowbit-gguf-1". */
const char * lb_runtime_version(void);
const char * lb_system_info(void);
const char * lb_last_error(void);

/* 0 silences llama.cpp's log (the default), 1 passes it to stderr. */
void lb_set_verbose(int32_t verbose);

/* n_ctx 0 takes the model's training context; n_threads <= 0 uses every core. NULL on failure. */
lb_model * lb_model_load(const char * path, int32_t n_ctx, int32_t n_threads, int32_t n_gpu_layers);
void       lb_model_free(lb_model * model);
/* Applies a LoRA adapter GGUF to the model's context at scale; negative on failure. */
int32_t    lb_model_load_lora(lb_model * model, const char * path, float scale);

int32_t lb_n_vocab(const lb_model * model);
int32_t lb_n_ctx(const lb_model * model);
int32_t lb_token_bos(const lb_model * model);
int32_t lb_token_eos(const lb_model * model);
int32_t lb_token_is_eog(const lb_model * model, int32_t token);

/* Writes at most max_tokens ids; returns the count, or -(count needed) when out is too small. */
int32_t lb_tokenize(const lb_model * model, const char * text, int32_t text_len, int32_t add_special,
                    int32_t * out, int32_t max_tokens);
/* Text of one token into buf (not NUL-terminated); returns its length, or a negative value. */
int32_t lb_token_to_piece(const lb_model * model, int32_t token, char * buf, int32_t buf_len);

/* Evaluate tokens at positions pos0 .. pos0+n-1 (pos0 == 0 clears the cache first).
 * all_logits != 0: logits_out receives n x n_vocab floats, else only the last token's n_vocab. */
int32_t lb_eval(lb_model * model, const int32_t * tokens, int32_t n_tokens, int32_t pos0,
                int32_t all_logits, float * logits_out);

/* Evaluate one window from an empty cache and add -log p(tokens[i] | tokens[<i]) for i in
 * [first_scored, n_tokens) to *nll_sum (double precision); returns the number of tokens scored. */
int32_t lb_score_window(lb_model * model, const int32_t * tokens, int32_t n_tokens, int32_t first_scored,
                        double * nll_sum);

/* ggml type table, for checking the Python registry against the C one. */
int32_t     lb_type_count(void);
const char * lb_type_name(int32_t type);
int64_t     lb_type_block_size(int32_t type);
int64_t     lb_type_size(int32_t type);

/* Decode n_values weights of a ggml type from nbytes of raw blocks through the library's own kernel.
 * Checks the byte count and the row data (ggml_validate_row_data) before touching them. */
int32_t lb_dequantize(int32_t type, const void * data, size_t nbytes, float * out, int64_t n_values);

/* lowbit-gguf types. A weight is its codes (n_rows rows of n_per_row weights) plus side tensors, given as
 * n_sides entries of type (ggml type id), ne (4 per side, ggml order), data and byte count, in the order of
 * the type table. Side tensors are checked as the model loader checks them; a malformed one gives an
 * error that names it. */

/* out (n_tokens x n_rows f32) = W x through ggml's CPU MUL_MAT, the code llama.cpp runs; x is
 * n_tokens x n_per_row f32. path: LB_PATH_FASTEST the weight stored as in the file with this build's fastest
 * kernel, LB_PATH_REFERENCE ggml's reference path (plain C decode, scalar dot), LB_PATH_TABLES the portable
 * kernels where the build has faster ones (look-up tables for a few tokens, f32 sgemm for prompts; so both are
 * checked on one machine), LB_PATH_LOADED the weight placed as llama.cpp's model loader places it: in the
 * CPU_LOWBIT buffer type where that takes it (codes transposed at load, register tables for a few tokens), else
 * as LB_PATH_FASTEST. */
enum { LB_PATH_FASTEST = 0, LB_PATH_REFERENCE = 1, LB_PATH_TABLES = 2, LB_PATH_LOADED = 3 };
int32_t lb_lowbit_mul_mat(int32_t type, const void * codes, size_t codes_bytes, int64_t n_per_row, int64_t n_rows,
                          int32_t n_sides, const int32_t * side_types, const int64_t * side_ne,
                          const void * const * side_data, const size_t * side_bytes, const float * x,
                          int64_t n_tokens, float * out, int32_t n_threads, int32_t path);

/* The same MUL_MAT computed n_repeat (>= 2) times over one graph, for kernel benchmarks: *seconds = the mean time
 * of one compute after the first (which warms the caches), without the graph set-up. */
int32_t lb_lowbit_time_mul_mat(int32_t type, const void * codes, size_t codes_bytes, int64_t n_per_row,
                               int64_t n_rows, int32_t n_sides, const int32_t * side_types, const int64_t * side_ne,
                               const void * const * side_data, const size_t * side_bytes, const float * x,
                               int64_t n_tokens, float * out, int32_t n_threads, int32_t path, int32_t n_repeat,
                               double * seconds);

/* out (n_rows x n_per_row f32) = the plain C reference decode of the same weight. */
int32_t lb_lowbit_dequantize(int32_t type, const void * codes, size_t codes_bytes, int64_t n_per_row,
                             int64_t n_rows, int32_t n_sides, const int32_t * side_types, const int64_t * side_ne,
                             const void * const * side_data, const size_t * side_bytes, float * out);
