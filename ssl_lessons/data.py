"""CIFAR-10 (or any ImageFolder tree) decoded once into a uint8 cache, so no epoch pays for decoding.

Where CIFAR-10 comes from, in this order:
  1. a folder or .tar.gz you name (--data, data_source, else $SSL_LESSONS_CIFAR10), holding either the ImageFolder
     layout (train/<class>/*.jpg, test/<class>/*.jpg) or torchvision's cifar-10-batches-py. A named path wins:
     if it does not exist the run stops, and a cache is used only if it was made from that very source;
  2. the cache already prepared under data/ (data/cifar10.pt);
  3. a download through torchvision, when the machine is online.
Each cache records the identity of its source (resolved path and a digest of file names, sizes and dates).

Images are kept as uint8 tensors (N, 3, H, W) with int64 labels (N,); augmentation turns batches of them into
float views on the training device (see augment.py).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import atomic_save
from .errors import DataError, first_line
from .evaluation import extract_features
from .images import IMAGE_EXTENSIONS, decode_at_size, held_out_split
from . import streaming
from .streaming import StreamingImages, cache_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SSL_LESSONS_DATA_DIR", REPO_ROOT / "data"))
ENV_VAR = "SSL_LESSONS_CIFAR10"
CIFAR10_TRAIN_IMAGES = 50_000


@dataclass
class ImageData:
    train_images: torch.Tensor  # (N, 3, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor   # (M, 3, H, W) uint8
    test_labels: torch.Tensor   # (M,) int64
    classes: list[str]

    def subset(self, n_train: int = 0, n_test: int = 0, seed: int = 0) -> "ImageData":
        """A fixed random subset (0 keeps all), the same for every call with the same seed."""
        g = torch.Generator().manual_seed(seed)

        def pick(images, labels, n):
            if not n or n >= len(labels):
                return images, labels
            idx = torch.randperm(len(labels), generator=g)[:n].sort().values
            return images[idx], labels[idx]

        tr = pick(self.train_images, self.train_labels, n_train)
        te = pick(self.test_images, self.test_labels, n_test)
        return ImageData(*tr, *te, self.classes)

    def features(self, model: torch.nn.Module, split: str, batch_size: int = 512, device="cpu",
                 desc: str = "features") -> torch.Tensor:
        """(N, D) features of the "train" or "test" images (evaluation.extract_features; a collective under torchrun,
        as StreamingImages.features)."""
        return extract_features(model, getattr(self, f"{split}_images"), batch_size, device, desc)

    def training_batches(self, method, local_batch: int, steps_per_epoch: int, seed: int, rank: int, world: int,
                         generator: torch.Generator, device) -> "MemoryBatches":
        """The training loop's batch source over these images (as StreamingImages.training_batches)."""
        return MemoryBatches(self.train_images.to(device), method, local_batch, steps_per_epoch, seed, rank, world,
                             generator)

    def __repr__(self) -> str:
        return (f"ImageData(train={tuple(self.train_images.shape)}, test={tuple(self.test_images.shape)}, "
                f"classes={len(self.classes)})")


class MemoryBatches:
    """The training batches of images held on the device. Each epoch, every rank takes its share of one seeded
    permutation (DistributedSampler) and the method makes the views on the device (Method.make_views).

        for batch in source.epoch(epoch, start):   # this rank's batches of `epoch`, from batch `start` on
            crops = source.views(batch)             # after the step's schedules (Method.before_step)

    restart() is called when the method's global crop size changed (nothing to do here: views are made per step)."""

    def __init__(self, images: torch.Tensor, method, local_batch: int, steps_per_epoch: int, seed: int, rank: int,
                 world: int, generator: torch.Generator):
        self.images, self.method, self.local_batch, self.generator = images, method, local_batch, generator
        self.steps_per_epoch = steps_per_epoch
        self.sampler = DistributedSampler(range(len(images)), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler))
        for b in range(start, self.steps_per_epoch):
            yield order[b * self.local_batch:(b + 1) * self.local_batch]

    def views(self, batch: torch.Tensor):
        return self.method.make_views(self.images[batch.to(self.images.device)], self.generator)

    def restart(self) -> None:
        pass


