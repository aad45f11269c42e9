#include "llama-lowbit.h"

#include "llama-impl.h"
#include "llama-model-loader.h"

#include "ggml-backend.h"
#include "ggml-lowbit.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

void llama_lowbit_attach_sides(ggml_tensor * weight, const LLM_TN_IMPL & tn, const llama_model_loader & ml,
                               const llama_lowbit_create_fn & create) {
    const ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(weight->type);
    if (info == nullptr) {
        return;
    }
    if (tn.suffix == nullptr || strcmp(tn.suffix, "weight") != 0) {
        throw std::runtime_error(format("tensor '%s' has the lowbit type %s, which only matmul weights may have",
                                        weight->name, info->name));
    }
    const ggml_tensor * sides[GGML_LOWBIT_MAX_SIDES] = {};
    for (int i = 0; i < info->n_sides; ++i) {
        const LLM_TN_IMPL   side_tn(tn.arch, tn.tensor, info->sides[i], tn.bid, tn.xid);
        const std::string   name = side_tn.str();
        const ggml_tensor * meta = ml.get_tensor_meta(name.c_str());
        if (meta == nullptr) {
            throw std::runtime_error(format("weight '%s' of type %s needs the side tensor '%s', which the file lacks",
                                            weight->name, info->name, name.c_str()));
        }
        sides[i] = create(side_tn, { meta->ne[0], meta->ne[1], meta->ne[2], meta->ne[3] });
    }
    char err[256];
    if (!ggml_lowbit_check_sides(weight, sides, err, sizeof(err))) {
        throw std::runtime_error(format("weight '%s' of type %s: %s", weight->name, info->name, err));
    }
    for (int i = 0; i < info->n_sides; ++i) {
        weight->src[i] = const_cast<ggml_tensor *>(sides[i]);
    }
}

void llama_lowbit_check_loaded(ggml_context * ctx) {
    for (ggml_tensor * weight = ggml_get_first_tensor(ctx); weight != nullptr;
         weight = ggml_get_next_tensor(ctx, weight)) {
        if (!ggml_lowbit_reads_side_data(weight->type)) {
            continue;  // this type's sides are fully checked by their shapes
        }
        const ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(weight->type);
        // host copies of the sides, so the check reads the same bytes wherever the weights live
        ggml_tensor                       copies[GGML_LOWBIT_MAX_SIDES];
        const ggml_tensor *               sides[GGML_LOWBIT_MAX_SIDES] = {};
        std::vector<std::vector<uint8_t>> data(info->n_sides);
        for (int i = 0; i < info->n_sides; ++i) {
            copies[i] = *weight->src[i];
            data[i].resize(ggml_nbytes(weight->src[i]));
            ggml_backend_tensor_get(weight->src[i], data[i].data(), 0, data[i].size());
            copies[i].data = data[i].data();
            sides[i]       = &copies[i];
        }
        char err[256];
        if (!ggml_lowbit_check_side_data(weight, sides, err, sizeof(err))) {
            throw std::runtime_error(format("weight '%s' of type %s: %s", weight->name, info->name, err));
        }
    }
}
