// lowbit-gguf's narrow C API over the patched llama.cpp (see lowbit_api.h).
#include "lowbit_api.h"

#include "ggml.h"
#include "ggml-cpu.h"
#include "ggml-backend.h"
#include "ggml-lowbit.h"
#include "ggml-lowbit-cpu.h"
#include "llama.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lb_model {
    struct llama_model *       model;
    struct llama_context *     ctx;
    const struct llama_vocab * vocab;
    int32_t                    n_vocab;
    int32_t                    n_ctx;
    int32_t                    n_batch;
    struct llama_batch         batch;  // reused for every decode, n_batch slots
};

static char    g_error[1024];
static char    g_llama_errors[1024];  // llama.cpp's own error lines since the last call into it
static int32_t g_verbose = 0;
static int     g_backend_ready = 0;

static int32_t set_error(const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(g_error, sizeof(g_error), fmt, args);
    va_end(args);
    return -1;
}

static void log_callback(enum ggml_log_level level, const char * text, void * user_data) {
    (void) user_data;
    if (g_verbose) {
        fputs(text, stderr);
    }
    if (level == GGML_LOG_LEVEL_ERROR) {
        // keep the library's own reason for the error message the caller gets
        size_t used = strlen(g_llama_errors);
        if (used + 1 < sizeof(g_llama_errors)) {
            snprintf(g_llama_errors + used, sizeof(g_llama_errors) - used, "%s", text);
        }
    }
}

// The first line llama.cpp logged as an error since the last call, or a fallback.
static const char * llama_reason(const char * fallback) {
    static char first[sizeof(g_llama_errors)];
    if (!g_llama_errors[0]) {
        return fallback;
    }
    snprintf(first, sizeof(first), "%s", g_llama_errors);
    first[strcspn(first, "\n")] = '\0';
    return first;
}

static void ensure_backend(void) {
    if (!g_backend_ready) {
        llama_log_set(log_callback, NULL);
        llama_backend_init();
        g_backend_ready = 1;
    }
}

const char * lb_runtime_version(void) { return llama_lowbit_version(); }
const char * lb_system_info(void) { ensure_backend(); return llama_print_system_info(); }
const char * lb_last_error(void) { return g_error; }
void lb_set_verbose(int32_t verbose) { g_verbose = verbose; ensure_backend(); }

lb_model * lb_model_load(const char * path, int32_t n_ctx, int32_t n_threads, int32_t n_gpu_layers) {
    ensure_backend();
    g_llama_errors[0] = '\0';
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = n_gpu_layers;
    struct llama_model * model = llama_model_load_from_file(path, mparams);
    if (!model) {
        set_error("llama.cpp could not load %s: %s", path, llama_reason("unknown reason"));
        return NULL;
    }
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx   = n_ctx > 0 ? (uint32_t) n_ctx : 0;
    cparams.n_batch = cparams.n_ctx > 0 ? cparams.n_ctx : cparams.n_batch;
    if (n_threads > 0) {
        cparams.n_threads       = n_threads;
        cparams.n_threads_batch = n_threads;
    }
    struct llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        llama_model_free(model);
        set_error("llama.cpp could not create a context of %d tokens for %s: %s", n_ctx, path,
                  llama_reason("unknown reason"));
        return NULL;
    }
    lb_model * m = calloc(1, sizeof(*m));
    if (!m) {
        llama_free(ctx);
        llama_model_free(model);
        set_error("out of memory");
        return NULL;
    }
    m->model   = model;
    m->ctx     = ctx;
    m->vocab   = llama_model_get_vocab(model);
    m->n_vocab = llama_vocab_n_tokens(m->vocab);
    m->n_ctx   = (int32_t) llama_n_ctx(ctx);
    m->n_batch = (int32_t) llama_n_batch(ctx);
    m->batch   = llama_batch_init(m->n_batch, 0, 1);
    return m;
}

void lb_model_free(lb_model * m) {
    if (!m) {
        return;
    }
    llama_batch_free(m->batch);
    llama_free(m->ctx);
    llama_model_free(m->model);
    free(m);
}

int32_t lb_model_load_lora(lb_model * m, const char * path, float scale) {
    g_llama_errors[0] = '\0';
    struct llama_adapter_lora * adapter = llama_adapter_lora_init(m->model, path);
    if (!adapter) {
        set_error("llama.cpp could not load the LoRA adapter %s: %s", path, llama_reason("unknown reason"));
        return -1;
    }
    // the adapter stays with the model, which frees it
    if (llama_set_adapters_lora(m->ctx, &adapter, 1, &scale) != 0) {
        set_error("llama.cpp could not apply the LoRA adapter %s: %s", path, llama_reason("unknown reason"));
        return -1;
    }
    return 0;
}

