"""Published quantized checkpoints in Hugging Face format, written as lowbit GGUF without quantizing again.

AQLM (config.json `quantization_config.quant_method == "aqlm"`, the format of transformers' AQLM integration and
the `aqlm` package's QuantizedLinear): each quantized linear holds
    codes      [d_out / out_group_size, d_in / in_group_size, num_codebooks]  int8 / int16, stored signed
    codebooks  [num_codebooks, 2^nbits_per_codebook, out_group_size, in_group_size]
    scales     [d_out / out_group_size, 1, 1, 1]
and the runtime's AQLM types take 1x16, 2x8 and 1x8 with groups of 8 and out-groups of 1. Which linears are
quantized is read from the tensors (a linear with `codes`), not from `linear_weights_not_to_quantize`, whose
spelling changed between transformers versions ("lm_head.weight" in published files, "lm_head" in transformers 5).

Everything else (names, metadata, tokenizer, embeddings, norms, the head) is llama.cpp's converter's: it runs on
the checkpoint with the quantized linears decoded on the way (lowbit_gguf/convert_quantized.py), and the
lowbit writer then stores each of them as its codes, in the converter's row order.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from lowbit_gguf.errors import LowbitError, UnsupportedModel

AQLM_SUFFIXES = ("codes", "codebooks", "scales")
IMPORTERS = ("aqlm",)


def quant_method(config: dict) -> str | None:
    """The quant_method of a checkpoint's config.json (None for a float checkpoint)."""
    qconfig = config.get("quantization_config")
    return qconfig.get("quant_method") if isinstance(qconfig, dict) else None


class CheckpointTensors:
    """The tensors of a Hugging Face checkpoint's safetensors files (one file or an indexed set of shards), read on
    demand."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
            shards = sorted(set(weight_map.values()))
        elif (model_dir / "model.safetensors").exists():
            shards = ["model.safetensors"]
        else:
            raise LowbitError(f"{model_dir} has no model.safetensors or model.safetensors.index.json")
        missing = [s for s in shards if not (model_dir / s).exists()]
        if missing:
            raise LowbitError(f"{model_dir} lacks the shard(s) {', '.join(missing)} its index names")
        self.files = {shard: safe_open(model_dir / shard, "pt") for shard in shards}
        self.where = {name: shard for shard, f in self.files.items() for name in f.keys()}
        if index.exists():
            absent = sorted(set(weight_map) - set(self.where))
            if absent:
                raise LowbitError(f"{model_dir}: the tensor {absent[0]} its index names is in none of its shards")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise LowbitError(f"the checkpoint has no tensor {name}")
        return self.files[self.where[name]].get_tensor(name)


def linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """{module name: (d_out, d_in)} of every linear of the model its config.json describes (built on the meta device
    by transformers, without weights), but an output head tied to the embeddings."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings() if getattr(config, "tie_word_embeddings", False) else None
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}  # a tied head is the embeddings


