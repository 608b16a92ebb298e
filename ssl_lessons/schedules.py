"""Schedules as functions of training progress p in [0, 1] (step / total_steps), so a run of any length
and a resumed run use the same values. DINO's `cosine_scheduler` builds the same curve as an array per step."""
from __future__ import annotations

import math


def cosine_schedule(progress: float, start: float, end: float, warmup: float = 0.0,
                    warmup_start: float = 0.0) -> float:
    """Linear warm-up from `warmup_start` to `start` over p in [0, warmup), then a half cosine from
    `start` (at p = warmup) to `end` (at p = 1):

        v(p) = end + (start - end) * (1 + cos(pi * (p - warmup) / (1 - warmup))) / 2
    """
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return warmup_start + (start - warmup_start) * p / warmup
    q = (p - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * q))
