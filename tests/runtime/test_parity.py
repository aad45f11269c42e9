"""Perplexity parity on the default model: the patched runtime on a GGUF against transformers on the
same tokens, windows and context length."""

import numpy as np
import pytest

from lowbit_gguf.calibration import load_text
from lowbit_gguf.evaluate import hf_perplexity, hf_tokenize, load_hf_model

pytestmark = [pytest.mark.runtime, pytest.mark.model]

N_CTX = 512
WINDOWS = 4


@pytest.fixture(scope="module")
def eval_tokens(default_model_dir):
    return hf_tokenize(default_model_dir, load_text("evaluation")[:40000])


def runtime_ppl(path, tokens):
    from lowbit_gguf.runtime.library import Model, perplexity

    with Model(path, n_ctx=N_CTX, n_threads=2) as model:
        return perplexity(model, tokens[: WINDOWS * N_CTX], N_CTX)


def test_runtime_tokenizer_matches_transformers(default_f16_gguf, default_model_dir, runtime_build):
    from lowbit_gguf.runtime.library import Model

    text = load_text("evaluation")[:20000]
    with Model(default_f16_gguf, n_ctx=64) as model:
        np.testing.assert_array_equal(model.tokenize(text), hf_tokenize(default_model_dir, text))


def test_f16_gguf_perplexity_matches_transformers(default_f16_gguf, default_model_dir, eval_tokens, runtime_build):
    reference = hf_perplexity(load_hf_model(default_model_dir), eval_tokens, N_CTX, WINDOWS, progress=False)
    value = runtime_ppl(default_f16_gguf, eval_tokens)
    print(f"F16 GGUF {value:.4f} vs transformers float32 {reference:.4f}")
    assert 5 < reference < 100  # a working model on English prose, not a degenerate one
    assert value == pytest.approx(reference, rel=0.01)


def test_rtn_reference_decode_matches_its_gguf(default_model_dir, eval_tokens, tmp_path, runtime_build):
    """The whole path: calibration -> sequential driver -> GGUF -> runtime, against the Python decode."""
    from lowbit_gguf.export import quantize_checkpoint

    report = quantize_checkpoint(default_model_dir, "rtn", "w3g32", tmp_path / "rtn.gguf", n_samples=4,
                                 seq_len=128, save_decoded=tmp_path / "decoded", progress=False)
    assert report.result.bits_per_weight() == pytest.approx(4.0)
    reference = hf_perplexity(load_hf_model(tmp_path / "decoded"), eval_tokens, N_CTX, WINDOWS, progress=False)
    float_ppl = hf_perplexity(load_hf_model(default_model_dir), eval_tokens, N_CTX, WINDOWS, progress=False)
    value = runtime_ppl(report.gguf, eval_tokens)
    print(f"rtn w3g32: GGUF {value:.4f}, reference decode {reference:.4f}, float {float_ppl:.4f}")
    assert reference > float_ppl * 1.02  # 3-bit RTN costs quality: the file really holds the decode
    assert value == pytest.approx(reference, rel=0.01)
    assert not (tmp_path / "rtn.gguf.checkpoint").exists()
