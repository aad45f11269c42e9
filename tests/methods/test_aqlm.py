"""AQLM quantizer: exact reference decode, the H-weighted objective, configs."""

from dataclasses import replace

import pytest
import torch

from lowbit_gguf.methods import get_method
from lowbit_gguf.additive import objective
from lowbit_gguf.methods.aqlm import AQLMConfig, bits_per_weight

SPEC = get_method("aqlm")
FAST = dict(max_rounds=2, adam_steps=10, kmeans_iters=8, beam_size=2)


def problem(d_out=128, d_in=128, seed=0):
    """Enough groups (d_out * d_in / 8) that a 256-entry codebook cannot hold them all."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g) * 0.02
    mix = torch.eye(d_in) + 0.3 * torch.randn(d_in, d_in, generator=g) / d_in**0.5
    x = torch.randn(2048, d_in, generator=g) @ mix
    return w, (x.T @ x / x.shape[0]).double()


def test_decode_is_exact_and_payload_well_formed():
    w, h = problem()
    config = replace(SPEC.parse_config("2x8"), **FAST)
    q = SPEC.quantize(w, h, config)
    assert torch.equal(q.decoded, SPEC.decode(q.payload, config))
    assert q.payload["codes"].shape == (128, 16, 2) and q.payload["codes"].dtype == torch.int16
    assert q.payload["codes"].min() >= 0 and q.payload["codes"].max() < 256
    assert q.payload["codebooks"].shape == (2, 256, 8) and q.payload["codebooks"].dtype == torch.float16
    assert q.payload["scales"].shape == (128,) and q.payload["scales"].dtype == torch.float16


def test_search_improves_on_kmeans_init():
    w, h = problem()
    base = replace(SPEC.parse_config("1x8"), **FAST)
    init = SPEC.quantize(w, h, replace(base, max_rounds=0))
    tuned = SPEC.quantize(w, h, base)
    hf = h.float()
    assert objective(tuned.decoded - w, hf) < 0.9 * objective(init.decoded - w, hf)


def test_hessian_weighting_is_used():
    """Quantizing for H must give a lower H-weighted error than quantizing for the identity."""
    w, _ = problem()
    weights = torch.ones(128, dtype=torch.float64)
    weights[:8] = 100.0  # a few inputs dominate the activations
    h = torch.diag(weights)
    config = replace(SPEC.parse_config("1x8"), **FAST)
    aware = SPEC.quantize(w, h, config)
    blind = SPEC.quantize(w, torch.eye(128, dtype=torch.float64), config)
    hf = h.float()
    assert objective(aware.decoded - w, hf) < 0.8 * objective(blind.decoded - w, hf)


def test_two_codebooks_beat_scalar_rounding_at_fewer_code_bits():
    w, h = problem()
    aqlm = SPEC.quantize(w, h, replace(SPEC.parse_config("2x8"), **FAST))  # 2 code bits per weight
    rtn = get_method("rtn")
    scalar = rtn.quantize(w, h, rtn.parse_config("w2g32"))  # 2 code bits + 1 bit of scales
    hf = h.float()
    assert objective(aqlm.decoded - w, hf) < 0.6 * objective(scalar.decoded - w, hf)


def test_configs_and_bits_per_weight():
    assert AQLMConfig.parse("2x8") == AQLMConfig(num_codebooks=2, nbits=8)
    assert AQLMConfig.parse("1x16").codebook_size == 65536
    assert AQLMConfig.parse("1x8g4").group_size == 4
    # SmolLM2's FFN up projection: codes + codebooks + row scales
    assert bits_per_weight(AQLMConfig.parse("2x8"), 1536, 576) == pytest.approx(2 + 65536 / 884736 + 16 / 576)
    for bad in ("2-8", "x8", "0x8", "2x17"):
        with pytest.raises(ValueError):
            AQLMConfig.parse(bad)


@pytest.mark.parametrize("nbits", [4, 16])  # 16: 1x16's 65,536 codewords
def test_beam_search_finds_the_brute_force_optimum_for_one_group(nbits):
    """One group per row and one codebook: the search must pick, per row, the codeword that a naive
    pass over all codewords finds best under the H-weighted objective."""
    from lowbit_gguf.additive import beam_search_codes
    from lowbit_gguf.methods.aqlm import decode

    g = torch.Generator().manual_seed(5)
    k = 2**nbits
    config = AQLMConfig(num_codebooks=1, nbits=nbits, beam_size=1)
    w = torch.randn(16, 8, generator=g)
    x = torch.randn(256, 8, generator=g)
    h = x.T @ x / 256
    codebooks = torch.randn(1, k, 8, generator=g)
    scales = torch.rand(16, generator=g) + 0.5
    start = torch.zeros(16, 1, 1, dtype=torch.long)
    found = beam_search_codes(w, h, start, codebooks, scales, config.beam_size, g)
    for r in range(16):
        errors = scales[r] * codebooks[0] - w[r]  # [K, 8]: row r's error with each codeword
        costs = ((errors @ h) * errors).sum(-1)
        assert found[r, 0, 0] == int(costs.argmin()), r
    # and the sweep never makes the objective worse than where it started
    before = objective(decode({"codes": start, "codebooks": codebooks, "scales": scales}, config) - w, h)
    after = objective(decode({"codes": found, "codebooks": codebooks, "scales": scales}, config) - w, h)
    assert after <= before


@pytest.mark.parametrize("n, k, g", [(300, 5000, 8), (1, 65536, 8), (129, 1500, 4)])
def test_nearest_codewords_match_brute_force(n, k, g):
    """The C kernel (blocks of 1024 codewords, rows over threads) against every distance computed in torch."""
    from lowbit_gguf.nearest import nearest_by_matmul, nearest_codewords

    gen = torch.Generator().manual_seed(n + k + g)
    queries, codebook = torch.randn(n, g, generator=gen), torch.randn(k, g, generator=gen)
    values, index = nearest_codewords(queries, codebook, (codebook * codebook).sum(1))
    assert index.dtype == torch.int64 and torch.equal(index, torch.cdist(queries, codebook).argmin(1))
    assert torch.allclose(values, (codebook[index] - queries).pow(2).sum(1) - queries.pow(2).sum(1), atol=1e-4)
    # any per-codeword term: c^T H c, as AQLM's code search passes
    h = torch.eye(g) + 0.1
    chc = ((codebook @ h) * codebook).sum(1)
    scores = chc[None, :] - 2 * queries @ codebook.T
    values, index = nearest_codewords(queries, codebook, chc)
    assert torch.equal(index, scores.argmin(1)) and torch.allclose(values, scores.min(1).values, atol=1e-4)
    # the matmul form that GPU tensors take
    gpu_values, gpu_index = nearest_by_matmul(queries, codebook, chc)
    assert torch.equal(gpu_index, index) and torch.allclose(gpu_values, values, atol=1e-4)


def test_nearest_codewords_refuse_mismatched_shapes_and_name_a_missing_compiler(tmp_path, monkeypatch):
    from lowbit_gguf import nearest
    from lowbit_gguf.errors import LowbitError

    with pytest.raises(ValueError, match="do not match"):
        nearest.nearest_codewords(torch.zeros(4, 8), torch.zeros(16, 4), torch.zeros(16))
    monkeypatch.setattr(nearest, "_library", None)
    monkeypatch.setenv("LOWBIT_GGUF_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with pytest.raises(LowbitError, match="need a C compiler"):
        nearest.nearest_codewords(torch.zeros(4, 8), torch.zeros(16, 8), torch.zeros(16))
    assert not list(tmp_path.rglob("*.so"))


def test_kmeans_stops_at_its_fixed_point_and_keeps_every_point_when_codewords_suffice(monkeypatch):
    from lowbit_gguf import kmeans as kmeans_module
    from lowbit_gguf.kmeans import kmeans

    g = torch.Generator().manual_seed(2)
    x = torch.randn(100, 8, generator=g)
    centroids, assign = kmeans(x, 128, 20, g)  # more codewords than points: each point is one exactly
    assert centroids.shape == (128, 8) and torch.equal(centroids[assign], x)
    # two tight clusters: the assignment settles at once, and the centroids are the cluster means
    x = torch.cat([torch.randn(50, 8, generator=g) * 0.01 + 5, torch.randn(50, 8, generator=g) * 0.01 - 5])
    searches = []
    real = kmeans_module.nearest_codewords
    monkeypatch.setattr(kmeans_module, "nearest_codewords", lambda *a: searches.append(1) or real(*a))
    centroids, assign = kmeans(x, 2, 20, g)
    # the first assignment already splits the clusters (at most a few steps): the fixed point ends the loop
    assert len(searches) <= 4
    assert assign[:50].unique().numel() == 1 and assign[50:].unique().numel() == 1 and assign[0] != assign[50]
    assert torch.allclose(centroids[assign[0]], x[:50].mean(0))
    assert torch.allclose(centroids[assign[50]], x[50:].mean(0))


def test_weighted_kmeans_centroids_are_weighted_means():
    """VPTQ weights its k-means by each vector's Hessian diagonal: a heavy point pulls its centroid to itself."""
    from lowbit_gguf.kmeans import kmeans

    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(20, 4, generator=g) * 0.1 + 3, torch.randn(20, 4, generator=g) * 0.1 - 3])
    weights = torch.ones(40)
    weights[0] = 1000.0
    centroids, assign = kmeans(x, 2, 10, g, weights=weights)
    heavy = centroids[assign[0]]
    expected = (x[:20] * weights[:20, None]).sum(0) / weights[:20].sum()
    torch.testing.assert_close(heavy, expected)
    assert (heavy - x[0]).norm() < 0.2 * (x[:20].mean(0) - x[0]).norm()


