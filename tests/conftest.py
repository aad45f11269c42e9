"""Shared fixtures. The runtime fixture builds the patched llama.cpp (cached: seconds once built); the
default-model fixtures fetch and prepare the model and text on first use (cached outside the repo)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch



@pytest.fixture(scope="session")
def runtime_build():
    from lowbit_gguf.runtime.build import build_runtime

    return build_runtime(progress=False)


@pytest.fixture(scope="session")
def default_model_dir():
    from lowbit_gguf.assets import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def default_f16_gguf(default_model_dir, tmp_path_factory):
    from lowbit_gguf.gguf.convert import convert

    return convert(default_model_dir, tmp_path_factory.mktemp("gguf") / "smollm2-f16.gguf", "f16", quiet=True)


@pytest.fixture(scope="session")
def tiny_aqlm(default_model_dir, tmp_path_factory):
    """(GGUF, decoded HF checkpoint) of a 2-block Llama with hidden 128 quantized with AQLM 2x8; its 512 MLP rows
    take the register-table kernel (codes transposed at load) where the runtime has it."""
    return quantize_tiny_aqlm("2x8", default_model_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_aqlm_1x16(default_model_dir, tmp_path_factory):
    """The same Llama in AQLM 1x16: 65,536 codewords per layer, more than its groups (16-bit codes, 1 MiB codebooks)."""
    return quantize_tiny_aqlm("1x16", default_model_dir, tmp_path_factory)


def quantize_tiny_aqlm(config_text, default_model_dir, tmp_path_factory):
    from lowbit_gguf.methods import get_method
    from lowbit_gguf.export import quantize_checkpoint

    folder = tmp_path_factory.mktemp(f"tiny-aqlm-{config_text}")
    make_tiny_llama(folder / "float", tokenizer_dir=default_model_dir, hidden=128, intermediate=512)
    config = replace(get_method("aqlm").parse_config(config_text), max_rounds=1, adam_steps=5, kmeans_iters=4,
                     beam_size=1, finetune_epochs=1)
    report = quantize_checkpoint(folder / "float", "aqlm", config, folder / "aqlm.gguf", n_samples=4,
                                 seq_len=64, save_decoded=folder / "decoded", embedding_type="f16",
                                 progress=False)
    return report.gguf, folder / "decoded"


@pytest.fixture(scope="session")
def tiny_ptq161(default_model_dir, tmp_path_factory):
    """(GGUF, decoded HF checkpoint) of a 2-block Llama with hidden 128 quantized with PTQ1.61 (20% salient)."""
    from lowbit_gguf.methods import get_method
    from lowbit_gguf.export import quantize_checkpoint

    folder = tmp_path_factory.mktemp("tiny-ptq161")
    make_tiny_llama(folder / "float", tokenizer_dir=default_model_dir, hidden=128)
    config = replace(get_method("ptq161").parse_config("s20"), epochs=1)
    report = quantize_checkpoint(folder / "float", "ptq161", config, folder / "ptq161.gguf", n_samples=4,
                                 seq_len=64, save_decoded=folder / "decoded", embedding_type="f16",
                                 progress=False)
    return report.gguf, folder / "decoded"


@pytest.fixture(scope="session")
def tiny_vptq(default_model_dir, tmp_path_factory):
    """(GGUF, decoded HF checkpoint) of a 2-block Llama with hidden 128 quantized with VPTQ v8k256r256 (q/k rows
    in llama.cpp's permuted order, so its row groups are the file's)."""
    from lowbit_gguf.methods import get_method
    from lowbit_gguf.export import quantize_checkpoint

    folder = tmp_path_factory.mktemp("tiny-vptq")
    make_tiny_llama(folder / "float", tokenizer_dir=default_model_dir, hidden=128, intermediate=512)
    config = replace(get_method("vptq").parse_config("v8k256r256"), kmeans_iters=10, finetune_epochs=1)
    report = quantize_checkpoint(folder / "float", "vptq", config, folder / "vptq.gguf", n_samples=4,
                                 seq_len=64, save_decoded=folder / "decoded", embedding_type="f16",
                                 progress=False)
    return report.gguf, folder / "decoded"


def make_tiny_llama(folder: Path, tokenizer_dir: Path | None = None, seed: int = 0,
                    layers: int = 2, vocab: int = 256, hidden: int = 64, intermediate: int | None = None):
    """A small random llama saved as a Hugging Face checkpoint (with the default model's tokenizer when
    tokenizer_dir is given, so llama.cpp's converter accepts it); intermediate defaults to 2 hidden + 32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if tokenizer_dir is not None:
        vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden + 32,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1 so a wrong norm weight cannot go unnoticed
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(tokenizer_dir / name, folder / name)
    return model


def aqlm_configs() -> list[str]:
    """The AQLM configs the runtime has a type for, from the type table: a new type is covered by its row."""
    from lowbit_gguf.gguf.types import LOWBIT_TYPES

    return [f"{t.num_codebooks}x{t.code_bits}" for t in LOWBIT_TYPES if t.method == "aqlm"]


AQLM_CONFIGS = aqlm_configs()

TINY_CONFIGS = {"rtn": "w4g32", "aqlm": "2x8", "aqlm-1x8": "1x8", "ptq161": "s20", "vptq": "v8k256r256"}


def tiny_config(key: str):
    """A method's config, cut to seconds on the tiny llama (fine-tuning kept, one round of each stage)."""
    from lowbit_gguf.methods import get_method

    spec = get_method(key.split("-")[0])
    config = spec.parse_config(TINY_CONFIGS[key])
    if spec.name == "aqlm":
        config = replace(config, max_rounds=1, adam_steps=3, kmeans_iters=3, finetune_epochs=1)
    if spec.name == "ptq161":
        config = replace(config, epochs=1)
    if spec.name == "vptq":
        config = replace(config, kmeans_iters=10, finetune_epochs=1)
    return spec, config


GPU_SHIMS = Path(__file__).parent / "gpu_shims"


def compile_gpu_shim(out: Path, sources: list[str], include_dirs: list[Path], cdef: str):
    """(ffi, library) of GPU kernel arithmetic compiled as C++ through tests/gpu_shims (no GPU toolchain needed).
    Exact IEEE arithmetic (no fused multiply-adds), so a shim can be held to the Python decode bit for bit."""
    import subprocess

    from cffi import FFI

    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    flags = ["-std=c++17", "-O1", "-ffp-contract=off", "-fno-strict-aliasing", "-shared", "-fPIC", "-Wall", "-Werror",
             "-Wno-unknown-pragmas"]
    includes = [arg for folder in [GPU_SHIMS, *include_dirs] for arg in ("-I", str(folder))]
    subprocess.run(["c++", *flags, *includes, *(str(GPU_SHIMS / s) for s in sources), "-o", str(out)], check=True)
    ffi = FFI()
    ffi.cdef(cdef)
    return ffi, ffi.dlopen(str(out))


def cpu_has(*flags: str) -> bool:
    """Whether this machine's CPU reports every flag of /proc/cpuinfo (the native runtime build uses them)."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and all(f" {flag}" in cpuinfo.read_text() for flag in flags)


# Where the CPU has AVX-512 BF16, prompts (8 tokens and more, through sgemm) run in bf16: rows and tokens keep 8
# significant bits, so each product, and so the dot product, is within 2^-8 of |x| . |w| (the "tables" path pins
# the f32 sgemm). Each method's bounds: lowbit_gguf.gguf.types.KernelBounds.
BF16_PROMPTS = cpu_has("avx512_bf16")


def bounds(method: str):
    from lowbit_gguf.gguf.types import METHODS

    return METHODS[method].bounds


def rewrite_gguf(source, out, edit=None, strings: dict | None = None):
    """Copy a GGUF, passing each (name, data, type) through edit (None drops the tensor; no edit: copied as is) and
    setting the string keys in strings (a value None drops the key)."""
    import gguf

    from lowbit_gguf.gguf.write import _copy_metadata

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, reader.get_field("general.architecture").contents())
    _copy_metadata(reader, writer, skip=tuple(strings or ()))
    for key, value in (strings or {}).items():
        if value is not None:
            writer.add_string(key, value)
    for t in reader.tensors:
        changed = (np.asarray(t.data), t.tensor_type) if edit is None else edit(t.name, np.asarray(t.data),
                                                                                t.tensor_type)
        if changed is not None:
            writer.add_tensor(t.name, changed[0], raw_dtype=changed[1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def unchecked_packed(packed, **changes):
    """A PackedWeight that skips the Python-side shape checks, to reach the C ones."""
    from lowbit_gguf.gguf.write import PackedWeight

    weight = object.__new__(PackedWeight)
    weight.__dict__.update({**packed.__dict__, **changes})
    return weight
