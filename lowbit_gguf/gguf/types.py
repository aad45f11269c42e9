"""The one table of lowbit-gguf tensor types, shared by Python and the C patches.

A weight of one of these types holds only codes; the tables it needs to decode them are side tensors in
the same file, named from the weight (`blk.0.attn_q.weight` -> `blk.0.attn_q.codebook`, `.row_scale`).
Ids 200-209 are AQLM's, 210-219 PTQ1.61's, 220-229 VPTQ's.
Type ids start at 200, far above upstream ggml's (43 types today) and ik_llama.cpp's (137 and up), so a
future upstream type does not collide.

The C side is generated from this table: `tools/generate-c-types` rewrites the files named in
GENERATED under ggml_patches/src/ (enum entries, ggml's and ggml-cpu's trait rows, the parameter table the
kernels read); a test fails when the committed files differ from what this table generates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

FIRST_ID = 200
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Side tensor suffixes. `.scale` is taken: upstream loads `blk.N.X.scale` as a per-tensor [1] multiplier.
CODEBOOK = "codebook"
ROW_SCALE = "row_scale"
# PTQ1.61: which input channels are salient, the salient codes that do not fit in the weight's row,
# per-row [binary scale, binary offset, salient scale, salient min], per-input-channel binary scale.
SALIENT_MASK = "salient_mask"
SALIENT_SPILL = "salient_spill"
ROW_PARAMS = "row_params"
COL_SCALE = "col_scale"
# VPTQ: the residual codebook (one f16 row of zeros when there is none) and the per-input-channel bias.
RES_CODEBOOK = "res_codebook"
COL_BIAS = "col_bias"


@dataclass(frozen=True)
class Side:
    """One side tensor of a method's weights. Each entry of shape (numpy order; ggml's ne is the reverse) is an
    integer expression, the same in Python and C, over the weight's d_out and d_in, the type's parameters and
    the method's per-weight parameters (read from the file, e.g. PTQ1.61's n_salient)."""

    suffix: str
    ggml_type: str  # F16, I8
    shape: tuple[str, ...]

    @property
    def per_row(self) -> bool:
        """One entry per output row: the side follows a permutation of the weight's rows."""
        return self.shape[0] == "d_out"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype({"F16": np.float16, "I8": np.int8}[self.ggml_type])

    def numpy_shape(self, values: dict[str, int]) -> tuple[int, ...]:
        return tuple(int(eval(dim, {"__builtins__": {}}, values)) for dim in self.shape)


def _vptq_params(sides: dict[str, np.ndarray]) -> dict[str, int]:
    """VPTQ's per-weight parameters: vector length and codebook sizes, from the codebooks' shapes [k, v]."""
    main, res = sides.get(CODEBOOK), sides.get(RES_CODEBOOK)
    return {"vector_len": 0 if main is None or main.ndim != 2 else main.shape[1],
            "n_centroids": 0 if main is None or main.ndim != 2 else main.shape[0],
            "n_res_centroids": 0 if res is None or res.ndim != 2 else res.shape[0]}


def vptq_check(lowbit_type: "LowbitType", d_out: int, d_in: int, params: dict[str, int]) -> str | None:
    """What VPTQ's codebook shapes must satisfy beyond matching each other (the C side's vptq_weight_params
    checks the same): k and k_res powers of two, k_res = 1 meaning no residual, v dividing d_out, and
    (log2 k + log2 k_res) / v index bits per weight, the type's."""
    v, k, k_res = params["vector_len"], params["n_centroids"], params["n_res_centroids"]
    if not (1 <= v <= VPTQ_MAX_VECTOR_LEN and 2 <= k <= 65536 and 1 <= k_res <= 65536):
        return (f"codebooks of {k} and {k_res} vectors of {v}: VPTQ needs 1 <= v <= {VPTQ_MAX_VECTOR_LEN}, "
                "2 <= k <= 65536 and 1 <= k_res <= 65536")
    if k & (k - 1) or k_res & (k_res - 1):
        return f"codebook sizes {k} and {k_res} are not powers of two"
    if d_out % v:
        return f"vector length {v} does not divide the {d_out} output rows"
    bits = (k.bit_length() - 1) + (k_res.bit_length() - 1)
    if bits * lowbit_type.block_size != 8 * lowbit_type.type_size * v:
        return (f"{bits}-bit indices over vectors of {v} are {bits / v:g} bits per weight; "
                f"{lowbit_type.name} holds {8 * lowbit_type.type_size / lowbit_type.block_size:g}")
    return None


