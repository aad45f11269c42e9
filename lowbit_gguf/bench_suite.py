"""Side-by-side benchmark: the project's methods against llama.cpp's own types, in one run.

On one model: an importance matrix from the calibration set's windows (llama-imatrix), upstream files from
llama-quantize, the project's files from its quantizers (the same calibration windows), then for every file bits
per weight, perplexity and KL divergence against F16 (llama-perplexity) on two evaluation texts of other
domains than each other (a novel and a technical manual), and llama-bench speed with the files alternated round
by round so drift hits all alike. A file whose perplexity ratio to F16 on the second text exceeds OVERFIT_FACTOR
times its ratio on the first is flagged as overfit. Writes bench.json, bench.md and
bench.png, stamped with the upstream version, the patch hash and the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from lowbit_gguf.cache import machine_description
from lowbit_gguf.errors import LowbitError

UPSTREAM_TYPES = ("F16", "Q8_0", "Q4_K_M", "Q4_0", "Q2_K", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")
# types llama-quantize cannot make without an importance matrix; the others get it too when useful
NO_IMATRIX = ("F16", "Q8_0")
# (key suffix, default text name, column label): perplexity and KLD on each
EVAL_TEXTS = (("", "evaluation", "novel"), ("_manual", "evaluation-manual", "manual"))
OVERFIT_FACTOR = 1.25
ROW_KEYS = ("name", "family", "bpw_linear", "bpw_file", "ppl", "kld", "ppl_manual", "kld_manual", "overfit",
            "tg128", "pp512", "quant_seconds")


@dataclass(frozen=True)
class SuiteSettings:
    upstream_types: tuple[str, ...] = UPSTREAM_TYPES
    methods: tuple[tuple[str, str], ...] | None = None  # (method, config); None: every registered bench config
    # GGUF files quantized beforehand (`lowbit-gguf quantize`, hours for some methods), measured alongside:
    # (name, path)
    added_files: tuple[tuple[str, str], ...] = ()
    calib_samples: int = 32  # calibration windows, for llama-imatrix and the project's quantizers alike
    calib_seq_len: int = 512
    calib_heldout: int = 8  # held-out windows the quantizers stop early on
    ppl_ctx: int = 512
    ppl_chunks: int = 32
    threads: int = 2
    n_prompt: int = 512
    n_gen: int = 128
    bench_rounds: int = 3

    @classmethod
    def demo(cls) -> SuiteSettings:
        """`make demo`'s table: F16 and IQ2_XXS beside the files added, on fewer chunks and tokens (minutes)."""
        return cls(upstream_types=("F16", "IQ2_XXS"), methods=(), calib_samples=16, calib_seq_len=256, ppl_chunks=8,
                   n_prompt=128, n_gen=32, bench_rounds=2)

    @classmethod
    def quick(cls) -> SuiteSettings:
        """A smoke run: a few files, tiny budgets; exercises every step of the harness."""
        return cls(upstream_types=("F16", "Q8_0", "IQ2_XXS"), methods=(("rtn", "w4g32"),), calib_samples=4,
                   calib_seq_len=128, ppl_ctx=128, ppl_chunks=2, n_prompt=32, n_gen=8, bench_rounds=1)


@dataclass
class BenchFile:
    name: str
    family: str
    path: Path
    quant_seconds: float | None  # None: not known (a file quantized elsewhere without the record)
    bpw_linear: float | None = None  # overrides the file's own count (methods without a GGUF type yet)
    row: dict = field(default_factory=dict)


