"""The GPTQ/OBS column loop (Frantar et al., 2022; the loop of VPTQ's `VPTQ.vptq` and of GPTQ's `fasterquant`):
columns are quantized in order, each by a method's quantizer, and each column's error, scaled by the inverse
Hessian, is fed to the columns not yet quantized, so they absorb it. Blocks of `block_size` columns keep the
updates in a small matrix; the rest of the weight is updated once per block.

The quantizer sees one column at a time (its d_out weights and its index), which is what vector quantizers along
the output dimension need (VPTQ: v consecutive rows of one column form a vector, and H^-1_jj is constant within a
column). Act-order permutations are the caller's: permute the weight's columns and the Hessian alike first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of H^-1, dead columns) for H [d_in, d_in]: dead columns (H_jj = 0, inputs that never
    fire) get H_jj = 1, and damp times the mean diagonal is added, as the references do."""
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True), dead


def obs_quantize(weight: torch.Tensor, hessian: torch.Tensor,
                 quantize_column: Callable[[torch.Tensor, int], torch.Tensor], *, block_size: int = 128,
                 damp: float = 0.01) -> torch.Tensor:
    """Q [d_out, d_in]: weight's columns quantized in order by quantize_column(column [d_out], index) -> its
    quantized values [d_out], each column's error propagated to the later ones through H^-1. Dead columns are
    zeroed before they are quantized."""
    w = weight.detach().double().clone()
    d_in = w.shape[1]
    factor, dead = inverse_hessian_factor(hessian, damp)
    w[:, dead] = 0.0
    q = torch.zeros_like(w)
    for start in range(0, d_in, block_size):
        stop = min(start + block_size, d_in)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        f = factor[start:stop, start:stop]
        for i in range(stop - start):
            column = block[:, i]
            quantized = quantize_column(column.to(weight.dtype), start + i).double()
            q[:, start + i] = quantized
            error = (column - quantized) / f[i, i]
            block[:, i:] -= error[:, None] * f[i, i:][None, :]
            errors[:, i] = error
        w[:, stop:] -= errors @ factor[start:stop, stop:]
    return q.to(weight.dtype)
