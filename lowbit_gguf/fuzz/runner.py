"""Running a case: loaded and run through the runtime in a forked child (signals, hangs and sanitizer reports are
failures), read by the Python readers; the report and tools/fuzz-gguf's command line."""

from __future__ import annotations

import json
import os
import random
import resource
import select
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lowbit_gguf.errors import BadGGUF, LowbitError
from lowbit_gguf.fuzz.image import PROMPT_TOKENS, GGUFImage, seed_image
from lowbit_gguf.fuzz.mutations import MUTATIONS, crafted_cases


@dataclass
class Outcome:
    kind: str  # ran, refused, crash, hang, error, sanitizer
    detail: str = ""
    python: str = "ok"  # the Python readers: ok, refused, or the exception they raised

    @property
    def failed(self) -> bool:
        return self.kind in ("crash", "hang", "error", "sanitizer") or self.python not in ("ok", "refused")


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: UndefinedBehavior")


def _child(path: Path, adapter: Path | None) -> tuple[str, str]:
    from lowbit_gguf.runtime.library import Model

    try:
        model = Model(path, n_ctx=64, n_threads=1)
    except BadGGUF as exc:
        return "refused", str(exc)
    with model:
        try:
            if adapter is not None:
                model.load_lora(adapter)
            model.eval([1, 2])
            model.eval(list(range(1, PROMPT_TOKENS + 1)), pos0=2)
        except LowbitError as exc:
            return "refused", str(exc)
    return "ran", ""


def run_case(path: Path, adapter: Path | None = None, timeout: float = 30.0, sanitize: bool = False) -> Outcome:
    """Read one file with the Python readers, then load and run it through the runtime, in a forked child (the
    runtime already loaded in this process)."""
    log = path.with_suffix(".stderr")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its stderr (llama.cpp's and a sanitizer's reports) to the log
        try:
            os.close(read_end)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ["GGML_NO_BACKTRACE"] = "1"  # an abort's gdb backtrace takes seconds per case
            if not sanitize:  # a sanitizer reserves terabytes of address space; elsewhere cap what a case takes
                resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
            python = check_python_readers(path)
            try:
                kind, detail = _child(path, adapter)
            except BaseException as exc:  # noqa: BLE001 (reported to the parent, which classifies it)
                kind, detail = "error", f"{type(exc).__name__}: {exc}"
            os.write(write_end, json.dumps([kind, detail[:2000], python]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], timeout)
    message = os.read(read_end, 65536) if ready else b""
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    report = log.read_text(errors="replace") if log.exists() else ""
    marks = [line for line in report.splitlines() if any(m in line for m in SANITIZER_MARKS)]
    if not ready:
        return Outcome("hang", f"no answer in {timeout:.0f} s")
    if os.WIFSIGNALED(status):
        tail = " | ".join(report.strip().splitlines()[-3:])
        return Outcome("crash", f"{signal.Signals(os.WTERMSIG(status)).name}: {tail}")
    if marks:
        return Outcome("sanitizer", marks[0])
    kind, detail, python = json.loads(message) if message else ("crash", "no answer", "ok")
    return Outcome(kind, detail, python)


def check_python_readers(path: Path) -> str:
    """What `lowbit-gguf inspect` and the writer's reader make of a file: ok, refused, or the exception."""
    from lowbit_gguf.gguf.inspect import read_lowbit_weights, read_summary

    try:
        read_summary(path)
        read_lowbit_weights(path)
    except BadGGUF:
        return "refused"
    except Exception as exc:  # noqa: BLE001 (the failure this check exists to find)
        return f"{type(exc).__name__}: {exc}"[:300]
    return "ok"


