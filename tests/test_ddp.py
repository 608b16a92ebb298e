"""Two processes on the CPU (gloo) under torchrun, for every method: what DDP must keep identical stays identical,
what is each rank's own stays its own, and collectives give the single-process answer. One torchrun launch runs every
mode (tests/ddp_worker.py); the tests read what each rank saved."""
import pytest
import torch

from conftest import launch

from ssl_lessons.checkpoint import load_checkpoint
from ssl_lessons.methods import METHODS
from ssl_lessons.sinkhorn import sinkhorn_knopp

MODES = [*METHODS, "swav-resume", "dinov2-resume", "sinkhorn", "sinkhorn-patches"]


def score_matrix(seed: int, shift) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(16, 5, generator=g) * 2 - 1
    shift(scores)
    return scores


SCORES = {
    # the second rank's rows score higher: a per-rank shift would weight the ranks differently
    "sinkhorn": score_matrix(0, lambda s: s[6:].add_(0.8)),
    "sinkhorn-patches": score_matrix(1, lambda s: s[6:, 0].add_(0.5)),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    for mode, scores in SCORES.items():
        (root / mode).mkdir()
        torch.save(scores, root / mode / "scores.pt")
    return root, launch(root, MODES)


def run_two_processes(runs, mode):
    return tuple(runs[1][mode])


@pytest.mark.parametrize("method", list(METHODS))
def test_two_process_training_keeps_weights_identical_and_evaluates_on_every_rank(runs, method):
    r0, r1 = run_two_processes(runs, method)
    assert r0["world"] == r1["world"] == 2 and len(r0["losses"]) == 4
    for name, tensor in r0["state"].items():
        assert torch.equal(tensor, r1["state"][name]), name
    key = "backbone.vit.patch_embed.proj.weight"
    assert not torch.equal(r0["initial"][key], r0["state"][key])  # and they moved: training happened
    assert r0["losses"] == r1["losses"]  # the history holds the mean over ranks, the same on both
    # the final evaluation is collective: every rank returns the same result (rank 0 alone wrote it)
    assert r0["result"] is not None and r0["result"]["knn_top1"] == r1["result"]["knn_top1"]
    assert r0["result"]["steps"] == 4
    ckpt = load_checkpoint(runs[0] / method / "run" / "checkpoint.pt")
    assert len(ckpt["rank_states"]) == 2 and ckpt["step"] == 4
    for name, tensor in ckpt["method"].items():  # the file holds the whole (identical) state
        assert torch.equal(tensor, r0["state"][name]), name
    initial = ckpt["history"][0]["loss"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in ckpt["history"]) and initial > 0


def test_two_process_swav_keeps_a_queue_per_rank_and_saves_both(runs):
    r0, r1 = run_two_processes(runs, "swav")
    q0, q1 = r0["rank_state"]["queue"], r1["rank_state"]["queue"]
    assert q0.shape == q1.shape == (2, 64, 32)  # 128 rows in all, split over 2 ranks; 2 global views; proj_dim 32
    assert q0.abs().sum() > 0 and q1.abs().sum() > 0
    # rows 32-63 hold the previous step's batch: each rank's own, not rank 0's (DDP broadcasts buffers before each
    # forward, so a queue kept as a buffer would hold rank 0's history there on both ranks)
    assert not torch.allclose(q0[:, 32:], q1[:, 32:])
    assert r0["state"].keys() == r1["state"].keys() and not any("queue" in k for k in r0["state"])
    ckpt = load_checkpoint(runs[0] / "swav" / "run" / "checkpoint.pt")
    assert torch.equal(ckpt["rank_states"][0]["method"]["queue"], q0)
    assert torch.equal(ckpt["rank_states"][1]["method"]["queue"], q1)


def test_two_process_swav_resumes_each_rank_with_its_own_queue(runs):
    r0, r1 = run_two_processes(runs, "swav-resume")
    for r in (r0, r1):
        assert r["resumed_losses"] == r["losses"]
        assert torch.equal(r["resumed_rank_state"]["queue"], r["rank_state"]["queue"])
        for name, tensor in r["state"].items():
            assert torch.equal(tensor, r["resumed_state"][name]), name


def test_two_process_sinkhorn_equals_one_process_on_the_whole_batch(runs):
    r0, r1 = run_two_processes(runs, "sinkhorn")
    together = torch.cat([r0["codes"], r1["codes"]])  # 6 + 10 rows: unequal counts on the two ranks
    assert torch.allclose(together, sinkhorn_knopp(SCORES["sinkhorn"], epsilon=0.05, iters=3), atol=1e-6)


def test_two_process_dinov2_patch_codes_equal_one_process_on_all_masked_tokens(runs):
    from ssl_lessons.losses.dino import sinkhorn_targets
    r0, r1 = run_two_processes(runs, "sinkhorn-patches")
    together = torch.cat([r0["codes"], r1["codes"]])  # 6 + 10 masked tokens
    assert torch.allclose(together, sinkhorn_targets(SCORES["sinkhorn-patches"], 0.05), atol=1e-6)
    assert torch.allclose(together.sum(dim=1), torch.ones(16), atol=1e-5)


def test_two_process_dinov2_resumes_exactly_through_the_high_resolution_phase(runs):
    r0, r1 = run_two_processes(runs, "dinov2-resume")
    for r in (r0, r1):
        assert r["resumed_losses"] == r["losses"]
        for name, tensor in r["state"].items():
            assert torch.equal(tensor, r["resumed_state"][name]), name
    assert torch.equal(r0["state"]["patch_head.last_layer.parametrizations.weight.original1"],
                       r1["state"]["patch_head.last_layer.parametrizations.weight.original1"])


def test_two_process_dino_center_is_the_all_reduced_mean(runs):
    r0, r1 = run_two_processes(runs, "dino")
    center0, center1 = r0["state"]["loss.center"], r1["state"]["loss.center"]
    assert center0.abs().sum() > 0 and torch.equal(center0, center1)
    # the center's EMA step uses the mean over both ranks' teacher outputs (all-reduced), 0.1 * 1.5 here
    for r in (r0, r1):
        assert torch.allclose(r["center_from_own_outputs"], torch.full((1, 3), 0.15))


def test_each_process_is_pinned_to_its_own_gpu(monkeypatch):
    import ssl_lessons.distributed as distributed
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("set_device", i))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: calls.update(backend=backend, **kw))
    distributed.setup()
    assert calls["set_device"] == 1 and calls["backend"] == "nccl"
    assert calls["device_id"] == torch.device("cuda", 1)


def test_two_process_ibot_keeps_both_centers_identical_and_averages_every_masked_token(runs):
    r0, r1 = run_two_processes(runs, "ibot")
    for key in ("loss.center", "patch_loss.center"):
        assert torch.equal(r0["state"][key], r1["state"][key]) and r0["state"][key].abs().sum() > 0, key
    for r in (r0, r1):
        assert torch.allclose(r["patch_center_from_own_outputs"], torch.full((1, 3), 1.75))
