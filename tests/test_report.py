import json

import ssl_lessons.baselines as baselines
import ssl_lessons.report as report
from ssl_lessons.config import make_config


def test_lesson_table_reads_saved_results_in_lesson_order(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RUNS_DIR", tmp_path)
    monkeypatch.setattr(baselines, "RUNS_DIR", tmp_path)
    marks = baselines.yardstick_path(make_config("smoke"))
    marks.parent.mkdir(parents=True)
    marks.write_text(json.dumps({"raw pixels": {"knn_top1": 40.0, "linear_top1": 35.0}}))
    for method, knn in [("byol", 45.0), ("simclr", 50.0)]:
        (tmp_path / f"{method}-smoke").mkdir()
        (tmp_path / f"{method}-smoke" / "results.json").write_text(
            json.dumps({"knn_top1": knn, "linear_top1": knn + 1, "train_minutes": 2.0}))
    rows = report.lesson_table("smoke")
    assert [r["name"] for r in rows] == ["raw pixels (lesson 0)", "SimCLR", "BYOL"]  # SwAV has not run
    assert rows[1]["knn_top1"] == 50.0 and rows[2]["linear_top1"] == 46.0
    text = report.format_table(rows)
    assert "SimCLR" in text and "50.0%" in text and text.count("\n") == 3
    assert [r["name"] for r in report.lesson_table("smoke", up_to="simclr")] == ["raw pixels (lesson 0)", "SimCLR"]
    assert "dense mIoU" in text.splitlines()[0]


def test_each_random_architecture_has_its_own_yardsticks():
    """A random ViT with LayerScale or registers computes other features than one without: DINOv2's laptop ViT
    (LayerScale 0.1) must not read DINO's saved yardsticks, nor the other way round, whichever lesson ran first."""
    path = lambda method, **more: baselines.yardstick_path(  # noqa: E731
        make_config("cifar10-laptop", {"method": method, **{k: str(v) for k, v in more.items()}}))
    assert path("dino") == path("ibot")                      # the same ViT, CLS token
    assert path("dinov2") != path("dino")
    assert path("dinov2", register_tokens=4) != path("dinov2")
    assert path("dino") != path("simclr")                    # CLS token against average-pooled tokens