VPTQ_MAX_VECTOR_LEN = 32


def _set_bits(bytes_: np.ndarray | None) -> int:
    return 0 if bytes_ is None else int(np.unpackbits(bytes_.view(np.uint8)).sum())


@dataclass(frozen=True)
class KernelBounds:
    """How far the runtime's kernels may be from the Python reference decode on the same bytes, as the largest
    |error| relative to |x| . |w| of an output; the tests hold every kernel of a method to these."""

    f32: float = 1e-5  # the float paths (reference, tables, tiles, f32 sgemm)
    few_tokens: float = 1e-5  # the fastest few-token kernel (PTQ1.61's rounds its inputs to int16)
    bf16_prompts: float = 2.0**-8  # prompts in bf16 (AVX-512 BF16): 8 significant bits of rows and tokens
    # AQLM's register tables: bf16 products and int16 entries; largest and median error
    register_tables: tuple[float, float] = (1e-2, 1e-3)


@dataclass(frozen=True)
class Method:
    """What every type of one method shares: its side tensors (in the order the runtime hangs them on the
    weight), the names of its per-type parameters, and its per-weight parameters."""

    name: str
    c_id: int  # GGML_LOWBIT_METHOD_<NAME> in C
    sides: tuple[Side, ...]
    type_params: tuple[str, ...] = ()
    # per-weight parameters (set by the file, e.g. PTQ1.61's n_salient), and how Python reads them from a weight's
    # sides; the C side reads them in the method's lowbit/<method>.c (weight_params)
    weight_params: tuple[str, ...] = ()
    read_weight_params: Callable[[dict[str, np.ndarray]], dict[str, int]] = lambda sides: {}
    # what the per-weight parameters must satisfy: (type, d_out, d_in, params) -> None or what is wrong
    check_weight_params: Callable[["LowbitType", int, int, dict[str, int]], str | None] = lambda *args: None
    constants: tuple[tuple[str, int], ...] = ()  # limits the C side shares (GGML_LOWBIT_<METHOD>_<NAME>)
    groups_rows: bool = False  # rows are read in groups (VPTQ's v): a weight's rows cannot be reordered
    bounds: KernelBounds = KernelBounds()

    @property
    def c_name(self) -> str:
        return self.name.upper()


AQLM = Method("aqlm", 1, (Side(CODEBOOK, "F16", ("num_codebooks", "1 << code_bits", "block_size")),
                          Side(ROW_SCALE, "F16", ("d_out",))),
              type_params=("num_codebooks", "code_bits"))
# PTQ1.61's weight row holds one bit per input channel, in gathered order (salient channels first, then
# the rest, each ascending): the sign bits of the binarized channels, then the first n_salient / 8 bytes
# of the salient channels' 4-bit codes; their other 3 * n_salient / 8 bytes spill into a side tensor.
PTQ161_METHOD = Method("ptq161", 2, (Side(SALIENT_MASK, "I8", ("d_in // 8",)),
                                     Side(SALIENT_SPILL, "I8", ("d_out", "3 * n_salient // 8")),
                                     Side(ROW_PARAMS, "F16", ("d_out", "4")),
                                     Side(COL_SCALE, "F16", ("d_in",))),
                       weight_params=("n_salient",),
                       read_weight_params=lambda sides: {"n_salient": _set_bits(sides.get(SALIENT_MASK))},
                       # AVX-512 VNNI rounds the gathered input to int16 (15 bits of each part's largest)
                       bounds=KernelBounds(few_tokens=1e-4))
