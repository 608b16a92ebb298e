import pytest
import torch

from ssl_lessons.config import make_config
from ssl_lessons.export import export_backbone
from ssl_lessons.pretrained import load_backbone
from ssl_lessons.train import train


def test_export_then_load_gives_the_evaluated_backbone_in_fp16(tmp_path, tiny_data):
    cfg = make_config("smoke", {"method": "dino", "out_dir": str(tmp_path / "run"), "knn_every": "0",
                                "linear_probe": "false", "knn_bank": "256"})
    with pytest.raises(FileNotFoundError, match="finish the run first"):
        export_backbone(tmp_path / "run", "tiny", directory=tmp_path / "pretrained")
    run = train(cfg, data=tiny_data, show_progress=False)
    path = export_backbone(tmp_path / "run", "tiny", directory=tmp_path / "pretrained", expected=cfg)
    saved = torch.load(path, weights_only=True)  # plain tensors and types: loadable without running code
    assert all(v.dtype == torch.float16 for v in saved["backbone"].values() if v.is_floating_point())
    backbone, record = load_backbone("tiny", directory=tmp_path / "pretrained")
    assert record["command"].startswith("python -m ssl_lessons") and record["result"]["method"] == "dino"
    x = torch.randn(4, 3, 32, 32)
    teacher = run["method"].eval_backbone.eval()
    with torch.no_grad():
        assert torch.allclose(backbone(x), teacher(x), atol=2e-2)  # the teacher's weights, rounded to fp16
        assert not torch.allclose(backbone(x), run["method"].backbone.eval()(x), atol=1e-4)  # not the student's
    with pytest.raises(FileNotFoundError, match="available: \\['tiny'\\]"):
        load_backbone("missing", directory=tmp_path / "pretrained")


def test_a_planted_checkpoint_cannot_run_code(tmp_path):
    from ssl_lessons.checkpoint import load_checkpoint
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoint.pt"
    torch.save({"method": Planted()}, path)
    with pytest.raises(RuntimeError, match="unreadable") as info:
        load_checkpoint(path)
    assert not marker.exists() and "\n" not in str(info.value)


# --- the released weights (timm), offline-safe ----------------------------------------------------------------------

def test_official_weights_offline_give_a_one_line_reason(monkeypatch):
    import ssl_lessons.pretrained as pretrained
    monkeypatch.setattr(pretrained, "online", lambda *a, **k: False)
    for name in pretrained.OFFICIAL_MODELS.values():
        model, message = pretrained.load_official(name)
        assert model is None and message.startswith("offline") and name in message and "\n" not in message


@pytest.mark.parametrize("name", ["vit_small_patch16_224.dino", "vit_small_patch14_reg4_dinov2.lvd142m"])
def test_the_official_models_draw_with_the_course_code(name):
    """The loading path the lessons take online, on the same timm networks with random weights (no download)."""
    from ssl_lessons.attention import cls_attention_maps, patch_token_norms
    from ssl_lessons.pca import patch_features, patch_pca
    from ssl_lessons.pretrained import official_model, official_view
    torch.manual_seed(0)
    model = official_model(name, pretrained=False)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    big, x = official_view(images, size=112)
    assert big.shape == (2, 3, 112, 112) and big.dtype == torch.uint8 and abs(x.mean().item()) < 3
    patch = model.patch_embed.patch_size[0]
    grid = 112 // patch
    maps = cls_attention_maps(model, x)
    assert maps.shape == (2, 6, grid, grid) and (maps >= 0).all() and (maps.flatten(2).sum(-1) <= 1 + 1e-5).all()
    assert patch_token_norms(model, x).shape == (2, grid, grid)
    features = patch_features(model, x)
    assert features.shape == (2, grid, grid, 384)
    assert patch_pca(features).rgb.shape == (2, grid, grid, 3)
