"""Lesson 6: DINOv2's Sinkhorn-Knopp centering, KoLeo term, optimisation rules, high-resolution phase and
distillation, each against its formula or its invariant."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_lessons.checkpoint import load_checkpoint
from ssl_lessons.config import make_config, peak_lr
from ssl_lessons.errors import ConfigError
from ssl_lessons.losses.dino import DINOLoss, sinkhorn_targets
from ssl_lessons.losses.ibot import iBOTPatchLoss
from ssl_lessons.methods import build_method
from ssl_lessons.methods.dinov2 import feature_uniformity
from ssl_lessons.train import train

from conftest import write_teacher


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def sinkhorn_transcribed(teacher_output, teacher_temp, n_iterations=3):
    """dinov2's DINOLoss.sinkhorn_knopp_teacher, one process, line by line (Q is K x B)."""
    Q = torch.exp(teacher_output / teacher_temp).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= Q.sum()
    for _ in range(n_iterations):
        Q /= Q.sum(dim=1, keepdim=True)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def test_sinkhorn_codes_sum_to_one_per_sample_and_balance_the_prototypes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=g) * 0.5
    logits[:, 0] += 0.5                                       # one prototype preferred by every sample
    codes = sinkhorn_targets(logits, teacher_temp=0.1, iterations=3)
    assert torch.allclose(codes.sum(dim=1), torch.ones(64), atol=1e-5)   # a distribution per sample
    softmax_mass = F.softmax(logits / 0.1, dim=1).sum(dim=0)
    mass = codes.sum(dim=0)             # B / K = 8 each, up to 3 iterations' tolerance: far nearer than softmax's
    assert (mass - 8).abs().max() < 0.5 * (softmax_mass - 8).abs().max()
    assert torch.allclose(sinkhorn_targets(logits, 0.1, iterations=50).sum(dim=0), torch.full((8,), 8.0), atol=1e-3)
    assert torch.allclose(codes, sinkhorn_transcribed(logits, 0.1), atol=1e-6)


def test_dinov2_cls_loss_with_sinkhorn_equals_the_transcribed_equation():
    g = torch.Generator().manual_seed(1)
    B, K, temp, student_temp = 6, 5, 0.07, 0.1
    teacher = [torch.randn(B, K, generator=g) for _ in range(2)]
    student = [torch.randn(B, K, generator=g) for _ in range(4)]      # 2 global + 2 local crops
    loss, _ = DINOLoss(K, student_temp, centering="sinkhorn_knopp")(student, teacher, temp)
    # the codes of both global crops together, then every (teacher crop t, student crop s != t) pair
    q = sinkhorn_transcribed(torch.cat(teacher), temp).chunk(2)
    pairs = [-(q[t] * F.log_softmax(student[s] / student_temp, dim=-1)).sum(-1).mean()
             for t in range(2) for s in range(4) if s != t]
    assert torch.allclose(loss, torch.stack(pairs).mean(), atol=1e-6)
    assert torch.equal(DINOLoss(K, centering="sinkhorn_knopp").center, torch.zeros(1, K))  # no state to keep


def test_dinov2_patch_loss_with_sinkhorn_equals_the_transcribed_equation():
    g = torch.Generator().manual_seed(2)
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, :2] = True
    masks[2, 1:5] = True                                       # image 1 unmasked: it adds 0, but counts in B
    M, K, temp = int(masks.sum()), 4, 0.05
    student, teacher = torch.randn(M, K, generator=g), torch.randn(M, K, generator=g)
    loss_fn = iBOTPatchLoss(K, student_temp=0.1, centering="sinkhorn_knopp")
    loss, _ = loss_fn(student, teacher, masks, temp)
    q = sinkhorn_transcribed(teacher, temp)                    # over the M masked tokens of the whole batch
    ce = -(q * F.log_softmax(student / 0.1, dim=-1)).sum(-1)
    expected = (ce[:2].mean() + ce[2:].mean()) / 3
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.equal(loss_fn.center, torch.zeros(1, K))


