"""The CUDA kernels' arithmetic (ggml-cuda/lowbit-lanes.cuh: AQLM and PTQ1.61, GEMV lanes and prompt decode),
compiled as C++ through a small shim and run as lowbit.cu's kernels combine it, against the Python decode on the
same bytes. Where a GPU is lent, tests/runtime/test_cuda.py runs the kernels themselves."""

import numpy as np
import pytest

from conftest import AQLM_CONFIGS, compile_gpu_shim
from lowbit_gguf.random_weights import random_aqlm_payload, random_ptq161_payload, random_vptq_payload
from lowbit_gguf.runtime.build import PATCH_DIR

CUDA_DIR = PATCH_DIR / "src" / "ggml" / "src" / "ggml-cuda"
CDEF = """
int shim_cuda_aqlm(int m, int b, const uint8_t * codes, uint64_t row_bytes, const uint16_t * codebook,
                   const uint16_t * row_scale, const float * x, int n_tokens, float * dst, float * decoded,
                   int64_t n_rows, int64_t n_blocks);
int shim_cuda_ptq161(const uint8_t * codes, const uint8_t * spill, const uint16_t * params, const uint8_t * mask,
                     const uint16_t * col_scale, const float * x, int n_tokens, float * dst, float * decoded,
                     int64_t n_rows, int64_t d_in, int64_t n_sal);
int shim_cuda_vptq(const uint8_t * codes, uint64_t row_bytes, int v, int64_t k, int64_t k_res,
                   const uint16_t * codebook, const uint16_t * res_codebook, const uint16_t * col_scale,
                   const uint16_t * col_bias, const float * x, int n_tokens, float * dst, float * decoded,
                   int64_t n_rows, int64_t d_in);
"""
N_TOKENS = 3  # the GEMV path takes up to 8 tokens at once
D_OUT, D_IN = 40, 512  # 64 groups of 8: two per lane


@pytest.fixture(scope="module")
def shim(runtime_build, tmp_path_factory):
    """Built against the patched tree's headers (ggml-lowbit.h needs ggml.h)."""
    include = [CUDA_DIR, PATCH_DIR / "src" / "ggml" / "include", runtime_build.source_dir / "ggml" / "include"]
    return compile_gpu_shim(tmp_path_factory.mktemp("cuda") / "cuda_shim.so", ["lowbit_cuda_shim.cpp"], include, CDEF)


def check(out, decoded, w, x):
    """The decode is bit for bit the Python one (the shim has no fused multiply-adds; a GPU may fuse, within an
    ulp); the GEMV sums in another order, so it is held to float32 rounding of |w| . |x|."""
    np.testing.assert_array_equal(decoded, w.astype(np.float32))
    want, magnitude = x.astype(np.float64) @ w.T, np.abs(x).astype(np.float64) @ np.abs(w).T
    assert np.max(np.abs(out - want) / (magnitude + 1e-6)) < 1e-5


@pytest.mark.parametrize("config_text", AQLM_CONFIGS)
def test_cuda_aqlm_arithmetic_matches_python(shim, config_text):
    ffi, lib = shim
    spec, config, payload = random_aqlm_payload(config_text, d_out=D_OUT, d_in=D_IN)
    packed = spec.pack(payload, config)
    x = np.random.default_rng(1).standard_normal((N_TOKENS, D_IN)).astype(np.float32)
    out, decoded = np.empty((N_TOKENS, D_OUT), np.float32), np.empty((D_OUT, D_IN), np.float32)
    codebook = np.ascontiguousarray(packed.sides["codebook"]).view(np.uint16)
    scale = np.ascontiguousarray(packed.sides["row_scale"]).view(np.uint16)
    rc = lib.shim_cuda_aqlm(config.num_codebooks, config.nbits, ffi.from_buffer(packed.codes), packed.codes.shape[1],
                            ffi.from_buffer("uint16_t[]", codebook), ffi.from_buffer("uint16_t[]", scale),
                            ffi.from_buffer("float[]", x), N_TOKENS, ffi.from_buffer("float[]", out),
                            ffi.from_buffer("float[]", decoded), D_OUT, D_IN // 8)
    assert rc == 0
    check(out, decoded, spec.decode(payload, config).numpy(), x)


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_cuda_ptq161_arithmetic_matches_python(shim, ratio):
    """Salient channels scattered over the row (the gather), codes spilled past the row's bytes."""
    ffi, lib = shim
    spec, config, payload = random_ptq161_payload(d_out=D_OUT, d_in=D_IN, ratio=ratio)
    packed = spec.pack(payload)
    assert packed.weight_params["n_salient"] > 0 and packed.sides["salient_spill"].size > 0
    x = np.random.default_rng(2).standard_normal((N_TOKENS, D_IN)).astype(np.float32)
    out, decoded = np.empty((N_TOKENS, D_OUT), np.float32), np.empty((D_OUT, D_IN), np.float32)
    sides = {k: np.ascontiguousarray(v) for k, v in packed.sides.items()}
    rc = lib.shim_cuda_ptq161(ffi.from_buffer(packed.codes), ffi.from_buffer(sides["salient_spill"].view(np.uint8)),
                              ffi.from_buffer("uint16_t[]", sides["row_params"].view(np.uint16)),
                              ffi.from_buffer(sides["salient_mask"].view(np.uint8)),
                              ffi.from_buffer("uint16_t[]", sides["col_scale"].view(np.uint16)),
                              ffi.from_buffer("float[]", x), N_TOKENS, ffi.from_buffer("float[]", out),
                              ffi.from_buffer("float[]", decoded), D_OUT, D_IN, packed.weight_params["n_salient"])
    assert rc == 0
    check(out, decoded, spec.decode(payload).numpy(), x)



@pytest.mark.parametrize("config_text", ["v8k256r256", "v8k256", "v4k256r16", "v8k4096r4096", "v16k256r256"])
def test_cuda_vptq_arithmetic_matches_python(shim, config_text):
    """Entries of 8 to 24 bits (some straddling bytes), with and without the residual codebook; 6 tokens take two
    GEMV launches."""
    ffi, lib = shim
    d_out = 48
    spec, config, payload = random_vptq_payload(config_text, d_out=d_out, d_in=D_IN)
    packed = spec.pack(payload, config)
    n_tokens = 6
    x = np.random.default_rng(3).standard_normal((n_tokens, D_IN)).astype(np.float32)
    out, decoded = np.empty((n_tokens, d_out), np.float32), np.empty((d_out, D_IN), np.float32)
    sides = {k: np.ascontiguousarray(v).view(np.uint16) for k, v in packed.sides.items()}
    params = packed.weight_params
    rc = lib.shim_cuda_vptq(ffi.from_buffer(packed.codes), packed.codes.shape[1], params["vector_len"],
                            params["n_centroids"], params["n_res_centroids"],
                            *(ffi.from_buffer("uint16_t[]", sides[k])
                              for k in ("codebook", "res_codebook", "col_scale", "col_bias")),
                            ffi.from_buffer("float[]", x), n_tokens, ffi.from_buffer("float[]", out),
                            ffi.from_buffer("float[]", decoded), d_out, D_IN)
    assert rc == 0
    check(out, decoded, spec.decode(payload, config).numpy(), x)