# VPTQ's weight row r holds part of the index stream of its row group r // v: the group's d_in entries
# (main index | residual index << log2 k, in input-channel order) as one little-endian bit stream, cut into v
# equal rows. Thread and GPU row splits read whole groups.
VPTQ = Method("vptq", 3, (Side(CODEBOOK, "F16", ("n_centroids", "vector_len")),
                          Side(RES_CODEBOOK, "F16", ("n_res_centroids", "vector_len")),
                          Side(COL_SCALE, "F16", ("d_in",)),
                          Side(COL_BIAS, "F16", ("d_in",))),
              weight_params=("vector_len", "n_centroids", "n_res_centroids"),
              read_weight_params=_vptq_params, check_weight_params=vptq_check,
              constants=(("MAX_VECTOR_LEN", VPTQ_MAX_VECTOR_LEN),), groups_rows=True)
METHODS = {m.name: m for m in (AQLM, PTQ161_METHOD, VPTQ)}
PER_ROW_SIDES = frozenset(side.suffix for m in METHODS.values() for side in m.sides if side.per_row)


@dataclass(frozen=True)
class LowbitType:
    name: str  # the GGUF/ggml type name, upper case in Python, lower case in ggml's type table
    type_id: int
    method: str
    block_size: int  # weights per block
    type_size: int  # bytes per block
    params: tuple[tuple[str, int], ...]  # the method's type_params, in its order
    description: str

    def __post_init__(self):
        if tuple(k for k, _ in self.params) != METHODS[self.method].type_params:
            raise ValueError(f"{self.name}: parameters {self.params} are not {self.method}'s "
                             f"{METHODS[self.method].type_params}")

    def __getattr__(self, key: str) -> int:
        # the method's parameters read as attributes: AQLM_2X8.num_codebooks
        for k, v in self.__dict__.get("params", ()):
            if k == key:
                return v
        raise AttributeError(f"{self.__class__.__name__} {self.__dict__.get('name')} has no {key!r}")

    @property
    def ggml_enum(self) -> str:
        return f"GGML_TYPE_LOWBIT_{self.name}"

    @property
    def side_specs(self) -> tuple[Side, ...]:
        return METHODS[self.method].sides

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(side.suffix for side in self.side_specs)

    def side_shapes(self, d_out: int, d_in: int, sides: dict[str, np.ndarray] | None = None
                    ) -> dict[str, tuple[int, ...]]:
        """numpy shapes of the side tensors of a [d_out, d_in] weight; where the method has per-weight
        parameters (PTQ1.61: n_salient) they are read from the given sides."""
        values = {"d_out": d_out, "d_in": d_in, "block_size": self.block_size, **dict(self.params),
                  **METHODS[self.method].read_weight_params(sides or {})}
        return {side.suffix: side.numpy_shape(values) for side in self.side_specs}


def _aqlm(name: str, type_id: int, m: int, b: int) -> LowbitType:
    return LowbitType(name=name, type_id=type_id, method="aqlm", block_size=8, type_size=m * b // 8,
                      params=(("num_codebooks", m), ("code_bits", b)),
                      description=f"AQLM {m}x{b}: 8 weights = sum of {m} codeword(s), one per f16 codebook of "
                                  f"{2**b}, times an f16 row scale")


PTQ161 = LowbitType(name="PTQ161", type_id=FIRST_ID + 10, method="ptq161", block_size=8, type_size=1, params=(),
                    description="PTQ1.61: salient input channels 4-bit per row, the rest signs with row and "
                                "column scales; 1 bit per weight here, 3 more per salient weight in a side tensor")



def _vptq(name: str, type_id: int, eighths: int) -> LowbitType:
    bits = eighths / 8
    return LowbitType(name=name, type_id=type_id, method="vptq", block_size=64, type_size=eighths, params=(),
                      description=f"VPTQ, {bits:g} index bits per weight: v rows of one input channel are a main "
                                  "plus a residual f16 centroid, times the channel's scale, plus its bias")


LOWBIT_TYPES: tuple[LowbitType, ...] = (
    _aqlm("AQLM_1X16", FIRST_ID + 0, 1, 16),
    _aqlm("AQLM_2X8", FIRST_ID + 1, 2, 8),
    _aqlm("AQLM_1X8", FIRST_ID + 2, 1, 8),
    PTQ161,
    _vptq("VPTQ_1", FIRST_ID + 20, 8),
    _vptq("VPTQ_1_5", FIRST_ID + 21, 12),
    _vptq("VPTQ_2", FIRST_ID + 22, 16),
    _vptq("VPTQ_3", FIRST_ID + 23, 24),
    _vptq("VPTQ_4", FIRST_ID + 24, 32),
)
BY_NAME = {t.name: t for t in LOWBIT_TYPES}
BY_ID = {t.type_id: t for t in LOWBIT_TYPES}


