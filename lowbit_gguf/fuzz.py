"""Fuzzing the patched runtime with malformed GGUF files: small valid files of every lowbit type, changed one way
each (header counts, dims, type ids, offsets, truncation, side tensors, codes, NaN and Inf, metadata) plus crafted
cases, each loaded and run through the runtime in a child process. A case passes when the runtime either runs it or
refuses it with an error; a signal, a hang or a sanitizer report is a failure. The Python readers (`inspect`, the
writer's reader) get every case too and must read it or raise BadGGUF.

The cases are written by hand-rolled GGUF serialisation (GGUFImage): gguf's writer refuses most malformed files,
which is what a fuzzer must write.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lowbit_gguf.errors import BadGGUF, LowbitError

GGUF_MAGIC = b"GGUF"
# gguf value type ids (GGUFValueType)
U32, I32, F32, STRING, ARRAY, U64 = 4, 5, 6, 8, 9, 10
F32_TYPE, F16_TYPE, I32_TYPE = 0, 1, 26

# the small model every seed file holds: one Llama block, no tokenizer (token ids only)
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 128, 256, 4, 2, 32
LINEAR = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN // HEADS * KV_HEADS, HIDDEN),
          "attn_v": (HIDDEN // HEADS * KV_HEADS, HIDDEN), "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN),
          "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}  # name -> (d_out, d_in)
PROMPT_TOKENS = 12  # the second evaluation takes the prompt path (the first, 2 tokens, the decode one)


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_pair(key: str, vtype: int, value) -> bytes:
    """One metadata pair as a GGUF file stores it (scalars and strings)."""
    if vtype == STRING:
        return _string(key) + struct.pack("<I", vtype) + _string(value)
    fmt = {U32: "<I", I32: "<i", F32: "<f", U64: "<Q"}[vtype]
    return _string(key) + struct.pack("<I", vtype) + struct.pack(fmt, value)


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
            out += _string(t.name) + struct.pack("<I", len(t.ne))
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

def _f32(a) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def _lowbit_tensors(stem: str, lowbit_type, d_out: int, d_in: int, seed: int) -> list[TensorImage]:
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
    kv = [("general.architecture", kv_pair("general.architecture", STRING, "llama")),
          ("general.alignment", kv_pair("general.alignment", U32, 32))]
    for key, vtype, value in (("context_length", U32, 256), ("embedding_length", U32, HIDDEN),
                              ("block_count", U32, 1), ("feed_forward_length", U32, FFN),
                              ("attention.head_count", U32, HEADS), ("attention.head_count_kv", U32, KV_HEADS),
                              ("attention.layer_norm_rms_epsilon", F32, 1e-5), ("rope.freq_base", F32, 10000.0),
                              ("vocab_size", U32, VOCAB)):
        kv.append((f"llama.{key}", kv_pair(f"llama.{key}", vtype, value)))
    kv.append(("tokenizer.ggml.model", kv_pair("tokenizer.ggml.model", STRING, "none")))
    tensors = [TensorImage("token_embd.weight", F32_TYPE, [HIDDEN, VOCAB], _f32(rng.normal(size=(VOCAB, HIDDEN)))),
               TensorImage("output_norm.weight", F32_TYPE, [HIDDEN], _f32(rng.uniform(0.5, 1.5, HIDDEN))),
               TensorImage("output.weight", F32_TYPE, [HIDDEN, VOCAB], _f32(0.1 * rng.normal(size=(VOCAB, HIDDEN)))),
               TensorImage("blk.0.attn_norm.weight", F32_TYPE, [HIDDEN], _f32(rng.uniform(0.5, 1.5, HIDDEN))),
               TensorImage("blk.0.ffn_norm.weight", F32_TYPE, [HIDDEN], _f32(rng.uniform(0.5, 1.5, HIDDEN)))]
    for i, (name, (d_out, d_in)) in enumerate(LINEAR.items()):
        tensors += _lowbit_tensors(f"blk.0.{name}", lowbit_type, d_out, d_in, seed + i)
    return GGUFImage(kv, tensors)


# ---- mutations: each takes a seed image and an rng, and gives (what changed, image) ----

POW = [0, 1, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]


def _lowbit_names(image: GGUFImage) -> list[str]:
    from lowbit_gguf.gguf.types import BY_ID

    return [t.name for t in image.tensors if t.type_id in BY_ID]


def _pick_tensor(image: GGUFImage, rng: random.Random) -> int:
    """A tensor index, half the time a lowbit weight or one of its sides."""
    if rng.random() < 0.5:
        stems = {n.removesuffix(".weight") for n in _lowbit_names(image)}
        choices = [i for i, t in enumerate(image.tensors) if t.name.rsplit(".", 1)[0] in stems]
        return rng.choice(choices)
    return rng.randrange(len(image.tensors))


def mutate_header(image: GGUFImage, rng: random.Random):
    out = image.copy()
    what = rng.choice(["n_tensors", "n_kv", "version", "magic", "alignment"])
    if what == "n_tensors":
        out.n_tensors = rng.choice([len(image.tensors) - 1, len(image.tensors) + 1, 0] + POW[3:])
        return f"tensor count {out.n_tensors}", out
    if what == "n_kv":
        out.n_kv = rng.choice([len(image.kv) - 1, len(image.kv) + 1, 0] + POW[3:])
        return f"kv count {out.n_kv}", out
    if what == "version":
        out.version = rng.choice([0, 1, 2, 4, 2**31])
        return f"version {out.version}", out
    if what == "magic":
        out.magic = b"GGUG"
        return "magic", out
    value = rng.choice([0, 1, 3, 2**31])
    out.kv = [(k, kv_pair(k, U32, value) if k == "general.alignment" else pair) for k, pair in out.kv]
    return f"alignment {value}", out


def mutate_dims(image: GGUFImage, rng: random.Random):
    out = image.copy()
    t = out.tensors[_pick_tensor(out, rng)]
    if rng.random() < 0.2:
        n = rng.choice([0, 1, 3, 5, 255])
        t.ne = (t.ne + [1] * n)[:n]
        return f"{t.name} n_dims {n}", out
    k = rng.randrange(len(t.ne) + 1) if len(t.ne) < 4 else rng.randrange(4)
    if k == len(t.ne):
        t.ne.append(1)
    old = t.ne[k]
    t.ne[k] = rng.choice([0, 1, old - 1, old + 1, 2 * old, old // 2, 2**32 + old] + POW[3:])
    return f"{t.name} ne[{k}] {old} -> {t.ne[k]}", out


def mutate_type(image: GGUFImage, rng: random.Random):
    from lowbit_gguf.gguf.types import LOWBIT_TYPES

    out = image.copy()
    t = out.tensors[_pick_tensor(out, rng)]
    old = t.type_id
    t.type_id = rng.choice([x.type_id for x in LOWBIT_TYPES] + [0, 1, 8, 24, 26, 30, 43, 199, 225, 255, 2**31])
    return f"{t.name} type {old} -> {t.type_id}", out


def mutate_offset(image: GGUFImage, rng: random.Random):
    out = image.copy()
    i = _pick_tensor(out, rng)
    start = sum(-(-len(t.data) // out.alignment) * out.alignment for t in out.tensors[:i])
    total = sum(-(-len(t.data) // out.alignment) * out.alignment for t in out.tensors)
    out.offsets[i] = rng.choice([start + 1, start + out.alignment, start - out.alignment, 0, total,
                                 total - out.alignment, 2**40, 2**63, 2**64 - out.alignment])
    return f"{out.tensors[i].name} offset {start} -> {out.offsets[i]}", out


def mutate_truncate(image: GGUFImage, rng: random.Random):
    data = image.to_bytes()
    cut = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 4096)), len(data) - 1])
    return f"cut at byte {cut} of {len(data)}", data[:cut]


def _side_names(image: GGUFImage, weight: str) -> list[str]:
    from lowbit_gguf.gguf.types import BY_ID

    stem = weight.removesuffix(".weight")
    return [f"{stem}.{s}" for s in BY_ID[image.tensor(weight).type_id].sides]


def _in_other_float_type(t: TensorImage) -> bytes:
    """The tensor's values as F32 (from F16 or I8) or F16 (from F32): what a side retyped to that type holds."""
    if t.type_id == F16_TYPE:
        return np.frombuffer(t.data, np.float16).astype(np.float32).tobytes()
    if t.type_id == F32_TYPE:
        return np.frombuffer(t.data, np.float32).astype(np.float16).tobytes()
    return np.frombuffer(t.data, np.int8).astype(np.float32).tobytes()


