"""End-to-end fine-tuning of a quantized GGUF (lowbit-gguf finetune): the file's layers read back exactly,
KL to the float model goes down with codes untouched, the result runs in the patched runtime like its
reference decode, an interrupted run resumes to the same file, and files it cannot tune are refused."""

import json

import numpy as np
import pytest
import torch

import gguf
from lowbit_gguf.errors import LowbitError

from conftest import make_tiny_llama
from runtime_parity import check_logits

pytestmark = [pytest.mark.model]

# One calibration sequence seen 12 times: the KL on it must fall (a random tiny model's KL is too small to
# show a gain on unseen text within a test's budget).
TUNING = dict(n_samples=1, seq_len=128, n_heldout=0, batch=1, lr=1e-4, epochs=12, embedding_type="f16",
              progress=False)


def float_dir(tiny):
    return tiny[1].parent / "float"  # the tiny_aqlm fixture's float model, beside its decoded one


def test_layers_and_norms_read_back_from_the_file(tiny_aqlm):
    """Codes, codebooks and scales unpacked from the GGUF (q/k rows permuted back) decode to exactly the
    weights the quantizer produced, and the file's tuned norms are the quantized model's."""
    from lowbit_gguf.evaluate import load_hf_model
    from lowbit_gguf.finetune import load_norms, read_method, read_quantized_layers
    from lowbit_gguf.methods.aqlm import bits_per_weight

    path = tiny_aqlm[0]
    reader = gguf.GGUFReader(path)
    spec, config = read_method(reader, path)
    assert spec.name == "aqlm" and (config.num_codebooks, config.nbits) == (2, 8)
    model = load_hf_model(float_dir(tiny_aqlm))
    quantized = dict(load_hf_model(tiny_aqlm[1]).named_parameters())
    layers = read_quantized_layers(path, reader, model, spec, config)
    assert len(layers) == 2 * 7
    for module, layer in layers.items():
        assert torch.equal(layer.decoded, quantized[f"{module}.weight"].detach())
        assert layer.bits_per_weight == pytest.approx(bits_per_weight(config, *layer.decoded.shape))
    load_norms(path, reader, model)
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.equal(p, quantized[name])


def kl_to_float(model_dir, decoded_dir, tokens):
    from lowbit_gguf.evaluate import load_hf_model
    from lowbit_gguf.finetune import kl_per_token

    with torch.no_grad():
        target = torch.log_softmax(load_hf_model(model_dir)(tokens).logits, -1)
        return kl_per_token(load_hf_model(decoded_dir)(tokens).logits, target).item()


@pytest.fixture(scope="module")
def tuned(tiny_aqlm, tmp_path_factory):
    from lowbit_gguf.finetune import finetune_gguf

    folder = tmp_path_factory.mktemp("tuned")
    report = finetune_gguf(tiny_aqlm[0], float_dir(tiny_aqlm), folder / "tuned.gguf",
                           save_decoded=folder / "decoded", **TUNING)
    return report, folder / "decoded"


def test_finetuning_lowers_kl_and_keeps_the_codes(tiny_aqlm, tuned):
    from lowbit_gguf.calibration import model_calibration_set

    report, decoded = tuned
    assert report.steps == 12 and len(report.losses) == 12
    tokens = model_calibration_set(float_dir(tiny_aqlm), n_samples=1, seq_len=128, n_heldout=0).train
    before = kl_to_float(float_dir(tiny_aqlm), tiny_aqlm[1], tokens)
    after = kl_to_float(float_dir(tiny_aqlm), decoded, tokens)
    assert report.losses[0] == pytest.approx(before, rel=1e-3)  # training starts from the file as it is
    assert after < 0.7 * before
    source = {t.name: t for t in gguf.GGUFReader(tiny_aqlm[0]).tensors}
    out = gguf.GGUFReader(report.gguf)
    changed = set()
    for t in out.tensors:
        assert t.tensor_type == source[t.name].tensor_type
        if t.tensor_type.name.startswith("AQLM"):
            assert np.array_equal(t.data, source[t.name].data)  # codes fixed
        elif not np.array_equal(t.data, source[t.name].data):
            changed.add(t.name.rsplit(".", 1)[-1] if ".codebook" in t.name or ".row_scale" in t.name else t.name)
    assert {"codebook", "row_scale", "blk.0.attn_norm.weight", "output_norm.weight"} <= changed
    meta = json.loads(out.get_field("lowbit_gguf.finetune").contents())
    assert meta["epochs"] == 12 and meta["kl_first"] > meta["kl_last"]


@pytest.mark.runtime
def test_tuned_file_runs_like_its_reference_decode(tuned, runtime_build):
    check_logits(tuned[0].gguf, tuned[1], token_by_token=2)


