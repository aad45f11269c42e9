"""Build the patched llama.cpp runtime: pinned upstream source + ggml_patches/ -> cached libraries and tools.

The build lives under <cache>/runtime/<key>/ where the key hashes the upstream pin, every patch and the
CMake flags, so a changed patch gives a fresh build and an unchanged one costs seconds. The C bindings
(cbindings/) are compiled into the build's lib/ under their own hash: changing them recompiles one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lowbit_gguf.cache import PinnedPackage, cache_lock, cache_root, compile_shared_library
from lowbit_gguf.errors import LowbitError, RuntimeNotBuilt

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PATCH_DIR = PROJECT_ROOT / "ggml_patches"
BINDINGS_DIR = PROJECT_ROOT / "cbindings"

# llama-cpp-python's sdist vendors a complete llama.cpp (commit 0c1e57098, 2026-10-01) under vendor/llama.cpp.
UPSTREAM = PinnedPackage(
    source="pypi-sdist",
    name="llama-cpp-python",
    version="0.3.36",
    filename="llama_cpp_python-0.3.36.tar.gz",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
)
UPSTREAM_SUBDIR = "llama_cpp_python-0.3.36/vendor/llama.cpp"
UPSTREAM_COMMIT = "0c1e57098"

TOOLS = ("llama-cli", "llama-completion", "llama-perplexity", "llama-bench", "llama-quantize", "llama-imatrix")
SHIM_STEM = "liblowbit_api"

COMMON_CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_SERVER=ON",  # llama-cli is built as part of the server tools
)


@dataclass(frozen=True)
class BuildOptions:
    cuda: bool = False
    metal: bool = False
    cuda_arch: str = "90"  # Hopper (H100/H200); override with --cuda-arch
    # "address": AddressSanitizer and UndefinedBehaviorSanitizer over ggml and llama (the fuzzer's checked build)
    sanitize: str | None = None

    def __post_init__(self):
        if self.sanitize not in (None, "address"):
            raise LowbitError(f"unknown sanitizer {self.sanitize!r}: the runtime builds with 'address' (ASan + UBSan)")

    @property
    def tag(self) -> str:
        parts = ["cpu"] + (["cuda" + self.cuda_arch] if self.cuda else []) + (["metal"] if self.metal else [])
        return "-".join(parts + (["asan"] if self.sanitize else []))

    def cmake_flags(self) -> list[str]:
        flags = list(COMMON_CMAKE_FLAGS)
        if self.cuda:
            # No libcuda on build machines: virtual memory management needs the driver API.
            flags += ["-DGGML_CUDA=ON", "-DGGML_CUDA_NO_VMM=ON", f"-DCMAKE_CUDA_ARCHITECTURES={self.cuda_arch}"]
        if self.metal:
            flags += ["-DGGML_METAL=ON"]
        if self.sanitize:
            flags = [f for f in flags if not f.startswith("-DCMAKE_BUILD_TYPE=")] + ["-DCMAKE_BUILD_TYPE=RelWithDebInfo"]
            flags += [f"-D{lib}_SANITIZE_{kind}=ON" for lib in ("GGML", "LLAMA") for kind in ("ADDRESS", "UNDEFINED")]
        return flags

    @property
    def compile_flags(self) -> list[str]:
        """What the C bindings compile with to match."""
        return ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if self.sanitize else []


def find_pip_cublas() -> tuple[Path, Path] | None:
    """(include, lib) of cuBLAS from the PyPI wheel nvidia-cublas, when the CUDA toolkit lacks it.

    The wheel ships only versioned libraries (libcublas.so.13), which CMake's find_library does not
    match, so the build names them directly and puts the headers on CPATH."""
    toolkit = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    if (toolkit / "include" / "cublas_v2.h").exists():
        return None
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations if spec else []):
        root = Path(base) / "cu13"
        if (root / "include" / "cublas_v2.h").exists():
            return root / "include", root / "lib"
    raise LowbitError("--cuda needs cuBLAS: the CUDA toolkit has none; run `pip install nvidia-cublas`")


def read_series() -> list[Path]:
    """The ordered patch list; every *.patch in ggml_patches/ must be listed exactly once."""
    series = PATCH_DIR / "series"
    names = [ln.strip() for ln in series.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    on_disk = {p.name for p in PATCH_DIR.glob("*.patch")}
    duplicated = {n for n in names if names.count(n) > 1}
    missing = [n for n in names if n not in on_disk]
    unlisted = sorted(on_disk - set(names))
    if duplicated or missing or unlisted:
        raise LowbitError(
            f"ggml_patches/series is out of step with the folder: duplicated {sorted(duplicated)}, "
            f"listed but missing {missing}, present but unlisted {unlisted}"
        )
    return [PATCH_DIR / n for n in names]


def own_source_files() -> list[Path]:
    """The project's own C/C++/CUDA/Metal files (ggml_patches/src/), laid out as in the upstream tree."""
    return sorted(p for p in (PATCH_DIR / "src").rglob("*") if p.is_file())


