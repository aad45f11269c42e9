// CPU MUL_MAT for the lowbit-gguf types: the dispatcher and the paths every method shares.
//
// Three paths, taken in this order:
//  - a few tokens (decode, up to FEW_TOKENS_MAX): the method's own kernel, the fastest its files have for this build
//    (look-up tables, or SIMD kernels that need none; see aqlm.c, ptq161.c and their per-ISA files);
//  - prompts (SGEMM_MIN_TOKENS and more): SGEMM_ROWS rows at a time are decoded to f32 by all threads, then
//    multiplied with all tokens by ggml's own llamafile sgemm (all threads together). A method may gather the
//    tokens into its rows' own channel order first and decode its rows in that order (PTQ1.61 does). With AVX-512
//    BF16 the rows and tokens go to sgemm in bf16 (vdpbf16ps, two products per lane; upstream's BF16 models take the
//    same sgemm), which rounds them to 1/256;
//  - tiles (everything else): TILE_ROWS rows are decoded to f32 and dotted with every token.
// params->use_ref takes the tile path with the plain C decode and a scalar dot (the reference);
// ggml_lowbit_set_cpu_path pins the portable kernels (tables, f32 sgemm) so the tests check both on one machine.
// Every path but the ones that read codes transposed gathers rows back into row order first (decode_rows).

#include "lowbit-cpu.h"
#include "lowbit-impl.h"

#include "ggml-cpu.h"
#include "vec.h"

#include <string.h>

#ifdef GGML_USE_LLAMAFILE
#    include "llamafile/sgemm.h"
#endif

static const struct lowbit_cpu_method * const lowbit_cpu_methods[] = {
#include "lowbit-methods.inc"
};

static const struct lowbit_cpu_method * method_of(const struct ggml_lowbit_type_info * info) {
    const size_t n = sizeof(lowbit_cpu_methods) / sizeof(lowbit_cpu_methods[0]);
    GGML_ASSERT((size_t) info->method < n && lowbit_cpu_methods[info->method] != NULL);
    return lowbit_cpu_methods[info->method];
}

static int64_t tile_floats_per_thread(int64_t n_per_row) {
    return align_floats(TILE_ROWS * n_per_row);
}

// each thread's GATHER_ROWS rows of codes in row order (transposed weights), after the floats of every path
static int64_t scratch_floats_per_thread(const struct ggml_tensor * w) {
    return ggml_lowbit_cpu_codes_transposed(w) ? align_floats(((int64_t) w->nb[1] * GATHER_ROWS + 3) / 4) : 0;
}

// Prompt path work (offsets in floats): the decoded f32 rows of a chunk at 0, the tokens in the rows' order (methods
// with prompt_tokens), and where sgemm runs in bf16 the chunk's rows and the tokens in bf16.
struct sgemm_layout {
    int64_t gathered, rows_bf16, tokens_bf16, floats;
};

static struct sgemm_layout sgemm_layout_of(const struct ggml_tensor * dst, const struct lowbit_cpu_method * m) {
    const int64_t       n_per_row = dst->src[0]->ne[0], n_tokens = n_tokens_of(dst);
    struct sgemm_layout l;
    l.gathered    = align_floats(SGEMM_ROWS * n_per_row);
    l.rows_bf16   = l.gathered + (m->prompt_tokens != NULL ? align_floats(n_tokens * n_per_row) : 0);
    l.tokens_bf16 = l.rows_bf16;
    l.floats      = l.rows_bf16;
#ifdef LOWBIT_BF16_SGEMM
    l.tokens_bf16 = l.rows_bf16 + align_floats((SGEMM_ROWS * n_per_row + 1) / 2);
    l.floats      = l.tokens_bf16 + align_floats((n_tokens * n_per_row + 1) / 2);
#endif
    return l;
}

