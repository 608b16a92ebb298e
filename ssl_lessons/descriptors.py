"""What an image becomes for search: a descriptor maps uint8 images (n, 3, H, W) to unit vectors (n, d), and
similarity is their inner product (the cosine). Retrieval, copy detection and curation (retrieval.py,
copy_detection.py, curation.py) take any of them:

    "pixels"         standardised pixels at 32 px, flattened (lesson 0's yardstick; d = 3072)
    "random-vit"     the laptop ViT (width 128, depth 4, patch 4), randomly initialised with seed 0
    NAME or PATH.pt  a backbone exported by `python -m ssl_lessons export` (data/pretrained/NAME.pt), at the size
                     it was trained at, with CIFAR-10's normalisation
    timm:MODEL       a released model through timm, e.g. timm:vit_small_patch14_dinov2.lvd142m (online only), at 224 px
                     with ImageNet's normalisation

DINOv2 deduplicates with SSCD's copy descriptor (Pizzi et al. 2022) and retrieves with a self-supervised ViT-H/16;
SSCD is itself contrastive learning (SimCLR's loss with stronger edits and a KoLeo term), so a SimCLR backbone is
the course's closest stand-in for it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import backbone_from_config
from .errors import ConfigError
from .evaluation import extract_features, pixel_features
from .images import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, decode_at_size, resize_square
from .pretrained import PRETRAINED_DIR, load_backbone, official_model, online
from .retrieval import unit_rows
from .settings import PRESETS, Config


@dataclass
class Descriptor:
    """`model` (None: the pixels themselves) applied to images resized to `image_size` and normalised with
    (mean, std)."""
    name: str
    model: torch.nn.Module | None
    image_size: int
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD

    def __call__(self, images: torch.Tensor, batch_size: int = 256, device="cpu", progress: bool = False
                 ) -> np.ndarray:
        """uint8 images (n, 3, H, W) -> unit rows (n, d) float32. Images of another size are resized (bicubic)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = resize_square(images, self.image_size)
        if self.model is None:
            return unit_rows(pixel_features(images))
        return unit_rows(extract_features(self.model, images, batch_size, device, f"describing ({self.name})",
                                          self.mean, self.std, progress))

    def describe_files(self, files: Iterable[Path], chunk: int = 1024, device="cpu") -> np.ndarray:
        """Image files -> unit rows (n, d), decoded `chunk` at a time at image_size (short side resized, centre
        square), so a folder of any size needs memory for its descriptors only."""
        files = list(files)
        out = []
        for start in tqdm(range(0, len(files), chunk), desc=f"describing {len(files)} files ({self.name})",
                          mininterval=1.0):
            images = torch.stack([decode_at_size(f.read_bytes(), str(f), self.image_size)
                                  for f in files[start:start + chunk]])
            out.append(self(images, device=device))
        return np.concatenate(out)


def laptop_vit(seed: int = 0) -> torch.nn.Module:
    """The laptop preset's ViT (settings.PRESETS["cifar10-laptop"]) with the random weights torch seed `seed` gives."""
    cfg = Config(**{k: v for k, v in PRESETS["cifar10-laptop"].items() if k in ("patch_size", "embed_dim", "depth",
                                                                                "num_heads", "global_pool")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return backbone_from_config(cfg).eval()


def load_descriptor(name: str, directory: Path = PRETRAINED_DIR) -> Descriptor:
    """The descriptor `name` names (see the module docstring); a one-line ConfigError for one that does not exist."""
    if name == "pixels":
        return Descriptor("pixels", None, 32)
    if name == "random-vit":
        return Descriptor("random-vit", laptop_vit(0), 32)
    if name.startswith("timm:"):
        if not online():
            raise ConfigError(f"{name} is downloaded through timm, and huggingface.co is unreachable from here; use "
                              "an exported backbone of data/pretrained/ instead (or run where the machine is online)")
        return Descriptor(name, official_model(name[len("timm:"):]), 224, IMAGENET_MEAN, IMAGENET_STD)
    path = Path(name) if name.endswith(".pt") else Path(directory) / f"{name}.pt"
    if not path.exists():
        exported = sorted(p.stem for p in Path(directory).glob("*.pt")) if Path(directory).exists() else []
        raise ConfigError(f"no descriptor {name!r}: give 'pixels', 'random-vit', timm:MODEL, a .pt file, or an "
                          f"exported backbone of {directory}: {', '.join(exported) or 'none yet'}")
    backbone, record = load_backbone(str(path))
    return Descriptor(path.stem, backbone, record["config"].get("image_size", 32))
