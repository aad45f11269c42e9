// CPU_LOWBIT: the CPU's extra buffer type for lowbit-gguf weights whose codes the register-table kernel reads
// transposed (lowbit-cpu.h). Built like upstream's CPU_REPACK (repack.cpp): the model loader asks each extra
// buffer type whether it takes a weight's MUL_MAT, places the weight there, and writes it whole through
// set_tensor, which transposes the codes; the CPU backend then hands that MUL_MAT to these traits.

#include "ggml-lowbit-cpu.h"

#include "ggml-backend-impl.h"
#include "ggml-cpu.h"
#include "ggml-impl.h"
#include "ggml-lowbit.h"
#include "lowbit-cpu.h"
#include "traits.h"

#include <cstring>

namespace {

class lowbit_tensor_traits : public ggml::cpu::tensor_traits {
    bool work_size(int n_threads, const struct ggml_tensor * op, size_t & size) override {
        size = ggml_lowbit_cpu_work_size(op, n_threads);
        return true;
    }

    bool compute_forward(struct ggml_compute_params * params, struct ggml_tensor * op) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        ggml_lowbit_cpu_mul_mat(params, op);
        return true;
    }
};

lowbit_tensor_traits g_traits;

bool in_lowbit_buffer(const struct ggml_tensor * t) {
    return t->buffer != nullptr && t->buffer->buft == ggml_backend_cpu_lowbit_buffer_type();
}

class lowbit_extra_buffer_type : public ggml::cpu::extra_buffer_type {
    bool supports_op(ggml_backend_dev_t, const struct ggml_tensor * op) override {
        return op->op == GGML_OP_MUL_MAT && in_lowbit_buffer(op->src[0]) && ggml_lowbit_cpu_repackable(op->src[0]) &&
               op->src[1]->type == GGML_TYPE_F32 &&
               (op->src[1]->buffer == nullptr || ggml_backend_buft_is_host(op->src[1]->buffer->buft));
    }

    ggml::cpu::tensor_traits * get_tensor_traits(const struct ggml_tensor * op) override {
        if (op->op == GGML_OP_MUL_MAT && in_lowbit_buffer(op->src[0])) {
            return (ggml::cpu::tensor_traits *) op->src[0]->extra;
        }
        return nullptr;
    }
};

enum ggml_status lowbit_buffer_init_tensor(ggml_backend_buffer_t, struct ggml_tensor * tensor) {
    tensor->extra = ggml_lowbit_cpu_repackable(tensor) ? &g_traits : nullptr;
    return GGML_STATUS_SUCCESS;
}

void lowbit_buffer_set_tensor(ggml_backend_buffer_t, struct ggml_tensor * tensor, const void * data, size_t offset,
                              size_t size) {
    if (tensor->extra == nullptr) {  // not a weight this buffer type takes: stored as given
        memcpy((char *) tensor->data + offset, data, size);
        return;
    }
    // the loader writes a weight whole, so the transposition sees every row
    GGML_ASSERT(offset == 0 && size == ggml_nbytes(tensor));
    ggml_lowbit_cpu_transpose_codes(tensor, data, tensor->data);
}

const char * lowbit_buffer_type_get_name(ggml_backend_buffer_type_t) {
    return "CPU_LOWBIT";
}

ggml_backend_buffer_t lowbit_buffer_type_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buffer == nullptr) {
        return nullptr;
    }
    buffer->buft              = buft;
    buffer->iface.init_tensor = lowbit_buffer_init_tensor;
    buffer->iface.set_tensor  = lowbit_buffer_set_tensor;
    buffer->iface.get_tensor  = nullptr;  // the codes are not stored as the file has them
    buffer->iface.cpy_tensor  = nullptr;
    return buffer;
}

size_t lowbit_buffer_type_get_alignment(ggml_backend_buffer_type_t) {
    return TENSOR_ALIGNMENT;
}

}  // namespace

bool ggml_lowbit_cpu_codes_transposed(const struct ggml_tensor * w) {
    return in_lowbit_buffer(w) && w->extra == &g_traits;
}

ggml_backend_buffer_type_t ggml_backend_cpu_lowbit_buffer_type(void) {
    static struct ggml_backend_buffer_type buft = {
        /* .iface    = */ {
            /* .get_name       = */ lowbit_buffer_type_get_name,
            /* .alloc_buffer   = */ lowbit_buffer_type_alloc_buffer,
            /* .get_alignment  = */ lowbit_buffer_type_get_alignment,
            /* .get_max_size   = */ nullptr,  // SIZE_MAX
            /* .get_alloc_size = */ nullptr,  // ggml_nbytes: the transposed codes take the same bytes
            /* .is_host        = */ nullptr,
        },
        /* .device   = */ ggml_backend_reg_dev_get(ggml_backend_cpu_reg(), 0),
        /* .context  = */ new lowbit_extra_buffer_type(),
    };
    return &buft;
}
