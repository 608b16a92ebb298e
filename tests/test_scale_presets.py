"""Lesson 7's ImageNet presets describe the official models, and the computed memory of parallel.state_bytes is what
AdamW really keeps."""
import pytest
import torch

from ssl_lessons.config import make_config
from ssl_lessons.errors import ConfigError
from ssl_lessons.methods import build_method
from ssl_lessons.parallel import shard_units, state_bytes


def on_meta(cfg):
    with torch.device("meta"):  # counts without allocating a ViT-L
        return build_method(cfg)


def test_the_imagenet_presets_build_the_official_architectures():
    dino = on_meta(make_config("imagenet-vits16-dino", {"method": "dino", "dataset": "/datasets/imagenet"}))
    assert sum(p.numel() for p in dino.backbone.parameters()) == pytest.approx(21.67e6, rel=0.01)  # ViT-S/16
    assert dino.head.last_layer.weight.shape == (65536, 256) and dino.crops.n_local == 8
    assert dino.crops.local_view.size == 96 and dino.crops.global_views[0].size == 224
    dinov2 = on_meta(make_config("imagenet-vitl14-dinov2", {"method": "dinov2", "dataset": "/datasets/imagenet"}))
    assert sum(p.numel() for p in dinov2.backbone.parameters()) == pytest.approx(304e6, rel=0.01)  # ViT-L/14
    assert dinov2.head.last_layer.weight.shape == (131072, 384)
    assert dinov2.patch_head.last_layer.weight.shape[0] == 131072
    cfg = make_config("imagenet-vitl14-dinov2", {"method": "dinov2", "dataset": "/datasets/imagenet"})
    assert (cfg.batch_size, cfg.lr, cfg.lr_scaling, cfg.weight_decay_end, cfg.drop_path_rate) == (1024, 2e-4, "sqrt",
                                                                                                   0.2, 0.4)
    assert cfg.parallel == "fsdp" and cfg.sequence_packing and cfg.efficient_drop_path
    assert cfg.data_loading == "stream" and cfg.recipe.local_size == 98 and cfg.recipe.teacher_momentum == 0.994
    distill = make_config("imagenet-vits14-distill", {"method": "distill", "dataset": "/datasets/imagenet"})
    assert (distill.embed_dim, distill.depth, distill.patch_size, distill.drop_path_rate) == (384, 12, 14, 0.0)


def test_an_imagenet_preset_needs_its_method_and_a_dataset():
    with pytest.raises(ConfigError, match="use --method dino"):
        make_config("imagenet-vits16-dino", {"method": "simclr", "dataset": "/datasets/imagenet"})
    with pytest.raises(ConfigError, match="dataset=/path/to/imagenet"):
        make_config("imagenet-vitl14-dinov2", {"method": "dinov2"})


def test_state_bytes_for_ddp_is_what_adamw_keeps_after_a_step(tiny_data):
    cfg = make_config("smoke", {"method": "dino"})
    torch.manual_seed(0)
    method = build_method(cfg)
    optimizer = torch.optim.AdamW(method.param_groups(), lr=1e-4)
    loss, _ = method(method.make_views(tiny_data.train_images[:8], torch.Generator().manual_seed(0)))
    loss.backward()
    optimizer.step()
    weights = sum(p.numel() * p.element_size() for p in method.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in method.parameters() if p.grad is not None)
    moments = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if v.ndim > 0)
    assert state_bytes(method)["per_rank"] == weights + grads + moments


def test_state_bytes_for_fsdp_is_a_shard_plus_the_largest_unit():
    method = on_meta(make_config("smoke", {"method": "dinov2"}))
    ddp, fsdp = state_bytes(method), state_bytes(method, 4, "fsdp", gather_bytes=2)
    owned = {}
    for unit in shard_units(method):
        owned[unit] = [p for p in unit.parameters() if all(p is not q for ps in owned.values() for q in ps)]
    assert sum(len(ps) for ps in owned.values()) <= len(list(method.parameters()))
    largest = max(sum(p.numel() for p in ps) for ps in owned.values())
    assert fsdp["largest_unit"] == largest
    assert fsdp["per_rank"] == ddp["per_rank"] / 4 + 2 * largest
