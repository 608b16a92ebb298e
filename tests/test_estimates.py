"""The computed memory and time of a run on GPUs (estimates.py), against hand counts."""
import dataclasses

import pytest

from ssl_lessons.__main__ import main
from ssl_lessons.config import make_config
from ssl_lessons.estimates import (ACTIVATION_BYTES, CHECKPOINTED_BYTES, LOGIT_BYTES, estimate, forward_flops,
                                   hours_per_epoch, job_count, view_tokens)


def test_tokens_flops_and_hours_by_hand():
    vitl = make_config("imagenet-vitl14-dinov2", {"method": "dinov2", "dataset": "/data"})
    assert view_tokens(vitl, 224) == 16 * 16 + 1 and view_tokens(vitl, 98) == 7 * 7 + 1
    assert view_tokens(dataclasses.replace(vitl, register_tokens=4), 224) == 261
    # one view of 10 tokens through 2 blocks of width 8 with 100 matrix weights: 2*100*10 + 2*4*10*10*8
    assert forward_flops(100, [10], depth=2, width=8) == 2000 + 6400
    assert forward_flops(100, [10, 3], depth=2, width=8) == 8400 + 600 + 2 * 4 * 9 * 8
    est = estimate(vitl, 4, 8)
    assert est.student_tokens == 2 * 257 + 8 * 50 and est.teacher_tokens == 2 * 257
    # 1e12 FLOP per image, 10 GPUs at 50 % of 200 TFLOP/s: 1000 images/s, 3.6e6 images an hour
    one = dataclasses.replace(est, tflops_per_image=1.0)
    assert hours_per_epoch(one, gpus=10, tflops_per_gpu=200, utilisation=0.5, images=3_600_000) == pytest.approx(1.0)
    assert job_count(100.0, 72) == 2 and job_count(72.0, 72) == 1 and job_count(0.5, 72) == 1


def test_activations_of_a_small_dino_by_hand():
    cfg = make_config("smoke", {"method": "dino", "batch_size": "64"})   # 32 px, patch 8, width 64, depth 2
    r = cfg.recipe
    est = estimate(cfg, 1, 2)                                           # 32 images per GPU
    tokens = 2 * (4 * 4 + 1) + r.n_local_crops * ((r.local_size // 8) ** 2 + 1)
    assert est.student_tokens == tokens and est.per_gpu_batch == est.micro_batch == 32
    rows = 32 * (2 + r.n_local_crops)                                   # CLS rows through the head, no masks
    blocks = 32 * tokens * 64 * ACTIVATION_BYTES * 2
    heads = rows * (2 * r.hidden_dim + r.bottleneck_dim) * 2 + rows * r.out_dim * LOGIT_BYTES
    assert est.activation_gib * 2**30 == pytest.approx(blocks + heads)
    halved = estimate(dataclasses.replace(cfg, accum_steps=2), 1, 2)
    assert halved.micro_batch == 16 and halved.activation_gib == pytest.approx(est.activation_gib / 2)
    saved = estimate(dataclasses.replace(cfg, activation_checkpointing=True), 1, 2)
    blocks_saved = 32 * tokens * 64 * (CHECKPOINTED_BYTES * 2 + ACTIVATION_BYTES)
    assert saved.activation_gib * 2**30 == pytest.approx(blocks_saved + heads)


def test_export_script_prints_the_estimate(tmp_path, capsys):
    main(["export-script", "--preset", "imagenet-vitl14-dinov2", "--method", "dinov2", "--set", "dataset=/data",
          "accum_steps=4", "--nodes", "1", "--gpus-per-node", "8", "--hours", "72", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    est = estimate(make_config("imagenet-vitl14-dinov2", {"method": "dinov2", "dataset": "/data", "accum_steps": "4"}),
                   1, 8)
    assert f"128 images a step in 4 micro-batches of 32; about {est.total_gib:.1f} GiB" in out
    assert "chained job(s) of 72 h" in out and "--dependency=afterany" in (tmp_path / "job.sbatch").read_text()
