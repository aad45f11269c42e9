"""Every GGUF is untrusted input: the crafted cases that used to crash the runtime are refused with a message naming
the tensor or key, a fixed-seed fuzzing budget runs without a crash, hang or traceback, and the Python readers
refuse malformed files with BadGGUF. The fuzzer itself (tools/fuzz-gguf, lowbit_gguf.fuzz) takes longer budgets and
the sanitized build on demand."""

import re
import struct

import numpy as np
import pytest

from gguf import GGMLQuantizationType

from lowbit_gguf import fuzz
from lowbit_gguf.errors import BadGGUF, LowbitError
from lowbit_gguf.gguf.types import LOWBIT_TYPES

pytestmark = pytest.mark.runtime

SMOKE_CASES = 270  # 30 of each mutation class, about 6 s


@pytest.fixture(scope="module")
def seeds():
    return {t.name: fuzz.seed_image(t) for t in LOWBIT_TYPES}


def test_a_seed_image_is_a_gguf_file_gguf_reads_back_byte_for_byte(seeds, tmp_path):
    path = tmp_path / "seed.gguf"
    path.write_bytes(seeds["VPTQ_2"].to_bytes())
    assert fuzz.read_image(path).to_bytes() == path.read_bytes()


def test_every_seed_runs(seeds, runtime_build, tmp_path):
    for name, image in seeds.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(image.to_bytes())
        outcome = fuzz.run_case(path)
        assert (outcome.kind, outcome.python) == ("ran", "ok"), (name, outcome)


# what each crafted case's refusal must name
CRAFTED = {
    "zero-sized side blk.0.attn_q.codebook": r"'blk.0.attn_q.codebook' has shape \[8, 256, 0, 1\]",
    "zero-sized side blk.0.attn_q.row_scale": r"'blk.0.attn_q.row_scale' has shape \[0, 1, 1, 1\]",
    "lowbit type on token_embd.weight": r"'token_embd.weight' has the lowbit type aqlm_2x8, which only matmul",
    "lowbit type on output_norm.weight": r"'output_norm.weight' has the lowbit type",
    "lowbit type on blk.0.attn_norm.weight": r"'blk.0.attn_norm.weight' has the lowbit type",
    "one expert in a lowbit type": r"'blk.0.ffn_gate_exps.weight' has the lowbit type",
    "LoRA adapter with a lowbit lora_a": r"LoRA tensor pair for 'blk.0.attn_q.weight' has the lowbit type aqlm_2x8",
    "llama.block_count 0": r"'llama.block_count' is 0; a model has 1 to 512 blocks",
    "llama.block_count 2147483648": r"'llama.block_count' is 2147483648",
    "llama.block_count 4294967295": r"'llama.block_count' is 4294967295",
    "PTQ1.61 empty salient set": r"'blk.0.attn_q.salient_spill' is 0 bytes wide",
    "I32 type on blk.0.ffn_norm.weight": r"compatible buffer type for tensor blk.0.ffn_norm.weight",
    "I32 type on output.weight": r"'output.weight' has type i32; matmul weights and embeddings have float",
    "I32 type on token_embd.weight": r"'token_embd.weight' has type i32; matmul weights and embeddings have float",
}


def test_the_crafted_cases_are_refused_naming_the_tensor_or_key(seeds, runtime_build, tmp_path):
    cases = list(fuzz.crafted_cases(seeds))
    assert sorted(what for what, _, _ in cases) == sorted(CRAFTED)
    for what, model, adapter in cases:
        path, adapter_path = tmp_path / "model.gguf", None
        path.write_bytes(model.to_bytes())
        if adapter is not None:
            adapter_path = tmp_path / "adapter.gguf"
            adapter_path.write_bytes(adapter.to_bytes())
        outcome = fuzz.run_case(path, adapter_path)
        assert outcome.kind == "refused", (what, outcome)
        assert outcome.python in ("ok", "refused"), (what, outcome)
        assert re.search(CRAFTED[what], outcome.detail), (what, outcome.detail)


