"""Hugging Face checkpoint -> GGUF through llama.cpp's own converter (convert_hf_to_gguf.py).

The converter of the pinned upstream owns the tensor-name mapping, the hyperparameters and the
tokenizer (including the pre-tokenizer detection llama.cpp needs), so lowbit-gguf does not rewrite them.
It runs in its own process because it imports the gguf-py that ships beside it, which is newer than the
gguf package lowbit-gguf itself uses.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

from lowbit_gguf.cache import cache_root
from lowbit_gguf.errors import LowbitError, UnsupportedModel
from lowbit_gguf.files import partial_output
from lowbit_gguf.runtime.build import UPSTREAM, extract_upstream

# HF architectures of the llama family that the tests and the sequential driver cover.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
# quant methods convert_quantized.py decodes for the converter (lowbit_gguf.checkpoints imports them as codes)
LOWBIT_DECODED = ("aqlm", "vptq")


def upstream_source() -> Path:
    """A pristine (unpatched) copy of the pinned upstream tree, extracted once."""
    root = cache_root() / "upstream" / UPSTREAM.version
    if not (root / "convert_hf_to_gguf.py").exists():
        partial = root.with_name(root.name + ".partial")
        if partial.exists():
            import shutil

            shutil.rmtree(partial)
        extract_upstream(partial)
        partial.rename(root)
    return root


def check_model_dir(model_dir: Path) -> dict:
    """The model's config.json, after checking the directory holds a supported model."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LowbitError(f"model directory {model_dir} does not exist")
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise LowbitError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    config = json.loads(config_path.read_text())
    architectures = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise UnsupportedModel(
            f"{model_dir} is a {', '.join(architectures) or 'model with no architecture'}; "
            f"lowbit-gguf supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return config


def convert(model_dir: Path, out: Path, out_type: str = "f16", quiet: bool = False, verbose: bool = False) -> Path:
    """Write model_dir as a GGUF at out; out only appears once the converter has succeeded. The converter's log (a
    line per tensor) goes to convert_log_path(out); its warnings and errors are shown, with a progress bar over the
    tensors (quiet: neither; verbose: the whole log as it comes)."""
    model_dir, out = Path(model_dir), Path(out)
    if out_type not in OUT_TYPES:
        raise LowbitError(f"unknown output type {out_type!r}; choose from {', '.join(OUT_TYPES)}")
    config = check_model_dir(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    upstream = upstream_source()
    # checkpoints quantized in a format the converter does not know have their linears decoded on the way
    qconfig = config.get("quantization_config")
    if isinstance(qconfig, dict) and qconfig.get("quant_method") in LOWBIT_DECODED:
        script = ["-m", "lowbit_gguf.convert_quantized", str(upstream)]
    else:
        script = [str(upstream / "convert_hf_to_gguf.py")]
    log_path = convert_log_path(out)
    with partial_output(out, f"the GGUF file {out.name}") as partial:
        cmd = [sys.executable, *script, str(model_dir), "--outfile", str(partial), "--outtype", out_type]
        returncode = _run_logged(cmd, log_path, show_progress=not quiet, echo_all=verbose)
        if returncode != 0:
            detail = log_path.read_text(errors="replace")[-3000:]
            if "No space left on device" in detail:  # the converter's own OSError: say it as for our writes
                raise OSError(errno.ENOSPC, detail)
            raise LowbitError(f"llama.cpp's converter failed on {model_dir} (its log: {log_path}): {detail}")
    return out


def convert_log_path(out: Path) -> Path:
    """Where the converter's log for the output `out` is kept (the last conversion to that name)."""
    folder = cache_root() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"convert-{Path(out).name}.log"


def _run_logged(cmd: list[str], log_path: Path, show_progress: bool, echo_all: bool) -> int:
    """Run the converter with its output into log_path; warnings, errors and tracebacks also to stderr, a progress
    bar counting the tensors it converts. The converter's exit status."""
    from tqdm import tqdm

    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "errors": "replace"}
    with open(log_path, "w") as log, subprocess.Popen(cmd, **output) as proc, \
            tqdm(desc="converting", unit="tensor", disable=not show_progress or echo_all) as bar:
        shown = False  # inside a traceback: every line is shown
        for line in proc.stdout:
            log.write(line)
            shown = shown or line.startswith("Traceback")
            if echo_all or (show_progress and (shown or line.startswith(("WARNING", "ERROR", "CRITICAL")))):
                tqdm.write(line.rstrip("\n"), file=sys.stderr)
            if " --> " in line:  # the converter's line for each tensor it writes
                bar.update(1)
    return proc.returncode
