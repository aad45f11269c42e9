"""PTQ1.61 kernels of the patched runtime against the Python reference decode, on the same bytes."""


import numpy as np
import pytest
import torch
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.gguf.types import SALIENT_MASK, SALIENT_SPILL
from conftest import BF16_PROMPTS, bounds, cpu_has, unchecked_packed
from lowbit_gguf.random_weights import random_ptq161_payload

pytestmark = pytest.mark.runtime


def reference_matmul(spec, payload, x):
    w = spec.decode(payload).double().numpy()
    return x.astype(np.float64) @ w.T, np.abs(x).astype(np.float64) @ np.abs(w).T


# d_in 96 -> 16 salient channels (the codes of 4 stay in the row, of 12 spill); 224 -> 48
@pytest.mark.parametrize("d_in, ratio", [(96, 0.2), (224, 0.2), (64, 0.5)])
def test_c_reference_decode_equals_python(d_in, ratio, runtime_build):
    from lowbit_gguf.runtime import lowbit_dequantize

    spec, config, payload = random_ptq161_payload(d_out=40, d_in=d_in, ratio=ratio)
    want = spec.decode(payload).numpy()
    # binary weights are exact (col * (a * +-1 + m)); salient ones may differ by a fused multiply-add
    np.testing.assert_allclose(lowbit_dequantize(spec.pack(payload)), want, rtol=1e-6, atol=1e-7)


# The fastest kernel for up to 4 tokens on AVX-512 VNNI machines rounds the gathered input to int16 (15 bits
# against the largest input of each part): errors of a few 1e-5 of the row's |x| . |w|, not float's 1e-7.
BOUNDS = bounds("ptq161")
HAS_AVX512_VNNI = cpu_has("avx512bw", "avx512vl", "avx512_vnni")


def assert_mul_mat_matches(spec, payload, x, path="fastest", **kwargs):
    from lowbit_gguf.runtime import lowbit_mul_mat

    got = lowbit_mul_mat(spec.pack(payload), x, path=path, **kwargs)
    want, magnitude = reference_matmul(spec, payload, x)
    worst = np.max(np.abs(got - want) / (magnitude + 1e-6))
    tolerance = BOUNDS.f32
    if path == "fastest" and x.shape[0] <= 4:
        tolerance = BOUNDS.few_tokens
    elif path == "fastest" and x.shape[0] >= 8 and BF16_PROMPTS:
        tolerance = BOUNDS.bf16_prompts
    assert worst < tolerance, f"worst relative error {worst:.2e}"


@pytest.mark.skipif(not HAS_AVX512_VNNI, reason="the int16 kernel needs AVX-512 BW, VL and VNNI")
def test_avx512_machines_take_the_int16_kernel(runtime_build):
    """The native build of an AVX-512 VNNI machine runs the int16 kernel (not the tables) for a few tokens."""
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_ptq161_payload(d_out=64, d_in=576)
    x = np.random.default_rng(2).standard_normal((1, 576)).astype(np.float32)
    fastest, tables = (lowbit_mul_mat(spec.pack(payload), x, path=p) for p in ("fastest", "tables"))
    assert not np.array_equal(fastest, tables)  # rounded inputs: close, not the same bits
    np.testing.assert_allclose(fastest, tables, rtol=1e-3, atol=1e-3 * np.abs(tables).max())


# 1 and 3 tokens take the small-batch path (int16 AVX-512 where built, else the tables; "tables" pins those), 17 the
# tile path, 70 the sgemm path (rows in chunks of 128: with 150 rows the last chunk has 22, which sgemm refuses,
# so the tiles take it all); 2 threads split rows
@pytest.mark.parametrize("n_tokens", [1, 3, 17, 70])
@pytest.mark.parametrize("n_rows", [150, 200])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("path", ["fastest", "tables", "reference"])
def test_mul_mat_matches_python_decode(n_tokens, n_rows, n_threads, path, runtime_build):
    spec, config, payload = random_ptq161_payload(d_out=n_rows, d_in=224, seed=n_tokens)
    x = np.random.default_rng(n_tokens).standard_normal((n_tokens, 224)).astype(np.float32)
    assert_mul_mat_matches(spec, payload, x, n_threads=n_threads, path=path)


