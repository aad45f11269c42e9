"""PTQ1.61 files in the patched runtime: a small Llama quantized end to end, against its Python reference
decode in transformers, and inconsistent side tensors refused at load with a message."""

import re

import numpy as np
import pytest

import gguf
from lowbit_gguf.errors import BadGGUF
from runtime_parity import N_CTX, check_logits, check_perplexity
from conftest import rewrite_gguf

pytestmark = [pytest.mark.runtime, pytest.mark.model]


def test_file_holds_codes_and_side_tensors(tiny_ptq161):
    reader = gguf.GGUFReader(tiny_ptq161[0])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "PTQ161" and types["blk.1.ffn_down.weight"] == "PTQ161"
    assert types["blk.0.attn_q.salient_mask"] == "I8" and types["blk.0.attn_q.salient_spill"] == "I8"
    assert types["blk.0.attn_q.row_params"] == "F16" and types["blk.0.attn_q.col_scale"] == "F16"
    assert reader.get_field("lowbit_gguf.method").contents() == "ptq161"


def test_runtime_logits_match_the_reference_decode(tiny_ptq161, runtime_build):
    check_logits(*tiny_ptq161, token_by_token=8)


def test_runtime_perplexity_matches_the_reference_decode(tiny_ptq161, default_model_dir, runtime_build):
    check_perplexity(*tiny_ptq161, default_model_dir, "tiny PTQ1.61")


def _mark_one_more_channel(data):
    mask = data.copy()
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    channel = int(np.flatnonzero(bits == 0)[0])
    mask.view(np.uint8)[channel // 8] |= 1 << (channel % 8)
    return mask


@pytest.mark.parametrize("case, message", [
    ("mask count", "blk.0.attn_k.weight' of type ptq161: side tensor 'blk.0.attn_k.salient_mask' marks"),
    ("spill width", "blk.0.attn_k.salient_spill' is 2 bytes wide"),
])
def test_inconsistent_side_tensors_are_refused(case, message, tiny_ptq161, tmp_path, runtime_build):
    from lowbit_gguf.runtime import Model

    def edit(name, data, ggml_type):
        if case == "mask count" and name == "blk.0.attn_k.salient_mask":
            return _mark_one_more_channel(data), ggml_type
        if case == "spill width" and name == "blk.0.attn_k.salient_spill":
            return data[:, :2].copy(), ggml_type
        return data, ggml_type

    bad = rewrite_gguf(tiny_ptq161[0], tmp_path / "bad.gguf", edit)
    with pytest.raises(BadGGUF, match=message):
        Model(bad, n_ctx=N_CTX)


def test_weights_read_back_from_the_file_run_as_their_decode(tiny_ptq161, runtime_build):
    """read_lowbit_weights gives the file's weights as PackedWeights: the kernels on them equal the Python
    reference decode of the same weights (saved beside the file) and the timing API computes the same product."""
    import torch
    from safetensors.torch import load_file

    from lowbit_gguf.gguf.inspect import read_lowbit_weights
    from lowbit_gguf.runtime import lowbit_mul_mat
    from lowbit_gguf.runtime.library import time_lowbit_mul_mat

    path, decoded_dir = tiny_ptq161
    weights = read_lowbit_weights(path, "blk.1.")
    assert sorted(weights) == sorted(f"blk.1.{n}.weight" for n in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))
    decoded = load_file(decoded_dir / "model.safetensors")["model.layers.1.mlp.down_proj.weight"].double()
    x = np.random.default_rng(0).standard_normal((3, decoded.shape[1])).astype(np.float32)
    got = lowbit_mul_mat(weights["blk.1.ffn_down.weight"], x, path="tables")
    np.testing.assert_allclose(got, (torch.from_numpy(x).double() @ decoded.T).numpy(), rtol=1e-4, atol=1e-5)
    timed, seconds = time_lowbit_mul_mat(weights["blk.1.ffn_down.weight"], x, path="tables", repeat=3)
    np.testing.assert_array_equal(timed, got)
    assert seconds > 0


def test_file_without_a_side_tensor_is_refused_by_the_reader(tiny_ptq161, tmp_path):
    from lowbit_gguf.gguf.inspect import read_lowbit_weights

    broken = rewrite_gguf(tiny_ptq161[0], tmp_path / "broken.gguf",
                     lambda name, data, ggml_type: None if name == "blk.0.attn_k.row_params" else (data, ggml_type))
    with pytest.raises(BadGGUF, match="'blk.0.attn_k.weight' of type PTQ161 lacks its side tensor.*row_params"):
        read_lowbit_weights(broken, "blk.0.")


def test_bench_kernels_command(tiny_ptq161, runtime_build):
    from click.testing import CliRunner

    from lowbit_gguf.cli import cli

    result = CliRunner().invoke(cli, ["bench-kernels", str(tiny_ptq161[0]), "--tokens", "1", "--threads", "1",
                                      "--repeat", "2", "--rounds", "3"])
    assert result.exit_code == 0, result.output
    assert "ffn_down" in result.output
    for path in ("loaded", "fastest"):  # the default paths, side by side
        line = next(l for l in result.output.splitlines() if f"one block, 1 token(s), 1 thread(s), {path}:" in l)
        median, fastest = re.search(r": ([\d.]+) us.*\(fastest rounds ([\d.]+) us\)", line).groups()
        assert 0 < float(fastest) <= float(median)
