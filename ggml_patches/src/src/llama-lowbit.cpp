#include "llama-lowbit.h"

#include "llama-hparams.h"
#include "llama-impl.h"
#include "llama-model-loader.h"

#include "ggml-backend.h"
#include "ggml-lowbit.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

// what the loader's assert would have said, as an error naming the key
static void check_key(bool ok, const std::string & key, const char * what, long long value) {
    if (!ok) {
        throw std::runtime_error(format("the model's metadata key '%s' is %lld; %s", key.c_str(), value, what));
    }
}

void llama_lowbit_check_metadata(llama_model_loader & ml) {
    const LLM_KV kv(ml.get_arch());
    uint32_t     n_layer = 0;
    if (!ml.get_key(LLM_KV_BLOCK_COUNT, n_layer, false)) {
        return;  // a file without blocks (a vocabulary) is upstream's to judge
    }
    check_key(n_layer > 0 && n_layer <= LLAMA_MAX_LAYERS, kv(LLM_KV_BLOCK_COUNT), "a model has 1 to 512 blocks",
              n_layer);
    uint32_t n_nextn = 0, n_expert = 0, n_groups = 0, n_group_used = 0;
    ml.get_key(LLM_KV_NEXTN_PREDICT_LAYERS, n_nextn, false);
    check_key(n_nextn <= n_layer, kv(LLM_KV_NEXTN_PREDICT_LAYERS), "more than the block count", n_nextn);
    ml.get_key(LLM_KV_EXPERT_COUNT, n_expert, false);
    ml.get_key(LLM_KV_EXPERT_GROUP_COUNT, n_groups, false);
    ml.get_key(LLM_KV_EXPERT_GROUP_USED_COUNT, n_group_used, false);
    std::array<uint32_t, LLAMA_MAX_LAYERS> used{};
    ml.get_key_or_arr(LLM_KV_EXPERT_USED_COUNT, used, n_layer, false);
    const uint32_t used_max = *std::max_element(used.begin(), used.begin() + n_layer);
    check_key(n_expert <= LLAMA_MAX_EXPERTS, kv(LLM_KV_EXPERT_COUNT), "more experts than llama.cpp takes", n_expert);
    check_key(used_max <= n_expert, kv(LLM_KV_EXPERT_USED_COUNT), "more than the expert count", used_max);
    if (n_expert > 0) {
        check_key(used_max > 0, kv(LLM_KV_EXPERT_USED_COUNT), "a model with experts uses at least one", used_max);
        check_key(n_groups < n_expert, kv(LLM_KV_EXPERT_GROUP_COUNT), "not fewer than the experts", n_groups);
        if (n_groups > 1) {
            check_key(n_expert % n_groups == 0, kv(LLM_KV_EXPERT_GROUP_COUNT), "does not divide the experts",
                      n_groups);
            check_key(n_group_used > 0 && n_group_used < n_groups, kv(LLM_KV_EXPERT_GROUP_USED_COUNT),
                      "expected 1 to the group count - 1", n_group_used);
        }
    } else {
        check_key(n_groups == 0, kv(LLM_KV_EXPERT_GROUP_COUNT), "expert groups without experts", n_groups);
    }
    for (const llm_kv eps_key : { LLM_KV_ATTENTION_LAYERNORM_EPS, LLM_KV_ATTENTION_LAYERNORM_RMS_EPS }) {
        float eps = 0.0f;
        if (ml.get_key(eps_key, eps, false) && !(eps >= 0.0f && std::isfinite(eps))) {
            throw std::runtime_error(format("the model's metadata key '%s' is %g; a norm epsilon is finite and >= 0",
                                            kv(eps_key).c_str(), eps));
        }
    }
    // the vocabulary is sized from this key before the embeddings' shape is checked against it
    uint32_t n_vocab = 0;
    const ggml_tensor * embd = ml.get_tensor_meta("token_embd.weight");
    if (ml.get_key(LLM_KV_VOCAB_SIZE, n_vocab, false) && embd != nullptr && n_vocab > embd->ne[1]) {
        throw std::runtime_error(format("the model's metadata key '%s' is %u, but token_embd.weight has %lld rows",
                                        kv(LLM_KV_VOCAB_SIZE).c_str(), n_vocab, (long long) embd->ne[1]));
    }
    // a mapped tensor's data is used in place, and ggml's buffers take only TENSOR_ALIGNMENT (32) aligned data
    for (const auto & [name, w] : ml.weights_map) {
        if (w.offs % 32 != 0) {
            throw std::runtime_error(format("tensor '%s' starts at file offset %zu, which is not a multiple of 32 "
                                            "(general.alignment)", name.c_str(), w.offs));
        }
    }
}