def test_dinov2_loss_is_cls_plus_patch_plus_koleo_on_each_global_crop():
    from ssl_lessons.losses.koleo import KoLeoLoss
    torch.manual_seed(0)
    cfg = make_config("smoke", {"method": "dinov2"})
    method = build_method(cfg)
    crops = method.make_views(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))
    loss, logs = method(crops, diagnostics=True)
    assert set(logs) >= {"cls_loss", "patch_loss", "koleo_loss"}
    assert torch.allclose(loss, logs["cls_loss"] + logs["patch_loss"] + logs["koleo_loss"], atol=1e-5)
    with torch.no_grad():
        cls = method.student_tokens(crops)[0]["cls"]
    koleo = 0.1 * (KoLeoLoss()(cls[:8]) + KoLeoLoss()(cls[8:]))
    assert torch.allclose(logs["koleo_loss"], koleo, atol=1e-5)
    assert hasattr(method, "patch_head") and method.loss.centering == method.patch_loss.centering == "sinkhorn_knopp"
    without = build_method(make_config("smoke", {"method": "dinov2", "koleo_loss_weight": "0",
                                                 "centering": "ema", "separate_heads": "false"}))
    _, logs = without(crops, diagnostics=True)
    assert "koleo_loss" not in logs and without.loss.centering == "ema" and not hasattr(without, "patch_head")


def test_layerscale_starts_every_block_near_the_identity():
    torch.manual_seed(0)
    backbone = build_method(make_config("smoke", {"method": "dinov2"})).backbone
    vit = backbone.vit
    x = torch.randn(2, 17, 64)
    for block in vit.blocks:
        assert torch.allclose(block.ls1.gamma, torch.full((64,), 1e-5))
        assert (block(x) - x).abs().max() < 1e-3 * x.abs().max()       # x + 1e-5 * f(x): almost x


def test_dinov2_optimisation_rules():
    cfg = make_config("smoke", {"method": "dinov2"})
    assert cfg.lr_scaling == "sqrt" and peak_lr(cfg) == pytest.approx(0.004 * math.sqrt(64 / 1024))
    assert peak_lr(make_config("smoke", {"method": "dino"})) == pytest.approx(1e-3 * 64 / 256)  # linear stays
    assert (cfg.weight_decay, cfg.weight_decay_end, cfg.layerscale_init) == (0.04, 0.4, 1e-5)
    assert cfg.recipe.teacher_momentum == 0.992 and cfg.recipe.teacher_momentum_end == 1.0
    method = build_method(cfg)
    depth = cfg.depth
    by_name = {}
    for group in method.param_groups():
        for p in group["params"]:
            by_name[id(p)] = group["lr_multiplier"]
    named = dict(method.named_parameters())
    assert by_name[id(named["backbone.vit.patch_embed.proj.weight"])] == pytest.approx(0.2 * 0.9 ** (depth + 1))
    assert by_name[id(named["backbone.vit.blocks.0.attn.qkv.weight"])] == pytest.approx(0.9 ** depth)
    assert by_name[id(named["backbone.vit.blocks.1.attn.qkv.weight"])] == pytest.approx(0.9 ** (depth - 1))
    assert by_name[id(named["patch_head.mlp.0.weight"])] == by_name[id(named["head.mlp.0.weight"])] == 1.0
    with pytest.raises(ConfigError, match="lr_scaling"):
        make_config("smoke", {"method": "dinov2", "lr_scaling": "cube"})


