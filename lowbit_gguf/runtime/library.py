"""cffi bindings to the patched runtime: load a GGUF, tokenize, evaluate, generate, score perplexity.

The declarations are cbindings/lowbit_api.h itself; the library is the shim that `lowbit-gguf runtime
build` compiles next to the patched libllama. Nothing is compiled at import.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from cffi import FFI

from lowbit_gguf.errors import BadGGUF, LowbitError
from lowbit_gguf.runtime.build import BINDINGS_DIR, BuildOptions, find_build

EXPECTED_PATCH_TAG = "lowbit-gguf-1"


def _cdef_source() -> str:
    lines = (BINDINGS_DIR / "lowbit_api.h").read_text().splitlines()
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))


ffi = FFI()
ffi.cdef(_cdef_source())


@functools.lru_cache(maxsize=None)
def load_library(options: BuildOptions = BuildOptions()):
    """dlopen the shim of the current build (RuntimeNotBuilt when there is none)."""
    build = find_build(options)
    lib = ffi.dlopen(str(build.shim))
    tag = ffi.string(lib.lb_runtime_version()).decode()
    if tag != EXPECTED_PATCH_TAG:
        raise LowbitError(f"runtime at {build.root} carries patch tag {tag!r}, expected {EXPECTED_PATCH_TAG!r}")
    lib.lb_set_verbose(1 if os.environ.get("LOWBIT_GGUF_VERBOSE") else 0)
    return lib


def last_error(lib) -> str:
    return ffi.string(lib.lb_last_error()).decode(errors="replace").strip()


def _as_tokens(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(tokens, dtype=np.int32))


class Model:
    """One GGUF model with one context, loaded in the patched llama.cpp. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, n_threads: int = 0, n_gpu_layers: int = 0,
                 options: BuildOptions = BuildOptions()):
        path = Path(path)
        if not path.is_file():
            raise BadGGUF(f"no such GGUF file: {path}")
        self._lib = load_library(options)
        self.path = path
        handle = self._lib.lb_model_load(str(path).encode(), n_ctx, n_threads, n_gpu_layers)
        if handle == ffi.NULL:
            raise BadGGUF(last_error(self._lib))
        self._handle = handle
        self.n_vocab = self._lib.lb_n_vocab(handle)
        self.n_ctx = self._lib.lb_n_ctx(handle)
        self.bos = self._lib.lb_token_bos(handle)
        self.eos = self._lib.lb_token_eos(handle)

    def load_lora(self, path: str | os.PathLike, scale: float = 1.0) -> None:
        """Apply a LoRA adapter GGUF (llama.cpp's `--lora`) to this model's context."""
        if self._lib.lb_model_load_lora(self._handle, str(path).encode(), scale) < 0:
            raise BadGGUF(last_error(self._lib))

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._lib.lb_model_free(self._handle)
            self._handle = None

    __del__ = close

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, rc: int) -> int:
        if rc < 0:
            raise LowbitError(last_error(self._lib))
        return rc

    def tokenize(self, text: str, add_special: bool = False) -> np.ndarray:
        data = text.encode()
        capacity = len(data) + 8
        while True:
            out = np.empty(capacity, dtype=np.int32)
            n = self._lib.lb_tokenize(self._handle, data, len(data), int(add_special),
                                      ffi.from_buffer("int32_t[]", out), capacity)
            if n >= 0:
                return out[:n].copy()
            capacity = -n

    def detokenize(self, tokens: Sequence[int]) -> str:
        buf = ffi.new("char[]", 256)
        pieces = []
        for token in tokens:
            n = self._check(self._lib.lb_token_to_piece(self._handle, int(token), buf, 256))
            pieces.append(ffi.unpack(buf, n))
        return b"".join(pieces).decode(errors="replace")

    def eval(self, tokens: Sequence[int], pos0: int = 0, all_logits: bool = True) -> np.ndarray:
        """Logits [n_tokens, n_vocab] (or [n_vocab] for the last token) for tokens placed at pos0.."""
        toks = _as_tokens(tokens)
        rows = len(toks) if all_logits else 1
        out = np.empty((rows, self.n_vocab), dtype=np.float32)
        self._check(self._lib.lb_eval(self._handle, ffi.from_buffer("int32_t[]", toks), len(toks), pos0,
                                      int(all_logits), ffi.from_buffer("float[]", out)))
        return out if all_logits else out[0]

    def score_window(self, tokens: Sequence[int], first_scored: int) -> tuple[float, int]:
        """(sum of -log p, count) over tokens[first_scored:], each given all tokens before it."""
        toks = _as_tokens(tokens)
        nll = ffi.new("double *", 0.0)
        count = self._check(self._lib.lb_score_window(self._handle, ffi.from_buffer("int32_t[]", toks),
                                                      len(toks), first_scored, nll))
        return nll[0], count

    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 add_special: bool = True) -> Iterator[str]:
        """Stream the continuation of prompt, piece by piece (greedy when temperature is 0)."""
        tokens = list(self.tokenize(prompt, add_special=add_special))
        if not tokens:
            tokens = [self.bos]
        rng = np.random.default_rng(seed)
        logits = self.eval(tokens, pos0=0, all_logits=False)
        pos = len(tokens)
        for _ in range(max_tokens):
            if pos >= self.n_ctx:
                break
            token = sample(logits, temperature, rng)
            if self._lib.lb_token_is_eog(self._handle, token):
                break
            yield self.detokenize([token])
            logits = self.eval([token], pos0=pos, all_logits=False)
            pos += 1


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def perplexity(model: Model, tokens: Sequence[int], n_ctx: int,
               progress: Callable[[int], None] | None = None) -> float:
    """Perplexity over consecutive windows of n_ctx tokens, scoring each window's second half
    (the llama-perplexity convention); the same windows as lowbit_gguf.evaluate.hf_perplexity."""
    from lowbit_gguf.evaluate import windows

    total, count = 0.0, 0
    for window, first in windows(tokens, n_ctx):
        nll, n = model.score_window(window, first)
        total += nll
        count += n
        if progress:
            progress(1)
    return math.exp(total / count)


