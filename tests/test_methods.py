"""The baseline methods: reference decode, config parsing and error behaviour."""

import pytest
import torch

from lowbit_gguf.errors import LowbitError
from lowbit_gguf.methods import available_methods, get_method


def test_registry_lists_baselines():
    assert {"identity", "rtn"} <= set(available_methods())
    with pytest.raises(LowbitError, match="unknown method 'nope'"):
        get_method("nope")


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