def run_tool(cmd: list, log: Path) -> str:
    """Run a llama.cpp tool, keep its output in log, fail with the output's tail."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    log.write_text(f"$ {' '.join(str(c) for c in cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise LowbitError(f"{Path(str(cmd[0])).name} failed (exit {proc.returncode}); log: {log}\n"
                          f"{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def parse_float(pattern: str, text: str, what: str) -> float:
    m = re.search(pattern, text)
    if not m:
        raise LowbitError(f"could not find {what} in the tool's output")
    return float(m.group(1))


def run_suite(out_dir: Path, settings: SuiteSettings = SuiteSettings(), model_dir: Path | None = None,
              progress: bool = True) -> list[dict]:
    from lowbit_gguf.assets import default_model_dir
    from lowbit_gguf.calibration import load_text
    from lowbit_gguf.gguf.convert import convert
    from lowbit_gguf.runtime.build import build_runtime

    build = build_runtime(progress=progress)
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    out_dir = Path(out_dir)
    work = out_dir / "work"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    calib_txt = work / "calibration.txt"
    calib_txt.write_text(calibration_text(model_dir, settings))
    eval_txts = {}
    for _, name, _ in EVAL_TEXTS:
        eval_txts[name] = work / f"{name}.txt"
        eval_txts[name].write_text(load_text(name))
    methods = settings.methods if settings.methods is not None else registered_bench_configs()
    n_files = len(settings.upstream_types) + len(methods) + len(settings.added_files)
    steps = (2 + len(settings.upstream_types) + len(methods)  # convert, imatrix, quantizations
             + n_files * len(EVAL_TEXTS)  # perplexity
             + settings.bench_rounds)
    bar = tqdm(total=steps, desc="bench suite", unit="step", disable=not progress)

    def step(desc: str):
        bar.set_postfix_str(desc)
        bar.update(1)

    started = time.time()
    f16 = convert(model_dir, work / "F16.gguf", "f16", quiet=True)
    files = [BenchFile("F16", "llama.cpp", f16, time.time() - started)]
    step("F16 converted")

    started = time.time()
    imatrix = work / "imatrix.gguf"
    run_tool([build.tool("llama-imatrix"), "-m", f16, "-f", calib_txt, "-o", imatrix, "-c", settings.calib_seq_len,
              "--chunks", settings.calib_samples, "-t", settings.threads], logs / "imatrix.log")
    imatrix_seconds = time.time() - started
    step("importance matrix")

    for qtype in settings.upstream_types:
        if qtype == "F16":
            continue
        started = time.time()
        out = work / f"{qtype}.gguf"
        extra = [] if qtype in NO_IMATRIX else ["--imatrix", imatrix]
        run_tool([build.tool("llama-quantize"), *extra, f16, out, qtype, settings.threads],
                 logs / f"quantize-{qtype}.log")
        seconds = time.time() - started + (0 if qtype in NO_IMATRIX else imatrix_seconds)
        files.append(BenchFile(qtype, "llama.cpp", out, seconds))
        step(qtype)

    for method, config in methods:
        files.append(_quantize_with_method(model_dir, method, config, work, settings))
        step(f"{method} {config}")
    files += [_added_file(name, Path(path)) for name, path in settings.added_files]

    for suffix, name, _ in EVAL_TEXTS:
        _measure_quality(files, build, eval_txts[name], suffix, work, logs, settings, step)
    _measure_speed(files, build, logs, settings, step)
    bar.close()

    rows = [_row(f) for f in files]
    flag_overfit(rows)
    stamp = {"upstream": build.info["upstream"], "patch_hash": build.info["patch_hash"],
             "machine": machine_description(), "model": model_dir.name, "settings": asdict(settings),
             "date": time.strftime("%Y-%m-%d")}
    write_reports(out_dir, rows, stamp)
    return rows


def calibration_text(model_dir: Path, settings: SuiteSettings) -> str:
    """The training windows the project's quantizers see, as text, for llama-imatrix."""
    from transformers import AutoTokenizer

    from lowbit_gguf.calibration import model_calibration_set

    calibration = model_calibration_set(model_dir, n_samples=settings.calib_samples, seq_len=settings.calib_seq_len,
                                        n_heldout=settings.calib_heldout)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return "\n\n".join(tokenizer.decode(row.tolist()) for row in calibration.train) + "\n"


def registered_bench_configs() -> list[tuple[str, str]]:
    from lowbit_gguf.methods import METHODS, available_methods

    return [(name, cfg) for name in available_methods() for cfg in METHODS[name].bench_configs]


def _quantize_with_method(model_dir: Path, method: str, config: str, work: Path,
                          settings: SuiteSettings) -> BenchFile:
    from lowbit_gguf.export import quantize_checkpoint

    out = work / f"{method}-{config}.gguf"
    report = quantize_checkpoint(model_dir, method, config, out, n_samples=settings.calib_samples,
                                 seq_len=settings.calib_seq_len, n_heldout=settings.calib_heldout, progress=False)
    return BenchFile(f"{method} {config}", method, out, report.seconds,
                     bpw_linear=report.result.bits_per_weight())


