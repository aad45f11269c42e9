"""Write a quantized model as a GGUF, and the command line's quantize-to-file pipeline.

The model with its reference decode is converted by llama.cpp's own converter to F16; a method with a GGUF
tensor type (MethodSpec.pack) then has its weights rewritten as codes plus side tensors
(lowbit_gguf.gguf.write). A method without one ships the F16 file: the runtime then computes with exactly
the weights the method produced.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lowbit_gguf.settings import DEFAULT_CALIBRATION, DEFAULT_HELDOUT, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from lowbit_gguf.gguf.convert import convert
from lowbit_gguf.gguf.write import write_lowbit_gguf
from lowbit_gguf.methods import get_method
from lowbit_gguf.sequential import QuantizationResult


@dataclass
class QuantizeReport:
    result: QuantizationResult
    gguf: Path
    seconds: float


def quantize_checkpoint(model_dir: Path, method: str, config, out: Path, *,
                        calib_text: str | list[str] = DEFAULT_CALIBRATION, n_samples: int = DEFAULT_SAMPLES,
                        seq_len: int = DEFAULT_SEQ_LEN, n_heldout: int = DEFAULT_HELDOUT,
                        device: str = "cpu", checkpoint_dir: Path | None = None,
                        save_decoded: Path | None = None, embedding_type: str = "q8_0",
                        progress: bool = True, preset: str = "default") -> QuantizeReport:
    """`lowbit-gguf quantize`: lowbit_gguf.quantize on a model folder, then the GGUF at out. An interrupted run
    leaves its checkpoint beside the output (OUT.checkpoint); running the same command resumes it. preset: the
    name of the preset config was made with, for the file's metadata."""
    from lowbit_gguf.api import quantize

    started = time.time()
    model_dir, out = Path(model_dir), Path(out)
    parsed = get_method(method).parse_config(config)
    checkpoint_dir = checkpoint_dir or out.with_name(out.name + ".checkpoint")
    quantized = quantize(model_dir, parsed, calibration=calib_text, n_samples=n_samples, seq_len=seq_len,
                         n_heldout=n_heldout, device=device, checkpoint_dir=checkpoint_dir, progress=progress)
    result = quantized.result
    # A resumed run's time includes the blocks that earlier runs finished (not their lost partial blocks).
    seconds = f"{time.time() - started + result.resumed_seconds:.1f}"
    quantized.save_gguf(out, metadata={"quantize_seconds": seconds, "preset": preset},
                        save_decoded=save_decoded, embedding_type=embedding_type, progress=progress)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return QuantizeReport(result, out, time.time() - started + result.resumed_seconds)


def export_gguf(model, model_dir: Path, layers: dict, spec, config, out: Path, metadata: dict[str, str], *,
                save_decoded: Path | None = None, embedding_type: str = "q8_0", progress: bool = True) -> Path:
    """Write `model` (its linears already hold the reference decodes of `layers`, by module name) as a GGUF
    at out: llama.cpp's converter writes it in F16, then each layer of a method with a GGUF type becomes
    codes plus side tensors. metadata: extra lowbit_gguf.* keys besides the method and its config."""
    model_dir, out = Path(model_dir), Path(out)
    decoded_dir = Path(save_decoded) if save_decoded else Path(tempfile.mkdtemp(prefix="lowbit-decoded-"))
    try:
        model.save_pretrained(decoded_dir)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                     "chat_template.jinja", "generation_config.json"):
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, decoded_dir / name)
        if spec.pack is None:
            return convert(decoded_dir, out, "f16", quiet=True)
        f16 = out.with_name(out.name + ".f16-decode")
        convert(decoded_dir, f16, "f16", quiet=True)
        try:
            packed = {name: spec.pack(r.payload, config) for name, r in layers.items()}
            return write_lowbit_gguf(f16, out, packed, {name: r.decoded for name, r in layers.items()},
                                     {"method": spec.name, "config": json.dumps(asdict(config)), **metadata},
                                     embedding_type=embedding_type, progress=progress)
        finally:
            f16.unlink(missing_ok=True)
    finally:
        if not save_decoded:
            shutil.rmtree(decoded_dir, ignore_errors=True)
