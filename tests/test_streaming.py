"""The streaming path for full-resolution ImageFolder trees: per-sample decoding and multi-crop in DataLoader workers,
each image once per epoch across ranks, views seeded per sample, corrupt files named, features streamed too."""
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from conftest import make_image_tree

import ssl_lessons.streaming as streaming
from ssl_lessons.augment import ViewAugment
from ssl_lessons.config import make_config
from ssl_lessons.data import ImageData, load_dataset
from ssl_lessons.images import IMAGENET_MEAN, IMAGENET_STD
from ssl_lessons.errors import DataError
from ssl_lessons.methods import build_method
from ssl_lessons.streaming import EpochSampler, StreamingImages, decode_file
from ssl_lessons.train import train


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    # 4 classes, 16 training and 8 validation photos each, 48 x 64 px: larger than the crops and not square
    return make_image_tree(tmp_path_factory.mktemp("imagenet") / "tree", size=(48, 64), test_split="val")


def dino(image_size=32):
    cfg = make_config("smoke", {"method": "dino", "image_size": str(image_size), "local_size": "16",
                                "patch_size": "8"})
    return build_method(cfg)


def test_the_tree_reads_with_labels_of_the_training_classes(tree):
    data = StreamingImages(tree, eval_size=32, workers=0)
    assert data.classes == ["class0", "class1", "class2", "class3"]
    assert data.train_labels.tolist() == [c for c in range(4) for _ in range(16)]
    assert data.test_labels.tolist() == [c for c in range(4) for _ in range(8)]
    assert data.subset(n_train=10, seed=1).train_labels.shape == (10,)


def test_training_batches_are_the_methods_crops(tree):
    method = dino()
    loader = StreamingImages(tree, workers=2).training_loader(method.crops, local_batch=8, seed=0)
    loader.sampler.set_position(epoch=0)
    batches = list(loader)
    assert len(batches) == 64 // 8
    crops = batches[0]
    assert crops.global_crops.shape == (2 * 8, 3, 32, 32) and crops.local_crops.shape == (2 * 8, 3, 16, 16)
    assert crops.n_global == 2 and crops.n_local == 2 and crops.global_crops.dtype == torch.float32
    completed = method.complete_views(crops)  # the loop then trains on them as on CIFAR's
    loss, _ = method(completed)
    assert torch.isfinite(loss)


def test_every_image_once_per_epoch_across_ranks_and_a_new_order_each_epoch(tree):
    keys = {}
    for rank in range(2):
        sampler = EpochSampler(list(range(64)), local_batch=8, seed=0, rank=rank, world=2)
        sampler.set_position(epoch=0)
        keys[rank] = [i for i, _ in sampler]
    assert len(keys[0]) == len(keys[1]) == 32 and sorted(keys[0] + keys[1]) == list(range(64))
    sampler.set_position(epoch=1)
    assert [i for i, _ in sampler] != keys[1]
    sampler.set_position(epoch=1, start_batch=3)  # a resumed epoch starts at its 4th batch
    assert len(list(sampler)) == 8


def test_a_samples_views_depend_on_the_image_and_epoch_not_on_the_rank_or_workers(tree):
    method = dino()
    data = StreamingImages(tree, workers=0)

    def views_of(world, workers):
        data.workers = workers
        out = {}
        for rank in range(world):
            loader = data.training_loader(method.crops, local_batch=8, seed=0, rank=rank, world=world)
            loader.sampler.set_position(epoch=0)
            order = [i for i, _ in loader.sampler]
            for b, crops in enumerate(loader):
                for j in range(8):
                    out[order[b * 8 + j]] = crops.global_crops[j]
        return out

    one, two = views_of(1, 0), views_of(2, 2)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[i], two[i]) for i in one)
    assert not torch.equal(one[0], one[1])


