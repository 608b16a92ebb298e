"""Run by test_ddp.py and test_fsdp.py under `torchrun --nproc_per_node=N ddp_worker.py OUT MODE[,MODE...]`: one
process group runs the modes one after the other (a launch costs seconds; a mode a fraction of that), and each rank
saves what a mode ends with to OUT/<mode>/rank<r>.pt. MODE is a method name (a few smoke steps of training; SwAV with
its queue on), "<method>-resume" (stopped after 2 steps and resumed, beside an uninterrupted run), "sinkhorn" (codes of
this rank's rows of one global score matrix OUT/<mode>/scores.pt, the ranks holding different numbers of rows),
"sinkhorn-patches" (DINOv2's patch targets from uneven numbers of masked tokens), "<method>-fsdp[-resume]" (the same
with parallel=fsdp), "engine-<method>-<ddp|fsdp>[-nokoleo][-ac]" (three optimizer steps on the same global crops, each
rank taking its share; also run at one process), "fsdp-save" (a sharded checkpoint at step 2 of 4) or "fsdp-load"
(resume the checkpoint in OUT/<mode>/sharded: the state as loaded, then the rest of the run)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny_data  # noqa: E402

from ssl_lessons import distributed  # noqa: E402
from ssl_lessons.config import make_config  # noqa: E402
from ssl_lessons.losses.dino import DINOLoss  # noqa: E402
from ssl_lessons.methods import build_method  # noqa: E402
from ssl_lessons.train import train  # noqa: E402


def full_state(module):
    """The whole state dict on every rank, also when FSDP2 keeps only a shard of each tensor here."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in state.items()}


def smoke(out, method, name, **extra):
    overrides = {"method": method, "out_dir": str(out / name), "knn_every": 0.0, "linear_probe": False,
                 "knn_bank": 256, "epochs": 1.0, "batch_size": 64, **extra}
    if method == "distill":  # the committed teacher (patch size 4, as the smoke student here)
        overrides.update(patch_size=4)
    if method == "dinov2":  # the high-resolution phase in the last quarter (the last step of 4)
        overrides.update(highres_size=48, highres_fraction=0.25)
    if method == "swav":  # a queue of 128 rows in all: 64 a rank, two local batches; in use from the third step on
        overrides.update(queue_length=128, queue_start=0.0)
    return make_config("smoke", overrides)


