"""What every method and stage reads of a model and its blocks: the decoder blocks of a llama-family model, a
block's linear layers, the activations entering block 0, a block run over mini-batches, and the statistics of
each linear layer's inputs; and the checkpoint folder an interrupted run resumes from."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lowbit_gguf.errors import LowbitError, UnsupportedModel
from lowbit_gguf.files import save_torch


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


def to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict, batch_size: int) -> torch.Tensor:
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
        run_block(block, hidden, kwargs, batch_size)
    finally:
        for h in handles:
            h.remove()
    if statistic == "hessian":
        return {name: stats[name] / counts[name] for name in linears}
    return stats


def batch_kwargs(kwargs: dict, start: int, stop: int, n_seq: int) -> dict:
    """Slice per-sequence tensors (batch dim == n_seq) to one mini-batch; shared ones pass as they are."""

    def cut(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n_seq and n_seq > 1:
            return v[start:stop]
        if isinstance(v, tuple):
            return tuple(cut(x) for x in v)
        return v

    return {k: cut(v) for k, v in kwargs.items()}


def other_parameters(block: nn.Module) -> dict[str, torch.Tensor]:
    """The block's parameters besides its linear weights (norms, biases): fine-tuning may change them."""
    linear_weights = {f"{name}.weight" for name in block_linears(block)}
    return {name: p.detach().cpu().clone() for name, p in block.named_parameters() if name not in linear_weights}


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

    def save_block(self, i: int, layers: dict, hidden: torch.Tensor,
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
