"""The shared block-training loop: held-out early stopping keeps the best state and stops."""

import torch
from torch import nn

from lowbit_gguf.training import BlockData, EarlyStopping, train_block


def linear_problem(heldout_agrees: bool, n_train=16, n_heldout=8):
    """A one-layer 'block' whose training windows want weight A; held-out windows want A too, or -A."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen)
    x = torch.randn(n_train + n_heldout, 4, 6, generator=gen)
    want = torch.cat([x[:n_train] @ a.T, x[n_train:] @ (a if heldout_agrees else -a).T])
    block = nn.Linear(6, 6, bias=False)
    weight = torch.zeros(6, 6, requires_grad=True)
    data = BlockData(x, want, {}, n_train)
    return block, weight, data


def run(block, weight, data, epochs=20, patience=2):
    opt = torch.optim.Adam([weight], lr=0.05)
    return train_block(block, [weight], opt, lambda: {"weight": weight},
                       lambda out, rows: (out - data.targets[rows]).pow(2).mean(), data, epochs=epochs, batch=4,
                       seed=0, patience=patience)


def test_training_stops_when_the_held_out_loss_stops_improving_and_keeps_the_best_state():
    block, weight, data = linear_problem(heldout_agrees=False)
    stopping = run(block, weight, data)
    # moving towards A moves away from -A: the state before training is the best held-out state
    assert stopping.history[1] > stopping.history[0] and len(stopping.history) == 1 + 2  # patience 2
    assert torch.equal(weight, torch.zeros(6, 6))


def test_training_runs_while_the_held_out_loss_improves():
    block, weight, data = linear_problem(heldout_agrees=True)
    stopping = run(block, weight, data, epochs=5)
    assert len(stopping.history) == 6 and stopping.history == sorted(stopping.history, reverse=True)
    assert stopping.best_loss == stopping.history[-1] < 0.5 * stopping.history[0]


def test_without_held_out_windows_every_epoch_runs_and_the_last_state_stays():
    block, weight, data = linear_problem(heldout_agrees=False, n_heldout=0)
    stopping = run(block, weight, data, epochs=3)
    assert stopping.history == [] and not torch.equal(weight, torch.zeros(6, 6))


def test_early_stopping_snapshots_by_value():
    p = torch.ones(3)
    stopping = EarlyStopping([p], patience=1)
    assert not stopping.update(1.0)
    p.add_(5)
    assert stopping.update(2.0)  # worse: stop
    stopping.restore_best()
    assert torch.equal(p, torch.ones(3))
