"""A finished run's evaluated backbone: exported small to data/pretrained/<name>.pt (fp16 weights, the heads that go
with it, the config, the command and the results; pretrained.py reads it back), or loaded from a training
checkpoint as it is.

    python -m ssl_lessons train  --method dino --set epochs=5 out_dir=runs/dino-cifar10-laptop-5ep
    python -m ssl_lessons export --method dino --set epochs=5 out_dir=runs/dino-cifar10-laptop-5ep \\
        --name dino-vit-cifar10-5ep

`export` takes the train command's own options, so it finds the same run folder; it refuses a run whose saved
config differs from them, and records the train command that rebuilds the run's own saved config.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import atomic_save, load_checkpoint, run_checkpoint
from .config import Config, config_from_dict, config_to_dict, flat_config, train_command
from .errors import CheckpointError, ConfigError
from .methods import build_method
from .pretrained import PRETRAINED_DIR, check_export_name, exported_record
from .train import RESUMABLE_CHANGES


def export_backbone(out_dir: Path, name: str, directory: Path = PRETRAINED_DIR, expected: Config | None = None,
                    overwrite: bool = False) -> Path:
    """Write the finished run in out_dir as directory/<name>.pt: fp16 weights of its evaluated backbone, with the
    config the run saved and the train command that rebuilds exactly that config. `expected`: the config the caller
    thinks the run has (the export command's options); a run trained with another one is refused. `name` is a plain
    file name (no folders); an existing backbone of that name is replaced only with overwrite=True."""
    path = _target(directory, name, overwrite)
    ckpt, cfg, result, history = _finished_run(out_dir, expected)
    method = build_method(cfg)
    method.load_state_dict(ckpt["method"])
    atomic_save(exported_record(method.eval_backbone, method.export_heads(), config_to_dict(cfg), result=result,
                                evals=history["evals"], history=history["history"],
                                command=train_command(cfg, out_dir=_shown(out_dir))), path)
    return path


def _target(directory: Path, name: str, overwrite: bool) -> Path:
    path = Path(directory) / f"{check_export_name(name)}.pt"
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists already; choose another --name, or add --overwrite to replace it")
    return path


def _finished_run(out_dir: Path, expected: Config | None) -> tuple[dict, Config, dict, dict]:
    """(the last checkpoint, its Config, results.json, history.json) of the finished run in out_dir; a run trained
    with another config than `expected` (the export command's options) is refused."""
    result_path = Path(out_dir) / "results.json"
    if not result_path.exists():
        raise FileNotFoundError(f"{result_path} does not exist: finish the run first (the same train command "
                                "resumes it), then export it")
    ckpt = load_checkpoint(run_checkpoint(out_dir))  # checkpoint.pt, or a sharded checkpoint/ consolidated
    result = json.loads(result_path.read_text())
    if result.get("steps") != ckpt["step"]:
        raise CheckpointError(f"{out_dir}: results.json is of step {result.get('steps')} but the checkpoint of step "
                              f"{ckpt['step']}; finish the run (the same train command) before exporting it")
    cfg = config_from_dict(ckpt["config"])
    if expected is not None:
        before, now = flat_config(cfg), flat_config(expected)
        diff = [f"{k}: {before.get(k)!r} in the run, {v!r} here" for k, v in now.items()
                if k not in RESUMABLE_CHANGES | {"preset"} and before.get(k) != v]
        if diff:
            raise ConfigError(f"{out_dir} was trained with another config ({'; '.join(diff)}); give export the "
                              "train command's own options")
    return ckpt, cfg, result, json.loads((Path(out_dir) / "history.json").read_text())


def run_snapshots(out_dir: Path) -> dict[int, Path]:
    """{step: path} of the snapshots a run kept (Config.keep_snapshots: out_dir/snapshots/step-NNNNNN.pt)."""
    found = {int(p.stem.split("-")[1]): p for p in sorted((Path(out_dir) / "snapshots").glob("step-*.pt"))}
    if not found:
        raise FileNotFoundError(f"{out_dir} kept no snapshots: train it with --set keep_snapshots=true knn_every=0.5 "
                                "(each periodic evaluation then keeps one)")
    return found


def best_dense_step(evals: list[dict]) -> int:
    """The step of the periodic evaluation with the highest dense mIoU (Config.periodic_dense)."""
    scored = [e for e in evals if "dense_miou" in e]
    if not scored:
        raise ConfigError("no periodic evaluation measured the dense probe: train with --set periodic_dense=true")
    return max(scored, key=lambda e: e["dense_miou"])["step"]


def export_snapshot(out_dir: Path, name: str, step: int | str, directory: Path = PRETRAINED_DIR,
                    expected: Config | None = None, overwrite: bool = False) -> Path:
    """A kept snapshot of a finished run, as an exported backbone (with its heads; pretrained.load_backbone_and_heads,
    Config.init_from): the one of `step`, or with step="best-dense" the one whose dense mIoU was highest. It also
    holds the run's whole history of evaluations and the train command (as `export_backbone`)."""
    path = _target(directory, name, overwrite)
    ckpt, cfg, result, history = _finished_run(out_dir, expected)
    snapshots = run_snapshots(out_dir)
    if step == "best-dense":
        step = best_dense_step(history["evals"])
    elif not str(step).isdigit():
        raise ConfigError(f"--snapshot takes a step number or best-dense, not {step!r}")
    step = int(step)
    if step not in snapshots:
        raise ConfigError(f"{out_dir} kept no snapshot of step {step}; it has steps {sorted(snapshots)}")
    record = load_checkpoint(snapshots[step])
    atomic_save({**record, "step": step, "run_result": result, "evals": history["evals"],
                 "command": train_command(cfg, out_dir=_shown(out_dir))}, path)
    return path


def export_trajectory(out_dir: Path, name: str, every: int = 1, directory: Path = PRETRAINED_DIR,
                      expected: Config | None = None, overwrite: bool = False) -> Path:
    """Every `every`-th kept snapshot's backbone (fp16, no heads) of a finished run in one file, with the run's
    evaluations and command: how its features changed (lesson 9). pretrained.load_trajectory reads it."""
    path = _target(directory, name, overwrite)
    ckpt, cfg, result, history = _finished_run(out_dir, expected)
    snapshots = run_snapshots(out_dir)
    steps = sorted(snapshots)[::every]
    atomic_save({"config": config_to_dict(cfg), "backbones": {s: load_checkpoint(snapshots[s])["backbone"] for s in steps},
                 "result": result, "evals": history["evals"], "history": history["history"],
                 "command": train_command(cfg, out_dir=_shown(out_dir))}, path)
    return path


def _shown(out_dir: Path) -> str:
    """out_dir relative to the repository when it lies inside it (as a command typed there would name it)."""
    try:
        return str(Path(out_dir).resolve().relative_to(PRETRAINED_DIR.parent.parent))
    except ValueError:
        return str(out_dir)


def load_run_backbone(checkpoint: str | Path) -> tuple[torch.nn.Module, Config]:
    """(the evaluated backbone in eval mode, the run's Config) from a training checkpoint, e.g. a run's
    checkpoint.pt or its checkpoint-before-highres.pt."""
    ckpt = load_checkpoint(Path(checkpoint))
    cfg = config_from_dict(ckpt["config"])
    with torch.random.fork_rng(devices=[]):
        method = build_method(cfg)
    method.load_state_dict(ckpt["method"])
    return method.eval_backbone.eval(), cfg
