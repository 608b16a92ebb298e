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
(`load_checkpoint` consolidates it for export and the notebooks). DCP's own reader unpickles `.metadata` and the
non-tensor values (the optimizer's param_groups) with plain pickle, which runs any code a planted file names; here both
are read by unpicklers that admit only the types DCP writes (SafeReader, SafeLoadPlanner), as weights_only=True does
for the tensors.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import socket
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl  # POSIX; on Windows no run folder is locked
except ImportError:
    fcntl = None

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from . import distributed
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


RESTART_ADVICE = "delete it (or choose another out_dir) to start afresh"


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False,
                    advice: str = RESTART_ADVICE) -> dict:
    """Tensors and plain Python types only (weights_only=True): a planted file cannot run code. A sharded checkpoint
    folder is consolidated on this one process: its meta.json, with the whole model under "method"."""
    if Path(path).is_dir():
        return consolidate_sharded(Path(path))
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is unreadable or not a file this code wrote ({_load_failure(e)}); "
                              f"{advice}") from None


def _load_failure(error: Exception) -> str:
    """Why torch.load refused a file, in a few words: a weights-only refusal comes with torch's advice to load it
    with weights_only=False, which is exactly what must not be done with a file of unknown origin."""
    if "Weights only load failed" in str(error):
        return "it holds objects other than tensors and plain values, which are not loaded so that no code runs"
    return first_line(error)


@contextmanager
def run_lock(out_dir: str | os.PathLike):
    """Hold the run folder for one run: a second run started in the same out_dir (another terminal, a notebook) is
    refused instead of overwriting this one's checkpoint and results. The lock is the operating system's (flock on
    out_dir/.lock), so a killed run leaves none behind. Also the first check that out_dir can be written at all."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = os.fdopen(os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666), "r+")
    except OSError as e:
        raise CheckpointError(f"cannot write into out_dir {out_dir} ({e.strerror or e}); choose another out_dir") \
            from None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = handle.read().strip() or "another process"
                raise CheckpointError(f"another run is using {out_dir} ({holder}); wait for it to finish, or choose "
                                      "another out_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield


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
    return _read_meta(_latest(folder))


def save_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict,
                 rank_state: dict) -> None:
    """Collective: every rank writes its shards of the model and optimizer (DCP) and its own rank_state; rank 0 writes
    meta.json, then switches `latest` to the new step folder and removes the others."""
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
    target = _latest(folder)
    meta = _read_meta(target)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    _read_sharded(state, target, SafeLoadPlanner(), no_dist=distributed.world_size() == 1)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    own = None
    if meta["world"] == distributed.world_size():
        own_path = target / f"rank-{distributed.rank()}.pt"
        if not own_path.exists():
            raise CheckpointError(f"{own_path} is missing: the checkpoint in {folder} is incomplete; delete {folder} "
                                  "(or choose another out_dir) to start afresh")
        own = load_checkpoint(own_path)
    return meta, own


def consolidate_sharded(folder: Path) -> dict:
    """A sharded checkpoint as one process sees it: meta.json's fields, "method" (the whole model state) and
    "optimizer" (its state keyed by parameter name, as torch.distributed.checkpoint.state_dict has it): every shard
    read into one state dict, as DCP's dcp_to_torch_save does, with the safe reader."""
    target = _latest(folder)
    whole: dict = {}
    _read_sharded(whole, target, SafeEmptyStateDictLoadPlanner(), no_dist=True)
    return {**_read_meta(target), "method": whole["model"], "optimizer": whole["optimizer"]}


