"""PTQ1.61 in Python: config, salient mask, decode, the row layout of pack, block training."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from lowbit_gguf.calibration import as_calibration
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.gguf.types import SALIENT_MASK, SALIENT_SPILL
from lowbit_gguf.methods import get_method
from lowbit_gguf.methods.ptq161 import PTQ161Config, bits_per_weight, n_salient
from lowbit_gguf.sequential import stage_context
from lowbit_gguf.training import BlockData
from lowbit_gguf.random_weights import random_ptq161_payload


def test_config_text_and_salient_count():
    assert PTQ161Config.parse("s20").salient_ratio == pytest.approx(0.2)
    assert PTQ161Config.parse("s12.5").salient_ratio == pytest.approx(0.125)
    with pytest.raises(ValueError, match="s<salient percent>"):
        PTQ161Config.parse("20%")
    with pytest.raises(ValueError, match="between 0 and 1"):
        PTQ161Config(salient_ratio=1.0)
    assert n_salient(576, 0.2) == 112 and n_salient(1536, 0.2) == 304  # multiples of 8
    assert n_salient(64, 0.01) == 8 and n_salient(64, 0.99) == 56
    with pytest.raises(ValueError, match="multiple of 8"):
        n_salient(100, 0.2)


def test_bits_per_weight_counts_codes_scales_and_mask():
    # 1 bit per weight + 3 per salient weight, 4 f16 per row, f16 + 1 mask bit per input channel
    d_out, d_in, n_sal = 576, 1536, 304
    want = (d_out * (d_in + 3 * n_sal) + d_out * 64 + d_in * 17) / (d_out * d_in)
    assert bits_per_weight(d_out, d_in, n_sal) == pytest.approx(want)
    assert 1.6 < want < 1.7


def test_salient_channels_are_those_with_the_largest_activations():
    spec = get_method("ptq161")
    absmax = torch.rand(96, generator=torch.Generator().manual_seed(0))
    q = spec.quantize(torch.randn(8, 96), absmax, PTQ161Config())
    assert set(q.payload["mask"].nonzero().flatten().tolist()) == set(absmax.topk(16).indices.tolist())
    with pytest.raises(ValueError, match="max \\|x\\|"):
        spec.quantize(torch.randn(8, 96), None, PTQ161Config())


def test_decode_follows_the_formula():
    spec, config, p = random_ptq161_payload(d_out=6, d_in=64)
    w = spec.decode(p)
    rp = torch.stack([p["r1"] * p["alpha"], p["r1"] * p["mu"], p["salient_scale"].float(),
                      p["salient_min"].float()], 1).half().float()
    sal, binary = p["mask"].nonzero().flatten(), (~p["mask"]).nonzero().flatten()
    r, k, j = 2, 3, 5
    assert w[r, sal[k]] == rp[r, 2] * p["salient_codes"][r, k].float() + rp[r, 3]
    sign = 1.0 if p["signs"][r, j] else -1.0
    assert w[r, binary[j]] == p["r2"][j].half().float() * (rp[r, 0] * sign + rp[r, 1])


def test_pack_lays_out_signs_then_salient_codes_with_the_rest_spilled():
    spec, config, p = random_ptq161_payload(d_out=5, d_in=96)  # 16 salient: 8 code bytes, 2 in the row
    packed = spec.pack(p)
    row, spill = packed.codes[3], packed.sides[SALIENT_SPILL][3].view(np.uint8)
    assert packed.codes.shape == (5, 12) and spill.shape == (6,)
    stream = np.concatenate([row, spill])
    for j in (0, 9, 79):  # sign bit j of the 80 binary channels
        assert bool(stream[j // 8] >> (j % 8) & 1) == bool(p["signs"][3, j])
    for k in (0, 3, 4, 15):  # 4-bit code k of the 16 salient channels, after the 10 sign bytes
        byte = stream[10 + k // 2]
        assert (byte >> 4 if k % 2 else byte & 15) == int(p["salient_codes"][3, k])
    mask_bits = np.unpackbits(packed.sides[SALIENT_MASK].view(np.uint8), bitorder="little").astype(bool)
    np.testing.assert_array_equal(mask_bits, p["mask"].numpy())
    assert packed.weight_params == {"n_salient": 16}


def test_block_training_brings_the_block_closer_to_the_float_block(tmp_path):
    """One tiny Llama block: the trained scales give a smaller output error than the initial ones."""
    from conftest import make_tiny_llama
    from lowbit_gguf.blocks import (block_linears, capture_block_inputs, collect_input_statistics, decoder_blocks,
                                    run_block)

    model = make_tiny_llama(tmp_path / "m", layers=1, hidden=64)
    tokens = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    hidden, kwargs = capture_block_inputs(model, tokens)
    block = decoder_blocks(model)[0]
    target = run_block(block, hidden, kwargs, 8)
    spec = get_method("ptq161")
    config = PTQ161Config(epochs=10, lr=5e-3)
    stats = collect_input_statistics(block, hidden, kwargs, 8, "absmax")
    results = {name: spec.quantize(lin.weight, stats[name], config) for name, lin in block_linears(block).items()}

    def error():
        for name, lin in block_linears(block).items():
            lin.weight.data.copy_(results[name].decoded)
        return ((run_block(block, hidden, kwargs, 8) - target).pow(2).mean() / target.pow(2).mean()).item()

    before = error()
    spec.finetune_block(block, results, BlockData(hidden, target, kwargs, len(hidden), target), config)
    after = error()
    assert after < 0.9 * before, (before, after)
    for r in results.values():  # the payload holds what was trained; decoded is its decode
        torch.testing.assert_close(r.decoded, spec.decode(r.payload))
        assert not torch.equal(r.payload["r2"], torch.ones_like(r.payload["r2"]))


def test_driver_gives_activation_maxima_and_float_targets_and_resumes(tmp_path):
    from conftest import make_tiny_llama
    from lowbit_gguf.sequential import quantize_model

    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(4))
    ptq = get_method("ptq161")
    config = replace(ptq.parse_config("s25"), epochs=1)
    seen = {"stats": [], "float": []}

    def record_quantize(weight, statistic, cfg):
        seen["stats"].append(statistic)
        return ptq.quantize(weight, statistic, cfg)

    def record_finetune(block, results, data, cfg):
        seen["float"].append(data.float_targets)
        ptq.finetune_block(block, results, data, cfg)

    spec = replace(ptq, name="rec", quantize=record_quantize, finetune_block=record_finetune)
    full = make_tiny_llama(tmp_path / "a", layers=2)
    quantize_model(full, tokens, spec, config, progress=False)
    assert all(s.dim() == 1 and (s >= 0).all() for s in seen["stats"])  # max |x| per input channel
    assert len(seen["float"]) == 2 and all(f is not None for f in seen["float"])
    # block 1's float targets: the float model's blocks 0 and 1 on the float activations
    from lowbit_gguf.blocks import run_block, capture_block_inputs, decoder_blocks

    float_model = make_tiny_llama(tmp_path / "f", layers=2)  # same seed: the same weights as `full` had
    hidden, kwargs = capture_block_inputs(float_model, tokens)
    blocks = decoder_blocks(float_model)
    want = run_block(blocks[1], run_block(blocks[0], hidden, kwargs, 8), kwargs, 8)
    torch.testing.assert_close(seen["float"][1], want)

    calls = {"n": 0}

    def flaky(weight, statistic, cfg):
        calls["n"] += 1
        if calls["n"] == 9:  # in block 1
            raise KeyboardInterrupt
        return ptq.quantize(weight, statistic, cfg)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        quantize_model(make_tiny_llama(tmp_path / "b", layers=2), tokens, replace(ptq, quantize=flaky), config,
                       checkpoint_dir=ckpt, progress=False)
    resumed = make_tiny_llama(tmp_path / "c", layers=2)
    quantize_model(resumed, tokens, ptq, config, checkpoint_dir=ckpt, progress=False)
    reference = make_tiny_llama(tmp_path / "d", layers=2)
    quantize_model(reference, tokens, ptq, config, progress=False)
    torch.testing.assert_close(resumed(tokens).logits, reference(tokens).logits)


def test_restorative_lora_adds_low_rank_updates_that_help_the_quantized_model(tmp_path):
    from conftest import make_tiny_llama
    from lowbit_gguf.methods.ptq161 import restorative_lora
    from lowbit_gguf.blocks import block_linears, decoder_blocks
    from lowbit_gguf.sequential import quantize_model

    tokens = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(5))
    config = PTQ161Config(epochs=0, lora_rank=4, lora_steps=30, lora_lr=5e-3, lora_batch=4)
    model = make_tiny_llama(tmp_path / "m", layers=2)
    before = {n: l.weight.detach().clone() for n, l in block_linears(decoder_blocks(model)[1]).items()}
    restorative_lora(model, as_calibration(tokens), config,
                     stage_context(get_method("ptq161"), config, progress=False))
    for name, linear in block_linears(decoder_blocks(model)[1]).items():
        delta = linear.weight.detach() - before[name]
        assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= 4

    def quantized_loss(m):
        quantize_model(m, tokens, get_method("ptq161"), config, progress=False)
        with torch.no_grad():
            return m(tokens, labels=tokens).loss.item()

    plain = quantized_loss(make_tiny_llama(tmp_path / "p", layers=2))
    assert quantized_loss(model) < plain  # the preprocessed model quantizes to a better fit of the text


def test_restorative_lora_keeps_the_adapters_best_on_held_out_windows(tmp_path, monkeypatch):
    """A learning rate far too high makes the held-out loss worse at the first check: training stops there and
    the adapters kept are the untrained ones (B = 0), so the float weights do not change."""
    from conftest import make_tiny_llama
    from lowbit_gguf.calibration import CalibrationSet
    from lowbit_gguf.methods import ptq161
    from lowbit_gguf.blocks import block_linears, decoder_blocks

    monkeypatch.setattr(ptq161, "LORA_SAVE_EVERY", 2)
    tokens = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(7))
    calibration = CalibrationSet(tokens[:6], tokens[6:], ["t"] * 6, ["t"] * 2)
    steps = []
    from lowbit_gguf import training

    original = training.EarlyStopping.update

    def recording(self, loss, step=0):
        steps.append(loss)
        return original(self, loss, step)

    monkeypatch.setattr(training.EarlyStopping, "update", recording)
    config = PTQ161Config(epochs=0, lora_rank=4, lora_steps=40, lora_lr=3.0, lora_batch=2, lora_patience=1)
    model = make_tiny_llama(tmp_path / "m", layers=2)
    before = [l.weight.detach().clone() for b in decoder_blocks(model) for l in block_linears(b).values()]
    ptq161.restorative_lora(model, calibration, config, stage_context(ptq161.METHOD, config, progress=False))
    after = [l.weight.detach() for b in decoder_blocks(model) for l in block_linears(b).values()]
    assert len(steps) == 2 and steps[1] > steps[0]  # before training, then the check at step 2: worse, stop
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_restorative_lora_resumes_after_interruption(tmp_path, monkeypatch):
    """Stopped after the first adapter checkpoint, a rerun skips the first quantization pass, continues the
    adapter training from that step and ends with exactly the weights of an uninterrupted run."""
    from conftest import make_tiny_llama
    from lowbit_gguf.methods import ptq161
    from lowbit_gguf.files import save_torch
    from lowbit_gguf.blocks import block_linears, decoder_blocks

    tokens = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(6))
    config = PTQ161Config(epochs=1, lora_rank=2, lora_steps=2 * ptq161.LORA_SAVE_EVERY + 3, lora_batch=2)

    def lora_stage(config, folder=None):  # the method as it is when the stage starts (counted below)
        return stage_context(ptq161.METHOD, config, checkpoint_dir=folder, progress=False)

    def weights(model):
        return {f"{i}.{n}": l.weight.detach().clone() for i, b in enumerate(decoder_blocks(model))
                for n, l in block_linears(b).items()}

    reference = make_tiny_llama(tmp_path / "r", layers=2)
    ptq161.restorative_lora(reference, as_calibration(tokens), config, lora_stage(config))

    def stop_after_adapters(obj, path, what):
        save_torch(obj, path, what)
        if path.name == "adapters.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr("lowbit_gguf.files.save_torch", stop_after_adapters)
    folder = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        ptq161.restorative_lora(make_tiny_llama(tmp_path / "a", layers=2), as_calibration(tokens), config,
                                lora_stage(config, folder))
    monkeypatch.setattr("lowbit_gguf.files.save_torch", save_torch)
    assert torch.load(folder / "preprocess" / "adapters.pt", weights_only=True)["step"] == ptq161.LORA_SAVE_EVERY

    calls = {"quantize": 0, "steps": 0}
    real_quantize, real_step = ptq161.METHOD.quantize, torch.optim.AdamW.step

    def counting_quantize(*args):
        calls["quantize"] += 1
        return real_quantize(*args)

    def counting_step(self, *args, **kwargs):
        calls["steps"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ptq161, "METHOD", replace(ptq161.METHOD, quantize=counting_quantize))
    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    resumed = make_tiny_llama(tmp_path / "b", layers=2)
    ptq161.restorative_lora(resumed, as_calibration(tokens), config, lora_stage(config, folder))
    assert calls == {"quantize": 0, "steps": config.lora_steps - ptq161.LORA_SAVE_EVERY}
    for name, w in weights(reference).items():
        torch.testing.assert_close(weights(resumed)[name], w, rtol=0, atol=0, msg=name)

    # the saved result is reused as is; another config is refused rather than mixed in
    again = make_tiny_llama(tmp_path / "c", layers=2)
    ptq161.restorative_lora(again, as_calibration(tokens), config, lora_stage(config, folder))
    assert calls["steps"] == config.lora_steps - ptq161.LORA_SAVE_EVERY
    with pytest.raises(LowbitError, match="belongs to another run"):
        ptq161.restorative_lora(again, as_calibration(tokens), PTQ161Config(lora_rank=3),
                                lora_stage(PTQ161Config(lora_rank=3), folder))


def test_lora_config_text():
    assert PTQ161Config.parse("s20+lora16").lora_rank == 16 and PTQ161Config.parse("s20").lora_rank == 0