def dequantize(ggml_type: int, data: bytes | np.ndarray, n_values: int,
               options: BuildOptions = BuildOptions()) -> np.ndarray:
    """Decode raw ggml blocks with the runtime's own kernel (for checking kernels against Python)."""
    lib = load_library(options)
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    out = np.empty(n_values, dtype=np.float32)
    rc = lib.lb_dequantize(ggml_type, ffi.from_buffer(raw), len(raw), ffi.from_buffer("float[]", out), n_values)
    if rc < 0:
        raise LowbitError(last_error(lib))
    return out


def type_table(options: BuildOptions = BuildOptions()) -> dict[int, tuple[str, int, int]]:
    """{type id: (name, block size, bytes per block)} as the C library declares them."""
    lib = load_library(options)
    return {t: (ffi.string(lib.lb_type_name(t)).decode(), lib.lb_type_block_size(t), lib.lb_type_size(t))
            for t in range(lib.lb_type_count())}


def _lowbit_args(weight) -> tuple[list, list]:
    """cffi arguments describing a PackedWeight (codes, then its side tensors), and the buffers to keep alive."""
    t = weight.lowbit_type
    sides = [np.ascontiguousarray(weight.sides[s]) for s in t.sides]
    codes = np.ascontiguousarray(weight.codes)
    side_types = np.array([_GGML_DTYPES[s.dtype.str] for s in sides], dtype=np.int32)
    side_ne = np.array([list(reversed(s.shape)) + [1] * (4 - s.ndim) for s in sides], dtype=np.int64).reshape(-1)
    side_data = ffi.new("void *[]", [ffi.from_buffer(s) for s in sides])
    side_bytes = ffi.new("size_t[]", [s.nbytes for s in sides])
    args = [t.type_id, ffi.from_buffer(codes), codes.nbytes, weight.n_per_row, weight.d_out, len(sides),
            ffi.from_buffer("int32_t[]", side_types), ffi.from_buffer("int64_t[]", side_ne), side_data, side_bytes]
    return args, [codes, sides, side_types, side_ne]


_GGML_DTYPES = {"<f4": 0, "<f2": 1, "|i1": 24}  # numpy dtype -> ggml type id (F32, F16, I8)


KERNEL_PATHS = ("fastest", "reference", "tables", "loaded")  # the order of LB_PATH_* in lowbit_api.h


def lowbit_mul_mat(weight, x: np.ndarray, n_threads: int = 1, path: str = "fastest",
                   options: BuildOptions = BuildOptions()) -> np.ndarray:
    """x [n_tokens, d_in] -> W x [n_tokens, d_out] for a PackedWeight, through ggml's CPU MUL_MAT. path:
    "loaded" is what llama.cpp runs: the weight placed as its model loader places it, in the CPU_LOWBIT buffer type
    where that takes it (codes transposed at load for the register-table kernel: AQLM with 8-bit codes, 512 rows
    or more, AVX-512 BW, DQ and BF16 builds), else stored as in the file and multiplied as "fastest" does;
    "reference" is ggml's reference path (plain C decode), "tables" the portable kernels where this build has
    faster ones: the look-up tables for a few tokens (instead of AVX2 AQLM, AVX-512 PTQ1.61), f32 sgemm for
    prompts (instead of bf16)."""
    return _lowbit_mul_mat(weight, x, n_threads, path, options)[0]


def time_lowbit_mul_mat(weight, x: np.ndarray, n_threads: int = 1, path: str = "fastest", repeat: int = 100,
                        options: BuildOptions = BuildOptions()) -> tuple[np.ndarray, float]:
    """(W x, seconds per MUL_MAT): the mean of repeat - 1 computes of one ggml graph after a first that warms the
    caches, without the graph set-up or Python in the time (for kernel benchmarks)."""
    return _lowbit_mul_mat(weight, x, n_threads, path, options, repeat)


def _lowbit_mul_mat(weight, x, n_threads, path, options, repeat=None):
    if path not in KERNEL_PATHS:
        raise ValueError(f"path must be one of {', '.join(KERNEL_PATHS)}, got {path!r}")
    lib = load_library(options)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != weight.n_per_row:
        raise ValueError(f"x must be [n_tokens, {weight.n_per_row}], got {list(x.shape)}")
    out = np.empty((x.shape[0], weight.d_out), dtype=np.float32)
    args, keep = _lowbit_args(weight)
    args += [ffi.from_buffer("float[]", x), x.shape[0], ffi.from_buffer("float[]", out), n_threads,
             KERNEL_PATHS.index(path)]
    seconds = ffi.new("double *")
    if repeat is None:
        rc = lib.lb_lowbit_mul_mat(*args)
    else:
        rc = lib.lb_lowbit_time_mul_mat(*args, repeat, seconds)
    del keep
    if rc < 0:
        raise LowbitError(last_error(lib))
    return out, seconds[0]


def lowbit_dequantize(weight, options: BuildOptions = BuildOptions()) -> np.ndarray:
    """The C reference decode of a PackedWeight, [d_out, d_in] float32."""
    lib = load_library(options)
    out = np.empty((weight.d_out, weight.n_per_row), dtype=np.float32)
    args, keep = _lowbit_args(weight)
    rc = lib.lb_lowbit_dequantize(*args, ffi.from_buffer("float[]", out))
    del keep
    if rc < 0:
        raise LowbitError(last_error(lib))
    return out
