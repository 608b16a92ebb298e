"""Full-resolution ImageFolder trees (ImageNet: train/<class>/*.JPEG, val/<class>/*) streamed from disk.

CIFAR-10 fits in memory as a uint8 cache and is augmented on the training device in batches (data.py, augment.py).
ImageNet does not (1.28 M images of ~110 KB of JPEG each, ~500 px): each image is read and decoded per sample in
DataLoader workers (torchvision's `ImageFolder` and `decode_image`), and its multi-crop views are made there with
the official per-image recipe (`ViewAugment.to_torchvision`: RandomResizedCrop, flip, colour jitter, grayscale,
Gaussian blur, solarize, each with its method's probability). The main process receives ready `Crops`.
`data.load_dataset` chooses: a tree whose uint8 cache would exceed MEMORY_CACHE_LIMIT_GB is streamed (or say
`--set data_loading=stream|memory`).

    data = StreamingImages("/datasets/imagenet", eval_size=224)
    loader = data.training_loader(method.crops, local_batch=64, seed=0, rank=0, world=8, workers=10)
    loader.sampler.set_position(epoch, start_batch)        # then: for crops in loader: ...

Every sample's random choices are seeded by (seed, epoch, image index), not by the worker or the rank: a run sees
the same views whatever its number of workers and processes, and a resumed run the same as an uninterrupted one.
Each epoch is a `DistributedSampler` permutation, every image once per epoch across the ranks (drop_last).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.datasets import ImageFolder
from torchvision.io import read_file
from tqdm.auto import tqdm

from . import distributed
from .crops import Crops, MultiCrop
from .images import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, decode_bytes, held_out_split
from .errors import DataError, first_line
from .evaluation import feature_mode

MEMORY_CACHE_LIMIT_GB = 8.0   # data_loading=auto streams a tree whose uint8 cache at image_size would be larger


def decode_file(path: str) -> torch.Tensor:
    """An image file -> (3, H, W) uint8 RGB; a corrupt or empty file raises DataError naming it."""
    return decode_bytes(read_file(path), path)


def image_folder(root: Path) -> ImageFolder:
    try:
        return ImageFolder(str(root), loader=decode_file, is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{root}: {first_line(e)}. Expected {root}/<class>/<image>.jpg (the ImageFolder layout)") from None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random views: a function of the run's seed, the epoch and the image only."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class MultiCropTransform:
    """One image -> its G global and L local views, each by its view's torchvision pipeline (picklable: it runs in
    the DataLoader's worker processes). (3, H, W) uint8 -> [G + L tensors (3, size, size) float32]."""

    def __init__(self, multicrop: MultiCrop):
        self.global_views = [view.to_torchvision() for view in multicrop.global_views]
        self.local_view = multicrop.local_view.to_torchvision() if multicrop.n_local else None
        self.n_local = multicrop.n_local

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [view(image) for view in self.global_views] + [self.local_view(image) for _ in range(self.n_local)]


