"""Lesson 5: block-wise masks, the masked student input, iBOT's patch loss and center, the method, PCA of patches."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_lessons.config import make_config
from ssl_lessons.losses.ibot import iBOTPatchLoss, masked_patch_cross_entropy
from ssl_lessons.masking import BatchMasker, MaskingGenerator
from ssl_lessons.methods import build_method
from ssl_lessons.pca import patch_pca
from ssl_lessons.train import train


# --- masks --------------------------------------------------------------------------------------------------------

pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def test_batch_masks_have_the_shape_fraction_and_ratios_asked_for():
    masker = BatchMasker(32, 4, probability=0.5, ratio_min=0.1, ratio_max=0.5)
    g = torch.Generator().manual_seed(0)
    for n in (2, 16, 256):
        masks = masker(n, g)
        counts = masks.sum(1)
        assert masks.shape == (n, 64) and masks.dtype == torch.bool
        assert int((counts > 0).sum()) == n // 2  # half of the crops are masked, the others not at all
        assert counts.max() <= 32  # never above ratio_max * 64
    # ratios spread evenly: the i-th masked crop aims inside the i-th of k equal sub-intervals of (0.1, 0.5)
    masks = masker(256, g)
    ratios = np.sort(masks.sum(1)[masks.sum(1) > 0].numpy() / 64)
    assert ratios[0] >= 3 / 64 and 0.25 < ratios.mean() < 0.33  # the mean of U(0.1, 0.5) is 0.3, minus int() rounding
    assert np.quantile(ratios, 0.1) < 0.16 and np.quantile(ratios, 0.9) > 0.42


def test_every_masked_crop_stays_within_its_target_and_above_one_block():
    generator = MaskingGenerator((8, 8), min_block=4, max_block=32)
    rng = random.Random(0)
    for target in range(4, 33):
        for _ in range(20):
            mask = generator(target, rng)
            # never overshoots; the first block has area >= min_block = 4 before its sides are rounded, which leaves
            # at least 3 patches (area 4 at aspect 1/2 rounds to 1 x 3, as in BEiT's generator); 1 x 2 cannot happen
            assert 3 <= int(mask.sum()) <= target


def test_masks_are_blocks_not_scattered_patches():
    generator = MaskingGenerator((8, 8), min_block=4, max_block=32)
    rng = random.Random(1)
    with_neighbour, total = 0, 0
    for _ in range(200):
        m = F.pad(generator(rng.randint(8, 32), rng).float()[None, None], (1, 1, 1, 1))[0, 0]
        neighbours = m[:-2, 1:-1] + m[2:, 1:-1] + m[1:-1, :-2] + m[1:-1, 2:]
        inside = m[1:-1, 1:-1].bool()
        with_neighbour += int((neighbours[inside] > 0).sum())
        total += int(inside.sum())
    assert with_neighbour / total > 0.97  # a masked patch almost always touches another masked patch


def test_identical_generator_states_give_identical_masks():
    masker = BatchMasker(32, 4)
    a = masker(64, torch.Generator().manual_seed(5))
    b = masker(64, torch.Generator().manual_seed(5))
    c = masker(64, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- the masked student input, the whole teacher input ----------------------------------------------------------

def recording(vit, store):
    """Wrap vit._pos_embed (its input: the patch embeddings after the mask token, (B, h, w, D)) to record it."""
    original = vit._pos_embed

    def wrapped(x):
        store.append(x.detach().clone())
        return original(x)
    vit._pos_embed = wrapped


def test_the_student_sees_mask_tokens_exactly_at_masked_positions_and_the_teacher_sees_none():
    cfg = make_config("smoke", {"method": "ibot"})
    method = build_method(cfg)
    with torch.no_grad():
        method.backbone.mask_token.normal_()
    crops = method.make_views(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert crops.masks.shape == (16, 16) and crops.masks.any()
    student, teacher = [], []
    recording(method.backbone.vit, student)
    recording(method.teacher.backbone.vit, teacher)
    method(crops)
    embeddings = method.backbone.vit.patch_embed(crops.global_crops).detach()   # (16, 4, 4, D), nothing masked
    masked_input = student[0]                                                    # the global crops' pass
    masks = crops.masks.view(16, 4, 4)
    changed = (masked_input != embeddings).any(-1)
    assert torch.equal(changed, masks)                                           # differs exactly where masked ...
    assert torch.equal(masked_input[masks], method.backbone.mask_token.detach().expand(int(masks.sum()), -1))
    assert len(teacher) == 1 and torch.allclose(teacher[0], method.teacher.backbone.vit.patch_embed(crops.global_crops))


# --- the patch loss ----------------------------------------------------------------------------------------------

def test_patch_loss_equals_a_double_loop_over_images_and_patches():
    g = torch.Generator().manual_seed(0)
    B, N, K, temp = 4, 6, 5, 0.1
    masks = torch.rand(B, N, generator=g) < 0.5
    masks[0] = False                                  # an unmasked image counts in B and contributes 0
    masks[1, 0] = True
    student = torch.randn(B, N, K, generator=g)
    targets = torch.softmax(torch.randn(B, N, K, generator=g), -1)
    total = 0.0
    for b in range(B):
        positions = [i for i in range(N) if masks[b, i]]
        if positions:
            total += sum(-(targets[b, i] * torch.log_softmax(student[b, i] / temp, -1)).sum()
                         for i in positions) / len(positions)
    expected = total / B
    got = masked_patch_cross_entropy(student[masks], targets[masks], masks, temp)
    assert torch.allclose(got, expected, atol=1e-6)


def test_unmasked_positions_get_no_gradient():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 8, generator=g) < 0.4
    student = torch.randn(3, 8, 6, generator=g, requires_grad=True)
    targets = torch.softmax(torch.randn(3, 8, 6, generator=g), -1)
    masked_patch_cross_entropy(student[masks], targets[masks], masks).backward()
    assert student.grad[~masks].abs().max() == 0 and student.grad[masks].abs().min() > 0


def test_an_image_with_more_masked_patches_does_not_weigh_more():
    masks = torch.zeros(2, 10, dtype=torch.bool)
    masks[0, :1], masks[1, :9] = True, True
    student = torch.zeros(10, 4)                      # uniform predictions: every token's CE is ln 4 ...
    targets = torch.zeros(10, 4)
    targets[:1, 0] = 1.0                              # ... for image 0's single masked token: CE = ln 4
    targets[1:, :] = 0.25                             # image 1's nine: also ln 4
    student[1:, 0] = 10.0                             # but image 1 predicts word 0 sharply: a higher CE for it
    ce0 = np.log(4)
    ce1 = float(-(targets[1] * torch.log_softmax(student[1] / 0.1, -1)).sum())
    got = masked_patch_cross_entropy(student, targets, masks, 0.1)
    assert torch.allclose(got, torch.tensor((ce0 + ce1) / 2, dtype=torch.float32), atol=1e-5)  # each image 1/2


def test_the_patch_center_is_an_ema_of_the_masked_teacher_outputs():
    loss = iBOTPatchLoss(3, center_momentum=0.9)
    teacher = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    masks = torch.tensor([[True, False], [False, True]])
    loss(torch.zeros(2, 3), teacher, masks, teacher_temp=0.04)  # (loss, stats)
    assert torch.allclose(loss.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))
    targets_before = torch.softmax((teacher - loss.center) / 0.04, -1)  # the next step centres with it
    assert torch.allclose(targets_before.sum(-1), torch.ones(2))


# --- the method on the loop ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("separate", ["false", "true"])
def test_ibot_trains_both_losses_and_resumes_exactly(tmp_path, tiny_data, separate):
    def cfg(name):
        return make_config("smoke", {"method": "ibot", "out_dir": str(tmp_path / name), "knn_every": 0.0,
                                     "linear_probe": False, "knn_bank": 256, "epochs": 1.0,
                                     "separate_heads": separate})
    full = train(cfg("full"), data=tiny_data, show_progress=False)
    train(cfg("split"), data=tiny_data, stop_after=2, show_progress=False)
    resumed = train(cfg("split"), data=tiny_data, show_progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    for h in full["history"]:
        assert h["loss"] == pytest.approx(h["cls_loss"] + h["patch_loss"], rel=1e-5) and h["patch_loss"] > 0
    method = full["method"]
    assert method.patch_loss.center.abs().sum() > 0 and method.loss.center.abs().sum() > 0
    assert hasattr(method, "patch_head") == (separate == "true")
    assert method.backbone.mask_token.abs().sum() > 0  # trained (it starts at zero)
    assert not hasattr(method.teacher, "patch_head") or method.teacher.patch_head is not method.patch_head


def test_an_exported_ibot_backbone_loads_with_its_mask_token(tmp_path, tiny_data):
    from ssl_lessons.export import export_backbone
    from ssl_lessons.pretrained import load_backbone
    cfg = make_config("smoke", {"method": "ibot", "out_dir": str(tmp_path / "run"), "knn_every": 0.0,
                                "linear_probe": False, "knn_bank": 256})
    run = train(cfg, data=tiny_data, show_progress=False)
    export_backbone(tmp_path / "run", "tiny-ibot", directory=tmp_path / "pretrained", expected=cfg)
    backbone, record = load_backbone("tiny-ibot", directory=tmp_path / "pretrained")
    assert record["config"]["method"] == "ibot" and backbone.mask_token is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(x), run["method"].eval_backbone.eval()(x), atol=2e-2)


def test_ibot_refuses_a_resnet_and_bad_mask_settings():
    from ssl_lessons.errors import ConfigError
    with pytest.raises(ConfigError, match="needs backbone=vit"):
        make_config("smoke", {"method": "ibot", "backbone": "resnet18"})
    with pytest.raises(ConfigError, match="mask_ratio_min"):
        make_config("smoke", {"method": "ibot", "mask_ratio_min": "0.6"})


# --- PCA of patch features ----------------------------------------------------------------------------------------

def test_pca_recovers_a_planted_foreground_with_its_sign_and_colours_parts_alike():
    g = torch.Generator().manual_seed(0)
    n, h, w, d = 5, 8, 8, 32
    foreground = torch.zeros(n, h, w, dtype=torch.bool)
    foreground[:, 2:6, 2:6] = True                                # a centred object, background on every border
    foreground[1, 1:7, 3:5] = True                                # of various shapes
    object_dir, part_dir = torch.randn(d, generator=g), torch.randn(d, generator=g)
    features = 0.3 * torch.randn(n, h, w, d, generator=g)
    top = torch.zeros(n, h, w, dtype=torch.bool)
    top[:, :4] = True
    features[foreground] += 3 * object_dir                        # object vs background: the first component
    features[foreground & top] += 1.5 * part_dir                  # two parts of the object: the colours
    result = patch_pca(features)
    assert torch.equal(result.foreground, foreground)
    assert result.rgb.shape == (n, h, w, 3) and result.rgb.min() >= 0 and result.rgb.max() <= 1
    assert (result.rgb[~foreground] == 0).all()                   # background is black
    upper, lower = result.rgb[foreground & top], result.rgb[foreground & ~top]
    # red is the strongest foreground component, the planted part: the same in every image, different between parts
    # (green and blue are the noise's components here)
    assert upper[:, 0].std() < 0.1 and lower[:, 0].std() < 0.1
    assert (upper[:, 0].mean() - lower[:, 0].mean()).abs() > 0.6


def test_the_first_components_sign_makes_the_border_background_whichever_sign_the_solver_gave():
    from ssl_lessons.pca import orient_to_border
    scores = torch.full((2, 6, 6), -1.0)
    scores[:, 2:4, 2:4] = 3.0
    for sign in (1.0, -1.0):
        oriented, flipped = orient_to_border(sign * scores)
        assert torch.equal(oriented, scores) and flipped == (sign < 0)


def test_patch_features_of_our_backbones_and_of_any_timm_vit_at_two_sizes():
    from timm.models.vision_transformer import VisionTransformer
    from ssl_lessons.backbones import ViTBackbone
    from ssl_lessons.pca import patch_features
    torch.manual_seed(0)
    ours = ViTBackbone(img_size=32, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    timm_vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, num_classes=0,
                                 reg_tokens=2, dynamic_img_size=True)
    images = torch.randn(3, 3, 32, 32)
    assert patch_features(ours, images).shape == (3, 8, 8, 16)
    assert patch_features(ours, images, size=64).shape == (3, 16, 16, 16)
    feats = patch_features(timm_vit, images)                  # CLS and 2 registers dropped: 16 patch tokens
    assert feats.shape == (3, 4, 4, 24)
    expected = timm_vit.forward_features(images)[:, timm_vit.num_prefix_tokens:].reshape(3, 4, 4, 24)
    assert torch.allclose(feats, expected)
    assert ours.training and patch_features(ours.eval(), images).shape[0] == 3  # the module's mode is restored