def test_the_full_resolution_view_is_the_torchvision_recipe():
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    plain = ViewAugment(24, scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, flip_p=0.0).to_torchvision()
    expected = TF.normalize(TF.to_dtype(TF.resize(image, [24, 24], interpolation=TF.InterpolationMode.BICUBIC,
                                                  antialias=True), torch.float32, scale=True),
                            list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert torch.allclose(plain(image), expected, atol=1e-6)  # a whole-image crop, resized, normalised
    names = [type(t).__name__ for t in ViewAugment(24, blur_p=0.1, solarize_p=0.2).to_torchvision().transforms]
    assert names[:4] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale"]
    assert "RandomSolarize" in names and names.count("RandomApply") == 2  # jitter and blur
    assert "RandomSolarize" not in [type(t).__name__ for t in ViewAugment(24).to_torchvision().transforms]


def test_dino_views_carry_the_official_blur_and_solarize_probabilities():
    crops = dino().crops
    assert [v.blur_p for v in crops.global_views] == [1.0, 0.1] and crops.local_view.blur_p == 0.5
    assert [v.solarize_p for v in crops.global_views] == [0.0, 0.2]


def test_a_corrupt_file_is_reported_with_its_path(tmp_path):
    root = make_image_tree(tmp_path / "tree", classes=2, train_per_class=4, test_per_class=2, test_split="val")
    bad = root / "train" / "class1" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="broken.jpg"):
        decode_file(str(bad))
    method = dino()
    loader = StreamingImages(root, workers=1).training_loader(method.crops, local_batch=9, seed=0)
    loader.sampler.set_position(epoch=0)
    with pytest.raises(DataError, match=str(bad)):
        list(loader)  # raised in a worker process, re-raised here with the path


def test_streamed_features_are_every_images_in_order(tree):
    data = StreamingImages(tree, eval_size=32, workers=0)
    mean_colour = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    features = data.features(mean_colour, "test", batch_size=5, device="cpu")
    assert features.shape == (32, 3)
    one = streaming._EvalImages(data.test_folder, [17], 32)[0][0]
    assert torch.allclose(features[17], one.mean(dim=(1, 2)), atol=1e-5)
    # the classes differ in brightness: the mean colour orders them
    assert (features[data.test_labels == 3].mean() > features[data.test_labels == 0].mean()).item()
    learned = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    assert not data.features(learned, "test", batch_size=5, device="cpu").requires_grad  # no graph kept


def test_auto_streams_only_a_tree_too_large_for_memory(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_LESSONS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("ssl_lessons.data.DATA_DIR", tmp_path)
    base = {"method": "dino", "dataset": str(tree), "train_subset": "0", "test_subset": "0"}
    monkeypatch.setattr(streaming, "MEMORY_CACHE_LIMIT_GB", 1.0)
    cached = load_dataset(make_config("smoke", base))  # 96 images x 3 x 32 x 32 B = 0.3 MB: kept in memory
    assert isinstance(cached, ImageData) and cached.train_images.shape == (64, 3, 32, 32)
    assert cached.test_labels.tolist() == StreamingImages(tree, workers=0).test_labels.tolist()
    monkeypatch.setattr(streaming, "MEMORY_CACHE_LIMIT_GB", 1e-6)  # ... but over a 1-kB limit: streamed
    assert isinstance(load_dataset(make_config("smoke", base)), StreamingImages)
    monkeypatch.setattr(streaming, "MEMORY_CACHE_LIMIT_GB", 1.0)
    assert isinstance(load_dataset(make_config("smoke", {**base, "data_loading": "stream"})), StreamingImages)
    assert isinstance(load_dataset(make_config("smoke", {**base, "data_loading": "memory"})), ImageData)


def test_a_streamed_run_trains_evaluates_and_resumes_exactly(tree, tmp_path):
    common = {"method": "dino", "dataset": str(tree), "data_loading": "stream", "workers": "2",
              "train_subset": "0", "test_subset": "0", "batch_size": "16", "epochs": "1.0", "knn_k": "5",
              "knn_bank": "64", "knn_every": "0.5", "linear_probe": "false", "ckpt_every": "2"}
    whole = train(make_config("smoke", {**common, "out_dir": str(tmp_path / "whole")}), show_progress=False)
    assert whole["result"]["steps"] == 4 and whole["result"]["bank"] == 64 and whole["result"]["queries"] == 32
    split_cfg = make_config("smoke", {**common, "out_dir": str(tmp_path / "split")})
    assert train(split_cfg, stop_after=2, show_progress=False)["result"] is None
    resumed = train(split_cfg, show_progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["result"]["knn_top1"] == whole["result"]["knn_top1"]


def test_a_missing_tree_is_named_with_the_layout_it_should_have(tmp_path):
    for loading in ("memory", "stream", "auto"):
        cfg = make_config("smoke", {"method": "dino", "dataset": str(tmp_path / "nowhere"), "data_loading": loading})
        with pytest.raises(DataError, match="dataset .*nowhere does not exist.*train/<class>"):
            load_dataset(cfg)
