"""The registry of quantization methods. Each method lives in its own module and registers a MethodSpec.

A method is a config dataclass and the callables below (typed Protocols): `quantize` and `decode` always, the
others where the method has such a stage. The sequential driver (lowbit_gguf.sequential) calls quantize layer
by layer; GGUF packing and the C kernels consume the payload, and the tests hold decode as the ground truth for
both. The registry is keyed by config type too, so `lowbit_gguf.quantize(model, AQLMConfig())` names the
method once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lowbit_gguf.errors import LowbitError


@dataclass
class QuantizedLinear:
    payload: dict[str, torch.Tensor]  # what a GGUF writer packs (codes, codebooks, scales, ...)
    decoded: torch.Tensor  # [d_out, d_in] float32, equal to decode(payload, config)
    bits_per_weight: float  # everything the payload stores, per weight

    def cpu(self) -> "QuantizedLinear":
        """The same result in host memory, where checkpoints and the GGUF writer read it."""
        return QuantizedLinear({k: v.cpu() for k, v in self.payload.items()}, self.decoded.cpu(), self.bits_per_weight)


class Quantize(Protocol):
    def __call__(self, weight: torch.Tensor, statistic: torch.Tensor | None, config: Any) -> QuantizedLinear:
        """One linear weight [d_out, d_in] quantized. statistic is what MethodSpec.input_statistic asks of the
        layer's calibration inputs X [n, d_in]: "hessian": H = X^T X / n [d_in, d_in]; "absmax": max |X| per
        input channel [d_in]; None: nothing."""


class Decode(Protocol):
    def __call__(self, payload: dict[str, torch.Tensor], config: Any) -> torch.Tensor:
        """The exact float reference decode [d_out, d_in] of a payload."""


class FinetuneBlock(Protocol):
    def __call__(self, block: nn.Module, results: dict[str, QuantizedLinear], data: Any, config: Any) -> None:
        """After a block's linears are quantized: tune the block against its float outputs, updating the results
        (payload and decoded, by module name in the block) and the block's other parameters in place. data is a
        lowbit_gguf.training.BlockData: its targets are the float block on the (quantized) inputs, its
        float_targets the float block on the float model's own activations (only when wants_float_targets), its
        held-out rows judge early stopping."""


@dataclass(frozen=True)
class StageContext:
    """What the driver hands a method's preprocess stage: where to compute, whether to show progress, where to
    keep its progress (None: nowhere), and the driver itself, for stages that quantize a copy of the model."""

    device: str
    progress: bool
    checkpoint_dir: Path | None
    # quantize_model(model, calibration, checkpoint_dir) with this method and config, the preprocess skipped
    quantize_model: Callable[[nn.Module, Any, Path | None], Any]


class Preprocess(Protocol):
    def __call__(self, model: nn.Module, calibration: Any, config: Any, context: StageContext) -> None:
        """A stage that changes the float model's weights in place before the driver quantizes it; it keeps its
        progress in context.checkpoint_dir so an interrupted run resumes it. calibration: a CalibrationSet."""


class Pack(Protocol):
    def __call__(self, payload: dict[str, torch.Tensor], config: Any) -> Any:
        """payload -> PackedWeight (lowbit_gguf.gguf.write): the weight in the method's GGUF tensor type."""


class Unpack(Protocol):
    def __call__(self, weight: Any, config: Any) -> dict[str, torch.Tensor]:
        """PackedWeight -> payload: the inverse of pack, for tools that start from a GGUF (lowbit_gguf.finetune)."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_type: type
    quantize: Quantize
    decode: Decode
    description: str
    input_statistic: str | None = "hessian"  # "hessian", "absmax" or None (see Quantize)
    bench_configs: tuple[str, ...] = ()  # the configs `lowbit-gguf bench-suite` compares
    finetune_block: FinetuneBlock | None = None
    wants_float_targets: bool = False
    preprocess: Preprocess | None = None
    pack: Pack | None = None  # None: the GGUF carries the reference decode in F16
    unpack: Unpack | None = None
    finetune_keys: tuple[str, ...] = ()  # payload parts end-to-end fine-tuning may train, codes fixed
    listed: bool = True  # False: for the tests only, not offered to users
    # quantize takes row_order= (the order the GGUF will hold the weight's rows in, None: as they are), for
    # methods whose vectors span rows (VPTQ)
    groups_rows: bool = False
    # config fields each preset of lowbit_gguf.settings.PRESETS sets (text, as --set takes them); absent: none
    presets: dict[str, dict[str, str]] = field(default_factory=dict)

    def parse_config(self, text, overrides: dict[str, str] | None = None, preset: str = "default"):
        """A config from its compact text ('2x8'), None (the defaults), or a config object as is; preset sets its
        fields first, then overrides sets fields by name from text ({"beam_size": "8"}), converted to each
        field's type."""
        from lowbit_gguf.settings import PRESETS

        if preset not in PRESETS:
            raise LowbitError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        config = text if isinstance(text, self.config_type) else (
            self.config_type.parse(text) if text else self.config_type())
        fields_set = {**self.presets.get(preset, {}), **(overrides or {})}
        return with_fields(config, fields_set) if fields_set else config


def match_compact(text: str, pattern: str, method: str, form: str) -> re.Match:
    """A config's compact text ('2x8', 's20+lora16') matched against its pattern, or a ValueError naming the
    form it must have."""
    m = re.fullmatch(pattern, text.strip().lower())
    if not m:
        raise ValueError(f"{method} config {text!r} is not of the form {form}")
    return m


def with_fields(config, overrides: dict[str, str]):
    """config with the named fields set from text, each converted to the type of the field's default."""
    from dataclasses import replace

    known = {f.name: f for f in fields(config)}
    values = {}
    for key, text in overrides.items():
        if key not in known:
            raise LowbitError(f"{type(config).__name__} has no field {key!r}; it has {', '.join(known)}")
        current = getattr(config, key)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                values[key] = text.lower() in ("true", "1")
            elif current is None:
                values[key] = text
            else:
                values[key] = type(current)(text)
        except ValueError:
            raise LowbitError(f"{key}={text!r}: not a {type(current).__name__}") from None
    try:
        return replace(config, **values)
    except ValueError as exc:  # the config's own checks (__post_init__)
        raise LowbitError(str(exc)) from exc


METHODS: dict[str, MethodSpec] = {}
BY_CONFIG: dict[type, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS or spec.config_type in BY_CONFIG:
        raise ValueError(f"method {spec.name!r} or its config {spec.config_type.__name__} is registered twice")
    METHODS[spec.name] = spec
    BY_CONFIG[spec.config_type] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    if name not in METHODS:
        raise LowbitError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return METHODS[name]


def method_for_config(config) -> MethodSpec:
    """The method a config object belongs to."""
    _load_builtin_methods()
    if type(config) not in BY_CONFIG:
        raise LowbitError(f"{type(config).__name__} is not a method config; use one of "
                          f"{', '.join(s.config_type.__name__ for s in METHODS.values() if s.listed)}")
    return BY_CONFIG[type(config)]


def available_methods() -> list[str]:
    """The methods offered to users (the test-only ones left out)."""
    _load_builtin_methods()
    return sorted(name for name, spec in METHODS.items() if spec.listed)


def _load_builtin_methods() -> None:
    from lowbit_gguf.methods import aqlm, identity, ptq161, rtn, vptq  # noqa: F401  (registration happens on import)