class _DCPMetadataUnpickler(pickle.Unpickler):
    """`.metadata` holds DCP's metadata dataclasses, torch.Size, dtypes, layouts and paths; any other global it names
    (a function to call, as a planted file would) is refused."""
    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"),
               ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
               ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
               ("pathlib", "PureWindowsPath")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (module == dcp_metadata.__name__ and name in vars(dcp_metadata)
                                              and isinstance(vars(dcp_metadata)[name], type)):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's .metadata")


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader, with `.metadata` read by _DCPMetadataUnpickler instead of pickle.load."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _DCPMetadataUnpickler(f).load()
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise pickle.UnpicklingError(f"{path} does not hold DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyBytes:
    """DCP's planners read a checkpoint's non-tensor values with torch.load(weights_only=False); here each value is
    first read with weights_only=True (plain types only) and refused if it holds anything else."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)  # raises on a pickled call or class
        value.seek(0)
        super().load_bytes(read_item, value)


class SafeLoadPlanner(_WeightsOnlyBytes, dcp.DefaultLoadPlanner):
    """DCP's default planner (load into the state dict given), reading non-tensor values safely."""


class SafeEmptyStateDictLoadPlanner(_WeightsOnlyBytes, _EmptyStateDictLoadPlanner):
    """DCP's planner for reading a whole checkpoint into an empty state dict (as dcp_to_torch_save), read safely."""


def _read_sharded(state: dict, target: Path, planner, no_dist: bool) -> None:
    """dcp.load through the safe reader; anything wrong with the files (missing, truncated, planted) becomes one
    CheckpointError. DCP reports a failed read as CheckpointException, a BaseException, hence the second class."""
    try:
        with _single_process_is_intended():
            if state:  # into the state dict given (its tensors are filled in place)
                dcp.load(state, storage_reader=SafeReader(target), planner=planner, no_dist=no_dist)
            else:  # everything the checkpoint holds, into the empty dict (dcp.load would keep only known keys)
                _load_state_dict(state, storage_reader=SafeReader(target), planner=planner, no_dist=no_dist)
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"{target} could not be loaded ({_failure(e)}); delete {target.parent} (or choose "
                              "another out_dir) to start afresh") from None


def _failure(error: BaseException) -> str:
    """The first line of the cause: DCP wraps each rank's exception as (exception, traceback)."""
    for wrapped in (getattr(error, "failures", None) or {}).values():
        if isinstance(wrapped, tuple) and wrapped and isinstance(wrapped[0], BaseException):
            return first_line(wrapped[0])
    return first_line(error)


def _read_meta(target: Path) -> dict:
    try:
        return json.loads((target / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{target / 'meta.json'} is unreadable ({first_line(e)}); delete {target.parent} (or "
                              "choose another out_dir) to start afresh") from None


class Checkpointer:
    """A run's checkpoint in one of two formats behind one interface (as dinov2's FSDPCheckpointer): one file,
    `checkpoint.pt` (one process or DDP: rank 0 writes the whole state, every rank's own random state inside; it
    resumes at the same number of processes), or the sharded folder `checkpoint/` (FSDP2: every rank writes its shards
    with DCP; it resumes at any number). Saving and loading are collectives under torchrun.

        meta = checkpointer.read_meta(device)      # None when there is nothing to resume
        own = checkpointer.load(method, optimizer, meta)
        checkpointer.save(method, optimizer, meta, own)
    """

    def __init__(self, out_dir: str | os.PathLike, sharded: bool):
        self.out_dir, self.sharded = Path(out_dir), sharded
        self.path = self.out_dir / (SHARDED_CHECKPOINT if sharded else FULL_CHECKPOINT)

    def check_format(self) -> None:
        """A run folder whose checkpoint is of the other kind was trained with the other `parallel`: refused."""
        other = self.out_dir / (FULL_CHECKPOINT if self.sharded else SHARDED_CHECKPOINT)
        if other.exists():
            was, now = ("ddp", "fsdp") if self.sharded else ("fsdp", "ddp")
            raise CheckpointError(f"{self.out_dir} holds a checkpoint of parallel={was} ({other.name}); resume it with "
                                  f"--set parallel={was}, or train with parallel={now} in another out_dir")

    def read_meta(self, device) -> dict | None:
        """What the checkpoint says of itself (config, step, history, evals, ...; the one-file format carries its
        tensors too), or None when there is none (or only a first save killed midway)."""
        if self.sharded:
            return sharded_meta(self.path) if (self.path / "latest").exists() else None
        return load_checkpoint(self.path, map_location=device) if self.path.exists() else None

    def load(self, method: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> dict | None:
        """Load the model and optimizer states; return this rank's own state (RNG states, Method.rank_state), or
        None when the checkpoint was written by another number of processes."""
        if self.sharded:
            return load_sharded(self.path, method, optimizer)[1]
        method.load_state_dict(meta["method"])
        optimizer.load_state_dict(meta["optimizer"])
        return meta["rank_states"][distributed.rank()]

    def save(self, method: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict, own: dict,
             stem: str | None = None) -> None:
        """Write the checkpoint atomically (or, with `stem`, a copy beside it: e.g. "checkpoint-before-highres")."""
        if self.sharded:
            save_sharded(self.out_dir / stem if stem else self.path, method, optimizer, meta, own)
            return
        state = {**meta, "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                 "rank_states": distributed.all_gather_objects(own)}
        if distributed.rank() == 0:
            atomic_save(state, self.out_dir / f"{stem}.pt" if stem else self.path)
        distributed.barrier()
