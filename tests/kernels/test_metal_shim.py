"""The Metal kernels' arithmetic (AQLM, PTQ1.61, VPTQ), compiled as C++ through a small shim, against the Python
decode."""

import numpy as np
import pytest

from conftest import AQLM_CONFIGS, compile_gpu_shim
from lowbit_gguf.random_weights import random_aqlm_payload, random_ptq161_payload, random_vptq_payload
from lowbit_gguf.runtime.build import PATCH_DIR

METAL_DIR = PATCH_DIR / "src" / "ggml" / "src" / "ggml-metal"
CDEF = """
int shim_aqlm_gemv(int m, int b, const uint8_t * codes, const uint16_t * codebook, const uint16_t * row_scale,
                   const float * x, float * dst, int64_t n_rows, int64_t n_blocks, uint64_t row_bytes);
int shim_ptq161_gemv(const uint8_t * codes, const uint8_t * spill, const uint16_t * params, const uint8_t * mask,
                     const uint16_t * col_scale, const float * x, float * dst, int64_t n_rows, int64_t d_in,
                     int64_t n_sal);
int shim_vptq_gemv(const uint8_t * codes, int v, int64_t k, int64_t k_res, const uint16_t * codebook,
                   const uint16_t * res_codebook, const uint16_t * col_scale, const uint16_t * col_bias,
                   const float * x, float * dst, int64_t n_rows, int64_t d_in, uint64_t row_bytes);
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return compile_gpu_shim(tmp_path_factory.mktemp("metal") / "metal_shim.so",
                            ["aqlm_metal_shim.cpp", "ptq161_metal_shim.cpp", "vptq_metal_shim.cpp"], [METAL_DIR], CDEF)


@pytest.mark.parametrize("config_text", AQLM_CONFIGS)
def test_metal_gemv_arithmetic_matches_python(shim, config_text):
    ffi, lib = shim
    spec, config, payload = random_aqlm_payload(config_text, d_out=40, d_in=512)
    packed = spec.pack(payload, config)
    x = np.random.default_rng(1).standard_normal(512).astype(np.float32)
    out = np.empty(40, dtype=np.float32)
    codebook = np.ascontiguousarray(packed.sides["codebook"]).view(np.uint16)
    scale = np.ascontiguousarray(packed.sides["row_scale"]).view(np.uint16)
    rc = lib.shim_aqlm_gemv(config.num_codebooks, config.nbits, ffi.from_buffer(packed.codes),
                            ffi.from_buffer("uint16_t[]", codebook), ffi.from_buffer("uint16_t[]", scale),
                            ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out), 40, 64,
                            packed.codes.shape[1])
    assert rc == 0
    w = spec.decode(payload, config).double().numpy()
    want, magnitude = w @ x, np.abs(w) @ np.abs(x)
    assert np.max(np.abs(out - want) / (magnitude + 1e-6)) < 1e-5


def test_metal_ptq161_gemv_arithmetic_matches_python(shim):
    ffi, lib = shim
    spec, config, payload = random_ptq161_payload(d_out=40, d_in=512)
    packed = spec.pack(payload)
    x = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    out = np.empty(40, dtype=np.float32)

    sides = {k: np.ascontiguousarray(v) for k, v in packed.sides.items()}
    rc = lib.shim_ptq161_gemv(ffi.from_buffer(packed.codes), ffi.from_buffer(sides["salient_spill"].view(np.uint8)),
                              ffi.from_buffer("uint16_t[]", sides["row_params"].view(np.uint16)),
                              ffi.from_buffer(sides["salient_mask"].view(np.uint8)),
                              ffi.from_buffer("uint16_t[]", sides["col_scale"].view(np.uint16)),
                              ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out), 40, 512,
                              packed.weight_params["n_salient"])
    assert rc == 0
    w = spec.decode(payload).double().numpy()
    want, magnitude = w @ x, np.abs(w) @ np.abs(x)
    assert np.max(np.abs(out - want) / (magnitude + 1e-6)) < 1e-5


@pytest.mark.parametrize("config_text", ["v8k256r256", "v4k256r16", "v6k4096", "v16k256r256"])
def test_metal_vptq_gemv_arithmetic_matches_python(shim, config_text):
    ffi, lib = shim
    spec, config, payload = random_vptq_payload(config_text, d_out=48, d_in=512)
    packed = spec.pack(payload, config)
    x = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    out = np.empty(48, dtype=np.float32)
    sides = {k: np.ascontiguousarray(v).view(np.uint16) for k, v in packed.sides.items()}
    params = packed.weight_params
    rc = lib.shim_vptq_gemv(ffi.from_buffer(packed.codes), params["vector_len"], params["n_centroids"],
                            params["n_res_centroids"],
                            *(ffi.from_buffer("uint16_t[]", sides[k])
                              for k in ("codebook", "res_codebook", "col_scale", "col_bias")),
                            ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out), 48, 512,
                            packed.codes.shape[1])
    assert rc == 0
    w = spec.decode(payload, config).double().numpy()
    want, magnitude = w @ x, np.abs(w) @ np.abs(x)
    assert np.max(np.abs(out - want) / (magnitude + 1e-6)) < 1e-5
