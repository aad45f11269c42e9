"""VPTQ kernels of the patched runtime against the Python reference decode, on the same bytes."""

import numpy as np
import pytest

from conftest import BF16_PROMPTS, bounds, unchecked_packed
from lowbit_gguf.random_weights import random_vptq_payload
from lowbit_gguf.errors import LowbitError

pytestmark = pytest.mark.runtime

BOUNDS = bounds("vptq")
# entries of 8 (whole bytes), 12 (straddling bytes), 16 and 24 bits; without and with a residual codebook;
# vectors of 4, 6 (padded lanes), 8, 12 and 16 (two AVX2 registers)
CONFIGS = ["v8k256", "v8k256r256", "v4k256r16", "v6k4096", "v8k4096r4096", "v12k4096r4096", "v16k256r256"]


def reference(spec, config, payload, x):
    w = spec.decode(payload, config).double().numpy()
    return x.astype(np.float64) @ w.T, np.abs(x).astype(np.float64) @ np.abs(w).T


@pytest.mark.parametrize("config_text", CONFIGS)
def test_c_reference_decode_equals_python(config_text, runtime_build):
    from lowbit_gguf.runtime import lowbit_dequantize

    spec, config, payload = random_vptq_payload(config_text, d_out=48, d_in=192)
    want = spec.decode(payload, config).numpy()
    # (c + r) * s + b: the C compiler may fuse the multiply-add
    np.testing.assert_allclose(lowbit_dequantize(spec.pack(payload, config)), want, rtol=1e-6, atol=1e-6)


# 1 and 4 tokens: the few-token kernels (AVX2 where built, the portable one on "tables"); 17 the tiles, 70 the
# prompt path (sgemm; 48 rows); 2 threads split the row groups, or rows mid-group on the tile path (48 / 2 / 16)
@pytest.mark.parametrize("config_text", CONFIGS)
@pytest.mark.parametrize("n_tokens", [1, 4, 17, 70])
@pytest.mark.parametrize("path", ["fastest", "tables", "reference"])
def test_mul_mat_matches_python_decode(config_text, n_tokens, path, runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_vptq_payload(config_text, d_out=48, d_in=192, seed=n_tokens)
    x = np.random.default_rng(n_tokens).standard_normal((n_tokens, 192)).astype(np.float32)
    want, magnitude = reference(spec, config, payload, x)
    for n_threads in (1, 2):
        got = lowbit_mul_mat(spec.pack(payload, config), x, path=path, n_threads=n_threads)
        worst = np.max(np.abs(got - want) / (magnitude + 1e-6))
        tolerance = BOUNDS.bf16_prompts if path == "fastest" and n_tokens >= 8 and BF16_PROMPTS else BOUNDS.f32
        assert worst < tolerance, f"{n_threads} threads: worst relative error {worst:.2e}"


def test_fastest_and_portable_kernels_agree_on_the_default_models_shapes(runtime_build):
    """576 channels, 1536 rows: streams of many entries, the last ones read without the 8-byte load."""
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_vptq_payload("v8k256r256", d_out=1536, d_in=576)
    x = np.random.default_rng(5).standard_normal((2, 576)).astype(np.float32)
    want, magnitude = reference(spec, config, payload, x)
    for path in ("fastest", "tables"):
        got = lowbit_mul_mat(spec.pack(payload, config), x, path=path, n_threads=2)
        assert np.max(np.abs(got - want) / (magnitude + 1e-6)) < BOUNDS.f32


@pytest.mark.parametrize("side, shape, message", [
    ("codebook", (200, 8), "power of two"),
    ("res_codebook", (16, 8), "index bits per weight"),
    ("res_codebook", (256, 4), "expected"),
    ("col_bias", (100,), "expected"),
])
def test_bad_codebooks_are_refused_by_the_c_checks(side, shape, message, runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_vptq_payload("v8k256r256")
    packed = spec.pack(payload, config)
    bad = unchecked_packed(packed, sides=dict(packed.sides, **{side: np.zeros(shape, np.float16)}))
    x = np.ones((1, packed.n_per_row), np.float32)
    with pytest.raises(LowbitError, match=message):
        lowbit_mul_mat(bad, x)


def test_rows_not_a_multiple_of_the_vector_length_are_refused(runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_vptq_payload("v8k256r256", d_out=24)
    packed = spec.pack(payload, config)
    bad = unchecked_packed(packed, codes=packed.codes[:20])
    with pytest.raises(LowbitError, match="do not divide its 20 rows"):
        lowbit_mul_mat(bad, np.ones((1, packed.n_per_row), np.float32))
