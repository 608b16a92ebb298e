
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ssl_lessons.augment import (ViewAugment, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
                                 random_resized_crop_boxes, resized_crop, unnormalize)


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


@pytest.fixture
def images01():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g)


@pytest.mark.parametrize("ours,theirs", [(adjust_brightness, TF.adjust_brightness),
                                         (adjust_contrast, TF.adjust_contrast),
                                         (adjust_saturation, TF.adjust_saturation)])
def test_colour_ops_equal_torchvision_per_sample(images01, ours, theirs):
    factors = torch.tensor([0.2, 0.6, 1.0, 1.3, 1.8, 0.9])
    expected = torch.stack([theirs(img, f.item()) for img, f in zip(images01, factors)])
    assert torch.allclose(ours(images01.clone(), factors), expected, atol=1e-5)


def test_hue_equals_torchvision_per_sample(images01):
    shifts = torch.tensor([-0.5, -0.2, 0.0, 0.05, 0.3, 0.5])
    expected = torch.stack([TF.adjust_hue(img, s.item()) for img, s in zip(images01, shifts)])
    assert torch.allclose(adjust_hue(images01.clone(), shifts), expected, atol=1e-5)


def test_crop_boxes_lie_inside_and_follow_the_scale_range():
    g = torch.Generator().manual_seed(0)
    boxes = random_resized_crop_boxes(2000, 32, 32, scale=(0.2, 1.0), generator=g)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 32).all() and (boxes[:, 3] <= 32).all()
    area = w * h / 1024
    assert area.min() > 0.15 and area.max() <= 1.0  # 0.2 minus rounding of w and h
    assert (w / h).min() > 0.6 and (w / h).max() < 1.6
    assert len(set(map(tuple, boxes.tolist()))) > 500  # per-sample randomness


def test_resized_crop_of_the_whole_image_is_the_identity_and_matches_torchvision_inside(images01):
    full = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(6, 1)
    assert torch.allclose(resized_crop(images01, full, 16), images01, atol=1e-6)
    box = torch.tensor([[2.0, 3.0, 10.0, 11.0]]).repeat(6, 1)  # x1, y1, x2, y2: an 8x8 crop
    ours = resized_crop(images01, box, 16)
    theirs = TF.resized_crop(images01, top=3, left=2, height=8, width=8, size=[16, 16], antialias=False)
    # torchvision clamps samples to the crop, roi_align to the image: equal away from the crop's border
    assert torch.allclose(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], atol=1e-5)


def test_views_have_the_right_shape_dtype_range_and_differ(tiny_data):
    aug = ViewAugment(size=24, scale=(0.2, 1.0))
    g = torch.Generator().manual_seed(0)
    images = tiny_data.train_images[:16]
    v1, v2 = aug(images, g), aug(images, g)
    assert v1.shape == (16, 3, 24, 24) and v1.dtype == torch.float32
    pixels = unnormalize(v1)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert not torch.allclose(v1, v2)  # two draws, two different views
    assert images.dtype == torch.uint8  # input untouched


def test_views_are_reproducible_from_the_generator(tiny_data):
    aug = ViewAugment()
    images = tiny_data.train_images[:8]
    a = aug(images, torch.Generator().manual_seed(3))
    b = aug(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_grayscale_probability_one_gives_equal_channels(tiny_data):
    aug = ViewAugment(gray_p=1.0, jitter_p=0.0)
    x = unnormalize(aug(tiny_data.train_images[:4], torch.Generator().manual_seed(0)))
    assert torch.allclose(x[:, 0], x[:, 1], atol=1e-5) and torch.allclose(x[:, 1], x[:, 2], atol=1e-5)


def test_zero_hue_shift_is_the_identity(images01):
    assert torch.allclose(adjust_hue(images01.clone(), torch.zeros(6)), images01, atol=1e-5)


def test_solarize_equals_torchvision(images01):
    from ssl_lessons.augment import solarize
    assert torch.allclose(solarize(images01.clone()), torch.stack([TF.solarize(x, 0.5) for x in images01]))


def test_each_method_makes_its_papers_views():
    from ssl_lessons.config import make_config
    from ssl_lessons.methods import build_method

    def views(name):
        return build_method(make_config("smoke", {"method": name})).crops

    simclr, byol, dino = views("simclr"), views("byol"), views("dino")
    # SimCLR: one kind of view, s = 0.5 (CIFAR), no solarization
    assert [v.solarize_p for v in simclr.global_views] == [0.0, 0.0]
    assert simclr.global_views[0].jitter == dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    # BYOL (Table 6) and DINO (DataAugmentationDINO): saturation 0.2, solarization in the second view only
    for crops in (byol, dino):
        assert [v.solarize_p for v in crops.global_views] == [0.0, 0.2]
        assert all(v.jitter["saturation"] == 0.2 for v in crops.global_views)
    assert dino.local_view.solarize_p == 0.0 and dino.n_local == 2 and dino.local_view.size == 16
    assert dino.global_views[0].scale == (0.4, 1.0) and dino.local_view.scale == (0.05, 0.4)


def test_solarize_probability_one_inverts_the_bright_pixels(tiny_data):
    plain = ViewAugment(jitter_p=0.0, gray_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    solar = ViewAugment(jitter_p=0.0, gray_p=0.0, solarize_p=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    a = plain(tiny_data.train_images[:8], torch.Generator().manual_seed(0))
    b = solar(tiny_data.train_images[:8], torch.Generator().manual_seed(0))
    assert torch.allclose(b, torch.where(a >= 0.5, 1 - a, a))