int32_t lb_n_vocab(const lb_model * m) { return m->n_vocab; }
int32_t lb_n_ctx(const lb_model * m) { return m->n_ctx; }
int32_t lb_token_bos(const lb_model * m) { return llama_vocab_bos(m->vocab); }
int32_t lb_token_eos(const lb_model * m) { return llama_vocab_eos(m->vocab); }
int32_t lb_token_is_eog(const lb_model * m, int32_t token) { return llama_vocab_is_eog(m->vocab, token); }

int32_t lb_tokenize(const lb_model * m, const char * text, int32_t text_len, int32_t add_special,
                    int32_t * out, int32_t max_tokens) {
    return llama_tokenize(m->vocab, text, text_len, out, max_tokens, add_special != 0, false);
}

int32_t lb_token_to_piece(const lb_model * m, int32_t token, char * buf, int32_t buf_len) {
    if (token < 0 || token >= m->n_vocab) {
        return set_error("token %d is outside the vocabulary (0..%d)", token, m->n_vocab - 1);
    }
    return llama_token_to_piece(m->vocab, token, buf, buf_len, 0, false);
}

static int32_t check_window(const lb_model * m, const int32_t * tokens, int32_t n, int32_t pos0) {
    if (n <= 0 || pos0 < 0 || pos0 + n > m->n_ctx) {
        return set_error("positions %d..%d do not fit the context of %d tokens", pos0, pos0 + n - 1, m->n_ctx);
    }
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab) {
            return set_error("token %d at index %d is outside the vocabulary (0..%d)", tokens[i], i, m->n_vocab - 1);
        }
    }
    return 0;
}

// Decode tokens[start, start+count) at positions pos0+start..; wants_logits(i) picks output rows.
static int32_t decode_chunk(lb_model * m, const int32_t * tokens, int32_t start, int32_t count, int32_t pos0,
                            const int8_t * wants_logits) {
    struct llama_batch * b = &m->batch;
    b->n_tokens = count;
    for (int32_t j = 0; j < count; j++) {
        b->token[j]     = tokens[start + j];
        b->pos[j]       = pos0 + start + j;
        b->n_seq_id[j]  = 1;
        b->seq_id[j][0] = 0;
        b->logits[j]    = wants_logits[start + j];
    }
    g_llama_errors[0] = '\0';
    int32_t rc = llama_decode(m->ctx, *b);
    if (rc != 0) {
        return set_error("llama_decode failed with code %d: %s", rc, llama_reason("no reason given"));
    }
    return 0;
}

int32_t lb_eval(lb_model * m, const int32_t * tokens, int32_t n, int32_t pos0, int32_t all_logits,
                float * logits_out) {
    if (check_window(m, tokens, n, pos0) != 0) {
        return -1;
    }
    if (pos0 == 0) {
        llama_memory_clear(llama_get_memory(m->ctx), true);
    }
    int8_t * wants = calloc((size_t) n, 1);
    if (!wants) {
        return set_error("out of memory");
    }
    for (int32_t i = 0; i < n; i++) {
        wants[i] = all_logits || i == n - 1;
    }
    for (int32_t start = 0; start < n; start += m->n_batch) {
        int32_t count = n - start < m->n_batch ? n - start : m->n_batch;
        if (decode_chunk(m, tokens, start, count, pos0, wants) != 0) {
            free(wants);
            return -1;
        }
        for (int32_t j = 0; j < count; j++) {
            if (!wants[start + j]) {
                continue;
            }
            const float * row = llama_get_logits_ith(m->ctx, j);
            float * dst = all_logits ? logits_out + (size_t) (start + j) * m->n_vocab : logits_out;
            memcpy(dst, row, sizeof(float) * (size_t) m->n_vocab);
        }
    }
    free(wants);
    return 0;
}

// -log softmax(row)[target], in double so long windows add up without drift
static double token_nll(const float * row, int32_t n_vocab, int32_t target) {
    float max = row[0];
    for (int32_t v = 1; v < n_vocab; v++) {
        max = row[v] > max ? row[v] : max;
    }
    double sum = 0.0;
    for (int32_t v = 0; v < n_vocab; v++) {
        sum += exp((double) row[v] - max);
    }
    return log(sum) - ((double) row[target] - max);
}