@dataclass
class Report:
    outcomes: Counter = field(default_factory=Counter)  # (class, kind) -> count
    failures: list[tuple[str, str, Outcome]] = field(default_factory=list)
    n_cases: int = 0
    seconds: float = 0.0

    def add(self, kind: str, what: str, outcome: Outcome) -> None:
        self.n_cases += 1
        self.outcomes[(kind, outcome.kind)] += 1
        if outcome.python != "ok":
            self.outcomes[(kind, f"python {outcome.python if outcome.python == 'refused' else 'error'}")] += 1
        if outcome.failed:
            self.failures.append((kind, what, outcome))

    def table(self) -> str:
        kinds = sorted({k for _, k in self.outcomes})
        classes = list(dict.fromkeys(c for c, _ in self.outcomes))
        lines = ["| class | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(str(self.outcomes.get((c, k), 0)) for k in kinds) + " |")
        return "\n".join(lines)


def fuzz(n_cases: int | None = None, minutes: float | None = None, seed: int = 0, sanitize: bool = False,
         crafted: bool = True, timeout: float = 30.0, workdir: Path | None = None,
         progress: Callable[[str], None] | None = None) -> Report:
    """Run the crafted cases, then mutated cases (round robin over the classes and the seed types) until n_cases
    of them have run or minutes have passed. Deterministic for a seed (the order of the cases, not the timing)."""
    from lowbit_gguf.gguf.types import LOWBIT_TYPES
    from lowbit_gguf.runtime.build import BuildOptions
    from lowbit_gguf.runtime.library import load_library

    load_library(BuildOptions(sanitize="address") if sanitize else BuildOptions())  # before forking
    rng = random.Random(seed)
    seeds = {t.name: seed_image(t, seed) for t in LOWBIT_TYPES}
    report = Report()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)

        def run(kind: str, what: str, model: GGUFImage | bytes, adapter: GGUFImage | None = None) -> None:
            path = folder / f"case{report.n_cases}.gguf"
            path.write_bytes(model if isinstance(model, bytes) else model.to_bytes())
            adapter_path = None
            if adapter is not None:
                adapter_path = folder / f"case{report.n_cases}-adapter.gguf"
                adapter_path.write_bytes(adapter.to_bytes())
            outcome = run_case(path, adapter_path, timeout, sanitize)
            report.add(kind, what, outcome)
            if progress is not None and outcome.failed:
                progress(f"FAILED {kind}: {what}: {outcome.kind} {outcome.detail} (python: {outcome.python})")
            for p in folder.iterdir():
                p.unlink()

        for name, image in seeds.items():  # every seed runs, or the cases built on it test nothing
            run("seed", name, image)
        if crafted:
            for what, model, adapter in crafted_cases(seeds):
                run("crafted", what, model, adapter)
        classes = list(MUTATIONS.items())
        names = list(seeds)
        i = 0
        while (n_cases is None or i < n_cases) and (minutes is None or time.monotonic() - start < 60 * minutes):
            kind, mutate = classes[i % len(classes)]
            base = seeds[names[(i // len(classes)) % len(names)]]
            what, model = mutate(base, rng)
            run(kind, f"{names[(i // len(classes)) % len(names)]}: {what}", model)
            i += 1
            if progress is not None and i % 100 == 0:
                progress(f"{i} cases, {len(report.failures)} failures, {time.monotonic() - start:.0f} s")
    report.seconds = time.monotonic() - start
    return report


def _sanitizer_environment() -> dict[str, str] | None:
    """The environment that loads the sanitized runtime into a Python that is not itself built with ASan (the ASan
    runtime preloaded), or None when this process already has it."""
    import subprocess

    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return None
    # libstdc++ too, so ASan's interceptor of C++ throws finds the real one (Python does not link libstdc++)
    libs = [subprocess.run(["cc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
            for name in ("libasan.so", "libstdc++.so.6")]
    if not all(os.path.isabs(lib) for lib in libs):
        raise LowbitError("the sanitized runs need the compiler's libasan.so and libstdc++.so.6 (gcc)")
    return {**os.environ, "LD_PRELOAD": " ".join(libs),
            # Python's own allocations are not leaks to report; a case may ask for absurd sizes, which must fail
            "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1"}


def main(argv: list[str] | None = None, doc: str | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=None, help="mutated cases to run (default: until --minutes)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default: 5 without --cases)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds a case may take before it counts as a hang")
    parser.add_argument("--sanitize", action="store_true",
                        help="run through the ASan/UBSan build (`lowbit-gguf runtime build --sanitize address`)")
    args = parser.parse_args(argv)
    if args.sanitize:
        env = _sanitizer_environment()
        if env is not None:  # again, with the sanitizer runtime loaded first
            argv = sys.argv[1:] if argv is None else argv
            os.execve(sys.executable, [sys.executable, "-m", "lowbit_gguf.fuzz", *argv], env)
    minutes = args.minutes if args.minutes is not None or args.cases is not None else 5.0
    report = fuzz(args.cases, minutes, args.seed, args.sanitize, timeout=args.timeout * (4 if args.sanitize else 1),
                  progress=lambda line: print(line, flush=True))
    print(report.table())
    build = "sanitized build" if args.sanitize else "default build"
    print(f"{report.n_cases} cases in {report.seconds:.0f} s ({build}, "
          f"seed {args.seed}): {len(report.failures)} failures")
    for kind, what, outcome in report.failures:
        print(f"  {kind}: {what}: {outcome.kind} {outcome.detail} (python readers: {outcome.python})")
    return 1 if report.failures else 0