def mutate_sides(image: GGUFImage, rng: random.Random):
    out = image.copy()
    weights = _lowbit_names(out)
    weight = rng.choice(weights)
    name = rng.choice(_side_names(out, weight))
    t = out.tensor(name)
    action = rng.choice(["drop", "retype", "reshape", "zero", "duplicate", "swap", "extra dim"])
    if action == "drop":
        out.tensors.remove(t)
    elif action == "retype":  # the same values in another float type (or bytes as f32): sizes agree
        t.data = _in_other_float_type(t)
        t.type_id = F16_TYPE if t.type_id == F32_TYPE else F32_TYPE
    elif action == "reshape":  # the axes reversed (same bytes), or one entry fewer along the first
        if len(t.ne) > 1 and t.ne[0] != t.ne[-1] and rng.random() < 0.5:
            t.ne = list(reversed(t.ne))
        else:
            t.data = t.data[:len(t.data) // t.ne[0] * (t.ne[0] - 1)]
            t.ne[0] -= 1
    elif action == "zero":
        t.ne[rng.randrange(len(t.ne))] = 0
        t.data = b""
    elif action == "duplicate":
        out.tensors.append(replace(t, ne=list(t.ne)))
    elif action == "swap":  # the same side of another weight, of another shape where the model has one
        other = out.tensor(name.replace(weight.removesuffix(".weight"), rng.choice(weights).removesuffix(".weight")))
        t.ne, t.data, t.type_id = list(other.ne), other.data, other.type_id
    else:
        t.ne = t.ne + [2]
        t.data = t.data * 2
    return f"{name} {action}", out


def mutate_codes(image: GGUFImage, rng: random.Random):
    out = image.copy()
    t = out.tensor(rng.choice(_lowbit_names(out)))
    fill = rng.choice(["ff", "00", "random"])
    t.data = bytes(rng.getrandbits(8) for _ in t.data) if fill == "random" else bytes.fromhex(fill) * len(t.data)
    return f"{t.name} codes {fill}", out


def mutate_values(image: GGUFImage, rng: random.Random):
    out = image.copy()
    floats = [t for t in out.tensors if t.type_id in (F32_TYPE, F16_TYPE)]
    t = rng.choice(floats)
    dtype = np.float32 if t.type_id == F32_TYPE else np.float16
    values = np.frombuffer(t.data, dtype).copy()
    special = rng.choice([np.nan, np.inf, -np.inf, 6e4 if dtype == np.float16 else 3e38])
    where = rng.choice(["one", "all"])
    if where == "one":
        values[rng.randrange(len(values))] = special
    else:
        values[:] = special
    t.data = values.astype(dtype).tobytes()
    return f"{t.name} {where} {special}", out


def mutate_metadata(image: GGUFImage, rng: random.Random):
    out = image.copy()
    i = rng.randrange(len(out.kv))
    key, pair = out.kv[i]
    head = 8 + len(key.encode())
    vtype = struct.unpack_from("<I", pair, head)[0]
    action = rng.choice(["value", "value", "value", "drop", "vtype"])
    if action == "drop":
        del out.kv[i]
        return f"{key} dropped", out
    if action == "vtype":
        new = rng.choice([U32, F32, STRING, ARRAY, 99])
        out.kv[i] = (key, pair[:head] + struct.pack("<I", new) + pair[head + 4:])
        return f"{key} value type {vtype} -> {new}", out
    if vtype in (U32, I32):
        value = rng.choice([0, 1, 2, 7, 2**16, 2**31 - 1, 2**31, 2**32 - 1])
        out.kv[i] = (key, pair[:head + 4] + struct.pack("<I", value))
    elif vtype == F32:
        value = rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e30])
        out.kv[i] = (key, pair[:head + 4] + struct.pack("<f", value))
    elif vtype == STRING:
        value = rng.choice(["", "x" * 300, "gpt2", "llama", "qwen2", "none\0"])
        out.kv[i] = (key, pair[:head + 4] + _string(value))
    else:
        value = rng.choice([0, 2**40, 2**63])  # an array's or string's length
        out.kv[i] = (key, pair[:head + 4] + struct.pack("<Q", value) + pair[head + 12:])
    return f"{key} = {value!r}", out


