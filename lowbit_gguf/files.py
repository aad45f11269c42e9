"""Outputs written so that a failure never leaves a torn file that looks finished, and a full disk says so.

A GGUF, a checkpoint file or a converted model is written under a partial name beside its final one and moved into
place when complete. On an error the partial file is removed (it can be gigabytes) and a full disk becomes a
LowbitError that says what to do: what was finished before (a quantization's checkpoint, an earlier output) is
kept, so the same command continues once there is room.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lowbit_gguf.errors import LowbitError


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def partial_output(out: Path, what: str) -> Iterator[Path]:
    """The path to write `what` to: out's name + ".partial", moved to out when the block ends without an error."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    try:
        yield partial
    except BaseException as exc:
        remove(partial)
        if is_disk_full(exc):
            raise LowbitError(f"no space left on the disk holding {out.parent} while writing {what}: free some space "
                              "and run the same command again (finished work is kept; an interrupted quantization "
                              "resumes from its checkpoint)") from exc
        raise
    partial.replace(out)


def save_torch(obj, path: Path, what: str) -> None:
    """torch.save that leaves either the old file or the whole new one, never a torn file. Through a Python file
    object, so a full disk raises OSError(ENOSPC) rather than torch's opaque writer error."""
    import torch

    with partial_output(path, what) as partial, open(partial, "wb") as f:
        torch.save(obj, f)
