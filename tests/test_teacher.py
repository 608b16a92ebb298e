import math

import torch
import torch.nn as nn

from ssl_lessons.teacher import ema_update, make_teacher, momentum_schedule


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
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(tb, sb)  # buffers are copied, not averaged


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
