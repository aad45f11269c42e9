"""Nearest-codeword search shared by the quantizers (k-means assignments, AQLM's one-codebook code search).

For each row q of queries [n, g] and a codebook [K, g] it returns min over codewords c of norms[c] - 2 q.c and
the codeword's index; with norms = |c|^2 that is the nearest codeword. torch has no fused form of it: scoring
through a matmul writes an [n, K] matrix, too large for k-means over FFN weights with 1x16's 65,536 codewords,
and faiss's exact search and a torch.compile'd loop are slower at g = 8 than the small C kernel beside this file
(nearest.c; figures in docs/results.md), which the system C compiler builds for this machine at first use (cached
under the lowbit-gguf cache, a fraction of a second) and cffi loads. Rows are split over torch's thread count;
cffi releases the GIL during each call.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lowbit_gguf.cache import cache_root, compile_shared_library, machine_description

SOURCE = Path(__file__).with_name("nearest.c")
# the min over a block vectorises only when the compiler may ignore NaN and the sign of zero: inputs are finite
FLAGS = ["-O3", "-march=native", "-ffinite-math-only", "-fno-signed-zeros", "-fno-trapping-math",
         "-std=c11", "-Wall", "-Werror", "-shared", "-fPIC"]
DECLARATION = """void lowbit_nearest_codewords(const float * queries, int64_t n, int64_t g, const float * codebook_t,
                              const float * norms, int64_t K, float * values, int64_t * indices);"""
MIN_ROWS_PER_THREAD = 64

_library = None


def _compiled_library():
    global _library
    if _library is None:
        import cffi

        key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + machine_description().encode())
        path = cache_root() / "kernels" / f"nearest-{key.hexdigest()[:16]}.so"
        if not path.exists():
            compile_shared_library([os.environ.get("CC", "cc"), *FLAGS, str(SOURCE)], path,
                                   f"compiling the nearest-codeword kernel ({SOURCE}) failed; the quantizers need a "
                                   "C compiler (set CC to choose one)")
        ffi = cffi.FFI()
        ffi.cdef(DECLARATION)
        _library = (ffi, ffi.dlopen(str(path)))
    return _library


def nearest_by_matmul(queries: torch.Tensor, codebook: torch.Tensor,
                      norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nearest_codewords through matmul scores, in row chunks of at most 2^24 scores: for tensors on a GPU, where
    that is fast (the C kernel reads host memory)."""
    chunk = max(1, 2**24 // codebook.shape[0])
    parts = [torch.addmm(norms, queries[a : a + chunk], codebook.T, alpha=-2).min(1)
             for a in range(0, queries.shape[0], chunk)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def nearest_codewords(queries: torch.Tensor, codebook: torch.Tensor,
                      norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [n], indices [n]): for each row q of queries [n, g], min over rows c of codebook [K, g] of
    norms[c] - 2 q.c and the first index reaching it. All finite float32 (others are converted); on the
    device of queries."""
    n, g = queries.shape
    k = codebook.shape[0]
    if codebook.shape[1] != g or norms.shape != (k,):
        raise ValueError(f"queries {tuple(queries.shape)}, codebook {tuple(codebook.shape)} and norms "
                         f"{tuple(norms.shape)} do not match")
    if queries.device.type != "cpu":
        return nearest_by_matmul(queries.float(), codebook.float(), norms.float())
    ffi, lib = _compiled_library()
    queries = queries.detach().float().contiguous()
    table = codebook.detach().float().T.contiguous()  # [g, K]: the kernel's inner loop runs over codewords
    norms = norms.detach().float().contiguous()
    values, indices = torch.empty(n, device="cpu"), torch.empty(n, dtype=torch.int64, device="cpu")

    def pointer(t: torch.Tensor, row: int, kind: str):
        return ffi.cast(kind, t.data_ptr() + row * t.stride(0) * t.element_size())

    def run(rows: tuple[int, int]) -> None:
        a, b = rows
        lib.lowbit_nearest_codewords(pointer(queries, a, "float *"), b - a, g, pointer(table, 0, "float *"),
                                     pointer(norms, 0, "float *"), k, pointer(values, a, "float *"),
                                     pointer(indices, a, "int64_t *"))

    n_threads = max(1, min(torch.get_num_threads(), n // MIN_ROWS_PER_THREAD))
    bounds = [n * i // n_threads for i in range(n_threads + 1)]
    parts = list(zip(bounds[:-1], bounds[1:]))
    if n_threads == 1:
        run(parts[0])
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(run, parts))
    return values, indices