def _not_found_message(tried: list[str]) -> str:
    return ("CIFAR-10 was not found. " + " ".join(tried) + "\nProvide it in one of three ways:\n"
            f"  1. name a folder or .tar.gz holding train/<class>/*.jpg and test/<class>/*.jpg, or torchvision's\n"
            f"     cifar-10-batches-py: --data PATH, or `export {ENV_VAR}=/path/to/cifar10-jpg.tar.gz`;\n"
            f"  2. prepare it once into {DATA_DIR}/cifar10.pt (`python -m ssl_lessons prepare-data --data PATH`);\n"
            "  3. run once on a machine that is online: torchvision downloads it (about 170 MB).")


def source_identity(path: str | os.PathLike) -> dict:
    """What identifies a source's images without decoding them: its resolved path, and a digest of the (relative
    name, size, mtime) of the archive or of every file and folder in the tree. A renamed, added, removed or
    rewritten image changes it; so does the same folder name in another place."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    for entry in entries:
        st = entry.stat()
        digest.update(f"{entry.relative_to(path) if entry != path else '.'}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(path), "entries": len(entries), "digest": digest.hexdigest()}


def cache_name(identity: dict, image_size: int, stem: str) -> str:
    key = hashlib.sha256(f"{identity['path']}|{identity['digest']}|{image_size}".encode()).hexdigest()[:12]
    return f"{stem}-{image_size}px-{key}.pt"


def _named_source(source) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. Name a folder holding train/<class>/*.jpg and test/<class>/*.jpg "
                        f"(or a .tar.gz of one) with --data, data_source or ${ENV_VAR}; or unset them to use "
                        f"{DATA_DIR}/cifar10.pt")
    return path


def _tree_root(dataset) -> Path:
    """The folder an ImageFolder `dataset` names; it must exist."""
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DataError(f"dataset {path} does not exist. Set dataset to an ImageFolder tree: train/<class>/<image> "
                        "and val/<class>/<image> (or test/), e.g. --set dataset=/datasets/imagenet")
    return path


def load_cifar10(source: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> ImageData:
    """CIFAR-10 as uint8 tensors. Where from, in this order:
      1. the path you name (`source`, else $SSL_LESSONS_CIFAR10): it must exist, and it wins over any cache that
         was made from something else; its cache is data/cifar10.pt if that one was made from this very source
         (same path, sizes and dates), else data/cifar10-32px-<key>.pt;
      2. data/cifar10.pt, as prepared before;
      3. a torchvision download."""
    data_dir = Path(data_dir or DATA_DIR)
    default_cache = data_dir / "cifar10.pt"
    named = source or os.environ.get(ENV_VAR) or None
    if named:
        path = _named_source(named)
        identity = source_identity(path)
        if default_cache.exists() and _cached_identity(default_cache) == identity:
            return _load_cache(default_cache)
        cache = default_cache if not default_cache.exists() else data_dir / cache_name(identity, 32, "cifar10")
        if cache.exists():
            return _load_cache(cache)
        data = read_image_source(path, image_size=32)
        _save_cache(data, cache, identity)
        return data
    if default_cache.exists():
        return _load_cache(default_cache)
    tried = [f"No cache at {default_cache}.", f"${ENV_VAR} is not set."]
    data = _download_cifar10(data_dir, tried) if download else None
    if data is None:
        raise DataError(_not_found_message(tried))
    _save_cache(data, default_cache, source_identity(data_dir / "cifar-10-batches-py"))
    return data


def load_image_folder(root: str | os.PathLike, image_size: int, data_dir: str | os.PathLike | None = None) -> ImageData:
    """Any ImageFolder tree with train/ and test/ (the ImageNet layout), resized to image_size and cached under a
    name that identifies the tree (path, file sizes and dates) and the size."""
    root = _tree_root(root)
    identity = source_identity(root)
    cache = Path(data_dir or DATA_DIR) / cache_name(identity, image_size, root.name.split(".")[0])
    if cache.exists():
        return _load_cache(cache)
    data = read_image_source(root, image_size)
    _save_cache(data, cache, identity)
    return data


def load_dataset(cfg) -> ImageData:
    """The entry point the training loop and notebooks use: cfg.dataset, then cfg's subsets. CIFAR-10 and small
    ImageFolder trees become a uint8 cache in memory; a tree too large for it is streamed from disk (streaming.py;
    cfg.data_loading says which, "auto" by the cache's size)."""
    if cfg.dataset == "cifar10":
        data = load_cifar10(cfg.data_source or None)
    elif uses_streaming(cfg):
        data = StreamingImages(_tree_root(cfg.dataset), eval_size=cfg.image_size, workers=cfg.workers)
    else:
        data = load_image_folder(cfg.dataset, cfg.image_size)
    return data.subset(cfg.train_subset, cfg.test_subset, seed=0)


def uses_streaming(cfg) -> bool:
    """Whether cfg's images are streamed: data_loading=stream, or auto and a uint8 cache of the tree at image_size
    would be larger than streaming.MEMORY_CACHE_LIMIT_GB."""
    if cfg.dataset == "cifar10" and cfg.data_loading == "stream":
        raise DataError("data_loading=stream reads an ImageFolder tree: set dataset to its path (CIFAR-10 is kept in "
                        "memory: data_loading=auto or memory)")
    if cfg.dataset == "cifar10" or cfg.data_loading == "memory":
        return False
    if cfg.data_loading == "stream":
        return True
    return cache_bytes(_tree_root(cfg.dataset), cfg.image_size) > streaming.MEMORY_CACHE_LIMIT_GB * 1e9


def dataset_key(cfg) -> str:
    """A short name for cfg's images, for files computed from them (lesson 0's yardsticks): "cifar10" for the
    default CIFAR-10, else the name of the named source's cache."""
    if cfg.dataset == "cifar10":
        if not cfg.data_source:
            return "cifar10"
        return cache_name(source_identity(_named_source(cfg.data_source)), 32, "cifar10")[:-3]
    root = _tree_root(cfg.dataset)
    return cache_name(source_identity(root), cfg.image_size, root.name.split(".")[0])[:-3]


# --- reading ---------------------------------------------------------------------------------------

def read_image_source(path: Path, image_size: int) -> ImageData:
    if not path.exists():
        raise DataError(f"{path} does not exist. Point {ENV_VAR} (or data_source / dataset) at a folder holding "
                        "train/<class>/*.jpg and test/<class>/*.jpg, or at a .tar.gz of one.")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise DataError(f"{path} is a file but not a .tar.gz archive; give a folder or a .tar.gz.")
        return _read_tar(path, image_size)
    batches = next((p for p in (path, path / "cifar-10-batches-py") if (p / "data_batch_1").exists()), None)
    if batches is not None:
        return _read_cifar_batches(batches)
    splits = {"train": path / "train", "test": held_out_split(path) or path / "test"}
    missing = [p.name for p in splits.values() if not p.is_dir()]
    if missing:
        raise DataError(f"{path} has no {' or '.join(missing)}/ folder. Expected {path}/train/<class>/*.jpg and "
                        f"{path}/test/<class>/*.jpg or val/<class>/* (the ImageFolder layout), or torchvision's "
                        "cifar-10-batches-py.")
    files = {s: sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS) for s, p in splits.items()}
    for split, found in files.items():
        if not found:
            raise DataError(f"{splits[split]} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                            "Each class needs a sub-folder of images: train/<class>/<image>.jpg")
    blobs = {s: [(str(f.relative_to(path)), f.parent.name, f.read_bytes) for f in fs] for s, fs in files.items()}
    return _decode_splits(blobs, image_size, origin=str(path))


def _read_tar(path: Path, image_size: int) -> ImageData:
    blobs = {"train": [], "test": []}
    try:
        with tarfile.open(path) as tar:
            for member in tqdm(tar, desc=f"reading {path.name}", unit=" files", mininterval=1.0):
                parts = Path(member.name).parts
                split_at = next((i for i, p in enumerate(parts) if p in blobs), None)
                if not member.isfile() or split_at is None or len(parts) < split_at + 3:
                    continue
                if not member.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                data = tar.extractfile(member).read()
                blobs[parts[split_at]].append((member.name, parts[-2], lambda d=data: d))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path} could not be read as a tar archive ({e}). Download it again or unpack it and "
                        "point at the folder.") from e
    for split, found in blobs.items():
        if not found:
            raise DataError(f"{path} holds no {split}/<class>/<image> files. Expected the ImageFolder layout "
                            "train/<class>/*.jpg and test/<class>/*.jpg inside the archive.")
    return _decode_splits(blobs, image_size, origin=str(path))


