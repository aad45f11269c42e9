"""The sequential driver every method shares.

For each transformer block in turn: run the calibration activations through it while hooks accumulate the
statistic the method asks of every linear layer's inputs (H = X^T X in float64, or max |x| per channel),
quantize each linear with the method, put its reference decode in place of the weight, optionally let the
method fine-tune the block against its float outputs, and run the block again so its quantized outputs feed
the next block.
Only one block is on the compute device at a time, and only one block's activations are held, so memory
does not grow with depth. After every block the payloads and the activations are checkpointed, so an
interrupted run resumes at the next block instead of starting over.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lowbit_gguf.blocks import (Checkpoint, batch_kwargs, block_linears, capture_block_inputs,
                                collect_input_statistics, decoder_blocks, other_parameters, run_block, to_device)
from lowbit_gguf.calibration import CalibrationSet, as_calibration
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.gguf.write import file_row_order
from lowbit_gguf.methods import MethodSpec, QuantizedLinear, StageContext
from lowbit_gguf.training import BlockData


@dataclass
class QuantizationResult:
    method: str
    config: dict
    layers: dict[str, QuantizedLinear] = field(default_factory=dict)  # full module name -> result
    resumed_seconds: float = 0.0  # wall time of the blocks that earlier, interrupted runs finished

    def bits_per_weight(self) -> float:
        n = sum(r.decoded.numel() for r in self.layers.values())
        return sum(r.bits_per_weight * r.decoded.numel() for r in self.layers.values()) / n


def _check_finite(name: str, tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise LowbitError(f"{name}: {what} has {bad} NaN or infinite values; the model cannot be quantized")


def stage_context(method: MethodSpec, config, *, device: str = "cpu", batch_size: int = 8,
                  checkpoint_dir: Path | None = None, progress: bool = True) -> StageContext:
    """What quantize_model hands the method's preprocess stage: its folder (checkpoint_dir / "preprocess") and a
    quantization pass with the same method and config, the preprocess skipped."""
    def quantize_pass(model: nn.Module, calibration, folder: Path | None):
        return quantize_model(model, calibration, replace(method, preprocess=None), config, device=device,
                              batch_size=batch_size, checkpoint_dir=folder, progress=progress)

    folder = None if checkpoint_dir is None else Path(checkpoint_dir) / "preprocess"
    return StageContext(device, progress, folder, quantize_pass)


def quantize_model(model: nn.Module, calibration: CalibrationSet | torch.Tensor, method: MethodSpec, config,
                   device: str = "cpu", batch_size: int = 8, checkpoint_dir: Path | None = None,
                   progress: bool = True) -> QuantizationResult:
    """Quantize every linear layer of every block in place (weights become the reference decode), after the
    method's preprocess stage if it has one. The input statistics come from the calibration set's training
    windows; its held-out windows only judge block training (early stopping). With checkpoint_dir every stage
    saves its progress there and an interrupted run resumes."""
    blocks = decoder_blocks(model)
    calibration = as_calibration(calibration)
    if method.preprocess is not None:
        method.preprocess(model, calibration, config, stage_context(method, config, device=device,
                                                                    batch_size=batch_size,
                                                                    checkpoint_dir=checkpoint_dir, progress=progress))
    calib_tokens, n_train = calibration.tokens, calibration.n_train
    config_dict = asdict(config)
    result = QuantizationResult(method.name, config_dict)
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = Checkpoint(checkpoint_dir, {"method": method.name, "config": config_dict,
                                                 "calibration": calibration.fingerprint(),
                                                 "blocks": len(blocks)})
    done = checkpoint.completed_blocks() if checkpoint else 0

    hidden, kwargs = capture_block_inputs(model, calib_tokens)
    kwargs = to_device(kwargs, device)
    # The float model's own activations, for methods that train towards them.
    float_hidden = hidden.clone() if method.wants_float_targets else None
    if done:
        for i in range(done):
            _restore_block(blocks[i], f"model.layers.{i}", checkpoint.load_block(i), method, config, result)
        hidden, float_hidden = checkpoint.load_hidden()
    hidden = hidden.to(device)
    float_hidden = float_hidden.to(device) if float_hidden is not None else None

    bar = tqdm(total=len(blocks), initial=done, desc=f"quantizing ({method.name})", unit="block",
               disable=not progress)
    for i in range(done, len(blocks)):
        block_started = time.time()
        block = blocks[i].to(device)
        linears = block_linears(block)
        statistics = (collect_input_statistics(block, hidden[:n_train], batch_kwargs(kwargs, 0, n_train, len(hidden)),
                                               batch_size, method.input_statistic)
                      if method.input_statistic else dict.fromkeys(linears))
        targets = run_block(block, hidden, kwargs, batch_size) if method.finetune_block else None
        float_targets = run_block(block, float_hidden, kwargs, batch_size) if float_hidden is not None else None
        block_results = {}
        for name, linear in linears.items():
            full = f"model.layers.{i}.{name}"
            _check_finite(full, linear.weight, "the weight")
            if statistics[name] is not None:
                _check_finite(full, statistics[name], "the calibration statistic")
            if method.groups_rows:  # vectors of rows that stay consecutive in the file
                order = file_row_order(getattr(model, "config", None), full, linear.weight.shape[0])
                q = method.quantize(linear.weight.data, statistics[name], config, row_order=order)
            else:
                q = method.quantize(linear.weight.data, statistics[name], config)
            _check_finite(full, q.decoded, "the quantized decode")
            linear.weight.data.copy_(q.decoded.to(linear.weight.dtype))
            block_results[full] = q
        if method.finetune_block:
            local = {name: block_results[f"model.layers.{i}.{name}"] for name in linears}
            method.finetune_block(block, local, BlockData(hidden, targets, kwargs, n_train, float_targets), config)
            for name, linear in linears.items():
                linear.weight.data.copy_(local[name].decoded.to(linear.weight.dtype))
            del targets
        block_results = {name: q.cpu() for name, q in block_results.items()}
        hidden = run_block(block, hidden, kwargs, batch_size)
        float_hidden = float_targets
        blocks[i] = block.to("cpu")
        if checkpoint:
            checkpoint.save_block(i, block_results, hidden, other_parameters(block), float_hidden,
                                  time.time() - block_started)
        result.layers.update(block_results)
        bar.update(1)
    bar.close()
    return result


def _restore_block(block: nn.Module, prefix: str, saved: dict, method: MethodSpec, config,
                   result: QuantizationResult) -> None:
    params = dict(block.named_parameters())
    for name, value in saved["others"].items():
        params[name].data.copy_(value)
    result.resumed_seconds += saved.get("seconds", 0.0)
    for name, linear in block_linears(block).items():
        entry = saved["linears"][f"{prefix}.{name}"]
        decoded = method.decode(entry["payload"], config)
        linear.weight.data.copy_(decoded.to(linear.weight.dtype))
        result.layers[f"{prefix}.{name}"] = QuantizedLinear(entry["payload"], decoded, entry["bpw"])
