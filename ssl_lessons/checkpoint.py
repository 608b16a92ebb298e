"""Atomic files: write to a temporary file in the same folder, fsync it, rename it over the target, fsync the folder.

A run killed mid-write leaves the previous file intact (os.replace is atomic on POSIX and Windows); the folder's
fsync makes the rename itself survive a power cut. A temporary file orphaned by a killed write is removed by the
next write of the same target. Loads take tensors and plain Python types only (weights_only=True).
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError, first_line


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder for fsync; NTFS journals the rename itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):  # left by a write that was killed
        orphan.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the permissions open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save(obj) to path, atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getbuffer(), path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """Tensors and plain Python types only (weights_only=True): a planted file cannot run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is unreadable or not a file this code wrote ({first_line(e)}); delete it "
                              "(or choose another out_dir) to start afresh") from None
