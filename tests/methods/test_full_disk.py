"""A full disk: every output is written under a partial name, so a write that fails (here on /dev/full, which
answers every write with ENOSPC) removes its partial file, says what to do, and keeps what was finished."""

import os
from pathlib import Path

import pytest
import torch

from lowbit_gguf.errors import LowbitError
from lowbit_gguf.files import save_torch
from lowbit_gguf.methods import get_method
from lowbit_gguf.sequential import quantize_model

from conftest import make_tiny_llama

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
FULL = "no space left on the disk"


def full_disk_for(out: Path) -> Path:
    """Makes the next write of `out` go to /dev/full (its partial file is a link there)."""
    partial = out.with_name(out.name + ".partial")
    partial.symlink_to("/dev/full")
    return partial


def test_a_checkpoint_save_on_a_full_disk_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.pt"
    save_torch({"step": 1}, path, "the test state")
    partial = full_disk_for(path)
    with pytest.raises(LowbitError, match=f"{FULL} holding {tmp_path} while writing the test state"):
        save_torch({"step": 2, "big": torch.zeros(1 << 16)}, path, "the test state")
    assert not partial.exists() and not partial.is_symlink()
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_a_quantization_stopped_by_a_full_disk_resumes_where_it_stopped(tmp_path):
    tokens = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(0))
    spec = get_method("rtn")
    config = spec.parse_config("w4g32")
    straight = quantize_model(make_tiny_llama(tmp_path / "a", layers=3), tokens, spec, config, progress=False)

    calls = []

    def counting(weight, stat, config):
        calls.append(1)
        return spec.quantize(weight, stat, config)

    counted = type(spec)(spec.name, spec.config_type, counting, spec.decode, "")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    full_disk_for(ckpt / "block_001.pt")
    with pytest.raises(LowbitError, match=f"{FULL} .* the checkpoint of block 1"):
        quantize_model(make_tiny_llama(tmp_path / "b", layers=3), tokens, counted, config, checkpoint_dir=ckpt,
                       progress=False)
    assert sorted(p.name for p in ckpt.iterdir()) == ["block_000.pt", "hidden.pt", "run.json"]
    calls.clear()
    resumed = quantize_model(make_tiny_llama(tmp_path / "b", layers=3), tokens, counted, config, checkpoint_dir=ckpt,
                             progress=False)
    assert len(calls) == 2 * 7  # blocks 1 and 2 only
    for name, q in straight.layers.items():
        assert torch.equal(resumed.layers[name].decoded, q.decoded), name


@pytest.mark.model
def test_writing_a_gguf_on_a_full_disk_leaves_no_file(default_model_dir, tmp_path):
    """Both writers: llama.cpp's converter (its own process) and the lowbit writer (gguf's GGUFWriter)."""
    from lowbit_gguf.gguf.convert import convert
    from lowbit_gguf.gguf.write import write_lowbit_gguf

    make_tiny_llama(tmp_path / "hf", tokenizer_dir=default_model_dir, layers=1)
    out = tmp_path / "tiny.gguf"
    partial = full_disk_for(out)
    with pytest.raises(LowbitError, match=f"{FULL} .* the GGUF file tiny.gguf"):
        convert(tmp_path / "hf", out, "f16", quiet=True)
    assert not out.exists() and not partial.is_symlink()

    convert(tmp_path / "hf", out, "f16", quiet=True)
    lowbit = tmp_path / "lowbit.gguf"
    partial = full_disk_for(lowbit)
    with pytest.raises(LowbitError, match=f"{FULL} .* the GGUF file lowbit.gguf"):
        write_lowbit_gguf(out, lowbit, {}, {}, {"method": "test"}, embedding_type="f16", progress=False)
    assert not lowbit.exists() and not partial.is_symlink()
