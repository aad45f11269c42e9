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

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lowbit_gguf.errors import LowbitError, UnsupportedModel
from lowbit_gguf.files import save_torch
from lowbit_gguf.calibration import CalibrationSet
from lowbit_gguf.methods import MethodSpec, QuantizedLinear
from lowbit_gguf.training import BlockData, batch_kwargs


class _StopForward(Exception):
    pass


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a llama-family causal LM (model.model.layers)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModel(f"{type(model).__name__} has no model.layers: not a llama-family decoder")
    return layers


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def capture_block_inputs(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Hidden states entering block 0 ([n_seq, seq_len, d]) and the keyword arguments the model passes
    its blocks (rotary embeddings, attention mask, positions), caught by stopping at block 0."""
    captured = {}

    def hook(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = decoder_blocks(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(tokens, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    kwargs = captured["kwargs"]
    kwargs.pop("past_key_values", None)
    kwargs["use_cache"] = False
    return captured["hidden"], kwargs


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def _run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict, batch_size: int) -> torch.Tensor:
    outputs = torch.empty_like(hidden)
    n_seq = hidden.shape[0]
    for start in range(0, n_seq, batch_size):
        stop = min(start + batch_size, n_seq)
        out = block(hidden[start:stop], **batch_kwargs(kwargs, start, stop, n_seq))
        outputs[start:stop] = out[0] if isinstance(out, tuple) else out
    return outputs


@torch.no_grad()
def collect_input_statistics(block: nn.Module, hidden: torch.Tensor, kwargs: dict, batch_size: int,
                             statistic: str) -> dict[str, torch.Tensor]:
    """For the input X [n_tokens, d_in] of every linear layer of the block: "hessian": H = X^T X / n_tokens
    in float64; "absmax": max |X| per input channel."""
    if statistic not in ("hessian", "absmax"):
        raise ValueError(f"unknown input statistic {statistic!r}")
    linears = block_linears(block)
    if statistic == "hessian":
        stats = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=hidden.device)
                 for name, m in linears.items()}
    else:
        stats = {name: torch.zeros(m.in_features, device=hidden.device) for name, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def make_hook(name):
        def hook(module, args):
            x = args[0].reshape(-1, args[0].shape[-1])  # [n_tokens, d_in]
            if statistic == "hessian":
                stats[name].addmm_(x.T.double(), x.double())
            else:
                torch.maximum(stats[name], x.abs().amax(0).float(), out=stats[name])
            counts[name] += x.shape[0]
        return hook

    handles = [m.register_forward_pre_hook(make_hook(name)) for name, m in linears.items()]
    try:
        _run_block(block, hidden, kwargs, batch_size)
    finally:
        for h in handles:
            h.remove()
    if statistic == "hessian":
        return {name: stats[name] / counts[name] for name in linears}
    return stats


@dataclass
class QuantizationResult:
    method: str
    config: dict
    layers: dict[str, QuantizedLinear] = field(default_factory=dict)  # full module name -> result
    resumed_seconds: float = 0.0  # wall time of the blocks that earlier, interrupted runs finished

    def bits_per_weight(self) -> float:
        n = sum(r.decoded.numel() for r in self.layers.values())
        return sum(r.bits_per_weight * r.decoded.numel() for r in self.layers.values()) / n


class Checkpoint:
    """Per-block results and the latest activations, in a folder, tied to one run's settings."""

    def __init__(self, folder: Path, fingerprint: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "run.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            if saved != fingerprint:
                raise LowbitError(
                    f"checkpoint folder {self.folder} belongs to another run ({saved}); "
                    "pass another folder or delete it to start over"
                )
        else:
            meta.write_text(json.dumps(fingerprint, indent=2))

    def block_path(self, i: int) -> Path:
        return self.folder / f"block_{i:03d}.pt"

    def completed_blocks(self) -> int:
        """Blocks 0..n-1 are done when their results and the activations after block n-1 are saved."""
        n = 0
        while self.block_path(n).exists():
            n += 1
        hidden = self.folder / "hidden.pt"
        if n and (not hidden.exists() or torch.load(hidden, weights_only=True)["after_block"] != n - 1):
            n -= 1  # stopped between writing a block and its activations: redo that block
        return n

    def save_block(self, i: int, layers: dict[str, QuantizedLinear], hidden: torch.Tensor,
                   others: dict[str, torch.Tensor], float_hidden: torch.Tensor | None = None,
                   seconds: float = 0.0) -> None:
        saved = {name: {"payload": r.payload, "bpw": r.bits_per_weight} for name, r in layers.items()}
        save_torch({"linears": saved, "others": others, "seconds": seconds}, self.block_path(i),
                   f"the checkpoint of block {i}")
        save_torch({"after_block": i, "hidden": hidden.cpu(),
                    "float_hidden": None if float_hidden is None else float_hidden.cpu()},
                   self.folder / "hidden.pt", f"the checkpoint's activations after block {i}")

    def load_block(self, i: int) -> dict:
        return torch.load(self.block_path(i), weights_only=True)

    def load_hidden(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The activations after the last saved block: the quantized model's and the float model's."""
        saved = torch.load(self.folder / "hidden.pt", weights_only=True)
        return saved["hidden"], saved.get("float_hidden")


def as_calibration(calibration: CalibrationSet | torch.Tensor) -> CalibrationSet:
    """A bare [n, seq_len] token tensor is a calibration set without held-out windows."""
    if isinstance(calibration, CalibrationSet):
        return calibration
    return CalibrationSet(calibration, calibration[:0], ["tokens"] * len(calibration), [])


def _check_finite(name: str, tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).sum().item()
        raise LowbitError(f"{name}: {what} has {bad} NaN or infinite values; the model cannot be quantized")


def quantize_model(model: nn.Module, calibration: CalibrationSet | torch.Tensor, method: MethodSpec, config,
                   device: str = "cpu", batch_size: int = 8, checkpoint_dir: Path | None = None,
                   progress: bool = True) -> QuantizationResult:
    """Quantize every linear layer of every block in place (weights become the reference decode).
    The input statistics come from the calibration set's training windows; its held-out windows only judge
    block training (early stopping)."""
    blocks = decoder_blocks(model)
    calibration = as_calibration(calibration)
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
    kwargs = _to(kwargs, device)
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
        targets = _run_block(block, hidden, kwargs, batch_size) if method.finetune_block else None
        float_targets = _run_block(block, float_hidden, kwargs, batch_size) if float_hidden is not None else None
        block_results = {}
        for name, linear in linears.items():
            full = f"model.layers.{i}.{name}"
            _check_finite(full, linear.weight, "the weight")
            if statistics[name] is not None:
                _check_finite(full, statistics[name], "the calibration statistic")
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
        hidden = _run_block(block, hidden, kwargs, batch_size)
        float_hidden = float_targets
        blocks[i] = block.to("cpu")
        if checkpoint:
            checkpoint.save_block(i, block_results, hidden, other_parameters(block), float_hidden,
                                  time.time() - block_started)
        result.layers.update(block_results)
        bar.update(1)
    bar.close()
    return result


def other_parameters(block: nn.Module) -> dict[str, torch.Tensor]:
    """The block's parameters besides its linear weights (norms, biases): fine-tuning may change them."""
    linear_weights = {f"{name}.weight" for name in block_linears(block)}
    return {name: p.detach().cpu().clone() for name, p in block.named_parameters() if name not in linear_weights}


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