def aqlm_config_of(qconfig: dict, model_dir: Path):
    """The AQLMConfig a checkpoint's quantization_config describes, or UnsupportedModel naming what it has and what
    the runtime's types hold."""
    from lowbit_gguf.gguf.types import aqlm_type
    from lowbit_gguf.methods.aqlm import AQLMConfig

    try:
        m, b = int(qconfig["num_codebooks"]), int(qconfig["nbits_per_codebook"])
        in_group, out_group = int(qconfig["in_group_size"]), int(qconfig["out_group_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LowbitError(f"{model_dir}: its AQLM quantization_config lacks {exc} or has it not as a number") from exc
    has = f"AQLM {m}x{b} with in-groups of {in_group} and out-groups of {out_group}"
    if out_group != 1:
        raise UnsupportedModel(f"{model_dir} is {has}; lowbit-gguf's AQLM types take out-groups of 1 only")
    try:
        aqlm_type(m, b, in_group)
    except ValueError as exc:
        raise UnsupportedModel(f"{model_dir} is {has}: {exc}") from exc
    return AQLMConfig(num_codebooks=m, nbits=b, group_size=in_group)


def aqlm_payload(tensors: CheckpointTensors, module: str, shape: tuple[int, int], config) -> dict[str, torch.Tensor]:
    """One linear's codes, codebooks and scales as lowbit_gguf.methods.aqlm holds them, each checked against the
    config and the model's shape (LowbitError naming the tensor otherwise)."""
    d_out, d_in = shape
    m, b, g = config.num_codebooks, config.nbits, config.group_size
    codes, codebooks, scales = (tensors.get(f"{module}.{s}") for s in AQLM_SUFFIXES)
    for name, t, want in ((f"{module}.codes", codes, (d_out, d_in // g, m)),
                          (f"{module}.codebooks", codebooks, (m, 2**b, 1, g)),
                          (f"{module}.scales", scales, (d_out, 1, 1, 1))):
        if d_in % g or tuple(t.shape) != want:
            raise LowbitError(f"{name} has shape {list(t.shape)}; AQLM {m}x{b} on a [{d_out}, {d_in}] linear "
                              f"stores {list(want)}")
        if name.endswith("codes") != (not t.dtype.is_floating_point):
            raise LowbitError(f"{name} is {str(t.dtype).removeprefix('torch.')}, "
                              f"{'an integer type' if name.endswith('codes') else 'a float type'} was expected")
    codes = codes.long()
    # a code is stored in its dtype signed (read back modulo 2^B) or as it is
    low, high = -(2 ** (b - 1)), 2**b
    if codes.numel() and (int(codes.min()) < low or int(codes.max()) >= high):
        raise LowbitError(f"{module}.codes holds codes in [{int(codes.min())}, {int(codes.max())}]; "
                          f"{b}-bit codes lie in [{low}, {high})")
    for name, t in ((f"{module}.codebooks", codebooks), (f"{module}.scales", scales)):
        if not torch.isfinite(t).all():
            raise LowbitError(f"{name} holds NaN or infinite values")
    return {"codes": codes % 2**b, "codebooks": codebooks.reshape(m, 2**b, g).half(),
            "scales": scales.reshape(d_out).half()}


def read_aqlm(model_dir: Path, config: dict):
    """(AQLMConfig, {module name: payload}) of an AQLM checkpoint."""
    aqlm_config = aqlm_config_of(config["quantization_config"], model_dir)
    tensors = CheckpointTensors(model_dir)
    shapes = linear_shapes(model_dir)
    payloads = {}
    for module, shape in shapes.items():
        present = [s for s in AQLM_SUFFIXES if f"{module}.{s}" in tensors]
        if not present:
            if f"{module}.weight" not in tensors:
                raise LowbitError(f"{model_dir}: the linear {module} has neither a weight nor AQLM codes")
            continue  # kept in float (the head, usually)
        if len(present) < len(AQLM_SUFFIXES):
            absent = sorted(set(AQLM_SUFFIXES) - set(present))
            raise LowbitError(f"{model_dir}: {module} has AQLM {', '.join(present)} but no {', '.join(absent)}")
        payloads[module] = aqlm_payload(tensors, module, shape, aqlm_config)
    if not payloads:
        raise LowbitError(f"{model_dir} says it is AQLM but no linear has codes")
    return aqlm_config, payloads


def import_checkpoint(model_dir: Path, out: Path, embedding_type: str = "q8_0", progress: bool = True) -> Path:
    """Write the published quantized checkpoint at model_dir as a lowbit GGUF at out (nothing at out on failure)."""
    from lowbit_gguf.gguf.convert import check_model_dir, convert
    from lowbit_gguf.gguf.write import write_lowbit_gguf
    from lowbit_gguf.methods import get_method

    model_dir, out = Path(model_dir), Path(out)
    config = check_model_dir(model_dir)
    method = quant_method(config)
    if method not in IMPORTERS:
        raise UnsupportedModel(f"{model_dir} is quantized with {method!r}; lowbit-gguf imports "
                               f"{', '.join(IMPORTERS)} checkpoints")
    aqlm_config, payloads = read_aqlm(model_dir, config)
    spec = get_method("aqlm")
    packed = {module: spec.pack(p, aqlm_config) for module, p in payloads.items()}
    decoded = {module: spec.decode(p, aqlm_config) for module, p in payloads.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lowbit-import-", dir=out.parent) as tmp:
        f16 = convert(model_dir, Path(tmp) / "decoded-f16.gguf", "f16", quiet=True)
        metadata = {"method": "aqlm", "config": json.dumps(asdict(aqlm_config)), "imported_from": method}
        return write_lowbit_gguf(f16, out, packed, decoded, metadata, embedding_type=embedding_type,
                                 progress=progress)
