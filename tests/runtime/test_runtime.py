"""The patched runtime through cffi: patch tag, type table, kernels on given bytes, logits, bad files."""

import numpy as np
import pytest
import torch

from lowbit_gguf.errors import BadGGUF, LowbitError

from conftest import make_tiny_llama

pytestmark = pytest.mark.runtime

# PyPI gguf 0.19.0 lags the pinned C library on these; lowbit-gguf never writes them itself.
KNOWN_GGUF_PY_DIFFERENCES = {"Q8_1"}


@pytest.fixture(scope="module")
def lib(runtime_build):
    from lowbit_gguf.runtime.library import load_library

    return load_library()


def test_library_is_the_patched_one(lib):
    from lowbit_gguf.runtime.library import EXPECTED_PATCH_TAG, ffi

    assert ffi.string(lib.lb_runtime_version()).decode() == EXPECTED_PATCH_TAG
    assert f"LOWBIT_GGUF = {EXPECTED_PATCH_TAG}" in ffi.string(lib.lb_system_info()).decode()


def test_python_type_table_agrees_with_c(lib):
    import gguf

    from lowbit_gguf.runtime.library import type_table

    c_types = type_table()
    disagree = []
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        name, c_block, c_size = c_types[int(qtype)]
        assert name.upper() == qtype.name, f"type id {int(qtype)} is {name} in C, {qtype.name} in gguf"
        if (block, size) != (c_block, c_size):
            disagree.append(qtype.name)
    assert set(disagree) == KNOWN_GGUF_PY_DIFFERENCES
    assert c_types[201] == ("aqlm_2x8", 8, 2)  # the lowbit types are in the C table, from types.py


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "F16", "BF16"])
def test_c_dequantize_matches_gguf_py_on_the_same_bytes(lib, qtype):
    import gguf

    from lowbit_gguf.runtime.library import dequantize

    t = gguf.GGMLQuantizationType[qtype]
    values = np.random.default_rng(0).normal(size=(8, 256)).astype(np.float32)
    raw = gguf.quants.quantize(values, t)
    expected = gguf.quants.dequantize(raw, t).reshape(-1).astype(np.float32)
    got = dequantize(int(t), raw.tobytes(), values.size)
    np.testing.assert_array_equal(got, expected)


def test_dequantize_checks_sizes_and_data(lib):
    import gguf

    from lowbit_gguf.runtime.library import dequantize

    q8 = int(gguf.GGMLQuantizationType.Q8_0)
    raw = bytearray(gguf.quants.quantize(np.ones((1, 64), np.float32), gguf.GGMLQuantizationType.Q8_0).tobytes())
    with pytest.raises(LowbitError, match="take 68 bytes, got 67"):
        dequantize(q8, bytes(raw[:-1]), 64)
    with pytest.raises(LowbitError, match="not a whole number"):
        dequantize(q8, bytes(raw), 63)
    with pytest.raises(LowbitError, match="does not exist"):
        dequantize(999, bytes(raw), 64)
    raw[0:2] = np.float16(np.inf).tobytes()  # the first block's scale
    with pytest.raises(LowbitError, match="invalid"):
        dequantize(q8, bytes(raw), 64)


@pytest.fixture(scope="module")
def tiny_gguf(runtime_build, default_model_dir, tmp_path_factory):
    """A small random llama with the default tokenizer, converted to an F32 GGUF."""
    from lowbit_gguf.gguf.convert import convert

    folder = tmp_path_factory.mktemp("tiny")
    model = make_tiny_llama(folder / "hf", tokenizer_dir=default_model_dir, layers=2)
    return model.eval(), convert(folder / "hf", folder / "tiny-f32.gguf", "f32", quiet=True)


