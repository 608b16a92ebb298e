import pickle
import tarfile

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from ssl_lessons.data import DataError, ImageData, load_cifar10, load_image_folder, read_image_source


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=32):
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
                (root / split / cls / f"{i}.jpg").write_bytes(encode_jpeg(img, quality=95).numpy().tobytes())
    return root


def test_image_folder_of_jpegs_is_decoded_to_uint8(tmp_path):
    root = write_image_folder(tmp_path / "tree")
    data = read_image_source(root, image_size=32)
    assert data.train_images.shape == (6, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.classes == ["cat", "dog"] and data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    from torchvision.io import decode_jpeg, read_file
    first_dog = decode_jpeg(read_file(str(root / "train" / "dog" / "0.jpg")))
    assert torch.equal(data.train_images[3], first_dog)  # the pixels of that file, in the class's order


def test_larger_images_are_resized_to_image_size(tmp_path):
    root = write_image_folder(tmp_path / "big", size=48)
    data = read_image_source(root, image_size=16)
    assert data.test_images.shape == (6, 3, 16, 16)
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as TF
    original = decode_jpeg(read_file(str(root / "test" / "cat" / "0.jpg")))
    expected = TF.resize(original, 16, antialias=True)
    assert (data.test_images[0].int() - expected.int()).abs().max() <= 1  # resized, not cropped or re-coloured


def test_tar_gz_gives_the_same_images_as_the_folder(tmp_path):
    root = write_image_folder(tmp_path / "cifar10-jpg")
    archive = tmp_path / "cifar10-jpg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar10-jpg")
    a, b = read_image_source(root, 32), read_image_source(archive, 32)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)


def test_torchvision_batches_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    data = read_image_source(tmp_path, 32)
    assert data.train_images.shape == (20, 3, 32, 32) and len(data.classes) == 10


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_LESSONS_CIFAR10", raising=False)
    root = write_image_folder(tmp_path / "tree")
    first = load_cifar10(root, data_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "cifar10.pt").exists()
    second = load_cifar10(None, data_dir=tmp_path / "cache")  # nothing named: the prepared cache
    assert torch.equal(first.train_images, second.train_images)


def test_any_image_folder_through_the_same_entry_point(tmp_path):
    root = write_image_folder(tmp_path / "imagenet-like", size=40)
    data = load_image_folder(root, image_size=24, data_dir=tmp_path / "cache")
    assert data.train_images.shape == (6, 3, 24, 24)
    assert len(list((tmp_path / "cache").glob("imagenet-like-24px-*.pt"))) == 1


def test_missing_path_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data, data_source or \\$SSL_LESSONS_CIFAR10"):
        load_cifar10(tmp_path / "nowhere", data_dir=tmp_path)


def test_nothing_found_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_LESSONS_CIFAR10", raising=False)
    with pytest.raises(DataError) as info:
        load_cifar10(None, data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "1. name a folder" in message and "2. prepare" in message and "3. run once" in message


def test_empty_folder_is_explained(tmp_path):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        read_image_source(tmp_path / "empty", 32)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no train or test/ folder"):
        read_image_source(tmp_path / "flat", 32)


def test_corrupt_jpeg_is_named(tmp_path):
    root = write_image_folder(tmp_path / "tree")
    (root / "train" / "dog" / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=r"train/dog/1.jpg.*corrupt"):
        read_image_source(root, 32)


def test_subset_is_fixed_and_sized(tiny_data):
    a, b = tiny_data.subset(100, 50, seed=0), tiny_data.subset(100, 50, seed=0)
    assert len(a.train_labels) == 100 and len(a.test_labels) == 50
    assert torch.equal(a.train_images, b.train_images)
    assert isinstance(a, ImageData)