def _added_file(name: str, path: Path) -> BenchFile:
    """A file quantized beforehand; its method and quantization time come from its lowbit_gguf.* metadata."""
    from lowbit_gguf.gguf.inspect import open_gguf

    reader = open_gguf(path)
    method = reader.get_field("lowbit_gguf.method")
    seconds = reader.get_field("lowbit_gguf.quantize_seconds")
    return BenchFile(name, method.contents() if method else "file", path,
                     float(seconds.contents()) if seconds else None)


def _measure_quality(files, build, eval_txt, suffix, work, logs, settings, step) -> None:
    """Perplexity of every file and its KL divergence from F16, on the same tokens of one evaluation text;
    stored in each row under ppl{suffix} and kld{suffix}."""
    base_logits = work / "f16-logits.kld"
    common = ["-f", eval_txt, "-c", settings.ppl_ctx, "--chunks", settings.ppl_chunks, "-t", settings.threads]
    out = run_tool([build.tool("llama-perplexity"), "-m", files[0].path, *common,
                    "--kl-divergence-base", base_logits], logs / f"ppl{suffix}-F16.log")
    files[0].row.update({f"ppl{suffix}": parse_float(r"Final estimate: PPL = ([\d.]+)", out, "the F16 perplexity"),
                         f"kld{suffix}": 0.0})
    step(f"perplexity F16 {eval_txt.stem}")
    for f in files[1:]:
        out = run_tool([build.tool("llama-perplexity"), "-m", f.path, *common, "--kl-divergence-base", base_logits,
                        "--kl-divergence"], logs / f"ppl{suffix}-{f.path.stem}.log")
        f.row.update({f"ppl{suffix}": parse_float(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", out, f"the perplexity of {f.name}"),
                      f"kld{suffix}": parse_float(r"Mean\s+KLD:\s*([-\d.]+)", out, f"the KL divergence of {f.name}")})
        step(f"perplexity {f.name} {eval_txt.stem}")
    base_logits.unlink(missing_ok=True)  # n_tokens x n_vocab logits: large, and only needed above


def flag_overfit(rows: list[dict]) -> None:
    """Mark each row whose perplexity ratio to F16 on the second text exceeds OVERFIT_FACTOR x its ratio on the
    first (rows[0] is F16)."""
    f16 = rows[0]
    for r in rows:
        first, second = r["ppl"] / f16["ppl"], r["ppl_manual"] / f16["ppl_manual"]
        r["overfit"] = bool(second > OVERFIT_FACTOR * first)


def llama_bench(tool: Path, models: list[Path], threads: int, n_prompt: int, n_gen: int, repetitions: int,
                log: Path) -> list[dict]:
    """llama-bench's JSON rows (one per model and test) for the given models, in one run."""
    cmd = [tool, "-t", threads, "-p", n_prompt, "-n", n_gen, "-r", repetitions, "-o", "json"]
    for model in models:
        cmd += ["-m", model]
    out = run_tool(cmd, log)
    return json.loads(out[: out.rindex("]") + 1])


def _measure_speed(files, build, logs, settings, step) -> None:
    """llama-bench prompt and generation speed, one repetition per file per round, rounds alternating."""
    samples: dict[str, dict[str, list[float]]] = {f.name: {"pp": [], "tg": []} for f in files}
    for r in range(settings.bench_rounds):
        for f in files:
            rows = llama_bench(build.tool("llama-bench"), [f.path], settings.threads, settings.n_prompt,
                               settings.n_gen, 1, logs / f"bench-{f.path.stem}-{r}.log")
            for entry in rows:
                samples[f.name]["pp" if entry["n_prompt"] else "tg"].append(entry["avg_ts"])
        step(f"speed round {r + 1}")
    for f in files:
        f.row.update(pp512=_mean(samples[f.name]["pp"]), tg128=_mean(samples[f.name]["tg"]))


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2)


def _row(f: BenchFile) -> dict:
    from lowbit_gguf.gguf.inspect import read_summary

    summary = read_summary(f.path)
    row = {
        "name": f.name,
        "family": f.family,
        "bpw_linear": round(f.bpw_linear if f.bpw_linear is not None else summary.bits_per_weight(linear_only=True), 4),
        "bpw_file": round(summary.bits_per_weight(), 4),
        "ppl": round(f.row["ppl"], 4),
        "kld": round(f.row["kld"], 6),
        "ppl_manual": round(f.row["ppl_manual"], 4),
        "kld_manual": round(f.row["kld_manual"], 6),
        "overfit": False,
        "tg128": f.row["tg128"],
        "pp512": f.row["pp512"],
        "quant_seconds": None if f.quant_seconds is None else round(f.quant_seconds, 1),
    }
    assert tuple(row) == ROW_KEYS
    return row


