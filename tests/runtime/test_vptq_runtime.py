"""VPTQ files in the patched runtime: a small Llama quantized end to end, against its Python reference decode in
transformers; fine-tuned end to end from its GGUF."""

import numpy as np
import pytest

import gguf
from runtime_parity import check_logits, check_perplexity

pytestmark = [pytest.mark.runtime, pytest.mark.model]


def test_file_holds_index_streams_and_side_tensors(tiny_vptq):
    reader = gguf.GGUFReader(tiny_vptq[0])
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "VPTQ_2"
    assert tensors["blk.1.ffn_down.weight"].tensor_type.name == "VPTQ_2"
    for suffix, shape in (("codebook", [8, 256]), ("res_codebook", [8, 256]), ("col_scale", [128]),
                          ("col_bias", [128])):
        t = tensors[f"blk.0.attn_q.{suffix}"]
        assert t.tensor_type.name == "F16" and list(t.shape) == shape, suffix
    assert reader.get_field("lowbit_gguf.method").contents() == "vptq"


def test_runtime_logits_match_the_reference_decode(tiny_vptq, runtime_build):
    check_logits(*tiny_vptq, token_by_token=8)


def test_runtime_perplexity_matches_the_reference_decode(tiny_vptq, default_model_dir, runtime_build):
    check_perplexity(*tiny_vptq, default_model_dir, "tiny VPTQ")


def test_permuted_q_k_rows_read_back_in_the_models_order(tiny_vptq):
    """The file's q/k rows are llama.cpp's permutation of the model's; read back (as `lowbit-gguf finetune` does)
    the payload decodes to the model's own rows."""
    import torch
    from safetensors.torch import load_file

    from lowbit_gguf.finetune import read_method, read_quantized_layers
    from lowbit_gguf.evaluate import load_hf_model

    path, decoded_dir = tiny_vptq
    reader = gguf.GGUFReader(path)
    spec, config = read_method(reader, path)
    model = load_hf_model(decoded_dir)
    layers = read_quantized_layers(path, reader, model, spec, config)
    decoded = load_file(decoded_dir / "model.safetensors")
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.up_proj"):
        want = decoded[f"{name}.weight"].float()
        torch.testing.assert_close(spec.decode(layers[name].payload, config), want, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(layers["model.layers.0.self_attn.q_proj"].payload["row_order"].numpy(),
                              np.arange(128))


def test_end_to_end_finetuning_trains_codebooks_and_keeps_the_indices(tiny_vptq, tmp_path, runtime_build):
    """`lowbit-gguf finetune` takes VPTQ files: KL to the float model falls, the index streams stay, the codebooks,
    scales and biases change, and the result runs like its reference decode."""
    from lowbit_gguf.finetune import finetune_gguf

    path, decoded_dir = tiny_vptq
    report = finetune_gguf(path, decoded_dir.parent / "float", tmp_path / "tuned.gguf",
                           save_decoded=tmp_path / "decoded", n_samples=1, seq_len=128, n_heldout=0, batch=1,
                           lr=1e-4, epochs=8, embedding_type="f16", progress=False)
    assert report.losses[-1] < report.losses[0]
    source = {t.name: t for t in gguf.GGUFReader(path).tensors}
    changed = set()
    for t in gguf.GGUFReader(report.gguf).tensors:
        if t.tensor_type.name.startswith("VPTQ"):
            assert np.array_equal(t.data, source[t.name].data), t.name
        elif not np.array_equal(t.data, source[t.name].data):
            changed.add(t.name.rsplit(".", 1)[-1])
    assert {"codebook", "res_codebook", "col_scale", "col_bias"} <= changed
    check_logits(report.gguf, tmp_path / "decoded", token_by_token=2)