def aqlm_type(num_codebooks: int, code_bits: int, group_size: int) -> LowbitType:
    """The GGUF type for an AQLM config, or a ValueError naming the configs that have one."""
    for t in LOWBIT_TYPES:
        if t.method == "aqlm" and (t.num_codebooks, t.code_bits, t.block_size) == (num_codebooks, code_bits,
                                                                                  group_size):
            return t
    have = ", ".join(f"{t.num_codebooks}x{t.code_bits}" for t in LOWBIT_TYPES if t.method == "aqlm")
    raise ValueError(f"AQLM {num_codebooks}x{code_bits} with groups of {group_size} has no GGUF type; "
                     f"the runtime runs {have} with groups of 8")


def vptq_type(index_bits: int, vector_len: int) -> LowbitType:
    """The GGUF type holding VPTQ indices of index_bits (main + residual) per vector of vector_len, or a ValueError
    naming the bits per weight the types hold."""
    for t in LOWBIT_TYPES:
        if t.method == "vptq" and index_bits * t.block_size == 8 * t.type_size * vector_len:
            return t
    have = ", ".join(f"{8 * t.type_size / t.block_size:g}" for t in LOWBIT_TYPES if t.method == "vptq")
    raise ValueError(f"VPTQ with {index_bits}-bit indices over vectors of {vector_len} is {index_bits / vector_len:g} "
                     f"index bits per weight; the GGUF types hold {have}")


def register_with_gguf() -> None:
    """Add the lowbit types to the gguf package's type enum and size table, so GGUFReader and GGUFWriter
    handle them like any other quantized type. Idempotent.

    GGMLQuantizationType is an IntEnum that gguf looks values up in; there is no public way to extend it,
    so the members are added the way enum itself builds them (_member_map_ and _value2member_map_)."""
    enum_cls = GGMLQuantizationType
    for t in LOWBIT_TYPES:
        if t.name not in enum_cls._member_map_:
            member = int.__new__(enum_cls, t.type_id)
            member._name_ = t.name
            member._value_ = t.type_id
            enum_cls._member_map_[t.name] = member
            enum_cls._value2member_map_[t.type_id] = member
            enum_cls._member_names_.append(t.name)
            type.__setattr__(enum_cls, t.name, member)
        GGML_QUANT_SIZES[enum_cls[t.name]] = (t.block_size, t.type_size)


def gguf_type(t: LowbitType) -> GGMLQuantizationType:
    register_with_gguf()
    return GGMLQuantizationType[t.name]


_HEADER = "// Generated by `tools/generate-c-types` from lowbit_gguf/gguf/types.py; do not edit.\n"


def render_enum() -> str:
    """Entries of ggml's enum ggml_type."""
    lines = [_HEADER, "// Included inside ggml's enum ggml_type.\n"]
    for t in LOWBIT_TYPES:
        bits = 8 * t.type_size / t.block_size
        lines.append(f"    {t.ggml_enum} = {t.type_id}, // {bits:g} bits/weight in codes; {t.description}\n")
    lines.append(f"    GGML_TYPE_LOWBIT_END = {LOWBIT_TYPES[-1].type_id + 1},\n")
    return "".join(lines)


def render_traits() -> str:
    """Rows of ggml's type_traits[] (ggml.c). No to_float: decoding needs the side tensors."""
    lines = [_HEADER, "// Included inside ggml.c's type_traits[] initializer.\n"]
    for t in LOWBIT_TYPES:
        lines.append(f"    [{t.ggml_enum}] = {{ .type_name = \"{t.name.lower()}\", .blck_size = {t.block_size}, "
                     f".type_size = {t.type_size}, .is_quantized = true }},\n")
    return "".join(lines)


def render_cpu_traits() -> str:
    """Rows of ggml-cpu's type_traits_cpu[]: activations stay F32, MUL_MAT goes to lowbit-cpu.c."""
    lines = [_HEADER, "// Included inside ggml-cpu.c's type_traits_cpu[] initializer.\n"]
    for t in LOWBIT_TYPES:
        lines.append(f"    [{t.ggml_enum}] = {{ .vec_dot_type = GGML_TYPE_F32, .nrows = 1 }},\n")
    return "".join(lines)


