"""From the run in front of you to the same run on many GPUs: a config file, a torchrun launcher, a SLURM script.

    python -m ssl_lessons export-script --method dinov2 --preset cifar10-laptop --nodes 8 --gpus-per-node 8 \\
        --set parallel=fsdp --out launch/dinov2
    export_script(cfg, "launch/dinov2", nodes=8, gpus_per_node=8)          # the same from a notebook

writes
    config.json     every field of the run's config (general and the method's recipe), as train --config reads it
    launch.sh       torchrun on one node (--standalone), or on every node of a multi-node job with c10d rendezvous
                    at $MASTER_ADDR:$MASTER_PORT; NODE_RANK is torchrun's to assign
    job.sbatch      `sbatch job.sbatch`: one task per node, each running launch.sh's torchrun under srun, with the
                    rendezvous endpoint on the job's first node

The global batch (`batch_size`) is the config's: torchrun's processes split it, so the recipe (and the lr, scaled by
the global batch) is the same on 1 GPU and on 64. Runs at more than one process should use parallel=fsdp for large
models; a sharded checkpoint resumes at any number of processes (checkpoint.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path

from .checkpoint import atomic_write_text
from .config import (Config, apply_overrides, base_preset, config_to_dict, general_fields, make_config,
                     recipe_fields)
from .errors import ConfigError, first_line

REPO_ROOT = Path(__file__).resolve().parent.parent
RDZV_PORT = 29500


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """cfg as JSON: its general fields, its preset's name and {"recipe": the method's fields}."""
    path = Path(path)
    atomic_write_text(json.dumps(config_to_dict(cfg), indent=1) + "\n", path)
    return path


def load_config_file(path: str | os.PathLike) -> Config:
    """The Config a file written by save_config holds, checked as a command line's would be: every key of the file's
    method and preset present, none unknown, every value of its field's JSON type (no quoted numbers, true/false for
    switches), then validated."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; write one with `python -m ssl_lessons export-script` "
                          "or launch.save_config(cfg, path)") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; name the config.json inside it") from None
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"config file {path} is not valid JSON ({first_line(e)})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("recipe"), dict):
        raise ConfigError(f"config file {path} must hold a JSON object of settings with a \"recipe\" object inside, "
                          "as export-script writes it")
    method, preset = saved.get("method"), saved.get("preset")
    if not isinstance(method, str) or not isinstance(preset, str):
        raise ConfigError(f"config file {path} must name its \"method\" and \"preset\" as strings")
    dataset = saved["dataset"] if isinstance(saved.get("dataset"), str) else "cifar10"  # ImageNet presets need one
    reference = make_config(base_preset(preset), {"method": method, "dataset": dataset})
    general, own = general_fields(), recipe_fields(reference.recipe)
    values = {k: v for k, v in saved.items() if k not in ("method", "preset", "recipe")}
    unknown = sorted(set(values) - set(general)) + sorted(f"recipe.{k}" for k in set(saved["recipe"]) - set(own))
    missing = (sorted(set(general) - set(values) - {"method"})
               + sorted(f"recipe.{k}" for k in set(own) - set(saved["recipe"])))
    if unknown:
        raise ConfigError(f"config file {path} has keys this version does not know: {', '.join(unknown)}; remove "
                          "them or export the config again")
    if missing:
        raise ConfigError(f"config file {path} lacks {', '.join(missing)}; add them (or export the config again with "
                          "this version)")
    overrides = {}
    for key, value in [*values.items(), *saved["recipe"].items()]:
        expected = general.get(key) or own[key]
        if isinstance(value, str) and expected is not str:
            raise ConfigError(f"config file {path}: {key} takes a {expected.__name__}, not the string {value!r}; "
                              "write it without quotes")
        overrides[key] = value
    cfg = apply_overrides(reference, overrides)
    return dataclasses.replace(cfg, preset=preset)