def run_mode(mode: str, out: Path) -> dict:
    rank = distributed.rank()
    if mode in ("sinkhorn", "sinkhorn-patches"):
        scores = torch.load(out / "scores.pt")  # (16, 5)
        rows = scores[:6] if rank == 0 else scores[6:]  # 6 rows (masked tokens) here, 10 there
        if mode == "sinkhorn":
            from ssl_lessons.sinkhorn import sinkhorn_knopp
            return {"codes": sinkhorn_knopp(rows, epsilon=0.05, iters=3, n_samples=len(scores))}
        from ssl_lessons.losses.ibot import iBOTPatchLoss  # the count of masked tokens is all-reduced
        return {"codes": iBOTPatchLoss(scores.shape[1], centering="sinkhorn_knopp").targets(rows, teacher_temp=0.05)}

    if mode.startswith("engine-"):
        from ssl_lessons.optim import apply_schedules, drop_frozen_gradients
        from ssl_lessons.parallel import memory_per_rank, wrap
        _, method, parallel, *flags = mode.split("-")
        world = distributed.world_size()
        extra = {"koleo_loss_weight": 0.0} if "nokoleo" in flags else {}
        if method in ("dinov2", "dinov3"):  # LayerScale 0.1, as the laptop preset: at 1e-5 all CLS tokens nearly coincide, and
            extra["layerscale_init"] = 0.1  # KoLeo's nearest neighbours (and its 1/distance gradients) follow rounding
        cfg = smoke(out, method, "engine", parallel=parallel, **extra)
        torch.manual_seed(cfg.seed)
        module = build_method(cfg)
        model = wrap(module, parallel, world, torch.device("cpu"), activation_checkpointing="ac" in flags)
        # SGD, not the loop's AdamW: AdamW divides each gradient by its own running scale, so a gradient that is zero
        # in exact arithmetic (the attention keys' bias: softmax ignores a shift) but 1e-10 of rounding noise moves its
        # weight by a whole lr step either way, depending on the summation order. SGD keeps rounding noise at rounding
        # size.
        optimizer = torch.optim.SGD(module.param_groups(), lr=0.0, momentum=0.9)
        images, views = make_tiny_data().train_images, torch.Generator().manual_seed(123)
        losses = []
        for step in range(3):
            progress = step / 10
            apply_schedules(optimizer, 1e-3, 0.04, progress)
            module.before_step(progress)
            crops = module.make_views(images[step * 64:(step + 1) * 64], views)  # the same global batch everywhere
            loss, _ = model(crops.part(rank, world), diagnostics=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            drop_frozen_gradients(optimizer, progress)
            module.clip_gradients(3.0)  # DINOv2: per student part, a collective under FSDP2
            optimizer.step()
            module.after_step(progress)
            losses.append(distributed.all_reduce_mean(loss.detach().clone()).item())
        return {"losses": losses, "state": full_state(module), "world": world,
                "memory": memory_per_rank(module, optimizer)}

    if mode in ("fsdp-save", "fsdp-load"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        cfg = smoke(out, "dino", "sharded", parallel="fsdp")
        if mode == "fsdp-save":
            run = train(cfg, data=make_tiny_data(), stop_after=2, show_progress=False)
            return {"losses": [h["loss"] for h in run["history"]]}
        loaded = train(cfg, data=make_tiny_data(), stop_after=2, show_progress=False)  # loads, trains no step
        model_state, optimizer_state = get_state_dict(loaded["method"], loaded["optimizer"],
                                                      options=StateDictOptions(full_state_dict=True))
        run = train(cfg, data=make_tiny_data(), show_progress=False)
        return {"model": model_state, "optimizer": optimizer_state, "losses": [h["loss"] for h in run["history"]],
                "result": run["result"]}

    data = make_tiny_data()
    method, *flags = mode.split("-")
    cfg = smoke(out, method, "run", **({"parallel": "fsdp"} if "fsdp" in flags else {}))
    torch.manual_seed(cfg.seed)  # train() starts from this seed: the initial weights
    initial = build_method(cfg).state_dict()
    run = train(cfg, data=data, show_progress=False)
    saved = {"state": full_state(run["method"]), "losses": [h["loss"] for h in run["history"]],
             "world": distributed.world_size(), "rank_state": run["method"].rank_state(), "result": run["result"],
             "initial": initial}
    if "resume" in flags:
        cfg = smoke(out, method, "split", parallel=cfg.parallel)
        first = train(cfg, data=data, stop_after=2, show_progress=False)
        assert first["result"] is None
        resumed = train(cfg, data=data, show_progress=False)
        saved["resumed_state"] = full_state(resumed["method"])
        saved["resumed_rank_state"] = resumed["method"].rank_state()
        saved["resumed_losses"] = [h["loss"] for h in resumed["history"]]
    if mode == "ibot":
        # the patch center from uneven numbers of masked tokens: rank 0 has 1 token of ones, rank 1 three of twos;
        # the global mean is (1 + 3 * 2) / 4 = 1.75 on both ranks (not the mean of the rank means, 1.5)
        from ssl_lessons.losses.ibot import iBOTPatchLoss
        patch_loss = iBOTPatchLoss(3, center_momentum=0.0)
        patch_loss.update_center(torch.full((1 if rank == 0 else 3, 3), float(rank + 1)))
        saved["patch_center_from_own_outputs"] = patch_loss.center.clone()
    if mode == "dino":
        # outside DDP (which would broadcast buffers anyway): each rank sees different teacher outputs
        loss_fn = DINOLoss(3, center_momentum=0.9)
        own = torch.full((2, 3), float(rank + 1))  # rank 0: ones, rank 1: twos -> global mean 1.5
        loss_fn.update_center(own)
        saved["center_from_own_outputs"] = loss_fn.center.clone()
    return saved


if __name__ == "__main__":
    root, modes = Path(sys.argv[1]), sys.argv[2].split(",")
    distributed.setup()
    for mode in modes:
        (root / mode).mkdir(parents=True, exist_ok=True)
        torch.save(run_mode(mode, root / mode), root / mode / f"rank{distributed.rank()}.pt")
    distributed.cleanup()
