import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_lessons.data import ImageData


def pytest_collection_modifyitems(items):
    """Every notebook cell counts as numerically sensitive: its checked outputs must hold on any CPU (make test runs
    the `numerics` items with PyTorch's non-vectorised kernels, another float summation order)."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.numerics)


def make_tiny_data(n_train=256, n_test=128, size=32, classes=4, seed=0) -> ImageData:
    """Random uint8 images whose mean colour depends on the class, so features carry some label signal."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        labels = torch.arange(n) % classes
        base = (labels.float() / classes * 200 + 20).view(n, 1, 1, 1)
        noise = torch.randint(-20, 21, (n, 3, size, size), generator=g).float()
        return (base + noise).clamp(0, 255).to(torch.uint8), labels

    return ImageData(*split(n_train), *split(n_test), [f"c{i}" for i in range(classes)])


def make_image_tree(root, classes=4, train_per_class=16, test_per_class=8, size=(32, 32), test_split="test"):
    """A small ImageFolder tree of JPEGs (root/train/class<c>/<i>.jpg, root/<test_split>/...) whose colour depends on
    the class; `size` = (height, width), e.g. non-square and larger than the crops, as full-resolution photos are."""
    from torchvision.io import write_jpeg
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train_per_class), (test_split, test_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(-30, 31, (3, *size), generator=g)
                write_jpeg((noise + 40 + 50 * c).clamp(0, 255).to(torch.uint8), str(folder / f"{i}.jpg"))
    return root


@pytest.fixture
def tiny_data():
    return make_tiny_data()


def launch(root: Path, modes: list[str], processes: int = 2) -> dict[str, list[dict]]:
    """{mode: [what rank r saved, for each r]} from one torchrun launch of ddp_worker.py running `modes` in turn."""
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", str(worker), str(root), ",".join(modes)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {m: [torch.load(root / m / f"rank{r}.pt", weights_only=False) for r in range(processes)] for m in modes}


def write_teacher(directory, with_heads=True, seed=3):
    """An exported teacher as `export` writes it: a small iBOT with separate heads, its teacher's weights in fp16.
    (its path, the method it came from)"""
    from ssl_lessons.checkpoint import atomic_save
    from ssl_lessons.config import config_to_dict, make_config
    from ssl_lessons.methods import build_method
    torch.manual_seed(seed)
    cfg = make_config("smoke", {"method": "ibot", "patch_size": "4", "embed_dim": "32", "separate_heads": "true"})
    method = build_method(cfg)
    half = lambda m: {k: v.half() for k, v in m.state_dict().items()}  # noqa: E731
    record = {"config": config_to_dict(cfg), "backbone": half(method.eval_backbone),
              "heads": half(torch.nn.ModuleDict(method.export_heads())) if with_heads else {}}
    path = directory / f"teacher-{seed}.pt"
    atomic_save(record, path)
    return str(path), method
