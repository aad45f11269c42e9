"""Calibration and evaluation text as token ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lowbit_gguf.assets import TEXT_SPLITS, default_text
from lowbit_gguf.errors import LowbitError


def load_text(spec: str) -> str:
    """'calibration' or 'evaluation' (the default texts), or the path of a UTF-8 text file."""
    if spec in TEXT_SPLITS:
        return default_text(spec)
    path = Path(spec)
    if not path.is_file():
        raise LowbitError(f"text {spec!r} is neither {' nor '.join(TEXT_SPLITS)} nor a readable file")
    return path.read_text(encoding="utf-8")


def calibration_tokens(tokens: np.ndarray, n_samples: int, seq_len: int) -> torch.Tensor:
    """The first n_samples consecutive windows of seq_len tokens: [n_samples, seq_len] int64."""
    needed = n_samples * seq_len
    if len(tokens) < needed:
        raise LowbitError(f"calibration text has {len(tokens)} tokens; {n_samples} x {seq_len} need {needed}")
    return torch.from_numpy(np.asarray(tokens[:needed], dtype=np.int64).reshape(n_samples, seq_len))
