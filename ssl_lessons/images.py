"""Images as files and as tensors: the extensions read, where a tree keeps its held-out split, the files of a folder,
the one decoder (bytes -> uint8 RGB, and at a square size), and the per-channel normalisation of CIFAR-10 and of full-resolution (ImageNet-style) images."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from .errors import DataError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the full-resolution (streamed) path's normalisation, as the official recipes
IMAGENET_STD = (0.229, 0.224, 0.225)


def held_out_split(root: Path) -> Path | None:
    """The held-out images of an ImageFolder tree: root/test, else root/val (ImageNet's name); None if neither."""
    return next((root / s for s in ("test", "val") if (root / s).is_dir()), None)


def decode_bytes(data: bytes | torch.Tensor, name: str) -> torch.Tensor:
    """An image file's bytes -> (3, H, W) uint8 RGB; corrupt or empty bytes raise DataError naming the file. The one
    decoder of the cache (below) and of the streaming loader (streaming.py)."""
    try:
        if len(data) == 0:
            raise ValueError("the file is empty")
        raw = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = decode_image(raw, mode=ImageReadMode.RGB)
        # a 16-bit PNG decodes to uint16: rescale it to 0-255 (a plain cast would keep the low byte, i.e. noise)
        return image if image.dtype == torch.uint8 else TF.to_dtype(image, torch.uint8, scale=True)
    except (RuntimeError, ValueError) as e:
        raise DataError(f"could not decode image {name} ({first_line(e)}). The file is corrupt or not an image: "
                        "replace or delete it, then run again.") from None


def decode_at_size(data: bytes | torch.Tensor, name: str, size: int) -> torch.Tensor:
    """An image file's bytes -> (3, size, size) uint8 RGB: the short side resized to `size` (antialiased), then the
    centre square (what the uint8 caches and the curation of a folder read)."""
    image = decode_bytes(data, name)
    if image.shape[-2:] != (size, size):
        image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
    return image


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (n, 3, h, w) -> uint8 (n, 3, size, size), bicubic (how the released models are shown CIFAR-10
    and how a descriptor sees images of another size)."""
    big = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)


def image_files(root: str | Path) -> list[Path]:
    """Every image file under `root`, at any depth, sorted (an ImageFolder tree or a plain folder of images)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images; give the folder that holds them (sub-folders are read too)")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not files:
        raise DataError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) at any depth; put the images "
                        f"there, e.g. {root}/<any folder>/<image>.jpg")
    return files


def normalize(images_uint8: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 standardised per channel."""
    x = images_uint8.float().div_(255)
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
