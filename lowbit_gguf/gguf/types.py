"""The one table of lowbit-gguf tensor types, shared by Python and the C patches.

A weight of one of these types holds only codes; the tables it needs to decode them are side tensors in
the same file, named from the weight (`blk.0.attn_q.weight` -> `blk.0.attn_q.codebook`, `.row_scale`).
Ids 200-209 are AQLM's, 210-219 PTQ1.61's.
Type ids start at 200, far above upstream ggml's (43 types today) and ik_llama.cpp's (137 and up), so a
future upstream type does not collide.

The C side is generated from this table: `tools/generate-c-types` rewrites the files named in
GENERATED under ggml_patches/src/ (enum entries, ggml's and ggml-cpu's trait rows, the parameter table the
kernels read); a test fails when the committed files differ from what this table generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
N_ROW_PARAMS = 4
# one entry per output row: they follow a row permutation
PER_ROW_SIDES = frozenset({ROW_SCALE, SALIENT_SPILL, ROW_PARAMS})


@dataclass(frozen=True)
class LowbitType:
    name: str  # the GGUF/ggml type name, upper case in Python, lower case in ggml's type table
    type_id: int
    method: str
    block_size: int  # weights per block
    type_size: int  # bytes per block
    num_codebooks: int  # AQLM: M codes per block
    code_bits: int  # AQLM: B bits per code (8 or 16), 2^B codewords per codebook
    sides: tuple[str, ...]
    description: str

    @property
    def codebook_size(self) -> int:
        return 2**self.code_bits

    @property
    def ggml_enum(self) -> str:
        return f"GGML_TYPE_LOWBIT_{self.name}"

    def side_shapes(self, d_out: int, d_in: int, n_salient: int = 0) -> dict[str, tuple[int, ...]]:
        """numpy shapes of the side tensors of a [d_out, d_in] weight (ggml's ne is the reverse);
        PTQ1.61's depend on its number of salient input channels."""
        if self.method == "ptq161":
            return {SALIENT_MASK: (d_in // 8,), SALIENT_SPILL: (d_out, 3 * n_salient // 8),
                    ROW_PARAMS: (d_out, N_ROW_PARAMS), COL_SCALE: (d_in,)}
        return {CODEBOOK: (self.num_codebooks, self.codebook_size, self.block_size), ROW_SCALE: (d_out,)}


def _aqlm(name: str, type_id: int, m: int, b: int) -> LowbitType:
    return LowbitType(name=name, type_id=type_id, method="aqlm", block_size=8, type_size=m * b // 8,
                      num_codebooks=m, code_bits=b, sides=(CODEBOOK, ROW_SCALE),
                      description=f"AQLM {m}x{b}: 8 weights = sum of {m} codeword(s), one per f16 codebook of "
                                  f"{2**b}, times an f16 row scale")


# PTQ1.61's weight row holds one bit per input channel, in gathered order (salient channels first, then
# the rest, each ascending): the sign bits of the binarized channels, then the first n_salient / 8 bytes
# of the salient channels' 4-bit codes; their other 3 * n_salient / 8 bytes spill into a side tensor.
PTQ161 = LowbitType(name="PTQ161", type_id=FIRST_ID + 10, method="ptq161", block_size=8, type_size=1,
                    num_codebooks=0, code_bits=0, sides=(SALIENT_MASK, SALIENT_SPILL, ROW_PARAMS, COL_SCALE),
                    description="PTQ1.61: salient input channels 4-bit per row, the rest signs with row and "
                                "column scales; 1 bit per weight here, 3 more per salient weight in a side tensor")

LOWBIT_TYPES: tuple[LowbitType, ...] = (
    _aqlm("AQLM_1X16", FIRST_ID + 0, 1, 16),
    _aqlm("AQLM_2X8", FIRST_ID + 1, 2, 8),
    _aqlm("AQLM_1X8", FIRST_ID + 2, 1, 8),
    PTQ161,
)
BY_NAME = {t.name: t for t in LOWBIT_TYPES}
BY_ID = {t.type_id: t for t in LOWBIT_TYPES}


def aqlm_type(num_codebooks: int, code_bits: int, group_size: int) -> LowbitType:
    """The GGUF type for an AQLM config, or a ValueError naming the configs that have one."""
    for t in LOWBIT_TYPES:
        if (t.method, t.num_codebooks, t.code_bits, t.block_size) == ("aqlm", num_codebooks, code_bits, group_size):
            return t
    have = ", ".join(f"{t.num_codebooks}x{t.code_bits}" for t in LOWBIT_TYPES if t.method == "aqlm")
    raise ValueError(f"AQLM {num_codebooks}x{code_bits} with groups of {group_size} has no GGUF type; "
                     f"the runtime runs {have} with groups of 8")


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


def render_table() -> str:
    """The per-type parameters the C code reads (ggml-lowbit.c)."""
    lines = [_HEADER, "#pragma once\n\n", '#include "ggml-lowbit.h"\n\n',
             "static const struct ggml_lowbit_type_info ggml_lowbit_type_table[] = {\n"]
    for t in LOWBIT_TYPES:
        sides = ", ".join(f'"{s}"' for s in t.sides)
        lines.append(
            f'    {{ {t.ggml_enum}, "{t.name.lower()}", GGML_LOWBIT_METHOD_{t.method.upper()}, '
            f"{t.block_size}, {t.type_size}, {t.num_codebooks}, {t.code_bits}, {len(t.sides)}, {{ {sides} }} }},\n")
    lines.append("};\n")
    return "".join(lines)


GENERATED = {
    "ggml/include/ggml-lowbit-types.inc": render_enum,
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


