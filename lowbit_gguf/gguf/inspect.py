"""Read a GGUF's tensor table: names, types, shapes, bytes and bits per weight."""

from __future__ import annotations

import dataclasses
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
    lowbit: dict[str, str] = dataclasses.field(default_factory=dict)  # lowbit_gguf.* metadata, prefix dropped

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


GGML_MAX_DIMS = 4


def check_structure(path: Path) -> None:
    """Walk a GGUF's header, metadata and tensor infos, checking every count and length against the bytes the file
    has, and raise BadGGUF naming what is wrong. gguf's reader trusts them: an array count past the end of the file
    keeps it reading for hours, a dimension count of 255 reads past the tensor's info."""
    import math
    import mmap
    import struct

    import numpy as np
    from gguf import GGUFReader, GGUFValueType
    from gguf.constants import GGML_QUANT_SIZES

    from lowbit_gguf.gguf.types import register_with_gguf

    register_with_gguf()  # the lowbit types' sizes too
    scalar_bytes = {int(t): np.dtype(dtype).itemsize for t, dtype in GGUFReader.gguf_scalar_to_np.items()}

    size = path.stat().st_size
    if size < 24:
        raise BadGGUF(f"{path} is not a GGUF file ({size} bytes, shorter than a GGUF header)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = 0

        def take(n: int, what: str) -> bytes:
            nonlocal pos
            if n < 0 or pos + n > size:
                raise BadGGUF(f"{path}: {what} at byte {pos} runs past the end of the file ({size} bytes)")
            pos += n
            return data[pos - n:pos]

        def number(fmt: str, what: str) -> int:
            return struct.unpack("<" + fmt, take(struct.calcsize(fmt), what))[0]

        def string(what: str) -> bytes:
            return take(number("Q", f"the length of {what}"), what)

        def value(vtype: int, what: str) -> None:
            if vtype in scalar_bytes:
                take(scalar_bytes[vtype], what)
            elif vtype == GGUFValueType.STRING:
                string(what)
            elif vtype == GGUFValueType.ARRAY:
                item, count = number("I", f"the item type of {what}"), number("Q", f"the length of {what}")
                if item in scalar_bytes:  # a scalar array in one step
                    take(count * scalar_bytes[item], what)
                elif count * 8 > size - pos:  # every string or array item takes at least 8 bytes
                    raise BadGGUF(f"{path}: {what} has {count} items, more than the file holds")
                else:
                    for _ in range(count):
                        value(item, what)
            else:
                raise BadGGUF(f"{path}: {what} has the unknown value type {vtype}")

        if take(4, "the magic") != b"GGUF":
            raise BadGGUF(f"{path} is not a GGUF file (no GGUF magic)")
        version = number("I", "the version")
        if version not in (2, 3):
            raise BadGGUF(f"{path}: GGUF version {version} (this reader takes versions 2 and 3)")
        n_tensors, n_kv = number("Q", "the tensor count"), number("Q", "the metadata count")
        if n_kv * 12 > size or n_tensors * 24 > size:
            raise BadGGUF(f"{path}: the header counts {n_kv} metadata pairs and {n_tensors} tensors, more than the "
                          f"file's {size} bytes hold")
        alignment = 32
        for i in range(n_kv):
            key = string(f"metadata key {i}").decode(errors="replace")
            vtype = number("I", f"the value type of {key!r}")
            if key == "general.alignment" and vtype == 4:
                alignment = number("I", "general.alignment")
                if alignment == 0 or alignment & (alignment - 1):
                    raise BadGGUF(f"{path}: general.alignment is {alignment}, not a power of two")
            else:
                value(vtype, f"the value of {key!r}")
        infos = []
        for i in range(n_tensors):
            name = string(f"the name of tensor {i}").decode(errors="replace")
            n_dims = number("I", f"the dimension count of {name!r}")
            if n_dims > GGML_MAX_DIMS:
                raise BadGGUF(f"{path}: tensor {name!r} has {n_dims} dimensions; ggml tensors have at most "
                              f"{GGML_MAX_DIMS}")
            dims = struct.unpack(f"<{n_dims}Q", take(8 * n_dims, f"the shape of tensor {name!r}"))
            infos.append((name, dims, number("I", f"the type of {name!r}"), number("Q", f"the offset of {name!r}")))
        data_start = -(-pos // alignment) * alignment
        for name, dims, ggml_type, offset in infos:
            if ggml_type not in GGML_QUANT_SIZES:
                raise BadGGUF(f"{path}: tensor {name!r} has the unknown type id {ggml_type}")
            block, type_size = GGML_QUANT_SIZES[ggml_type]
            n = math.prod(dims)
            if n % block:
                raise BadGGUF(f"{path}: tensor {name!r} has {n} values, not a whole number of its type's blocks "
                              f"of {block}")
            if data_start + offset + n // block * type_size > size:
                raise BadGGUF(f"{path}: tensor {name!r} ({n // block * type_size} bytes at data offset {offset}) runs "
                              f"past the end of the file ({size} bytes)")


def open_gguf(path: str | Path):
    """gguf's reader over a file whose structure passed check_structure; BadGGUF for anything malformed."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise BadGGUF(f"no such GGUF file: {path}")
    check_structure(path)  # registers the lowbit types with gguf too
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError ... on bad files
        raise BadGGUF(f"{path} is not a readable GGUF file: {exc}") from exc


def read_summary(path: str | Path) -> GGUFSummary:
    path = Path(path)
    reader = open_gguf(path)
    field = reader.get_field("general.architecture")
    architecture = field.contents() if field is not None else "unknown"
    tensors = [
        TensorInfo(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_elements), int(t.n_bytes))
        for t in reader.tensors
    ]
    lowbit = {f.name.removeprefix("lowbit_gguf."): str(f.contents()) for f in reader.fields.values()
              if f.name.startswith("lowbit_gguf.")}
    return GGUFSummary(path, architecture, tensors, path.stat().st_size, lowbit)


def describe_quantization(lowbit: dict[str, str]) -> list[str]:
    """Lines saying how a lowbit file was made, from its lowbit_gguf.* metadata: method and config (the fields that
    differ from the method's defaults), preset, quantization time, the checkpoint it was imported from, end-to-end
    fine-tuning."""
    import json

    if "method" not in lowbit:
        return []
    method = lowbit["method"]
    try:
        config = json.loads(lowbit.get("config", "{}"))
    except json.JSONDecodeError:
        config = {}
    name, defaults = "", {}
    try:
        from lowbit_gguf.methods import get_method

        config_type = get_method(method).config_type
        name = config_type(**config).name
        defaults = dataclasses.asdict(config_type.parse(name))
    except Exception:  # a config or method this version does not know: every field
        pass
    changed = {k: v for k, v in config.items() if defaults.get(k, object()) != v} if isinstance(config, dict) else {}
    settings = " ".join(f"{k}={v}" for k, v in changed.items())
    lines = [f"method:       {method} {name}" + (f" ({settings})" if settings else "")]
    made = []
    if "imported_from" in lowbit:
        made.append(f"imported from a published {lowbit['imported_from']} checkpoint, not quantized here")
    if "preset" in lowbit:
        made.append(f"preset {lowbit['preset']}")
    if "quantize_seconds" in lowbit:
        made.append(f"quantized in {float(lowbit['quantize_seconds']):.0f} s")
    if "finetune" in lowbit:
        made.append("fine-tuned end to end")
    if made:
        lines.append(f"made:         {', '.join(made)}")
    return lines


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
    ] + describe_quantization(summary.lowbit)
    return "\n".join(lines)


def read_lowbit_weights(path: str | Path, prefix: str = "") -> dict:
    """{weight name: PackedWeight} for the lowbit weights of a GGUF whose names start with prefix (e.g.
    "blk.0."), with their side tensors, as the file stores them."""
    import numpy as np

    from lowbit_gguf.gguf.write import PackedWeight

    tensors = {t.name: t for t in open_gguf(path).tensors if t.name.startswith(prefix)}
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
