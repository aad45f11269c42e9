"""The calibration set: every domain contributes, held-out windows never overlap training ones, user texts mix."""

import numpy as np
import pytest
import torch

from lowbit_gguf.calibration import HELDOUT_FRACTION, draw_windows, model_calibration_set
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.texts import CALIBRATION_TEXTS, EVALUATION_TEXTS


def positions(n: int, offset: int) -> np.ndarray:
    """A stream whose tokens are their own positions (plus an offset per source): windows show where they lie."""
    return np.arange(offset, offset + n)


def test_windows_come_from_each_text_in_turn_and_held_out_from_its_tail():
    streams = {"a": positions(10_000, 0), "b": positions(3_000, 100_000), "c": positions(5_000, 200_000)}
    calib = draw_windows(streams, n_samples=7, n_heldout=3, seq_len=100, seed=1)
    assert calib.train.shape == (7, 100) and calib.heldout.shape == (3, 100)
    assert calib.train_sources == ["a", "b", "c", "a", "b", "c", "a"]
    assert calib.heldout_sources == ["a", "b", "c"]
    for rows, sources, part in ((calib.train, calib.train_sources, "train"),
                                (calib.heldout, calib.heldout_sources, "heldout")):
        for row, name in zip(rows.numpy(), sources):
            start, n = streams[name][0], len(streams[name])
            assert np.array_equal(row, np.arange(row[0], row[0] + 100))  # contiguous tokens of one text
            cut = start + int(n * (1 - HELDOUT_FRACTION))
            assert (row < cut).all() if part == "train" else (row >= cut).all()
    # windows of one text never overlap
    starts = sorted(calib.train[[0, 3, 6], 0].tolist())
    assert all(b - a >= 100 for a, b in zip(starts, starts[1:]))
    # the draw is seeded: the same set again, another with another seed
    assert torch.equal(draw_windows(streams, 7, 3, 100, seed=1).tokens, calib.tokens)
    assert not torch.equal(draw_windows(streams, 7, 3, 100, seed=2).tokens, calib.tokens)


def test_a_text_too_short_is_named():
    with pytest.raises(LowbitError, match="'short' has 250 tokens: room for 2 train windows of 100, 3 needed"):
        draw_windows({"short": positions(250, 0)}, n_samples=3, n_heldout=0, seq_len=100)
    with pytest.raises(LowbitError, match="heldout windows"):
        draw_windows({"short": positions(500, 0)}, n_samples=3, n_heldout=2, seq_len=100)


@pytest.mark.model
def test_default_set_draws_from_every_domain(default_model_dir):
    calib = model_calibration_set(default_model_dir, n_samples=8, seq_len=256, n_heldout=4)
    domains = [t.name for t in CALIBRATION_TEXTS]
    assert len(domains) >= 4 and calib.train_sources == domains * 2 and calib.heldout_sources == domains
    rows = {tuple(r) for r in calib.tokens.tolist()}
    assert len(rows) == 12  # no window twice
    # every domain is long enough for a real calibration: several hundred thousand tokens in all
    from lowbit_gguf.calibration import load_text
    from lowbit_gguf.evaluate import hf_tokenize

    assert EVALUATION_TEXTS[1].package.name not in {t.package.name for t in CALIBRATION_TEXTS}
    novel = load_text("evaluation")
    for t in CALIBRATION_TEXTS:
        body = load_text(t.name)
        assert novel[:2000] not in body  # the first evaluation text is in no calibration text
    sizes = [len(hf_tokenize(default_model_dir, load_text(t.name)[:400_000])) for t in CALIBRATION_TEXTS]
    assert all(s > 50_000 for s in sizes)


@pytest.mark.model
def test_user_files_mix_with_the_default_domains(default_model_dir, tmp_path):
    own = tmp_path / "notes.txt"
    own.write_text(" ".join(f"word{i % 97}" for i in range(20_000)))
    calib = model_calibration_set(default_model_dir, ["calibration", str(own)], n_samples=10, seq_len=64,
                                  n_heldout=5)
    assert calib.train_sources[:5] == [t.name for t in CALIBRATION_TEXTS] + [str(own)]
    assert calib.heldout_sources[-1] == str(own)
    with pytest.raises(LowbitError, match="neither a default text"):
        model_calibration_set(default_model_dir, [str(tmp_path / "missing.txt")], n_samples=1, seq_len=8)
