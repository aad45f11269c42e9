"""Calibration sequences drawn from several texts, with a held-out slice for early stopping.

Each text's token stream is cut in two: the first (1 - HELDOUT_FRACTION) gives training windows, the rest
held-out windows, so no held-out token is ever trained on. Windows are assigned to the texts in turn (window i
from text i mod n_texts), so every text contributes equally whatever its length, and each text's windows sit
at seeded random, non-overlapping places across its whole stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit_gguf.cache import cache_root
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.settings import DEFAULT_CALIBRATION, DEFAULT_HELDOUT, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from lowbit_gguf.files import partial_output
from lowbit_gguf.texts import CALIBRATION_TEXTS, TEXTS, text

HELDOUT_FRACTION = 0.1


@dataclass
class CalibrationSet:
    train: torch.Tensor  # [n_samples, seq_len] int64
    heldout: torch.Tensor  # [n_heldout, seq_len] int64, for early stopping only
    train_sources: list[str]  # the text each training window came from
    heldout_sources: list[str]

    @property
    def tokens(self) -> torch.Tensor:
        """Training then held-out windows: [n_samples + n_heldout, seq_len]."""
        return torch.cat([self.train, self.heldout])

    @property
    def n_train(self) -> int:
        return self.train.shape[0]

    def fingerprint(self) -> str:
        """Short hash of every window: a checkpoint only resumes the run that made it."""
        return hashlib.sha256(self.tokens.cpu().numpy().tobytes()).hexdigest()[:16]


def load_text(spec: str) -> str:
    """A default text by name (lowbit_gguf.texts: 'evaluation', 'evaluation-manual', or one calibration
    domain; 'calibration' is all four domains joined) or the path of a UTF-8 text file."""
    if spec == DEFAULT_CALIBRATION:
        return "\n".join(text(t.name) for t in CALIBRATION_TEXTS)
    if spec in TEXTS:
        return text(spec)
    path = Path(spec)
    if not path.is_file():
        raise LowbitError(f"text {spec!r} is neither a default text ({', '.join([DEFAULT_CALIBRATION, *TEXTS])}) "
                          "nor a readable file")
    return path.read_text(encoding="utf-8")


def calibration_sources(specs: str | Sequence[str]) -> dict[str, str]:
    """{source name: text} for the texts a calibration set is drawn from: 'calibration' (the default
    domains), default text names, or files."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise LowbitError("calibration needs at least one text")
    sources = {}
    for spec in specs:
        if spec == DEFAULT_CALIBRATION:
            sources.update({t.name: text(t.name) for t in CALIBRATION_TEXTS})
        else:
            sources[spec] = load_text(spec)
    return sources


def draw_windows(streams: dict[str, np.ndarray], n_samples: int, n_heldout: int, seq_len: int,
                 seed: int = 0) -> CalibrationSet:
    """n_samples training and n_heldout held-out windows of seq_len tokens from token streams by source."""
    if n_samples < 1 or n_heldout < 0 or seq_len < 2:
        raise LowbitError(f"calibration needs samples >= 1, held-out >= 0 and seq_len >= 2 "
                          f"(got {n_samples}, {n_heldout}, {seq_len})")
    names = list(streams)
    windows = {"train": {}, "heldout": {}}  # part -> source -> its windows, in stream order
    for d, name in enumerate(names):
        tokens = np.asarray(streams[name], dtype=np.int64)
        cut = int(len(tokens) * (1 - HELDOUT_FRACTION)) if n_heldout else len(tokens)
        rng = np.random.default_rng([seed, d])
        for part, region, count in (("train", tokens[:cut], n_samples), ("heldout", tokens[cut:], n_heldout)):
            wanted = len(range(d, count, len(names)))  # windows d, d + n_texts, ... of this part
            slots = len(region) // seq_len
            if wanted > slots:
                raise LowbitError(
                    f"calibration text {name!r} has {len(tokens)} tokens: room for {slots} {part} windows of "
                    f"{seq_len}, {wanted} needed; give fewer samples, a shorter --seq-len, or a longer text")
            windows[part][name] = [region[s * seq_len:(s + 1) * seq_len]
                                   for s in np.sort(rng.permutation(slots)[:wanted])]

    def interleave(part: str, count: int) -> tuple[torch.Tensor, list[str]]:
        """Window i from text i mod n_texts."""
        taken = dict.fromkeys(names, 0)
        rows, sources = [], []
        for i in range(count):
            name = names[i % len(names)]
            rows.append(windows[part][name][taken[name]])
            sources.append(name)
            taken[name] += 1
        stacked = torch.from_numpy(np.stack(rows)) if rows else torch.empty(0, seq_len, dtype=torch.int64)
        return stacked, sources

    train, train_sources = interleave("train", n_samples)
    heldout, heldout_sources = interleave("heldout", n_heldout)
    return CalibrationSet(train, heldout, train_sources, heldout_sources)


def calibration_set(tokenize: Callable[[str], np.ndarray], specs: str | Sequence[str] = DEFAULT_CALIBRATION,
                    n_samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN,
                    n_heldout: int = DEFAULT_HELDOUT, seed: int = 0,
                    cache_key: str | None = None) -> CalibrationSet:
    """Draw a calibration set from texts (see calibration_sources), tokenized by `tokenize`. With cache_key
    (something that names the tokenizer), each text's token ids are cached beside the texts."""
    streams = {name: _tokens(tokenize, body, cache_key) for name, body in calibration_sources(specs).items()}
    return draw_windows(streams, n_samples, n_heldout, seq_len, seed)


def _tokens(tokenize, body: str, cache_key: str | None) -> np.ndarray:
    if cache_key is None:
        return tokenize(body)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
    path = cache_root() / "tokens" / f"{cache_key}-{digest}.npy"
    if path.exists():
        return np.load(path)
    tokens = np.asarray(tokenize(body), dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with partial_output(path, "the calibration text's token ids") as partial, open(partial, "wb") as f:
        np.save(f, tokens)
    return tokens


def model_calibration_set(model_dir, specs: str | Sequence[str] = DEFAULT_CALIBRATION,
                          n_samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN,
                          n_heldout: int = DEFAULT_HELDOUT, seed: int = 0) -> CalibrationSet:
    """A calibration set in the tokens of the Hugging Face model in model_dir."""
    from lowbit_gguf.evaluate import hf_tokenize

    model_dir = Path(model_dir)
    tokenizer_files = sorted(p for p in model_dir.glob("tokenizer*") if p.is_file())
    key = None
    if tokenizer_files:
        key = hashlib.sha256(b"".join(p.read_bytes() for p in tokenizer_files)).hexdigest()[:16]
    return calibration_set(lambda body: hf_tokenize(model_dir, body), specs, n_samples, seq_len, n_heldout, seed,
                           cache_key=key)


def as_calibration(calibration: CalibrationSet | torch.Tensor) -> CalibrationSet:
    """A bare [n, seq_len] token tensor is a calibration set without held-out windows."""
    if isinstance(calibration, CalibrationSet):
        return calibration
    return CalibrationSet(calibration, calibration[:0], ["tokens"] * len(calibration), [])
