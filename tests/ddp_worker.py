"""Run by test_ddp.py under `torchrun --nproc_per_node=2`: a few smoke steps of a method (argv[2], default simclr),
then each rank saves its weights, losses, and (DINO) a center updated from rank-specific teacher outputs."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny_data  # noqa: E402

from ssl_lessons.config import make_config  # noqa: E402
from ssl_lessons.losses.dino import DINOLoss  # noqa: E402
from ssl_lessons.train import train  # noqa: E402

out = Path(sys.argv[1])
method = sys.argv[2] if len(sys.argv) > 2 else "simclr"
cfg = make_config("smoke", {"method": method, "out_dir": str(out / "run"), "knn_every": 0.0, "linear_probe": False,
                            "knn_bank": 256, "epochs": 1.0, "batch_size": 64})
run = train(cfg, data=make_tiny_data(), show_progress=False)
rank = dist.get_rank()
saved = {"state": run["method"].state_dict(), "losses": [h["loss"] for h in run["history"]],
         "world": dist.get_world_size()}
if method == "dino":
    # outside DDP (which would broadcast buffers anyway): each rank sees different teacher outputs
    loss_fn = DINOLoss(3, center_momentum=0.9)
    own = torch.full((2, 3), float(rank + 1))  # rank 0: ones, rank 1: twos -> global mean 1.5
    loss_fn.update_center(own)
    saved["center_from_own_outputs"] = loss_fn.center.clone()
torch.save(saved, out / f"rank{rank}.pt")
dist.destroy_process_group()
