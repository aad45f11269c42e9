"""The identity method: keeps every weight as it is. It tests the sequential driver with no error added."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit_gguf.methods import MethodSpec, QuantizedLinear, register


@dataclass(frozen=True)
class IdentityConfig:
    @classmethod
    def parse(cls, text: str) -> IdentityConfig:
        raise ValueError("the identity method takes no config")


def quantize(weight: torch.Tensor, hessian: torch.Tensor, config: IdentityConfig) -> QuantizedLinear:
    w = weight.detach().float().clone()
    return QuantizedLinear(payload={"weight": w}, decoded=w, bits_per_weight=32.0)


def decode(payload: dict[str, torch.Tensor], config: IdentityConfig) -> torch.Tensor:
    return payload["weight"]


register(MethodSpec("identity", IdentityConfig, quantize, decode, "no quantization (tests the driver)", listed=False))
