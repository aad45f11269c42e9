"""Hugging Face checkpoint -> GGUF through llama.cpp's own converter (convert_hf_to_gguf.py).

The converter of the pinned upstream owns the tensor-name mapping, the hyperparameters and the
tokenizer (including the pre-tokenizer detection llama.cpp needs), so lowbit-gguf does not rewrite them.
It runs in its own process because it imports the gguf-py that ships beside it, which is newer than the
gguf package lowbit-gguf itself uses.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

from lowbit_gguf.cache import cache_root
from lowbit_gguf.errors import LowbitError, UnsupportedModel
from lowbit_gguf.files import partial_output
from lowbit_gguf.runtime.build import UPSTREAM, extract_upstream

# HF architectures of the llama family that the tests and the sequential driver cover.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
# quant methods convert_quantized.py decodes for the converter (lowbit_gguf.checkpoints imports them as codes)
LOWBIT_DECODED = ("aqlm", "vptq")


def upstream_source() -> Path:
    """A pristine (unpatched) copy of the pinned upstream tree, extracted once."""
    root = cache_root() / "upstream" / UPSTREAM.version
    if not (root / "convert_hf_to_gguf.py").exists():
        partial = root.with_name(root.name + ".partial")
        if partial.exists():
            import shutil

            shutil.rmtree(partial)
        extract_upstream(partial)
        partial.rename(root)
    return root


def check_model_dir(model_dir: Path) -> dict:
    """The model's config.json, after checking the directory holds a supported model."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LowbitError(f"model directory {model_dir} does not exist")
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise LowbitError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    config = json.loads(config_path.read_text())
    architectures = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise UnsupportedModel(
            f"{model_dir} is a {', '.join(architectures) or 'model with no architecture'}; "
            f"lowbit-gguf supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return config


def convert(model_dir: Path, out: Path, out_type: str = "f16", quiet: bool = False) -> Path:
    """Write model_dir as a GGUF at out; out only appears once the converter has succeeded."""
    model_dir, out = Path(model_dir), Path(out)
    if out_type not in OUT_TYPES:
        raise LowbitError(f"unknown output type {out_type!r}; choose from {', '.join(OUT_TYPES)}")
    config = check_model_dir(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    upstream = upstream_source()
    # checkpoints quantized in a format the converter does not know have their linears decoded on the way
    qconfig = config.get("quantization_config")
    if isinstance(qconfig, dict) and qconfig.get("quant_method") in LOWBIT_DECODED:
        script = ["-m", "lowbit_gguf.convert_quantized", str(upstream)]
    else:
        script = [str(upstream / "convert_hf_to_gguf.py")]
    with partial_output(out, f"the GGUF file {out.name}") as partial:
        cmd = [sys.executable, *script, str(model_dir), "--outfile", str(partial), "--outtype", out_type]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE if quiet else None, text=True)
        if proc.returncode != 0:
            detail = (proc.stderr or "")[-3000:] if quiet else "(its messages are above)"
            if "No space left on device" in detail:  # the converter's own OSError: say it as for our writes
                raise OSError(errno.ENOSPC, detail)
            raise LowbitError(f"llama.cpp's converter failed on {model_dir}: {detail}")
    return out