def test_position_embeddings_resample_to_a_larger_image_and_leave_the_original_size_untouched():
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    backbone = build_method(make_config("smoke", {"method": "dinov2", "patch_size": "4"})).backbone.eval()
    fixed = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=0,
                              global_pool="token", init_values=1e-5).eval()
    fixed.load_state_dict(backbone.vit.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(backbone.forward_tokens(x)["cls"], fixed.forward_features(x)[:, 0])   # no resampling at 32
    big = torch.randn(2, 3, 48, 48)
    tokens = backbone.forward_tokens(big)
    assert tokens["patch"].shape == (2, 144, 64)
    vit = backbone.vit                                             # by hand: timm's bicubic resampling to 12 x 12
    pos = resample_abs_pos_embed(vit.pos_embed, (12, 12), num_prefix_tokens=1)
    t = vit.patch_embed(big).flatten(1, 2)
    t = torch.cat([vit.cls_token.expand(2, -1, -1), t], dim=1) + pos
    assert torch.allclose(tokens["cls"], vit.norm(vit.blocks(t))[:, 0], atol=1e-5)


def test_the_high_resolution_phase_switches_the_global_crops_and_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    from ssl_lessons.methods.dinov2 import DINOv2
    common = {"method": "dinov2", "epochs": "1.0", "knn_every": "0", "linear_probe": "false", "knn_bank": "256",
              "highres_size": "48", "highres_fraction": "0.5"}        # 4 steps: the last 2 at 48 px
    cfg = make_config("smoke", {**common, "out_dir": str(tmp_path / "whole")})
    sizes = []
    original = DINOv2.set_global_size

    def spy(self, size):
        sizes.append(size)
        original(self, size)
    monkeypatch.setattr(DINOv2, "set_global_size", spy)
    whole = train(cfg, data=tiny_data, show_progress=False)
    assert sizes == [32, 48]                                      # built at 32, switched once, at step 2
    before = load_checkpoint(tmp_path / "whole" / "checkpoint-before-highres.pt")
    assert before["step"] == 2 and whole["method"].crops.global_size == 48
    split_cfg = make_config("smoke", {**common, "out_dir": str(tmp_path / "split")})
    assert train(split_cfg, data=tiny_data, stop_after=3, show_progress=False)["result"] is None   # inside the phase
    resumed = train(split_cfg, data=tiny_data, show_progress=False)
    assert resumed["method"].crops.global_size == 48
    for name, tensor in whole["method"].state_dict().items():
        assert torch.equal(tensor, resumed["method"].state_dict()[name]), name


def test_the_high_resolution_phase_runs_every_schedule_again_compressed(tiny_data, tmp_path):
    from ssl_lessons.train import schedule_progress
    assert schedule_progress(3, 10, None) == (0.3, False)
    assert schedule_progress(3, 10, 6) == (0.5, False) and schedule_progress(6, 10, 6) == (0.0, True)
    assert schedule_progress(9, 10, 6) == (0.75, True)
    cfg = make_config("smoke", {"method": "dinov2", "epochs": "2.0", "knn_every": "0", "linear_probe": "false",
                                "dense_probe": "false", "knn_bank": "256", "highres_size": "48",
                                "highres_fraction": "0.5", "teacher_temp_start": "0.04", "teacher_temp": "0.07",
                                "out_dir": str(tmp_path / "run")})        # 8 steps: the last 4 at 48 px
    history = train(cfg, data=tiny_data, show_progress=False)["history"]
    lr, wd, temp = ([h[k] for h in history] for k in ("lr", "weight_decay", "teacher_temp"))
    assert len(lr) == 8 and lr[0] == lr[4] == 0.0                        # the warm-up starts again at 0 ...
    assert 0.4 * lr[1] < lr[5] < 0.6 * lr[1]                              # ... to half the peak (highres_lr_scale)
    assert wd[0] == wd[4] and math.isclose(wd[4], 0.04, rel_tol=1e-9) and wd[3] > 0.2   # 0.04 -> 0.4, again
    # and the temperature (logged through a float32 tensor: 1e-6 relative is a few float32 ulps)
    assert temp[0] == temp[4] and math.isclose(temp[4], 0.04, rel_tol=1e-6)
    assert math.isclose(temp[3], 0.07, rel_tol=1e-6)


def test_high_resolution_settings_are_checked():
    for bad, message in (({"highres_size": "48"}, "both"), ({"highres_size": "30", "highres_fraction": "0.1"}, "exceed"),
                         ({"highres_size": "36", "highres_fraction": "0.1"}, "multiple")):
        with pytest.raises(ConfigError, match=message):
            make_config("smoke", {"method": "dino", **bad})


def test_feature_uniformity_is_the_mean_log_nearest_neighbour_distance():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])   # a square on the circle: NN at sqrt(2)
    assert feature_uniformity(x) == pytest.approx(math.log(math.sqrt(2)), abs=1e-6)
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    assert feature_uniformity(clustered) < feature_uniformity(x)


