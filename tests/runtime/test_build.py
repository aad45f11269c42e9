"""The patch series, patch application and the runtime cache key."""

import shutil

import pytest

from lowbit_gguf.cache import PinnedPackage
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.runtime import build


def test_series_lists_every_patch_once():
    patches = build.read_series()
    assert patches and patches[0].name == "0001-lowbit-version.patch"
    assert {p.name for p in patches} == {p.name for p in build.PATCH_DIR.glob("*.patch")}


def test_unlisted_patch_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "patches"
    shutil.copytree(build.PATCH_DIR, folder)
    (folder / "0002-stray.patch").write_text("")
    monkeypatch.setattr(build, "PATCH_DIR", folder)
    with pytest.raises(LowbitError, match=r"present but unlisted \['0002-stray.patch'\]"):
        build.read_series()


def test_patch_hash_changes_with_a_patch(tmp_path, monkeypatch):
    folder = tmp_path / "patches"
    shutil.copytree(build.PATCH_DIR, folder)
    monkeypatch.setattr(build, "PATCH_DIR", folder)
    before = build.patch_hash()
    patch = folder / "0001-lowbit-version.patch"
    patch.write_text(patch.read_text().replace("lowbit-gguf-1", "lowbit-gguf-2"))
    assert build.patch_hash() != before


def test_failing_hunk_is_named_and_tree_left_untouched(tmp_path):
    tree = tmp_path / "src"
    (tree / "include").mkdir(parents=True)
    header = tree / "include" / "llama.h"
    header.write_text("// a header that has drifted from what the patch expects\n")
    with pytest.raises(build.PatchError, match=r"(?s)0001-lowbit-version.patch does not apply.*Hunk #1 FAILED"):
        build.apply_patch(tree, build.PATCH_DIR / "0001-lowbit-version.patch")
    assert header.read_text() == "// a header that has drifted from what the patch expects\n"


def test_missing_build_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_GGUF_CACHE", str(tmp_path))

    def no_cublas():
        raise LowbitError("no cuBLAS on this machine")

    monkeypatch.setattr(build, "find_pip_cublas", no_cublas)  # only the build itself may need it
    with pytest.raises(build.RuntimeNotBuilt, match="run `lowbit-gguf runtime build --cuda`"):
        build.find_build(build.BuildOptions(cuda=True))


def test_pinned_download_with_wrong_hash_is_moved_aside(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_GGUF_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "thing-1.0.tar.gz").write_bytes(b"tampered")
    pinned = PinnedPackage("pypi-sdist", "thing", "1.0", "thing-1.0.tar.gz", "0" * 64)
    with pytest.raises(LowbitError, match="moved aside"):
        pinned.fetch()
    assert (tmp_path / "downloads" / "thing-1.0.tar.gz.bad").exists()


def test_cuda_flags():
    flags = build.BuildOptions(cuda=True, cuda_arch="89").cmake_flags()
    assert "-DGGML_CUDA=ON" in flags and "-DCMAKE_CUDA_ARCHITECTURES=89" in flags
    assert build.BuildOptions(cuda=True).tag == "cpu-cuda90"


def test_bindings_have_their_own_hash_and_flags_enter_the_build_key(tmp_path, monkeypatch):
    folder = tmp_path / "cbindings"
    shutil.copytree(build.BINDINGS_DIR, folder)
    monkeypatch.setattr(build, "BINDINGS_DIR", folder)
    llama_key, shim_key = build.patch_hash(build.BuildOptions()), build.bindings_hash()
    (folder / "lowbit_api.c").write_text((folder / "lowbit_api.c").read_text() + "\n// changed\n")
    assert build.bindings_hash() != shim_key
    assert build.patch_hash(build.BuildOptions()) == llama_key  # llama.cpp is not rebuilt for a shim change
    assert build.patch_hash(build.BuildOptions(cuda=True)) != llama_key


