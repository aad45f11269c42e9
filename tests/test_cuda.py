"""The CUDA build on a GPU: the same tiny model gives the same logits as on the CPU.

Skips where there is no GPU. The CUDA library runs in a child process: both builds' libllama share the
soname libllama.so.0, so one process can hold only one of them."""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import make_tiny_llama

pytestmark = [pytest.mark.cuda, pytest.mark.runtime]


def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(not gpu_present(), reason="no CUDA GPU on this machine")
def test_cuda_logits_match_cpu(runtime_build, default_model_dir, tmp_path):
    from lowbit_gguf.gguf.convert import convert
    from lowbit_gguf.runtime.build import BuildOptions, build_runtime
    from lowbit_gguf.runtime.library import Model

    build_runtime(BuildOptions(cuda=True), progress=False)
    make_tiny_llama(tmp_path / "hf", tokenizer_dir=default_model_dir, layers=2)
    path = convert(tmp_path / "hf", tmp_path / "tiny-f32.gguf", "f32", quiet=True)
    tokens = np.arange(1000, 1040, dtype=np.int32)
    with Model(path, n_ctx=64, n_threads=2) as model:
        cpu = model.eval(tokens)
    script = textwrap.dedent(f"""
        import numpy as np
        from lowbit_gguf.runtime.build import BuildOptions
        from lowbit_gguf.runtime.library import Model
        with Model({str(path)!r}, n_ctx=64, n_gpu_layers=99, options=BuildOptions(cuda=True)) as model:
            np.save({str(tmp_path / "cuda.npy")!r}, model.eval(np.arange(1000, 1040, dtype=np.int32)))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    gpu = np.load(tmp_path / "cuda.npy")
    np.testing.assert_allclose(gpu, cpu, atol=2e-3 * np.abs(cpu).max(), rtol=1e-3)