// floats of the path this op takes (shared by its threads), before the per-thread code scratch
static int64_t path_floats(const struct ggml_tensor * dst, int n_threads) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(dst->src[0]->type);
    GGML_ASSERT(info != NULL);
    const struct lowbit_cpu_method * m      = method_of(info);
    int64_t                          floats = n_threads * tile_floats_per_thread(dst->src[0]->ne[0]);
    const int64_t                    sgemm  = sgemm_layout_of(dst, m).floats;
    floats                                  = sgemm > floats ? sgemm : floats;
    if (n_tokens_of(dst) <= FEW_TOKENS_MAX && m->few_tokens_floats != NULL) {
        const int64_t few = m->few_tokens_floats(info, dst, n_threads);
        floats            = few > floats ? few : floats;
    }
    return align_floats(floats);
}

// The one check of a lowbit weight before any path reads it (the work size and the op both take it): its side
// tensors' types and shapes, and what their data must agree on. The loader checked the same with a message for the
// user; a graph built by other code gets it here.
static bool weight_ok(const struct ggml_tensor * w, char * err, size_t err_size) {
    const struct ggml_tensor * const * sides = (const struct ggml_tensor * const *) w->src;
    return ggml_lowbit_check_sides(w, sides, err, err_size) && ggml_lowbit_check_side_data(w, sides, err, err_size);
}

// The type combinations of upstream's element-wise kernels (binary-ops.cpp) for float activations; others abort there
// at compute. A file sets the type of a norm or bias weight, so the loader asks here and refuses the rest by name.
static bool binary_types_ok(const struct ggml_tensor * op) {
    const enum ggml_type a = op->src[0]->type, b = op->src[1]->type, d = op->type;
    if (a != GGML_TYPE_F32 && a != GGML_TYPE_F16 && a != GGML_TYPE_BF16) {
        return true;  // quantized activations take upstream's own paths
    }
    return (a == b && b == d) || (b == GGML_TYPE_F32 && (d == a || d == GGML_TYPE_F32));
}

bool ggml_lowbit_cpu_supports_op(const struct ggml_tensor * op) {
    switch (op->op) {
        case GGML_OP_ADD:
        case GGML_OP_SUB:
        case GGML_OP_MUL:
        case GGML_OP_DIV:
            if (!binary_types_ok(op)) {
                return false;
            }
            break;
        default:
            break;
    }
    bool lowbit = ggml_lowbit_is_type(op->type);
    for (int i = 0; i < GGML_MAX_SRC; ++i) {
        lowbit = lowbit || (op->src[i] != NULL && ggml_lowbit_is_type(op->src[i]->type));
    }
    if (!lowbit) {
        return true;
    }
    char err[256];
    // no data yet when the loader asks (it chooses buffers), so the shapes only
    return op->op == GGML_OP_MUL_MAT && ggml_lowbit_is_type(op->src[0]->type) && op->src[1]->type == GGML_TYPE_F32 &&
           op->type == GGML_TYPE_F32 &&
           ggml_lowbit_check_sides(op->src[0], (const struct ggml_tensor * const *) op->src[0]->src, err, sizeof(err));
}

size_t ggml_lowbit_cpu_work_size(const struct ggml_tensor * dst, int n_threads) {
    char err[256];
    if (!weight_ok(dst->src[0], err, sizeof(err))) {
        return 0;  // nothing of the weight is read: the op stops with the message
    }
    const int64_t floats = path_floats(dst, n_threads) + n_threads * scratch_floats_per_thread(dst->src[0]);
    return (size_t) (floats + ALIGN_FLOATS) * sizeof(float);
}

bool ggml_lowbit_cpu_repackable(const struct ggml_tensor * w) {
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(w->type);
    return info != NULL && method_of(info)->repackable != NULL && method_of(info)->repackable(info, w);
}

void ggml_lowbit_cpu_transpose_codes(const struct ggml_tensor * w, const void * codes, void * out) {
    const int64_t   n_rows = w->ne[1], row_bytes = (int64_t) ggml_row_size(w->type, w->ne[0]);
    const uint8_t * in     = (const uint8_t *) codes;
    uint8_t *       t      = (uint8_t *) out;
    for (int64_t r = 0; r < n_rows; ++r) {
        for (int64_t c = 0; c < row_bytes; ++c) {
            t[c * n_rows + r] = in[r * row_bytes + c];
        }
    }
}

// ---- look-up tables ----

