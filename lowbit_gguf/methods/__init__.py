"""The registry of quantization methods. Each method lives in its own module and registers itself.

A method is two functions around one config dataclass:
  quantize(weight [d_out, d_in], statistic, config) -> QuantizedLinear
    statistic: what MethodSpec.input_statistic asks of the layer's calibration inputs X [n, d_in]:
    "hessian": H = X^T X / n [d_in, d_in]; "absmax": max |X| per input channel [d_in]; None: nothing
  decode(payload, config) -> the exact float reference decode [d_out, d_in]
The sequential driver (lowbit_gguf.sequential) calls quantize layer by layer; GGUF packing and the C
kernels consume the payload, and the tests hold decode as the ground truth for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lowbit_gguf.errors import LowbitError


@dataclass
class QuantizedLinear:
    payload: dict[str, torch.Tensor]  # what a GGUF writer packs (codes, codebooks, scales, ...)
    decoded: torch.Tensor  # [d_out, d_in] float32, equal to decode(payload, config)
    bits_per_weight: float  # everything the payload stores, per weight

    def cpu(self) -> "QuantizedLinear":
        """The same result in host memory, where checkpoints and the GGUF writer read it."""
        return QuantizedLinear({k: v.cpu() for k, v in self.payload.items()}, self.decoded.cpu(), self.bits_per_weight)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_type: type
    quantize: Callable[[torch.Tensor, torch.Tensor, object], QuantizedLinear]
    decode: Callable[[dict[str, torch.Tensor], object], torch.Tensor]
    description: str
    input_statistic: str | None = "hessian"  # "hessian", "absmax" or None (see above)
    bench_configs: tuple[str, ...] = ()  # the configs `lowbit-gguf bench-suite` compares
    # After a block's linears are quantized: tune the block against its float outputs, updating the
    # results (payload and decoded) and the block's other parameters in place.
    # finetune_block(block, results by module name in the block, lowbit_gguf.training.BlockData, config):
    #   the data's targets are the float block on the (quantized) inputs; its float_targets the float block on the
    #   float model's own activations, tracked only when wants_float_targets; its held-out rows judge early stopping.
    finetune_block: Callable | None = None
    wants_float_targets: bool = False
    # preprocess(model, CalibrationSet, config, device, progress, checkpoint_dir): an optional stage that changes
    # the float model's weights in place before the sequential driver quantizes it (None: no such stage); it keeps
    # its progress in checkpoint_dir (None: nowhere) so an interrupted run resumes it.
    preprocess: Callable | None = None
    # payload -> PackedWeight (lowbit_gguf.gguf.write): the weight in the method's GGUF tensor type.
    # None: the GGUF carries the reference decode in F16.
    pack: Callable | None = None
    # PackedWeight -> payload: the inverse of pack, for tools that start from a GGUF (lowbit_gguf.finetune).
    unpack: Callable | None = None
    # payload parts that end-to-end fine-tuning may train, codes fixed (empty: the method has none)
    finetune_keys: tuple[str, ...] = ()

    def parse_config(self, text):
        """A config from its compact text ('2x8'), None (the defaults), or a config object as is."""
        if isinstance(text, self.config_type):
            return text
        return self.config_type.parse(text) if text else self.config_type()


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    if name not in METHODS:
        raise LowbitError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def available_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(METHODS)


def _load_builtin_methods() -> None:
    from lowbit_gguf.methods import aqlm, identity, ptq161, rtn  # noqa: F401  (registration happens on import)
