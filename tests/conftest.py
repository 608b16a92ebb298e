import pytest
import torch

from ssl_lessons.data import ImageData


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