int32_t lb_score_window(lb_model * m, const int32_t * tokens, int32_t n, int32_t first_scored, double * nll_sum) {
    if (check_window(m, tokens, n, 0) != 0) {
        return -1;
    }
    if (first_scored < 1 || first_scored >= n) {
        return set_error("first scored token %d must lie in 1..%d", first_scored, n - 1);
    }
    llama_memory_clear(llama_get_memory(m->ctx), true);
    int8_t * wants = calloc((size_t) n, 1);
    if (!wants) {
        return set_error("out of memory");
    }
    // the logits at position i predict token i + 1
    for (int32_t i = first_scored - 1; i < n - 1; i++) {
        wants[i] = 1;
    }
    int32_t scored = 0;
    for (int32_t start = 0; start < n; start += m->n_batch) {
        int32_t count = n - start < m->n_batch ? n - start : m->n_batch;
        if (decode_chunk(m, tokens, start, count, 0, wants) != 0) {
            free(wants);
            return -1;
        }
        for (int32_t j = 0; j < count; j++) {
            int32_t i = start + j;
            if (wants[i]) {
                *nll_sum += token_nll(llama_get_logits_ith(m->ctx, j), m->n_vocab, tokens[i + 1]);
                scored++;
            }
        }
    }
    free(wants);
    return scored;
}

int32_t lb_type_count(void) { return GGML_TYPE_COUNT; }

static int type_in_range(int32_t type) { return type >= 0 && type < GGML_TYPE_COUNT; }

const char * lb_type_name(int32_t type) {
    // unused ids (removed types, the gap below the lowbit-gguf range) have no name
    const char * name = type_in_range(type) ? ggml_type_name((enum ggml_type) type) : NULL;
    return name ? name : "";
}
int64_t lb_type_block_size(int32_t type) { return type_in_range(type) ? ggml_blck_size((enum ggml_type) type) : -1; }
int64_t lb_type_size(int32_t type) { return type_in_range(type) ? (int64_t) ggml_type_size((enum ggml_type) type) : -1; }

int32_t lb_dequantize(int32_t type, const void * data, size_t nbytes, float * out, int64_t n_values) {
    if (!type_in_range(type)) {
        return set_error("ggml type %d does not exist (0..%d)", type, GGML_TYPE_COUNT - 1);
    }
    const struct ggml_type_traits * traits = ggml_get_type_traits((enum ggml_type) type);
    if (!traits->to_float || traits->blck_size <= 0 || traits->type_size == 0) {
        return set_error("ggml type %s has no dequantize kernel", traits->type_name);
    }
    if (n_values <= 0 || n_values % traits->blck_size != 0) {
        return set_error("%lld values is not a whole number of %s blocks of %lld", (long long) n_values,
                         traits->type_name, (long long) traits->blck_size);
    }
    size_t expected = (size_t) (n_values / traits->blck_size) * traits->type_size;
    if (nbytes != expected) {
        return set_error("%lld %s values take %zu bytes, got %zu", (long long) n_values, traits->type_name,
                         expected, nbytes);
    }
    g_llama_errors[0] = '\0';
    if (!ggml_validate_row_data((enum ggml_type) type, data, nbytes)) {
        return set_error("%s data is invalid: %s", traits->type_name, llama_reason("rejected by ggml_validate_row_data"));
    }
    traits->to_float(data, out, n_values);
    return 0;
}

// ---- lowbit-gguf types ----

#define LB_MAX_SIDES GGML_LOWBIT_MAX_SIDES

// A lowbit weight as ggml tensors over the caller's buffers: w->src[] holds the sides, as the loader sets them.
struct lowbit_weight {
    struct ggml_context * ctx;
    struct ggml_tensor *  w;
};