def launcher(config_file: str, nodes: int, gpus_per_node: int, repo: Path = REPO_ROOT) -> str:
    """The bash script that starts torchrun for one node of the job."""
    if nodes == 1:
        rendezvous = "--standalone"
    else:
        rendezvous = ('--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_id="$RDZV_ID" '
                      '--rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT"')
    return f"""#!/usr/bin/env bash
# {nodes} node(s) x {gpus_per_node} process(es): written by ssl_lessons.launch.export_script.
# One node: run it. Several: run it on every node with MASTER_ADDR set to the first node's address (job.sbatch
# does this under SLURM); torchrun's c10d rendezvous there assigns the ranks.
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
cd "${{SSL_LESSONS_REPO:-{shlex.quote(str(repo))}}}"
NNODES="${{NNODES:-{nodes}}}"
MASTER_ADDR="${{MASTER_ADDR:-localhost}}"
MASTER_PORT="${{MASTER_PORT:-{RDZV_PORT}}}"
RDZV_ID="${{RDZV_ID:-ssl-lessons}}"
export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-8}}"
exec "${{PYTHON:-python}}" -m torch.distributed.run {rendezvous} --nproc_per_node={gpus_per_node} \\
    -m ssl_lessons train --config "$HERE/{config_file}" "$@"
"""


def sbatch_script(cfg: Config, nodes: int, gpus_per_node: int, hours: int = 24, cpus_per_gpu: int = 10) -> str:
    """A SLURM batch script: one task per node, srun starts launch.sh on each, rendezvous on the first node."""
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=ssl-{cfg.method}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --cpus-per-task={cpus_per_gpu * gpus_per_node}
#SBATCH --time={hours}:00:00
#SBATCH --output=%x-%j.out
# {cfg.method} ({cfg.preset}) on {nodes} x {gpus_per_node} GPUs, global batch {cfg.batch_size}, parallel={cfg.parallel}.
# Submit from this folder: sbatch job.sbatch (add #SBATCH --partition / --account lines as your cluster needs).
# A run longer than --time: chain jobs, each resuming the last checkpoint (the same command resumes), e.g. three:
#   jid=$(sbatch --parsable job.sbatch)
#   for i in 2 3; do jid=$(sbatch --parsable --dependency=afterany:$jid job.sbatch); done
# A job killed at its limit loses the steps since its last checkpoint (ckpt_every={cfg.ckpt_every} steps).
set -euo pipefail
HERE="${{SLURM_SUBMIT_DIR:-$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)}}"
export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_PORT={RDZV_PORT}
export NNODES="$SLURM_NNODES"
export RDZV_ID="$SLURM_JOB_ID"
export OMP_NUM_THREADS={cpus_per_gpu}
srun --ntasks="$SLURM_NNODES" --ntasks-per-node=1 bash "$HERE/launch.sh"
"""


def export_script(cfg: Config, out: str | os.PathLike, nodes: int = 1, gpus_per_node: int = 8,
                  hours: int = 24, overwrite: bool = False) -> dict[str, Path]:
    """Write config.json, launch.sh and job.sbatch for cfg into `out`; returns their paths. The run's out_dir is kept
    as the config has it (empty: runs/<method>-<preset> in the repository the launcher runs in). Files of those names
    already in `out` are replaced only with overwrite=True."""
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"need nodes >= 1 and gpus_per_node >= 1, got {nodes} and {gpus_per_node}")
    if hours < 1:
        raise ConfigError(f"--hours is the SLURM job's time limit in hours and must be at least 1, got {hours} (0 "
                          "would mean no limit to SLURM)")
    world = nodes * gpus_per_node
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} does not split over {nodes} x {gpus_per_node} = {world} "
                          f"processes: set batch_size to a multiple of {world}")
    out = Path(out)
    names = {"config": "config.json", "launcher": "launch.sh", "sbatch": "job.sbatch"}
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for {', '.join(names.values())}")
    taken = [n for n in names.values() if (out / n).exists()]
    if taken and not overwrite:
        raise ConfigError(f"{out} holds {', '.join(taken)} already; choose another --out, or add --overwrite to "
                          "replace them")
    paths = {kind: out / name for kind, name in names.items()}
    try:
        save_config(cfg, paths["config"])
        atomic_write_text(launcher(names["config"], nodes, gpus_per_node), paths["launcher"])
        atomic_write_text(sbatch_script(cfg, nodes, gpus_per_node, hours), paths["sbatch"])
    except OSError as e:
        raise ConfigError(f"cannot write into --out {out} ({e.strerror or e}); choose a folder you can write to") \
            from None
    for script in (paths["launcher"], paths["sbatch"]):
        script.chmod(0o755)
    return paths
