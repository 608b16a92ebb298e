"""Lesson 8's descriptors: what each name loads, unit rows out, resizing, files read in chunks, and clear errors."""
import numpy as np
import pytest
import torch
from torchvision.io import write_png

from ssl_lessons import descriptors
from ssl_lessons.descriptors import load_descriptor
from ssl_lessons.errors import ConfigError
from ssl_lessons.images import normalize


@pytest.fixture
def images():
    return torch.randint(0, 256, (10, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_pixels_are_the_standardised_pixels_as_unit_rows(images):
    got = load_descriptor("pixels")(images, batch_size=4)
    flat = normalize(images).flatten(1)
    expected = (flat / flat.norm(dim=1, keepdim=True)).numpy()
    assert got.shape == (10, 3072) and np.allclose(got, expected, atol=1e-6)


def test_the_random_vit_is_the_same_network_every_time(images):
    a, b = load_descriptor("random-vit")(images), load_descriptor("random-vit")(images)
    assert a.shape == (10, 128) and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


def test_images_of_another_size_are_resized_to_the_descriptors(images):
    big = torch.nn.functional.interpolate(images.float(), size=(64, 64), mode="nearest").to(torch.uint8)
    d = load_descriptor("pixels")
    assert d(big).shape == (10, 3072)
    # nearest-neighbour doubling then bicubic halving returns close to the original pixels
    assert (d(big) * d(images)).sum(1).min() > 0.95


def test_describing_files_is_describing_the_decoded_images(images, tmp_path):
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        write_png(image, str(files[-1]))
    d = load_descriptor("pixels")
    assert np.allclose(d.describe_files(files, chunk=3), d(images), atol=1e-6)


def test_an_unknown_descriptor_names_the_ones_there_are(tmp_path):
    (tmp_path / "mine.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="no descriptor 'nope'.*'pixels'.*exported backbone of .*: mine"):
        load_descriptor("nope", directory=tmp_path)


def test_an_official_model_offline_says_what_to_do_instead(monkeypatch):
    monkeypatch.setattr(descriptors, "online", lambda: False)
    with pytest.raises(ConfigError, match="unreachable from here; use an exported backbone"):
        load_descriptor("timm:vit_small_patch14_dinov2.lvd142m")
