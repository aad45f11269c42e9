"""The Python API: `from lowbit_gguf import quantize, AQLMConfig` runs every stage the command line runs and
writes a GGUF the runtime's reader accepts."""

from dataclasses import replace

import pytest
import torch

from conftest import make_tiny_llama


def test_quantize_a_folder_and_save_the_gguf(default_model_dir, tmp_path):
    from lowbit_gguf import AQLMConfig, quantize
    from lowbit_gguf.gguf.inspect import read_summary

    make_tiny_llama(tmp_path / "hf", tokenizer_dir=default_model_dir, layers=1)
    config = replace(AQLMConfig.parse("1x8"), max_rounds=1, adam_steps=2, kmeans_iters=2, beam_size=1,
                     finetune_epochs=0)
    tokens = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    quantized = quantize(tmp_path / "hf", config, calibration=tokens, progress=False)
    assert quantized.method.name == "aqlm" and quantized.bits_per_weight > 1.0  # tiny layers: codebooks dominate
    path = quantized.save_gguf(tmp_path / "tiny.gguf", embedding_type="f16", progress=False)
    import gguf

    assert any(t.type_name == "AQLM_1X8" for t in read_summary(path).tensors)
    method = gguf.GGUFReader(path).get_field("lowbit_gguf.method")
    assert method is not None and method.contents() == "aqlm"


def test_quantize_runs_the_methods_preprocess_stage(default_model_dir, tmp_path, monkeypatch):
    """PTQ1.61 with restorative LoRA: the API runs the adapters' stage before the blocks (it keeps its result in
    the checkpoint folder), as the command line does."""
    from lowbit_gguf import PTQ161Config, quantize

    make_tiny_llama(tmp_path / "hf", tokenizer_dir=default_model_dir, layers=1)
    tokens = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    config = PTQ161Config(epochs=0, lora_rank=2, lora_steps=2, lora_batch=2)
    quantize(tmp_path / "hf", config, calibration=tokens, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert (tmp_path / "ckpt" / "preprocess" / "deltas.pt").exists()


def test_quantize_refuses_what_is_not_a_config_or_a_model_folder(tmp_path):
    from lowbit_gguf import AQLMConfig, quantize
    from lowbit_gguf.errors import LowbitError

    with pytest.raises(LowbitError, match="not a method config"):
        quantize(tmp_path, {"method": "aqlm"})
    with pytest.raises(LowbitError):
        quantize(tmp_path / "missing", AQLMConfig())
