"""The training loops every method shares: block training against the float block, and early stopping.

A block is trained on the calibration set's training windows and judged after every epoch on its held-out
windows (lowbit_gguf.calibration); the state with the lowest held-out loss is kept, and training stops once
`patience` epochs in a row fail to improve it. Without held-out windows every epoch runs and the last state is
kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit_gguf.blocks import batch_kwargs


@dataclass
class BlockData:
    """What one block is trained on. Rows [0, n_train) are training windows, the rest held-out ones."""

    inputs: torch.Tensor  # [n_seq, seq_len, d]: the quantized model's activations entering the block
    targets: torch.Tensor  # [n_seq, seq_len, d]: the float block applied to inputs
    kwargs: dict  # the model's keyword arguments for its blocks, for n_seq sequences
    n_train: int
    float_targets: torch.Tensor | None = None  # the float block on the float model's own activations

    @property
    def n_seq(self) -> int:
        return self.inputs.shape[0]


@dataclass
class EarlyStopping:
    """Keeps the best state seen by a held-out loss and says when to stop (patience evaluations without
    improvement). Tensors are snapshotted by value."""

    params: list[torch.Tensor]
    patience: int = 1
    best_loss: float = float("inf")
    best_state: list[torch.Tensor] | None = None
    since_best: int = 0
    best_step: int = 0  # the step (epoch, optimizer step) update was given with the best state
    history: list[float] = field(default_factory=list)

    def update(self, loss: float, step: int = 0) -> bool:
        """Record a held-out loss of the current state (reached at `step`); True when training should stop."""
        self.history.append(loss)
        if loss < self.best_loss:
            self.best_loss, self.since_best, self.best_step = loss, 0, step
            self.best_state = [p.detach().clone() for p in self.params]
        else:
            self.since_best += 1
        return self.since_best >= self.patience

    def state_dict(self) -> dict:
        """What a checkpoint keeps to resume: everything but the live parameters (best state in host memory)."""
        return {"history": self.history, "best_loss": self.best_loss, "since_best": self.since_best,
                "best_step": self.best_step,
                "best_state": None if self.best_state is None else [t.cpu() for t in self.best_state]}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_loss, self.since_best = state["history"], state["best_loss"], state["since_best"]
        self.best_step, self.best_state = state["best_step"], state["best_state"]

    def restore_best(self) -> None:
        if self.best_state is not None:
            with torch.no_grad():
                for p, best in zip(self.params, self.best_state):
                    p.copy_(best)


def mean_over_batches(loss_of_rows: Callable[[int, int], float], start: int, stop: int, batch: int) -> float:
    """The mean over rows [start, stop) of loss_of_rows(begin, end), a mean over its rows, batch rows at a time."""
    total = 0.0
    for begin in range(start, stop, batch):
        end = min(begin + batch, stop)
        total += loss_of_rows(begin, end) * (end - begin)
    return total / (stop - start)


def train_block(block: nn.Module, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                weights: Callable[[], dict[str, torch.Tensor]],
                loss_fn: Callable[[torch.Tensor, slice], torch.Tensor], data: BlockData, *, epochs: int,
                batch: int, seed: int, patience: int = 1) -> EarlyStopping:
    """Train `params` (read through weights(), the block's linear weights by parameter name) for up to `epochs`
    passes of shuffled mini-batches over data's training rows; loss_fn(block output, rows) is the loss of
    those rows. Returns the early-stopping record; the parameters end at the best held-out state."""
    from torch.func import functional_call

    def forward(start: int, stop: int) -> torch.Tensor:
        out = functional_call(block, weights(), (data.inputs[start:stop],),
                              batch_kwargs(data.kwargs, start, stop, data.n_seq))
        return out[0] if isinstance(out, tuple) else out

    def heldout_loss() -> float:
        with torch.no_grad():
            return mean_over_batches(lambda start, stop: loss_fn(forward(start, stop), slice(start, stop)).item(),
                                     data.n_train, data.n_seq, batch)

    stopping = EarlyStopping(params, patience)
    has_heldout = data.n_seq > data.n_train
    if has_heldout:
        stopping.update(heldout_loss())
    gen = torch.Generator().manual_seed(seed)
    starts = list(range(0, data.n_train, batch))
    with torch.enable_grad():
        for epoch in range(epochs):
            for k in torch.randperm(len(starts), generator=gen, device=gen.device).tolist():
                start, stop = starts[k], min(starts[k] + batch, data.n_train)
                loss = loss_fn(forward(start, stop), slice(start, stop))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if has_heldout and stopping.update(heldout_loss(), epoch + 1):
                break
    if has_heldout:
        stopping.restore_best()
    return stopping


def finetune_payloads(block: nn.Module, results: dict, data: BlockData, keys: tuple[str, ...],
                      decode: Callable[[dict[str, torch.Tensor]], torch.Tensor], *, epochs: int, lr: float,
                      batch: int, patience: int, seed: int) -> None:
    """Block fine-tuning of the codebook-style methods: Adam on the payload parts `keys` of every linear (results:
    {module name in the block: QuantizedLinear}; stored in f16, trained in f32) and on the block's norms, the
    indices fixed, minimising the relative MSE between the block's outputs and the float block's (data.targets),
    stopped early on the held-out windows. The results' payloads (back in f16) and decodes are updated in place."""
    if epochs <= 0:
        return
    trainable = {name: {k: r.payload[k].float().requires_grad_(True) for k in keys} for name, r in results.items()}
    norms = [p for name, p in block.named_parameters() if "norm" in name]
    was_trainable = [p.requires_grad for p in norms]
    for p in norms:
        p.requires_grad_(True)
    params = [t for entry in trainable.values() for t in entry.values()] + norms
    opt = torch.optim.Adam(params, lr=lr)
    scale = data.targets[:data.n_train].pow(2).mean()

    def weights():
        return {f"{name}.weight": decode({**results[name].payload, **t}) for name, t in trainable.items()}

    def loss(out, rows):
        return (out - data.targets[rows]).pow(2).mean() / scale

    train_block(block, params, opt, weights, loss, data, epochs=epochs, batch=batch, seed=seed, patience=patience)
    for p, flag in zip(norms, was_trainable):
        p.requires_grad_(flag)
    for name, t in trainable.items():
        payload = results[name].payload
        payload.update({k: v.detach().half() for k, v in t.items()})
        results[name].decoded = decode(payload)
