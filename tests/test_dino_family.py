"""The DINO family against dinov2's code: each rule where our DINOv2 could differ from facebookresearch/dinov2, checked
against a transcription of dinov2's lines on tiny tensors (every recipe field reaching what it configures:
test_recipe_fields.py)."""
import copy
import math
import random

import pytest
import torch
import torch.nn as nn

from ssl_lessons.config import make_config
from ssl_lessons.masking import BatchMasker, MaskingGenerator, max_block_patches
from ssl_lessons.methods import build_method
from ssl_lessons.optim import apply_schedules, drop_frozen_gradients

pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def _dinov2(**overrides):
    cfg = make_config("smoke", {"method": "dinov2", **overrides})
    torch.manual_seed(0)
    return build_method(cfg)


def _images(n=8, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- 1. the head: dinov2's DINOHead trains its weight-norm gain ----------------------------------------------------

class TranscribedDINOv2Head(nn.Module):
    """dinov2/layers/dino_head.py, nlayers 3, no BN: weight_norm(Linear) with weight_g filled with 1 (and trained)."""

    def __init__(self, in_dim, out_dim, hidden_dim, bottleneck_dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2, eps=1e-12)
        return self.last_layer(x)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")  # dinov2's own weight_norm
def test_dinov2s_heads_train_the_last_layers_gain_as_dinov2_does():
    method = _dinov2()
    for head in (method.head, method.patch_head):
        ours = copy.deepcopy(head)
        gain = ours.last_layer.parametrizations.weight.original0
        assert gain.requires_grad and torch.equal(gain, torch.ones_like(gain))
        theirs = TranscribedDINOv2Head(64, gain.shape[0], 64, 32)
        with torch.no_grad():
            for a, b in zip([m for m in ours.mlp if isinstance(m, nn.Linear)], [m for m in theirs.mlp if isinstance(m, nn.Linear)]):
                b.weight.copy_(a.weight), b.bias.copy_(a.bias)
            theirs.last_layer.weight_v.copy_(ours.last_layer.parametrizations.weight.original1)
        x = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
        for model in (ours, theirs):
            opt = torch.optim.AdamW(model.parameters(), lr=0.1)
            (model(x)[:, 0] ** 2).sum().backward()
            opt.step()
        # both gains moved, by the same AdamW step (|step| = lr for a first step): one update of the same rule
        assert torch.allclose(ours.last_layer.parametrizations.weight.original0, theirs.last_layer.weight_g, atol=1e-6)
        assert not torch.allclose(theirs.last_layer.weight_g, torch.ones_like(theirs.last_layer.weight_g))
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    dino_head = build_method(make_config("smoke", {"method": "dino"})).head  # DINO v1 keeps g fixed at 1
    assert not dino_head.last_layer.parametrizations.weight.original0.requires_grad


# --- 2. layer-wise lr decay and weight decay: dinov2's param_groups.py ----------------------------------------------

def transcribed_lr_decay_rate(name, lr_decay_rate=1.0, num_layers=12, force_is_backbone=False, chunked_blocks=False):
    """dinov2/utils/param_groups.py get_vit_lr_decay_rate (after its PR #283, which put register tokens at layer 0)."""
    layer_id = num_layers + 1
    if name.startswith("backbone") or force_is_backbone:
        if (".pos_embed" in name or ".patch_embed" in name or ".mask_token" in name or ".cls_token" in name
                or ".register_tokens" in name):
            layer_id = 0
        elif force_is_backbone and ("pos_embed" in name or "patch_embed" in name or "mask_token" in name
                                    or "cls_token" in name or "register_tokens" in name):
            layer_id = 0
        elif ".blocks." in name and ".residual." not in name:
            layer_id = int(name[name.find(".blocks."):].split(".")[2]) + 1
        elif chunked_blocks and "blocks." in name and "residual." not in name:
            layer_id = int(name[name.find("blocks."):].split(".")[2]) + 1
        elif "blocks." in name and "residual." not in name:
            layer_id = int(name[name.find("blocks."):].split(".")[1]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def transcribed_params_groups(model, n_blocks, lr_decay_rate, patch_embed_lr_mult):
    """get_params_groups_with_decay on one student part: {name: (lr_multiplier, wd_multiplier, is_last_layer)}.
    timm names dinov2's `register_tokens` `reg_token`."""
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        theirs = name.replace("vit.", "").replace("reg_token", "register_tokens")
        lr = transcribed_lr_decay_rate(theirs, lr_decay_rate, num_layers=n_blocks, force_is_backbone=n_blocks > 0)
        wd = 0.0 if (theirs.endswith(".bias") or "norm" in theirs or "gamma" in theirs) else 1.0
        if "patch_embed" in theirs:
            lr *= patch_embed_lr_mult
        out[name] = (lr, wd, "last_layer" in theirs)
    return out


def test_parameter_groups_give_every_parameter_dinov2s_lr_and_weight_decay_multipliers():
    method = _dinov2(register_tokens="2", layerscale_init="0.1", layer_decay="0.7", depth="3")
    ours = {}
    for group in method.param_groups():
        for p in group["params"]:
            ours[id(p)] = (group["lr_multiplier"], 1.0 if group["apply_wd"] else 0.0, group["frozen_until"] > 0)
    checked = 0
    for part_name, part in method.student.items():
        n_blocks = len(part.vit.blocks) if part_name == "backbone" else 0
        for name, expected in transcribed_params_groups(part, n_blocks, 0.7, 0.2).items():
            got = ours[id(part.get_parameter(name))]
            assert math.isclose(got[0], expected[0], rel_tol=1e-12) and got[1:] == expected[1:], (part_name, name)
            checked += 1
    assert checked == len(ours)  # every trainable parameter, the register tokens (layer 0: x 0.7^4) among them
    assert math.isclose(ours[id(method.backbone.vit.reg_token)][0], 0.7 ** 4)


# --- 3. gradient clipping: the total norm of each student part --------------------------------------------------------

def test_dinov2_clips_each_student_parts_total_gradient_norm_as_dinov2_does():
    method = _dinov2()
    transcribed = copy.deepcopy(method)
    crops = method.make_views(_images(), torch.Generator().manual_seed(0))
    for model in (method, transcribed):
        loss, _ = model(crops)
        (1000 * loss).backward()                               # large gradients: clipping has work to do
    for v in transcribed.student.values():                     # dinov2 train.py: v.clip_grad_norm_(clip_grad)
        torch.nn.utils.clip_grad_norm_(v.parameters(), 3.0)
    method.clip_gradients(3.0)
    for (name, a), b in zip(method.named_parameters(), transcribed.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-9), name
    for part in method.student.values():
        norm = torch.stack([p.grad.norm() for p in part.parameters() if p.grad is not None]).norm()
        assert math.isclose(norm.item(), 3.0, rel_tol=1e-4)   # each part's total, not each tensor
    dino = build_method(make_config("smoke", {"method": "dino"}))
    loss, _ = dino(dino.make_views(_images(), torch.Generator().manual_seed(0)))
    (1000 * loss).backward()
    dino.clip_gradients(3.0)                                   # DINO v1: each tensor on its own
    assert all(p.grad.norm() <= 3.0 * (1 + 1e-5) for p in dino.parameters() if p.grad is not None)
    assert sum(p.grad.norm() > 2.9 for p in dino.parameters() if p.grad is not None) > 3


# --- 4. the frozen last layer: lr 0, AdamW's moments keep moving ----------------------------------------------------

def test_the_last_layer_is_frozen_by_a_zero_lr_as_dinov2_does():
    method = _dinov2(freeze_last_layer="0.5")
    transcribed = copy.deepcopy(method)
    ours_opt = torch.optim.AdamW(method.param_groups())
    groups = method.param_groups()                             # the same grouping, held by dinov2's rule
    their_groups = [dict(g, params=[dict(transcribed.named_parameters())[n] for n, p in method.named_parameters()
                                    if any(p is q for q in g["params"])]) for g in groups]
    their_opt = torch.optim.AdamW(their_groups)
    images = _images(16)
    for step, progress in enumerate((0.1, 0.3, 0.6)):          # frozen, frozen, free
        lr, wd = 1e-3, 0.04
        apply_schedules(ours_opt, lr, wd, progress)
        for g in their_opt.param_groups:                       # dinov2's apply_optim_scheduler
            is_last_layer = g["frozen_until"] > 0
            last_layer_lr = 0.0 if progress < 0.5 else lr      # last_layer_lr_schedule[:freeze] = 0
            g["weight_decay"] = wd if g["apply_wd"] else 0.0
            g["lr"] = (last_layer_lr if is_last_layer else lr) * g["lr_multiplier"]
        for model, opt, drop in ((method, ours_opt, True), (transcribed, their_opt, False)):
            crops = model.make_views(images, torch.Generator().manual_seed(step))
            loss, _ = model(crops)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if drop:
                drop_frozen_gradients(opt, progress)
            opt.step()
    last = method.head.last_layer.parametrizations.weight.original1
    their_last = transcribed.head.last_layer.parametrizations.weight.original1
    assert ours_opt.state[last]["step"].item() == their_opt.state[their_last]["step"].item() == 3
    for a, b in zip(method.parameters(), transcribed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(ours_opt.state[last]["exp_avg_sq"], their_opt.state[their_last]["exp_avg_sq"], rtol=1e-4)


def test_dino_v1_drops_the_frozen_last_layers_gradients_instead():
    method = build_method(make_config("smoke", {"method": "dino", "freeze_last_layer": "0.5"}))
    optimizer = torch.optim.AdamW(method.param_groups())
    loss, _ = method(method.make_views(_images(), torch.Generator().manual_seed(0)))
    loss.backward()
    drop_frozen_gradients(optimizer, 0.1)
    optimizer.step()
    last = method.head.last_layer.parametrizations.weight.original1
    assert last.grad is None and last not in optimizer.state  # AdamW skipped it: no moments, no step count


# --- 5. block masks: dinov2's maximum block and generator -----------------------------------------------------------

class TranscribedMaskingGenerator:
    """dinov2/data/masking.py MaskingGenerator, with its `random` module passed in and numpy replaced by torch."""

    def __init__(self, input_size, max_num_patches, min_num_patches=4, min_aspect=0.3):
        self.height, self.width = input_size
        self.min_num_patches, self.max_num_patches = min_num_patches, max_num_patches
        self.log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))

    def _mask(self, mask, max_mask_patches, random):
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches, random):
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        mask_count = 0
        while mask_count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches, random)
            if delta == 0:
                break
            mask_count += delta
        return mask