def _c_side_enum(method: Method, side: Side) -> str:
    return f"GGML_LOWBIT_{method.c_name}_{side.suffix.upper()}"


def render_ids() -> str:
    """The method enum, each method's side indices and constant side widths, and each method's parameter
    struct (ggml-lowbit.h)."""
    lines = [_HEADER, "// Included by ggml-lowbit.h.\n\n", "enum ggml_lowbit_method {\n"]
    lines += [f"    GGML_LOWBIT_METHOD_{m.c_name} = {m.c_id},\n" for m in METHODS.values()]
    lines.append("};\n")
    for m in METHODS.values():
        lines.append(f"\n// {m.name} side tensors, in src[] order (ggml ne, innermost first)\n")
        lines.append(f"enum ggml_lowbit_{m.name}_side {{\n")
        for i, side in enumerate(m.sides):
            ne = ", ".join(reversed(side.shape)).replace("//", "/")
            lines.append(f"    {_c_side_enum(m, side)} = {i},  // {side.ggml_type.lower()} [{ne}]\n")
        lines.append("};\n")
        for side in m.sides:
            for dim in side.shape:
                if dim.isdigit():
                    lines.append(f"#define {_c_side_enum(m, side)}_N {dim}\n")
        lines += [f"#define GGML_LOWBIT_{m.c_name}_{name} {value}\n" for name, value in m.constants]
        if m.type_params:
            lines.append(f"struct ggml_lowbit_{m.name}_params {{\n")
            lines += [f"    int {p};\n" for p in m.type_params]
            lines.append("};\n")
    lines.append(f"\n#define GGML_LOWBIT_MAX_SIDES {max(len(m.sides) for m in METHODS.values())}\n")
    lines.append(f"#define GGML_LOWBIT_MAX_WEIGHT_PARAMS {max(1, *(len(m.weight_params) for m in METHODS.values()))}\n")
    members = " ".join(f"struct ggml_lowbit_{m.name}_params {m.name};" for m in METHODS.values() if m.type_params)
    lines.append("// the members of ggml_lowbit_type_info's parameter union\n")
    lines.append(f"#define GGML_LOWBIT_METHOD_PARAMS {members}\n")
    return "".join(lines)


def render_table() -> str:
    """The per-type parameters the C code reads (ggml-lowbit.c)."""
    lines = [_HEADER, "#pragma once\n\n", '#include "ggml-lowbit.h"\n\n',
             "static const struct ggml_lowbit_type_info ggml_lowbit_type_table[] = {\n"]
    for t in LOWBIT_TYPES:
        m = METHODS[t.method]
        suffixes = ", ".join(f'"{s.suffix}"' for s in m.sides)
        types = ", ".join(f"GGML_TYPE_{s.ggml_type}" for s in m.sides)
        params = f", .{m.name} = {{ {', '.join(str(v) for _, v in t.params)} }}" if m.type_params else ""
        lines.append(f'    {{ .type = {t.ggml_enum}, .name = "{t.name.lower()}", '
                     f".method = GGML_LOWBIT_METHOD_{m.c_name},\n"
                     f"      .block_size = {t.block_size}, .type_size = {t.type_size}, .n_sides = {len(m.sides)},\n"
                     f"      .sides = {{ {suffixes} }}, .side_types = {{ {types} }}{params} }},\n")
    lines.append("};\n")
    return "".join(lines)


