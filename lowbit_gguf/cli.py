"""The lowbit-gguf command line: build the runtime, convert, quantize, evaluate, run and benchmark."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from lowbit_gguf import settings
from lowbit_gguf.errors import LowbitError

existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


class Group(click.Group):
    """Turns LowbitError into a one-line message and exit code 1 instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LowbitError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=Group)
@click.version_option(package_name="lowbit-gguf")
def cli():
    """Extreme low-bit quantization of Hugging Face LLMs into GGUF files for a patched llama.cpp."""


# ---- runtime -------------------------------------------------------------------------------------------

@cli.group(cls=Group)
def runtime():
    """The patched llama.cpp runtime (pinned upstream + ggml_patches/)."""


@runtime.command("build")
@click.option("--cuda", is_flag=True, help="Also build the CUDA backend (needs nvcc).")
@click.option("--metal", is_flag=True, help="Also build the Metal backend (macOS).")
@click.option("--cuda-arch", default="90", show_default=True, help="CUDA architectures for --cuda.")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel compile jobs (default: all cores).")
@click.option("--sanitize", type=click.Choice(["address"]), default=None,
              help="A separate build with AddressSanitizer and UndefinedBehaviorSanitizer (for "
                   "`tools/fuzz-gguf --sanitize`).")
def runtime_build(cuda, metal, cuda_arch, jobs, sanitize):
    """Fetch the pinned llama.cpp, apply the patches and build libraries and tools (cached)."""
    from lowbit_gguf.runtime.build import BuildOptions, build_runtime

    build = build_runtime(BuildOptions(cuda=cuda, metal=metal, cuda_arch=cuda_arch, sanitize=sanitize), jobs=jobs)
    click.echo(f"runtime ready: {build.root}")
    click.echo(f"  upstream {build.info['upstream']}, patches {build.info['patch_hash']}, "
               f"backends {build.info['flags']}, built in {build.info['seconds']} s")
    click.echo(f"  tools in {build.bin_dir}")


@runtime.command("info")
@click.option("--cuda", is_flag=True)
def runtime_info(cuda):
    """Show the build for the current patches and what the library reports."""
    from lowbit_gguf.runtime.build import BuildOptions, find_build
    from lowbit_gguf.runtime.library import ffi, load_library

    options = BuildOptions(cuda=cuda)
    build = find_build(options)
    lib = load_library(options)
    click.echo(json.dumps(build.info, indent=2))
    click.echo(f"patch tag: {ffi.string(lib.lb_runtime_version()).decode()}")
    click.echo(f"system:    {ffi.string(lib.lb_system_info()).decode()}")


@runtime.command("prune")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def runtime_prune(dry_run):
    """Remove cached runtime builds the current patches no longer use.

    Every change to ggml_patches/ makes a new build (about 250 MB); the old ones stay in the cache until pruned.
    Builds of other checkouts with other patches count as old: they rebuild from ccache when needed."""
    from lowbit_gguf.runtime.build import stale_builds

    def disk_usage(path: Path) -> int:
        files = path.rglob("*") if path.is_dir() else [path]
        return sum(f.lstat().st_size for f in files if f.is_file() and not f.is_symlink())

    stale = stale_builds()
    sizes = [disk_usage(p) for p in stale]
    for path, size in zip(stale, sizes):
        click.echo(f"{'would remove' if dry_run else 'removing'} {path} ({size / 2**20:.0f} MiB)")
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    click.echo(f"{'would free' if dry_run else 'freed'} {sum(sizes) / 2**30:.2f} GiB in {len(stale)} entries"
               if stale else "nothing to prune: every cached build is the current one for its options")


# ---- conversion and quantization ------------------------------------------------------------------------

@cli.command()
@click.argument("model_dir", type=existing_dir)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="GGUF file to write.")
@click.option("--type", "out_type", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="f16",
              show_default=True, help="Tensor type of a float checkpoint's weights.")
@click.option("--embedding-type", type=click.Choice(["q8_0", "f16"]), default="q8_0", show_default=True,
              help="Type of the token embeddings and output head of an imported AQLM or VPTQ checkpoint.")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's converter's log (a line per tensor) as it comes; "
                                                    "it is kept in a log file either way.")