def test_1x16_keeps_small_weights_nearly_exact():
    """1x16 holds 65,536 codewords: a weight with fewer groups than that is stored up to f16 rounding."""
    w, h = problem(d_out=64, d_in=64)
    q = SPEC.quantize(w, h, replace(SPEC.parse_config("1x16"), **FAST))
    assert q.payload["codes"].dtype == torch.int32 and int(q.payload["codes"].max()) < 65536
    assert torch.allclose(q.decoded, w, atol=1e-4)


def test_block_finetuning_brings_outputs_closer_to_the_float_block(tmp_path):
    from lowbit_gguf.blocks import capture_block_inputs, decoder_blocks
    from lowbit_gguf.sequential import quantize_model

    from conftest import make_tiny_llama

    tokens = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    reference = make_tiny_llama(tmp_path / "ref", layers=1)
    hidden, kwargs = capture_block_inputs(reference, tokens)
    with torch.no_grad():
        target = decoder_blocks(reference)[0](hidden, **kwargs)
        target = target[0] if isinstance(target, tuple) else target

    def block_error(finetune_epochs):
        model = make_tiny_llama(tmp_path / f"m{finetune_epochs}", layers=1)
        config = AQLMConfig(num_codebooks=1, nbits=6, max_rounds=1, adam_steps=5, kmeans_iters=5,
                            finetune_epochs=finetune_epochs, finetune_lr=1e-3, finetune_batch=4)
        quantize_model(model, tokens, SPEC, config, progress=False)
        with torch.no_grad():
            out = decoder_blocks(model)[0](hidden, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
        return (out - target).pow(2).mean().item(), model

    before, _ = block_error(0)
    after, tuned = block_error(5)
    assert after < 0.9 * before
    norm = decoder_blocks(tuned)[0].input_layernorm.weight
    assert not torch.equal(norm, decoder_blocks(reference)[0].input_layernorm.weight)  # norms were tuned