def _decode_splits(blobs: dict, image_size: int, origin: str) -> ImageData:
    classes = sorted({cls for _, cls, _ in blobs["train"]})
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for split in ("train", "test"):
        entries = sorted(blobs[split], key=lambda e: e[0])
        present = {cls for _, cls, _ in entries}
        unknown = sorted(present - set(index))
        if unknown:
            raise DataError(f"{origin}: test classes {unknown} do not appear in train/; a test image must belong "
                            "to a class the classifiers can be fitted on. Move or delete those folders")
        if split == "test" and set(classes) - present:
            warnings.warn(f"{origin}: train classes {sorted(set(classes) - present)} have no test images; the "
                          "test accuracy covers the other classes only", stacklevel=2)
        images = torch.empty(len(entries), 3, image_size, image_size, dtype=torch.uint8)
        for i, (name, _, read) in enumerate(tqdm(entries, desc=f"decoding {split}", unit=" img", mininterval=1.0)):
            images[i] = decode_at_size(read(), name, image_size)
        labels = torch.tensor([index[cls] for _, cls, _ in entries], dtype=torch.int64)
        out += [images, labels]
    return ImageData(*out, classes)


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles: allow the numpy array pieces they hold and nothing else, so a planted
    batch file cannot run code (pickle.load would call any function the file names)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({e}); download it again") from None


