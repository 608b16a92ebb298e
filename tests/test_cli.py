"""Every command a user types, run as the user types it: a subprocess on the real CIFAR-10 cache at the smoke preset.
Training under torchrun with DDP and with FSDP2 for every method, with the periodic k-NN on (an evaluation before the
first step); export; export-script and the launcher it writes (train --config under torchrun); train --config at one
process; bench; the collapse studies; the ablation; lesson 8's curation study (its `curate` is run in
test_curation.py). Each checks what the command made, not only that it exited.

A process costs ~6 s of imports on 2 cores, so the suite launches one per path a user takes and no more: a command's
refusals (exit status 2, one line) are checked in this process through the same `main`, and `export` exports the
run that the torchrun test of its method already trained."""
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_lessons.__main__ import main
from ssl_lessons.checkpoint import load_checkpoint, sharded_meta
from ssl_lessons.config import make_config
from ssl_lessons.methods import METHODS
from ssl_lessons.pretrained import load_backbone, load_backbone_and_heads, load_trajectory

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "ssl_lessons"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ssl_lessons"]


def refused(argv: list, capsys) -> str:
    """The one-line error of `python -m ssl_lessons *argv`, run through the same `main` in this process."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def run(args, tmp_path, expect=0, timeout=300, **env):
    """The command's finished process; its exit status must be `expect` (2: a one-line error)."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "SSL_LESSONS_RUNS": str(tmp_path / "runs"), **env})
    assert proc.returncode == expect, f"{' '.join(map(str, args))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if expect == 2:
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr  # one line
    return proc


