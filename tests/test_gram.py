"""DINOv3's Gram anchoring (losses/gram.py, methods/dinov3.py): the loss against a transcription of dinov3's
gram_loss.py and against hand-counted cases, its invariants, the Gram teacher's refreshes and their exact resume,
the high-resolution teacher's grid, constant schedules and a run started from an exported backbone."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_lessons.config import make_config
from ssl_lessons.errors import ConfigError
from ssl_lessons.losses.gram import GramLoss, gram_matrix
from ssl_lessons.methods import build_method
from ssl_lessons.pretrained import load_backbone_and_heads
from ssl_lessons.step import set_schedules
from ssl_lessons.train import train


def dinov3_gram_loss(output_feats, target_feats, img_level=True, remove_neg=False, remove_only_teacher_neg=False):
    """dinov3/loss/gram_loss.py (GramLoss.forward, apply_norm=True), transcribed line by line."""
    output_feats = output_feats.float()
    target_feats = target_feats.float()
    target_feats = F.normalize(target_feats, dim=-1)
    if not img_level and len(target_feats.shape) == 3:
        target_feats = target_feats.flatten(0, 1)
    target_sim = torch.matmul(target_feats, target_feats.transpose(-1, -2))
    output_feats = F.normalize(output_feats, dim=-1)
    if not img_level and len(output_feats.shape) == 3:
        output_feats = output_feats.flatten(0, 1)
    student_sim = torch.matmul(output_feats, output_feats.transpose(-1, -2))
    if remove_neg:
        target_sim[target_sim < 0] = 0.0
        student_sim[student_sim < 0] = 0.0
    elif remove_only_teacher_neg:
        target_sim[target_sim < 0] = 0.0
        student_sim[(student_sim < 0) & (target_sim < 0)] = 0.0
    return torch.nn.MSELoss()(student_sim, target_sim)


OPTIONS = [dict(), dict(remove_neg=True), dict(remove_only_teacher_neg=True)]


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "remove_neg", "remove_only_teacher_neg"])
@pytest.mark.parametrize("img_level", [True, False])
def test_gram_loss_and_its_gradient_match_a_transcription_of_dinov3(options, img_level):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    ours = GramLoss(**options)(student, teacher, img_level)
    (grad,) = torch.autograd.grad(ours, student)
    reference_student = student.detach().clone().requires_grad_(True)
    theirs = dinov3_gram_loss(reference_student, teacher, img_level, **options)
    (reference_grad,) = torch.autograd.grad(theirs, reference_student)
    # float32 inside both (as dinov3 casts): the same operations in the same order, so equal to rounding of ~1e-7
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-7)
    assert ours.item() > 0.01  # random features: far from agreement


def test_gram_loss_on_a_hand_counted_case():
    # student patches [1,0], [0,1]: Gram = I; teacher patches [1,0], [2,0] (normalised: equal): Gram = all ones.
    # (0^2 + 1^2 + 1^2 + 0^2) / 4 = 0.5
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    assert GramLoss()(student, teacher).item() == pytest.approx(0.5)
    # teacher [1,0], [-1,0]: Gram [[1,-1],[-1,1]] -> plain: (0 + 1 + 1 + 0) / 4 = 0.5; with its negatives clamped
    # the teacher's off-diagonal is 0 = the student's: 0
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert GramLoss()(student, opposite).item() == pytest.approx(0.5)
    assert GramLoss(remove_only_teacher_neg=True)(student, opposite).item() == pytest.approx(0.0)
    # per image vs over the batch: two images whose patches agree within each image but not across them
    a, b = torch.tensor([[1.0, 0.0]] * 2), torch.tensor([[0.0, 1.0]] * 2)
    student, teacher = torch.stack([a, b]), torch.stack([a, a])  # per image both Grams are all ones
    assert GramLoss()(student, teacher, img_level=True).item() == pytest.approx(0.0)
    # over the batch (4 x 4): the student's cross-image block is 0, the teacher's 1: 8 of 16 entries differ by 1
    assert GramLoss()(student, teacher, img_level=False).item() == pytest.approx(0.5)


@pytest.mark.parametrize("options", OPTIONS[:2], ids=["plain", "remove_neg"])
def test_gram_loss_and_gradient_vanish_when_student_and_teacher_agree(options):
    features = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = GramLoss(**options)(features, features.detach())
    loss.backward()
    assert loss.item() == 0.0 and features.grad.abs().max().item() == 0.0


def test_clamping_the_teachers_negatives_only_pulls_the_students_negative_similarities_to_zero():
    # at equality what is left is the student's negative similarities, whose targets were clamped to 0
    features = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    similarity = gram_matrix(features)
    expected = (similarity.clamp(max=0.0) ** 2).mean().item()
    assert expected > 0.01  # random features have negative similarities
    assert GramLoss(remove_only_teacher_neg=True)(features, features).item() == pytest.approx(expected, rel=1e-5)


def test_gram_loss_ignores_what_the_gram_matrix_cannot_see():
    # a rotation of the feature space and a scale per patch leave every cosine similarity as it is
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    scales = torch.rand(2, 6, 1, generator=g) + 0.5
    loss = GramLoss()(student, teacher).item()
    # a float32 cosine carries ~1e-7 of rounding; the loss is a mean of squares of differences of O(1)
    assert GramLoss()(student @ rotation * scales, teacher).item() == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(gram_matrix(student @ rotation), gram_matrix(student), atol=1e-5)


def smoke(tmp_path, name, **overrides):
    return make_config("smoke", {"method": "dinov3", "out_dir": str(tmp_path / name), "knn_every": 0.0,
                                 "linear_probe": False, "knn_bank": 256, "dense_probe": False, **overrides})


def test_gram_teacher_is_copied_from_the_teacher_every_n_steps_and_at_most_max_times():
    cfg = make_config("smoke", {"method": "dinov3", "gram_update_every": 3, "gram_max_updates": 2})
    torch.manual_seed(0)
    method = build_method(cfg)
    start = {k: v.clone() for k, v in method.gram_teacher.state_dict().items()}
    gram = lambda: method.gram_teacher.state_dict()["vit.patch_embed.proj.weight"]  # noqa: E731
    teacher = lambda: method.teacher.backbone.state_dict()["vit.patch_embed.proj.weight"]  # noqa: E731
    copies = []
    for step in range(1, 11):
        with torch.no_grad():  # a stand-in for training: the student moves, the EMA teacher follows it
            for p in method.student.parameters():
                p.add_(0.01 * torch.randn_like(p))
        method.after_step(step / 10)
        if torch.equal(gram(), teacher()):
            copies.append(step)
            assert not torch.equal(gram(), start["vit.patch_embed.proj.weight"])
    assert copies == [3, 6]  # after steps 3 and 6; the third time (step 9) is over gram_max_updates
    assert method.gram_step.item() == 10 and method.gram_updates.item() == 2
    assert all(not p.requires_grad for p in method.gram_teacher.parameters())


def test_a_resumed_run_with_gram_anchoring_refreshes_at_the_same_steps(tmp_path, tiny_data):
    # 256 images / batch 64 = 4 steps an epoch; 2 epochs = 8 steps; refresh every 3 steps; stop after 4, resume
    overrides = dict(epochs=2.0, gram_update_every=3)
    full = train(smoke(tmp_path, "full", **overrides), data=tiny_data, show_progress=False)
    cfg = smoke(tmp_path, "split", **overrides)
    train(cfg, data=tiny_data, stop_after=4, show_progress=False)
    resumed = train(cfg, data=tiny_data, show_progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    # no init_from: the Gram loss is off (0) until the first copy, after step 3; on from step 4
    assert [h["gram_loss"] > 0 for h in full["history"]] == [False] * 3 + [True] * 5
    a, b = full["method"].state_dict(), resumed["method"].state_dict()
    assert a.keys() == b.keys() and any(k.startswith("gram_teacher.") for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert b["gram_updates"].item() == 2 and b["gram_step"].item() == 8  # after steps 3 and 6


def test_the_high_resolution_gram_teacher_sees_the_crops_at_twice_the_size_on_the_students_grid():
    torch.manual_seed(0)
    method = build_method(make_config("smoke", {"method": "dinov3", "patch_size": 4, "gram_teacher_scale": 2.0}))
    crops = method.make_views(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))
    seen = []
    handle = method.gram_teacher.vit.patch_embed.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    patches = method.gram_teacher_patches(crops)
    handle.remove()
    assert seen == [torch.Size([8, 3, 64, 64])] and patches.shape == (8, 64, method.backbone.embed_dim)
    # at scale 1 the Gram teacher's tokens are its tokens of the crops themselves
    method.recipe.gram_teacher_scale = 1.0
    direct = method.gram_teacher.forward_tokens(crops.global_crops)["patch"]
    assert torch.equal(method.gram_teacher_patches(crops), direct)
    # at scale 2, dinov3's lines (ssl_meta_arch.get_gram_teacher_output) on crops resized as its gram crops are
    method.recipe.gram_teacher_scale = 2.0
    images = F.interpolate(crops.global_crops, size=(64, 64), mode="bicubic", align_corners=False, antialias=False)
    teacher_patches = method.gram_teacher.forward_tokens(images)["patch"]
    patches_hw = teacher_patches.transpose(-2, -1).unflatten(-1, (16, 16))
    patches_hw = F.interpolate(patches_hw, size=(8, 8), mode="bicubic", align_corners=False, antialias=False)
    assert torch.equal(method.gram_teacher_patches(crops), patches_hw.flatten(-2, -1).transpose(-2, -1))


def test_constant_schedules_hold_lr_weight_decay_and_momentum_after_the_warm_up():
    cfg = make_config("smoke", {"method": "dinov3", "warmup": 0.2, "lr": 1e-3, "weight_decay": 0.04,
                                "weight_decay_end": 0.4, "teacher_momentum": 0.99, "teacher_momentum_end": 1.0})
    assert cfg.schedules == "constant"  # DINOv3's default
    method = build_method(cfg)
    optimizer = torch.optim.AdamW(method.param_groups(), lr=0.0)
    values = [set_schedules(optimizer, method, cfg, p) for p in (0.1, 0.2, 0.5, 0.99)]
    peak = cfg.lr * math.sqrt(cfg.batch_size / 1024)
    assert values[0][0] == pytest.approx(peak / 2)  # still warming up
    assert [v[0] for v in values[1:]] == pytest.approx([peak] * 3)
    assert [v[1] for v in values] == pytest.approx([0.04] * 4)
    assert method.decay_progress(0.7) == 0.0
    cosine = make_config("smoke", {"method": "dinov3", "schedules": "cosine", "warmup": 0.2, "lr": 1e-3,
                                   "weight_decay_end": 0.4, "min_lr": 0.0})
    lr, wd = set_schedules(optimizer, build_method(cosine), cosine, 0.99)
    assert lr < 0.01 * peak and wd > 0.39  # the cosines ran (nearly) to their ends
    with pytest.raises(ConfigError, match="schedules is 'cosine' or 'constant'"):
        make_config("smoke", {"method": "dinov3", "schedules": "linear"})


def test_a_run_started_from_an_exported_backbone_starts_student_teacher_and_gram_teacher_there(tmp_path, tiny_data):
    from ssl_lessons.export import export_backbone

    first = smoke(tmp_path, "first", method="dinov2", epochs=0.5, highres_size=0, highres_fraction=0.0)
    train(first, data=tiny_data, show_progress=False)
    path = export_backbone(tmp_path / "first", "start", directory=tmp_path)
    backbone, heads, _ = load_backbone_and_heads(path)
    cfg = smoke(tmp_path, "second", init_from=str(path), epochs=0.5, knn_every=0.25)
    run = train(cfg, data=tiny_data, stop_after=0, show_progress=False)
    method = run["method"]
    assert method.gram_ready.item()
    for name, value in backbone.state_dict().items():
        for copy in (method.backbone, method.teacher.backbone, method.gram_teacher):
            assert torch.equal(copy.state_dict()[name], value), name
    for name, head in heads.items():
        for key, value in head.state_dict().items():
            assert torch.equal(method.student[name].state_dict()[key], value)
            assert torch.equal(method.teacher[name].state_dict()[key], value)
    # the patch CKA is measured to the init_from weights, also when the run is resumed
    train(cfg, data=tiny_data, stop_after=1, show_progress=False)
    resumed = train(cfg, data=tiny_data, show_progress=False)
    whole = train(smoke(tmp_path, "whole", init_from=str(path), epochs=0.5, knn_every=0.25), data=tiny_data,
                  show_progress=False)
    assert resumed["evals"] == whole["evals"] and resumed["evals"][0]["patch_cka_to_init"] == pytest.approx(1.0)
    wrong = smoke(tmp_path, "third", init_from=str(path), embed_dim=32)
    with pytest.raises(ConfigError, match="do not fit this run's networks.*embed_dim=64"):
        train(wrong, data=tiny_data, stop_after=0, show_progress=False)
    with pytest.raises(ConfigError, match="no such exported backbone"):
        train(smoke(tmp_path, "fourth", init_from="nothing-of-that-name"), data=tiny_data, show_progress=False)


def test_similarity_maps_and_locality_on_hand_made_patch_grids():
    from ssl_lessons.similarity import locality, similarity_maps
    # a 2 x 2 grid: left column (1, 0), right column (0, 1)
    grid = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 3.0]]]).unsqueeze(0)  # (1, 2, 2, 2)
    assert torch.equal(similarity_maps(grid, (0, 0)), torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
    # neighbours: 2 horizontal pairs (cos 0) and 2 vertical pairs (cos 1): 0.5; all 6 distinct pairs: 2 of cos 1: 1/3
    assert locality(grid).item() == pytest.approx(0.5 - 1 / 3)
    # every patch alike: no spatial structure; a checkerboard of opposite vectors: every neighbour -1
    assert locality(torch.ones(2, 3, 3, 4)).abs().max().item() < 1e-6
    sign = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    board = (sign[..., None] * torch.tensor([1.0, 0.0])).unsqueeze(0)               # (1, 3, 3, 2)
    # 9 patches (5 of +, 4 of -): equal pairs C(5,2) + C(4,2) = 16, opposite 20: mean (16 - 20) / 36 = -1/9
    assert locality(board).item() == pytest.approx(-1.0 - (-1 / 9))


def test_the_laptop_refinement_starts_from_a_shipped_dinov2_snapshot_of_the_same_architecture():
    from ssl_lessons.pretrained import pretrained_path
    cfg = make_config("cifar10-laptop", {"method": "dinov3"})
    backbone, heads, record = load_backbone_and_heads(cfg.init_from)
    assert pretrained_path(cfg.init_from).exists() and set(heads) == {"head", "patch_head"}
    method = build_method(cfg)
    method.start_from(backbone.state_dict(), {k: h.state_dict() for k, h in heads.items()})  # fits, strictly
    best = max((e for e in record["evals"] if "dense_miou" in e), key=lambda e: e["dense_miou"])
    assert record["step"] == best["step"] and record["config"]["method"] == "dinov2"
