"""The mutation classes (each changes a seed image one way) and the crafted cases."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from lowbit_gguf.fuzz.image import (HIDDEN, LINEAR, VOCAB, GGUFImage, TensorImage, f32_bytes, gguf_string, kv_pair,
                                    lowbit_tensors)

# each mutation takes a seed image and an rng, and gives (what changed, image)

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
    out.kv = [(k, kv_pair(k, GGUFValueType.UINT32, value) if k == "general.alignment" else pair) for k, pair in out.kv]
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
    if t.type_id == GGMLQuantizationType.F16:
        return np.frombuffer(t.data, np.float16).astype(np.float32).tobytes()
    if t.type_id == GGMLQuantizationType.F32:
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
        t.type_id = GGMLQuantizationType.F16 if t.type_id == GGMLQuantizationType.F32 else GGMLQuantizationType.F32
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
    floats = [t for t in out.tensors if t.type_id in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)]
    t = rng.choice(floats)
    dtype = np.float32 if t.type_id == GGMLQuantizationType.F32 else np.float16
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
        new = rng.choice([GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING, GGUFValueType.ARRAY, 99])
        out.kv[i] = (key, pair[:head] + struct.pack("<I", new) + pair[head + 4:])
        return f"{key} value type {vtype} -> {new}", out
    if vtype in (GGUFValueType.UINT32, GGUFValueType.INT32):
        value = rng.choice([0, 1, 2, 7, 2**16, 2**31 - 1, 2**31, 2**32 - 1])
        out.kv[i] = (key, pair[:head + 4] + struct.pack("<I", value))
    elif vtype == GGUFValueType.FLOAT32:
        value = rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e30])
        out.kv[i] = (key, pair[:head + 4] + struct.pack("<f", value))
    elif vtype == GGUFValueType.STRING:
        value = rng.choice(["", "x" * 300, "gpt2", "llama", "qwen2", "none\0"])
        out.kv[i] = (key, pair[:head + 4] + gguf_string(value))
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
            lowbit = lowbit_tensors(stem, BY_NAME["AQLM_2X8"], d_out, HIDDEN, 99)
            if len(ne) == 1:  # a norm's one row (codes of d_out 8 rows cut to one)
                lowbit[0] = replace(lowbit[0], ne=ne, data=lowbit[0].data[:len(lowbit[0].data) // d_out])
                lowbit[2] = replace(lowbit[2], ne=[1], data=lowbit[2].data[:2])
            out.tensors = [t for t in out.tensors if t.name != f"{stem}.weight"] + lowbit
            yield f"lowbit type on {stem}.weight", out, None
        # one expert: MUL_MAT_ID weights in a lowbit type
        out = _with_kv(_with_kv(aqlm, "llama.expert_count", GGUFValueType.UINT32, 1),
                       "llama.expert_used_count", GGUFValueType.UINT32, 1)
        out.tensors = [t for t in out.tensors if not t.name.startswith(("blk.0.ffn_gate", "blk.0.ffn_up",
                                                                         "blk.0.ffn_down"))]
        out.tensors.append(TensorImage("blk.0.ffn_gate_inp.weight", GGMLQuantizationType.F32, [HIDDEN, 1],
                                       f32_bytes(np.ones(HIDDEN))))
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            d_out, d_in = LINEAR[name]
            for t in lowbit_tensors(f"blk.0.{name}_exps", BY_NAME["AQLM_2X8"], d_out, d_in, 7):
                out.tensors.append(replace(t, ne=t.ne + [1]) if t.name.endswith(".weight") else t)
        yield "one expert in a lowbit type", out, None
        # a LoRA adapter whose lora_a is a lowbit type
        adapter = GGUFImage([("general.architecture", kv_pair("general.architecture", GGUFValueType.STRING, "llama")),
                             ("general.type", kv_pair("general.type", GGUFValueType.STRING, "adapter")),
                             ("adapter.type", kv_pair("adapter.type", GGUFValueType.STRING, "lora")),
                             ("adapter.lora.alpha", kv_pair("adapter.lora.alpha", GGUFValueType.FLOAT32, 8.0))], [])
        lora_a = lowbit_tensors("blk.0.attn_q.weight.lora_a", BY_NAME["AQLM_2X8"], 8, HIDDEN, 5)[0]
        adapter.tensors.append(replace(lora_a, name="blk.0.attn_q.weight.lora_a"))  # an adapter has no side names
        adapter.tensors.append(TensorImage("blk.0.attn_q.weight.lora_b", GGMLQuantizationType.F32, [8, HIDDEN],
                                           f32_bytes(np.full((HIDDEN, 8), 0.01))))
        yield "LoRA adapter with a lowbit lora_a", aqlm, adapter
        for value in (0, 2**31, 2**32 - 1):
            yield f"llama.block_count {value}", _with_kv(aqlm, "llama.block_count", GGUFValueType.UINT32, value), None
        # integer types of llama.cpp's own on a norm (no element-wise kernel), a matmul weight (no dot product) and the
        # embeddings (integer activations)
        for name in ("blk.0.ffn_norm.weight", "output.weight", "token_embd.weight"):
            out = aqlm.copy()
            out.tensor(name).type_id = GGMLQuantizationType.I32  # the same bytes as F32
            yield f"I32 type on {name}", out, None
    if ptq is not None:  # a spill of zero width with an empty mask: a PTQ1.61 weight with no salient channel
        out = ptq.copy()
        mask, spill = out.tensor("blk.0.attn_q.salient_mask"), out.tensor("blk.0.attn_q.salient_spill")
        mask.data = bytes(len(mask.data))
        spill.ne[0], spill.data = 0, b""
        yield "PTQ1.61 empty salient set", out, None
