"""The baseline methods: reference decode, config parsing and error behaviour."""

import pytest
import torch

from lowbit_gguf.errors import LowbitError
from lowbit_gguf.methods import available_methods, get_method, method_for_config


def test_registry_lists_baselines_and_keeps_test_methods_unlisted():
    assert "rtn" in available_methods() and "identity" not in available_methods()
    assert get_method("identity").name == "identity"  # the tests still reach it
    with pytest.raises(LowbitError, match="unknown method 'nope'"):
        get_method("nope")


def test_registry_is_keyed_by_config_type():
    from lowbit_gguf import AQLMConfig, PTQ161Config

    assert method_for_config(AQLMConfig.parse("2x8")).name == "aqlm"
    assert method_for_config(PTQ161Config()).name == "ptq161"
    with pytest.raises(LowbitError, match="not a method config"):
        method_for_config({"num_codebooks": 2})


def test_config_fields_set_by_name_in_their_types():
    spec = get_method("aqlm")
    config = spec.parse_config("2x8", {"beam_size": "8", "finetune_lr": "0.001"})
    assert (config.num_codebooks, config.beam_size, config.finetune_lr) == (2, 8, 0.001)
    with pytest.raises(LowbitError, match="has no field 'beam'"):
        spec.parse_config("2x8", {"beam": "4"})
    with pytest.raises(LowbitError, match="not a int"):
        spec.parse_config("2x8", {"beam_size": "four"})


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rtn_decode_matches_payload_and_error_bound(bits):
    spec = get_method("rtn")
    config = spec.parse_config(f"w{bits}g32")
    torch.manual_seed(0)
    w = torch.randn(48, 128)
    q = spec.quantize(w, torch.eye(128), config)
    assert torch.equal(q.decoded, spec.decode(q.payload, config))
    assert q.payload["codes"].max() <= 2**bits - 1
    # round-to-nearest: error at most half a step per group (plus f16 rounding of scale and min)
    groups = w.reshape(48, 4, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / (2**bits - 1)
    err = (q.decoded - w).abs().reshape(48, 4, 32).amax(-1)
    assert torch.all(err <= step / 2 + 2e-3 * groups.abs().amax(-1))
    assert q.bits_per_weight == bits + 1.0


def test_rtn_error_falls_with_bits():
    spec = get_method("rtn")
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    errors = [(spec.quantize(w, torch.eye(64), spec.parse_config(f"w{b}g32")).decoded - w).norm() for b in (2, 3, 4)]
    assert errors[0] > errors[1] > errors[2]


def test_rtn_constant_group_is_exact():
    spec = get_method("rtn")
    w = torch.full((4, 32), 0.25)
    q = spec.quantize(w, torch.eye(32), spec.parse_config("w2g32"))
    assert torch.equal(q.decoded, w)


@pytest.mark.parametrize("text", ["4bit", "w0g32", "w4g0", "w9g32"])
def test_rtn_bad_configs(text):
    with pytest.raises(ValueError):
        get_method("rtn").parse_config(text)


def test_rtn_rejects_group_not_dividing_width():
    spec = get_method("rtn")
    with pytest.raises(ValueError, match="not a multiple"):
        spec.quantize(torch.randn(4, 40), torch.eye(40), spec.parse_config("w4g32"))


def test_identity_keeps_weights():
    spec = get_method("identity")
    w = torch.randn(8, 16)
    q = spec.quantize(w, torch.eye(16), spec.parse_config(None))
    assert torch.equal(q.decoded, w) and torch.equal(spec.decode(q.payload, None), w)
