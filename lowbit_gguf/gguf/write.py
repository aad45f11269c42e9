"""Write a lowbit GGUF: llama.cpp's own F16 conversion of the model, with each quantized weight replaced by
its codes (a lowbit tensor type) and the side tensors that decode them.

Everything but the quantized weights (metadata, tokenizer, embeddings, norms, output head) is copied from
the F16 file that upstream's convert_hf_to_gguf.py wrote, so names, metadata and the tensor layout are
llama.cpp's own. The F16 file holds the method's reference decode, which is also how the writer finds
each weight's row order: llama.cpp's converter permutes the rows of Llama's q/k projections, and the codes
must follow the same permutation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import gguf
import gguf.quants
from lowbit_gguf.errors import BadGGUF, LowbitError
from lowbit_gguf.files import partial_output
from lowbit_gguf.gguf.inspect import open_gguf
from lowbit_gguf.gguf.types import METHODS, PER_ROW_SIDES, LowbitType, gguf_type


@dataclass
class PackedWeight:
    """A weight [d_out, d_in] in a lowbit type, as the file stores it."""

    lowbit_type: LowbitType
    codes: np.ndarray  # uint8 [d_out, row_bytes]
    sides: dict[str, np.ndarray]  # suffix -> array in numpy order (ggml's ne reversed)
    n_per_row: int  # d_in
    # types whose rows are read in groups (VPTQ) cannot move rows: the model row each stored row holds, fixed
    # when the weight was quantized (None: as the model has them)
    row_order: np.ndarray | None = None

    def __post_init__(self):
        t = self.lowbit_type
        row_bytes = self.n_per_row // t.block_size * t.type_size
        if self.n_per_row % t.block_size or self.codes.dtype != np.uint8 or self.codes.shape[1:] != (row_bytes,):
            raise ValueError(f"{t.name} codes for rows of {self.n_per_row} must be uint8 [d_out, {row_bytes}], "
                             f"got {self.codes.dtype} {list(self.codes.shape)}")
        expected = t.side_shapes(self.d_out, self.n_per_row, self.sides)
        for spec in t.side_specs:
            side = self.sides.get(spec.suffix)
            if side is None or side.shape != expected[spec.suffix]:
                raise ValueError(f"{t.name} side tensor {spec.suffix!r} must have shape {expected[spec.suffix]}, "
                                 f"got {None if side is None else side.shape}")
            if side.dtype != spec.numpy_dtype:
                raise ValueError(f"{t.name} side tensor {spec.suffix!r} must be {spec.ggml_type}, got {side.dtype}")
        problem = METHODS[t.method].check_weight_params(t, self.d_out, self.n_per_row, self.weight_params)
        if problem:
            raise ValueError(f"{t.name}: {problem}")

    @property
    def weight_params(self) -> dict[str, int]:
        """The method's per-weight parameters, read from the sides (PTQ1.61: n_salient)."""
        return METHODS[self.lowbit_type.method].read_weight_params(self.sides)

    @property
    def d_out(self) -> int:
        return self.codes.shape[0]

    @property
    def groups_rows(self) -> bool:
        return METHODS[self.lowbit_type.method].groups_rows

    def permute_rows(self, perm: np.ndarray) -> PackedWeight:
        """The weight with stored row i holding what row perm[i] held. A type that reads rows in groups keeps its
        rows where they are: perm must then be the order they were quantized in (the file's order, which
        lowbit_gguf.gguf.write.file_row_order gives the quantizer)."""
        if self.groups_rows:
            order = np.arange(self.d_out) if self.row_order is None else self.row_order
            if not np.array_equal(perm, order):
                raise LowbitError(f"{self.lowbit_type.name} reads rows in groups, so its rows cannot be reordered; "
                                  "this weight was quantized for another row order than the file's (quantize the "
                                  "model again with this version of lowbit-gguf)")
            return self
        sides = {k: (v[perm] if k in PER_ROW_SIDES else v) for k, v in self.sides.items()}
        return PackedWeight(self.lowbit_type, np.ascontiguousarray(self.codes[perm]), sides, self.n_per_row)

    def in_model_order(self, order: np.ndarray) -> PackedWeight:
        """A weight read from a file whose stored row i is the model's row order[i], in the model's order: its rows
        moved, or (types that read rows in groups) left where they are with row_order saying which model row each
        is."""
        if self.groups_rows:
            return dataclasses.replace(self, row_order=order)
        return self.permute_rows(np.argsort(order))


