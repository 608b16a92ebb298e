"""One training step (step.py), shared by the loop and the benchmark."""
import dataclasses

import pytest
import torch

from ssl_lessons import bench
from ssl_lessons.config import make_config
from ssl_lessons.methods import build_method
from ssl_lessons.step import NonFiniteLoss, set_schedules, training_step


def dino(tiny_data, **overrides):
    cfg = make_config("smoke", {"method": "dino", "batch_size": "16", **overrides})
    torch.manual_seed(0)
    method = build_method(cfg)
    optimizer = torch.optim.AdamW(method.param_groups(), lr=0.0)
    crops = method.make_views(tiny_data.train_images[:16], torch.Generator().manual_seed(0))
    return cfg, method, optimizer, crops


def test_a_step_clips_updates_the_weights_and_then_the_teacher(tiny_data, monkeypatch):
    cfg, method, optimizer, crops = dino(tiny_data)
    lr, wd = set_schedules(optimizer, method, cfg, progress=0.5)
    assert 0 < lr < cfg.lr * cfg.batch_size / 256 and all(g["lr"] == lr * g["lr_multiplier"] for g in optimizer.param_groups)
    clipped = []
    monkeypatch.setattr(method, "clip_gradients", lambda max_norm: clipped.append(max_norm))
    student, teacher = ([p.detach().clone() for p in m.parameters()] for m in (method.backbone, method.teacher.backbone))
    loss, logs = training_step(method, method, optimizer, crops, cfg, 0.5, torch.device("cpu"))
    assert torch.isfinite(loss) and logs == {} and clipped == [cfg.clip_grad]
    assert any(not torch.equal(a, b) for a, b in zip(student, method.backbone.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(teacher, method.teacher.backbone.parameters()))  # EMA moved

    clipped.clear()
    training_step(method, method, optimizer, crops, dataclasses.replace(cfg, clip_grad=0.0), 0.5, torch.device("cpu"))
    assert clipped == []  # clip_grad = 0: no clipping


def test_a_non_finite_loss_stops_the_step_before_the_weights(tiny_data, monkeypatch):
    cfg, method, optimizer, crops = dino(tiny_data)
    set_schedules(optimizer, method, cfg, progress=0.5)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    monkeypatch.setattr(type(method), "forward", lambda self, crops, diagnostics=False: (torch.tensor(float("nan")), {}))
    with pytest.raises(NonFiniteLoss, match="nan"):
        training_step(method, method, optimizer, crops, cfg, 0.5, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items()) and not optimizer.state


def test_the_benchmark_times_the_training_step(tiny_data, monkeypatch):
    cfg = make_config("smoke", {"method": "dino", "batch_size": "16"})
    run = bench._Prepared(cfg, tiny_data)
    clipped = []
    monkeypatch.setattr(run.method, "clip_gradients", lambda max_norm: clipped.append(max_norm))
    run.step()
    assert clipped == [cfg.clip_grad] and all(g["lr"] > 0 for g in run.optimizer.param_groups if g["lr_multiplier"])


def sgd_step(tiny_data, accum_steps: int):
    """The parameters after one plain-SGD step (lr 1: the update is the gradient itself, which AdamW's first step
    would reduce to its sign) of DINO with nothing that couples the images of the batch."""
    cfg, method, _, crops = dino(tiny_data, centering="none", drop_path_rate="0", clip_grad="0",
                                 accum_steps=str(accum_steps))
    optimizer = torch.optim.SGD(method.param_groups(), lr=1.0)
    set_schedules(optimizer, method, cfg, progress=0.5)
    loss, _ = training_step(method, method, optimizer, crops, cfg, 0.5, torch.device("cpu"))
    return loss, {k: v.detach().clone() for k, v in method.named_parameters()}


@pytest.mark.numerics  # also run with other kernels and threads (make test): a tolerance of summation order
def test_accumulated_micro_batches_give_the_whole_batch_step(tiny_data):
    loss_1, whole = sgd_step(tiny_data, 1)
    loss_4, micro = sgd_step(tiny_data, 4)
    torch.manual_seed(0)
    start = dict(build_method(make_config("smoke", {"method": "dino", "batch_size": "16", "centering": "none",
                                                    "drop_path_rate": "0"})).named_parameters())
    moved = max((whole[k] - start[k]).abs().max().item() for k in whole)
    assert moved > 1e-4  # the step did something to compare
    # fp32 sums of the same terms in another order: differences of a few ulps of the largest update
    for k in whole:
        torch.testing.assert_close(micro[k], whole[k], rtol=0, atol=1e-5 * moved)
    torch.testing.assert_close(loss_4, loss_1, rtol=1e-5, atol=0)


def test_accumulation_synchronises_the_gradients_once_per_step(tiny_data, monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        calls = {}
        for n in (1, 2):
            cfg, method, optimizer, crops = dino(tiny_data, centering="none", accum_steps=str(n))
            model = DDP(method)
            count = []

            def hook(state, bucket):
                count.append(1)
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut
            model.register_comm_hook(None, hook)
            set_schedules(optimizer, method, cfg, progress=0.5)
            training_step(model, method, optimizer, crops, cfg, 0.5, torch.device("cpu"))
            calls[n] = len(count)
        assert calls[1] > 0 and calls[2] == calls[1]  # the first micro-batch's backward communicated nothing
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["simclr", "byol", "swav"])
def test_methods_built_on_the_whole_batch_refuse_accumulation(method):
    from ssl_lessons.errors import ConfigError
    with pytest.raises(ConfigError, match="accum_steps=1"):
        make_config("smoke", {"method": method, "accum_steps": "2"})


def test_micro_batches_must_split_each_process_batch():
    from ssl_lessons.errors import ConfigError
    from ssl_lessons.train import check_run
    with pytest.raises(ConfigError, match="accum_steps=3 equal micro-batches"):
        check_run(make_config("smoke", {"method": "dino", "accum_steps": "3"}), world=2)
