import json

import pytest
import torch

from conftest import make_tiny_data
from ssl_lessons.config import make_config
from ssl_lessons.evaluation import evaluate
from ssl_lessons.methods import build_method
from ssl_lessons.optim import clip_gradients, parameter_groups
from ssl_lessons.train import train


def smoke(tmp_path, name, **overrides):
    return make_config("smoke", {"out_dir": str(tmp_path / name), "knn_every": 0.0, "linear_probe": False,
                                 "knn_bank": 256, **overrides})


def test_resumed_run_has_the_same_loss_trace_as_an_uninterrupted_one(tmp_path, tiny_data):
    # 256 images / batch 64 = 4 steps an epoch; 2 epochs = 8 steps; stop after 3 (mid-epoch) and resume.
    full = train(smoke(tmp_path, "full", epochs=2.0), data=tiny_data, show_progress=False)
    cfg = smoke(tmp_path, "split", epochs=2.0)
    first = train(cfg, data=tiny_data, stop_after=3, show_progress=False)
    assert first["result"] is None and len(first["history"]) == 3
    assert (tmp_path / "split" / "checkpoint.pt").exists()
    again = train(cfg, data=tiny_data, stop_after=2, show_progress=False)  # a limit already passed: no step
    assert again["result"] is None and len(again["history"]) == 3
    resumed = train(cfg, data=tiny_data, show_progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert len(full["history"]) == 8
    for a, b in zip(full["method"].state_dict().values(), resumed["method"].state_dict().values()):
        assert torch.equal(a, b)
    result = json.loads((tmp_path / "split" / "results.json").read_text())
    from ssl_lessons.evaluation import evaluate
    again = evaluate(resumed["method"].eval_backbone, tiny_data, probe=False, batch_size=cfg.eval_batch_size)
    assert result["steps"] == 8 and result["knn_top1"] == again["knn_top1"]  # the trained backbone's k-NN
    assert (tmp_path / "split" / "curves.png").stat().st_size > 1000
    assert not list((tmp_path / "split").glob(".*tmp"))  # atomic writes leave no temporaries


def test_resume_with_a_different_config_is_refused(tmp_path, tiny_data):
    train(smoke(tmp_path, "run"), data=tiny_data, stop_after=1, show_progress=False)
    from ssl_lessons.errors import CheckpointError
    with pytest.raises(CheckpointError, match="different config.*lr"):
        train(smoke(tmp_path, "run", lr=0.5), data=tiny_data, show_progress=False)


def test_training_changes_the_backbone_and_logs_the_schedule(tmp_path, tiny_data):
    cfg = smoke(tmp_path, "run", epochs=1.0, warmup=0.5)
    torch.manual_seed(cfg.seed)  # train() starts from the same seed: these are its initial weights
    initial = {k: v.clone() for k, v in build_method(cfg).backbone.state_dict().items()}
    run = train(cfg, data=tiny_data, show_progress=False)
    trained = run["method"].backbone.state_dict()
    assert all(torch.equal(initial[k], trained[k]) for k in ("vit.pos_embed",)) is False
    moved = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert len(moved) >= len(initial) - 1, f"only {moved} of {list(initial)} changed"
    lrs = [h["lr"] for h in run["history"]]
    assert lrs[0] == 0.0 and max(lrs) > 0  # warm-up starts at 0
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in run["history"])


def test_no_weight_decay_on_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = parameter_groups(net.named_parameters())
    assert [p.shape for p in decay["params"]] == [(4, 4)] and decay["apply_wd"]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0 and not no_decay["apply_wd"]


def test_gradients_are_clipped_per_parameter():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4, 0.0])
    clip_gradients(torch.nn.ParameterList([a, b]), 3.0)
    assert torch.allclose(a.grad.norm(), torch.tensor(3.0), atol=1e-4)
    assert torch.allclose(b.grad, torch.tensor([0.3, 0.4, 0.0]))  # under the limit: untouched


