"""Configuration as one plain dataclass, presets as named overrides, and a strict override step.

    cfg = make_config("cifar10-laptop", {"epochs": "2", "lr": "2e-3"})

Unknown keys and values of the wrong type are rejected with a message that says what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field


@dataclass
class Config:
    # --- what to learn from -------------------------------------------------------------------
    method: str = "simclr"          # simclr, byol, swav, dino
    dataset: str = "cifar10"        # "cifar10", or the path of any ImageFolder tree (train/ and test/ inside)
    data_source: str = ""           # CIFAR-10 folder or .tar.gz; empty = $SSL_LESSONS_CIFAR10, data/, or download
    image_size: int = 32            # images are cached at this size (ImageFolder trees are resized to it)
    train_subset: int = 0           # use only this many training images (0 = all); for quick runs
    test_subset: int = 0            # likewise for the test images
    # --- backbone ---------------------------------------------------------------------------------
    backbone: str = "vit"           # "vit" (timm; the fast choice on a CPU) or "resnet18" (CIFAR variant)
    patch_size: int = 4             # ViT patch size; 4 at 32 px gives an 8x8 grid
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    global_pool: str = "avg"        # ViT feature: "avg" of the patch tokens or the CLS "token"
    # --- views --------------------------------------------------------------------------------------
    crop_scale_min: float = 0.08    # RandomResizedCrop area range (crop_scale_min, 1)
    jitter_strength: float = 0.5    # colour distortion strength s (SimCLR App. A: 0.5 for CIFAR-10)
    # --- SimCLR ---------------------------------------------------------------------------------------
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    temperature: float = 0.5        # NT-Xent tau; the paper's CIFAR-10 setting is 0.5
    # --- BYOL (lesson 2) --------------------------------------------------------------------------------
    pred_hidden_dim: int = 512
    teacher_momentum: float = 0.996     # EMA momentum tau at the start; cosine up to teacher_momentum_end
    teacher_momentum_end: float = 1.0
    use_predictor: bool = True          # False: the collapse study's "no predictor" run
    # --- SwAV and multi-crop (lesson 3) -------------------------------------------------------------------
    num_prototypes: int = 300
    swav_temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    freeze_prototypes: float = 0.05     # fraction of training with frozen prototypes (the paper: the first epoch)
    queue_length: int = 0               # past embeddings Sinkhorn also balances over (0 = no queue)
    n_local_crops: int = 4              # multi-crop: 2 global views + this many local views
    local_size: int = 16
    global_scale_min: float = 0.14      # global crops cover (global_scale_min, 1) of the image
    local_scale_min: float = 0.05       # local crops cover (local_scale_min, global_scale_min)
    # --- DINO (lesson 4) ------------------------------------------------------------------------------------
    dino_out_dim: int = 4096            # K, the head's output dimension (the paper: 65536 for ImageNet)
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    norm_last_layer: bool = True        # fix the norm of the last layer's rows to 1 (weight normalisation, g = 1)
    freeze_last_layer: float = 0.01     # fraction of training with the last layer frozen (the paper: 1 of 100 epochs)
    student_temp: float = 0.1
    teacher_temp: float = 0.07          # reached after the warm-up ...
    teacher_temp_start: float = 0.04    # ... from this value
    teacher_temp_warmup: float = 0.3    # fraction of training (the paper: 30 of 100 epochs)
    centering: bool = True              # False: the collapse study's "no centering" run
    center_momentum: float = 0.9
    # --- optimisation -------------------------------------------------------------------------------
    epochs: float = 100.0           # may be fractional
    batch_size: int = 256           # global batch (split across DDP ranks)
    lr: float = 1e-3                # AdamW peak learning rate per 256 images (scaled linearly with batch)
    min_lr: float = 1e-6            # cosine end value
    warmup: float = 0.1             # fraction of training spent warming lr up linearly from 0
    weight_decay: float = 0.05      # cosine schedule from weight_decay to weight_decay_end
    weight_decay_end: float = 0.05
    clip_grad: float = 3.0          # max gradient norm per parameter tensor (0 = no clipping)
    # --- bookkeeping ------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"            # auto = cuda, then mps, then cpu
    amp: bool = True                # bf16 autocast where the device supports it well (cuda)
    out_dir: str = ""               # empty = runs/<method>-<preset>
    ckpt_every: int = 200           # steps between checkpoints (one is always written at the end)
    log_every: int = 10             # steps between history records
    knn_every: float = 0.0          # epochs between k-NN evaluations during training (0 = only at the end)
    knn_bank: int = 10000           # training images in the bank of the periodic k-NN (the final one uses all)
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_probe: bool = True       # also fit a logistic-regression probe at the end
    probe_max_iter: int = 1000      # L-BFGS iterations of the probe (scikit-learn warns if it stops before converging)
    eval_batch_size: int = 512
    preset: str = field(default="", metadata={"internal": True})


PRESETS: dict[str, dict] = {
    # The learner's default: about 15 minutes of training on a 2-core laptop CPU.
    "cifar10-laptop": dict(patch_size=4, embed_dim=128, depth=4, num_heads=4, global_pool="avg",
                           epochs=3.5, batch_size=128, lr=2e-3, warmup=0.05, temperature=0.2,
                           crop_scale_min=0.2, knn_every=1.0),
    # A tiny budget for tests: seconds, not minutes. Its numbers mean nothing.
    "smoke": dict(train_subset=1024, test_subset=512, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                  proj_hidden_dim=64, proj_dim=32, epochs=0.25, batch_size=64, ckpt_every=2, log_every=1,
                  knn_every=0.125, knn_bank=1024, linear_probe=True, probe_max_iter=100, eval_batch_size=256),
}


class ConfigError(ValueError):
    pass


def _parse(name: str, text, target_type):
    if not isinstance(text, str):
        value = text
    elif target_type is bool:
        low = text.lower()
        if low not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{name} takes true or false, not {text!r}")
        value = low in ("1", "true", "yes")
    else:
        try:
            value = target_type(text)
        except ValueError:
            raise ConfigError(f"{name} takes a {target_type.__name__}, not {text!r}") from None
    if target_type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, target_type) or (target_type is int and isinstance(value, bool)):
        raise ConfigError(f"{name} takes a {target_type.__name__}, not {type(value).__name__} {value!r}")
    return value


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """Return a copy of cfg with overrides (strings from the command line, or Python values) applied."""
    types = {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if not f.metadata.get("internal")}
    changes = {}
    for key, text in overrides.items():
        if key not in types:
            close = difflib.get_close_matches(key, types, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint} Known keys: {', '.join(sorted(types))}")
        changes[key] = _parse(key, text, types[key])
    return validate(dataclasses.replace(cfg, **changes))


def validate(cfg: Config) -> Config:
    positive = ["image_size", "patch_size", "embed_dim", "depth", "num_heads", "batch_size", "epochs", "lr",
                "temperature", "ckpt_every", "log_every", "knn_k", "knn_temperature", "eval_batch_size"]
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("num_prototypes", "swav_temperature", "sinkhorn_epsilon", "sinkhorn_iters", "local_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("teacher_momentum", "teacher_momentum_end", "freeze_prototypes", "global_scale_min",
                "local_scale_min"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {getattr(cfg, key)}")
    for key in ("dino_out_dim", "dino_hidden_dim", "dino_bottleneck_dim", "student_temp", "teacher_temp",
                "teacher_temp_start"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("freeze_last_layer", "center_momentum"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {getattr(cfg, key)}")
    if not 0 <= cfg.teacher_temp_warmup < 1:
        raise ConfigError(f"teacher_temp_warmup is a fraction of training in [0, 1), got {cfg.teacher_temp_warmup}")
    if cfg.local_scale_min >= cfg.global_scale_min:
        raise ConfigError(f"local_scale_min ({cfg.local_scale_min}) must be below global_scale_min "
                          f"({cfg.global_scale_min}): local crops are the small ones")
    if cfg.queue_length < 0 or cfg.n_local_crops < 0:
        raise ConfigError("queue_length and n_local_crops must be >= 0")
    if not 0 <= cfg.warmup < 1:
        raise ConfigError(f"warmup is a fraction of training in [0, 1), got {cfg.warmup}")
    if not 0 < cfg.crop_scale_min <= 1:
        raise ConfigError(f"crop_scale_min must be in (0, 1], got {cfg.crop_scale_min}")
    if cfg.global_pool not in ("avg", "token"):
        raise ConfigError(f"global_pool is 'avg' or 'token', got {cfg.global_pool!r}")
    if cfg.backbone not in ("vit", "resnet18"):
        raise ConfigError(f"backbone is 'vit' or 'resnet18', got {cfg.backbone!r}")
    return cfg


# A method's own recipe, whatever the preset (applied after PRESETS[preset]): DINO's from main_dino.py.
METHOD_DEFAULTS: dict[str, dict] = {
    "dino": dict(weight_decay=0.04, weight_decay_end=0.4, global_pool="token", global_scale_min=0.4,
                 local_scale_min=0.05),
}

# What a preset changes for one method only: (preset, method) -> overrides, applied after PRESETS[preset].
# BYOL's target forward and SwAV's local crops cost extra per image, so fewer epochs fit the same ~15 minutes.
METHOD_PRESETS: dict[tuple[str, str], dict] = {
    ("cifar10-laptop", "byol"): dict(epochs=2.6, teacher_momentum=0.99),  # BYOL's tau for short runs / small batches
    ("cifar10-laptop", "swav"): dict(epochs=2.3, num_prototypes=100),
    ("smoke", "swav"): dict(n_local_crops=2, num_prototypes=16),
    # DINO: main_dino.py's default teacher temperature, a constant 0.04 (measured steadier here than the
    # 0.04 -> 0.07 warm-up of the paper's best ViT-S runs, which Config keeps as its default; see lesson 4)
    ("cifar10-laptop", "dino"): dict(epochs=1.6, teacher_momentum=0.99, dino_out_dim=4096, dino_hidden_dim=1024,
                                     freeze_last_layer=0.05, teacher_temp=0.04),
    ("smoke", "dino"): dict(n_local_crops=2, dino_out_dim=64, dino_hidden_dim=64, dino_bottleneck_dim=32),
}


def make_config(preset: str = "cifar10-laptop", overrides: dict | None = None) -> Config:
    """PRESETS[preset], METHOD_DEFAULTS[method], METHOD_PRESETS[(preset, method)], then `overrides` (which may
    name the method)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    method = (overrides or {}).get("method", Config.method)
    cfg = apply_overrides(Config(), {**PRESETS[preset], **METHOD_DEFAULTS.get(method, {}),
                                     **METHOD_PRESETS.get((preset, method), {})})
    cfg = dataclasses.replace(cfg, preset=preset)
    return apply_overrides(cfg, overrides or {})


def variant_configs(preset: str, method: str, variants: dict[str, dict], **common) -> dict[str, Config]:
    """One config per named variant of a method (an ablation), each writing to its own run folder
    runs/<method>-<preset>-<variant slug>. `common` overrides apply to all of them."""
    import re
    out = {}
    for name, changes in variants.items():
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        cfg = make_config(preset, {"method": method, **common, **changes})
        out[name] = dataclasses.replace(cfg, preset=f"{preset}-{slug}")
    return out


SMOKE_ENV = "SSL_LESSONS_SMOKE"


def notebook_preset() -> str:
    """The preset a notebook runs at: the learner's "cifar10-laptop", or "smoke" when $SSL_LESSONS_SMOKE=1 (tests)."""
    import os
    return "smoke" if os.environ.get(SMOKE_ENV, "") not in ("", "0") else "cifar10-laptop"


def parse_set_args(items: list[str]) -> dict:
    """['lr=1e-3', 'epochs=2'] -> {'lr': '1e-3', 'epochs': '2'}"""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
