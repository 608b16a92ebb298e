import math

import pytest
import torch
import torch.nn as nn

from ssl_lessons.teacher import ema_update, make_teacher, momentum_schedule


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def test_ema_update_equals_the_formula_exactly():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(8, 3))  # moves the BN running statistics
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t0, t1, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.equal(t1, 0.9 * t0 + (1 - 0.9) * s) or torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-7, rtol=0)
    assert torch.equal(teacher[1].running_mean, torch.zeros(4))  # the student's statistics are not copied


def test_teacher_keeps_its_own_batch_norm_statistics_from_its_own_batches():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    assert teacher[1].training  # batch statistics, as the official BYOL target and DINO's ResNet teacher
    student(torch.randn(16, 3) + 5.0)  # the student's statistics move towards its own (shifted) batch
    with torch.no_grad():
        x = torch.randn(16, 3)
        expected = 0.1 * teacher[0](x).mean(dim=0)  # BatchNorm's running mean after one batch (momentum 0.1)
        teacher(x)
    ema_update(teacher, student, 0.5)
    assert torch.allclose(teacher[1].running_mean, expected, atol=1e-6)


def test_teacher_runs_without_dropout_and_drop_path_even_in_training():
    from ssl_lessons.config import make_config
    from ssl_lessons.methods import build_method
    torch.manual_seed(0)
    method = build_method(make_config("smoke", {"method": "dino", "drop_path_rate": "0.5"})).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t1, t2 = method.teacher.backbone(x), method.teacher.backbone(x)
        s1, s2 = method.backbone(x), method.backbone(x)
    assert torch.equal(t1, t2)             # deterministic: no drop path in the teacher
    assert not torch.allclose(s1, s2)      # the student drops paths at rate 0.5
    assert method.backbone.vit.blocks[-1].drop_path1.drop_prob == 0.5  # timm: rising linearly to the last block


def test_momentum_one_freezes_and_zero_copies():
    student, teacher = nn.Linear(2, 2), None
    teacher = make_teacher(student)
    with torch.no_grad():
        student.weight.add_(1.0)
    frozen = teacher.weight.clone()
    ema_update(teacher, student, 1.0)
    assert torch.equal(teacher.weight, frozen)
    ema_update(teacher, student, 0.0)
    assert torch.equal(teacher.weight, student.weight)


def test_teacher_gets_no_gradient():
    student = nn.Linear(3, 2)
    teacher = make_teacher(student)
    x = torch.randn(4, 3)
    (student(x).sum() + teacher(x).sum()).backward()
    assert student.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_momentum_schedule_hits_its_ends_and_rises():
    assert math.isclose(momentum_schedule(0.0, 0.996), 0.996)
    assert math.isclose(momentum_schedule(1.0, 0.996), 1.0)
    values = [momentum_schedule(p / 10, 0.99) for p in range(11)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # BYOL's formula: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
    assert math.isclose(momentum_schedule(0.25, 0.99), 1 - 0.01 * (math.cos(math.pi * 0.25) + 1) / 2)
