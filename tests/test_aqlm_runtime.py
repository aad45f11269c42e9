"""AQLM files in the patched runtime: a small Llama quantized end to end, against its Python reference
decode in transformers, and malformed side tensors refused with a message."""

import numpy as np
import pytest
import torch

import gguf
from lowbit_gguf.errors import BadGGUF
from lowbit_gguf.gguf.write import _copy_metadata

pytestmark = [pytest.mark.runtime, pytest.mark.model]

N_CTX = 128


def test_file_holds_codes_and_side_tensors(tiny_aqlm):
    reader = gguf.GGUFReader(tiny_aqlm[0])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "AQLM_2X8" and types["blk.1.ffn_down.weight"] == "AQLM_2X8"
    assert types["blk.0.attn_q.codebook"] == "F16" and types["blk.0.attn_q.row_scale"] == "F16"
    assert types["token_embd.weight"] == "F16" and types["output.weight"] == "F16"  # as asked for parity
    assert reader.get_field("lowbit_gguf.method").contents() == "aqlm"


def test_runtime_logits_match_the_reference_decode(tiny_aqlm, runtime_build):
    from transformers import AutoModelForCausalLM

    from lowbit_gguf.runtime import Model

    tokens = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(1))
    reference = AutoModelForCausalLM.from_pretrained(tiny_aqlm[1], torch_dtype=torch.float32)
    with torch.no_grad():
        want = reference(tokens).logits[0].numpy()
    with Model(tiny_aqlm[0], n_ctx=N_CTX, n_threads=2) as model:
        got = model.eval(tokens[0].tolist(), all_logits=True)
    # llama.cpp keeps K/V in f16: differences of ~1e-3 of the logit scale, as for F16 files
    assert np.max(np.abs(got - want)) < 2e-2 * np.max(np.abs(want))
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) > 0.9


def test_runtime_perplexity_matches_the_reference_decode(tiny_aqlm, default_model_dir, runtime_build):
    from lowbit_gguf.calibration import load_text
    from lowbit_gguf.evaluate import hf_perplexity, hf_tokenize, load_hf_model
    from lowbit_gguf.runtime.library import Model, perplexity

    tokens = hf_tokenize(default_model_dir, load_text("evaluation")[:20000])[: 4 * N_CTX]
    reference = hf_perplexity(load_hf_model(tiny_aqlm[1]), tokens, N_CTX, 4, progress=False)
    with Model(tiny_aqlm[0], n_ctx=N_CTX, n_threads=2) as model:
        value = perplexity(model, tokens, N_CTX)
    print(f"tiny AQLM 2x8: runtime {value:.3f}, reference decode {reference:.3f}")
    assert value == pytest.approx(reference, rel=0.01)


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