def convert(model_dir, output, out_type, embedding_type, verbose):
    """Convert a Hugging Face checkpoint to GGUF (llama.cpp's own converter, pinned). A published AQLM
    checkpoint (quantization_config.quant_method "aqlm": 1x16, 2x8 or 1x8 with groups of 8) or VPTQ checkpoint
    ("vptq": one codebook per linear, no outlier columns) is written with its codes as they are, in lowbit-gguf's
    AQLM or VPTQ types, without quantizing again."""
    import time

    from lowbit_gguf.checkpoints import IMPORTERS, import_checkpoint, quant_method
    from lowbit_gguf.gguf.convert import check_model_dir, convert as run_convert, convert_log_path

    started = time.time()
    method = quant_method(check_model_dir(model_dir))
    if method in IMPORTERS:
        import_checkpoint(model_dir, output, embedding_type=embedding_type)
        made, log = f"{method} codes imported as they are", ""
    else:
        run_convert(model_dir, output, out_type, verbose=verbose)
        made, log = out_type.upper(), f"; converter log: {convert_log_path(output)}"
    click.echo(f"wrote {output} ({made}, {output.stat().st_size / 2**20:.1f} MiB) in {time.time() - started:.0f} s"
               + log)


def calibration_options(command):
    """--calib-text (repeatable), --samples, --seq-len and --heldout, shared by quantize and finetune."""
    options = [
        click.option("--calib-text", multiple=True, default=(settings.DEFAULT_CALIBRATION,), show_default=True,
                     help="Text to calibrate on: 'calibration' (the default set of four domains), a default text "
                          "by name, or a UTF-8 file; repeat it to mix several (windows are drawn from each in turn)."),
        click.option("--samples", default=settings.DEFAULT_SAMPLES, show_default=True,
                     help="Calibration sequences to train on."),
        click.option("--seq-len", default=settings.DEFAULT_SEQ_LEN, show_default=True,
                     help="Tokens per calibration sequence."),
        click.option("--heldout", default=settings.DEFAULT_HELDOUT, show_default=True,
                     help="Held-out sequences (from the last 10% of each text) that stop training early; 0: none."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.argument("model_dir", type=existing_dir)
@click.option("--method", required=True, help="Quantization method (see `lowbit-gguf methods`).")
@click.option("--config", default=None, help="Method config, e.g. 2x8 for AQLM or w4g32 for rtn.")
@click.option("--preset", type=click.Choice(settings.PRESETS), default="default", show_default=True,
              help="fast: a run of minutes (fewer, shorter calibration windows and lighter method settings) for a "
                   "first look; default: the method's own settings.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Set any field of the method's config (repeatable, after the preset's), e.g. --set beam_size=8; "
                   "`lowbit-gguf methods --fields` lists them.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="GGUF file to write.")
@calibration_options
@click.option("--device", default="cpu", show_default=True, help="Compute device for one block at a time.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Resume folder (default: OUTPUT.checkpoint); rerun the same command to resume.")
@click.option("--save-decoded", type=click.Path(path_type=Path), default=None,
              help="Also keep the reference-decoded model as a Hugging Face checkpoint here.")
@click.option("--embedding-type", type=click.Choice(["q8_0", "f16"]), default="q8_0", show_default=True,
              help="Type of the token embeddings and output head in methods with their own GGUF type "
                   "(llama.cpp's low-bit files use Q8_0).")
@click.pass_context
def quantize(ctx, model_dir, method, config, preset, overrides, output, calib_text, samples, seq_len, heldout, device,
             checkpoint, save_decoded, embedding_type):
    """Quantize MODEL_DIR block by block with a registered method and write a GGUF."""
    from click.core import ParameterSource

    from lowbit_gguf.export import quantize_checkpoint
    from lowbit_gguf.methods import get_method

    pairs = [o.partition("=") for o in overrides]
    if any(not key or not sep for key, sep, _ in pairs):
        raise click.BadParameter("expected FIELD=VALUE", param_hint="--set")
    parsed = get_method(method).parse_config(config, {key: value for key, _, value in pairs}, preset=preset)
    # the preset's calibration budget, where the command line does not set it
    budget = {"samples": samples, "seq_len": seq_len, "heldout": heldout}
    for name, value in settings.PRESET_CALIBRATION.get(preset, {}).items():
        if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
            budget[name] = value
    report = quantize_checkpoint(model_dir, method, parsed, output, calib_text=list(calib_text),
                                 n_samples=budget["samples"], seq_len=budget["seq_len"], n_heldout=budget["heldout"],
                                 device=device, checkpoint_dir=checkpoint, save_decoded=save_decoded,
                                 embedding_type=embedding_type, preset=preset)
    click.echo(f"wrote {report.gguf}: {len(report.result.layers)} linear layers, "
               f"{report.result.bits_per_weight():.3f} bits/weight in the method's own storage, "
               f"{report.seconds:.0f} s")


@cli.command()
@click.argument("gguf_file", type=existing_file)
@click.argument("model_dir", type=existing_dir)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="GGUF file to write.")
@click.option("--epochs", default=settings.FINETUNE_EPOCHS, show_default=True,
              help="Passes over the calibration sequences.")
@click.option("--lr", default=settings.FINETUNE_LR, show_default=True, help="Adam learning rate.")
@click.option("--batch", default=settings.FINETUNE_BATCH, show_default=True, help="Sequences per step.")
@click.option("--patience", default=settings.FINETUNE_PATIENCE, show_default=True,
              help="Held-out checks (every 16 steps) without a lower KL before training stops.")
@calibration_options
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Resume folder (default: OUTPUT.checkpoint); rerun the same command to resume.")
@click.option("--save-decoded", type=click.Path(path_type=Path), default=None,
              help="Also keep the reference-decoded model as a Hugging Face checkpoint here.")
@click.option("--embedding-type", type=click.Choice(["q8_0", "f16"]), default="q8_0", show_default=True,
              help="Type of the token embeddings and output head.")
@click.option("--device", default="cpu", show_default=True, help="Compute device for both models (e.g. cuda).")
def finetune(gguf_file, model_dir, output, epochs, lr, batch, patience, calib_text, samples, seq_len, heldout,
             checkpoint, save_decoded, embedding_type, device):
    """Fine-tune a quantized GGUF end to end against its float MODEL_DIR and write a new GGUF.

    Codebooks, scales and norms are trained, codes fixed, to match the float model's next-token
    distribution (KL divergence) on calibration text: AQLM's global fine-tuning. The file keeps its size
    and speed."""
    from lowbit_gguf.finetune import finetune_gguf

    report = finetune_gguf(gguf_file, model_dir, output, epochs=epochs, lr=lr, batch=batch, patience=patience,
                           calib_text=list(calib_text), n_samples=samples, seq_len=seq_len, n_heldout=heldout,
                           checkpoint_dir=checkpoint, save_decoded=save_decoded, embedding_type=embedding_type,
                           device=device)
    losses = report.losses
    tail = losses[-max(1, len(losses) // 8):]
    if report.heldout:
        click.echo(f"held-out KL {report.heldout[0]:.4f} before, {min(report.heldout):.4f} at step "
                   f"{report.best_step} (the state written)")
    click.echo(f"wrote {report.gguf}: {report.steps} steps, KL {losses[0]:.4f} (first step) -> "
               f"{sum(tail) / len(tail):.4f} (mean of the last {len(tail)}), {report.seconds:.0f} s")


@cli.command()
@click.option("--fields", is_flag=True, help="Also list each method's config fields and their defaults.")
def methods(fields):
    """List the registered quantization methods."""
    import dataclasses

    from lowbit_gguf.methods import METHODS, available_methods

    for name in available_methods():
        click.echo(f"{name:10s} {METHODS[name].description}")
        if fields:
            config = METHODS[name].config_type()
            for f in dataclasses.fields(config):
                click.echo(f"{'':12s}{f.name} = {getattr(config, f.name)!r}")


# ---- evaluation and running ----------------------------------------------------------------------------

@cli.command()
@click.argument("gguf_file", type=existing_file)
@click.option("--text", default="evaluation", show_default=True,
              help="'evaluation' (a novel), 'evaluation-manual' (a technical manual), another default text by "
                   "name, or a UTF-8 file.")
@click.option("--ctx", default=512, show_default=True, help="Tokens per window.")
@click.option("--chunks", type=int, default=None, help="Score only the first N windows.")
@click.option("--threads", "-t", type=int, default=0, help="CPU threads (default: all cores).")
@click.option("--hf", "hf_dir", type=existing_dir, default=None,
              help="Also score this Hugging Face model in transformers on the same tokens.")
def ppl(gguf_file, text, ctx, chunks, threads, hf_dir):
    """Perplexity of a GGUF through the patched runtime (second half of each window scored)."""
    from tqdm import tqdm

    from lowbit_gguf.calibration import load_text
    from lowbit_gguf.evaluate import count_windows, hf_perplexity, load_hf_model
    from lowbit_gguf.runtime.library import Model, perplexity

    with Model(gguf_file, n_ctx=ctx, n_threads=threads) as model:
        tokens = model.tokenize(load_text(text))
        if chunks:
            tokens = tokens[:chunks * ctx]
        with tqdm(total=count_windows(len(tokens), ctx), desc="perplexity (llama.cpp)", unit="window") as bar:
            value = perplexity(model, tokens, ctx, progress=bar.update)
    click.echo(f"runtime perplexity: {value:.4f} ({len(tokens) // ctx} windows of {ctx} tokens)")
    if hf_dir:
        reference = hf_perplexity(load_hf_model(hf_dir), tokens, ctx)
        click.echo(f"transformers perplexity: {reference:.4f} (relative difference "
                   f"{abs(value - reference) / reference:.3%})")


@cli.command()
@click.argument("gguf_file", type=existing_file)
@click.option("-p", "--prompt", required=True)
@click.option("-n", "--max-tokens", default=64, show_default=True)
@click.option("--temp", default=0.0, show_default=True, help="0 is greedy.")
@click.option("--seed", default=0, show_default=True)
@click.option("--ctx", default=2048, show_default=True)
@click.option("--threads", "-t", type=int, default=0)
def run(gguf_file, prompt, max_tokens, temp, seed, ctx, threads):
    """Generate a continuation of PROMPT with the patched runtime."""
    from lowbit_gguf.runtime.library import Model

    with Model(gguf_file, n_ctx=ctx, n_threads=threads) as model:
        click.echo(prompt, nl=False)
        for piece in model.generate(prompt, max_tokens=max_tokens, temperature=temp, seed=seed):
            click.echo(piece, nl=False)
        click.echo()


@cli.command()
@click.argument("gguf_files", type=existing_file, nargs=-1, required=True)
@click.option("--threads", "-t", default=2, show_default=True)
@click.option("-p", "--n-prompt", default=512, show_default=True)
@click.option("-n", "--n-gen", default=128, show_default=True)
@click.option("-r", "--repetitions", default=3, show_default=True)
def bench(gguf_files, threads, n_prompt, n_gen, repetitions):
    """Tokens/s with llama.cpp's llama-bench (several files are measured in one run), size and bits/weight."""
    import tempfile

    from lowbit_gguf.bench_suite import llama_bench
    from lowbit_gguf.gguf.inspect import read_summary
    from lowbit_gguf.runtime.build import find_build

    with tempfile.TemporaryDirectory() as tmp:
        rows = llama_bench(find_build().tool("llama-bench"), list(gguf_files), threads, n_prompt, n_gen,
                           repetitions, Path(tmp) / "llama-bench.log")
    click.echo(f"{'file':40s} {'MiB':>8s} {'bpw':>7s} {'test':>8s} {'tokens/s':>12s}")
    for row in rows:
        summary = read_summary(row["model_filename"])
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        click.echo(f"{Path(row['model_filename']).name:40s} {summary.file_bytes / 2**20:8.1f} "
                   f"{summary.bits_per_weight():7.3f} {test:>8s} "
                   f"{row['avg_ts']:8.2f} ± {row['stddev_ts']:.2f}")
    click.echo(f"({threads} threads, {repetitions} repetitions, {os.cpu_count()} cores)")


@cli.command("bench-kernels")
@click.argument("gguf_files", type=existing_file, nargs=-1, required=True)
@click.option("--block", default=0, show_default=True, help="Transformer block whose weights are timed.")
@click.option("--tokens", default="1,4", show_default=True, help="Token counts (comma separated).")
@click.option("--threads", "-t", default="1,2", show_default=True, help="Thread counts (comma separated).")
@click.option("--paths", default="loaded,fastest", show_default=True,
              help="Kernel paths: loaded (what llama.cpp runs: codes transposed at load where the register-table "
                   "kernel takes the weight), fastest (the weight as stored in the file), tables (look-up tables), "
                   "reference (plain C).")
@click.option("--repeat", default=200, show_default=True, help="Matmuls per timing.")
@click.option("--rounds", default=3, show_default=True, help="Alternating rounds; the median is reported.")
def bench_kernels(gguf_files, block, tokens, threads, paths, repeat, rounds):
    """Microseconds per CPU MUL_MAT of each lowbit weight of one block, kernel paths side by side."""
    from tqdm import tqdm

    from lowbit_gguf.gguf.inspect import read_summary
    from lowbit_gguf.kernel_bench import format_timings, time_block_kernels

    def numbers(text):
        return tuple(int(v) for v in text.split(","))

    path_list = tuple(p.strip() for p in paths.split(","))
    files = [Path(f) for f in gguf_files]
    with tqdm(desc="timing kernels", unit="case") as bar:
        timings = time_block_kernels(files, block, numbers(tokens), numbers(threads), path_list, repeat, rounds,
                                     progress=bar.update)
    n_layers = len({t.name.split(".")[1] for t in read_summary(files[0]).tensors if t.name.startswith("blk.")})
    click.echo(format_timings(timings, n_layers))
    click.echo(f"({os.cpu_count()} cores; medians and fastest of {rounds} alternating rounds of {repeat} matmuls)")


@cli.command("bench-suite")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Folder for bench.json, bench.md and bench.png.")
@click.option("--quick", is_flag=True, help="Smoke run: three files, tiny budgets.")
@click.option("--demo", is_flag=True, help="The demo's table: F16 and IQ2_XXS beside the --add-file files, 8 chunks "
                                           "of each text, tg32 (minutes).")
@click.option("--model", "model_dir", type=existing_dir, default=None, help="Default: SmolLM2-135M-Instruct.")
@click.option("--keep-work", is_flag=True, help="Keep the GGUF files and tool logs in OUT/work.")
@click.option("--add-file", "added", multiple=True, metavar="NAME=PATH",
              help="Also measure a GGUF quantized beforehand (e.g. aqlm-2x8=model-aqlm.gguf); repeatable.")
def bench_suite(out_dir, quick, demo, model_dir, keep_work, added):
    """Every method and llama.cpp's own low-bit types side by side: bits/weight, PPL, KLD, speed."""
    from dataclasses import replace

    from lowbit_gguf.bench_suite import SuiteSettings, clean_work, run_suite

    pairs = []
    for item in added:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} is not NAME=PATH", param_hint="--add-file")
        pairs.append((name, path))
    if quick and demo:
        raise click.BadParameter("choose one of --quick and --demo", param_hint="--demo")
    settings = SuiteSettings.quick() if quick else SuiteSettings.demo() if demo else SuiteSettings()
    settings = replace(settings, added_files=tuple(pairs))
    run_suite(out_dir, settings, model_dir)
    if not keep_work:
        clean_work(out_dir)
    click.echo((out_dir / "bench.md").read_text())
    click.echo(f"wrote {out_dir}/bench.json, bench.md, bench.png")


@cli.command()
@click.argument("gguf_file", type=click.Path(path_type=Path))
@click.option("--summary", is_flag=True, help="Only the totals, not every tensor.")
def inspect(gguf_file, summary):
    """List a GGUF's tensors, types and bits per weight."""
    from lowbit_gguf.gguf.inspect import format_summary, read_summary

    click.echo(format_summary(read_summary(gguf_file), show_tensors=not summary))


@cli.command("default-model")
def default_model():
    """Prepare the default model (SmolLM2-135M-Instruct, float32) and print its directory."""
    from lowbit_gguf.assets import default_model_dir

    click.echo(default_model_dir())


def main():
    cli(prog_name="lowbit-gguf")


if __name__ == "__main__":
    sys.exit(main())
