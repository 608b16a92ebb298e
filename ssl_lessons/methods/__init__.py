"""Self-supervised methods, each one module implementing methods.base.Method."""
from __future__ import annotations

from ..backbones import backbone_from_config
from .base import Method
from .byol import BYOL
from .dino import DINO
from .simclr import SimCLR
from .swav import SwAV

METHODS = {"simclr": SimCLR, "byol": BYOL, "swav": SwAV, "dino": DINO}


def build_method(cfg) -> Method:
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    backbone = backbone_from_config(cfg)
    return METHODS[cfg.method].from_config(cfg, backbone)


__all__ = ["BYOL", "DINO", "METHODS", "Method", "SimCLR", "SwAV", "build_method"]