def test_layer_wise_lr_decay_gives_dinov2s_multipliers_per_block():
    from ssl_lessons.backbones import ViTBackbone
    from ssl_lessons.optim import vit_layer_decay
    model = torch.nn.ModuleDict({"backbone": ViTBackbone(img_size=16, patch_size=4, embed_dim=8, depth=3, num_heads=2,
                                                         register_tokens=2, mask_token=True),
                                 "head": torch.nn.Linear(8, 4)})
    rate, blocks = 0.5, 3
    multipliers = {name: vit_layer_decay(name, rate, blocks, patch_embed_multiplier=0.2)
                   for name, _ in model.named_parameters()}
    assert multipliers["backbone.vit.blocks.0.attn.qkv.weight"] == 0.5 ** 3      # block i: rate^(blocks - i)
    assert multipliers["backbone.vit.blocks.2.mlp.fc1.bias"] == 0.5 ** 1
    assert multipliers["backbone.vit.pos_embed"] == multipliers["backbone.mask_token"] == 0.5 ** 4
    assert multipliers["backbone.vit.cls_token"] == multipliers["backbone.vit.reg_token"] == 0.5 ** 4  # layer 0
    assert multipliers["backbone.vit.patch_embed.proj.weight"] == 0.2 * 0.5 ** 4  # and the patch embedding x 0.2
    assert multipliers["backbone.vit.norm.weight"] == multipliers["head.weight"] == 1.0
    groups = parameter_groups(model.named_parameters(),
                              lr_multiplier=lambda n: vit_layer_decay(n, rate, blocks, patch_embed_multiplier=0.2))
    assert sorted({g["lr_multiplier"] for g in groups}) == sorted({0.2 * 0.5 ** 4, 0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5, 1.0})


def test_a_run_trains_on_one_set_of_images_and_is_measured_on_another(tmp_path, tiny_data):
    # lesson 8: an unlabelled pool to train on, a labelled set to measure the k-NN on
    pool = make_tiny_data(n_train=128, n_test=0, seed=1)
    measured = make_tiny_data(n_train=192, n_test=96, seed=2)
    run = train(smoke(tmp_path, "pool", epochs=1.0, method="simclr"), data=pool, eval_data=measured,
                show_progress=False)
    assert len(run["history"]) == 128 // 64                   # steps from the pool's size
    result = run["result"]
    assert result["bank"] == 192 and result["queries"] == 96  # measured on the other set
    again = evaluate(run["method"].eval_backbone, measured, probe=False)
    assert result["knn_top1"] == again["knn_top1"]


def test_periodic_evaluations_measure_the_dense_probe_and_keep_loadable_snapshots(tmp_path, tiny_data):
    # 256 images / batch 64 = 4 steps an epoch; knn_every 0.5 epoch: evaluations at steps 0, 2 and 4.
    from ssl_lessons.dense import DenseBenchmark, dense_probe
    from ssl_lessons.pretrained import load_backbone_and_heads
    cfg = smoke(tmp_path, "run", method="ibot", epochs=1.0, knn_every=0.5, periodic_dense=True, keep_snapshots=True)
    run = train(cfg, data=tiny_data, show_progress=False)
    assert [e["step"] for e in run["evals"]] == [0, 2, 4]
    assert all(0 <= e["dense_miou"] <= 100 and 0 <= e["dense_patch_accuracy"] <= 100 for e in run["evals"])
    snapshots = sorted((tmp_path / "run" / "snapshots").glob("*.pt"))
    assert [p.name for p in snapshots] == ["step-000000.pt", "step-000002.pt", "step-000004.pt"]
    backbone, heads, record = load_backbone_and_heads(snapshots[-1])
    assert record["step"] == 4 and [e["step"] for e in record["evals"]] == [0, 2, 4] and set(heads) == {"head"}
    trained = run["method"].eval_backbone.state_dict()
    for name, value in backbone.state_dict().items():  # the evaluated backbone at the end, to fp16's precision
        torch.testing.assert_close(value, trained[name].half().float(), rtol=0, atol=0)
    # the dense probe of the last evaluation is the one of the backbone as it was then (the end of training)
    bench = DenseBenchmark.from_data(tiny_data, cfg.patch_size, cfg.dense_mosaics)
    assert dense_probe(run["method"].eval_backbone, bench)["miou"] == run["evals"][-1]["dense_miou"]
    first, _, _ = load_backbone_and_heads(snapshots[0])  # the start: a different backbone
    assert not torch.equal(first.state_dict()["vit.pos_embed"], backbone.state_dict()["vit.pos_embed"])
