"""Time the CPU MUL_MAT kernels on the lowbit weights of one transformer block of GGUF files.

Each weight is multiplied with random inputs through the runtime's own ggml graph (lowbit_api's
lb_lowbit_time_mul_mat: one graph, many computes, no Python in the timed loop). Kernel paths and files are
measured in alternating rounds, so a machine that slows down mid-run slows all of them alike; each row reports
the median of the rounds and the fastest (the better figure on a machine shared with other work).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class KernelTiming:
    file: str
    weight: str  # e.g. ffn_gate
    type_name: str
    shape: tuple[int, int]  # d_out, d_in
    n_tokens: int
    n_threads: int
    path: str
    microseconds: float  # median of the rounds
    fastest_microseconds: float


def time_block_kernels(files: list[Path], block: int = 0, tokens: tuple[int, ...] = (1, 4),
                       threads: tuple[int, ...] = (1, 2), paths: tuple[str, ...] = ("loaded", "fastest"),
                       repeat: int = 200, rounds: int = 3, progress=None) -> list[KernelTiming]:
    from lowbit_gguf.errors import LowbitError
    from lowbit_gguf.gguf.inspect import read_lowbit_weights
    from lowbit_gguf.runtime.library import time_lowbit_mul_mat

    prefix = f"blk.{block}."
    weights = {}
    for f in files:
        found = read_lowbit_weights(f, prefix)
        if not found:
            raise LowbitError(f"{f} has no lowbit-gguf weights in block {block}")
        weights[f] = found
    rng = np.random.default_rng(0)
    cases = [(f, name, w, n, t, p) for f, found in weights.items() for name, w in sorted(found.items())
             for n in tokens for t in threads for p in paths]
    inputs = {(w.n_per_row, n): rng.standard_normal((n, w.n_per_row)).astype(np.float32)
              for _, _, w, n, _, _ in cases}
    samples: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for _ in range(rounds):
        for i, (f, name, w, n, t, p) in enumerate(cases):
            _, seconds = time_lowbit_mul_mat(w, inputs[(w.n_per_row, n)], n_threads=t, path=p, repeat=repeat)
            samples[i].append(seconds * 1e6)
            if progress:
                progress(1)
    return [KernelTiming(Path(f).name, name.removeprefix(prefix).removesuffix(".weight"), w.lowbit_type.name,
                         (w.d_out, w.n_per_row), n, t, p, statistics.median(samples[i]), min(samples[i]))
            for i, (f, name, w, n, t, p) in enumerate(cases)]


def format_timings(timings: list[KernelTiming], n_layers: int | None = None) -> str:
    """A table of the timings, then each file's block total per tokens/threads/path (and per token of the whole
    model's linear layers when n_layers is given)."""
    lines = [f"{'file':28s} {'weight':12s} {'type':10s} {'d_out x d_in':>13s} {'tok':>3s} {'thr':>3s} "
             f"{'path':8s} {'us':>9s} {'fastest':>9s}"]
    for k in timings:
        lines.append(f"{k.file:28s} {k.weight:12s} {k.type_name:10s} {f'{k.shape[0]} x {k.shape[1]}':>13s} "
                     f"{k.n_tokens:3d} {k.n_threads:3d} {k.path:8s} {k.microseconds:9.1f} {k.fastest_microseconds:9.1f}")
    lines.append("")
    totals: dict[tuple, tuple[float, float]] = {}
    for k in timings:
        key = (k.file, k.n_tokens, k.n_threads, k.path)
        median, fastest = totals.get(key, (0.0, 0.0))
        totals[key] = (median + k.microseconds, fastest + k.fastest_microseconds)
    for (file, n, t, p), (us, fastest) in totals.items():
        extra = f", x {n_layers} blocks = {us * n_layers / 1e3:.2f} ms" if n_layers else ""
        lines.append(f"{file}: one block, {n} token(s), {t} thread(s), {p}: {us:.1f} us{extra} (fastest rounds "
                     f"{fastest:.1f} us)")
    return "\n".join(lines)
