import torch

from ssl_lessons.config import make_config
from ssl_lessons.methods import BYOL, SwAV, build_method
from ssl_lessons.teacher import momentum_schedule


def tiny(method, **overrides):
    torch.manual_seed(0)
    return build_method(make_config("smoke", {"method": method, **overrides}))


def test_byol_target_gets_no_gradient_and_follows_by_ema(tiny_data):
    byol = tiny("byol")
    assert isinstance(byol, BYOL)
    views = byol.make_views(tiny_data.train_images[:16], torch.Generator().manual_seed(0))
    loss, logs = byol(views)
    loss.backward()
    assert all(p.grad is None for p in byol.target.parameters())
    assert byol.backbone.vit.patch_embed.proj.weight.grad is not None
    assert {"output_std", "effective_rank"} <= set(logs)
    with torch.no_grad():
        for p in byol.backbone.parameters():
            p.add_(0.1)
    before = byol.target.backbone.vit.patch_embed.proj.weight.clone()
    online = byol.backbone.vit.patch_embed.proj.weight
    byol.after_step(0.0)
    m = momentum_schedule(0.0, byol.momentum, byol.momentum_end)
    assert torch.allclose(byol.target.backbone.vit.patch_embed.proj.weight, m * before + (1 - m) * online, atol=1e-7)


def test_byol_without_predictor_compares_projections_directly(tiny_data):
    byol = tiny("byol", use_predictor="false")
    assert isinstance(byol.predictor, torch.nn.Identity)


def test_swav_prototypes_are_unit_and_frozen_early(tiny_data):
    swav = tiny("swav", freeze_prototypes="0.5")
    assert isinstance(swav, SwAV)
    views = swav.make_views(tiny_data.train_images[:16], torch.Generator().manual_seed(0))
    assert len(views) == 2 + swav.multicrop.n_local
    loss, _ = swav(views)
    assert torch.allclose(swav.prototypes.weight.norm(dim=1), torch.ones(swav.prototypes.out_features), atol=1e-5)
    loss.backward()
    swav.after_backward(progress=0.2)
    assert swav.prototypes.weight.grad is None  # frozen in the first half
    loss, _ = swav(views)
    loss.backward()
    swav.after_backward(progress=0.7)
    assert swav.prototypes.weight.grad is not None


def test_swav_queue_fills_then_joins_sinkhorn(tiny_data):
    swav = tiny("swav", queue_length="32")
    g = torch.Generator().manual_seed(0)
    for step in range(3):  # 16 images a batch: full after 2 batches
        swav(swav.make_views(tiny_data.train_images[16 * step:16 * (step + 1)], g))
    assert bool(swav.queue_filled) and (swav.queue[:, -1] != 0).any()
