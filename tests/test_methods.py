import pytest
import torch

from ssl_lessons.config import make_config
from ssl_lessons.methods import METHODS, build_method
from ssl_lessons.optim import drop_frozen_gradients
from ssl_lessons.teacher import momentum_schedule


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def tiny(method, **overrides):
    torch.manual_seed(0)
    return build_method(make_config("smoke", {"method": method, **overrides}))


@pytest.mark.parametrize("name,cls", list(METHODS.items()))
def test_build_method_gives_the_named_method_with_its_recipe(name, cls):
    method = tiny(name)
    assert type(method) is cls and isinstance(method.recipe, cls.Recipe)


def test_byol_target_gets_no_gradient_and_follows_by_ema(tiny_data):
    byol = tiny("byol")
    crops = byol.make_views(tiny_data.train_images[:16], torch.Generator().manual_seed(0))
    loss, logs = byol(crops, diagnostics=True)
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
    m = momentum_schedule(0.0, byol.recipe.teacher_momentum, byol.recipe.teacher_momentum_end)
    assert torch.allclose(byol.target.backbone.vit.patch_embed.proj.weight, m * before + (1 - m) * online, atol=1e-7)


def test_byol_without_predictor_compares_projections_directly(tiny_data):
    byol = tiny("byol", use_predictor="false")
    assert isinstance(byol.predictor, torch.nn.Identity)
    assert not any(name.startswith("predictor.") for name, _ in byol.named_parameters())
    crops = byol.make_views(tiny_data.train_images[:8], torch.Generator().manual_seed(0))
    views = crops.views()
    with torch.no_grad():  # with the target equal to the online network, the loss is 2 - 2cos(z(v1), z(v2)) x 2
        z = [byol.projector(byol.backbone(v)) for v in views]
        expected = sum((2 - 2 * torch.nn.functional.cosine_similarity(a, b)).mean() for a, b in [z, z[::-1]])
        loss, _ = byol(crops)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_byol_runs_each_view_on_its_own_batch_norm_batch(tiny_data):
    byol = tiny("byol")
    batch_sizes = []
    hooks = [m.register_forward_hook(lambda mod, i, o: batch_sizes.append(i[0].shape[0]))
             for m in (byol.projector.net[1], byol.target.projector.net[1])]  # the BatchNorm layers
    byol(byol.make_views(tiny_data.train_images[:8], torch.Generator().manual_seed(0)))
    for h in hooks:
        h.remove()
    assert batch_sizes == [8] * 4  # online view 1, view 2; target view 1, view 2: never 16 at once


def test_swav_prototypes_are_unit_and_frozen_early(tiny_data):
    swav = tiny("swav", freeze_prototypes="0.5")
    optimizer = torch.optim.AdamW(swav.param_groups())
    crops = swav.make_views(tiny_data.train_images[:16], torch.Generator().manual_seed(0))
    assert crops.n_views == 2 + swav.crops.n_local
    loss, _ = swav(crops)
    assert torch.allclose(swav.prototypes.weight.norm(dim=1), torch.ones(swav.prototypes.out_features), atol=1e-5)
    loss.backward()
    drop_frozen_gradients(optimizer, progress=0.2)
    assert swav.prototypes.weight.grad is None  # frozen in the first half
    assert swav.projector.net[0].weight.grad is not None
    loss, _ = swav(crops)
    loss.backward()
    drop_frozen_gradients(optimizer, progress=0.7)
    assert swav.prototypes.weight.grad is not None


def test_swav_queue_starts_late_fills_then_joins_sinkhorn(tiny_data, monkeypatch):
    import ssl_lessons.methods.swav as swav_module
    swav = tiny("swav", queue_length="64", queue_start="0.5")  # 1 rank, 16 images a batch: 64 rows
    sizes = []
    real = swav_module.sinkhorn_knopp
    monkeypatch.setattr(swav_module, "sinkhorn_knopp", lambda s, *a, **k: sizes.append(len(s)) or real(s, *a, **k))
    g = torch.Generator().manual_seed(0)
    batch = lambda i: swav.make_views(tiny_data.train_images[16 * i:16 * (i + 1)], g)  # noqa: E731
    swav.before_step(0.2)
    swav(batch(0))
    assert swav.queue is None and sizes == [16, 16]  # before queue_start: no queue
    for step in range(1, 6):
        swav.before_step(0.6)
        swav(batch(step))
    assert swav.queue.shape == (2, 64, swav.recipe.proj_dim)
    # the queue is full after 4 batches; from the 5th on Sinkhorn sees 64 queued + 16 new rows
    assert sizes[2:] == [16] * 8 + [80, 80] and swav.queue_in_use


def test_swav_rank_queue_length_follows_main_swav():
    from ssl_lessons.methods.swav import rank_queue_length
    assert rank_queue_length(3840, local_batch=64, world=2) == 1920         # a multiple of 128: split in two
    assert rank_queue_length(1000, local_batch=64, world=2) == 448          # 1000 -> 896 (7 x 128) -> 448 a rank
    assert rank_queue_length(3840, local_batch=128, world=1) == 3840


def test_swav_queue_shorter_than_the_batch_is_refused():
    from ssl_lessons.config import ConfigError
    with pytest.raises(ConfigError, match="queue_length .* at least batch_size"):
        make_config("smoke", {"method": "swav", "queue_length": "10"})


@pytest.mark.parametrize("name", list(METHODS))
def test_diagnostics_are_computed_only_when_asked(name, tiny_data, monkeypatch):
    method = tiny(name)
    crops = method.make_views(tiny_data.train_images[:8], torch.Generator().manual_seed(0))
    _, logs = method(crops, diagnostics=True)
    assert logs and all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())

    def forbidden(*args, **kwargs):
        raise AssertionError("a diagnostic was computed on a step whose logs are thrown away")
    monkeypatch.setattr(torch.linalg, "svdvals", forbidden)
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    _, logs = method(crops)
    assert logs == {}
