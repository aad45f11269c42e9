"""Bit packing shared by the methods' GGUF layouts: indices of `bits` bits each as one little-endian bit stream per
row (index i at bits [i * bits, (i + 1) * bits), bit 0 of byte 0 first). Sign bits (1 bit), PTQ1.61's 4-bit codes
(low nibble first) and AQLM's 8- and 16-bit codes (little-endian bytes) are this layout at their widths, which the
C kernels read."""

from __future__ import annotations

import numpy as np


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., n * bits / 8] from integer indices [..., n] in [0, 2^bits); n * bits must fill whole bytes."""
    indices = np.asarray(indices)
    n = indices.shape[-1]
    if not 1 <= bits <= 32 or n * bits % 8:
        raise ValueError(f"{n} indices of {bits} bits do not fill whole bytes")
    values = indices.astype(np.uint64)
    if values.size and int(values.max()) >> bits:
        raise ValueError(f"an index does not fit in {bits} bits")
    if bits in (8, 16, 32):  # whole bytes: the little-endian integers themselves
        return np.ascontiguousarray(values.astype(f"<u{bits // 8}")).view(np.uint8).reshape(*indices.shape[:-1], -1)
    stream = (values[..., None] >> np.arange(bits, dtype=np.uint64)) & 1  # [..., n, bits], low bit first
    return np.packbits(stream.reshape(*indices.shape[:-1], n * bits).astype(np.uint8), axis=-1, bitorder="little")


def unpack_indices(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """int64 [..., n]: the inverse of pack_indices."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if bits in (8, 16, 32):
        return packed.view(f"<u{bits // 8}")[..., :n].astype(np.int64)
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[..., : n * bits]
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (stream.reshape(*packed.shape[:-1], n, bits).astype(np.int64) * weights).sum(-1)