def test_finetuning_stops_early_and_writes_its_best_state(tiny_aqlm, tmp_path, monkeypatch):
    """A learning rate far too high makes the held-out KL worse at the first check: training stops there and the
    file written is the state before training, which did best on the held-out windows."""
    import lowbit_gguf.finetune as ft

    monkeypatch.setattr(ft, "EVAL_EVERY", 4)
    settings = {**TUNING, "n_heldout": 2, "lr": 0.3, "epochs": 40, "patience": 1}
    report = ft.finetune_gguf(tiny_aqlm[0], float_dir(tiny_aqlm), tmp_path / "t.gguf", **settings)
    assert report.steps == 4 and report.best_step == 0 and len(report.heldout) == 2
    assert report.heldout[1] > report.heldout[0]
    source = {t.name: t for t in gguf.GGUFReader(tiny_aqlm[0]).tensors}
    for t in gguf.GGUFReader(report.gguf).tensors:
        if ".codebook" in t.name or ".row_scale" in t.name or "norm" in t.name:
            assert np.array_equal(t.data, source[t.name].data), t.name


def test_interrupted_finetuning_resumes_to_the_same_file(tiny_aqlm, tuned, tmp_path, monkeypatch):
    import lowbit_gguf.finetune as ft

    real, calls = ft.kl_per_token, []

    def interrupt_after_ten(*args):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return real(*args)

    out = tmp_path / "tuned.gguf"
    monkeypatch.setattr(ft, "kl_per_token", interrupt_after_ten)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune_gguf(tiny_aqlm[0], float_dir(tiny_aqlm), out, **TUNING)
    assert not out.exists()
    saved = torch.load(tmp_path / "tuned.gguf.checkpoint" / "finetune.pt", weights_only=True)
    assert saved["step"] == 8 and len(saved["losses"]) == 8

    def counted(*args):
        calls.append(1)
        return real(*args)

    calls.clear()
    monkeypatch.setattr(ft, "kl_per_token", counted)
    report = ft.finetune_gguf(tiny_aqlm[0], float_dir(tiny_aqlm), out, **TUNING)
    assert len(calls) == 4 and report.losses[:8] == saved["losses"]  # steps 9-12 only
    # the same training as the uninterrupted run (to float rounding: CPU threads may sum in another order)
    assert report.losses == pytest.approx(tuned[0].losses, rel=1e-3)
    straight = {t.name: t for t in gguf.GGUFReader(tuned[0].gguf).tensors}
    for t in gguf.GGUFReader(out).tensors:
        if t.tensor_type.name.startswith("AQLM"):
            assert np.array_equal(t.data, straight[t.name].data), t.name
        else:
            assert np.allclose(np.asarray(t.data, np.float32), np.asarray(straight[t.name].data, np.float32),
                               rtol=1e-2, atol=1e-4), t.name
    assert not (tmp_path / "tuned.gguf.checkpoint").exists()


def test_finetuning_creates_no_tensor_on_an_implicit_device(tiny_aqlm, tuned, tmp_path, monkeypatch):
    """What `finetune --device cuda` needs, checked without a GPU (as in test_sequential): torch's default device
    is 'meta' from the moment both models are loaded until the file is written, so a tensor the training creates
    without naming a device fails the first operation that meets it. The training is the same."""
    import lowbit_gguf.finetune as ft
    import lowbit_gguf.export

    real_load_norms, real_export = ft.load_norms, lowbit_gguf.export.export_gguf

    def load_norms(*args):
        real_load_norms(*args)
        torch.set_default_device("meta")

    def export_gguf(*args, **kwargs):
        torch.set_default_device(None)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(ft, "load_norms", load_norms)
    monkeypatch.setattr(lowbit_gguf.export, "export_gguf", export_gguf)
    try:
        report = ft.finetune_gguf(tiny_aqlm[0], float_dir(tiny_aqlm), tmp_path / "tuned.gguf", **TUNING)
    finally:
        torch.set_default_device(None)
    assert report.losses == pytest.approx(tuned[0].losses, rel=1e-3)


def test_files_it_cannot_tune_are_refused(tiny_aqlm, tiny_ptq161, default_f16_gguf, default_model_dir, tmp_path):
    from lowbit_gguf.finetune import finetune_gguf

    with pytest.raises(LowbitError, match="nothing to fine-tune end to end"):
        finetune_gguf(tiny_ptq161[0], float_dir(tiny_ptq161), tmp_path / "a.gguf", **TUNING)
    with pytest.raises(LowbitError, match="not written by lowbit-gguf quantize"):
        finetune_gguf(default_f16_gguf, default_model_dir, tmp_path / "b.gguf", **TUNING)
    other = make_tiny_llama(tmp_path / "other", tokenizer_dir=default_model_dir, hidden=128, seed=5)
    assert other is not None
    with pytest.raises(LowbitError, match="not made from this model"):
        finetune_gguf(tiny_aqlm[0], tmp_path / "other", tmp_path / "c.gguf", **TUNING)
    assert not list(tmp_path.glob("*.gguf"))
