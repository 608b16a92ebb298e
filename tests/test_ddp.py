import subprocess
import sys
from pathlib import Path

import torch

from ssl_lessons.backbones import build_backbone


def test_two_process_ddp_keeps_weights_identical_on_both_ranks(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["world"] == r1["world"] == 2 and len(r0["losses"]) == 4
    for name, tensor in r0["state"].items():
        assert torch.equal(tensor, r1["state"][name]), name
    assert r0["losses"] == r1["losses"]  # each rank computes the loss of the global batch
    torch.manual_seed(0)  # the weights moved away from their (seed-0) initialisation
    init = build_backbone("vit", patch_size=8, embed_dim=64, depth=2, num_heads=2).state_dict()
    trained = {k[len("backbone."):]: v for k, v in r0["state"].items() if k.startswith("backbone.")}
    assert not torch.equal(init["vit.patch_embed.proj.weight"], trained["vit.patch_embed.proj.weight"])


def test_two_process_ddp_dino_keeps_the_center_identical_and_global(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path), "dino"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    center0, center1 = r0["state"]["loss.center"], r1["state"]["loss.center"]
    assert center0.abs().sum() > 0 and torch.equal(center0, center1)
    for name, tensor in r0["state"].items():  # student, teacher and center agree on both ranks
        assert torch.equal(tensor, r1["state"][name]), name
    # the center's EMA step uses the mean over both ranks' teacher outputs (all-reduced), 0.1 * 1.5 here
    for r in (r0, r1):
        assert torch.allclose(r["center_from_own_outputs"], torch.full((1, 3), 0.15))