// Codes LUT_CHUNK at a time over all rows, so the chunk's tables (16 KiB) stay in L1.
void lowbit_lut_accumulate(const uint8_t * codes, size_t stride, int64_t n_rows, int64_t n_codes, const float * tables,
                           int64_t prefetch_rows, float * acc) {
    for (int64_t c0 = 0; c0 < n_codes; c0 += LUT_CHUNK) {
        const float * chunk = tables + c0 * 256;
        const int64_t nc    = n_codes - c0 < LUT_CHUNK ? n_codes - c0 : LUT_CHUNK;
        for (int64_t r = 0; r < n_rows; ++r) {
            const uint8_t * row = codes + r * stride + c0;
            if (c0 == 0 && r < prefetch_rows) {
                // codes stream from memory block after block of rows: ask for the next block early
                const char * next = (const char *) row + n_rows * stride;
                for (size_t off = 0; off < (size_t) n_codes; off += 64) {
                    __builtin_prefetch(next + off);
                }
            }
            float   s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;  // partial sums break the add chain
            int64_t i  = 0;
            if (nc == LUT_CHUNK) {
                // codes as two 64-bit words: one load per 8 codes instead of one per code
                uint64_t lo, hi;
                memcpy(&lo, row, 8);
                memcpy(&hi, row + 8, 8);
                for (int k = 0; k < 8; k += 4, lo >>= 32, hi >>= 32) {
                    s0 += chunk[(k + 0) * 256 + (lo & 255)];
                    s1 += chunk[(k + 1) * 256 + ((lo >> 8) & 255)];
                    s2 += chunk[(k + 2) * 256 + ((lo >> 16) & 255)];
                    s3 += chunk[(k + 3) * 256 + ((lo >> 24) & 255)];
                    s0 += chunk[(k + 8) * 256 + (hi & 255)];
                    s1 += chunk[(k + 9) * 256 + ((hi >> 8) & 255)];
                    s2 += chunk[(k + 10) * 256 + ((hi >> 16) & 255)];
                    s3 += chunk[(k + 11) * 256 + ((hi >> 24) & 255)];
                }
                i = nc;
            }
            for (; i < nc; ++i) {
                s0 += chunk[i * 256 + row[i]];
            }
            acc[r] += (s0 + s1) + (s2 + s3);
        }
    }
}

// ---- decoding rows ----

// a weight's side tensor data and its per-weight parameters, as the decoders take them
struct op_sides {
    const void * data[GGML_LOWBIT_MAX_SIDES];
    int64_t      weight_params[GGML_LOWBIT_MAX_WEIGHT_PARAMS];
};

// rows [r0, r0 + nr) of the weight to f32, from row-ordered codes (rows row_bytes apart)
static void decode_row_codes(const struct ggml_compute_params * params, const struct ggml_tensor * w,
                             const struct ggml_lowbit_type_info * info, const struct op_sides * sides,
                             const uint8_t * rows, size_t row_bytes, int64_t r0, int64_t nr, float * out) {
    const lowbit_cpu_decode_rows fast = method_of(info)->decode_rows;
    if (!params->use_ref && fast != NULL) {
        fast(info, rows, row_bytes, w->ne[0], r0, nr, sides->data, sides->weight_params, out);
    } else {
        ggml_lowbit_dequantize_rows(w->type, rows, row_bytes, w->ne[0], r0, nr, sides->data, sides->weight_params,
                                    out);
    }
}

// rows [r0, r0 + nr) of the weight to f32. Transposed codes are first gathered back into row order,
// GATHER_ROWS rows at a time, in this thread's part of the work buffer (codes_scratch).
static void decode_rows(const struct ggml_compute_params * params, const struct ggml_tensor * w,
                        const struct ggml_lowbit_type_info * info, const struct op_sides * sides, int64_t r0,
                        int64_t nr, uint8_t * codes_scratch, float * out) {
    if (!ggml_lowbit_cpu_codes_transposed(w)) {
        decode_row_codes(params, w, info, sides, (const uint8_t *) w->data + r0 * w->nb[1], w->nb[1], r0, nr, out);
        return;
    }
    const int64_t   n_rows = w->ne[1], row_bytes = (int64_t) w->nb[1];
    const uint8_t * codes  = (const uint8_t *) w->data;
    for (int64_t g0 = 0; g0 < nr; g0 += GATHER_ROWS) {
        const int64_t ng = nr - g0 < GATHER_ROWS ? nr - g0 : GATHER_ROWS;
        for (int64_t c = 0; c < row_bytes; ++c) {
            const uint8_t * column = codes + c * n_rows + r0 + g0;
            for (int64_t i = 0; i < ng; ++i) {
                codes_scratch[i * row_bytes + c] = column[i];
            }
        }
        decode_row_codes(params, w, info, sides, codes_scratch, row_bytes, r0 + g0, ng, out + g0 * w->ne[0]);
    }
}

