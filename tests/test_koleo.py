"""KoLeo (DINOv2's uniformity regulariser): its formula against brute force, and what it rewards."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_lessons.losses.koleo import KoLeoLoss


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def test_koleo_equals_a_brute_force_nearest_neighbour_computation():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g) * 3.0
    x = F.normalize(z, dim=1)
    brute = []
    for i in range(7):
        brute.append(min(float(torch.linalg.vector_norm(x[i] - x[j])) for j in range(7) if j != i))
    expected = -sum(math.log(d + 1e-8) for d in brute) / 7
    assert abs(KoLeoLoss()(z).item() - expected) < 1e-5


def test_koleo_on_hand_placed_points():
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # neighbours at distance sqrt(2)
    assert abs(KoLeoLoss()(square).item() - (-math.log(math.sqrt(2)))) < 1e-6
    opposite = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])                        # scale does not matter: distance 2
    assert abs(KoLeoLoss()(opposite).item() - (-math.log(2.0))) < 1e-6


def test_koleo_is_lower_for_spread_out_points_than_for_clustered_ones():
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(64, 8, generator=g)
    clustered = torch.randn(1, 8, generator=g) + 0.05 * torch.randn(64, 8, generator=g)
    assert KoLeoLoss()(spread) < KoLeoLoss()(clustered) - 1.0


def test_koleo_pushes_the_closest_pair_apart():
    z = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    KoLeoLoss()(z).backward()
    step = z - 0.1 * z.grad
    before = torch.linalg.vector_norm(F.normalize(z[0], dim=0) - F.normalize(z[1], dim=0))
    after = torch.linalg.vector_norm(F.normalize(step[0], dim=0) - F.normalize(step[1], dim=0))
    assert after > before
