"""Checkpoints that a killed run cannot corrupt: one file (DDP and single-process runs) or a sharded folder (FSDP2).

One file, `checkpoint.pt`: write to a temporary file in the same folder, fsync it, rename it over the target, fsync
the folder. A run killed mid-write leaves the previous file intact (os.replace is atomic on POSIX and Windows); the
folder's fsync makes the rename itself survive a power cut. A temporary file orphaned by a killed write is removed by
the next write of the same target. Loads take tensors and plain Python types only (weights_only=True).

A sharded folder, `checkpoint/` (parallel=fsdp), written by torch.distributed.checkpoint (DCP), every rank its own
shards, in parallel:

    checkpoint/latest               "step-0000390": the one complete checkpoint (replaced atomically, as above)
    checkpoint/step-0000390/        DCP's .metadata and one .distcp file per rank: model (student, teacher, loss
                                    buffers) and optimizer, each tensor under its parameter name
                           meta.json    config, step, history, evals, the number of processes that wrote it
                           rank-<r>.pt  rank r's RNG states and Method.rank_state

A step folder counts only once `latest` names it, so a save killed half-way leaves the previous checkpoint in
charge (its leftovers are removed by the next save). DCP stores each tensor with its place in the whole, so a run
at any other number of processes can load it (resharding), and so can one process without torchrun
(`load_checkpoint` consolidates it for export and the notebooks).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import CheckpointError, first_line

SHARDED_CHECKPOINT = "checkpoint"
FULL_CHECKPOINT = "checkpoint.pt"


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
    """Tensors and plain Python types only (weights_only=True): a planted file cannot run code. A sharded checkpoint
    folder is consolidated on this one process: its meta.json, with the whole model under "method"."""
    if Path(path).is_dir():
        return consolidate_sharded(Path(path))
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is unreadable or not a file this code wrote ({first_line(e)}); delete it "
                              "(or choose another out_dir) to start afresh") from None


@contextmanager
def _single_process_is_intended():
    """DCP warns that it assumes one process when there is no process group: here that is what is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def run_checkpoint(out_dir: str | os.PathLike, stem: str = SHARDED_CHECKPOINT) -> Path:
    """A run folder's checkpoint: the sharded folder `<stem>/` if there is one, else the file `<stem>.pt`
    (stem "checkpoint-before-highres" for the high-resolution phase's starting point)."""
    folder = Path(out_dir) / stem
    return folder if (folder / "latest").exists() else Path(out_dir) / f"{stem}.pt"


def _latest(folder: Path) -> Path:
    try:
        name = (folder / "latest").read_text().strip()
    except FileNotFoundError:
        raise CheckpointError(f"{folder} holds no complete sharded checkpoint (no 'latest' file); delete it (or "
                              "choose another out_dir) to start afresh") from None
    if not (folder / name / "meta.json").exists():
        raise CheckpointError(f"{folder}/latest names {name}, which is incomplete or missing; delete {folder} (or "
                              "choose another out_dir) to start afresh")
    return folder / name


def sharded_meta(folder: Path) -> dict:
    """What a sharded checkpoint says of itself (config, step, history, world, ...), without reading its tensors."""
    return json.loads((_latest(folder) / "meta.json").read_text())


def save_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict,
                 rank_state: dict) -> None:
    """Collective: every rank writes its shards of the model and optimizer (DCP) and its own rank_state; rank 0 writes
    meta.json, then switches `latest` to the new step folder and removes the others."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from . import distributed
    rank, world = distributed.rank(), distributed.world_size()
    name = f"step-{meta['step']:07d}"
    target = folder / name
    if rank == 0:
        shutil.rmtree(target, ignore_errors=True)  # what an earlier, killed save of this step left
        target.mkdir(parents=True)
    distributed.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _single_process_is_intended():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=target, no_dist=world == 1)
    atomic_save(rank_state, target / f"rank-{rank}.pt")
    distributed.barrier()
    if rank == 0:
        atomic_write_text(json.dumps({**meta, "world": world}), target / "meta.json")
        atomic_write_text(name, folder / "latest")  # from here on, this folder is the checkpoint
        for old in folder.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


def load_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict | None]:
    """Load a sharded checkpoint into `model` and `optimizer` as they are now (sharded over any number of processes,
    or whole on one): DCP reads each rank's part of every tensor. Returns (meta, this rank's rank_state, or None when
    the checkpoint was written by another number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from . import distributed
    target = _latest(folder)
    meta = json.loads((target / "meta.json").read_text())
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        with _single_process_is_intended():
            dcp.load(state, checkpoint_id=target, no_dist=distributed.world_size() == 1)
    except Exception as e:
        raise CheckpointError(f"{target} could not be loaded ({first_line(e)}); delete {folder} (or choose another "
                              "out_dir) to start afresh") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    own = None
    if meta["world"] == distributed.world_size():
        own = load_checkpoint(target / f"rank-{distributed.rank()}.pt")
    return meta, own


def consolidate_sharded(folder: Path) -> dict:
    """A sharded checkpoint as one process sees it: meta.json's fields, "method" (the whole model state) and
    "optimizer" (its state keyed by parameter name, as torch.distributed.checkpoint.state_dict has it); DCP's own
    dcp_to_torch_save does the gathering."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    target = _latest(folder)
    with tempfile.TemporaryDirectory() as tmp, _single_process_is_intended():
        dcp_to_torch_save(target, Path(tmp) / "whole.pt")
        whole = load_checkpoint(Path(tmp) / "whole.pt")
    return {**json.loads((target / "meta.json").read_text()), "method": whole["model"], "optimizer": whole["optimizer"]}
