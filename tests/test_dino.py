import math

import pytest
import torch
import torch.nn.functional as F

from ssl_lessons.attention import cls_attention_maps, keep_attention_mass, upsample_maps
from ssl_lessons.backbones import build_backbone
from ssl_lessons.config import ConfigError, make_config
from ssl_lessons.heads import DINOHead
from ssl_lessons.losses.dino import DINOLoss, cross_view_cross_entropy, teacher_targets
from ssl_lessons.methods import build_method
from ssl_lessons.methods.dino import teacher_temperature
from ssl_lessons.studies import collapse_study_configs
from ssl_lessons.teacher import momentum_schedule


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def direct_dino_loss(student, teacher, center, tau_s, tau_t):
    """Eq. 3 written out with explicit exponentials, sample by sample, in float64."""
    student, teacher, center = [s.double() for s in student], [t.double() for t in teacher], center.double()
    n_views, n_global, batch = len(student), len(teacher), student[0].shape[0]
    total, pairs = 0.0, 0
    for t in range(n_global):
        for s in range(n_views):
            if s == t:
                continue
            for b in range(batch):
                e_t = torch.exp((teacher[t][b] - center[0]) / tau_t)
                p_t = e_t / e_t.sum()
                e_s = torch.exp(student[s][b] / tau_s)
                log_p_s = torch.log(e_s / e_s.sum())
                total += -(p_t * log_p_s).sum().item() / batch
            pairs += 1
    return total / pairs


def test_dino_loss_equals_a_direct_implementation():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(5, 7, generator=g) for _ in range(4)]   # 2 global + 2 local views, B=5, K=7
    teacher = [torch.randn(5, 7, generator=g) for _ in range(2)]
    loss_fn = DINOLoss(7, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, 7, generator=g))
    expected = direct_dino_loss(student, teacher, loss_fn.center.clone(), 0.1, 0.04)
    loss, _ = loss_fn(student, teacher, teacher_temp=0.04)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_same_view_pairs_are_excluded():
    g = torch.Generator().manual_seed(1)
    s0, s1 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    p0, p1 = F.softmax(torch.randn(3, 4, generator=g), -1), F.softmax(torch.randn(3, 4, generator=g), -1)

    def ce(p, s):
        return -(p * F.log_softmax(s / 0.1, -1)).sum(-1).mean()

    loss = cross_view_cross_entropy([s0, s1], [p0, p1], 0.1)
    assert torch.allclose(loss, (ce(p0, s1) + ce(p1, s0)) / 2)
    # changing student view 0 changes only the pair (teacher 1, student 0): view 0 never predicts itself
    loss_b = cross_view_cross_entropy([s0 + 5 * torch.randn(3, 4, generator=g), s1], [p0, p1], 0.1)
    assert not torch.allclose(loss, loss_b)
    assert torch.allclose(cross_view_cross_entropy([s0, s1], [p0], 0.1), ce(p0, s1))


def test_uniform_teacher_and_student_give_ln_k_and_zero_kl():
    k = 16
    loss, stats = DINOLoss(k)([torch.zeros(4, k)] * 3, [torch.zeros(4, k)] * 2, 0.04)
    assert math.isclose(loss.item(), math.log(k), rel_tol=1e-6)
    assert math.isclose(stats["teacher_entropy"], math.log(k), rel_tol=1e-6) and abs(stats["kl"]) < 1e-5


def test_loss_splits_into_teacher_entropy_plus_kl():
    g = torch.Generator().manual_seed(2)
    student = [torch.randn(6, 10, generator=g) for _ in range(3)]
    teacher = [torch.randn(6, 10, generator=g) for _ in range(2)]
    loss, stats = DINOLoss(10)(student, teacher, 0.07)
    targets = [teacher_targets(t, torch.zeros(1, 10), 0.07) for t in teacher]
    entropy = sum(-(p * p.log()).sum(-1).mean() for p in targets) / 2
    assert math.isclose(stats["teacher_entropy"], entropy.item(), rel_tol=1e-5)
    assert math.isclose(stats["teacher_entropy"] + stats["kl"], loss.item(), rel_tol=1e-6)
    assert stats["kl"] > 0


