"""Backbones trained once for longer than a lesson's live run, committed small: the evaluated backbone's weights
in fp16, with the config, the command and the results of the run that made them (data/pretrained/*.pt, beside
the run's log). A lesson loads one next to its short live run and says which result comes from which.

    python -m ssl_lessons train  --method dino --set epochs=5 out_dir=runs/dino-cifar10-laptop-5ep
    python -m ssl_lessons export --method dino --set epochs=5 out_dir=runs/dino-cifar10-laptop-5ep \\
        --name dino-vit-cifar10-5ep

Exporting a finished run is export.py's; this module reads what it wrote, and needs no method to do it (the heads
are DINO heads, shaped by their weights), so a method can load its teacher from here (methods/distill.py).

The released weights of the papers are here too, through timm, where the machine is online (`load_official`):
DINO's ViT-S/16 and DINOv2's ViT-S/14 with and without registers, drawn by lessons 4-6 with the same code as the
course's backbones (attention.py, pca.py). Offline, the lesson says so in one line and goes on.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import timm
import torch

from .backbones import backbone_from_config
from .checkpoint import load_checkpoint
from .errors import CheckpointError, ConfigError
from .heads import DINOHead
from .images import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_square
from .settings import general_from_dict

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "data" / "pretrained"


def check_export_name(name: str) -> str:
    """An exported backbone's name: letters, digits, '.', '_' and '-', not starting with '.' (so it names a file in
    data/pretrained/ and nothing outside it)."""
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name or "") or name.endswith(".pt"):
        raise ConfigError(f"--name {name!r} must be a plain name of letters, digits, '.', '_' and '-' (no folders, no "
                          "'.pt'), e.g. --name dino-vit-cifar10-5ep; it is written to NAME.pt in data/pretrained (or --out)")
    return name


def pretrained_path(name: str, directory: Path = PRETRAINED_DIR) -> Path:
    """data/pretrained/<name>.pt, or `name` itself when it is the path of a .pt file."""
    return Path(name) if str(name).endswith(".pt") else Path(directory) / f"{name}.pt"


def exported_record(backbone: torch.nn.Module, heads: dict[str, torch.nn.Module], config: dict, **extra) -> dict:
    """What data/pretrained/<name>.pt holds, for `backbone` and the `heads` that go with it (Method.export_heads):
    {"config", "backbone", "heads", **extra}, the weights in fp16 (export.py adds the run's result, history and
    command; a run's snapshots their step and evaluations). Sharded (FSDP2) weights are gathered whole: a
    collective under torchrun."""
    def half(module: torch.nn.Module) -> dict:
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in module.state_dict().items()}
        return {k: v.detach().half().cpu() if v.is_floating_point() else v.cpu() for k, v in state.items()}
    return {"config": config, "backbone": half(backbone), "heads": half(torch.nn.ModuleDict(heads)), **extra}


def load_backbone(name: str, directory: Path = PRETRAINED_DIR) -> tuple[torch.nn.Module, dict]:
    """(backbone in float32 and eval mode, the saved record without the weights) for data/pretrained/<name>.pt
    (or a .pt path)."""
    backbone, _, record = load_backbone_and_heads(name, directory)
    return backbone, record


def load_backbone_and_heads(name: str, directory: Path = PRETRAINED_DIR) -> tuple[torch.nn.Module, dict, dict]:
    """(backbone, {head name: head}, record) in float32 and eval mode: an exported teacher for distillation. The
    heads are those the run trained with the backbone (export_heads); backbones exported without them give {}."""
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
    as_float = lambda state: {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # noqa: E731
    backbone = backbone_from_config(general_from_dict(record["config"]), mask_token="mask_token" in record["backbone"])
    backbone.load_state_dict(as_float(record["backbone"]))
    weights = as_float(record.get("heads") or {})
    with torch.random.fork_rng(devices=[]):  # the heads' throw-away initialisation leaves the caller's RNG alone
        heads = {name: DINOHead.from_state_dict({k.split(".", 1)[1]: v for k, v in weights.items()
                                                 if k.split(".", 1)[0] == name}).eval()
                 for name in dict.fromkeys(k.split(".", 1)[0] for k in weights)}
    return backbone.eval(), heads, {k: v for k, v in record.items() if k not in ("backbone", "heads")}


def load_trajectory(name: str, directory: Path = PRETRAINED_DIR) -> tuple[dict[int, torch.nn.Module], dict]:
    """({step: backbone in float32 and eval mode}, the record without the weights) of a run's kept snapshots,
    exported together (export.export_trajectory: `export --trajectory`)."""
    path = pretrained_path(name, directory)
    if not path.exists():
        raise FileNotFoundError(f"no exported trajectory {path}; make it from a finished run that kept snapshots with "
                                "`python -m ssl_lessons export ... --trajectory --name NAME` (data/pretrained/README.md)")
    record = load_checkpoint(path, advice="export the trajectory again (data/pretrained/README.md has the commands)")
    if "backbones" not in record:
        raise CheckpointError(f"{path} is not an exported trajectory; name one written by `export --trajectory`")
    cfg = general_from_dict(record["config"])
    nets = {}
    with torch.random.fork_rng(devices=[]):
        for step, state in record["backbones"].items():
            net = backbone_from_config(cfg, mask_token="mask_token" in state)
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            nets[int(step)] = net.eval()
    return nets, {k: v for k, v in record.items() if k != "backbones"}


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
    big = resize_square(images, size)
    return big, normalize(big, IMAGENET_MEAN, IMAGENET_STD)
