"""Run by test_ddp.py under `torchrun --nproc_per_node=2`: a few smoke steps, then each rank saves its weights."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny_data  # noqa: E402

from ssl_lessons.config import make_config  # noqa: E402
from ssl_lessons.train import train  # noqa: E402

out = Path(sys.argv[1])
cfg = make_config("smoke", {"out_dir": str(out / "run"), "knn_every": 0.0, "linear_probe": False, "knn_bank": 256,
                            "epochs": 1.0, "batch_size": 64})
run = train(cfg, data=make_tiny_data(), show_progress=False)
rank = dist.get_rank()
torch.save({"state": run["method"].state_dict(), "losses": [h["loss"] for h in run["history"]],
            "world": dist.get_world_size()}, out / f"rank{rank}.pt")
dist.destroy_process_group()
