"""The CUDA build on a GPU: the same tiny models (F32, AQLM, PTQ1.61) give the same logits as on the CPU; and
`quantize` / `finetune --device cuda` reach what they reach on the CPU.

Skips where there is no GPU. The CUDA library runs in a child process: both builds' libllama share the
soname libllama.so.0, so one process can hold only one of them."""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import make_tiny_llama, tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.runtime]


def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(not gpu_present(), reason="no CUDA GPU on this machine")
def test_cuda_logits_match_cpu(runtime_build, default_model_dir, tmp_path):
    from lowbit_gguf.gguf.convert import convert
    from lowbit_gguf.runtime.build import BuildOptions, build_runtime

    build_runtime(BuildOptions(cuda=True), progress=False)
    make_tiny_llama(tmp_path / "hf", tokenizer_dir=default_model_dir, layers=2)
    path = convert(tmp_path / "hf", tmp_path / "tiny-f32.gguf", "f32", quiet=True)
    cpu, gpu = cpu_and_gpu_logits(path, tmp_path)
    for c, g in zip(cpu, gpu):
        np.testing.assert_allclose(g, c, atol=2e-3 * np.abs(c).max(), rtol=1e-3)


@pytest.mark.skipif(not gpu_present(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("fixture", ["tiny_aqlm", "tiny_aqlm_1x16", "tiny_ptq161"])
def test_cuda_lowbit_weights_match_cpu(fixture, request, tmp_path):
    """Lowbit weights on the GPU: a 40-token prompt (decode + cuBLAS) and one more token (GEMV)."""
    from lowbit_gguf.runtime.build import BuildOptions, build_runtime

    build_runtime(BuildOptions(cuda=True), progress=False)
    cpu, gpu = cpu_and_gpu_logits(request.getfixturevalue(fixture)[0], tmp_path)
    for c, g in zip(cpu, gpu):
        np.testing.assert_allclose(g, c, atol=2e-3 * np.abs(c).max(), rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch has no CUDA GPU")
@pytest.mark.parametrize("key", ["aqlm", "aqlm-1x8", "ptq161"])
def test_quantization_on_the_gpu_matches_the_cpu(key, tmp_path):
    """`quantize --device cuda`: the same tiny model quantized on the GPU and on the CPU (random draws come from the
    same CPU generator; the arithmetic differs in rounding, so codes may differ) reaches the same weight error."""
    from lowbit_gguf.sequential import quantize_model

    tokens = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    spec, config = tiny_config(key)
    errors = {}
    for device in ("cpu", "cuda"):
        model = make_tiny_llama(tmp_path / device, layers=1)
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = quantize_model(model, tokens, spec, config, device=device, progress=False)
        assert all(t.device.type == "cpu" for q in result.layers.values() for t in q.payload.values())
        errors[device] = {n: ((q.decoded - weights[f"{n}.weight"]).norm() / weights[f"{n}.weight"].norm()).item()
                          for n, q in result.layers.items()}
    for name, cpu_error in errors["cpu"].items():
        assert errors["cuda"][name] <= 1.2 * cpu_error + 1e-3, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="this torch has no CUDA GPU")
def test_finetuning_on_the_gpu_matches_the_cpu(tiny_aqlm, tmp_path):
    """`finetune --device cuda` trains as the CPU does (same batches, float rounding aside)."""
    from test_finetune import TUNING, float_dir

    from lowbit_gguf.finetune import finetune_gguf

    losses = {device: finetune_gguf(tiny_aqlm[0], float_dir(tiny_aqlm), tmp_path / f"{device}.gguf", device=device,
                                    **TUNING).losses for device in ("cpu", "cuda")}
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-2)


def cpu_and_gpu_logits(path, tmp_path):
    """Logits of a 40-token prompt (all rows) and of one token after it, on the CPU and with every layer on
    the GPU (in a child process, see above)."""
    from lowbit_gguf.runtime.library import Model

    prompt = np.arange(1000, 1040, dtype=np.int32)
    with Model(path, n_ctx=64, n_threads=2) as model:
        cpu = [model.eval(prompt, all_logits=True), model.eval([1040], pos0=40)]
    script = textwrap.dedent(f"""
        import numpy as np
        from lowbit_gguf.runtime.build import BuildOptions
        from lowbit_gguf.runtime.library import Model
        with Model({str(path)!r}, n_ctx=64, n_gpu_layers=99, options=BuildOptions(cuda=True)) as model:
            prompt = np.arange(1000, 1040, dtype=np.int32)
            np.save({str(tmp_path / "prompt.npy")!r}, model.eval(prompt, all_logits=True))
            np.save({str(tmp_path / "next.npy")!r}, model.eval([1040], pos0=40))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    return cpu, [np.load(tmp_path / "prompt.npy"), np.load(tmp_path / "next.npy")]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_cuda_sources_compile_with_nvcc(runtime_build, tmp_path):
    """The project's CUDA kernels and the patched ggml-cuda.cu compile for sm_90 (the patched tree of the
    CPU build holds both; the full `runtime build --cuda` takes half an hour on 2 cores)."""
    import os

    from lowbit_gguf.runtime.build import find_pip_cublas

    src = runtime_build.source_dir / "ggml"
    env = dict(os.environ)
    try:
        cublas = find_pip_cublas()
    except Exception as exc:  # no cuBLAS headers anywhere: the build could not compile either
        pytest.skip(str(exc))
    if cublas:
        env["CPATH"] = str(cublas[0])
    names = sorted(p.name for p in (src / "src" / "ggml-cuda").glob("lowbit*.cu")) + ["ggml-cuda.cu"]
    assert {"lowbit.cu", "lowbit-aqlm.cu", "lowbit-ptq161.cu"} <= set(names)
    for name in names:
        proc = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-DGGML_CUDA_NO_VMM", "-I", src / "src",
                               "-I", src / "include", "-c", src / "src" / "ggml-cuda" / name,
                               "-o", tmp_path / (name + ".o")], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
