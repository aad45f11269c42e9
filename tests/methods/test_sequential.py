"""The sequential driver on a small random llama: Hessians, block-by-block propagation, resume, NaN."""

import pytest
import torch

from lowbit_gguf.errors import LowbitError
from lowbit_gguf.methods import MethodSpec, get_method
from lowbit_gguf.blocks import block_linears, capture_block_inputs, decoder_blocks
from lowbit_gguf.sequential import quantize_model

from conftest import TINY_CONFIGS, make_tiny_llama, tiny_config


@pytest.fixture
def tiny(tmp_path):
    model = make_tiny_llama(tmp_path / "tiny", layers=3)
    tokens = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(0))
    return model, tokens


def test_identity_leaves_model_unchanged(tiny):
    model, tokens = tiny
    before = model(tokens).logits
    spec = get_method("identity")
    result = quantize_model(model, tokens, spec, spec.parse_config(None), batch_size=4, progress=False)
    assert len(result.layers) == 3 * 7
    torch.testing.assert_close(model(tokens).logits, before, rtol=0, atol=1e-5)


def test_hessian_is_mean_outer_product_of_layer_inputs(tiny):
    model, tokens = tiny
    seen = {}

    def spy(weight, hessian, config):
        seen.setdefault(weight.shape, hessian.clone())
        return get_method("identity").quantize(weight, hessian, config)

    spec = MethodSpec("spy", get_method("identity").config_type, spy, get_method("identity").decode, "")
    # expected H for block 0's q_proj: its input is the block's first RMSNorm of the embeddings
    hidden, _ = capture_block_inputs(model, tokens)
    x = decoder_blocks(model)[0].input_layernorm(hidden).reshape(-1, 64).double()
    quantize_model(model, tokens, spec, spec.parse_config(None), batch_size=4, progress=False)
    torch.testing.assert_close(seen[(64, 64)], x.T @ x / x.shape[0])


def test_absmax_is_the_largest_input_magnitude_per_channel_of_the_training_windows(tiny):
    """The statistic PTQ1.61 picks salient channels by: max |x| over every token of the training windows,
    channel by channel; held-out windows (here with one huge channel) do not enter it."""
    from lowbit_gguf.calibration import CalibrationSet

    model, tokens = tiny
    seen = {}

    def spy(weight, absmax, config):
        seen.setdefault(weight.shape, absmax.clone())
        return get_method("identity").quantize(weight, None, config)

    identity = get_method("identity")
    spec = MethodSpec("spy", identity.config_type, spy, identity.decode, "", input_statistic="absmax")
    hidden, _ = capture_block_inputs(model, tokens)
    x = decoder_blocks(model)[0].input_layernorm(hidden).reshape(-1, 64)  # q_proj's input, block 0
    unused = torch.tensor(sorted(set(range(256)) - set(tokens.flatten().tolist())))
    heldout = unused[:32].reshape(2, 16)  # tokens the training windows never contain
    calibration = CalibrationSet(tokens, heldout, ["t"] * len(tokens), ["t"] * 2)
    with torch.no_grad():
        model.model.embed_tokens.weight[heldout.flatten(), 5] = 1e4  # would dominate channel 5 if counted
    quantize_model(model, calibration, spec, spec.parse_config(None), batch_size=4, progress=False)
    expected = x.abs().amax(0)
    assert not torch.allclose(expected, x.abs().mean(0) * x.shape[0])
    torch.testing.assert_close(seen[(64, 64)], expected)