def llama_rows_permutation(d_out: int, n_head: int) -> np.ndarray:
    """The row order convert_hf_to_gguf gives Llama's q/k weights (LlamaModel.permute), as indices."""
    rows = np.arange(d_out)
    return rows.reshape(n_head, 2, d_out // n_head // 2).swapaxes(1, 2).reshape(d_out)


# Hugging Face model types whose q/k rows llama.cpp's converter permutes (LlamaModel.modify_tensors and the
# classes that inherit it)
LLAMA_PERMUTED_TYPES = ("llama", "mistral", "mixtral", "granite", "granitemoe", "smollm3")


def file_row_order(model_config, module: str, d_out: int) -> np.ndarray | None:
    """The order llama.cpp's converter will write this module's rows in (Llama's q/k permutation), or None when it
    keeps them as they are. Methods that group rows (VPTQ) quantize in this order, so each group is consecutive
    in the file; the writer checks the converter agrees."""
    if getattr(model_config, "model_type", None) not in LLAMA_PERMUTED_TYPES:
        return None
    n_head = getattr(model_config, "num_attention_heads", 0)
    heads = {"self_attn.q_proj": n_head,
             "self_attn.k_proj": getattr(model_config, "num_key_value_heads", None) or n_head}
    for suffix, count in heads.items():
        if module.endswith(suffix) and count and d_out % (2 * count) == 0:
            return llama_rows_permutation(d_out, count)
    return None


def row_orders(d_out: int, head_counts: list[int]) -> list[np.ndarray]:
    """The row orders a converted weight may have: as is, or permuted as Llama's q/k for a head count."""
    return [np.arange(d_out)] + [llama_rows_permutation(d_out, h) for h in head_counts
                                 if h > 0 and d_out % (2 * h) == 0]


def head_counts_of(reader: gguf.GGUFReader, arch: str) -> list[int]:
    """The attention head counts (query, key/value) a GGUF's metadata gives."""
    counts = []
    for key in (f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"):
        field = reader.get_field(key)
        if field is not None:
            counts.append(int(field.contents()))
    return counts


def tensor_names_of(reader: gguf.GGUFReader, path: Path) -> tuple[str, gguf.TensorNameMap]:
    """A GGUF's architecture and llama.cpp's map from Hugging Face tensor names to its names."""
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    arch_enum = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise BadGGUF(f"{path}: architecture {arch!r} is unknown to the gguf package")
    n_blocks = reader.get_field(f"{arch}.block_count").contents()
    return arch, gguf.get_tensor_name_map(arch_enum, n_blocks)


def _row_order(name: str, decoded: torch.Tensor, stored: np.ndarray, head_counts: list[int]) -> np.ndarray:
    """The permutation p with decoded[p] == the F16 tensor the converter wrote (to f16 precision)."""
    ref = decoded.float().numpy()
    tol = 1e-3 * max(float(np.abs(ref).max()), 1e-6)
    for perm in row_orders(ref.shape[0], head_counts):
        if np.abs(ref[perm] - stored.astype(np.float32)).max() <= tol:
            return perm
    raise LowbitError(f"{name}: the F16 conversion does not hold this weight's decode in any known row order; "
                      "the quantized model and the converted file do not belong together")


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, skip: tuple[str, ...] = ()) -> None:
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE or field.name in skip:
            continue  # the writer writes these itself (skip: the caller's)
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type)


# Token embeddings and output head stay in a standard type; llama.cpp's own low-bit files keep them in Q8_0.
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")
EMBEDDING_TYPES = ("q8_0", "f16")


def write_lowbit_gguf(source: Path, out: Path, packed: dict[str, PackedWeight], decoded: dict[str, torch.Tensor],
                      metadata: dict[str, str], embedding_type: str = "q8_0", progress: bool = True) -> Path:
    """Copy the F16 GGUF `source` to `out`, writing each weight in `packed` (keyed by Hugging Face module
    name, e.g. model.layers.0.self_attn.q_proj) as codes plus side tensors. decoded holds the same
    weights' reference decodes [d_out, d_in]. metadata: extra lowbit_gguf.* string keys. embedding_type:
    the type of the token embeddings and output head (gguf's own numpy quantizer makes Q8_0)."""
    if embedding_type not in EMBEDDING_TYPES:
        raise LowbitError(f"embedding type {embedding_type!r} is not one of {', '.join(EMBEDDING_TYPES)}")
    source, out = Path(source), Path(out)
    reader = open_gguf(source)
    arch, names = tensor_names_of(reader, source)
    head_counts = head_counts_of(reader, arch)
    by_gguf_name = {}
    for module, weight in packed.items():
        gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise LowbitError(f"{module}: llama.cpp's tensor-name map has no name for this module")
        by_gguf_name[gguf_name] = (module, weight)

    with partial_output(out, f"the GGUF file {out.name}") as partial:
        writer = gguf.GGUFWriter(partial, arch)
        _copy_metadata(reader, writer)
        for key, value in metadata.items():
            writer.add_string(f"lowbit_gguf.{key}", value)
        found = set()
        for tensor in reader.tensors:
            if tensor.name in EMBEDDING_TENSORS and embedding_type == "q8_0" \
                    and tensor.tensor_type == gguf.GGMLQuantizationType.F16:
                q8 = gguf.GGMLQuantizationType.Q8_0
                data = gguf.quants.quantize(np.asarray(tensor.data, np.float32), q8)
                writer.add_tensor(tensor.name, data, raw_dtype=q8)
                continue
            if tensor.name not in by_gguf_name:
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
                continue
            module, weight = by_gguf_name[tensor.name]
            found.add(tensor.name)
            weight = weight.permute_rows(_row_order(tensor.name, decoded[module], tensor.data, head_counts))
            writer.add_tensor(tensor.name, weight.codes, raw_dtype=gguf_type(weight.lowbit_type))
            stem = tensor.name.removesuffix(".weight")
            for suffix in weight.lowbit_type.sides:
                writer.add_tensor(f"{stem}.{suffix}", np.ascontiguousarray(weight.sides[suffix]))
        missing = sorted(set(by_gguf_name) - found)
        if missing:
            raise LowbitError(f"{source} lacks the tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        finally:
            writer.close()
    return out

