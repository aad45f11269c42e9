"""AQLM files in the patched runtime: a small Llama quantized end to end, against its Python reference
decode in transformers, and malformed side tensors refused with a message."""

import numpy as np
import pytest

import gguf
from lowbit_gguf.errors import BadGGUF
from lowbit_gguf.gguf.write import _copy_metadata

from runtime_parity import N_CTX, check_logits, check_perplexity

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


def rewrite(source, out, edit):
    """Copy a GGUF, passing each (name, data, type) through edit (None drops the tensor)."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, reader.get_field("general.architecture").contents())
    _copy_metadata(reader, writer)
    for t in reader.tensors:
        changed = edit(t.name, np.asarray(t.data), t.tensor_type)
        if changed is not None:
            writer.add_tensor(t.name, changed[0], raw_dtype=changed[1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize("case, message", [
    ("missing", "needs the side tensor 'blk.0.attn_k.codebook'"),
    ("shape", "blk.0.attn_k.codebook' has shape"),
    ("type", "blk.0.attn_k.codebook' has type f32"),
])
def test_malformed_side_tensors_are_refused(case, message, tiny_aqlm, tmp_path, runtime_build):
    from lowbit_gguf.runtime import Model

    def edit(name, data, ggml_type):
        if name != "blk.0.attn_k.codebook":
            return data, ggml_type
        if case == "missing":
            return None
        if case == "shape":
            return data[:, :128].copy(), ggml_type
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32

    bad = rewrite(tiny_aqlm[0], tmp_path / f"{case}.gguf", edit)
    with pytest.raises(BadGGUF, match=message):
        Model(bad, n_ctx=N_CTX)