// the weight's sides as the file describes them (metadata tensors), in the type table's order
static void side_metas(const ggml_lowbit_type_info * info, const ggml_tensor * weight, const LLM_TN_IMPL & tn,
                       const llama_model_loader & ml, ggml_tensor * sides[GGML_LOWBIT_MAX_SIDES]) {
    for (int i = 0; i < info->n_sides; ++i) {
        const std::string name = LLM_TN_IMPL(tn.arch, tn.tensor, info->sides[i], tn.bid, tn.xid).str();
        sides[i]               = ml.get_tensor_meta(name.c_str());
        if (sides[i] == nullptr) {
            throw std::runtime_error(format("weight '%s' of type %s needs the side tensor '%s', which the file lacks",
                                            weight->name, info->name, name.c_str()));
        }
    }
}

static void check_sides(const ggml_lowbit_type_info * info, const ggml_tensor * weight,
                        ggml_tensor * const sides[GGML_LOWBIT_MAX_SIDES]) {
    char err[256];
    if (!ggml_lowbit_check_sides(weight, sides, err, sizeof(err))) {
        throw std::runtime_error(format("weight '%s' of type %s: %s", weight->name, info->name, err));
    }
}

void llama_lowbit_prepare_tensor(const LLM_TN_IMPL & tn, const llama_model_loader & ml) {
    const std::string name = tn.str();
    ggml_tensor *     meta = ml.get_tensor_meta(name.c_str());
    if (meta == nullptr) {
        return;
    }
    const ggml_lowbit_type_info * info   = ggml_lowbit_get_type_info(meta->type);
    const bool                    weight = tn.suffix != nullptr && strcmp(tn.suffix, "weight") == 0;
    const ggml_op                 op     = llm_tensor_info_for(tn.tensor).op;
    if (info == nullptr) {
        // a matmul weight of an integer type (I8 .. I64) has no dot product in any backend, and embeddings of one
        // would feed integer activations to the ops after them
        const ggml_type type = meta->type;
        if (weight && (op == GGML_OP_MUL_MAT || op == GGML_OP_MUL_MAT_ID || op == GGML_OP_GET_ROWS) &&
            !ggml_get_type_traits(type)->is_quantized && type != GGML_TYPE_F32 && type != GGML_TYPE_F16 &&
            type != GGML_TYPE_BF16) {
            throw std::runtime_error(format("tensor '%s' has type %s; matmul weights and embeddings have float or "
                                            "quantized types", name.c_str(), ggml_type_name(type)));
        }
        return;
    }
    if (!weight || op != GGML_OP_MUL_MAT) {
        throw std::runtime_error(format("tensor '%s' has the lowbit type %s, which only matmul weights may have",
                                        name.c_str(), info->name));
    }
    ggml_tensor * sides[GGML_LOWBIT_MAX_SIDES] = {};
    side_metas(info, meta, tn, ml, sides);
    check_sides(info, meta, sides);
    for (int i = 0; i < info->n_sides; ++i) {
        meta->src[i] = sides[i];
    }
}

void llama_lowbit_attach_sides(ggml_tensor * weight, const LLM_TN_IMPL & tn, const llama_model_loader & ml,
                               const llama_lowbit_create_fn & create) {
    const ggml_lowbit_type_info * info = ggml_lowbit_get_type_info(weight->type);
    if (info == nullptr) {
        return;
    }
    ggml_tensor * metas[GGML_LOWBIT_MAX_SIDES] = {};
    side_metas(info, weight, tn, ml, metas);
    ggml_tensor * sides[GGML_LOWBIT_MAX_SIDES] = {};
    for (int i = 0; i < info->n_sides; ++i) {
        const ggml_tensor * m = metas[i];
        sides[i] = create(LLM_TN_IMPL(tn.arch, tn.tensor, info->sides[i], tn.bid, tn.xid),
                          { m->ne[0], m->ne[1], m->ne[2], m->ne[3] });
    }
    check_sides(info, weight, sides);
    ggml_tensor * meta = ml.get_tensor_meta(weight->name);
    for (int i = 0; i < info->n_sides; ++i) {
        weight->src[i] = sides[i];
        meta->src[i]   = nullptr;  // hung there by llama_lowbit_prepare_tensor for the loader's probe only
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

void llama_lowbit_rope_type(llama_model_loader & ml, enum llama_rope_type & rope_type) {
    static const char * key = "lowbit_gguf.rope_type";
    const int64_t       id  = gguf_find_key(ml.metadata, key);
    if (id < 0) {
        return;
    }
    if (gguf_get_kv_type(ml.metadata, id) != GGUF_TYPE_STRING) {
        throw std::runtime_error(format("the model's metadata key '%s' is not a string", key));
    }
    const std::string value = gguf_get_val_str(ml.metadata, id);
    if (value != "neox") {
        throw std::runtime_error(format("the model's metadata key '%s' is '%s'; lowbit-gguf knows 'neox'", key,
                                        value.c_str()));
    }
    if (rope_type != LLAMA_ROPE_TYPE_NORM && rope_type != LLAMA_ROPE_TYPE_NEOX) {
        throw std::runtime_error(format("the model's metadata key '%s' asks for NeoX RoPE, but this architecture's "
                                        "RoPE (type %d) is neither the normal nor the NeoX one", key, (int) rope_type));
    }
    rope_type = LLAMA_ROPE_TYPE_NEOX;
}