def test_a_lora_adapter_of_llamas_own_types_applies(seeds, runtime_build, tmp_path):
    """The refusal above is of the lowbit type, not of adapters: the same adapter in F32 changes the logits."""
    from lowbit_gguf.runtime import Model

    model_path, adapter_path = tmp_path / "model.gguf", tmp_path / "adapter.gguf"
    model_path.write_bytes(seeds["AQLM_2X8"].to_bytes())
    _, _, adapter = next(c for c in fuzz.crafted_cases(seeds) if c[2] is not None)
    adapter = adapter.copy()
    rng = np.random.default_rng(0)
    adapter.tensors[0] = fuzz.TensorImage("blk.0.attn_q.weight.lora_a", GGMLQuantizationType.F32, [fuzz.HIDDEN, 8],
                                          fuzz.f32_bytes(rng.normal(size=(8, fuzz.HIDDEN))))
    adapter_path.write_bytes(adapter.to_bytes())
    with Model(model_path, n_ctx=64, n_threads=1) as model:
        plain = model.eval([1, 2, 3])
        model.load_lora(adapter_path)
        adapted = model.eval([1, 2, 3])
    assert np.isfinite(adapted).all() and not np.allclose(plain, adapted)


def test_a_fixed_seed_fuzzing_budget_finds_no_crash_hang_or_traceback(runtime_build):
    report = fuzz.fuzz(n_cases=SMOKE_CASES, seed=0, crafted=False)
    assert report.failures == [], report.failures[:5]
    classes = {c for c, _ in report.outcomes}
    assert classes == {"seed"} | set(fuzz.MUTATIONS)
    # the mutations reach both outcomes: files still run after harmless changes, and malformed ones are refused
    assert report.outcomes[("codes", "ran")] > 0 and report.outcomes[("truncate", "refused")] > 0


def _write(tmp_path, data: bytes):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    return path


def _architecture_as_array(image):
    """general.architecture's value type changed to array: its string's bytes read as an array header, whose count
    is far past the end of the file."""
    out = image.copy()
    key, pair = out.kv[0]
    head = 8 + len(key)
    out.kv[0] = (key, pair[:head] + struct.pack("<I", 9) + pair[head + 4:])
    return out


@pytest.mark.parametrize("case", ["array count past the end", "255 dimensions", "truncated", "empty", "not gguf"])
def test_the_python_readers_refuse_a_malformed_file_with_bad_gguf(case, seeds, tmp_path):
    """inspect, finetune and the writer all read through open_gguf: a clear BadGGUF, never a hang or a traceback
    (gguf's own reader loops for hours on the first case)."""
    from lowbit_gguf.gguf.inspect import read_lowbit_weights, read_summary

    image = seeds["AQLM_2X8"]
    if case == "array count past the end":
        data = _architecture_as_array(image).to_bytes()
    elif case == "255 dimensions":
        bad = image.copy()
        bad.tensors[0].ne = bad.tensors[0].ne + [1] * 253
        data = bad.to_bytes()
    elif case == "truncated":
        data = image.to_bytes()[:1000]
    else:
        data = b"" if case == "empty" else b"PK\x03\x04" + bytes(100)
    path = _write(tmp_path, data)
    message = {"array count past the end": "runs past the end", "255 dimensions": "has 255 dimensions",
               "truncated": "runs past the end", "empty": "shorter than a GGUF header",
               "not gguf": "no GGUF magic"}[case]
    for reader in (read_summary, read_lowbit_weights):
        with pytest.raises(BadGGUF, match=message):
            reader(path)


def test_the_writer_refuses_a_malformed_source_with_bad_gguf(seeds, tmp_path):
    from lowbit_gguf.gguf.write import write_lowbit_gguf

    source = _write(tmp_path, seeds["AQLM_2X8"].to_bytes()[:3000])
    with pytest.raises(BadGGUF, match="runs past the end"):
        write_lowbit_gguf(source, tmp_path / "out.gguf", {}, {}, {}, progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_inspect_reports_a_malformed_file_without_a_traceback(seeds, tmp_path):
    from click.testing import CliRunner

    from lowbit_gguf.cli import cli

    path = _write(tmp_path, seeds["AQLM_2X8"].to_bytes()[:5000])
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code != 0 and "runs past the end" in result.output and "Traceback" not in result.output


def test_a_sanitized_build_has_its_own_cache_key_and_flags():
    from lowbit_gguf.runtime.build import BuildOptions, build_dir_for, options_of_tag

    options = BuildOptions(sanitize="address")
    assert options.tag == "cpu-asan" and options_of_tag("cpu-asan") == options
    assert build_dir_for(options) != build_dir_for(BuildOptions())
    assert "-DGGML_SANITIZE_ADDRESS=ON" in options.cmake_flags() and "-DLLAMA_SANITIZE_UNDEFINED=ON" in \
        options.cmake_flags()
    with pytest.raises(LowbitError, match="unknown sanitizer"):
        BuildOptions(sanitize="thread")