@pytest.mark.parametrize("img_size,patch_size", [(518, 14), (224, 14), (224, 16), (32, 4), (48, 4), (36, 4)])
def test_the_largest_mask_block_floors_as_dinov2s_train_py_does(img_size, patch_size):
    expected = 0.5 * img_size // patch_size * img_size // patch_size     # dinov2/train/train.py, verbatim
    assert max_block_patches(img_size, patch_size) == int(expected)
    assert BatchMasker(img_size, patch_size).generator.max_block == int(expected)
    if (img_size, patch_size) == (518, 14):
        assert int(expected) == 666 and int(0.5 * 37 * 37) == 684       # half of the grid would be 684


def test_block_masks_are_dinov2s_masks_from_the_same_random_draws():
    grid, max_block = (9, 9), max_block_patches(36, 4)
    ours, theirs = MaskingGenerator(grid, min_block=4, max_block=max_block), TranscribedMaskingGenerator(grid, max_block)
    for seed in range(40):
        target = 4 + seed % 37
        assert torch.equal(ours(target, random.Random(seed)), theirs(target, random.Random(seed))), seed


def test_distillation_refuses_the_fields_its_teacher_decides():
    from ssl_lessons.errors import ConfigError
    for key, value in (("out_dim", "32"), ("mask_probability", "0.3"), ("separate_heads", "false")):
        with pytest.raises(ConfigError, match=f"does not take {key}"):
            make_config("smoke", {"method": "distill", key: value})


def test_centering_is_one_setting_for_both_losses():
    for centering in ("ema", "sinkhorn_knopp", "none"):
        for name in ("ibot", "dinov2"):
            method = build_method(make_config("smoke", {"method": name, "centering": centering,
                                                        "sinkhorn_iterations": "5"}))
            assert method.loss.centering == method.patch_loss.centering == centering
            assert method.loss.sinkhorn_iterations == method.patch_loss.sinkhorn_iterations == 5
    method = build_method(make_config("smoke", {"method": "ibot", "centering": "none"}))
    method(method.make_views(_images(), torch.Generator().manual_seed(0)))
    assert not method.loss.center.any() and not method.patch_loss.center.any()   # neither center moved


def test_the_momentum_teacher_is_one_copy_of_the_student():
    method = build_method(make_config("smoke", {"method": "ibot", "separate_heads": "true"}))
    assert list(method.teacher) == list(method.student) == ["backbone", "head", "patch_head"]
    for (a, p), (b, q) in zip(method.student.named_parameters(), method.teacher.named_parameters()):
        assert a == b and torch.equal(p, q) and p.data_ptr() != q.data_ptr() and not q.requires_grad
