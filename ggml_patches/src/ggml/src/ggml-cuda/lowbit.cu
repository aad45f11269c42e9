// CUDA MUL_MAT for the lowbit-gguf types: the launcher. Each method's kernels live in lowbit-<method>.cu behind
// its struct (lowbit-impl.cuh); the CPU kernels (ggml-cpu/lowbit/) and the Python reference decode define the
// arithmetic, which the methods' lowbit-<method>-lanes.cuh hold and the test suite checks on the CPU.

#include "lowbit.cuh"
#include "lowbit-impl.cuh"

static const ggml_cuda_lowbit_method * const cuda_methods[] = {
#include "lowbit-methods.inc"
};

static const ggml_cuda_lowbit_method * method_of(const ggml_lowbit_type_info * info) {
    const size_t n = sizeof(cuda_methods) / sizeof(cuda_methods[0]);
    return (size_t) info->method < n ? cuda_methods[info->method] : nullptr;
}

// dst^T = W x^T with W row-major [n_rows][d_in] (column-major d_in x n_rows) through cuBLAS
void ggml_cuda_lowbit_sgemm_decoded(ggml_backend_cuda_context & ctx, const float * weights, const ggml_tensor * src0,
                          const ggml_tensor * src1, ggml_tensor * dst) {
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasSetStream(ctx.cublas_handle(), ctx.stream()));
    CUBLAS_CHECK(cublasSgemm(ctx.cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, (int) src0->ne[1], (int) src1->ne[1],
                             (int) src0->ne[0], &alpha, weights, (int) src0->ne[0], (const float *) src1->data,
                             (int) (src1->nb[1] / sizeof(float)), &beta, (float *) dst->data,
                             (int) (dst->nb[1] / sizeof(float))));
}

bool ggml_cuda_lowbit_supports_mul_mat(const ggml_tensor * src0, const ggml_tensor * src1) {
    const ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(src0->type);
    const bool kernel = info != nullptr && method_of(info) != nullptr && method_of(info)->supports(info);
    char       err[256];  // as on the CPU: only a weight whose side tensors pass the checks (the loader's probe asks)
    return kernel && ggml_lowbit_check_sides(src0, (const ggml_tensor * const *) src0->src, err, sizeof(err)) &&
           src1->type == GGML_TYPE_F32 && src1->ne[2] * src1->ne[3] == 1 && src0->ne[2] * src0->ne[3] == 1 &&
           src1->nb[1] % 16 == 0;  // float4 loads of activations
}

void ggml_cuda_lowbit_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                              ggml_tensor * dst) {
    char err[256];
    if (!ggml_lowbit_check_sides(src0, (const ggml_tensor * const *) src0->src, err, sizeof(err))) {
        GGML_ABORT("%s: %s", src0->name, err);
    }
    const ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(src0->type);
    for (int i = 0; i < info->n_sides; ++i) {
        // the loader places side tensors like their weight; a host copy here would be read from the device
        GGML_ASSERT(!ggml_backend_buffer_is_host(src0->src[i]->buffer) && "lowbit side tensor is not on the GPU");
    }
    GGML_ASSERT(ggml_cuda_lowbit_supports_mul_mat(src0, src1));
    method_of(info)->mul_mat(ctx, info, src0, src1, dst);
}