// ---- tile path ----

static float dot_scalar(const float * a, const float * b, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        sum += a[i] * b[i];
    }
    return sum;
}

static void mul_mat_tiles(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                          const struct ggml_lowbit_type_info * info, const struct op_sides * sides, float * buf,
                          uint8_t * codes_scratch) {
    const struct ggml_tensor * w         = dst->src[0];
    const struct ggml_tensor * x         = dst->src[1];
    const int64_t              n_per_row = w->ne[0];
    const int64_t              n_tokens  = n_tokens_of(dst);
    int64_t                    r_begin, r_end;
    thread_rows(params, w->ne[1], &r_begin, &r_end);

    for (int64_t r0 = r_begin; r0 < r_end; r0 += TILE_ROWS) {
        const int64_t nr = r_end - r0 < TILE_ROWS ? r_end - r0 : TILE_ROWS;
        decode_rows(params, w, info, sides, r0, nr, codes_scratch, buf);
        for (int64_t t = 0; t < n_tokens; ++t) {
            const float * xt = token_row(x, t);
            float *       yt = token_row(dst, t);
            for (int64_t r = 0; r < nr; ++r) {
                if (params->use_ref) {
                    yt[r0 + r] = dot_scalar(buf + r * n_per_row, xt, n_per_row);
                } else {
                    ggml_vec_dot_f32((int) n_per_row, yt + r0 + r, 0, buf + r * n_per_row, 0, xt, 0, 1);
                }
            }
        }
    }
}

// ---- prompt path: decoded row chunks through ggml's sgemm ----