def test_center_moves_by_the_ema_formula_after_the_loss_not_before():
    g = torch.Generator().manual_seed(3)
    student = [torch.randn(4, 5, generator=g) for _ in range(3)]
    teacher = [torch.randn(4, 5, generator=g) for _ in range(2)]
    loss_fn = DINOLoss(5, center_momentum=0.9)
    old_center = torch.randn(1, 5, generator=g)
    loss_fn.center.copy_(old_center)
    loss, _ = loss_fn(student, teacher, 0.04)
    with_old = cross_view_cross_entropy(student, [teacher_targets(t, old_center, 0.04) for t in teacher], 0.1)
    assert torch.allclose(loss, with_old)  # the loss used the center from before this batch
    expected = 0.9 * old_center + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True)
    assert torch.allclose(loss_fn.center, expected, atol=1e-6)
    new_center = torch.cat(teacher).mean(dim=0, keepdim=True)
    with_new = cross_view_cross_entropy(student, [teacher_targets(t, new_center, 0.04) for t in teacher], 0.1)
    assert not torch.allclose(loss, with_new)


def test_centering_off_leaves_the_center_at_zero():
    loss_fn = DINOLoss(5, centering="none")
    loss_fn([torch.randn(2, 5)] * 3, [torch.randn(2, 5) + 3] * 2, 0.04)
    assert torch.equal(loss_fn.center, torch.zeros(1, 5))


def test_centering_and_sharpening_pull_the_teacher_opposite_ways():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]] * 8)  # every sample favours output 0
    entropy = lambda p: -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item()  # noqa: E731
    plain = teacher_targets(logits, torch.zeros(1, 4), 1.0)
    centred = teacher_targets(logits, logits.mean(0, keepdim=True), 1.0)   # subtracting the batch mean
    sharpened = teacher_targets(logits, torch.zeros(1, 4), 0.04)
    assert math.isclose(entropy(centred), math.log(4), rel_tol=1e-6)      # centering: towards uniform
    assert entropy(sharpened) < 1e-3 < entropy(plain)                     # sharpening: towards one-hot


def test_teacher_temperature_and_momentum_schedules_hit_their_ends():
    assert teacher_temperature(0.0, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(0.15, 0.04, 0.07, 0.3) == pytest.approx(0.055)   # linear
    assert teacher_temperature(0.3, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0.99, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0.5, 0.04, 0.07, 0.0) == pytest.approx(0.07)
    assert momentum_schedule(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_schedule(1.0, 0.996, 1.0) == pytest.approx(1.0)
    assert momentum_schedule(0.5, 0.996, 1.0) == pytest.approx(0.998)


def test_dino_config_follows_main_dino_and_rejects_bad_values():
    cfg = make_config("smoke", {"method": "dino"})
    r = cfg.recipe
    assert (cfg.weight_decay, cfg.weight_decay_end, cfg.clip_grad) == (0.04, 0.4, 3.0)
    assert (r.student_temp, r.teacher_temp_start, r.teacher_temp, r.center_momentum) == (0.1, 0.04, 0.07, 0.9)
    assert cfg.global_pool == "token" and (r.global_scale_min, r.local_scale_min) == (0.4, 0.05)
    laptop = make_config("cifar10-laptop", {"method": "dino"}).recipe
    assert laptop.teacher_temp == laptop.teacher_temp_start == 0.04  # main_dino.py's default, no warm-up
    assert make_config("cifar10-laptop").weight_decay == 0.05  # DINO's recipe stays with DINO
    with pytest.raises(ConfigError, match="teacher_temp_warmup"):
        make_config("smoke", {"method": "dino", "teacher_temp_warmup": "1.5"})
    with pytest.raises(ConfigError, match="student_temp"):
        make_config("smoke", {"method": "dino", "student_temp": "0"})


def test_dino_head_last_layer_keeps_unit_norm_after_an_optimizer_step():
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    g_param = head.last_layer.parametrizations.weight.original0
    assert not g_param.requires_grad
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.5)
    out = head(torch.randn(10, 16))
    assert out.shape == (10, 32) and out.abs().max() <= 1 + 1e-5  # cosines
    (out ** 2).sum().backward()
    opt.step()
    row_norms = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(row_norms, torch.ones(32), atol=1e-5)
    free = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def _smoke_dino(**overrides):
    cfg = make_config("smoke", {"method": "dino", **overrides})
    torch.manual_seed(0)
    return cfg, build_method(cfg)


def test_last_layer_gradients_are_dropped_while_frozen_only():
    from ssl_lessons.optim import drop_frozen_gradients
    _, method = _smoke_dino(freeze_last_layer="0.1")
    optimizer = torch.optim.AdamW(method.param_groups())
    crops = method.make_views(torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8))
    for progress, frozen in ((0.05, True), (0.5, False)):
        method.zero_grad(set_to_none=True)
        loss, _ = method(crops)
        loss.backward()
        drop_frozen_gradients(optimizer, progress)
        last = [p.grad for p in method.head.last_layer.parameters() if p.requires_grad]
        assert last and all(g is None for g in last) == frozen
        assert method.head.mlp[0].weight.grad is not None  # the rest of the head still learns


