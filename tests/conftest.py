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


@pytest.fixture
def tiny_data():
    return make_tiny_data()