// false (before touching dst) when sgemm does not take these shapes; every thread gets the same answer
static bool mul_mat_sgemm(const struct ggml_compute_params * params, struct ggml_tensor * dst,
                          const struct ggml_lowbit_type_info * info, const struct op_sides * sides, float * buf,
                          uint8_t * codes_scratch) {
#ifdef GGML_USE_LLAMAFILE
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * x = dst->src[1];
    // sgemm takes row counts that are multiples of 4: every chunk's count is when the weight's is
    if (params->use_ref || x->ne[2] * x->ne[3] != 1 || dst->ne[2] * dst->ne[3] != 1 || w->ne[1] % 4 != 0) {
        return false;
    }
    const struct lowbit_cpu_method * m         = method_of(info);
    const int64_t                    n_per_row = w->ne[0];
    const struct sgemm_layout        l         = sgemm_layout_of(dst, m);
    const void *                     xs        = x->data;
    int64_t                          ldx       = x->nb[1] / sizeof(float);
    const void *                     rows      = buf;
    int                              type      = GGML_TYPE_F32;
    if (m->prompt_tokens != NULL) {  // the tokens in the rows' channel order once, the rows decoded in it
        m->prompt_tokens(params, dst, sides->data, buf + l.gathered);
        xs  = buf + l.gathered;
        ldx = n_per_row;
    }
#ifdef LOWBIT_BF16_SGEMM
    const bool bf16 = ggml_lowbit_get_cpu_path() == GGML_LOWBIT_CPU_FASTEST;
    if (bf16) {  // each thread converts the tokens it gathered or would have
        ggml_bf16_t * xb = (ggml_bf16_t *) (buf + l.tokens_bf16);
        for (int64_t t = params->ith; t < x->ne[1]; t += params->nth) {
            ggml_cpu_fp32_to_bf16((const float *) xs + t * ldx, xb + t * n_per_row, n_per_row);
        }
        xs   = xb;
        ldx  = n_per_row;
        rows = buf + l.rows_bf16;
        type = GGML_TYPE_BF16;
    }
#endif
    for (int64_t r0 = 0; r0 < w->ne[1]; r0 += SGEMM_ROWS) {
        const int64_t nr = w->ne[1] - r0 < SGEMM_ROWS ? w->ne[1] - r0 : SGEMM_ROWS;
        int64_t       a, b;
        thread_rows(params, nr, &a, &b);
        if (a < b && m->prompt_tokens != NULL) {
            m->prompt_rows(w, sides->data, r0 + a, b - a, buf + a * n_per_row);
        } else if (a < b) {
            decode_rows(params, w, info, sides, r0 + a, b - a, codes_scratch, buf + a * n_per_row);
        }
#ifdef LOWBIT_BF16_SGEMM
        if (bf16 && a < b) {
            ggml_cpu_fp32_to_bf16(buf + a * n_per_row, (ggml_bf16_t *) rows + a * n_per_row, (b - a) * n_per_row);
        }
#endif
        ggml_barrier(params->threadpool);  // also orders the gather and conversions before the first sgemm
        // sgemm ends with a barrier, so the next chunk's decode cannot overwrite rows still in use
        if (!llamafile_sgemm(params, nr, x->ne[1], n_per_row, rows, n_per_row, xs, ldx,
                             (char *) dst->data + r0 * sizeof(float), dst->nb[1] / sizeof(float), type, type,
                             GGML_TYPE_F32)) {
            GGML_ASSERT(r0 == 0);  // the shapes decide (k, chunk rows % 4), so the first chunk answers for all
            return false;
        }
    }
    return true;
#else
    GGML_UNUSED(params);
    GGML_UNUSED(dst);
    GGML_UNUSED(info);
    GGML_UNUSED(sides);
    GGML_UNUSED(buf);
    GGML_UNUSED(codes_scratch);
    return false;
#endif
}

// ---- dispatch ----

void ggml_lowbit_cpu_mul_mat(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor *           w    = dst->src[0];
    const struct ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(w->type);
    GGML_ASSERT(info != NULL);
    GGML_ASSERT(dst->src[1]->type == GGML_TYPE_F32 && dst->src[1]->nb[0] == sizeof(float));
    GGML_ASSERT(dst->type == GGML_TYPE_F32 && dst->nb[0] == sizeof(float));
    GGML_ASSERT(dst->ne[0] == w->ne[1] && dst->src[1]->ne[0] == w->ne[0]);

    char err[256];
    if (!weight_ok(w, err, sizeof(err))) {
        GGML_ABORT("%s: %s", w->name, err);
    }
    struct op_sides sides = { { NULL }, { 0 } };
    for (int i = 0; i < info->n_sides; ++i) {
        sides.data[i] = w->src[i]->data;
    }
    ggml_lowbit_weight_params(w, (const struct ggml_tensor * const *) w->src, sides.weight_params, err, sizeof(err));

    float * work = (float *) GGML_PAD((uintptr_t) params->wdata, ALIGN_FLOATS * sizeof(float));
    GGML_ASSERT(params->wsize >= ggml_lowbit_cpu_work_size(dst, params->nth));
    uint8_t * codes_scratch = (uint8_t *) (work + path_floats(dst, params->nth) +
                                           params->ith * scratch_floats_per_thread(w));

    const struct lowbit_cpu_method * m = method_of(info);
    if (!params->use_ref && n_tokens_of(dst) <= FEW_TOKENS_MAX && m->few_tokens != NULL) {
        const lowbit_cpu_kernel kernel = m->few_tokens(info, w, ggml_lowbit_get_cpu_path());
        if (kernel != NULL) {
            kernel(params, dst, info, sides.data, work);
            return;
        }
    }
    if (n_tokens_of(dst) >= SGEMM_MIN_TOKENS && mul_mat_sgemm(params, dst, info, &sides, work, codes_scratch)) {
        return;
    }
    mul_mat_tiles(params, dst, info, &sides, work + params->ith * tile_floats_per_thread(w->ne[0]), codes_scratch);
}
