"""FSDP2 and sharded checkpoints on the CPU (gloo), with 1 and 2 processes under torchrun (tests/ddp_worker.py):
the engines agree with one process on the same global batch, and a sharded checkpoint resumes at another number of
processes with its state intact."""
import pytest
import torch
from conftest import launch, make_tiny_data

from ssl_lessons.checkpoint import consolidate_sharded, load_checkpoint, run_checkpoint, sharded_meta
from ssl_lessons.config import make_config
from ssl_lessons.errors import CheckpointError
from ssl_lessons.train import train

# Losses after 3 SGD steps (see ddp_worker.py for why not AdamW) and the weights they end at, compared across process
# counts and engines. The two differ only in the order of float32 sums: the gradient average over ranks, the norms of
# the clipping, the all-reduced centers. One reordered sum of n terms moves its result by up to n * u relative
# (u = 2^-24 = 6e-8, float32's unit roundoff; ~sqrt(n) * u typically); the losses here sum ~10^4 terms (64 images
# x crops x prototypes), so a single evaluation may move by ~6e-6 typically and by 6e-4 at worst, and three steps
# carry what the weights took from the previous ones. LOSS_RTOL = 1e-4 sits between the two, and is checked to be far
# below what one SGD step changes (test below), so a real difference (a gradient not averaged, a shard updated twice)
# shows.
# The weights: each step moves them by lr * |g| ~ 1e-3 x O(1); a relative 1e-4 difference of the gradients moves them by
# ~1e-7 a step, so WEIGHT_ATOL = 1e-5 leaves a margin of ~30 after three steps.
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-5
ONE_PROCESS = ["engine-dino-ddp", "engine-dinov2-ddp-nokoleo", "engine-dinov3-ddp-nokoleo"]
TWO_PROCESSES = ["engine-dino-ddp", "engine-dino-fsdp", "engine-dino-fsdp-ac", "engine-dinov2-ddp-nokoleo",
                 "engine-dinov2-fsdp-nokoleo", "engine-dinov3-ddp-nokoleo", "engine-dinov3-fsdp-nokoleo", "engine-dinov2-ddp", "engine-dinov2-fsdp", "fsdp-save",
                 "dino-fsdp-resume"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{processes: {mode: [rank 0's, rank 1's ...]}}: two torchrun launches for every test below that needs one."""
    root = tmp_path_factory.mktemp("fsdp")
    return {1: launch(root / "one", ONE_PROCESS, 1), 2: launch(root / "two", TWO_PROCESSES, 2), "root": root}


def assert_same_run(a: dict, b: dict) -> None:
    assert a["losses"] == pytest.approx(b["losses"], rel=LOSS_RTOL)
    assert a["state"].keys() == b["state"].keys()
    for name, tensor in a["state"].items():
        assert torch.allclose(tensor, b["state"][name], atol=WEIGHT_ATOL), name


@pytest.mark.numerics
def test_activation_checkpointing_recomputes_the_same_gradients_and_keeps_the_names():
    from ssl_lessons.parallel import checkpoint_activations
    from ssl_lessons.methods import build_method
    cfg = make_config("smoke", {"method": "dino"})
    torch.manual_seed(0)
    plain = build_method(cfg)
    recomputed = build_method(cfg)
    recomputed.load_state_dict(plain.state_dict())
    checkpoint_activations(recomputed)
    assert list(dict(recomputed.named_parameters())) == list(dict(plain.named_parameters()))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    losses, calls = [], []
    for method in (plain, recomputed):
        runs, layer = [], method.backbone.vit.blocks[0].mlp.fc1
        original = layer.forward
        layer.forward = lambda x: runs.append(1) or original(x)  # counts recomputation too (hooks are off then)
        loss, _ = method(method.make_views(images, torch.Generator().manual_seed(0)))
        forward_calls = len(runs)
        loss.backward()
        losses.append(loss.item())
        calls.append((forward_calls, len(runs)))
    assert losses[0] == losses[1]
    assert calls[0][1] == calls[0][0] and calls[1][1] == 2 * calls[1][0]  # backward ran the student block again
    for (name, p), q in zip(plain.named_parameters(), recomputed.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name


@pytest.mark.numerics
def test_fsdp_with_activation_checkpointing_at_two_processes_equals_one_process(runs):
    (one,) = runs[1]["engine-dino-ddp"]
    for r in runs[2]["engine-dino-fsdp-ac"]:
        assert_same_run(r, one)


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["dino", "dinov2", "dinov3"])
def test_ddp_and_fsdp_at_two_processes_equal_one_process_on_the_same_global_batch(runs, method):
    # DINOv2's KoLeo is computed within each rank's batch (as dinov2 does), so it is off for the comparison with one
    # process; every other term (CLS and patch losses, Sinkhorn-Knopp over the global batch, DINOv3's Gram loss and
    # its Gram teacher, copied after step 2 of 3) must agree.
    flag = "-nokoleo" if method != "dino" else ""
    (one,) = runs[1][f"engine-{method}-ddp{flag}"]
    ddp, fsdp = runs[2][f"engine-{method}-ddp{flag}"], runs[2][f"engine-{method}-fsdp{flag}"]
    assert one["world"] == 1 and ddp[0]["world"] == fsdp[0]["world"] == 2
    # the comparison has power: each step changes the loss by far more than the tolerance allows between engines
    steps = one["losses"]
    assert min(abs(a - b) / abs(b) for a, b in zip(steps, steps[1:])) > 20 * LOSS_RTOL
    for r in (*ddp, *fsdp):
        assert_same_run(r, one)
    for name, tensor in fsdp[0]["state"].items():  # the gathered weights: the same on both ranks
        assert torch.equal(tensor, fsdp[1]["state"][name]), name
    assert not torch.equal(one["state"]["loss.center"], torch.zeros_like(one["state"]["loss.center"])) or \
        method != "dino"  # DINO's EMA center moved (DINOv2 centres by Sinkhorn-Knopp: its center is unused)
    if method == "dinov3":  # the Gram teacher was refreshed once (after step 2), so it is the teacher of step 2
        assert one["state"]["gram_updates"] == 1
        key = "gram_teacher.vit.patch_embed.proj.weight"
        assert not torch.equal(one["state"][key], one["state"]["teacher.backbone.vit.patch_embed.proj.weight"])


@pytest.mark.numerics
def test_fsdp_keeps_half_the_weights_and_optimizer_states_per_rank_of_ddp(runs):
    ddp, fsdp = runs[2]["engine-dinov2-ddp"], runs[2]["engine-dinov2-fsdp"]
    assert_same_run(fsdp[0], ddp[0])  # with KoLeo on: the same per-rank semantics under both engines
    full, shard = ddp[0]["memory"], [r["memory"] for r in fsdp]
    for kind in ("parameters", "optimizer"):
        assert full[kind] > 0
        assert sum(s[kind] for s in shard) == pytest.approx(full[kind], rel=0.01)  # the shards add up to the whole
        assert all(s[kind] <= 0.55 * full[kind] for s in shard)  # each rank about half (row padding aside)


def test_sharded_checkpoint_of_two_processes_resumes_at_one_with_its_state_intact(runs):
    saved = runs[2]["fsdp-save"][0]
    run_folder = runs["root"] / "two" / "fsdp-save" / "sharded"
    folder = run_folder / "checkpoint"
    assert run_checkpoint(run_folder) == folder and not (run_folder / "checkpoint.pt").exists()
    meta = sharded_meta(folder)
    assert meta["step"] == 2 and meta["world"] == 2 and len(saved["losses"]) == 2
    whole = consolidate_sharded(folder)  # the checkpoint gathered on one process, without torchrun
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(run_folder), "parallel": "fsdp",
                                "knn_every": 0.0, "linear_probe": False, "knn_bank": 256, "epochs": 1.0,
                                "batch_size": 64})
    loaded = train(cfg, data=make_tiny_data(), stop_after=2, show_progress=False)  # one process: loads, no step
    state = loaded["method"].state_dict()
    assert state.keys() == whole["method"].keys()
    for name, tensor in whole["method"].items():
        assert torch.equal(state[name], tensor), name
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    moments = get_optimizer_state_dict(loaded["method"], loaded["optimizer"])["state"]
    assert moments.keys() == whole["optimizer"]["state"].keys()
    for name, saved_moments in whole["optimizer"]["state"].items():  # AdamW's step counts and moments came back
        for key, value in saved_moments.items():
            assert torch.equal(torch.as_tensor(moments[name][key]), torch.as_tensor(value)), (name, key)
    assert max(float(m["step"]) for m in moments.values()) == 2
    run = train(cfg, data=make_tiny_data(), show_progress=False)  # and the run goes on to its end at one process
    assert [h["loss"] for h in run["history"]][:2] == saved["losses"] and len(run["history"]) == 4
    assert run["result"] is not None and sharded_meta(folder)["world"] == 1 and sharded_meta(folder)["step"] == 4
    assert [p.name for p in folder.iterdir() if p.name.startswith("step-")] == ["step-0000004"]


def test_sharded_checkpoint_of_one_process_resumes_at_two_with_its_state_intact(tmp_path):
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(tmp_path / "fsdp-load" / "sharded"),
                                "parallel": "fsdp", "knn_every": 0.0, "linear_probe": False, "knn_bank": 256,
                                "epochs": 1.0, "batch_size": 64})
    first = train(cfg, data=make_tiny_data(), stop_after=2, show_progress=False)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optimizer_state = get_state_dict(first["method"], first["optimizer"])
    r0, r1 = launch(tmp_path, ["fsdp-load"])["fsdp-load"]
    for r in (r0, r1):  # each rank gathered the whole state it had loaded from its shards
        for name, tensor in model_state.items():
            assert torch.equal(r["model"][name], tensor), name
        for name, moments in optimizer_state["state"].items():
            for key, value in moments.items():
                assert torch.equal(torch.as_tensor(r["optimizer"]["state"][name][key]), torch.as_tensor(value)), \
                    (name, key)
        assert r["losses"][:2] == [h["loss"] for h in first["history"]] and len(r["losses"]) == 4
        assert r["result"] is not None
    assert r0["result"]["knn_top1"] == r1["result"]["knn_top1"]


def test_two_process_fsdp_resumes_exactly_at_the_same_number_of_processes(runs):
    r0, r1 = runs[2]["dino-fsdp-resume"]
    for r in (r0, r1):
        assert r["resumed_losses"] == r["losses"]
        for name, tensor in r["state"].items():
            assert torch.equal(tensor, r["resumed_state"][name]), name


def test_a_killed_sharded_save_leaves_the_previous_checkpoint_in_charge(tmp_path):
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(tmp_path / "run"), "parallel": "fsdp",
                                "knn_every": 0.0, "linear_probe": False, "knn_bank": 256, "epochs": 1.0,
                                "batch_size": 64})
    first = train(cfg, data=make_tiny_data(), stop_after=2, show_progress=False)
    folder = tmp_path / "run" / "checkpoint"
    partial = folder / "step-0000004"  # what a save killed before it switched `latest` leaves behind
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half a shard")
    assert sharded_meta(folder)["step"] == 2  # `latest` still names step 2
    run = train(cfg, data=make_tiny_data(), show_progress=False)
    assert [h["loss"] for h in run["history"]][:2] == [h["loss"] for h in first["history"]]
    assert sharded_meta(folder)["step"] == 4 and sorted(p.name for p in folder.glob("step-*")) == ["step-0000004"]
    assert load_checkpoint(folder)["step"] == 4


def test_parallel_cannot_change_on_resume(tmp_path):
    common = {"method": "dino", "out_dir": str(tmp_path / "run"), "knn_every": 0.0, "linear_probe": False,
              "knn_bank": 256, "epochs": 1.0, "batch_size": 64}
    train(make_config("smoke", common), data=make_tiny_data(), stop_after=1, show_progress=False)
    with pytest.raises(CheckpointError, match="parallel=ddp"):
        train(make_config("smoke", {**common, "parallel": "fsdp"}), data=make_tiny_data(), show_progress=False)


def test_a_sharded_run_exports_its_backbone_as_a_single_file(tmp_path):

    from ssl_lessons.export import export_backbone
    from ssl_lessons.pretrained import load_backbone_and_heads
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(tmp_path / "run"), "parallel": "fsdp",
                                "knn_every": 0.0, "linear_probe": False, "knn_bank": 256, "epochs": 1.0,
                                "batch_size": 64})
    run = train(cfg, data=make_tiny_data(), show_progress=False)
    path = export_backbone(tmp_path / "run", "sharded-dino", directory=tmp_path)
    backbone, heads, record = load_backbone_and_heads(path)
    trained = run["method"].eval_backbone.state_dict()
    for name, tensor in backbone.state_dict().items():
        assert torch.allclose(tensor, trained[name].half().float(), atol=0), name  # the fp16 copy of the teacher
    assert record["result"]["steps"] == 4 and "head" in heads