def _read_cifar_batches(folder: Path) -> ImageData:
    def read(names):
        xs, ys = [], []
        for name in names:
            batch = _unpickle(folder / name)
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(batch["labels"])
        return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.int64)

    classes = _unpickle(folder / "batches.meta")["label_names"]
    return ImageData(*read([f"data_batch_{i}" for i in range(1, 6)]), *read(["test_batch"]), classes)


def _download_cifar10(data_dir: Path, tried: list[str]) -> ImageData | None:
    from torchvision.datasets import CIFAR10
    try:
        CIFAR10(str(data_dir), train=True, download=True)
        CIFAR10(str(data_dir), train=False, download=True)
    except Exception as e:  # offline: URLError, socket errors, ...
        tried.append(f"The torchvision download failed ({type(e).__name__}: {e}).")
        return None
    return _read_cifar_batches(data_dir / "cifar-10-batches-py")


def _save_cache(data: ImageData, path: Path, identity: dict) -> None:
    atomic_save({"train_images": data.train_images, "train_labels": data.train_labels,
                 "test_images": data.test_images, "test_labels": data.test_labels, "classes": data.classes,
                 "source": identity}, path)


def _cached_identity(path: Path) -> dict | None:
    """The source identity a cache recorded (None for caches made before it was recorded); memory-mapped, cheap."""
    try:
        return torch.load(path, weights_only=True, mmap=True).get("source")
    except Exception:
        return None


def _load_cache(path: Path) -> ImageData:
    try:
        d = torch.load(path, weights_only=True)
        return ImageData(d["train_images"], d["train_labels"], d["test_images"], d["test_labels"], d["classes"])
    except Exception as e:
        raise DataError(f"the cache {path} is unreadable ({first_line(e)}); delete it and run again to rebuild it.") from None