def test_quantized_outputs_feed_the_next_block(tiny):
    """Block i+1's Hessian must come from block i's *quantized* outputs."""
    model, tokens = tiny
    spec = get_method("rtn")
    config = spec.parse_config("w2g32")
    hessians = []

    def record(weight, hessian, cfg):
        hessians.append(hessian.clone())
        return spec.quantize(weight, hessian, cfg)

    recorder = MethodSpec("rec", spec.config_type, record, spec.decode, "")
    quantize_model(model, tokens, recorder, config, batch_size=6, progress=False)
    # recompute block 1's q_proj input from the quantized block 0 and compare
    hidden, kwargs = capture_block_inputs(model, tokens)
    blocks = decoder_blocks(model)
    out = blocks[0](hidden, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    x = blocks[1].input_layernorm(out).reshape(-1, 64).double()
    torch.testing.assert_close(hessians[7], x.T @ x / x.shape[0])


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(3))
    spec = get_method("rtn")
    config = spec.parse_config("w3g32")

    full_model = make_tiny_llama(tmp_path / "a", layers=3)
    full = quantize_model(full_model, tokens, spec, config, progress=False)

    calls = {"n": 0}

    def flaky(weight, hessian, cfg):
        calls["n"] += 1
        if calls["n"] == 10:  # inside block 1 (7 linears per block)
            raise KeyboardInterrupt
        return spec.quantize(weight, hessian, cfg)

    flaky_spec = MethodSpec("rtn", spec.config_type, flaky, spec.decode, "")
    ckpt = tmp_path / "ckpt"
    model = make_tiny_llama(tmp_path / "b", layers=3)
    with pytest.raises(KeyboardInterrupt):
        quantize_model(model, tokens, flaky_spec, config, checkpoint_dir=ckpt, progress=False)

    resumed_calls = {"n": 0}

    def counting(weight, hessian, cfg):
        resumed_calls["n"] += 1
        return spec.quantize(weight, hessian, cfg)

    model = make_tiny_llama(tmp_path / "c", layers=3)
    resumed = quantize_model(model, tokens, MethodSpec("rtn", spec.config_type, counting, spec.decode, ""),
                             config, checkpoint_dir=ckpt, progress=False)
    assert resumed_calls["n"] == 14  # blocks 1 and 2 only: block 0 came from the checkpoint
    assert resumed.resumed_seconds == torch.load(ckpt / "block_000.pt", weights_only=True)["seconds"] > 0
    assert resumed.layers.keys() == full.layers.keys()
    for name in full.layers:
        assert torch.equal(resumed.layers[name].decoded, full.layers[name].decoded), name
    torch.testing.assert_close(model(tokens).logits, full_model(tokens).logits)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    spec = get_method("rtn")
    quantize_model(make_tiny_llama(tmp_path / "a", layers=1), tokens, spec, spec.parse_config("w4g32"),
                   checkpoint_dir=tmp_path / "ck", progress=False)
    with pytest.raises(LowbitError, match="belongs to another run"):
        quantize_model(make_tiny_llama(tmp_path / "b", layers=1), tokens, spec, spec.parse_config("w2g32"),
                       checkpoint_dir=tmp_path / "ck", progress=False)


def test_nan_weight_is_a_clear_error(tiny):
    model, tokens = tiny
    with torch.no_grad():
        block_linears(decoder_blocks(model)[1])["mlp.up_proj"].weight[3, 5] = float("nan")
    spec = get_method("rtn")
    with pytest.raises(LowbitError, match=r"model.layers.1.mlp.up_proj: the weight has 1 NaN"):
        quantize_model(model, tokens, spec, spec.parse_config("w4g32"), progress=False)


def test_methods_that_ignore_the_hessian_are_not_given_one(tiny):
    model, tokens = tiny
    spec = get_method("rtn")
    assert spec.input_statistic is None
    received = []

    def record(weight, hessian, cfg):
        received.append(hessian)
        return spec.quantize(weight, hessian, cfg)

    quantize_model(model, tokens, MethodSpec("rec", spec.config_type, record, spec.decode, "", input_statistic=None),
                   spec.parse_config("w4g32"), progress=False)
    assert len(received) == 21 and all(h is None for h in received)


def test_resume_restores_parameters_changed_by_block_finetuning(tmp_path):
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(4))
    rtn = get_method("rtn")
    config = rtn.parse_config("w4g32")

    def bump_norms(block, results, data, cfg):
        assert data.targets.shape == data.inputs.shape
        for name, p in block.named_parameters():
            if "norm" in name:
                p.data.mul_(1.25)

    spec = MethodSpec("tuned", rtn.config_type, rtn.quantize, rtn.decode, "", input_statistic=None,
                      finetune_block=bump_norms)
    full_model = make_tiny_llama(tmp_path / "a", layers=3)
    quantize_model(full_model, tokens, spec, config, progress=False)

    calls = {"n": 0}

    def flaky(weight, hessian, cfg):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return rtn.quantize(weight, hessian, cfg)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        quantize_model(make_tiny_llama(tmp_path / "b", layers=3), tokens,
                       MethodSpec("tuned", rtn.config_type, flaky, rtn.decode, "", input_statistic=None,
                                  finetune_block=bump_norms), config, checkpoint_dir=ckpt, progress=False)
    resumed = make_tiny_llama(tmp_path / "c", layers=3)
    quantize_model(resumed, tokens, spec, config, checkpoint_dir=ckpt, progress=False)
    torch.testing.assert_close(resumed(tokens).logits, full_model(tokens).logits)


@pytest.mark.parametrize("key", list(TINY_CONFIGS))
def test_quantization_creates_no_tensor_on_an_implicit_device(key, tmp_path):
    """What `--device cuda` needs, checked without a GPU: with torch's default device set to 'meta', a tensor
    that the quantizer creates without naming a device lands there and the first operation mixing it with the
    model's real tensors fails. The results come back in host memory, for checkpoints and the GGUF writer."""
    model = make_tiny_llama(tmp_path / "tiny", layers=1)  # hidden 64: 512 groups of 8, more than 2^8 codewords
    tokens = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    spec, config = tiny_config(key)
    torch.set_default_device("meta")
    try:
        result = quantize_model(model, tokens, spec, config, checkpoint_dir=tmp_path / "ckpt", progress=False)
    finally:
        torch.set_default_device(None)
    for q in result.layers.values():
        assert q.decoded.device.type == "cpu" and all(t.device.type == "cpu" for t in q.payload.values())
        torch.testing.assert_close(q.decoded, spec.decode(q.payload, config))