def test_prune_removes_only_builds_the_current_patches_no_longer_use(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lowbit_gguf.cli import cli

    monkeypatch.setenv("LOWBIT_GGUF_CACHE", str(tmp_path))
    current = [build.build_dir_for(options) for options in
               (build.BuildOptions(), build.BuildOptions(cuda=True, cuda_arch="80;90"), build.BuildOptions(metal=True))]
    old = [tmp_path / "runtime" / f"{build.UPSTREAM.version}-cpu-0123456789abcdef",
           tmp_path / "runtime" / f"{build.UPSTREAM.version}-cpu-cuda90-{build.patch_hash()}",  # hash without flags
           tmp_path / "runtime" / f"0.0.1-cpu-{build.patch_hash(build.BuildOptions())}"]  # another upstream pin
    for root in current + old:
        (root / "lib").mkdir(parents=True)
        (root / "build.json").write_text("{}")
    shim = build.RuntimeBuild(current[0], build.BuildOptions()).shim
    shim.write_bytes(b"\0" * 4096)
    old_shim = shim.with_name(f"{build.SHIM_STEM}-0000000000000000.so")
    old_shim.write_bytes(b"\0" * 2048)
    unknown = tmp_path / "runtime" / "my-notes"
    unknown.mkdir()
    arm64 = build.arm64_build_dir()
    old_arm64 = arm64.with_name("0123456789abcdef")
    for root in (arm64, old_arm64):
        (root / "build").mkdir(parents=True)
    current.append(arm64)
    old.append(old_arm64)

    assert build.options_of_tag("cpu-cuda80;90-metal") == build.BuildOptions(cuda=True, metal=True, cuda_arch="80;90")
    assert build.options_of_tag("gpu") is None and build.options_of_tag("cpu-metal-metal") is None
    assert set(build.stale_builds()) == {*old, old_shim}

    listed = CliRunner().invoke(cli, ["runtime", "prune", "--dry-run"])
    assert listed.exit_code == 0 and "would free" in listed.output and all(p.exists() for p in old)
    pruned = CliRunner().invoke(cli, ["runtime", "prune"])
    assert pruned.exit_code == 0, pruned.output
    assert not any(p.exists() for p in [*old, old_shim])
    assert all(p.exists() for p in [*current, shim, unknown])
    assert "nothing to prune" in CliRunner().invoke(cli, ["runtime", "prune"]).output


ARM64_COMPILERS = {".c": ["aarch64-linux-gnu-gcc", "-std=c11"], ".cpp": ["aarch64-linux-gnu-g++", "-std=c++17"]}


@pytest.mark.skipif(not all(shutil.which(cc) for cc, _ in ARM64_COMPILERS.values()),
                    reason="no aarch64 cross compiler (tools/setup-system.sh installs one on Debian)")
@pytest.mark.parametrize("march", ["armv8-a", "armv8.2-a+fp16+dotprod"])
def test_own_cpu_sources_compile_for_arm64(runtime_build, march, tmp_path):
    """ARM machines take the portable paths: the project's CPU and loader sources compile for aarch64 (as the
    patched tree holds them, with llamafile's sgemm as upstream enables it there) without a warning. Unused static
    functions are let through: upstream's own headers define many."""
    import subprocess

    src = runtime_build.source_dir
    includes = [f"-I{src / d}" for d in ("include", "src", "ggml/include", "ggml/src", "ggml/src/ggml-cpu")]
    sources = [p.relative_to(build.PATCH_DIR / "src") for p in build.own_source_files() if p.suffix in ARM64_COMPILERS]
    assert {p.name for p in sources} >= {"lowbit-cpu.c", "ggml-lowbit.c", "lowbit-repack.cpp", "llama-lowbit.cpp"}
    for rel in sources:
        compiler, std = ARM64_COMPILERS[rel.suffix]
        proc = subprocess.run([compiler, std, "-O2", f"-march={march}", "-DGGML_USE_LLAMAFILE", "-Wall", "-Wextra",
                               "-Wno-unused-function", "-Werror", *includes, "-c", str(src / rel),
                               "-o", str(tmp_path / f"{rel.name}.o")], capture_output=True, text=True)
        assert proc.returncode == 0, f"{rel}:\n{proc.stderr[-3000:]}"