def _bindings_files() -> list[Path]:
    return sorted(p for p in BINDINGS_DIR.iterdir() if p.suffix in (".c", ".h"))


def _digest(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part + b"\0")
    return digest.hexdigest()[:16]


def patch_hash(options: BuildOptions | None = None) -> str:
    """Hash of what the llama.cpp build depends on: the upstream pin, the series, every patch, the project's
    own sources and, given options, the CMake flags."""
    parts = [f"{UPSTREAM.name}=={UPSTREAM.version}:{UPSTREAM.sha256}".encode()]
    for path in [PATCH_DIR / "series", *read_series(), *own_source_files()]:
        parts.append(str(path.relative_to(PATCH_DIR)).encode() + b"\0" + path.read_bytes())
    if options is not None:
        parts.append(" ".join(options.cmake_flags()).encode())
    return _digest(parts)


def bindings_hash() -> str:
    """Hash of cbindings/: the shim is rebuilt when it changes, llama.cpp is not."""
    return _digest([p.name.encode() + b"\0" + p.read_bytes() for p in _bindings_files()])


@dataclass
class RuntimeBuild:
    """A finished build: where its libraries and tools are."""

    root: Path
    options: BuildOptions
    info: dict = field(default_factory=dict)

    @property
    def bin_dir(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def shim(self) -> Path:
        """The C bindings compiled for the current cbindings/ sources."""
        return self.root / "lib" / f"{SHIM_STEM}-{bindings_hash()}.so"

    @property
    def source_dir(self) -> Path:
        return self.root / "src"

    def tool(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.exists():
            raise RuntimeNotBuilt(f"{name} is missing from the runtime build at {self.root}")
        return path


def build_dir_for(options: BuildOptions) -> Path:
    return cache_root() / "runtime" / f"{UPSTREAM.version}-{options.tag}-{patch_hash(options)}"


def find_build(options: BuildOptions = BuildOptions()) -> RuntimeBuild:
    """The finished build for the current patches and bindings, or a RuntimeNotBuilt error that says
    what to run."""
    root = build_dir_for(options)
    stamp = root / "build.json"
    flag = (" --cuda" if options.cuda else "") + (f" --sanitize {options.sanitize}" if options.sanitize else "")
    if not stamp.exists():
        raise RuntimeNotBuilt(
            f"no patched runtime is built for the current ggml_patches/ ({root.name}); "
            f"run `lowbit-gguf runtime build{flag}`"
        )
    build = RuntimeBuild(root, options, json.loads(stamp.read_text()))
    if not build.shim.exists():
        raise RuntimeNotBuilt(f"the C bindings changed since the last build; run `lowbit-gguf runtime build{flag}` "
                              "(seconds: llama.cpp itself is not rebuilt)")
    return build


def options_of_tag(tag: str) -> BuildOptions | None:
    """The options a build folder's tag names ("cpu", "cpu-cuda90", "cpu-metal", ...), or None for a tag this
    version does not write."""
    parts = tag.split("-")
    if parts[0] != "cpu":
        return None
    cuda_arch = [p[4:] for p in parts[1:] if re.fullmatch(r"cuda[0-9a-z;]+", p)]
    options = BuildOptions(cuda=bool(cuda_arch), metal="metal" in parts[1:], sanitize="address" if "asan" in parts else None,
                           **({"cuda_arch": cuda_arch[0]} if cuda_arch else {}))
    return options if options.tag == tag else None


def arm64_build_dir() -> Path:
    """Where tools/arm64-check keeps its aarch64 cross-build of the current patches."""
    return cache_root() / "runtime-arm64" / patch_hash()


def stale_builds() -> list[Path]:
    """What `runtime prune` removes: build folders whose key the current ggml_patches/ no longer produce for
    their options (older patches, another checkout's), tools/arm64-check's builds of older patches, and C bindings
    compiled from older cbindings/ sources. Folders it does not recognise are left alone."""
    folder = cache_root() / "runtime"
    arm64 = arm64_build_dir()
    stale = sorted(p for p in arm64.parent.glob("*") if p.is_dir() and re.fullmatch("[0-9a-f]{16}", p.name)
                   and p != arm64)
    for root in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = re.fullmatch(r"[^-]+-(?P<tag>.+)-[0-9a-f]{16}", root.name)
        if not match or not root.is_dir():
            continue
        options = options_of_tag(match["tag"])
        if options is None or root != build_dir_for(options):
            stale.append(root)
        else:
            current = RuntimeBuild(root, options).shim
            stale += [p for p in sorted((root / "lib").glob(f"{SHIM_STEM}-*.so")) if p != current]
    return stale


def build_runtime(options: BuildOptions = BuildOptions(), jobs: int | None = None,
                  progress: bool = True) -> RuntimeBuild:
    """Fetch, patch and build; returns at once when a finished build for these inputs exists."""
    root = build_dir_for(options)
    if not (root / "build.json").exists():
        # one build per key at a time: a second run waits, then finds the build finished
        with cache_lock(f"runtime-{root.name}", f"building the runtime {root.name}"):
            if not (root / "build.json").exists():
                _build(root, options, jobs, progress)
    build = RuntimeBuild(root, options, json.loads((root / "build.json").read_text()))
    if not build.shim.exists():
        _compile_shim(build)
    return build


def _build(root: Path, options: BuildOptions, jobs: int | None, progress: bool) -> None:
    started = time.time()
    source = root / "src"
    if source.exists():
        shutil.rmtree(source)  # a half-finished earlier attempt: start from pristine upstream
    root.mkdir(parents=True, exist_ok=True)
    extract_upstream(source)
    apply_series(source)
    _cmake(root, options, jobs, progress)
    info = {
        "upstream": f"{UPSTREAM.name}=={UPSTREAM.version} (llama.cpp {UPSTREAM_COMMIT})",
        "patch_hash": patch_hash(options),
        "flags": options.tag,
        "seconds": round(time.time() - started, 1),
    }
    _compile_shim(RuntimeBuild(root, options, info))
    (root / "build.json").write_text(json.dumps(info, indent=2))


def extract_upstream(dest: Path) -> None:
    """Unpack vendor/llama.cpp from the verified sdist into dest."""
    sdist = UPSTREAM.fetch()
    prefix = UPSTREAM_SUBDIR + "/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            if member.name.startswith(prefix):
                member.name = member.name[len(prefix):]
                members.append(member)
        tar.extractall(dest, members=members, filter="data")
    # vendor/llama.cpp/.git points at a submodule dir that is not there; ninja loops on it.
    (dest / ".git").unlink(missing_ok=True)


class PatchError(LowbitError):
    pass


def apply_series(source: Path) -> None:
    """Copy the project's own sources into the tree, then apply every patch of the series in order."""
    copy_own_sources(source)
    for patch in read_series():
        apply_patch(source, patch)


def copy_own_sources(source: Path) -> None:
    """ggml_patches/src/<path> -> <tree>/<path>; our files sit beside upstream's and never replace one."""
    src_root = PATCH_DIR / "src"
    for path in own_source_files():
        dest = source / path.relative_to(src_root)
        if dest.exists():
            raise PatchError(f"ggml_patches/src/{path.relative_to(src_root)} would replace an upstream file; "
                             "change upstream files with a patch instead")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)


def apply_patch(source: Path, patch: Path) -> None:
    """Apply one patch, checking it first; one that does not apply cleanly stops with patch's own report
    (file and hunk) and leaves the tree untouched."""
    for dry_run in (True, False):
        cmd = ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-d", str(source),
               "-i", str(patch)] + (["--dry-run"] if dry_run else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PatchError(f"{patch.name} does not apply to llama.cpp {UPSTREAM_COMMIT}:\n"
                             f"{proc.stdout}{proc.stderr}")


def _run_logged(cmd: list[str], log: Path, env: dict, progress: bool, desc: str) -> None:
    """Run a build step, logging everything; ninja's [n/m] lines drive a progress bar."""
    bar = tqdm(total=None, desc=desc, unit="step", disable=not progress, file=sys.stderr)
    with open(log, "a") as logf, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True, env=env) as proc:
        for line in proc.stdout:
            logf.write(line)
            m = re.match(r"\[(\d+)/(\d+)\]", line)
            if m:
                bar.total = int(m.group(2))
                bar.n = int(m.group(1))
                bar.refresh()
        proc.wait()
    bar.close()
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise LowbitError(f"{desc} failed (exit {proc.returncode}); full log: {log}\n{tail}")