def test_runtime_logits_match_transformers(tiny_gguf):
    from lowbit_gguf.runtime.library import Model

    hf_model, path = tiny_gguf
    tokens = np.random.default_rng(1).integers(0, hf_model.config.vocab_size, 40).astype(np.int32)
    with torch.inference_mode():
        expected = hf_model(torch.from_numpy(tokens.astype(np.int64))[None]).logits[0].numpy()
    with Model(path, n_ctx=64, n_threads=2) as model:
        logits = model.eval(tokens)
        # llama.cpp keeps K and V in f16 (its default cache type): about 1e-3 relative to the logit scale
        np.testing.assert_allclose(logits, expected, atol=1e-3 * np.abs(expected).max(), rtol=1e-3)
        # the last row alone, and the same tokens fed in two steps through the cache
        np.testing.assert_allclose(model.eval(tokens, all_logits=False), logits[-1], atol=1e-5)
        model.eval(tokens[:25])
        np.testing.assert_allclose(model.eval(tokens[25:], pos0=25), logits[25:], atol=1e-4, rtol=1e-4)


def test_score_window_is_the_log_softmax_of_eval(tiny_gguf):
    from lowbit_gguf.runtime.library import Model

    _, path = tiny_gguf
    tokens = np.arange(100, 132, dtype=np.int32)
    with Model(path, n_ctx=32, n_threads=2) as model:
        logits = model.eval(tokens).astype(np.float64)
        nll, count = model.score_window(tokens, 16)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    expected = -sum(logp[i - 1, tokens[i]] for i in range(16, 32))
    assert count == 16 and nll == pytest.approx(expected, rel=1e-9)


def test_greedy_generation_matches_transformers(tiny_gguf, default_model_dir):
    from transformers import AutoTokenizer

    from lowbit_gguf.runtime.library import Model

    hf_model, path = tiny_gguf
    prompt = "It is a truth universally acknowledged"
    ids = AutoTokenizer.from_pretrained(default_model_dir)(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = hf_model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    with Model(path, n_ctx=64, n_threads=2) as model:
        assert list(model.tokenize(prompt)) == ids[0].tolist()
        text = "".join(model.generate(prompt, max_tokens=8, add_special=False))
        assert list(model.tokenize(prompt + text))[ids.shape[1]:] == expected.tolist()


def test_bad_tokens_are_refused(tiny_gguf):
    from lowbit_gguf.runtime.library import Model

    _, path = tiny_gguf
    with Model(path, n_ctx=16, n_threads=1) as model:
        with pytest.raises(LowbitError, match="outside the vocabulary"):
            model.eval([1, 2, model.n_vocab])
        with pytest.raises(LowbitError, match="do not fit the context"):
            model.eval(list(range(model.n_ctx + 1)))  # llama.cpp pads n_ctx up: ask it


def test_truncated_and_garbage_files_are_refused(tiny_gguf, tmp_path, runtime_build, capfd):
    from lowbit_gguf.runtime.library import Model

    _, path = tiny_gguf
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    for bad in (truncated, garbage):
        with pytest.raises(BadGGUF, match="llama.cpp could not load"):
            Model(bad, n_ctx=16)
    with pytest.raises(BadGGUF, match="invalid magic characters"):  # llama.cpp's own reason, once
        Model(garbage, n_ctx=16)
    assert "llama_model_load" not in capfd.readouterr().err  # not also printed behind the caller's back
    with pytest.raises(BadGGUF, match="no such GGUF file"):
        Model(tmp_path / "missing.gguf")


def test_converter_log_goes_to_a_file(default_model_dir, tmp_path, capfd):
    """The converter's line per tensor is kept in its log, not printed (--verbose prints it); the bar is shown."""
    from lowbit_gguf.gguf.convert import convert, convert_log_path

    make_tiny_llama(tmp_path / "tiny", tokenizer_dir=default_model_dir)
    out = convert(tmp_path / "tiny", tmp_path / "tiny.gguf", "f16")
    err = capfd.readouterr().err
    log = convert_log_path(out).read_text()
    assert "blk.0.attn_q.weight" in log and " --> " in log
    assert "blk.0.attn_q.weight" not in err and "converting" in err
    convert(tmp_path / "tiny", tmp_path / "tiny.gguf", "f16", verbose=True)
    assert "blk.0.attn_q.weight" in capfd.readouterr().err
