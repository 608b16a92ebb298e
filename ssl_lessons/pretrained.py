"""Backbones trained once for longer than a lesson's live run, committed small: the evaluated backbone's weights
in fp16, with the config, the command and the results of the run that made them (data/pretrained/*.pt, beside
the run's log). A lesson loads one next to its short live run and says which result comes from which.

    python -m ssl_lessons train  --method dino --set epochs=5 out_dir=runs/dino-cifar10-laptop-5ep
    python -m ssl_lessons export --method dino --set epochs=5 out_dir=runs/dino-cifar10-laptop-5ep \\
        --name dino-vit-cifar10-5ep

`export` takes the train command's own options, so it finds the same run folder; it refuses a run whose saved
config differs from them, and records the train command that rebuilds the run's own saved config.

The released weights of the papers are here too, through timm, where the machine is online (`load_official`):
DINO's ViT-S/16 and DINOv2's ViT-S/14 with and without registers, drawn by lessons 4-6 with the same code as the
course's backbones (attention.py, pca.py). Offline, the lesson says so in one line and goes on.
"""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from .checkpoint import atomic_save, load_checkpoint, run_checkpoint
from .config import Config, config_from_dict, config_to_dict, flat_config, train_command
from .data import IMAGENET_MEAN, IMAGENET_STD, normalize
from .errors import CheckpointError, ConfigError

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "data" / "pretrained"


def export_backbone(out_dir: Path, name: str, directory: Path = PRETRAINED_DIR, expected: Config | None = None,
                    overwrite: bool = False) -> Path:
    """Write the finished run in out_dir as directory/<name>.pt: fp16 weights of its evaluated backbone, with the
    config the run saved and the train command that rebuilds exactly that config. `expected`: the config the caller
    thinks the run has (the export command's options); a run trained with another one is refused. `name` is a plain
    file name (no folders); an existing backbone of that name is replaced only with overwrite=True."""
    path = Path(directory) / f"{check_export_name(name)}.pt"
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists already; choose another --name, or add --overwrite to replace it")
    from .methods import build_method
    from .train import RESUMABLE_CHANGES

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
    method = build_method(cfg)
    method.load_state_dict(ckpt["method"])
    half = lambda state: {k: v.half() if v.is_floating_point() else v for k, v in state.items()}  # noqa: E731
    weights = half(method.eval_backbone.state_dict())
    heads = half(torch.nn.ModuleDict(method.export_heads()).state_dict())
    history = json.loads((Path(out_dir) / "history.json").read_text())
    atomic_save({"config": config_to_dict(cfg), "backbone": weights, "heads": heads, "result": result, "evals": history["evals"],
                 "history": history["history"], "command": train_command(cfg, out_dir=_shown(out_dir))}, path)
    return path


def check_export_name(name: str) -> str:
    """An exported backbone's name: letters, digits, '.', '_' and '-', not starting with '.' (so it names a file in
    data/pretrained/ and nothing outside it)."""
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name or "") or name.endswith(".pt"):
        raise ConfigError(f"--name {name!r} must be a plain name of letters, digits, '.', '_' and '-' (no folders, no "
                          "'.pt'), e.g. --name dino-vit-cifar10-5ep; it is written to NAME.pt in data/pretrained (or --out)")
    return name


def _shown(out_dir: Path) -> str:
    """out_dir relative to the repository when it lies inside it (as a command typed there would name it)."""
    try:
        return str(Path(out_dir).resolve().relative_to(PRETRAINED_DIR.parent.parent))
    except ValueError:
        return str(out_dir)


def pretrained_path(name: str, directory: Path = PRETRAINED_DIR) -> Path:
    """data/pretrained/<name>.pt, or `name` itself when it is the path of a .pt file."""
    return Path(name) if str(name).endswith(".pt") else Path(directory) / f"{name}.pt"


def load_backbone(name: str, directory: Path = PRETRAINED_DIR) -> tuple[torch.nn.Module, dict]:
    """(backbone in float32 and eval mode, the saved record without the weights) for data/pretrained/<name>.pt
    (or a .pt path)."""
    backbone, _, record = load_backbone_and_heads(name, directory)
    return backbone, record


