"""The Python API: quantize a Hugging Face model with a method's config and write the GGUF a patched llama.cpp
runs, shaped like torchao's `quantize_(model, Int4WeightOnlyConfig())`:

    from lowbit_gguf import quantize, AQLMConfig
    quantized = quantize("SmolLM2-135M-Instruct", AQLMConfig.parse("2x8"), calibration="calibration")
    quantized.save_gguf("smollm2-aqlm-2x8.gguf")

The config names the method. Every stage the command line runs (a method's preprocessing, the block-by-block
quantization and its training, checkpoints to resume from) runs here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit_gguf.calibration import CalibrationSet, model_calibration_set
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.methods import MethodSpec, method_for_config
from lowbit_gguf.sequential import QuantizationResult, quantize_model
from lowbit_gguf.settings import DEFAULT_CALIBRATION, DEFAULT_HELDOUT, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN


@dataclass
class QuantizedModel:
    """A quantized model: the float model with every linear weight replaced by its reference decode, and the
    per-layer results the GGUF is written from."""

    model: nn.Module
    model_dir: Path  # the Hugging Face folder it came from (tokenizer, config)
    method: MethodSpec
    config: object
    result: QuantizationResult

    @property
    def bits_per_weight(self) -> float:
        return self.result.bits_per_weight()

    def save_gguf(self, path: str | Path, *, embedding_type: str = "q8_0", save_decoded: Path | None = None,
                  metadata: dict[str, str] | None = None, progress: bool = True) -> Path:
        """Write the GGUF: llama.cpp's converter for everything but the linears, which get the method's tensor
        type (codes and side tensors)."""
        from lowbit_gguf.export import export_gguf

        return export_gguf(self.model, self.model_dir, self.result.layers, self.method, self.config, Path(path),
                           metadata or {}, save_decoded=save_decoded, embedding_type=embedding_type,
                           progress=progress)


def _model_and_dir(model: str | Path | nn.Module) -> tuple[nn.Module, Path]:
    from lowbit_gguf.evaluate import load_hf_model
    from lowbit_gguf.gguf.convert import check_model_dir

    if isinstance(model, (str, Path)):
        check_model_dir(Path(model))
        return load_hf_model(Path(model)), Path(model)
    model_dir = Path(getattr(model, "name_or_path", "") or "")
    if not (model_dir / "config.json").exists():
        raise LowbitError("a loaded model must come from a local Hugging Face folder (model.name_or_path) so its "
                          "tokenizer and config can be written to the GGUF; pass the folder instead")
    return model, model_dir


def quantize(model: str | Path | nn.Module, config, *,
             calibration: str | list[str] | CalibrationSet | torch.Tensor = DEFAULT_CALIBRATION,
             n_samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, n_heldout: int = DEFAULT_HELDOUT,
             device: str = "cpu", checkpoint_dir: Path | None = None, progress: bool = True) -> QuantizedModel:
    """Quantize a Hugging Face model (its folder, or a model loaded from one; changed in place) with the method
    config belongs to. calibration: default texts by name or text files (tokenized and windowed for the model),
    a CalibrationSet, or a [n, seq_len] tensor of token ids. With checkpoint_dir an interrupted run resumes."""
    spec = method_for_config(config)
    model, model_dir = _model_and_dir(model)
    if isinstance(calibration, (str, list, tuple)):
        calibration = model_calibration_set(model_dir, calibration, n_samples, seq_len, n_heldout)
    result = quantize_model(model, calibration, spec, config, device=device, checkpoint_dir=checkpoint_dir,
                            progress=progress)
    return QuantizedModel(model, model_dir, spec, config, result)
