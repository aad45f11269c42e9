"""The GPTQ/OBS column loop every second-order method shares (VPTQ's, next)."""

import torch

from lowbit_gguf.additive import objective
from lowbit_gguf.gptq import obs_quantize


def correlated_problem(d_out=16, d_in=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, d_in, generator=g) @ (torch.eye(d_in) + 0.5 * torch.randn(d_in, d_in, generator=g))
    return torch.randn(d_out, d_in, generator=g), x.T @ x / len(x)


def round_to_grid(step):
    return lambda column, j: torch.round(column / step) * step


def test_an_exact_quantizer_leaves_the_weight_as_it_is():
    w, h = correlated_problem()
    torch.testing.assert_close(obs_quantize(w, h, lambda column, j: column, block_size=8), w)


def test_feeding_the_errors_forward_beats_rounding_each_column_alone():
    w, h = correlated_problem()
    step = 0.5
    plain = round_to_grid(step)(w, None)
    for block_size in (1, 8, 128):  # the block split changes the arithmetic, not the result
        q = obs_quantize(w, h, round_to_grid(step), block_size=block_size)
        assert torch.all(torch.isclose(q / step, torch.round(q / step), atol=1e-4))  # on the grid
        assert objective(q - w, h) < 0.7 * objective(plain - w, h)


def test_columns_come_in_order_and_dead_inputs_are_zeroed():
    w, h = correlated_problem(d_in=12)
    h[3, :] = h[:, 3] = 0.0  # input 3 never fires
    seen = []

    def record(column, j):
        seen.append((j, column.clone()))
        return column

    q = obs_quantize(w, h, record, block_size=5)
    assert [j for j, _ in seen] == list(range(12))
    assert torch.all(seen[3][1] == 0) and torch.all(q[:, 3] == 0)