def smoke_steps(method: str) -> int:
    cfg = make_config("smoke", {"method": method})
    return math.ceil(cfg.epochs * (cfg.train_subset // cfg.batch_size))


def check_finished_run(out: Path, method: str, parallel: str, processes: int) -> dict:
    steps = smoke_steps(method)
    result = json.loads((out / "results.json").read_text())
    evals = json.loads((out / "history.json").read_text())["evals"]
    assert result["processes"] == processes and result["steps"] == steps
    assert result["config"]["method"] == method and result["config"]["parallel"] == parallel
    assert evals[0]["step"] == 0 and evals[-1]["step"] == steps  # k-NN before the first step and at the end
    assert 0 < result["knn_top1"] <= 100 and 0 < result["linear_top1"] <= 100
    if parallel == "fsdp":
        meta = sharded_meta(out / "checkpoint")
        assert meta["world"] == processes and meta["step"] == steps and not (out / "checkpoint.pt").exists()
    else:
        ckpt = load_checkpoint(out / "checkpoint.pt")
        assert len(ckpt["rank_states"]) == processes and ckpt["step"] == steps
    assert (out / "curves.png").stat().st_size > 0
    return result


# runs that also take each process's batch in 2 micro-batches (gradient accumulation), under each engine
ACCUMULATED = {("ibot", "ddp"), ("dinov2", "fsdp")}


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory):
    """{(method, parallel): (finished process, its out_dir)}: each launch once, shared by the tests that read it."""
    runs = {}

    def trained(method: str, parallel: str):
        if (method, parallel) not in runs:
            root = tmp_path_factory.mktemp(f"{method}-{parallel}")
            accumulate = ["accum_steps=2"] if (method, parallel) in ACCUMULATED else []
            proc = run([*TORCHRUN, "train", "--method", method, "--preset", "smoke", "--no-baselines",
                        "--set", f"parallel={parallel}", f"out_dir={root / 'run'}", *accumulate], root)
            runs[method, parallel] = proc, root / "run"
        return runs[method, parallel]
    return trained


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
@pytest.mark.parametrize("method", list(METHODS))
def test_train_under_torchrun_with_every_method_and_engine(torchrun_runs, method, parallel):
    proc, out = torchrun_runs(method, parallel)
    result = check_finished_run(out, method, parallel, processes=2)
    assert proc.stdout.count("Results on CIFAR-10 test") == 1  # rank 0 alone prints the table
    assert f"{result['knn_top1']:8.1f} %" in proc.stdout
    if (method, parallel) in ACCUMULATED:
        assert result["config"]["accum_steps"] == 2 and "accum_steps=2: micro-batches of 16 images" in proc.stdout


def test_export_script_launcher_runs_the_saved_config_under_torchrun(tmp_path, capsys):
    job, out = tmp_path / "job", tmp_path / "run"
    proc = run([*CLI, "export-script", "--method", "dinov2", "--preset", "smoke", "--nodes", "1", "--gpus-per-node",
                "2", "--out", job, "--set", "parallel=fsdp", f"out_dir={out}"], tmp_path)
    assert "global batch 64 (32 per process)" in proc.stdout
    saved = json.loads((job / "config.json").read_text())
    assert saved["method"] == "dinov2" and saved["parallel"] == "fsdp" and saved["out_dir"] == str(out)
    proc = run(["bash", job / "launch.sh"], tmp_path, PYTHON=sys.executable, SSL_LESSONS_REPO=str(REPO))
    check_finished_run(out, "dinov2", "fsdp", processes=2)
    assert "random vit" in proc.stdout  # lesson 0's yardsticks, computed by both processes together
    # the same folder again: refused, the user's files kept; --overwrite replaces them
    (job / "launch.sh").write_text("# mine\n")
    refused(["export-script", "--method", "dinov2", "--preset", "smoke", "--out", job], capsys)
    assert (job / "launch.sh").read_text() == "# mine\n"
    main(["export-script", "--method", "dinov2", "--preset", "smoke", "--gpus-per-node", "2", "--out", str(job),
          "--overwrite"])
    assert "torch.distributed.run" in (job / "launch.sh").read_text()


def test_train_config_runs_a_saved_config_at_one_process_beside_lesson_0s_yardsticks(tmp_path):
    job, out = tmp_path / "job", tmp_path / "run"
    main(["export-script", "--method", "simclr", "--preset", "smoke", "--gpus-per-node", "1", "--out", str(job),
          "--set", f"out_dir={out}", "epochs=0.125"])
    proc = run([*CLI, "train", "--config", job / "config.json", "--set", "knn_every=0.0625"], tmp_path)
    result = json.loads((out / "results.json").read_text())
    assert result["steps"] == 2 and result["config"]["epochs"] == 0.125 and result["processes"] == 1
    assert result["config"]["knn_every"] == 0.0625 and 0 < result["linear_top1"] <= 100  # --set over the file
    evals = json.loads((out / "history.json").read_text())["evals"]
    assert [e["step"] for e in evals] == [0, 1, 2] and load_checkpoint(out / "checkpoint.pt")["step"] == 2
    table = proc.stdout[proc.stdout.index("Results on"):]
    assert "raw pixels" in table and "random" in table and "simclr (" in table


def test_export_writes_a_loadable_backbone_and_never_overwrites_silently(tmp_path, torchrun_runs, capsys):
    _, out = torchrun_runs("dino", "ddp")                  # the run that test trained under torchrun
    shelf = tmp_path / "shelf"
    common = ["--method", "dino", "--preset", "smoke", "--set", f"out_dir={out}", "parallel=ddp"]
    proc = run([*CLI, "export", *common, "--name", "tiny-dino", "--out", shelf], tmp_path)
    assert "tiny-dino.pt" in proc.stdout
    backbone, record = load_backbone("tiny-dino", directory=shelf)
    assert record["result"]["steps"] == smoke_steps("dino") and "--method dino" in record["command"]
    before = (shelf / "tiny-dino.pt").read_bytes()
    refused(["export", *common, "--name", "tiny-dino", "--out", shelf], capsys)
    assert (shelf / "tiny-dino.pt").read_bytes() == before
    refused(["export", *common, "--name", "../escape", "--out", shelf], capsys)
    assert [p.name for p in tmp_path.rglob("*.pt") if "escape" in p.name] == []
    (shelf / "tiny-dino.pt").write_bytes(b"stale")
    main(["export", *map(str, common), "--name", "tiny-dino", "--out", str(shelf), "--overwrite"])
    assert (shelf / "tiny-dino.pt").read_bytes() == before  # replaced by the same export


def test_bench_measures_training_and_augmentation_rates(tmp_path, capsys):
    proc = run([*CLI, "bench", "--method", "simclr", "--preset", "smoke", "--steps", "2"], tmp_path)
    rates = [line for line in proc.stdout.splitlines() if "images/s" in line]
    assert len(rates) == 3 and all(float(line.split()[-4]) > 0 for line in rates)
    refused(["bench", "--preset", "smoke", "--steps", "0"], capsys)


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_collapse_study_trains_each_variant_and_reports_its_diagnostics(tmp_path, method, capsys):
    proc = run([*CLI, "collapse-study", "--method", method, "--preset", "smoke"], tmp_path, timeout=600)
    measure = "teacher entropy" if method == "dino" else "effective rank"
    rows = [line for line in proc.stdout.splitlines() if measure in line]
    variants = importlib.import_module(f"ssl_lessons.methods.{method}").COLLAPSE_VARIANTS
    assert [row[:28].strip() for row in rows] == list(variants) and all("k-NN" in row for row in rows)
    refused(["collapse-study", "--method", method, "--preset", "imagenet-vits16-dino"], capsys)


def test_ablation_trains_every_variant_and_tabulates_it(tmp_path):
    proc = run([*CLI, "ablation", "--preset", "smoke"], tmp_path, timeout=600)
    table = proc.stdout[proc.stdout.index("DINOv2 ablation"):].splitlines()[2:]
    assert [row.split()[0] for row in table] == ["full", "no", "EMA", "shared", "4"]
    assert all(0 < float(row.split("%")[0].split()[-1]) <= 100 for row in table)


def test_curation_study_trains_simclr_on_each_curated_pool(tmp_path):
    proc = run([*CLI, "curation-study", "--preset", "smoke", "--steps", "3"], tmp_path, timeout=600)
    out = proc.stdout
    assert "thresholds (simclr-vit-cifar10-laptop)" in out
    stages = [line.split()[0] for line in out[out.index("thresholds"):].splitlines()[1:6]]
    assert stages == ["pool", "self-deduplication", "relative", "retrieval", "balanced"]
    table = out[out.index("SimCLR (smoke), 3 steps"):].splitlines()[1:]
    assert [row.split()[0] for row in table] == ["uncurated", "deduplicated", "retrieved", "balanced"]
    for arm in ("uncurated", "deduplicated", "retrieved", "balanced"):
        result = json.loads((tmp_path / "runs" / f"lesson8-{arm}-smoke-3steps" / "results.json").read_text())
        assert result["steps"] == 3 and result["method"] == "simclr" and 10 < result["knn_top1"] <= 100


def test_lesson_9s_commands_keep_snapshots_export_the_best_dense_one_and_refine_from_it(tmp_path, capsys):
    # the long run (periodic k-NN and dense probe, snapshots kept), its exports, and a DINOv3 run started from one
    long_run = ["--method", "dinov2", "--preset", "smoke", "--set", f"out_dir={tmp_path / 'long'}", "epochs=0.5",
                "knn_every=0.125", "periodic_dense=true", "keep_snapshots=true"]
    run([*CLI, "train", "--no-baselines", *long_run], tmp_path, timeout=600)
    history = json.loads((tmp_path / "long" / "history.json").read_text())
    assert len(history["evals"]) == 5 and all("dense_miou" in e for e in history["evals"])  # steps 0, 2, 4, 6, 8
    shelf = tmp_path / "shelf"
    run([*CLI, "export", *long_run, "--snapshot", "best-dense", "--name", "best", "--out", shelf], tmp_path)
    run([*CLI, "export", *long_run, "--trajectory", "--name", "path", "--out", shelf], tmp_path)
    backbone, heads, record = load_backbone_and_heads(shelf / "best.pt")
    best = max(history["evals"], key=lambda e: e["dense_miou"])
    assert record["step"] == best["step"] and set(heads) == {"head", "patch_head"}
    nets, trajectory = load_trajectory(shelf / "path.pt")
    assert sorted(nets) == [0, 2, 4, 6, 8] and trajectory["evals"] == history["evals"]
    assert torch.equal(nets[record["step"]].state_dict()["vit.pos_embed"], backbone.state_dict()["vit.pos_embed"])
    assert not torch.equal(nets[0].state_dict()["vit.pos_embed"], nets[8].state_dict()["vit.pos_embed"])
    refused(["export", *long_run, "--snapshot", "3", "--name", "x", "--out", shelf], capsys)  # no snapshot of step 3
    refine = ["--method", "dinov3", "--preset", "smoke", "--set", f"out_dir={tmp_path / 'refined'}",
              f"init_from={shelf / 'best.pt'}"]
    run([*CLI, "train", "--no-baselines", *refine], tmp_path, timeout=600)
    result = json.loads((tmp_path / "refined" / "results.json").read_text())
    assert result["config"]["init_from"].endswith("best.pt") and "gram_loss" in result["final_logs"]
