"""Random weights of every lowbit type, as a file stores them: what the kernel tests check against the reference
decode and what the fuzzer's small files are made of. Random codes and tables, not quantized weights (PTQ1.61's are
quantized from random weights, since its codes and salient masks must agree)."""

from __future__ import annotations

import torch

from lowbit_gguf.methods import get_method

# the config that makes each VPTQ type (its index bits)
VPTQ_TYPE_CONFIGS = {"VPTQ_1": "v8k256", "VPTQ_1_5": "v8k256r16", "VPTQ_2": "v8k256r256", "VPTQ_3": "v8k4096r4096",
                     "VPTQ_4": "v4k256r256"}


def random_aqlm_payload(config_text, d_out=24, d_in=64, seed=0):
    """(spec, config, payload) of an AQLM weight with random codes, codebooks and scales."""
    spec = get_method("aqlm")
    config = spec.parse_config(config_text)
    g = torch.Generator().manual_seed(seed)
    payload = {
        "codes": torch.randint(0, config.codebook_size, (d_out, d_in // 8, config.num_codebooks), generator=g),
        "codebooks": (torch.randn(config.num_codebooks, config.codebook_size, 8, generator=g) * 0.1).half(),
        "scales": (torch.rand(d_out, generator=g) + 0.5).half(),
    }
    payload["codes"] = payload["codes"].to(torch.int16 if config.nbits <= 15 else torch.int32)
    return spec, config, payload


def random_ptq161_payload(d_out=24, d_in=96, ratio=0.2, seed=0):
    """(spec, config, payload) of a PTQ1.61 weight quantized from random weights and activations, with its
    trainable scales moved away from their start (r1, r2 != 1) so every stored parameter matters."""
    spec = get_method("ptq161")
    config = spec.config_type(salient_ratio=ratio)
    g = torch.Generator().manual_seed(seed)
    q = spec.quantize(torch.randn(d_out, d_in, generator=g), torch.rand(d_in, generator=g), config)
    payload = q.payload
    payload["r1"] = 1 + 0.3 * torch.randn(d_out, generator=g)
    payload["r2"] = 1 + 0.3 * torch.randn(payload["r2"].shape, generator=g)
    return spec, config, payload


def random_vptq_payload(config_text="v8k256r256", d_out=24, d_in=128, seed=0):
    """(spec, config, payload) of a VPTQ weight with random indices, codebooks, channel scales and biases."""
    spec = get_method("vptq")
    config = spec.parse_config(config_text)
    g = torch.Generator().manual_seed(seed)
    groups, v = d_out // config.vector_len, config.vector_len
    payload = {
        "indices": torch.randint(0, config.num_centroids, (groups, d_in), generator=g).int(),
        "res_indices": torch.randint(0, max(1, config.num_res_centroids), (groups, d_in), generator=g).int(),
        "centroids": torch.randn(config.num_centroids, v, generator=g).half(),
        "res_centroids": (0.3 * torch.randn(config.stored_res_centroids, v, generator=g)).half(),
        "col_scale": (torch.rand(d_in, generator=g) + 0.5).half(),
        "col_bias": (0.2 * torch.randn(d_in, generator=g)).half(),
    }
    if not config.num_res_centroids:
        payload["res_centroids"].zero_()
    return spec, config, payload


def random_packed(lowbit_type, d_out: int | None = None, d_in: int | None = None, seed: int = 0):
    """A random weight of a lowbit type, as the file stores it (each method's default shape unless given): one row
    per method."""
    shape = {k: v for k, v in (("d_out", d_out), ("d_in", d_in)) if v is not None}
    if lowbit_type.method == "aqlm":
        spec, config, payload = random_aqlm_payload(f"{lowbit_type.num_codebooks}x{lowbit_type.code_bits}", seed=seed,
                                                    **shape)
    elif lowbit_type.method == "ptq161":
        spec, config, payload = random_ptq161_payload(seed=seed, **shape)
    elif lowbit_type.method == "vptq":
        spec, config, payload = random_vptq_payload(VPTQ_TYPE_CONFIGS[lowbit_type.name], seed=seed, **shape)
    else:
        raise NotImplementedError(f"no random weight for {lowbit_type.method}: add its row here")
    return spec.pack(payload, config)
