
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ssl_lessons.augment import (ViewAugment, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
                                 random_resized_crop_boxes, resized_crop, unnormalize)


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