# row layouts of the small-batch kernels: (sign bytes, salient code bytes in the row, in the spill row)
# 104/0.15: (11, 2, 6): an odd sign byte; 576/0.2: (58, 14, 42) and 1536/0.2: (154, 38, 114), the default
# model's; code stretches not a multiple of 8 bytes. 37 rows: groups of 4 rows and single rows per thread; 70
# tokens: the prompt path (sgemm, which needs a multiple of 4 rows: 40).
@pytest.mark.parametrize("d_in, ratio", [(104, 0.15), (576, 0.2), (1536, 0.2), (64, 0.5), (576, 0.75)])
@pytest.mark.parametrize("n_tokens, path", [(1, "fastest"), (4, "fastest"), (1, "tables"), (4, "tables"),
                                            (70, "fastest")])
def test_small_batch_and_prompt_paths_on_each_row_layout(d_in, ratio, n_tokens, path, runtime_build):
    spec, config, payload = random_ptq161_payload(d_out=37 if n_tokens <= 4 else 40, d_in=d_in, ratio=ratio,
                                                  seed=d_in)
    x = np.random.default_rng(d_in).standard_normal((n_tokens, d_in)).astype(np.float32)
    assert_mul_mat_matches(spec, payload, x, n_threads=2, path=path)


def test_unknown_kernel_path_is_refused(runtime_build):
    from lowbit_gguf.runtime import lowbit_mul_mat

    spec, config, payload = random_ptq161_payload(d_out=8, d_in=64)
    with pytest.raises(ValueError, match="path must be one of"):
        lowbit_mul_mat(spec.pack(payload), np.zeros((1, 64), np.float32), path="fast")


def test_sign_of_zero_and_constant_rows(runtime_build):
    """W == mu gives sign +1; a constant row decodes to its constant on both parts, in Python and in C."""
    from lowbit_gguf.methods import get_method

    spec = get_method("ptq161")
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    w[0] = 0.75  # constant row
    w[1, :] = torch.tensor([-1.0, 1.0]).repeat(32)
    w[1, 10:12] = 0.0  # a (-1, 1) pair zeroed: the mean stays 0, so sign(w - mu) = sign(0) there
    absmax = torch.arange(64, dtype=torch.float32)  # salient: the last 16 channels
    q = spec.quantize(w, absmax, spec.config_type(salient_ratio=0.25))
    assert q.payload["mask"][48:].all() and not q.payload["mask"][:48].any()
    assert q.payload["mu"][1] == 0 and q.payload["signs"][1, 10:12].all()  # channels 10, 11 are binary
    torch.testing.assert_close(q.decoded[0], torch.full((64,), 0.75), rtol=1e-3, atol=1e-3)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    for path in ("fastest", "tables"):
        assert_mul_mat_matches(spec, q.payload, x, path=path)


def test_mul_mat_on_a_real_layer(default_model_dir, runtime_build):
    """The default model's layer 0 down_proj (1536 inputs, 576 outputs) quantized by PTQ1.61."""
    from safetensors.torch import load_file

    spec, config, _ = random_ptq161_payload()
    w = load_file(default_model_dir / "model.safetensors")["model.layers.0.mlp.down_proj.weight"].float()
    x = np.random.default_rng(1).standard_normal((70, w.shape[1])).astype(np.float32)
    q = spec.quantize(w, torch.from_numpy(np.abs(x).max(0)), config)
    for n, path in ((1, "fastest"), (1, "tables"), (70, "fastest")):
        assert_mul_mat_matches(spec, q.payload, x[:n], n_threads=2, path=path)


def _flip_one_mask_bit(packed):
    mask = packed.sides[SALIENT_MASK].copy()
    channel = int(np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little") == 0)[0])
    mask.view(np.uint8)[channel // 8] |= 1 << (channel % 8)
    return {"sides": {**packed.sides, SALIENT_MASK: mask}}


@pytest.mark.parametrize("change, message", [
    (_flip_one_mask_bit, "marks 17 salient channels.*codes for 16"),
    (lambda p: {"sides": {**p.sides, SALIENT_SPILL: np.ascontiguousarray(p.sides[SALIENT_SPILL][:, :-1])}},
     "salient_spill.*wide"),
    (lambda p: {"sides": {**p.sides, SALIENT_SPILL: np.ascontiguousarray(p.sides[SALIENT_SPILL][:-1])}},
     "salient_spill.*shape"),
])
def test_side_tensors_that_disagree_give_clear_errors(change, message, runtime_build):
    from lowbit_gguf.runtime import lowbit_dequantize, lowbit_mul_mat

    spec, config, payload = random_ptq161_payload()
    packed = spec.pack(payload)
    bad = unchecked_packed(packed, **change(packed))
    with pytest.raises(LowbitError, match=message):
        lowbit_mul_mat(bad, np.ones((1, packed.n_per_row), dtype=np.float32))
    with pytest.raises(LowbitError, match=message):
        lowbit_dequantize(bad)
