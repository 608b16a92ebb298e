"""FSDP2 and sharded checkpoints on the CPU (gloo), with 1 and 2 processes under torchrun (tests/ddp_worker.py):
the engines agree with one process on the same global batch, and a sharded checkpoint resumes at another number of
processes with its state intact."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_lessons.checkpoint import consolidate_sharded, load_checkpoint, run_checkpoint, sharded_meta
from ssl_lessons.config import make_config
from ssl_lessons.errors import CheckpointError
from ssl_lessons.train import train

WORKER = Path(__file__).with_name("ddp_worker.py")
# Losses and weights after 3 SGD steps (see ddp_worker.py for why not AdamW) agree to float32 rounding of a different
# summation order (the gradient average over ranks, the all-reduced centers).
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def run_worker(out: Path, mode: str, processes: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", str(WORKER), str(out), mode],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes)]


def assert_same_run(a: dict, b: dict) -> None:
    assert a["losses"] == pytest.approx(b["losses"], rel=LOSS_RTOL)
    assert a["state"].keys() == b["state"].keys()
    for name, tensor in a["state"].items():
        assert torch.allclose(tensor, b["state"][name], atol=WEIGHT_ATOL), name


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


def test_fsdp_with_activation_checkpointing_at_two_processes_equals_one_process(tmp_path):
    (one,) = run_worker(tmp_path / "one", "engine-dino-ddp", 1)
    for r in run_worker(tmp_path / "fsdp", "engine-dino-fsdp-ac", 2):
        assert_same_run(r, one)


@pytest.mark.parametrize("method", ["dino", "dinov2"])
def test_ddp_and_fsdp_at_two_processes_equal_one_process_on_the_same_global_batch(tmp_path, method):
    # DINOv2's KoLeo is computed within each rank's batch (as dinov2 does), so it is off for the comparison with one
    # process; every other term (CLS and patch losses, Sinkhorn-Knopp over the global batch) must agree.
    flag = "-nokoleo" if method == "dinov2" else ""
    (one,) = run_worker(tmp_path / "one", f"engine-{method}-ddp{flag}", 1)
    ddp = run_worker(tmp_path / "ddp", f"engine-{method}-ddp{flag}", 2)
    fsdp = run_worker(tmp_path / "fsdp", f"engine-{method}-fsdp{flag}", 2)
    assert one["world"] == 1 and ddp[0]["world"] == fsdp[0]["world"] == 2
    assert len(set(one["losses"])) == 3  # three different steps
    for r in (*ddp, *fsdp):
        assert_same_run(r, one)
    for name, tensor in fsdp[0]["state"].items():  # the gathered weights: the same on both ranks
        assert torch.equal(tensor, fsdp[1]["state"][name]), name
    assert not torch.equal(one["state"]["loss.center"], torch.zeros_like(one["state"]["loss.center"])) or \
        method == "dinov2"  # DINO's EMA center moved (DINOv2 centres by Sinkhorn-Knopp: its center is unused)


def test_fsdp_keeps_half_the_weights_and_optimizer_states_per_rank_of_ddp(tmp_path):
    ddp = run_worker(tmp_path / "ddp", "engine-dinov2-ddp", 2)
    fsdp = run_worker(tmp_path / "fsdp", "engine-dinov2-fsdp", 2)
    assert_same_run(fsdp[0], ddp[0])  # with KoLeo on: the same per-rank semantics under both engines
    full, shard = ddp[0]["memory"], [r["memory"] for r in fsdp]
    for kind in ("parameters", "optimizer"):
        assert full[kind] > 0
        assert sum(s[kind] for s in shard) == pytest.approx(full[kind], rel=0.01)  # the shards add up to the whole
        assert all(s[kind] <= 0.55 * full[kind] for s in shard)  # each rank about half (row padding aside)


def test_sharded_checkpoint_of_two_processes_resumes_at_one_with_its_state_intact(tmp_path):
    (saved,) = run_worker(tmp_path, "fsdp-save", 2)[:1]
    folder = tmp_path / "sharded" / "checkpoint"
    assert run_checkpoint(tmp_path / "sharded") == folder and not (tmp_path / "sharded" / "checkpoint.pt").exists()
    meta = sharded_meta(folder)
    assert meta["step"] == 2 and meta["world"] == 2 and len(saved["losses"]) == 2
    whole = consolidate_sharded(folder)  # the checkpoint gathered on one process, without torchrun
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(tmp_path / "sharded"), "parallel": "fsdp",
                                "knn_every": 0.0, "linear_probe": False, "knn_bank": 256, "epochs": 1.0,
                                "batch_size": 64})
    from conftest import make_tiny_data
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
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(tmp_path / "sharded"), "parallel": "fsdp",
                                "knn_every": 0.0, "linear_probe": False, "knn_bank": 256, "epochs": 1.0,
                                "batch_size": 64})
    from conftest import make_tiny_data
    first = train(cfg, data=make_tiny_data(), stop_after=2, show_progress=False)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optimizer_state = get_state_dict(first["method"], first["optimizer"])
    r0, r1 = run_worker(tmp_path, "fsdp-load", 2)
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


def test_two_process_fsdp_resumes_exactly_at_the_same_number_of_processes(tmp_path):
    r0, r1 = run_worker(tmp_path, "dino-fsdp-resume", 2)
    for r in (r0, r1):
        assert r["resumed_losses"] == r["losses"]
        for name, tensor in r["state"].items():
            assert torch.equal(tensor, r["resumed_state"][name]), name


def test_a_killed_sharded_save_leaves_the_previous_checkpoint_in_charge(tmp_path):
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(tmp_path / "run"), "parallel": "fsdp",
                                "knn_every": 0.0, "linear_probe": False, "knn_bank": 256, "epochs": 1.0,
                                "batch_size": 64})
    from conftest import make_tiny_data
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
    from conftest import make_tiny_data
    common = {"method": "dino", "out_dir": str(tmp_path / "run"), "knn_every": 0.0, "linear_probe": False,
              "knn_bank": 256, "epochs": 1.0, "batch_size": 64}
    train(make_config("smoke", common), data=make_tiny_data(), stop_after=1, show_progress=False)
    with pytest.raises(CheckpointError, match="parallel=ddp"):
        train(make_config("smoke", {**common, "parallel": "fsdp"}), data=make_tiny_data(), show_progress=False)


def test_a_sharded_run_exports_its_backbone_as_a_single_file(tmp_path):
    from conftest import make_tiny_data

    from ssl_lessons.pretrained import export_backbone, load_backbone_and_heads
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