def write_reports(out_dir: Path, rows: list[dict], stamp: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps({"stamp": stamp, "rows": rows}, indent=2) + "\n")
    (out_dir / "bench.md").write_text(format_markdown(rows, stamp))
    plot(rows, stamp, out_dir / "bench.png")


def format_markdown(rows: list[dict], stamp: dict) -> str:
    s = stamp["settings"]
    f16 = rows[0]
    lines = [
        f"# {stamp['model']}: lowbit-gguf methods beside llama.cpp's types",
        "",
        f"{stamp['upstream']}, patches {stamp['patch_hash']}; {stamp['machine']}; {stamp['date']}.",
        f"Perplexity (and its ratio to F16) and KLD (vs F16): llama-perplexity, context {s['ppl_ctx']}, "
        f"{s['ppl_chunks']} chunks of each evaluation text: a novel (Pride and Prejudice) and a technical manual "
        f"(the Debian Reference). Speed: llama-bench, {s['threads']} threads, pp{s['n_prompt']} / tg{s['n_gen']}, "
        f"{s['bench_rounds']} alternating rounds. Calibration (imatrix and methods): {s['calib_samples']} x "
        f"{s['calib_seq_len']} tokens drawn in turn from the four calibration domains (novels, software "
        f"documentation, dictionary prose, dialogue), {s.get('calib_heldout', 0)} more held out for early stopping.",
        "",
        "| name | family | bpw (linear) | bpw (file) | PPL novel (x F16) | KLD novel | PPL manual (x F16) | "
        "KLD manual | tg t/s | pp t/s | quantize s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        seconds = "-" if r["quant_seconds"] is None else f"{r['quant_seconds']:.0f}"
        flag = " **overfit**" if r["overfit"] else ""
        lines.append(
            f"| {r['name']}{flag} | {r['family']} | {r['bpw_linear']:.3f} | {r['bpw_file']:.3f} | "
            f"{r['ppl']:.3f} ({r['ppl'] / f16['ppl']:.2f}) | {r['kld']:.4f} | "
            f"{r['ppl_manual']:.3f} ({r['ppl_manual'] / f16['ppl_manual']:.2f}) | {r['kld_manual']:.4f} | "
            f"{r['tg128']:.1f} | {r['pp512']:.1f} | {seconds} |")
    lines += [
        "",
        "bpw (linear) counts the transformer blocks' matmul weights; bpw (file) every tensor. Methods without a",
        "GGUF tensor type yet (rtn) are written as their F16 reference decode: their bpw (linear) is the method's",
        "own storage (codes + scales), their file size and speed are F16's. The reference model is SmolLM2 as",
        "shipped in Q4_1, dequantized: Q4_1's grid is exactly rtn w4g32's, so that row reproduces F16 losslessly.",
        "Files added with --add-file were quantized beforehand with `lowbit-gguf quantize`; their quantize time",
        f"is the one recorded in the file. **overfit**: the ratio to F16 on the manual is more than {OVERFIT_FACTOR}",
        "times the ratio on the novel.",
        "",
    ]
    return "\n".join(lines)


def plot(rows: list[dict], stamp: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(EVAL_TEXTS), figsize=(13, 5))
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for ax, (suffix, _, label) in zip(axes, EVAL_TEXTS):
        key = f"ppl{suffix}"
        for family in dict.fromkeys(r["family"] for r in rows):
            pts = sorted((r["bpw_linear"], r[key], r["name"]) for r in rows if r["family"] == family)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=family)
            for x, y, name in pts:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ppls = [r[key] for r in rows]
        for axis, narrow in ((ax.xaxis, True), (ax.yaxis, max(ppls) < 10 * min(ppls))):
            axis.set_major_formatter(plain)
            # minor ticks get labels only while the axis spans less than a decade, else they overlap
            axis.set_minor_formatter(plain if narrow else matplotlib.ticker.NullFormatter())
        ax.set_xlabel("bits per weight (block linear weights)")
        ax.set_ylabel(f"perplexity (ctx {stamp['settings']['ppl_ctx']}, {label})")
        ax.set_title(f"{stamp['model']} ({stamp['upstream'].split(' ')[0]}), {label}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def clean_work(out_dir: Path) -> None:
    shutil.rmtree(Path(out_dir) / "work", ignore_errors=True)