MUTATIONS: dict[str, Callable] = {
    "header": mutate_header, "dims": mutate_dims, "type": mutate_type, "offset": mutate_offset,
    "truncate": mutate_truncate, "sides": mutate_sides, "codes": mutate_codes, "values": mutate_values,
    "metadata": mutate_metadata,
}


# ---- crafted cases: the ones found crashing before the loader and the CPU backend checked them ----

def _with_kv(image: GGUFImage, key: str, vtype: int, value) -> GGUFImage:
    out = image.copy()
    out.kv = [(k, p) for k, p in out.kv if k != key] + [(key, kv_pair(key, vtype, value))]
    return out


def crafted_cases(seeds: dict[str, GGUFImage]) -> Iterator[tuple[str, GGUFImage | bytes, GGUFImage | None]]:
    """(what, model, LoRA adapter or None)."""
    from lowbit_gguf.gguf.types import BY_NAME

    aqlm = seeds.get("AQLM_2X8")
    ptq = seeds.get("PTQ161")
    if aqlm is not None:
        for side, k in (("codebook", 2), ("row_scale", 0)):
            out = aqlm.copy()
            t = out.tensor(f"blk.0.attn_q.{side}")
            t.ne[k], t.data = 0, b""
            yield f"zero-sized side blk.0.attn_q.{side}", out, None
        for stem, ne in (("token_embd", [HIDDEN, VOCAB]), ("output_norm", [HIDDEN]), ("blk.0.attn_norm", [HIDDEN])):
            out = aqlm.copy()
            d_out = ne[1] if len(ne) > 1 else 8
            lowbit = _lowbit_tensors(stem, BY_NAME["AQLM_2X8"], d_out, HIDDEN, 99)
            if len(ne) == 1:  # a norm's one row (codes of d_out 8 rows cut to one)
                lowbit[0] = replace(lowbit[0], ne=ne, data=lowbit[0].data[:len(lowbit[0].data) // d_out])
                lowbit[2] = replace(lowbit[2], ne=[1], data=lowbit[2].data[:2])
            out.tensors = [t for t in out.tensors if t.name != f"{stem}.weight"] + lowbit
            yield f"lowbit type on {stem}.weight", out, None
        # one expert: MUL_MAT_ID weights in a lowbit type
        out = _with_kv(_with_kv(aqlm, "llama.expert_count", U32, 1), "llama.expert_used_count", U32, 1)
        out.tensors = [t for t in out.tensors if not t.name.startswith(("blk.0.ffn_gate", "blk.0.ffn_up",
                                                                         "blk.0.ffn_down"))]
        out.tensors.append(TensorImage("blk.0.ffn_gate_inp.weight", F32_TYPE, [HIDDEN, 1], _f32(np.ones(HIDDEN))))
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            d_out, d_in = LINEAR[name]
            for t in _lowbit_tensors(f"blk.0.{name}_exps", BY_NAME["AQLM_2X8"], d_out, d_in, 7):
                out.tensors.append(replace(t, ne=t.ne + [1]) if t.name.endswith(".weight") else t)
        yield "one expert in a lowbit type", out, None
        # a LoRA adapter whose lora_a is a lowbit type
        adapter = GGUFImage([("general.architecture", kv_pair("general.architecture", STRING, "llama")),
                             ("general.type", kv_pair("general.type", STRING, "adapter")),
                             ("adapter.type", kv_pair("adapter.type", STRING, "lora")),
                             ("adapter.lora.alpha", kv_pair("adapter.lora.alpha", F32, 8.0))], [])
        lora_a = _lowbit_tensors("blk.0.attn_q.weight.lora_a", BY_NAME["AQLM_2X8"], 8, HIDDEN, 5)[0]
        adapter.tensors.append(replace(lora_a, name="blk.0.attn_q.weight.lora_a"))  # an adapter has no side names
        adapter.tensors.append(TensorImage("blk.0.attn_q.weight.lora_b", F32_TYPE, [8, HIDDEN],
                                           _f32(np.full((HIDDEN, 8), 0.01))))
        yield "LoRA adapter with a lowbit lora_a", aqlm, adapter
        for value in (0, 2**31, 2**32 - 1):
            yield f"llama.block_count {value}", _with_kv(aqlm, "llama.block_count", U32, value), None
        # integer types of llama.cpp's own on a norm (no element-wise kernel), a matmul weight (no dot product) and the
        # embeddings (integer activations)
        for name in ("blk.0.ffn_norm.weight", "output.weight", "token_embd.weight"):
            out = aqlm.copy()
            out.tensor(name).type_id = I32_TYPE  # the same bytes as F32
            yield f"I32 type on {name}", out, None
    if ptq is not None:  # a spill of zero width with an empty mask: a PTQ1.61 weight with no salient channel
        out = ptq.copy()
        mask, spill = out.tensor("blk.0.attn_q.salient_mask"), out.tensor("blk.0.attn_q.salient_spill")
        mask.data = bytes(len(mask.data))
        spill.ne[0], spill.data = 0, b""
        yield "PTQ1.61 empty salient set", out, None


# ---- running cases ----

@dataclass
class Outcome:
    kind: str  # ran, refused, crash, hang, error, sanitizer
    detail: str = ""
    python: str = "ok"  # the Python readers: ok, refused, or the exception they raised

    @property
    def failed(self) -> bool:
        return self.kind in ("crash", "hang", "error", "sanitizer") or self.python not in ("ok", "refused")


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: UndefinedBehavior")


def _child(path: Path, adapter: Path | None) -> tuple[str, str]:
    from lowbit_gguf.runtime.library import Model

    try:
        model = Model(path, n_ctx=64, n_threads=1)
    except BadGGUF as exc:
        return "refused", str(exc)
    with model:
        try:
            if adapter is not None:
                model.load_lora(adapter)
            model.eval([1, 2])
            model.eval(list(range(1, PROMPT_TOKENS + 1)), pos0=2)
        except LowbitError as exc:
            return "refused", str(exc)
    return "ran", ""


def run_case(path: Path, adapter: Path | None = None, timeout: float = 30.0, sanitize: bool = False) -> Outcome:
    """Read one file with the Python readers, then load and run it through the runtime, in a forked child (the
    runtime already loaded in this process)."""
    log = path.with_suffix(".stderr")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its stderr (llama.cpp's and a sanitizer's reports) to the log
        try:
            os.close(read_end)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort's gdb backtrace takes seconds per case
            if not sanitize:  # a sanitizer reserves terabytes of address space; elsewhere cap what a case takes
                resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
            python = check_python_readers(path)
            try:
                kind, detail = _child(path, adapter)
            except BaseException as exc:  # noqa: BLE001 (reported to the parent, which classifies it)
                kind, detail = "error", f"{type(exc).__name__}: {exc}"
            os.write(write_end, json.dumps([kind, detail[:2000], python]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], timeout)
    message = os.read(read_end, 65536) if ready else b""
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    report = log.read_text(errors="replace") if log.exists() else ""
    marks = [line for line in report.splitlines() if any(m in line for m in SANITIZER_MARKS)]
    if not ready:
        return Outcome("hang", f"no answer in {timeout:.0f} s")
    if os.WIFSIGNALED(status):
        tail = " | ".join(report.strip().splitlines()[-3:])
        return Outcome("crash", f"{signal.Signals(os.WTERMSIG(status)).name}: {tail}")
    if marks:
        return Outcome("sanitizer", marks[0])
    kind, detail, python = json.loads(message) if message else ("crash", "no answer", "ok")
    return Outcome(kind, detail, python)


def check_python_readers(path: Path) -> str:
    """What `lowbit-gguf inspect` and the writer's reader make of a file: ok, refused, or the exception."""
    from lowbit_gguf.gguf.inspect import read_lowbit_weights, read_summary

    try:
        read_summary(path)
        read_lowbit_weights(path)
    except BadGGUF:
        return "refused"
    except Exception as exc:  # noqa: BLE001 (the failure this check exists to find)
        return f"{type(exc).__name__}: {exc}"[:300]
    return "ok"


@dataclass
class Report:
    outcomes: Counter = field(default_factory=Counter)  # (class, kind) -> count
    failures: list[tuple[str, str, Outcome]] = field(default_factory=list)
    n_cases: int = 0
    seconds: float = 0.0

    def add(self, kind: str, what: str, outcome: Outcome) -> None:
        self.n_cases += 1
        self.outcomes[(kind, outcome.kind)] += 1
        if outcome.python != "ok":
            self.outcomes[(kind, f"python {outcome.python if outcome.python == 'refused' else 'error'}")] += 1
        if outcome.failed:
            self.failures.append((kind, what, outcome))

    def table(self) -> str:
        kinds = sorted({k for _, k in self.outcomes})
        classes = list(dict.fromkeys(c for c, _ in self.outcomes))
        lines = ["| class | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(str(self.outcomes.get((c, k), 0)) for k in kinds) + " |")
        return "\n".join(lines)


def fuzz(n_cases: int | None = None, minutes: float | None = None, seed: int = 0, sanitize: bool = False,
         crafted: bool = True, timeout: float = 30.0, workdir: Path | None = None,
         progress: Callable[[str], None] | None = None) -> Report:
    """Run the crafted cases, then mutated cases (round robin over the classes and the seed types) until n_cases
    of them have run or minutes have passed. Deterministic for a seed (the order of the cases, not the timing)."""
    from lowbit_gguf.gguf.types import LOWBIT_TYPES
    from lowbit_gguf.runtime.build import BuildOptions
    from lowbit_gguf.runtime.library import load_library

    load_library(BuildOptions(sanitize="address") if sanitize else BuildOptions())  # before forking
    rng = random.Random(seed)
    seeds = {t.name: seed_image(t, seed) for t in LOWBIT_TYPES}
    report = Report()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)

        def run(kind: str, what: str, model: GGUFImage | bytes, adapter: GGUFImage | None = None) -> None:
            path = folder / f"case{report.n_cases}.gguf"
            path.write_bytes(model if isinstance(model, bytes) else model.to_bytes())
            adapter_path = None
            if adapter is not None:
                adapter_path = folder / f"case{report.n_cases}-adapter.gguf"
                adapter_path.write_bytes(adapter.to_bytes())
            outcome = run_case(path, adapter_path, timeout, sanitize)
            report.add(kind, what, outcome)
            if progress is not None and outcome.failed:
                progress(f"FAILED {kind}: {what}: {outcome.kind} {outcome.detail} (python: {outcome.python})")
            for p in folder.iterdir():
                p.unlink()

        for name, image in seeds.items():  # every seed runs, or the cases built on it test nothing
            run("seed", name, image)
        if crafted:
            for what, model, adapter in crafted_cases(seeds):
                run("crafted", what, model, adapter)
        classes = list(MUTATIONS.items())
        names = list(seeds)
        i = 0
        while (n_cases is None or i < n_cases) and (minutes is None or time.monotonic() - start < 60 * minutes):
            kind, mutate = classes[i % len(classes)]
            base = seeds[names[(i // len(classes)) % len(names)]]
            what, model = mutate(base, rng)
            run(kind, f"{names[(i // len(classes)) % len(names)]}: {what}", model)
            i += 1
            if progress is not None and i % 100 == 0:
                progress(f"{i} cases, {len(report.failures)} failures, {time.monotonic() - start:.0f} s")
    report.seconds = time.monotonic() - start
    return report


def _sanitizer_environment() -> dict[str, str] | None:
    """The environment that loads the sanitized runtime into a Python that is not itself built with ASan (the ASan
    runtime preloaded), or None when this process already has it."""
    import subprocess

    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return None
    # libstdc++ too, so ASan's interceptor of C++ throws finds the real one (Python does not link libstdc++)
    libs = [subprocess.run(["cc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
            for name in ("libasan.so", "libstdc++.so.6")]
    if not all(os.path.isabs(lib) for lib in libs):
        raise LowbitError("the sanitized runs need the compiler's libasan.so and libstdc++.so.6 (gcc)")
    return {**os.environ, "LD_PRELOAD": " ".join(libs),
            # Python's own allocations are not leaks to report; a case may ask for absurd sizes, which must fail
            "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1"}


def main(argv: list[str] | None = None, doc: str | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=None, help="mutated cases to run (default: until --minutes)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default: 5 without --cases)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take before it counts as a hang")
    parser.add_argument("--sanitize", action="store_true",
                        help="run through the ASan/UBSan build (`lowbit-gguf runtime build --sanitize address`)")
    args = parser.parse_args(argv)
    if args.sanitize:
        env = _sanitizer_environment()
        if env is not None:  # again, with the sanitizer runtime loaded first
            argv = sys.argv[1:] if argv is None else argv
            os.execve(sys.executable, [sys.executable, "-m", "lowbit_gguf.fuzz", *argv], env)
    minutes = args.minutes if args.minutes is not None or args.cases is not None else 5.0
    report = fuzz(args.cases, minutes, args.seed, args.sanitize, timeout=args.timeout * (4 if args.sanitize else 1),
                  progress=lambda line: print(line, flush=True))
    print(report.table())
    print(f"{report.n_cases} cases in {report.seconds:.0f} s ({'sanitized build' if args.sanitize else 'default build'}, "
          f"seed {args.seed}): {len(report.failures)} failures")
    for kind, what, outcome in report.failures:
        print(f"  {kind}: {what}: {outcome.kind} {outcome.detail} (python readers: {outcome.python})")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
