"""AQLM kernels of the patched runtime against the Python reference decode, on the same bytes."""

import numpy as np
import pytest
from lowbit_gguf.errors import LowbitError
from conftest import AQLM_CONFIGS, BF16_PROMPTS, bounds, cpu_has, unchecked_packed
from lowbit_gguf.random_weights import random_aqlm_payload

BOUNDS = bounds("aqlm")

pytestmark = pytest.mark.runtime

CONFIGS = AQLM_CONFIGS


def reference_matmul(spec, config, payload, x):
    w = spec.decode(payload, config).double().numpy()
    return x.astype(np.float64) @ w.T, np.abs(x).astype(np.float64) @ np.abs(w).T


@pytest.mark.parametrize("config_text", CONFIGS)
def test_c_reference_decode_equals_python_bit_for_bit(config_text, runtime_build):
    from lowbit_gguf.runtime import lowbit_dequantize

    spec, config, payload = random_aqlm_payload(config_text, d_out=40, d_in=96)
    np.testing.assert_array_equal(lowbit_dequantize(spec.pack(payload, config)),
                                  spec.decode(payload, config).numpy())


# 1, 2 and 3 tokens take the small-batch path (AVX2 codeword sums where built, tokens in pairs then one; "tables"
# pins the look-up tables for 8-bit codes, the tiles for 16-bit ones), 17 the tile path; 2 threads split rows (37:
# 4-row groups and a rest)
@pytest.mark.parametrize("config_text", CONFIGS)
@pytest.mark.parametrize("n_tokens", [1, 2, 3, 17])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("path", ["fastest", "tables", "reference"])
def test_mul_mat_matches_python_decode(config_text, n_tokens, n_threads, path, runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_aqlm_payload(config_text, d_out=37, d_in=96, seed=n_tokens)
    x = np.random.default_rng(n_tokens).standard_normal((n_tokens, 96)).astype(np.float32)
    got = lowbit_mul_mat(spec.pack(payload, config), x, n_threads=n_threads, path=path)
    want, magnitude = reference_matmul(spec, config, payload, x)
    worst = np.max(np.abs(got - want) / (magnitude + 1e-6))
    assert worst < (BOUNDS.few_tokens if path == "fastest" and n_tokens <= 4 else BOUNDS.f32), \
        f"worst relative error {worst:.2e}"


@pytest.mark.skipif(not cpu_has("avx2", "f16c", "fma"), reason="the codeword-sum kernel needs AVX2, F16C and FMA")
@pytest.mark.parametrize("config_text", ["2x8", "1x16"])
def test_avx2_machines_take_the_codeword_sum_kernel(config_text, runtime_build):
    """The native build of an AVX2 machine sums codewords for a few tokens instead of building tables (8-bit
    codes) or decoding tiles (16-bit codes, which "tables" pins)."""
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_aqlm_payload(config_text, d_out=64, d_in=576)
    x = np.random.default_rng(2).standard_normal((1, 576)).astype(np.float32)
    fastest, tables = (lowbit_mul_mat(spec.pack(payload, config), x, path=p) for p in ("fastest", "tables"))
    assert not np.array_equal(fastest, tables)  # another summation order: close, not the same bits
    np.testing.assert_allclose(fastest, tables, rtol=1e-5, atol=1e-5 * np.abs(tables).max())


REGISTER_TABLES = cpu_has("avx512f", "avx512bw", "avx512dq", "avx512_bf16")


# "loaded" places the weight as llama.cpp's loader does: 512 rows or more of 8-bit codes go to the CPU_LOWBIT buffer
# (codes transposed at load). 1-4 tokens take the register tables (bf16 products, entries rounded to int16 per group
# of 16 code positions: close, not exact), 17 and 70 the decode paths reading transposed codes (exact); 3 threads split the
# code positions and rows unevenly.
@pytest.mark.skipif(not REGISTER_TABLES, reason="the register-table kernel needs AVX-512 F, BW, DQ and BF16")
@pytest.mark.parametrize("config_text", ["2x8", "1x8"])
@pytest.mark.parametrize("n_tokens", [1, 2, 4, 17, 70])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_transposed_codes_match_python_decode(config_text, n_tokens, n_threads, runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_aqlm_payload(config_text, d_out=544, d_in=200, seed=n_tokens)
    x = np.random.default_rng(n_tokens).standard_normal((n_tokens, 200)).astype(np.float32)
    x[:, 7] *= 30  # an outlier input: the tables of its group round coarser, the others keep their own step
    packed = spec.pack(payload, config)
    got = lowbit_mul_mat(packed, x, n_threads=n_threads, path="loaded")
    want, magnitude = reference_matmul(spec, config, payload, x)
    relative = np.abs(got - want) / (magnitude + 1e-6)
    # register tables: codewords and inputs round to bf16 (each product within 2^-8, more against |x||w| where a
    # row's codewords cancel) and entries to 1/4094 of their group's largest (ggml's 8-bit activations round to
    # 1/254 of each 32-input block's largest)
    if n_tokens <= 4:
        largest, median = BOUNDS.register_tables
        assert relative.max() < largest and np.median(relative) < median, \
            f"errors {relative.max():.2e}, {np.median(relative):.2e}"
    else:
        assert relative.max() < BOUNDS.f32, f"worst relative error {relative.max():.2e}"
    if n_tokens <= 4:  # the register tables ran, not the kernel of row-ordered codes
        assert not np.array_equal(got, lowbit_mul_mat(packed, x, n_threads=n_threads, path="fastest"))


# Non-finite inputs or codebook entries give NaN rows (a float dot product gives NaN or an infinity), never finite
# numbers from a table step that overflowed; the other token stays exact in its own right.
@pytest.mark.skipif(not REGISTER_TABLES, reason="the register-table kernel needs AVX-512 F, BW, DQ and BF16")
@pytest.mark.parametrize("poison", ["nan input", "infinite input", "nan codeword"])
def test_register_tables_carry_non_finite_values_to_every_row(poison, runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_aqlm_payload("2x8", d_out=512, d_in=72)
    x = np.ones((2, 72), dtype=np.float32)
    if poison == "nan codeword":
        payload["codebooks"][1, 77, 3] = float("nan")
        payload["codes"][:, :, 1] = 77  # every row uses it
        x[0] = 0.0  # NaN times 0 is still NaN
    else:
        x[1, 69] = np.nan if poison == "nan input" else np.inf
    got = lowbit_mul_mat(spec.pack(payload, config), x, n_threads=2, path="loaded")
    assert np.isnan(got[1]).all()
    assert np.isnan(got[0]).all() if poison == "nan codeword" else np.isfinite(got[0]).all()


@pytest.mark.parametrize("config_text, d_out", [("2x8", 192), ("2x8", 520), ("1x16", 512)])
def test_weights_the_loader_keeps_as_stored_run_the_same_kernel(config_text, d_out, runtime_build):
    """Too few rows, rows not in 32s, 16-bit codes: no transposition, so "loaded" is "fastest" bit for bit."""
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_aqlm_payload(config_text, d_out=d_out, d_in=64)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    packed = spec.pack(payload, config)
    np.testing.assert_array_equal(lowbit_mul_mat(packed, x, path="loaded"), lowbit_mul_mat(packed, x, path="fastest"))


def test_mul_mat_on_a_real_quantized_layer(default_model_dir, runtime_build):
    """A q_proj of the default model quantized with AQLM 2x8 (short search), decode-sized and prompt-sized."""
    from dataclasses import replace

    import torch
    from safetensors.torch import load_file

    from lowbit_gguf.methods import get_method
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec = get_method("aqlm")
    config = replace(spec.parse_config("2x8"), max_rounds=1, adam_steps=5, kmeans_iters=4, beam_size=1)
    weights = load_file(default_model_dir / "model.safetensors")
    w = weights["model.layers.0.self_attn.q_proj.weight"].float()
    q = spec.quantize(w, torch.eye(w.shape[1], dtype=torch.float64), config)
    x = np.random.default_rng(0).standard_normal((70, w.shape[1])).astype(np.float32)
    packed = spec.pack(q.payload, config)
    for n, path in ((1, "fastest"), (70, "fastest"), (70, "tables")):
        got = lowbit_mul_mat(packed, x[:n], n_threads=2, path=path)
        want, magnitude = reference_matmul(spec, config, q.payload, x[:n])
        bf16 = BF16_PROMPTS and n == 70 and path == "fastest"
        assert np.max(np.abs(got - want) / (magnitude + 1e-6)) < (BOUNDS.bf16_prompts if bf16 else BOUNDS.f32)
    if BF16_PROMPTS:  # the prompt kernel rounds to bf16: close to the f32 sgemm, not the same bits
        assert not np.array_equal(lowbit_mul_mat(packed, x, n_threads=2), lowbit_mul_mat(packed, x, n_threads=2,
                                                                                         path="tables"))


@pytest.mark.parametrize("change, message", [
    (lambda p: {"codes": np.ascontiguousarray(p.codes[:, :-1])}, "codes take"),
])
def test_codes_of_the_wrong_width_give_a_clear_error(change, message, runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_aqlm_payload("2x8")
    packed = spec.pack(payload, config)
    bad = unchecked_packed(packed, **change(packed))
    with pytest.raises(LowbitError, match=message):
        lowbit_mul_mat(bad, np.ones((1, packed.n_per_row), dtype=np.float32))