def render_side_shapes() -> str:
    """Each method's side shapes as C (ggml ne, innermost first), from the same expressions Python evaluates."""
    lines = [_HEADER, "// Included by ggml-lowbit.c.\n#pragma once\n\n#include \"ggml-lowbit.h\"\n"]
    for m in METHODS.values():
        lines.append(f"\n// {m.name}: weight_params holds {', '.join(m.weight_params) or 'nothing'}\n")
        lines.append(f"static void ggml_lowbit_{m.name}_side_ne(const struct ggml_lowbit_type_info * info, "
                     "int64_t d_out, int64_t d_in,\n        const int64_t * weight_params, int64_t ne[][4]) {\n")
        names = {"d_out": None, "d_in": None, "block_size": "info->block_size"}
        names |= {p: f"info->{m.name}.{p}" for p in m.type_params}
        names |= {p: f"weight_params[{i}]" for i, p in enumerate(m.weight_params)}
        for name, value in names.items():
            if value is not None:
                lines.append(f"    const int64_t {name} = {value};\n")
        lines += [f"    (void) {n};\n" for n in [*names, "weight_params", "info"]]  # not every method reads all
        for i, side in enumerate(m.sides):
            ne = [dim.replace("//", "/") for dim in reversed(side.shape)] + ["1"] * (4 - len(side.shape))
            lines.append(f"    // {side.suffix}\n")
            lines += [f"    ne[{i}][{k}] = {dim};\n" for k, dim in enumerate(ne)]
        lines.append("}\n")
    lines.append("\ntypedef void (*ggml_lowbit_side_ne_fn)(const struct ggml_lowbit_type_info *, int64_t, int64_t,\n"
                 "                                       const int64_t *, int64_t[][4]);\n\n")
    lines.append("// one row per method, at its enum value\n")
    lines.append("static const ggml_lowbit_side_ne_fn ggml_lowbit_side_ne[] = {\n")
    lines += _rows_by_enum(lambda m: f"ggml_lowbit_{m.name}_side_ne")
    lines.append("};\n")
    return "".join(lines)


def _render_method_externs(struct: str, prefix: str) -> str:
    """Declarations of a backend's method structs, one per method (each defined in that method's file)."""
    lines = [_HEADER, "#pragma once\n\n"]
    lines += [f"extern const {struct} {prefix}{m.name};\n" for m in METHODS.values()]
    return "".join(lines)


def _rows_by_enum(entry: Callable[[Method], str]) -> list[str]:
    """Table rows indexed by the method enum (positional, so C and C++ both take them): entry(method) or NULL."""
    by_id = {m.c_id: m for m in METHODS.values()}
    return [f"    {entry(by_id[i])},\n" if i in by_id else "    NULL,\n" for i in range(max(by_id) + 1)]


def _render_method_rows(prefix: str) -> str:
    """The rows of a backend's method table: each method's struct at its enum value."""
    return "".join([_HEADER, "// One row per method: the method's struct, at its enum value.\n",
                    *_rows_by_enum(lambda m: f"&{prefix}{m.name}")])


GENERATED = {
    "ggml/include/ggml-lowbit-types.inc": render_enum,
    "ggml/include/ggml-lowbit-ids.inc": render_ids,
    "ggml/src/lowbit/lowbit-methods.inc": lambda: _render_method_rows("ggml_lowbit_base_"),
    "ggml/src/lowbit/lowbit-side-shapes.h": render_side_shapes,
    "ggml/src/lowbit/lowbit-methods.h": lambda: _render_method_externs("struct ggml_lowbit_base_method",
                                                                       "ggml_lowbit_base_"),
    "ggml/src/ggml-cpu/lowbit/lowbit-methods.inc": lambda: _render_method_rows("lowbit_cpu_"),
    "ggml/src/ggml-cpu/lowbit/lowbit-methods.h": lambda: _render_method_externs("struct lowbit_cpu_method",
                                                                                "lowbit_cpu_"),
    "ggml/src/ggml-cuda/lowbit-methods.inc": lambda: _render_method_rows("ggml_cuda_lowbit_"),
    "ggml/src/ggml-cuda/lowbit-methods.cuh": lambda: _render_method_externs("ggml_cuda_lowbit_method",
                                                                            "ggml_cuda_lowbit_"),
    "ggml/src/ggml-lowbit-traits.inc": render_traits,
    "ggml/src/ggml-lowbit-table.h": render_table,
    "ggml/src/ggml-cpu/ggml-lowbit-cpu-traits.inc": render_cpu_traits,
}
SRC_DIR = PROJECT_ROOT / "ggml_patches" / "src"


def write_c_files() -> list[Path]:
    written = []
    for rel, render in GENERATED.items():
        (SRC_DIR / rel).write_text(render())
        written.append(SRC_DIR / rel)
    return written