static int32_t lowbit_weight_make(struct lowbit_weight * lw, int32_t type, const void * codes, size_t codes_bytes,
                                  int64_t n_per_row, int64_t n_rows, int32_t n_sides, const int32_t * side_types,
                                  const int64_t * side_ne, const void * const * side_data,
                                  const size_t * side_bytes, size_t extra_tensors) {
    memset(lw, 0, sizeof(*lw));
    if (!type_in_range(type) || !ggml_lowbit_is_type((enum ggml_type) type)) {
        return set_error("ggml type %d is not a lowbit-gguf type", type);
    }
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info((enum ggml_type) type);
    if (n_per_row <= 0 || n_rows <= 0 || n_per_row % info->block_size != 0) {
        return set_error("%s weights need rows of a positive multiple of %d values, got %lld x %lld", info->name,
                         info->block_size, (long long) n_rows, (long long) n_per_row);
    }
    size_t expected = (size_t) n_rows * ggml_row_size((enum ggml_type) type, n_per_row);
    if (codes_bytes != expected) {
        return set_error("%lld x %lld %s codes take %zu bytes, got %zu", (long long) n_rows, (long long) n_per_row,
                         info->name, expected, codes_bytes);
    }
    if (n_sides != info->n_sides) {
        return set_error("%s needs %d side tensors, got %d", info->name, info->n_sides, n_sides);
    }
    struct ggml_init_params params = { ggml_tensor_overhead() * (1 + LB_MAX_SIDES + extra_tensors) +
                                           ggml_graph_overhead(), NULL, true };
    lw->ctx = ggml_init(params);
    lw->w   = ggml_new_tensor_2d(lw->ctx, (enum ggml_type) type, n_per_row, n_rows);
    lw->w->data = (void *) codes;
    ggml_set_name(lw->w, "weight");
    const struct ggml_tensor * sides[LB_MAX_SIDES] = { NULL };
    for (int32_t i = 0; i < n_sides; ++i) {
        const int64_t * ne = side_ne + 4 * i;
        if (!type_in_range(side_types[i]) || ne[0] <= 0 || ne[1] <= 0 || ne[2] <= 0 || ne[3] <= 0 ||
            ggml_blck_size((enum ggml_type) side_types[i]) <= 0) {
            ggml_free(lw->ctx);
            return set_error("side tensor '%s' has an invalid type or shape", info->sides[i]);
        }
        struct ggml_tensor * side = ggml_new_tensor_4d(lw->ctx, (enum ggml_type) side_types[i], ne[0], ne[1], ne[2], ne[3]);
        ggml_set_name(side, info->sides[i]);
        if (ggml_nbytes(side) != side_bytes[i]) {
            ggml_free(lw->ctx);
            return set_error("side tensor '%s' holds %zu bytes, its shape needs %zu", info->sides[i], side_bytes[i],
                             ggml_nbytes(side));
        }
        side->data = (void *) side_data[i];
        sides[i] = lw->w->src[i] = side;
    }
    char err[256];
    if (!ggml_lowbit_check_sides(lw->w, sides, err, sizeof(err)) ||
        !ggml_lowbit_check_side_data(lw->w, sides, err, sizeof(err))) {
        ggml_free(lw->ctx);
        return set_error("%s", err);
    }
    return 0;
}

