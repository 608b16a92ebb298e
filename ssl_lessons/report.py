"""The course's running scoreboard: every lesson's saved results at a preset, read from runs/, never retrained."""
from __future__ import annotations

import json

from .baselines import yardstick_path
from .config import make_config
from .methods import METHODS
from .runtime import RUNS_DIR

LESSONS = [(cls.TITLE or cls.__name__, method) for method, cls in METHODS.items()]  # (name in the table, method)


def lesson_table(preset: str = "cifar10-laptop", up_to: str | None = None) -> list[dict]:
    """Rows {name, knn_top1, linear_top1, dense_miou, minutes, source} for the yardsticks and each finished lesson
    run (dense_miou: the mosaic probe of dense.py, for ViTs), in lesson order and up to the lesson of method
    `up_to` (a lesson shows what came before it, not what comes after)."""
    methods = [method for _, method in LESSONS]
    if up_to is not None and up_to not in methods:
        raise ValueError(f"up_to is one of {', '.join(methods)}, got {up_to!r}")
    lessons = LESSONS[:methods.index(up_to) + 1] if up_to else LESSONS
    rows = []
    marks = yardstick_path(make_config(preset))
    if marks.exists():
        for name, m in json.loads(marks.read_text()).items():
            rows.append({"name": f"{name} (lesson 0)", **m, "minutes": None, "source": str(marks)})
    for name, method in lessons:
        path = RUNS_DIR / f"{method}-{preset}" / "results.json"
        if path.exists():
            r = json.loads(path.read_text())
            rows.append({"name": name, "knn_top1": r["knn_top1"], "linear_top1": r.get("linear_top1"),
                         "dense_miou": r.get("dense_miou"), "minutes": r["train_minutes"], "source": str(path)})
    return rows


def format_table(rows: list[dict]) -> str:
    width = max([26] + [len(r["name"]) for r in rows])
    lines = [f"{'representation':{width}s} {'k-NN':>7s} {'linear':>7s} {'dense mIoU':>10s} {'minutes':>8s}"]
    for r in rows:
        lin = f"{r['linear_top1']:6.1f}%" if r.get("linear_top1") is not None else "      -"
        miou = f"{r['dense_miou']:9.1f}%" if r.get("dense_miou") is not None else "         -"
        mins = f"{r['minutes']:8.1f}" if r.get("minutes") is not None else "       -"
        lines.append(f"{r['name']:{width}s} {r['knn_top1']:6.1f}% {lin} {miou} {mins}")
    return "\n".join(lines)