class SeededViews(Dataset):
    """Training samples keyed by (image index, seed): the image's views drawn with torch's RNG seeded so."""

    def __init__(self, folder: ImageFolder, transform: MultiCropTransform):
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> list[torch.Tensor]:
        index, seed = key
        image = self.folder.loader(self.folder.samples[index][0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)


class EpochSampler(Sampler):
    """This rank's (index, seed) keys of one epoch from a given batch on: DistributedSampler's permutation of the
    training images (shuffled by seed + epoch; each image on one rank; drop_last), and each sample's seed."""

    def __init__(self, indices: list[int], local_batch: int, seed: int, rank: int, world: int):
        self.indices, self.local_batch, self.seed = indices, local_batch, seed
        self.sampler = DistributedSampler(range(len(indices)), num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batches_per_epoch = len(self.sampler) // local_batch
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        order = list(self.sampler)[self.start * self.local_batch:self.batches_per_epoch * self.local_batch]
        return iter([(self.indices[i], sample_seed(self.seed, self.epoch, self.indices[i])) for i in order])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start) * self.local_batch


def collate_crops(samples: list[list[torch.Tensor]], n_global: int, n_local: int) -> Crops:
    """B samples of G + L views -> one Crops, view-major as crops.py lays it out."""
    views = [torch.stack(v) for v in zip(*samples)]
    local = torch.cat(views[n_global:]) if n_local else None
    return Crops(torch.cat(views[:n_global]), local, n_global, n_local)


class _Collate:  # picklable for worker processes
    def __init__(self, n_global: int, n_local: int):
        self.n_global, self.n_local = n_global, n_local

    def __call__(self, samples):
        return collate_crops(samples, self.n_global, self.n_local)


class _EvalImages(Dataset):
    """Evaluation images: resize the short side to size / 0.875 and centre-crop `size` (DINO's eval_knn.py:
    Resize(256), CenterCrop(224)), normalised. Returns (image, label)."""

    def __init__(self, folder: ImageFolder, indices: list[int], size: int):
        from torchvision.transforms import v2
        self.folder, self.indices = folder, indices
        self.transform = v2.Compose([v2.Resize(round(size / 0.875), interpolation=v2.InterpolationMode.BICUBIC,
                                               antialias=True), v2.CenterCrop(size),
                                     v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, label = self.folder.samples[self.indices[i]]
        return self.transform(self.folder.loader(path)), label


class StreamingImages:
    """An ImageFolder tree read from disk as it is needed: root/train/ and root/val/ (or test/). Labels follow the
    training classes; the same interface the loop and the evaluation use for ImageData where it matters
    (train_labels, test_labels, classes, subset)."""

    def __init__(self, root: str | os.PathLike, eval_size: int = 224, workers: int = 8,
                 train_indices: list[int] | None = None, test_indices: list[int] | None = None):
        self.root = Path(root)
        self.train_folder = image_folder(self.root / "train")
        held_out = held_out_split(self.root)
        if held_out is None:
            raise DataError(f"{self.root} has no val/ or test/ folder beside train/: the k-NN and the linear probe "
                            "need held-out images in the same <class>/<image> layout")
        self.test_folder = image_folder(held_out)
        unknown = sorted(set(self.test_folder.classes) - set(self.train_folder.classes))
        if unknown:
            raise DataError(f"{held_out}: classes {unknown} do not appear in train/; move or delete "
                            "those folders")
        absent = sorted(set(self.train_folder.classes) - set(self.test_folder.classes))
        if absent:  # as the in-memory cache says it
            warnings.warn(f"{held_out}: train classes {absent} have no held-out images; the k-NN and probe accuracy "
                          "cover the other classes only", stacklevel=2)
        self.classes, self.eval_size, self.workers = self.train_folder.classes, eval_size, workers
        index = self.train_folder.class_to_idx
        test_targets = [index[self.test_folder.classes[t]] for t in self.test_folder.targets]
        self.test_folder.samples = [(p, t) for (p, _), t in zip(self.test_folder.samples, test_targets)]
        self.train_indices = list(range(len(self.train_folder))) if train_indices is None else train_indices
        self.test_indices = list(range(len(self.test_folder))) if test_indices is None else test_indices
        self.train_labels = torch.tensor([self.train_folder.targets[i] for i in self.train_indices])
        self.test_labels = torch.tensor([self.test_folder.samples[i][1] for i in self.test_indices])

    def __repr__(self) -> str:
        return (f"StreamingImages({self.root}, train={len(self.train_indices)}, test={len(self.test_indices)}, "
                f"classes={len(self.classes)})")

    def subset(self, n_train: int = 0, n_test: int = 0, seed: int = 0) -> "StreamingImages":
        """A fixed random subset (0 keeps all), as ImageData.subset."""
        g = torch.Generator().manual_seed(seed)

        def pick(indices, n):
            if not n or n >= len(indices):
                return indices
            return [indices[i] for i in torch.randperm(len(indices), generator=g)[:n].sort().values.tolist()]

        out = object.__new__(StreamingImages)
        out.__dict__.update(self.__dict__)
        out.train_indices, out.test_indices = pick(self.train_indices, n_train), pick(self.test_indices, n_test)
        out.train_labels = torch.tensor([self.train_folder.targets[i] for i in out.train_indices])
        out.test_labels = torch.tensor([self.test_folder.samples[i][1] for i in out.test_indices])
        return out

    def training_loader(self, multicrop: MultiCrop, local_batch: int, seed: int, rank: int = 0, world: int = 1,
                        pin_memory: bool = False) -> DataLoader:
        """Batches of this rank's Crops, decoded and augmented in `workers` persistent processes; position it with
        loader.sampler.set_position(epoch, start_batch) before iterating."""
        dataset = SeededViews(self.train_folder, MultiCropTransform(multicrop))
        sampler = EpochSampler(self.train_indices, local_batch, seed, rank, world)
        return DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=self.workers,
                          collate_fn=_Collate(multicrop.n_global, multicrop.n_local), pin_memory=pin_memory,
                          persistent_workers=self.workers > 0, drop_last=True,
                          prefetch_factor=4 if self.workers > 0 else None,
                          generator=torch.Generator().manual_seed(seed))  # not a draw from the global RNG

    def training_batches(self, method, local_batch: int, steps_per_epoch: int, seed: int, rank: int, world: int,
                         generator: torch.Generator, device) -> "StreamedBatches":
        """The training loop's batch source over these images (as ImageData.training_batches)."""
        return StreamedBatches(self, method, local_batch, seed, rank, world, generator, device)

    @torch.no_grad()
    def features(self, model: torch.nn.Module, split: str, batch_size: int, device, desc: str = "features"
                        ) -> torch.Tensor:
        """(N, D) features of a split's evaluation images on every rank: each rank embeds its equal share
        (distributed.own_share, as evaluation.extract_features), then the shares are gathered in order."""
        folder, indices = (self.train_folder, self.train_indices) if split == "train" else \
            (self.test_folder, self.test_indices)
        own = [indices[i] for i in distributed.own_share(len(indices))]
        loader = DataLoader(_EvalImages(folder, own, self.eval_size), batch_size=batch_size,
                            num_workers=self.workers, pin_memory=torch.device(device).type == "cuda")
        with feature_mode(model):
            out = [model(images.to(device, non_blocking=True)).float()
                   for images, _ in tqdm(loader, desc=desc, leave=False, mininterval=1.0,
                                         disable=not distributed.is_main())]
        return distributed.all_gather_rows(torch.cat(out)).cpu()[:len(indices)]


class StreamedBatches:
    """The training batches of images streamed from disk: decoded and cropped in the loader's worker processes,
    completed on the device by the method (Method.complete_views: e.g. iBOT's masks). The interface of
    data.MemoryBatches: epoch(epoch, start) -> batches, views(batch) -> Crops, restart()."""

    def __init__(self, data: StreamingImages, method, local_batch: int, seed: int, rank: int, world: int,
                 generator: torch.Generator, device):
        self.data, self.method, self.local_batch, self.seed = data, method, local_batch, seed
        self.rank, self.world, self.generator, self.device = rank, world, generator, torch.device(device)
        self.restart()

    def restart(self) -> None:
        """A new loader: its workers crop at the method's current global size (after set_global_size)."""
        self.loader = self.data.training_loader(self.method.crops, self.local_batch, self.seed, self.rank, self.world,
                                                pin_memory=self.device.type == "cuda")

    def epoch(self, epoch: int, start: int = 0):
        self.loader.sampler.set_position(epoch, start)
        return iter(self.loader)

    def views(self, batch: Crops) -> Crops:
        return self.method.complete_views(batch.to(self.device, non_blocking=True), self.generator)


def cache_bytes(root: str | os.PathLike, image_size: int) -> int:
    """The size of the uint8 cache data.py would make of the tree: images x 3 x image_size^2 bytes."""
    count = sum(1 for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return count * 3 * image_size * image_size
