"""Published AQLM checkpoints (written here with the `aqlm` package through transformers' AQLM integration) converted
to GGUF without quantizing again: the runtime's logits against transformers + aqlm on the checkpoint itself, the
file of this project's own quantization written again from its checkpoint, and the checkpoints the types cannot
hold or that are damaged refused by name, with nothing left at the output."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import gguf
from conftest import aqlm_configs, make_tiny_llama
from lowbit_gguf.published import random_aqlm_payload, write_aqlm_checkpoint
from runtime_parity import check_logits, check_perplexity

pytestmark = [pytest.mark.runtime, pytest.mark.model]

pytest.importorskip("aqlm", reason="the AQLM reference package (pip install aqlm==1.1.7 numba)")


@pytest.fixture(scope="module")
def tiny_float(default_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("import") / "float"
    make_tiny_llama(folder, tokenizer_dir=default_model_dir, hidden=128, intermediate=512)
    return folder


@pytest.fixture(scope="module")
def single_thread_aqlm_reference():
    """The aqlm package's CPU kernel adds into one output from several numba threads (prange over input groups): its
    results change from run to run unless it runs on one thread."""
    numba = pytest.importorskip("numba")
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def import_tiny(tiny_float, tmp_path, config: str, **kwargs) -> tuple[Path, Path]:
    from lowbit_gguf.checkpoints import import_checkpoint

    m, b = (int(x) for x in config.split("x"))
    checkpoint = write_aqlm_checkpoint(tiny_float, tmp_path / f"aqlm-{config}", m, b, **kwargs)
    return import_checkpoint(checkpoint, tmp_path / f"aqlm-{config}.gguf", embedding_type="f16",
                             progress=False), checkpoint


@pytest.mark.parametrize("config", aqlm_configs())
def test_imported_file_matches_transformers_with_aqlm(config, tiny_float, tmp_path, runtime_build,
                                                      single_thread_aqlm_reference):
    path, checkpoint = import_tiny(tiny_float, tmp_path, config)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == f"AQLM_{config.upper()}" and types["output.weight"] == "F16"
    check_logits(path, checkpoint, token_by_token=3)


def test_imported_perplexity_matches_transformers_with_aqlm(tiny_float, tmp_path, default_model_dir, runtime_build,
                                                            single_thread_aqlm_reference):
    check_perplexity(*import_tiny(tiny_float, tmp_path, "2x8"), default_model_dir, "imported AQLM 2x8")


def test_default_model_imports_with_its_tied_head(default_model_dir, tmp_path, runtime_build,
                                                  single_thread_aqlm_reference):
    """The default model's head is its embeddings (no lm_head in the checkpoint), its rows 576, 1536 and 192."""
    from lowbit_gguf.checkpoints import import_checkpoint

    checkpoint = write_aqlm_checkpoint(default_model_dir, tmp_path / "aqlm", 2, 8)
    path = import_checkpoint(checkpoint, tmp_path / "aqlm.gguf", embedding_type="f16", progress=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert "output.weight" not in types and types["blk.29.ffn_down.weight"] == "AQLM_2X8"
    check_logits(path, checkpoint)


def test_own_quantization_imports_to_the_same_file(tiny_float, tmp_path):
    """A checkpoint holding this project's AQLM codes converts to the tensors `quantize` wrote for them."""
    from lowbit_gguf import quantize
    from lowbit_gguf.methods import get_method

    config = replace(get_method("aqlm").parse_config("2x8"), max_rounds=1, adam_steps=5, kmeans_iters=4,
                     beam_size=1, finetune_epochs=0)
    quantized = quantize(tiny_float, config, n_samples=4, seq_len=64, n_heldout=0, progress=False)
    own = quantized.save_gguf(tmp_path / "own.gguf", embedding_type="f16", progress=False)
    payloads = {name: layer.payload for name, layer in quantized.result.layers.items()}
    imported, _ = import_tiny(tiny_float, tmp_path, "2x8", payloads=payloads, dtype=torch.float32)
    want, got = gguf.GGUFReader(own), gguf.GGUFReader(imported)
    assert [t.name for t in got.tensors] == [t.name for t in want.tensors]
    for a, b in zip(want.tensors, got.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name
    assert got.get_field("lowbit_gguf.method").contents() == "aqlm"


def test_head_spelled_as_published(tiny_float, tmp_path):
    """Published checkpoints list 'lm_head.weight' (transformers 5 matches module names): which linears are quantized
    is read from the tensors, so the head stays in float either way."""
    path, _ = import_tiny(tiny_float, tmp_path, "1x8", not_to_quantize=("lm_head.weight",))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["output.weight"] == "F16" and types["blk.1.ffn_down.weight"] == "AQLM_1X8"


def test_cli_convert_imports_aqlm_checkpoints(tiny_float, tmp_path):
    from click.testing import CliRunner

    from lowbit_gguf.cli import cli

    checkpoint = write_aqlm_checkpoint(tiny_float, tmp_path / "aqlm", 2, 8)
    out = tmp_path / "out.gguf"
    result = CliRunner().invoke(cli, ["convert", str(checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.ffn_up.weight"] == "AQLM_2X8" and types["token_embd.weight"] == "Q8_0"


# ---- checkpoints refused ----

def _edit(checkpoint: Path, change) -> None:
    """Rewrite the checkpoint's tensors (and config) through change(tensors, config)."""
    import json

    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint / "model.safetensors")
    config = json.loads((checkpoint / "config.json").read_text())
    change(tensors, config["quantization_config"])
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})
    (checkpoint / "config.json").write_text(json.dumps(config))


Q = "model.layers.0.self_attn.q_proj"
CASES = {
    "out-groups": (lambda t, c: c.update(out_group_size=2), "out-groups of 1 only"),
    "8x8": (lambda t, c: c.update(num_codebooks=8), "AQLM 8x8 with groups of 8 has no GGUF type"),
    "1x16 in groups of 16": (lambda t, c: c.update(num_codebooks=1, nbits_per_codebook=16, in_group_size=16),
                             "AQLM 1x16 with groups of 16 has no GGUF type"),
    "codes out of range": (lambda t, c: t.update({f"{Q}.codes": t[f"{Q}.codes"].to(torch.int16) + 300}),
                           f"{Q}.codes holds codes in"),
    "codes as floats": (lambda t, c: t.update({f"{Q}.codes": t[f"{Q}.codes"].half()}),
                        f"{Q}.codes is float16, an integer type was expected"),
    "codes of another shape": (lambda t, c: t.update({f"{Q}.codes": t[f"{Q}.codes"][:, :-1].contiguous()}),
                               f"{Q}.codes has shape [128, 15, 2]"),
    "no scales": (lambda t, c: t.pop(f"{Q}.scales"), f"{Q} has AQLM codes, codebooks but no scales"),
    "NaN codebook": (lambda t, c: t[f"{Q}.codebooks"].view(-1).__setitem__(5, float("nan")),
                     f"{Q}.codebooks holds NaN"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_or_unsupported_checkpoints_are_refused_by_name(case, tiny_float, tmp_path):
    from lowbit_gguf.checkpoints import import_checkpoint
    from lowbit_gguf.errors import LowbitError

    checkpoint = write_aqlm_checkpoint(tiny_float, tmp_path / "aqlm", 2, 8)
    change, message = CASES[case]
    _edit(checkpoint, change)
    out = tmp_path / "out.gguf"
    with pytest.raises(LowbitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        import_checkpoint(checkpoint, out, progress=False)
    assert list(tmp_path.glob("out.gguf*")) == [] and list(tmp_path.glob("lowbit-import-*")) == []


def test_missing_shard_is_refused(tiny_float, tmp_path):
    import json

    from lowbit_gguf.checkpoints import import_checkpoint
    from lowbit_gguf.errors import LowbitError

    checkpoint = write_aqlm_checkpoint(tiny_float, tmp_path / "aqlm", 2, 8)
    from safetensors import safe_open

    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        names = list(f.keys())
    index = {"weight_map": {n: "model.safetensors" for n in names} | {"model.norm.weight": "model-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LowbitError, match="lacks the shard.s. model-00002.safetensors"):
        import_checkpoint(checkpoint, tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_random_payload_covers_every_code():
    payload = random_aqlm_payload(64, 256, 1, 8, seed=0)
    assert payload["codes"].min() == 0 and payload["codes"].max() == 255  # signed storage is exercised


def test_tied_head_is_not_a_linear_to_import(tmp_path):
    """A model whose head is its embeddings (the default model) has no lm_head tensor to find codes or a weight in."""
    from transformers import LlamaConfig

    from lowbit_gguf.checkpoints import linear_shapes

    for tied in (True, False):
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    tie_word_embeddings=tied).save_pretrained(tmp_path / str(tied))
        shapes = linear_shapes(tmp_path / str(tied))
        assert ("lm_head" in shapes) != tied and shapes["model.layers.0.mlp.down_proj"] == (32, 64)