// out = W x, computed n_repeat times over one graph and plan; *seconds (if not NULL) = the mean time of a
// compute after a first one that warms caches
static int32_t lowbit_mul_mat_run(int32_t type, const void * codes, size_t codes_bytes, int64_t n_per_row,
                                  int64_t n_rows, int32_t n_sides, const int32_t * side_types, const int64_t * side_ne,
                                  const void * const * side_data, const size_t * side_bytes, const float * x,
                                  int64_t n_tokens, float * out, int32_t n_threads, int32_t path, int32_t n_repeat,
                                  double * seconds) {
    if (path < LB_PATH_FASTEST || path > LB_PATH_LOADED) {
        return set_error("unknown kernel path %d", path);
    }
    struct lowbit_weight lw;
    if (lowbit_weight_make(&lw, type, codes, codes_bytes, n_per_row, n_rows, n_sides, side_types, side_ne,
                           side_data, side_bytes, 3) < 0) {
        return -1;
    }
    if (n_tokens <= 0) {
        ggml_free(lw.ctx);
        return set_error("need at least one token, got %lld", (long long) n_tokens);
    }
    ggml_backend_buffer_t repacked = NULL;
    if (path == LB_PATH_LOADED && ggml_lowbit_cpu_repackable(lw.w)) {
        // as the model loader does: the weight in the CPU_LOWBIT buffer type, written whole (codes transposed)
        repacked = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_lowbit_buffer_type(), ggml_nbytes(lw.w));
        if (repacked == NULL) {
            ggml_free(lw.ctx);
            return set_error("could not allocate a CPU_LOWBIT buffer of %zu bytes", ggml_nbytes(lw.w));
        }
        lw.w->data = NULL;
        ggml_backend_tensor_alloc(repacked, lw.w, ggml_backend_buffer_get_base(repacked));
        ggml_backend_tensor_set(lw.w, codes, 0, ggml_nbytes(lw.w));
    }
    struct ggml_tensor * xt = ggml_new_tensor_2d(lw.ctx, GGML_TYPE_F32, n_per_row, n_tokens);
    xt->data = (void *) x;
    struct ggml_tensor * yt = ggml_mul_mat(lw.ctx, lw.w, xt);
    yt->data = out;
    struct ggml_cgraph * graph = ggml_new_graph(lw.ctx);
    ggml_build_forward_expand(graph, yt);
    struct ggml_cplan plan = ggml_graph_plan(graph, n_threads > 0 ? n_threads : 1, NULL);
    plan.use_ref = path == LB_PATH_REFERENCE;
    void * work = plan.work_size ? malloc(plan.work_size) : NULL;
    plan.work_data = work;
    ggml_lowbit_set_cpu_path(path == LB_PATH_TABLES ? GGML_LOWBIT_CPU_TABLES : GGML_LOWBIT_CPU_FASTEST);
    enum ggml_status status = ggml_graph_compute(graph, &plan);
    const int64_t start = ggml_time_us();
    for (int32_t i = 1; i < n_repeat && status == GGML_STATUS_SUCCESS; ++i) {
        status = ggml_graph_compute(graph, &plan);
    }
    if (seconds != NULL) {
        *seconds = n_repeat > 1 ? (double) (ggml_time_us() - start) * 1e-6 / (n_repeat - 1) : 0.0;
    }
    ggml_lowbit_set_cpu_path(GGML_LOWBIT_CPU_FASTEST);
    free(work);
    ggml_free(lw.ctx);
    if (repacked != NULL) {
        ggml_backend_buffer_free(repacked);
    }
    return status == GGML_STATUS_SUCCESS ? 0 : set_error("ggml_graph_compute failed (status %d)", (int) status);
}

int32_t lb_lowbit_mul_mat(int32_t type, const void * codes, size_t codes_bytes, int64_t n_per_row, int64_t n_rows,
                          int32_t n_sides, const int32_t * side_types, const int64_t * side_ne,
                          const void * const * side_data, const size_t * side_bytes, const float * x,
                          int64_t n_tokens, float * out, int32_t n_threads, int32_t path) {
    return lowbit_mul_mat_run(type, codes, codes_bytes, n_per_row, n_rows, n_sides, side_types, side_ne, side_data,
                              side_bytes, x, n_tokens, out, n_threads, path, 1, NULL);
}

int32_t lb_lowbit_time_mul_mat(int32_t type, const void * codes, size_t codes_bytes, int64_t n_per_row,
                               int64_t n_rows, int32_t n_sides, const int32_t * side_types, const int64_t * side_ne,
                               const void * const * side_data, const size_t * side_bytes, const float * x,
                               int64_t n_tokens, float * out, int32_t n_threads, int32_t path, int32_t n_repeat,
                               double * seconds) {
    if (n_repeat < 2) {
        return set_error("timing needs at least 2 repeats (the first warms the caches), got %d", n_repeat);
    }
    return lowbit_mul_mat_run(type, codes, codes_bytes, n_per_row, n_rows, n_sides, side_types, side_ne, side_data,
                              side_bytes, x, n_tokens, out, n_threads, path, n_repeat, seconds);
}

int32_t lb_lowbit_dequantize(int32_t type, const void * codes, size_t codes_bytes, int64_t n_per_row,
                             int64_t n_rows, int32_t n_sides, const int32_t * side_types, const int64_t * side_ne,
                             const void * const * side_data, const size_t * side_bytes, float * out) {
    struct lowbit_weight lw;
    if (lowbit_weight_make(&lw, type, codes, codes_bytes, n_per_row, n_rows, n_sides, side_types, side_ne,
                           side_data, side_bytes, 0) < 0) {
        return -1;
    }
    int64_t params[GGML_LOWBIT_MAX_WEIGHT_PARAMS];
    char    err[256];
    if (!ggml_lowbit_weight_params(lw.w, (const struct ggml_tensor * const *) lw.w->src, params, err, sizeof(err))) {
        ggml_free(lw.ctx);
        return set_error("%s", err);
    }
    ggml_lowbit_dequantize_rows(lw.w->type, codes, lw.w->nb[1], n_per_row, 0, n_rows, side_data, params, out);
    ggml_free(lw.ctx);
    return 0;
}
