"""AQLM files in the patched runtime: a small Llama quantized end to end, against its Python reference
decode in transformers (malformed side tensors: test_side_tensors.py)."""

import pytest

import gguf
from runtime_parity import check_logits, check_perplexity

pytestmark = [pytest.mark.runtime, pytest.mark.model]


def test_file_holds_codes_and_side_tensors(tiny_aqlm):
    reader = gguf.GGUFReader(tiny_aqlm[0])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "AQLM_2X8" and types["blk.1.ffn_down.weight"] == "AQLM_2X8"
    assert types["blk.0.attn_q.codebook"] == "F16" and types["blk.0.attn_q.row_scale"] == "F16"
    assert types["token_embd.weight"] == "F16" and types["output.weight"] == "F16"  # as asked for parity
    assert reader.get_field("lowbit_gguf.method").contents() == "aqlm"


def test_runtime_logits_match_the_reference_decode(tiny_aqlm, runtime_build):
    check_logits(*tiny_aqlm)


def test_runtime_perplexity_matches_the_reference_decode(tiny_aqlm, default_model_dir, runtime_build):
    check_perplexity(*tiny_aqlm, default_model_dir, "tiny AQLM 2x8")


def test_1x16_file_runs_prompts_and_single_tokens(tiny_aqlm_1x16, runtime_build):
    reader = gguf.GGUFReader(tiny_aqlm_1x16[0])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "AQLM_1X16" and types["blk.1.ffn_down.weight"] == "AQLM_1X16"
    check_logits(*tiny_aqlm_1x16, token_by_token=4)


def test_bits_per_weight_count_side_tensors_as_bytes_not_weights(tiny_aqlm_1x16):
    """1x16's codebooks (65,536 x 8 per layer) hold more numbers than this model's weights: counted as weights
    they would halve the file's bits per weight."""
    from safetensors.torch import load_file

    from lowbit_gguf.gguf.inspect import read_summary

    path, decoded = tiny_aqlm_1x16
    summary = read_summary(path)
    assert summary.n_parameters == sum(t.numel() for t in load_file(decoded / "model.safetensors").values())
    tensor_bits = 8 * sum(t.n_bytes for t in summary.tensors)
    assert summary.bits_per_weight() == pytest.approx(tensor_bits / summary.n_parameters)
    assert summary.bits_per_weight(linear_only=True) > summary.bits_per_weight() > 16  # f16 embeddings, huge codebooks


