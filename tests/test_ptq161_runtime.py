"""PTQ1.61 files in the patched runtime: a small Llama quantized end to end, against its Python reference
decode in transformers, and inconsistent side tensors refused at load with a message."""

import numpy as np
import pytest

import gguf
from lowbit_gguf.errors import BadGGUF
from runtime_parity import N_CTX, check_logits, check_perplexity
from test_aqlm_runtime import rewrite

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
    ("missing", "needs the side tensor 'blk.0.attn_k.row_params'"),
])
def test_inconsistent_side_tensors_are_refused(case, message, tiny_ptq161, tmp_path, runtime_build):
    from lowbit_gguf.runtime import Model

    def edit(name, data, ggml_type):
        if case == "mask count" and name == "blk.0.attn_k.salient_mask":
            return _mark_one_more_channel(data), ggml_type
        if case == "spill width" and name == "blk.0.attn_k.salient_spill":
            return data[:, :2].copy(), ggml_type
        if case == "missing" and name == "blk.0.attn_k.row_params":
            return None
        return data, ggml_type

    bad = rewrite(tiny_ptq161[0], tmp_path / "bad.gguf", edit)
    with pytest.raises(BadGGUF, match=message):
        Model(bad, n_ctx=N_CTX)