def test_dino_step_teacher_sees_globals_only_and_follows_the_student():
    _, method = _smoke_dino()
    images = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    crops = method.make_views(images)
    assert crops.n_views == 2 + method.crops.n_local and crops.local_crops.shape[-1] == 16
    calls = []
    hook = method.teacher.backbone.vit.patch_embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    loss, logs = method(crops, diagnostics=True)
    hook.remove()
    assert calls == [(16, 3, 32, 32)]  # the two global views, batched
    assert {"teacher_entropy", "kl", "teacher_temp"} <= logs.keys() and logs["teacher_temp"] == pytest.approx(0.04)
    loss.backward()
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = next(method.teacher.backbone.parameters()).clone()
    method.after_step(0.0)  # momentum 0.99 at the smoke preset's start? whatever it is, it is < 1
    after = next(method.teacher.backbone.parameters())
    student = next(method.backbone.parameters())
    assert (after - before).abs().max() > 0 and (student - after).abs().max() < (student - before).abs().max()
    assert method.eval_backbone is method.teacher.backbone


def test_collapse_study_has_the_four_runs_of_fig_7():
    configs = collapse_study_configs("dino", "smoke")
    assert list(configs) == ["full DINO", "no centering", "no sharpening", "neither"]
    assert configs["no sharpening"].recipe.teacher_temp == configs["no sharpening"].recipe.student_temp
    assert configs["neither"].recipe.centering == "none" and configs["full DINO"].recipe.centering == "ema"
    assert len({c.preset for c in configs.values()}) == 4  # separate run folders


# --- attention maps --------------------------------------------------------------------------------------------

def test_cls_attention_maps_shape_range_and_sensitivity():
    torch.manual_seed(0)
    vit = build_backbone("vit", patch_size=4, embed_dim=32, depth=2, num_heads=4, global_pool="token").eval()
    images = torch.randn(3, 3, 32, 32)
    maps = cls_attention_maps(vit, images)
    assert maps.shape == (3, 4, 8, 8)
    sums = maps.sum(dim=(-1, -2))
    assert (maps >= 0).all() and (sums <= 1 + 1e-5).all() and (sums > 0).all()
    other = cls_attention_maps(vit, images.flip(-1) + torch.randn_like(images))
    assert not torch.allclose(maps, other)


def test_cls_attention_maps_work_for_any_timm_vit_with_registers():
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=48, patch_size=8, embed_dim=32, depth=2, num_heads=2, reg_tokens=4,
                            num_classes=0).eval()
    for block in vit.blocks:
        block.attn.fused_attn = True
    maps = cls_attention_maps(vit, torch.randn(2, 3, 48, 48))
    assert maps.shape == (2, 2, 6, 6)
    assert all(block.attn.fused_attn is True for block in vit.blocks)  # the fused path is switched back on
    assert (maps.sum(dim=(-1, -2)) < 1).all()  # registers and CLS take the rest
    upsampled = upsample_maps(maps, (48, 48))
    assert upsampled.shape == (2, 2, 48, 48) and torch.equal(upsampled[..., :8, :8].amax((-1, -2)), maps[..., 0, 0])


def test_keep_attention_mass_is_the_smallest_set_holding_the_mass():
    maps = torch.tensor([[[0.5, 0.2], [0.2, 0.1]]])  # (1, 2, 2)
    keep = keep_attention_mass(maps, mass=0.6)
    assert keep.tolist() == [[[True, True], [False, False]]] or keep.tolist() == [[[True, False], [True, False]]]
    assert keep.sum() == 2  # 0.5 alone is too little, 0.5 + 0.2 is enough
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 3, 8, 8, generator=g) ** 4
    keep = keep_attention_mass(maps, 0.6)
    kept = (maps * keep).sum((-1, -2)) / maps.sum((-1, -2))
    assert (kept >= 0.6 - 1e-6).all()
    flat_sorted = maps.flatten(-2).sort(-1, descending=True).values
    assert torch.equal(keep.flatten(-2).sum(-1), (flat_sorted.cumsum(-1) / maps.flatten(-2).sum(-1, keepdim=True)
                                                 < 0.6).sum(-1) + 1)


def test_dino_runs_on_the_cifar_resnet_alternative():
    _, method = _smoke_dino(backbone="resnet18")
    crops = method.make_views(torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8))
    loss, logs = method(crops)
    loss.backward()
    assert math.isfinite(loss.item()) and method.backbone.net.conv1.weight.grad is not None
    assert method.head.mlp[0].in_features == 512
