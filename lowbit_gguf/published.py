"""Checkpoints in the published quantized formats, written with the reference packages' own code, for the import
tests and benchmarks (there is no model hub to fetch published ones from): AQLM through transformers' AQLM
integration and the PyPI `aqlm` package's QuantizedLinear (`pip install aqlm==1.1.7 numba accelerate`, in the
test extras)."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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
    from transformers import AqlmConfig, AutoModelForCausalLM
    from transformers.integrations import replace_with_aqlm_linear

    model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32)
    shapes = {name: (m.out_features, m.in_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name != "lm_head"}
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
    model.to(dtype).save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        if (Path(float_dir) / name).exists():
            shutil.copy2(Path(float_dir) / name, Path(out_dir) / name)
    return Path(out_dir)
