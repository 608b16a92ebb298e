"""Self-supervised methods, each one module implementing methods.base.Method (with its Recipe beside it)."""
from __future__ import annotations

from ..backbones import backbone_from_config
from .base import Method
from .byol import BYOL
from .dino import DINO
from .dinov2 import DINOv2
from .distill import Distill
from .ibot import iBOT
from .simclr import SimCLR
from .swav import SwAV

METHODS = {"simclr": SimCLR, "byol": BYOL, "swav": SwAV, "dino": DINO, "ibot": iBOT, "dinov2": DINOv2, "distill": Distill}


def build_method(cfg) -> Method:
    """The method cfg names, on a fresh backbone (torch's current seed decides the weights)."""
    from ..config import method_class
    cls = method_class(cfg.method)
    return cls.from_config(cfg, backbone_from_config(cfg, mask_token=cls.uses_patch_masks))


__all__ = ["BYOL", "DINO", "DINOv2", "Distill", "METHODS", "Method", "SimCLR", "SwAV", "build_method", "iBOT"]