def _cmake(root: Path, options: BuildOptions, jobs: int | None, progress: bool) -> None:
    env = dict(os.environ)
    # Paths inside the key dir become relative, so ccache hits across keys for unchanged files.
    env["CCACHE_BASEDIR"] = str(root)
    # and builds with debug info (the sanitized one) too: ccache otherwise keys them by the build folder
    env["CCACHE_NOHASHDIR"] = "1"
    flags = options.cmake_flags()
    # where cuBLAS lives is a fact of this machine, not of the build: it stays out of the cache key
    cublas = find_pip_cublas() if options.cuda else None
    if cublas:
        include, lib = cublas
        env["CPATH"] = f"{include}{os.pathsep}{env['CPATH']}" if env.get("CPATH") else str(include)
        flags += [f"-DCUDA_cublas_LIBRARY={lib / 'libcublas.so.13'}",
                  f"-DCUDA_cublasLt_LIBRARY={lib / 'libcublasLt.so.13'}", f"-DCMAKE_BUILD_RPATH={lib}"]
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    log = root / "build.log"
    log.write_text("")
    configure = subprocess.run(["cmake", "-S", str(root / "src"), "-B", str(root / "build"), *generator,
                                *flags], capture_output=True, text=True, env=env, cwd=root)
    with open(log, "a") as logf:
        logf.write(configure.stdout + configure.stderr)
    if configure.returncode != 0:
        raise LowbitError(f"cmake configure failed; full log: {log}\n{configure.stderr[-3000:]}")
    jobs = jobs or os.cpu_count() or 2
    _run_logged(["cmake", "--build", str(root / "build"), "-j", str(jobs), "--target", "llama", *TOOLS],
                log, env, progress, "building llama.cpp")


def _compile_shim(build: RuntimeBuild) -> None:
    """Compile cbindings/lowbit_api.c against the patched libllama into the build's lib/ folder."""
    src = build.source_dir
    cmd = ["cc", "-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror", *build.options.compile_flags,
           str(BINDINGS_DIR / "lowbit_api.c"), "-I", str(BINDINGS_DIR),
           "-I", str(src / "include"), "-I", str(src / "ggml" / "include"),
           "-L", str(build.bin_dir), "-lllama", "-lggml", "-lggml-cpu", "-lggml-base",
           f"-Wl,-rpath,{build.bin_dir}"]
    compile_shared_library(cmd, build.shim, "compiling the C bindings failed")
