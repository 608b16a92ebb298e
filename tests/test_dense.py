"""The dense yardstick (mosaics, patch labels, mIoU, the probe) and the patch features' CKA to their start."""
import math

import pytest
import torch

from ssl_lessons.config import make_config
from ssl_lessons.dense import (DenseBenchmark, make_mosaics, patch_labels, pixel_dense_probe, pixel_patches,
                               segmentation_scores)
from ssl_lessons.diagnostics import linear_cka
from ssl_lessons.train import train

from conftest import make_tiny_data

pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def flat_images(labels: torch.Tensor, size: int = 32) -> torch.Tensor:
    """One flat colour per class: 30 + 40 * class in every channel."""
    return (30 + 40 * labels).view(-1, 1, 1, 1).expand(-1, 3, size, size).to(torch.uint8).contiguous()


def test_mosaics_label_every_pixel_with_the_image_seen_there():
    labels = torch.arange(5)
    mosaics = make_mosaics(flat_images(labels), labels, n=50, n_tiles=2, seed=0)
    assert mosaics.images.shape == (50, 3, 32, 32) and mosaics.pixel_labels.shape == (50, 32, 32)
    # a flat image stays flat when resized, so each pixel's colour names the image under it
    assert torch.equal(mosaics.images[:, 0].long(), 30 + 40 * mosaics.pixel_labels)
    classes_per_mosaic = torch.tensor([len(m.unique()) for m in mosaics.pixel_labels])
    assert classes_per_mosaic.max() == 3 and (classes_per_mosaic > 1).float().mean() > 0.5
    covered = [(m != m[0, 0]).float().mean() for m in mosaics.pixel_labels]  # the tiles: 40-70 % of the side each
    assert 0.1 < float(torch.stack(covered).mean()) < 0.8
    again = make_mosaics(flat_images(labels), labels, n=50, n_tiles=2, seed=0)
    other = make_mosaics(flat_images(labels), labels, n=50, n_tiles=2, seed=1)
    assert torch.equal(again.images, mosaics.images) and not torch.equal(other.images, mosaics.images)


def test_a_patch_is_labelled_with_the_class_under_most_of_its_pixels():
    pixels = torch.tensor([[[0, 0, 1, 1],
                            [0, 2, 1, 2],
                            [3, 3, 2, 2],
                            [3, 0, 1, 2]]])
    # patch (0,0): three 0s, one 2 -> 0; (0,1): three 1s -> 1; (1,0): three 3s -> 3; (1,1): two 2s, one 1 ... -> 2
    assert patch_labels(pixels, 2, num_classes=4).tolist() == [[0, 1, 3, 2]]
    tie = torch.tensor([[[1, 1], [0, 0]]])
    assert patch_labels(tie, 2, num_classes=2).tolist() == [[0]]  # a tie goes to the lower class
    patches = pixel_patches(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 4)
    assert patches.shape == (2, 4, 48)                          # (n, N, 3 p^2), tokens in row-major order


def test_miou_and_patch_accuracy_by_hand():
    predictions, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    scores = segmentation_scores(predictions, labels, num_classes=3)   # class 2 appears nowhere: not averaged
    iou0, iou1 = 1 / 2, 2 / 3                                          # |0 & 0| / |0 | 0| = 1/2, and 2/3 for 1
    assert math.isclose(scores["miou"], 100 * (iou0 + iou1) / 2, rel_tol=1e-12)
    assert math.isclose(scores["patch_accuracy"], 75.0, rel_tol=1e-12)
    assert segmentation_scores(labels, labels, 3) == {"miou": 100.0, "patch_accuracy": 100.0}


def test_the_probe_reads_classes_from_features_that_carry_them_and_not_from_noise():
    data = make_tiny_data(n_train=64, n_test=64)                # the class sets each image's mean colour
    bench = DenseBenchmark.from_data(data, patch_size=4, n_train=60)
    assert bench.test.images.shape[0] == 30 and bench.labels("train").shape == (60, 64)
    informed = pixel_dense_probe(bench, max_iter=100)
    assert informed["patch_accuracy"] > 90 and informed["miou"] > 80
    shuffled = make_tiny_data(n_train=64, n_test=64)
    g = torch.Generator().manual_seed(0)
    shuffled.train_labels = torch.randint(0, 4, (64,), generator=g)  # labels no longer follow the colours
    shuffled.test_labels = torch.randint(0, 4, (64,), generator=g)
    blind = pixel_dense_probe(DenseBenchmark.from_data(shuffled, patch_size=4, n_train=60), max_iter=100)
    assert blind["patch_accuracy"] < 50                          # 4 classes: chance is about 25-35 %


def test_linear_cka_is_one_for_rotated_and_scaled_features_and_r_squared_in_one_dimension():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert math.isclose(linear_cka(x, 3.0 * x @ rotation + 1.0), 1.0, rel_tol=1e-9)
    noise = torch.randn(200, 6, generator=g)
    assert linear_cka(x, noise) < 0.15                                # unrelated: about d / n per direction
    a, b = torch.randn(500, 1, generator=g), torch.randn(500, 1, generator=g)
    y = a + 0.5 * b
    r = torch.corrcoef(torch.cat([a, y], 1).double().T)[0, 1].item()   # both in float64
    assert math.isclose(linear_cka(a, y), r ** 2, rel_tol=1e-9)      # one dimension: the squared correlation


def test_a_run_logs_its_patch_cka_to_the_start_and_the_dense_probe(tmp_path):
    data = make_tiny_data(n_train=256, n_test=64)
    cfg = make_config("smoke", {"method": "simclr", "out_dir": str(tmp_path / "run"), "epochs": "2", "lr": "0.01",
                                "knn_every": "1", "knn_bank": "128", "linear_probe": "false", "dense_mosaics": "32"})
    run = train(cfg, data=data, show_progress=False)
    ckas = [e["patch_cka_to_init"] for e in run["evals"]]
    assert ckas[0] > 1 - 1e-6                       # step 0: the backbone is its initialisation
    assert ckas[-1] < ckas[0] - 1e-3                # training moved the patch tokens
    result = run["result"]
    assert math.isclose(result["patch_cka_to_init"], ckas[-1], rel_tol=1e-9)
    assert 0 <= result["dense_miou"] <= 100 and 0 <= result["dense_patch_accuracy"] <= 100