def load_backbone_and_heads(name: str, directory: Path = PRETRAINED_DIR) -> tuple[torch.nn.Module, dict, dict]:
    """(backbone, {head name: head}, record) in float32 and eval mode: an exported teacher for distillation. The
    heads are those the run trained with the backbone (export_heads); backbones exported without them give {}."""
    from .backbones import backbone_from_config
    from .methods import build_method

    path = pretrained_path(name, directory)
    if not path.exists():
        available = sorted(p.stem for p in Path(directory).glob("*.pt")) if Path(directory).exists() else []
        raise FileNotFoundError(f"no exported backbone {path}; available: {available or 'none'}. Make it with "
                                "`python -m ssl_lessons train ...` and then `python -m ssl_lessons export ...` "
                                "(see data/pretrained/README.md for the exact commands)")
    record = load_checkpoint(path, advice="export the backbone again (data/pretrained/README.md has the commands)")
    if "backbone" not in record or "config" not in record:
        raise CheckpointError(f"{path} is not an exported backbone (a training checkpoint?); make one from a finished "
                              "run with `python -m ssl_lessons export --method ... --name NAME` and name that")
    cfg = config_from_dict(record["config"])
    as_float = lambda state: {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # noqa: E731
    backbone = backbone_from_config(cfg, mask_token="mask_token" in record["backbone"])
    backbone.load_state_dict(as_float(record["backbone"]))
    heads = {}
    if record.get("heads"):
        with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the caller's RNG alone
            heads = torch.nn.ModuleDict(build_method(cfg).export_heads())
        heads.load_state_dict(as_float(record["heads"]))
        heads = dict(heads.eval().items())
    return backbone.eval(), heads, {k: v for k, v in record.items() if k not in ("backbone", "heads")}


def load_run_backbone(checkpoint: str | Path) -> tuple[torch.nn.Module, Config]:
    """(the evaluated backbone in eval mode, the run's Config) from a training checkpoint, e.g. a run's
    checkpoint.pt or its checkpoint-before-highres.pt."""
    from .methods import build_method

    ckpt = load_checkpoint(Path(checkpoint))
    cfg = config_from_dict(ckpt["config"])
    with torch.random.fork_rng(devices=[]):
        method = build_method(cfg)
    method.load_state_dict(ckpt["method"])
    return method.eval_backbone.eval(), cfg


# the released ViT-S of each paper, by timm's name (the DINOv2 ones at 518 px, the size of their final phase)
OFFICIAL_MODELS = {"DINO ViT-S/16": "vit_small_patch16_224.dino",
                   "DINOv2 ViT-S/14": "vit_small_patch14_dinov2.lvd142m",
                   "DINOv2 ViT-S/14 + 4 registers": "vit_small_patch14_reg4_dinov2.lvd142m"}


def online(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether `host` answers within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def official_model(name: str, pretrained: bool = True) -> torch.nn.Module:
    """timm's model `name` (a value of OFFICIAL_MODELS) in eval mode, without a classifier, taking any image size
    whose sides are multiples of the patch (the position embeddings are resampled). pretrained=False: the same
    network with random weights, which needs no network (the tests draw with it)."""
    return timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True).eval()


def load_official(name: str) -> tuple[torch.nn.Module | None, str]:
    """(the released model `name` through timm, a one-line message), or (None, why not) when it cannot be had."""
    if not online():
        return None, f"offline: huggingface.co is unreachable, so {name} cannot be downloaded; skipped"
    try:
        model = official_model(name)
    except Exception as e:  # noqa: BLE001 — refused mid-way, a tag unknown to this timm version, a full disk, ...
        return None, f"could not load {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return model, f"loaded {name} through timm"


def official_view(images: torch.Tensor, size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 CIFAR-10 images (n, 3, h, w) as the released models take them: resized to `size` (bicubic) and
    normalised with ImageNet's statistics. (the resized uint8 images to draw, the normalised input)"""
    big = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    big = big.round().clamp(0, 255).to(torch.uint8)
    return big, normalize(big, IMAGENET_MEAN, IMAGENET_STD)