# --- distillation -------------------------------------------------------------------------------------------

def test_export_heads_load_back_as_the_teachers_heads(tmp_path):
    from ssl_lessons.pretrained import load_backbone_and_heads
    path, method = write_teacher(tmp_path)
    backbone, heads, record = load_backbone_and_heads(path)
    assert set(heads) == {"head", "patch_head"} and "heads" not in record
    x = torch.randn(5, 32)
    assert torch.allclose(heads["patch_head"](x), method.teacher.patch_head.half().float()(x), atol=1e-6)


def test_distillation_freezes_the_teacher_and_evaluates_the_ema_student(tmp_path, tiny_data):
    path, _ = write_teacher(tmp_path)
    cfg = make_config("smoke", {"method": "distill", "teacher": path, "out_dir": str(tmp_path / "run"),
                                "epochs": "0.5", "knn_every": "0", "linear_probe": "false", "knn_bank": "256"})
    torch.manual_seed(cfg.seed)
    start = build_method(cfg)
    teacher_before = {k: v.clone() for k, v in start.teacher.state_dict().items()}
    assert all(not p.requires_grad for p in start.teacher.parameters())
    assert start.eval_backbone is start.ema.backbone and start.eval_backbone is not start.backbone
    crops = start.make_views(tiny_data.train_images[:8], torch.Generator().manual_seed(0))
    assert not crops.masks.all() and (crops.masks.sum(1) == 16).all()   # a quarter of the 64 positions, per crop
    loss, _ = start(crops)
    loss.backward()
    assert all(p.grad is None for p in start.teacher.parameters())
    run = train(cfg, data=tiny_data, show_progress=False)
    method = run["method"]
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k                       # never changed
    student, ema = method.backbone.state_dict(), method.ema.backbone.state_dict()
    key = "vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(student[key], ema[key])                        # the EMA lags the student ...
    assert not torch.equal(ema[key], start.backbone.state_dict()[key])    # ... but follows it
    assert method.teacher.training is False and run["result"]["steps"] == 2


def test_distillation_refuses_a_teacher_without_heads_and_stochastic_depth(tmp_path):
    path, _ = write_teacher(tmp_path, with_heads=False)
    with pytest.raises(FileNotFoundError, match="no heads"):
        build_method(make_config("smoke", {"method": "distill", "teacher": path}))
    with pytest.raises(ConfigError, match="stochastic depth"):
        make_config("smoke", {"method": "distill", "teacher": path, "drop_path_rate": "0.1"})


def test_patch_token_norms_are_taken_before_the_final_norm_without_cls_or_registers():
    from ssl_lessons.attention import patch_token_norms
    torch.manual_seed(0)
    backbone = build_method(make_config("smoke", {"method": "dinov2", "register_tokens": "2"})).backbone.eval()
    with torch.no_grad():
        backbone.vit.norm.weight.mul_(3)                 # the final LayerNorm must not be what is measured
    x = torch.randn(2, 3, 32, 32)
    norms = patch_token_norms(backbone, x)
    vit = backbone.vit
    stream = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))   # (2, 1 + 2 + 16, D)
    assert norms.shape == (2, 4, 4)
    assert torch.allclose(norms.flatten(1), stream[:, 3:].norm(dim=-1), atol=1e-5)
