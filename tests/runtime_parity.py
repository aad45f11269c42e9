"""Checks shared by the method runtime tests: a quantized GGUF in the patched runtime against the Python
reference decode of the same model in transformers."""

import numpy as np
import pytest
import torch

N_CTX = 128


def check_logits(gguf_path, decoded_dir, token_by_token: int = 0, reference=None):
    """Logits of 40 random tokens (and of the first token_by_token fed one at a time, the decode path). reference:
    the model to compare with (default: transformers' on decoded_dir)."""
    from transformers import AutoModelForCausalLM

    from lowbit_gguf.runtime import Model

    tokens = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(1))
    if reference is None:
        reference = AutoModelForCausalLM.from_pretrained(decoded_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        want = reference(tokens).logits[0].numpy()
    with Model(gguf_path, n_ctx=N_CTX, n_threads=2) as model:
        got = model.eval(tokens[0].tolist(), all_logits=True)
        for pos, t in enumerate(tokens[0, :token_by_token].tolist()):  # pos 0 starts a new sequence
            last = model.eval([t], pos0=pos, all_logits=False)
    # llama.cpp keeps K/V in f16: differences of ~1e-3 of the logit scale, as for F16 files
    tolerance = 2e-2 * np.max(np.abs(want))
    assert np.max(np.abs(got - want)) < tolerance
    if token_by_token:
        assert np.max(np.abs(last - want[token_by_token - 1])) < tolerance
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) > 0.9


def check_perplexity(gguf_path, decoded_dir, model_dir, label: str, reference=None):
    """Perplexity over 4 windows of the evaluation text within 1% of the reference decode's (reference: the model
    to compare with; default: transformers' on decoded_dir)."""
    from lowbit_gguf.calibration import load_text
    from lowbit_gguf.evaluate import hf_perplexity, hf_tokenize, load_hf_model
    from lowbit_gguf.runtime.library import Model, perplexity

    tokens = hf_tokenize(model_dir, load_text("evaluation")[:20000])[: 4 * N_CTX]
    if reference is None:
        reference = load_hf_model(decoded_dir)
    reference = hf_perplexity(reference, tokens, N_CTX, 4, progress=False)
    with Model(gguf_path, n_ctx=N_CTX, n_threads=2) as model:
        value = perplexity(model, tokens, N_CTX)
    print(f"{label}: runtime {value:.3f}, reference decode {reference:.3f}")
    assert value == pytest.approx(reference, rel=0.01)
