"""Read a GGUF's tensor table: names, types, shapes, bytes and bits per weight."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lowbit_gguf.errors import BadGGUF
from lowbit_gguf.gguf.types import BY_ID, LOWBIT_TYPES

SIDE_SUFFIXES = frozenset(s for t in LOWBIT_TYPES for s in t.sides)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    shape: tuple[int, ...]  # ggml order: [n_in, n_out] for a weight matrix
    n_elements: int
    n_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.n_bytes / self.n_elements

    @property
    def is_block_linear(self) -> bool:
        """A transformer block's matmul weight (what low-bit methods quantize)."""
        return self.name.startswith("blk.") and self.name.endswith(".weight") and len(self.shape) == 2

    @property
    def is_side_tensor(self) -> bool:
        """A side tensor of a lowbit weight (blk.N.attn_q.codebook, ...): its bytes count for its weight."""
        return self.name.startswith("blk.") and self.name.rsplit(".", 1)[-1] in SIDE_SUFFIXES


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    architecture: str
    tensors: list[TensorInfo]
    file_bytes: int

    def bits_per_weight(self, linear_only: bool = False) -> float:
        """Bits per weight over the model's weights, or over the block linear weights only. Side tensors
        (codebooks, scales) count as bytes of their weight, not as weights: AQLM 1x16's codebooks hold more
        numbers than SmolLM2's attention weights."""
        sides = [t for t in self.tensors if t.is_side_tensor]
        weights = [t for t in self.tensors if not t.is_side_tensor and (t.is_block_linear or not linear_only)]
        return 8.0 * sum(t.n_bytes for t in weights + sides) / sum(t.n_elements for t in weights)

    @property
    def n_parameters(self) -> int:
        """The model's weights: every tensor but the side tensors."""
        return sum(t.n_elements for t in self.tensors if not t.is_side_tensor)


def read_summary(path: str | Path) -> GGUFSummary:
    import gguf

    path = Path(path)
    if not path.is_file():
        raise BadGGUF(f"no such GGUF file: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError ... on bad files
        raise BadGGUF(f"{path} is not a readable GGUF file: {exc}") from exc
    field = reader.get_field("general.architecture")
    architecture = field.contents() if field is not None else "unknown"
    tensors = [
        TensorInfo(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_elements), int(t.n_bytes))
        for t in reader.tensors
    ]
    return GGUFSummary(path, architecture, tensors, path.stat().st_size)


def format_summary(summary: GGUFSummary, show_tensors: bool = True) -> str:
    lines = []
    if show_tensors:
        width = max(len(t.name) for t in summary.tensors)
        for t in summary.tensors:
            shape = "x".join(str(x) for x in t.shape)
            lines.append(f"{t.name:<{width}}  {t.type_name:<8} {shape:>14}  {t.bits_per_weight:6.2f} bpw")
        lines.append("")
    types = sorted({t.type_name for t in summary.tensors})
    lines += [
        f"file:         {summary.path} ({summary.file_bytes / 2**20:.1f} MiB)",
        f"architecture: {summary.architecture}",
        f"tensors:      {len(summary.tensors)} ({', '.join(types)})",
        f"parameters:   {summary.n_parameters / 1e6:.1f} M",
        f"bits/weight:  {summary.bits_per_weight():.3f} over all tensors, "
        f"{summary.bits_per_weight(linear_only=True):.3f} over block linear weights",
    ]
    return "\n".join(lines)


def read_lowbit_weights(path: str | Path, prefix: str = "") -> dict:
    """{weight name: PackedWeight} for the lowbit weights of a GGUF whose names start with prefix (e.g.
    "blk.0."), with their side tensors, as the file stores them."""
    import gguf
    import numpy as np

    from lowbit_gguf.gguf.write import PackedWeight

    summary = read_summary(path)  # a readable file, or BadGGUF
    tensors = {t.name: t for t in gguf.GGUFReader(summary.path).tensors if t.name.startswith(prefix)}
    weights = {}
    for name, t in tensors.items():
        lowbit_type = BY_ID.get(int(t.tensor_type))
        if lowbit_type is None:
            continue
        stem = name.removesuffix(".weight")
        missing = [s for s in lowbit_type.sides if f"{stem}.{s}" not in tensors]
        if missing:
            raise BadGGUF(f"{path}: weight '{name}' of type {lowbit_type.name} lacks its side tensor(s) "
                          + ", ".join(f"'{stem}.{s}'" for s in missing))
        sides = {s: np.array(tensors[f"{stem}.{s}"].data) for s in lowbit_type.sides}
        try:
            weights[name] = PackedWeight(lowbit_type, np.array(t.data), sides, int(t.shape[0]))
        except ValueError as exc:
            raise BadGGUF(f"{path}: weight '{name}': {exc}") from exc
    return weights
