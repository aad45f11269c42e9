"""GGUF files as the parts a mutation changes (GGUFImage), written by hand: gguf's writer refuses most malformed
files, which is what a fuzzer must write. The seed files: one small Llama block per lowbit type."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"

# the small model every seed file holds: one Llama block, no tokenizer (token ids only)
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 128, 256, 4, 2, 32
LINEAR = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN // HEADS * KV_HEADS, HIDDEN),
          "attn_v": (HIDDEN // HEADS * KV_HEADS, HIDDEN), "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN),
          "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}  # name -> (d_out, d_in)
PROMPT_TOKENS = 12  # the second evaluation takes the prompt path (the first, 2 tokens, the decode one)


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_pair(key: str, vtype: int, value) -> bytes:
    """One metadata pair as a GGUF file stores it (scalars and strings)."""
    if vtype == GGUFValueType.STRING:
        return gguf_string(key) + struct.pack("<I", vtype) + gguf_string(value)
    fmt = {GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f",
           GGUFValueType.UINT64: "<Q"}[vtype]
    return gguf_string(key) + struct.pack("<I", vtype) + struct.pack(fmt, value)


@dataclass
class TensorImage:
    name: str
    type_id: int
    ne: list[int]  # ggml order
    data: bytes


@dataclass
class GGUFImage:
    """A GGUF file as the parts a mutation changes."""

    kv: list[tuple[str, bytes]]  # (key, the pair's bytes: key, value type, value)
    tensors: list[TensorImage]
    alignment: int = 32
    version: int = 3
    magic: bytes = GGUF_MAGIC
    n_tensors: int | None = None  # header counts, when they should lie
    n_kv: int | None = None
    offsets: dict[int, int] = field(default_factory=dict)  # tensor index -> data offset, when it should lie

    def tensor(self, name: str) -> TensorImage:
        return next(t for t in self.tensors if t.name == name)

    def copy(self) -> GGUFImage:
        return replace(self, kv=list(self.kv), tensors=[replace(t, ne=list(t.ne)) for t in self.tensors],
                       offsets=dict(self.offsets))

    def to_bytes(self) -> bytes:
        n_tensors = len(self.tensors) if self.n_tensors is None else self.n_tensors
        n_kv = len(self.kv) if self.n_kv is None else self.n_kv
        out = bytearray(self.magic + struct.pack("<IQQ", self.version, n_tensors % 2**64, n_kv % 2**64))
        for _, pair in self.kv:
            out += pair
        offset = 0
        for i, t in enumerate(self.tensors):
            out += gguf_string(t.name) + struct.pack("<I", len(t.ne))
            out += b"".join(struct.pack("<Q", d % 2**64) for d in t.ne)
            out += struct.pack("<IQ", t.type_id % 2**32, self.offsets.get(i, offset) % 2**64)
            offset += -(-len(t.data) // self.alignment) * self.alignment
        out += bytes(-len(out) % self.alignment)
        for t in self.tensors:
            out += t.data + bytes(-len(t.data) % self.alignment)
        return bytes(out)


def read_image(path: Path) -> GGUFImage:
    """The image of a well-formed file (gguf's reader parses it)."""
    import gguf

    from lowbit_gguf.gguf.types import register_with_gguf

    register_with_gguf()
    reader = gguf.GGUFReader(path)
    raw = path.read_bytes()
    kv = [(f.name, raw[f.offset:f.offset + sum(p.nbytes for p in f.parts)])
          for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    tensors = [TensorImage(t.name, int(t.tensor_type), [int(d) for d in t.shape],
                           raw[t.data_offset:t.data_offset + int(t.n_bytes)]) for t in reader.tensors]
    return GGUFImage(kv, tensors, int(reader.alignment))


# ---- seed files ----

def f32_bytes(a) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def lowbit_tensors(stem: str, lowbit_type, d_out: int, d_in: int, seed: int) -> list[TensorImage]:
    """A random weight of lowbit_type named stem.weight, and its side tensors."""
    import gguf

    from lowbit_gguf.random_weights import random_packed

    packed = random_packed(lowbit_type, d_out=d_out, d_in=d_in, seed=seed)
    out = [TensorImage(f"{stem}.weight", lowbit_type.type_id, [d_in, d_out], packed.codes.tobytes())]
    for spec in lowbit_type.side_specs:
        data = np.ascontiguousarray(packed.sides[spec.suffix])
        out.append(TensorImage(f"{stem}.{spec.suffix}", int(gguf.GGMLQuantizationType[spec.ggml_type]),
                               list(reversed(data.shape)), data.tobytes()))
    return out


def seed_image(lowbit_type, seed: int = 0) -> GGUFImage:
    """A one-block Llama (token ids only) whose seven linear weights are random weights of lowbit_type."""
    rng = np.random.default_rng(seed)
    u32, f32, string = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
    kv = [("general.architecture", kv_pair("general.architecture", string, "llama")),
          ("general.alignment", kv_pair("general.alignment", u32, 32))]
    for key, vtype, value in (("context_length", u32, 256), ("embedding_length", u32, HIDDEN),
                              ("block_count", u32, 1), ("feed_forward_length", u32, FFN),
                              ("attention.head_count", u32, HEADS), ("attention.head_count_kv", u32, KV_HEADS),
                              ("attention.layer_norm_rms_epsilon", f32, 1e-5), ("rope.freq_base", f32, 10000.0),
                              ("vocab_size", u32, VOCAB)):
        kv.append((f"llama.{key}", kv_pair(f"llama.{key}", vtype, value)))
    kv.append(("tokenizer.ggml.model", kv_pair("tokenizer.ggml.model", string, "none")))

    def f32_tensor(name: str, ne: list[int], values) -> TensorImage:
        return TensorImage(name, GGMLQuantizationType.F32, ne, f32_bytes(values))

    tensors = [f32_tensor("token_embd.weight", [HIDDEN, VOCAB], rng.normal(size=(VOCAB, HIDDEN))),
               f32_tensor("output_norm.weight", [HIDDEN], rng.uniform(0.5, 1.5, HIDDEN)),
               f32_tensor("output.weight", [HIDDEN, VOCAB], 0.1 * rng.normal(size=(VOCAB, HIDDEN))),
               f32_tensor("blk.0.attn_norm.weight", [HIDDEN], rng.uniform(0.5, 1.5, HIDDEN)),
               f32_tensor("blk.0.ffn_norm.weight", [HIDDEN], rng.uniform(0.5, 1.5, HIDDEN))]
    for i, (name, (d_out, d_in)) in enumerate(LINEAR.items()):
        tensors += lowbit_tensors(f"blk.0.{name}", lowbit_type, d_out, d_in, seed + i)
    return GGUFImage(kv, tensors)
