"""Published VPTQ checkpoints (written here with the `vptq` package's VQuantLinear and index packer) converted to GGUF
without quantizing again: the runtime's logits against the vptq package's own model on the checkpoint, for a config
of every VPTQ type, and the checkpoints the types cannot hold or that are damaged refused by name, with nothing left
at the output."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import gguf
from conftest import make_tiny_llama, rewrite_gguf
from lowbit_gguf.published import import_vptq, load_vptq_reference, write_vptq_checkpoint
from runtime_parity import check_logits, check_perplexity

pytestmark = [pytest.mark.runtime, pytest.mark.model]

if importlib.util.find_spec("vptq") is None:
    pytest.skip("the VPTQ reference package (pip install --no-deps vptq==0.0.5.post1)", allow_module_level=True)


def vptq_configs() -> dict[str, tuple[int, int, int]]:
    """A config (v, k, k_res) for every VPTQ type in the type table, by the type's name: a new type needs its row."""
    from lowbit_gguf.gguf.types import LOWBIT_TYPES

    by_bits = {8: (8, 256, 0), 12: (8, 256, 16), 16: (8, 65536, 0), 24: (8, 65536, 256), 32: (4, 256, 256)}
    return {t.name: by_bits[8 * t.type_size * 8 // t.block_size] for t in LOWBIT_TYPES if t.method == "vptq"}


@pytest.fixture(scope="module")
def tiny_float(default_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("import-vptq") / "float"
    make_tiny_llama(folder, tokenizer_dir=default_model_dir, hidden=128, intermediate=512)
    return folder


def import_tiny(tiny_float, tmp_path, v=8, k=256, k_res=16, **kwargs) -> tuple[Path, Path]:
    from lowbit_gguf.checkpoints import import_checkpoint

    checkpoint = write_vptq_checkpoint(tiny_float, tmp_path / "vptq", v, k, k_res, **kwargs)
    return import_checkpoint(checkpoint, tmp_path / "vptq.gguf", embedding_type="f16", progress=False), checkpoint


@pytest.mark.parametrize("type_name", list(vptq_configs()))
def test_imported_file_matches_the_vptq_package(type_name, tiny_float, tmp_path, runtime_build):
    v, k, k_res = vptq_configs()[type_name]
    path, checkpoint = import_tiny(tiny_float, tmp_path, v, k, k_res)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == type_name and types["output.weight"] == "F16"
    assert reader.get_field("lowbit_gguf.rope_type").contents() == "neox"  # Llama's q/k rows as Hugging Face has them
    assert json.loads(reader.get_field("lowbit_gguf.config").contents())["num_res_centroids"] == k_res
    check_logits(path, checkpoint, token_by_token=3, reference=load_vptq_reference(checkpoint))


@pytest.mark.parametrize("norm, perm", [(False, False), (True, False), (False, True)])
def test_imported_without_norm_or_permutation(norm, perm, tiny_float, tmp_path, runtime_build):
    path, checkpoint = import_tiny(tiny_float, tmp_path, enable_norm=norm, enable_perm=perm)
    check_logits(path, checkpoint, reference=load_vptq_reference(checkpoint))


def test_imported_perplexity_matches_the_vptq_package(tiny_float, tmp_path, default_model_dir, runtime_build):
    path, checkpoint = import_tiny(tiny_float, tmp_path, 8, 65536, 256)
    check_perplexity(path, checkpoint, default_model_dir, "imported VPTQ v8k65536r256",
                     reference=load_vptq_reference(checkpoint))


def test_default_model_imports_with_its_tied_head(default_model_dir, tmp_path, runtime_build):
    """The default model's head is its embeddings (no lm_head in the checkpoint), its rows 576, 1536 and 192."""
    from lowbit_gguf.checkpoints import import_checkpoint

    checkpoint = write_vptq_checkpoint(default_model_dir, tmp_path / "vptq", 8, 256, 256)
    path = import_checkpoint(checkpoint, tmp_path / "vptq.gguf", embedding_type="f16", progress=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert "output.weight" not in types and types["blk.29.ffn_down.weight"] == "VPTQ_2"
    check_logits(path, checkpoint, reference=load_vptq_reference(checkpoint))


def test_unpacked_indices_import_as_packed_ones(tiny_float, tmp_path):
    """Checkpoints may keep indices unpacked (int16 holding uint16, is_indice_packed false): same file."""
    import_vptq()
    from vptq.utils.pack import unpack_index_tensor

    packed, checkpoint = import_tiny(tiny_float, tmp_path, 8, 65536, 0)
    packed = packed.rename(tmp_path / "packed.gguf")

    def unpack(tensors, layers):
        for name in [n for n in tensors if n.endswith(".indices")]:
            idx, _ = unpack_index_tensor(tensors[name], 16, layers[name.removesuffix(".indices")]["group_size"])
            tensors[name] = idx.to(torch.int32).to(torch.uint16).view(torch.int16).contiguous()
        for layer in layers.values():
            layer["is_indice_packed"] = False

    _edit(checkpoint, unpack)
    from lowbit_gguf.checkpoints import import_checkpoint

    unpacked = import_checkpoint(checkpoint, tmp_path / "unpacked.gguf", embedding_type="f16", progress=False)
    want, got = gguf.GGUFReader(packed), gguf.GGUFReader(unpacked)
    for a, b in zip(want.tensors, got.tensors, strict=True):
        assert a.name == b.name and np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name


def test_cli_convert_imports_vptq_checkpoints(tiny_float, tmp_path):
    from click.testing import CliRunner

    from lowbit_gguf.cli import cli

    checkpoint = write_vptq_checkpoint(tiny_float, tmp_path / "vptq", 8, 256, 256)
    out = tmp_path / "out.gguf"
    result = CliRunner().invoke(cli, ["convert", str(checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.1.ffn_down.weight"] == "VPTQ_2" and types["token_embd.weight"] == "Q8_0"


def test_rope_type_key_is_checked(tiny_float, tmp_path, runtime_build):
    """Without the key the runtime would rotate Hugging Face's halves as neighbours: the key is what makes the logits
    right, and a value it does not know is a load error naming it."""
    from lowbit_gguf.errors import LowbitError
    from lowbit_gguf.runtime import Model

    path, checkpoint = import_tiny(tiny_float, tmp_path)
    unknown = rewrite_gguf(path, tmp_path / "rope-norm.gguf", strings={"lowbit_gguf.rope_type": "norm"})
    with pytest.raises(LowbitError, match="'lowbit_gguf.rope_type' is 'norm'"):
        Model(unknown, n_ctx=64).close()
    without = rewrite_gguf(path, tmp_path / "rope-none.gguf", strings={"lowbit_gguf.rope_type": None})
    with pytest.raises(AssertionError):
        check_logits(without, checkpoint, reference=load_vptq_reference(checkpoint))


# ---- checkpoints refused ----

def _edit(checkpoint: Path, change) -> None:
    """Rewrite the checkpoint's tensors and per-linear configs through change(tensors, config_for_layers)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint / "model.safetensors")
    config = json.loads((checkpoint / "config.json").read_text())
    change(tensors, config["quantization_config"]["config_for_layers"])
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})
    (checkpoint / "config.json").write_text(json.dumps(config))


Q = "model.layers.0.self_attn.q_proj"


def _set(key, value):
    return lambda t, c: c[Q].update({key: value})


CASES = {
    "outliers": (_set("outlier_size", 16), f"{Q} is VPTQ v8k256r16 with 16 outlier columns"),
    "column groups": (_set("group_num", 2), "in 2 column groups; lowbit-gguf's VPTQ types take one codebook"),
    "padded vectors": (_set("vector_lens", [-1, 6]), "vectors of 6 rows do not divide its 128 rows"),
    "no type": (_set("num_centroids", [-1, 512]), "VPTQ with 13-bit indices over vectors of 8"),
    "no entry": (lambda t, c: c.pop(Q), f"{Q} has VPTQ indices but its quantization_config has no entry"),
    "indices of another shape": (lambda t, c: t.update({f"{Q}.indices": t[f"{Q}.indices"][:, :-1].contiguous()}),
                                 rf"{Q}.indices has shape \[1, 15, 48\]"),
    "indices as floats": (lambda t, c: t.update({f"{Q}.indices": t[f"{Q}.indices"].float()}),
                          f"{Q}.indices is float32; expected int32"),
    "not a permutation": (lambda t, c: t[f"{Q}.perm"].__setitem__(0, t[f"{Q}.perm"][1]),
                          f"{Q}.perm is not a permutation of its 128 columns"),
    "no scale": (lambda t, c: t.pop(f"{Q}.weight_scale"), f"{Q} has VPTQ indices but no weight_scale"),
    "NaN centroid": (lambda t, c: t[f"{Q}.centroids.weight"].view(-1).__setitem__(5, float("nan")),
                     f"{Q}.centroids.weight holds NaN"),
    "centroids beyond float16": (lambda t, c: t.update({f"{Q}.res_centroids.weight":
                                                        t[f"{Q}.res_centroids.weight"].float() * 1e7}),
                                 f"{Q}: its res centroids do not fit in float16"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_or_unsupported_checkpoints_are_refused_by_name(case, tiny_float, tmp_path):
    from lowbit_gguf.checkpoints import import_checkpoint
    from lowbit_gguf.errors import LowbitError

    checkpoint = write_vptq_checkpoint(tiny_float, tmp_path / "vptq", 8, 256, 16)
    change, message = CASES[case]
    _edit(checkpoint, change)
    out = tmp_path / "out.gguf"
    with pytest.raises(LowbitError, match=message):
        import_checkpoint(checkpoint, out, progress=False)
    assert list(tmp_path.glob("out.gguf*")) == [] and list(tmp_path.glob("lowbit-import-*")) == []
