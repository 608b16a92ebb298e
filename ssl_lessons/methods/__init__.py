"""Self-supervised methods, each one module implementing methods.base.Method (with its Recipe beside it)."""
from __future__ import annotations

import difflib

from ..backbones import backbone_from_config
from ..errors import ConfigError
from .base import Method
from .byol import BYOL
from .dino import DINO
from .dinov2 import DINOv2
from .dinov3 import DINOv3
from .distill import Distill
from .ibot import iBOT
from .simclr import SimCLR
from .swav import SwAV

# the registry, in the order of the lessons: the CLI, the course table (report.py) and the tests read it
METHODS = {"simclr": SimCLR, "byol": BYOL, "swav": SwAV, "dino": DINO, "ibot": iBOT, "dinov2": DINOv2, "distill": Distill,
           "dinov3": DINOv3}


def method_class(name: str) -> type[Method]:
    """The Method class registered under `name`, or a ConfigError that lists the names."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown method {name!r}.{hint} Choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(cfg) -> Method:
    """The method cfg names, on a fresh backbone (torch's current seed decides the weights)."""
    cls = method_class(cfg.method)
    method = cls.from_config(cfg, backbone_from_config(cfg, mask_token=cls.uses_patch_masks))
    method.schedules = cfg.schedules
    return method


__all__ = ["BYOL", "DINO", "DINOv2", "DINOv3", "Distill", "METHODS", "Method", "SimCLR", "SwAV", "build_method", "iBOT", "method_class"]
