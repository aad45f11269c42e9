"""Checkpoints in the published quantized formats, written with the reference packages' own code, for the import
tests and benchmarks (there is no model hub to fetch published ones from): AQLM through transformers' AQLM
integration and the PyPI `aqlm` package's QuantizedLinear (`pip install aqlm==1.1.7 numba accelerate`, in the
test extras); VPTQ through the PyPI `vptq` package's VQuantLinear, its model loader and its index packer
(`pip install --no-deps vptq==0.0.5.post1`: its dependencies are a GPU demo's)."""

from __future__ import annotations

import importlib
import importlib.util
import math
import shutil
import sys
import types
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _float_model(float_dir: Path):
    """(the float model at float_dir in float32, {decoder linear name: (d_out, d_in)}), the head left out."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32)
    shapes = {name: (m.out_features, m.in_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    return model, shapes


def _save_checkpoint(model, dtype: torch.dtype, float_dir: Path, out_dir: Path) -> Path:
    """Save the quantized model in dtype with float_dir's tokenizer files beside it."""
    model.to(dtype).save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (Path(float_dir) / name).exists():
            shutil.copy2(Path(float_dir) / name, Path(out_dir) / name)
    return Path(out_dir)


def random_aqlm_payload(d_out: int, d_in: int, num_codebooks: int, nbits: int, seed: int) -> dict[str, torch.Tensor]:
    """A payload as lowbit_gguf.methods.aqlm holds it (codes [d_out, d_in / 8, M], codebooks [M, 2^B, 8],
    scales [d_out]) with codes over the whole range and codewords of a trained layer's size."""
    g = torch.Generator().manual_seed(seed)
    return {"codes": torch.randint(0, 2**nbits, (d_out, d_in // 8, num_codebooks), generator=g),
            "codebooks": (0.3 * torch.randn(num_codebooks, 2**nbits, 8, generator=g) / num_codebooks).half(),
            "scales": (0.05 + 0.1 * torch.rand(d_out, generator=g)).half()}


def write_aqlm_checkpoint(float_dir: Path, out_dir: Path, num_codebooks: int, nbits: int,
                          payloads: dict[str, dict[str, torch.Tensor]] | None = None, seed: int = 0,
                          not_to_quantize: tuple[str, ...] = ("lm_head", "lm_head.weight"),
                          dtype: torch.dtype = torch.float16) -> Path:
    """The float model at float_dir with its decoder linears as aqlm QuantizedLinear (groups of 8, out-groups of 1),
    saved as an AQLM checkpoint. payloads: by module name (random ones when None). not_to_quantize: the config's
    linear_weights_not_to_quantize (published files spell the head 'lm_head.weight', transformers 5 matches
    'lm_head'). dtype: the float tensors', codebooks' and scales' (published files: fp16)."""
    from lowbit_gguf.errors import LowbitError

    if importlib.util.find_spec("aqlm") is None:
        raise LowbitError("writing AQLM checkpoints needs the aqlm package: pip install aqlm==1.1.7 numba accelerate")
    importlib.import_module("transformers.quantizers")  # before the integration, which imports it back
    from transformers import AqlmConfig
    from transformers.integrations import replace_with_aqlm_linear

    model, shapes = _float_model(float_dir)
    qconfig = AqlmConfig(in_group_size=8, out_group_size=1, num_codebooks=num_codebooks, nbits_per_codebook=nbits,
                         linear_weights_not_to_quantize=list(not_to_quantize))
    replace_with_aqlm_linear(model, modules_to_not_convert=["lm_head"], quantization_config=qconfig)
    for i, (name, (d_out, d_in)) in enumerate(shapes.items()):
        payload = (payloads or {}).get(name) or random_aqlm_payload(d_out, d_in, num_codebooks, nbits, seed + i)
        module = model.get_submodule(name).to_empty(device="cpu")
        codes = payload["codes"].long()
        half = 2 ** (nbits - 1)  # stored signed, as the aqlm package does
        module.codes.data = ((codes + half) % 2**nbits - half).to(module.codes.dtype)
        module.codebooks.data = payload["codebooks"].float().reshape(num_codebooks, 2**nbits, 1, 8)
        module.scales.data = payload["scales"].float().reshape(d_out, 1, 1, 1)
    model.config.quantization_config = qconfig
    return _save_checkpoint(model, dtype, float_dir, out_dir)


def import_vptq():
    """The vptq package. Its index packer imports sentence-transformers (and that scikit-learn) at the top only to
    recognise SentenceTransformer models in pack_model; where that is not installed, a stand-in class serves."""
    from lowbit_gguf.errors import LowbitError

    if importlib.util.find_spec("vptq") is None:
        raise LowbitError("VPTQ checkpoints need the vptq package: pip install --no-deps vptq==0.0.5.post1")
    if "sentence_transformers" not in sys.modules and importlib.util.find_spec("sentence_transformers") is None:
        package, module = types.ModuleType("sentence_transformers"), types.ModuleType("sentence_transformers."
                                                                                      "SentenceTransformer")
        module.SentenceTransformer = type("SentenceTransformer", (), {})
        package.SentenceTransformer = module
        sys.modules.update({package.__name__: package, module.__name__: module})
    return importlib.import_module("vptq")


def random_vptq_payload(d_out: int, d_in: int, v: int, k: int, k_res: int, seed: int,
                        enable_norm: bool = True) -> dict[str, torch.Tensor]:
    """A payload as lowbit_gguf.methods.vptq holds it (indices and residual indices [d_out / v, d_in] over the whole
    range, codebooks [k, v], column scale and bias [d_in]) with codewords of a trained layer's size."""
    g = torch.Generator().manual_seed(seed)
    res_rows = max(1, k_res)
    return {"indices": torch.randint(0, k, (d_out // v, d_in), generator=g),
            "res_indices": torch.randint(0, res_rows, (d_out // v, d_in), generator=g),
            "centroids": (0.05 * torch.randn(k, v, generator=g)).half(),
            "res_centroids": (0.02 * torch.randn(res_rows, v, generator=g) * (k_res > 0)).half(),
            "col_scale": (1 + 0.5 * torch.rand(d_in, generator=g) if enable_norm else torch.ones(d_in)).half(),
            "col_bias": (0.01 * torch.randn(d_in, generator=g) if enable_norm else torch.zeros(d_in)).half()}


def vptq_layer_config(d_out: int, d_in: int, v: int, k: int, k_res: int, enable_norm: bool = True,
                      enable_perm: bool = True) -> dict:
    """One linear's entry of a VPTQ checkpoint's config_for_layers, as the published ones have it (outlier slots
    first, -1 where unused)."""
    return {"bias": False, "enable_norm": enable_norm, "enable_perm": enable_perm, "group_num": 1,
            "group_size": d_in, "in_features": d_in, "out_features": d_out, "indices_as_float": False,
            "is_indice_packed": True, "num_centroids": [-1, k], "num_res_centroids": [-1, k_res if k_res else -1],
            "outlier_size": 0, "vector_lens": [-1, v]}


def write_vptq_checkpoint(float_dir: Path, out_dir: Path, v: int, k: int, k_res: int, enable_norm: bool = True,
                          enable_perm: bool = True, payloads: dict[str, dict[str, torch.Tensor]] | None = None,
                          seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """The float model at float_dir with its decoder linears as vptq VQuantLinear (one codebook per linear, no
    outliers, indices packed by the package's pack_index), saved as a VPTQ checkpoint. payloads: by module name, in
    the model's column order (random ones when None); with enable_perm a random column permutation is stored and
    the indices are written in its order, as the reference's act-order quantization leaves them."""
    import_vptq()
    from transformers import VptqConfig
    from vptq.layers.model_base import make_quant_linear
    from vptq.layers.vqlinear import VQuantLinear
    from vptq.utils.pack import pack_index

    model, shapes = _float_model(float_dir)
    layers = {name: vptq_layer_config(d_out, d_in, v, k, k_res, enable_norm, enable_perm)
              for name, (d_out, d_in) in shapes.items()}
    make_quant_linear(model, layers, {}, target_layer=VQuantLinear)
    for i, (name, (d_out, d_in)) in enumerate(shapes.items()):
        payload = (payloads or {}).get(name) or random_vptq_payload(d_out, d_in, v, k, k_res, seed + i, enable_norm)
        module = model.get_submodule(name).to_empty(device="cpu")
        g = torch.Generator().manual_seed(seed + 1000 + i)
        perm = torch.randperm(d_in, generator=g) if enable_perm else torch.arange(d_in)
        # the file's column j' is the model's column perm[j'] (the reference decodes W[:, argsort(perm)])
        idx, res = payload["indices"].long()[:, perm], payload["res_indices"].long()[:, perm]
        module.centroids.weight.data = payload["centroids"].float().reshape(1, k * v)
        if k_res:
            module.res_centroids.weight.data = payload["res_centroids"].float().reshape(1, k_res * v)
        as_int16 = lambda t: t.to(torch.int32).to(torch.uint16).view(torch.int16)[None]  # noqa: E731
        module.indices.data = pack_index(as_int16(idx), int(math.log2(k)), as_int16(res) if k_res else None,
                                         int(math.log2(k_res)) if k_res else 0)
        if enable_perm:
            module.perm.data = perm.to(torch.int32).to(torch.uint16).view(torch.int16)
        if enable_norm:
            module.weight_scale.data = payload["col_scale"].float()
            module.weight_bias.data = payload["col_bias"].float()
    model.config.quantization_config = VptqConfig(config_for_layers=layers, shared_layer_config={})
    return _save_checkpoint(model, dtype, float_dir, out_dir)


def load_vptq_reference(checkpoint: Path, dtype: torch.dtype = torch.float32):
    """A VPTQ checkpoint as the vptq package runs it: transformers' model with its linears replaced by the package's
    VQuantLinear (its own make_quant_linear, as its AutoModelForCausalLM does; that loader itself needs a
    transformers before 5), the checkpoint's tensors loaded into them. On the CPU VQuantLinear decodes through the
    package's torch implementation."""
    import_vptq()
    from transformers import AutoConfig, AutoModelForCausalLM
    from vptq.layers.model_base import make_quant_linear
    from vptq.layers.vqlinear import VQuantLinear

    from lowbit_gguf.checkpoints import CheckpointTensors
    from lowbit_gguf.errors import LowbitError

    config = AutoConfig.from_pretrained(checkpoint)
    qconfig = config.quantization_config
    qconfig = qconfig if isinstance(qconfig, dict) else qconfig.to_dict()
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    make_quant_linear(model, qconfig.get("config_for_layers") or {}, qconfig.get("shared_layer_config") or {},
                      target_layer=VQuantLinear)
    tensors = CheckpointTensors(checkpoint)
    state = {name: tensors.get(name) for name in tensors.where}
    missing, unexpected = model.load_state_dict(
        {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    lacking = sorted(set(missing) - tied)
    if lacking or unexpected:
        raise LowbitError(f"{checkpoint} does not fit the vptq package's model: it lacks {lacking[:3]} and has "
                          f"{sorted(unexpected)[:3]} beyond it")
    if tied:
        model.tie_weights()
    return model.eval()
