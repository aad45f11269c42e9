"""VPTQ's quantizer against brute force, its payload and GGUF layout, and its errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from lowbit_gguf.random_weights import random_vptq_payload
from lowbit_gguf.methods import get_method

SPEC = get_method("vptq")


def problem(d_out=32, d_in=64, seed=0, n=512):
    """A weight and a Hessian of correlated inputs of unequal scales (so act order and the feedback matter)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g) * (1 + torch.rand(d_in, generator=g))
    mix = torch.eye(d_in) + 0.3 * torch.randn(d_in, d_in, generator=g)
    x = torch.randn(n, d_in, generator=g) @ mix * torch.rand(d_in, generator=g)
    return w, (x.T @ x / n).double()


def objective(w, q, h):
    from lowbit_gguf.additive import objective as trace_objective

    return float(trace_objective((q - w).double(), h) / trace_objective(w.double(), h))


def test_weighted_kmeans_is_a_fixed_point_of_weighted_means():
    from lowbit_gguf.kmeans import kmeans

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=g)
    weights = torch.rand(600, generator=g) ** 4  # far from uniform: plain means would differ
    centroids, assign = kmeans(x, 8, 200, g, weights=weights)
    brute = torch.cdist(x, centroids).argmin(1)
    assert torch.equal(assign, brute)
    for c in range(8):
        members = assign == c
        mean = (x[members] * weights[members, None]).sum(0) / weights[members].sum()
        torch.testing.assert_close(centroids[c], mean, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(centroids[c], x[members].mean(0), atol=1e-3)


def explicit_gptq_indices(w, h, centroids, v, damp=0.01):
    """GPTQ written out the slow way (one column at a time, H^-1 updated by removing the column), each vector of a
    column to its nearest centroid, columns in act order: the indices in channel order."""
    d_out, d_in = w.shape
    order = torch.argsort(h.diagonal(), descending=True, stable=True)
    w, h = w.double()[:, order].clone(), h[order][:, order].clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    hinv = torch.linalg.inv(h)
    idx = torch.zeros(d_out // v, d_in, dtype=torch.long)
    for q in range(d_in):
        vectors = w[:, q].reshape(-1, v).float()
        idx[:, q] = torch.cdist(vectors, centroids.float()).argmin(1)
        quantized = centroids.double()[idx[:, q]].reshape(d_out)
        err = (w[:, q] - quantized) / hinv[q, q]
        w[:, q + 1:] -= err[:, None] * hinv[q, q + 1:][None, :]
        hinv = hinv - hinv[:, q:q + 1] @ hinv[q:q + 1, :] / hinv[q, q]
    out = torch.empty_like(idx)
    out[:, order] = idx
    return out


def test_column_loop_feedback_equals_explicit_gptq():
    w, h = problem(d_out=16, d_in=24)
    config = replace(SPEC.parse_config("v2k16"), block_size=8)  # blocks exercise lazy updates
    q = SPEC.quantize(w, h, config)
    want = explicit_gptq_indices(w, h, q.payload["centroids"], 2)
    assert torch.equal(q.payload["indices"].long(), want)


def test_second_order_loop_beats_nearest_centroids():
    w, h = problem()
    config = replace(SPEC.parse_config("v4k64"), enable_norm=True)
    q = SPEC.quantize(w, h, config)
    p = q.payload
    normalised = (w - p["col_bias"].float()) / p["col_scale"].float()
    vectors = normalised.T.reshape(-1, 4)
    nearest = torch.cdist(vectors, p["centroids"].float()).argmin(1).reshape(w.shape[1], -1).T
    plain = SPEC.decode({**p, "indices": nearest.int()}, config)
    assert objective(w, q.decoded, h) < 0.9 * objective(w, plain, h)


def test_residual_codebook_lowers_the_objective():
    w, h = problem()
    main = SPEC.quantize(w, h, SPEC.parse_config("v4k64"))
    both = SPEC.quantize(w, h, SPEC.parse_config("v4k64r64"))
    assert objective(w, both.decoded, h) < 0.8 * objective(w, main.decoded, h)
    assert both.payload["res_indices"].unique().numel() > 1


def test_dead_channels_are_zeroed_and_norm_restores_scale():
    w, h = problem()
    h[5, :] = h[:, 5] = 0
    q = SPEC.quantize(w, h, replace(SPEC.parse_config("v4k64"), enable_norm=True))
    assert torch.isfinite(q.decoded).all()
    # a dead channel decodes to its bias (its normalised weight was zeroed)
    torch.testing.assert_close(q.decoded[:, 5], q.payload["col_bias"][5].float().expand(w.shape[0]))


@pytest.mark.parametrize("config_text", ["v8k256r256", "v8k256", "v4k256r16", "v8k4096r4096", "v6k4096"])
def test_pack_round_trip_and_stored_bits(config_text):
    d_out = 48
    spec, config, payload = random_vptq_payload(config_text, d_out=d_out, d_in=128)
    packed = spec.pack(payload, config)
    assert packed.codes.shape == (d_out, 128 * config.index_bits // (8 * config.vector_len))
    back = spec.unpack(packed, config)
    for key in ("indices", "res_indices", "centroids", "res_centroids", "col_scale", "col_bias"):
        assert torch.equal(back[key], payload[key]), key
    stored = 8 * (packed.codes.nbytes + sum(s.nbytes for s in packed.sides.values()))
    from lowbit_gguf.methods.vptq import bits_per_weight

    assert stored == pytest.approx(bits_per_weight(config, d_out, 128) * d_out * 128)


def test_index_stream_layout():
    """Row group R's entries are one little-endian bit stream over its v rows: entry j at bits [j*b, (j+1)*b)."""
    spec, config, payload = random_vptq_payload("v4k256r16", d_out=8, d_in=64)
    packed = spec.pack(payload, config)
    stream = np.unpackbits(packed.codes[4:8].reshape(-1), bitorder="little")  # group 1
    entry = int((stream[12 * 5:12 * 6] * (1 << np.arange(12))).sum())
    assert entry == int(payload["indices"][1, 5]) | int(payload["res_indices"][1, 5]) << 8


def test_rows_are_quantized_in_the_files_order():
    """With a row order (Llama's q/k permutation), vectors are made of rows consecutive in that order: the stored
    rows decode to the weight's rows in that order, and the payload decodes to the model's order."""
    from lowbit_gguf.gguf.write import llama_rows_permutation

    w, h = problem(d_out=32)
    order = llama_rows_permutation(32, 2)
    q = SPEC.quantize(w, h, SPEC.parse_config("v4k64"), row_order=order)
    assert objective(w, q.decoded, h) < 0.5
    packed = SPEC.pack(q.payload, SPEC.parse_config("v4k64"))
    stored = SPEC.decode({k: t for k, t in SPEC.unpack(replace(packed, row_order=None), None).items()
                          if k != "row_order"})
    torch.testing.assert_close(stored, q.decoded[order])
    assert packed.permute_rows(order) is packed
    from lowbit_gguf.errors import LowbitError

    with pytest.raises(LowbitError, match="cannot be reordered"):
        packed.permute_rows(np.arange(32))


def test_bad_configs_and_shapes_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        SPEC.parse_config("v8k255")
    with pytest.raises(ValueError, match="outlier"):
        SPEC.parse_config("v8k256o1")
    with pytest.raises(ValueError, match="form"):
        SPEC.parse_config("8x8")
    assert SPEC.parse_config("v8-k65536-256") == SPEC.parse_config("v8k65536r256")
    w, h = problem(d_out=30)
    with pytest.raises(ValueError, match="do not divide the 30 output rows"):
        SPEC.quantize(w, h, SPEC.parse_config("v8k16"))
    spec, config, payload = random_vptq_payload("v6k256", d_out=24)
    with pytest.raises(ValueError, match="index bits per weight"):
        spec.pack(payload, config)  # 8 bits over 6 weights: no GGUF type holds 1.33


def test_packed_weight_checks_the_codebooks():
    from lowbit_gguf.gguf.write import PackedWeight

    spec, config, payload = random_vptq_payload("v8k256r256")
    packed = spec.pack(payload, config)
    sides = dict(packed.sides, codebook=packed.sides["codebook"][:200])
    with pytest.raises(ValueError, match="powers of two"):
        PackedWeight(packed.lowbit_type, packed.codes, sides, packed.n_per_row)
    sides = dict(packed.sides, res_codebook=packed.sides["res_codebook"][:16])
    with pytest.raises(ValueError, match="1.5 bits per weight"):
        PackedWeight(packed.lowbit_type, packed.codes, sides, packed.n_per_row)


def test_joint_residual_search_is_exhaustive_with_a_full_beam():
    from lowbit_gguf.methods.vptq import _joint_nearest

    g = torch.Generator().manual_seed(3)
    vectors, main = torch.randn(50, 4, generator=g), torch.randn(16, 4, generator=g)
    res = torch.randn(8, 4, generator=g)
    pairs = (main[:, None, :] + res[None, :, :]).reshape(-1, 4)  # pair (i, r) at i * 8 + r
    best = torch.cdist(vectors, pairs).argmin(1)
    i, r = _joint_nearest(vectors, main, res, beam=16)
    assert torch.equal(i, best // 8) and torch.equal(r, best % 8)
    greedy_i, greedy_r = _joint_nearest(vectors, main, res, beam=1)
    assert torch.equal(greedy_i, torch.cdist(vectors, main).argmin(1))
    assert torch.equal(greedy_r, torch.cdist(vectors - main[greedy_i], res).argmin(1))
    assert not torch.equal(i, greedy_i)  # the joint search finds other pairs


def test_joint_residual_search_lowers_the_objective():
    w, h = problem()
    greedy = SPEC.quantize(w, h, replace(SPEC.parse_config("v4k64r64"), residual_beam=1))
    joint = SPEC.quantize(w, h, SPEC.parse_config("v4k64r64"))
    assert objective(w, joint.decoded, h) < objective(w, greedy.decoded, h)
