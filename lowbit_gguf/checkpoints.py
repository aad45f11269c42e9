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

VPTQ (`quant_method == "vptq"`, the format of the `vptq` package's VQuantLinear): each quantized linear's entry in
`config_for_layers` (or `shared_layer_config`, by the module's last name) gives `vector_lens`, `num_centroids`,
`num_res_centroids` (outlier slot first, then the main one; -1: none), `group_num`, `group_size`, `outlier_size`,
`enable_norm`, `enable_perm`, `is_indice_packed`; the linear holds
    centroids.weight      [group_num, k * v]        res_centroids.weight  [group_num, k_res * v]
    indices               packed: int32 [group_num, d_out / v, ceil(d_in * bits / 32)], per row of vectors an
                          LSB-first bit stream of (res << log2 k | idx) entries; unpacked: int16 [.., d_in]
                          beside res_indices
    perm                  [d_in] (int16 holding uint16 when packed): the file's column j is the model's perm[j]
    weight_scale, weight_bias  [d_in] (enable_norm): W = decode * scale + bias per model column
and the runtime's VPTQ types take one codebook per linear (group_num 1) without outlier columns. A vector covers v
rows consecutive in Hugging Face's order, which llama.cpp's converter would interleave in Llama's q/k projections
(its RoPE permutation): those files keep Hugging Face's row order and say so (lowbit_gguf.rope_type = neox), and the
patched runtime applies RoPE to pairs of halves, as Hugging Face does.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lowbit_gguf.errors import LowbitError, UnsupportedModel

AQLM_SUFFIXES = ("codes", "codebooks", "scales")
# a VPTQ linear's tensors (the first two mark it as quantized); bias is the linear's own, kept as it is
VPTQ_SUFFIXES = ("centroids.weight", "indices", "res_centroids.weight", "res_indices", "perm", "weight_scale",
                 "weight_bias", "outlier_centroids.weight", "outlier_indices")
IMPORTERS = ("aqlm", "vptq")


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


def vptq_layer(qconfig: dict, module: str) -> dict | None:
    """A linear's VPTQ parameters: its config_for_layers entry, else shared_layer_config's for its last name."""
    layers, shared = qconfig.get("config_for_layers") or {}, qconfig.get("shared_layer_config") or {}
    return layers.get(module) or shared.get(module.rsplit(".", 1)[-1])


def vptq_config_of(layer: dict | None, module: str, shape: tuple[int, int]):
    """The VPTQConfig of one linear's VPTQ parameters, or UnsupportedModel naming what it has and what the runtime's
    VPTQ types hold."""
    from lowbit_gguf.gguf.types import vptq_type
    from lowbit_gguf.methods.vptq import VPTQConfig

    if not layer:
        raise LowbitError(f"{module} has VPTQ indices but its quantization_config has no entry for it")
    try:
        (out_v, v), (out_k, k), (_, k_res) = (tuple(int(x) for x in layer[key]) for key in
                                              ("vector_lens", "num_centroids", "num_res_centroids"))
        group_num, group_size = int(layer.get("group_num", 1)), int(layer["group_size"])
        outlier_size = int(layer.get("outlier_size") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise LowbitError(f"{module}: its VPTQ parameters lack {exc} or have it in another form than the vptq "
                          "package writes") from exc
    d_out, d_in = shape
    has = f"{module} is VPTQ v{v}k{k}" + (f"r{k_res}" if k_res > 0 else "")
    if outlier_size > 0 or (out_v > 1 and out_k > 0):
        raise UnsupportedModel(f"{has} with {outlier_size} outlier columns; lowbit-gguf's VPTQ types take no "
                               "outlier codebook")
    if group_num != 1:
        raise UnsupportedModel(f"{has} in {group_num} column groups; lowbit-gguf's VPTQ types take one codebook "
                               "per linear (group_num 1)")
    if layer.get("vector_quant_dim", "out") != "out":
        raise UnsupportedModel(f"{has} with vectors along the input dimension; VPTQ's run along the output one")
    if group_size != d_in or int(layer.get("in_features", d_in)) != d_in \
            or int(layer.get("out_features", d_out)) != d_out:
        raise LowbitError(f"{module}: its VPTQ parameters describe a [{layer.get('out_features')}, "
                          f"{layer.get('in_features')}] linear in groups of {group_size}; the model's is "
                          f"[{d_out}, {d_in}]")
    if d_out % v:
        raise UnsupportedModel(f"{has}: vectors of {v} rows do not divide its {d_out} rows (padded vectors); "
                               "lowbit-gguf's VPTQ types take vector lengths that divide the rows")
    try:
        config = VPTQConfig(vector_len=v, num_centroids=k, num_res_centroids=max(k_res, 0),
                            enable_norm=bool(layer.get("enable_norm")), enable_perm=bool(layer.get("enable_perm")))
        vptq_type(config.index_bits, v)
    except ValueError as exc:
        raise UnsupportedModel(f"{has}: {exc}") from exc
    return config


def _as_uint16(t: torch.Tensor) -> np.ndarray:
    """Indices and permutations stored as int16 (or float16) holding uint16, as the vptq package stores them."""
    if t.dtype in (torch.int16, torch.float16):
        return t.contiguous().view(torch.int16).numpy().view(np.uint16).astype(np.int64)
    return t.long().numpy()


def vptq_payload(get, module: str, shape: tuple[int, int], layer: dict, config) -> dict[str, torch.Tensor]:
    """One linear's VPTQ tensors (get(name) -> tensor or None) as lowbit_gguf.methods.vptq holds them, indices in the
    model's column order; each checked against the config and the model's shape (LowbitError naming the tensor)."""
    from lowbit_gguf.bits import unpack_indices

    d_out, d_in = shape
    v, k, k_res = config.vector_len, config.num_centroids, config.num_res_centroids
    rows = d_out // v
    packed = bool(layer.get("is_indice_packed"))

    def tensor(suffix: str, want: tuple[int, ...], kinds: tuple[torch.dtype, ...]) -> torch.Tensor:
        t = get(f"{module}.{suffix}")
        if t is None:
            raise LowbitError(f"{module} has VPTQ indices but no {suffix}")
        if tuple(t.shape) != want:
            raise LowbitError(f"{module}.{suffix} has shape {list(t.shape)}; VPTQ v{v}k{k} on a [{d_out}, {d_in}] "
                              f"linear stores {list(want)}")
        if t.dtype not in kinds:
            raise LowbitError(f"{module}.{suffix} is {str(t.dtype).removeprefix('torch.')}; expected "
                              f"{' or '.join(str(d).removeprefix('torch.') for d in kinds)}")
        if t.dtype.is_floating_point and suffix not in ("indices", "res_indices") and not torch.isfinite(t).all():
            raise LowbitError(f"{module}.{suffix} holds NaN or infinite values")
        return t

    floats = (torch.float16, torch.bfloat16, torch.float32)
    index_kinds = (torch.int16, torch.float16) if layer.get("indices_as_float") else (torch.int16, torch.int32,
                                                                                       torch.int64)
    if packed:
        words = tensor("indices", (1, rows, -(-d_in * config.index_bits // 32)), (torch.int32,))
        entries = unpack_indices(words[0].numpy().astype("<i4").view(np.uint8), config.index_bits, d_in)
        idx, res = entries & (k - 1), entries >> config.main_bits
    else:
        idx = _as_uint16(tensor("indices", (1, rows, d_in), index_kinds))[0]
        res = _as_uint16(tensor("res_indices", (1, rows, d_in), index_kinds))[0] if k_res else np.zeros_like(idx)
        for suffix, values, size in (("indices", idx, k), ("res_indices", res, max(k_res, 1))):
            if values.size and int(values.max()) >= size:
                raise LowbitError(f"{module}.{suffix} holds index {int(values.max())}; the codebook has {size}")
    if config.enable_perm:
        perm = _as_uint16(tensor("perm", (d_in,), (torch.int16, torch.int32, torch.int64)))
        if not np.array_equal(np.sort(perm), np.arange(d_in)):
            raise LowbitError(f"{module}.perm is not a permutation of its {d_in} columns")
        model_order = np.argsort(perm)  # the file's column j is the model's column perm[j]
        idx, res = idx[:, model_order], res[:, model_order]
    centroids = tensor("centroids.weight", (1, k * v), floats).reshape(k, v)
    res_centroids = (tensor("res_centroids.weight", (1, k_res * v), floats).reshape(k_res, v) if k_res
                     else torch.zeros(1, v))
    if config.enable_norm:
        scale, bias = (tensor(s, (d_in,), floats) for s in ("weight_scale", "weight_bias"))
    else:
        scale, bias = torch.ones(d_in), torch.zeros(d_in)
    payload = {"indices": torch.from_numpy(idx).int(), "res_indices": torch.from_numpy(res).int(),
               "centroids": centroids.half(), "res_centroids": res_centroids.half(), "col_scale": scale.half(),
               "col_bias": bias.half()}
    for key in ("centroids", "res_centroids", "col_scale", "col_bias"):
        if not torch.isfinite(payload[key]).all():
            raise LowbitError(f"{module}: its {key.replace('_', ' ')} do not fit in float16, which the GGUF holds")
    return payload


def read_vptq(model_dir: Path, config: dict):
    """({module name: VPTQConfig}, {module name: payload}) of a VPTQ checkpoint."""
    qconfig = config["quantization_config"]
    tensors = CheckpointTensors(model_dir)
    get = lambda name: tensors.get(name) if name in tensors else None  # noqa: E731
    configs, payloads = {}, {}
    for module, shape in linear_shapes(model_dir).items():
        if f"{module}.indices" not in tensors and f"{module}.centroids.weight" not in tensors:
            if f"{module}.weight" not in tensors:
                raise LowbitError(f"{model_dir}: the linear {module} has neither a weight nor VPTQ indices")
            continue  # kept in float
        layer = vptq_layer(qconfig, module)
        configs[module] = vptq_config_of(layer, module, shape)
        payloads[module] = vptq_payload(get, module, shape, layer, configs[module])
    if not payloads:
        raise LowbitError(f"{model_dir} says it is VPTQ but no linear has indices")
    return configs, payloads


def _common_config(configs: dict) -> dict:
    """The metadata config of an imported file: the linears' config, or each distinct one with the linears it has."""
    distinct = {json.dumps(asdict(c), sort_keys=True) for c in configs.values()}
    if len(distinct) == 1:
        return json.loads(distinct.pop())
    return {"per_linear": {module: asdict(c) for module, c in configs.items()}}


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
    if method == "aqlm":
        aqlm_config, payloads = read_aqlm(model_dir, config)
        configs = dict.fromkeys(payloads, aqlm_config)
    else:
        configs, payloads = read_vptq(model_dir, config)
    spec = get_method(method)
    packed = {module: spec.pack(p, configs[module]) for module, p in payloads.items()}
    decoded = {module: spec.decode(p, configs[module]) for module, p in payloads.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lowbit-import-", dir=out.parent) as tmp:
        f16 = convert(model_dir, Path(tmp) / "decoded-f16.gguf", "f16", quiet=True)
        metadata = {"method": method, "config": json.dumps(_common_config(configs)), "imported_from": method}
        return write_lowbit_gguf(f16, out, packed, decoded, metadata, embedding_type=embedding_type,
                                 progress=progress)
