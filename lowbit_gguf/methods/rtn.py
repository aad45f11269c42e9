"""Round-to-nearest baseline: asymmetric b-bit integers per group of g input weights of one output row.

It ignores the Hessian on purpose: it is the floor every Hessian-aware method must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit_gguf.methods import MethodSpec, QuantizedLinear, match_compact, register


@dataclass(frozen=True)
class RTNConfig:
    bits: int = 4
    group_size: int = 32

    def __post_init__(self):
        if not 1 <= self.bits <= 8:
            raise ValueError(f"RTN bits must be 1..8, got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"RTN group size must be positive, got {self.group_size}")

    @classmethod
    def parse(cls, text: str) -> RTNConfig:
        """'w4g32': 4-bit codes in groups of 32 input weights."""
        m = match_compact(text, r"w(\d+)g(\d+)", "RTN", "w<bits>g<group>, e.g. w4g32")
        return cls(bits=int(m.group(1)), group_size=int(m.group(2)))

    @property
    def name(self) -> str:
        return f"w{self.bits}g{self.group_size}"


def quantize(weight: torch.Tensor, hessian: torch.Tensor | None, config: RTNConfig) -> QuantizedLinear:
    d_out, d_in = weight.shape
    g = config.group_size
    if d_in % g:
        raise ValueError(f"input size {d_in} is not a multiple of the group size {g}")
    w = weight.detach().float().reshape(d_out, d_in // g, g)  # [d_out, n_groups, g]
    lo = w.amin(dim=-1, keepdim=True)
    hi = w.amax(dim=-1, keepdim=True)
    levels = 2**config.bits - 1
    scale = ((hi - lo) / levels).clamp_min(1e-12)  # a constant group gets codes 0 and decodes to lo
    codes = torch.round((w - lo) / scale).clamp_(0, levels).to(torch.uint8)
    payload = {"codes": codes.reshape(d_out, d_in), "scale": scale[..., 0].half(), "min": lo[..., 0].half()}
    # scales and minimums are stored in f16, so the decode uses the rounded values
    decoded = decode(payload, config)
    bpw = config.bits + 2 * 16 / g
    return QuantizedLinear(payload=payload, decoded=decoded, bits_per_weight=bpw)


def decode(payload: dict[str, torch.Tensor], config: RTNConfig) -> torch.Tensor:
    codes = payload["codes"]  # [d_out, d_in] uint8
    d_out, d_in = codes.shape
    g = config.group_size
    scale = payload["scale"].float()[..., None]  # [d_out, n_groups, 1]
    lo = payload["min"].float()[..., None]
    return (codes.reshape(d_out, d_in // g, g).float() * scale + lo).reshape(d_out, d_in)


register(MethodSpec("rtn", RTNConfig, quantize, decode, "round-to-nearest baseline (w<bits>g<group>)",
                   input_statistic=None, bench_configs=("w4g32", "w3g32", "w2g32")))
