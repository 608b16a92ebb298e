import math

import pytest
import torch
import torch.nn.functional as F

from ssl_lessons.losses import nt_xent


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def naive_nt_xent(z1, z2, tau):
    """SimCLR eq. 1 by direct loops: l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)."""
    z = torch.cat([z1, z2])
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(math.exp(F.cosine_similarity(z[i], z[k], dim=0).item() / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(F.cosine_similarity(z[i], z[j], dim=0).item() / tau) / denom)
    return total / n2


def test_matches_naive_double_loop():
    g = torch.Generator().manual_seed(0)
    for tau in (0.1, 0.5, 1.0):
        z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
        assert math.isclose(nt_xent(z1, z2, tau).item(), naive_nt_xent(z1, z2, tau), rel_tol=1e-5)


def test_symmetric_in_the_two_views():
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    assert torch.allclose(nt_xent(z1, z2, 0.2), nt_xent(z2, z1, 0.2), atol=1e-6)


def test_lower_for_matched_than_shuffled_pairs():
    z1 = torch.randn(32, 16)
    z2 = z1 + 0.1 * torch.randn(32, 16)
    shuffled = z2[torch.roll(torch.arange(32), 1)]
    assert nt_xent(z1, z2, 0.2) < nt_xent(z1, shuffled, 0.2) - 1.0


def test_known_value_for_orthogonal_and_identical_views():
    # N = 2, views identical, the two images orthogonal: s_pos = 1, the other two similarities are 0.
    z = torch.eye(2)
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
    assert math.isclose(nt_xent(z, z.clone(), tau).item(), expected, rel_tol=1e-6)


def test_invariant_to_scale_of_projections():
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    assert torch.allclose(nt_xent(z1, z2, 0.5), nt_xent(3 * z1, 0.5 * z2, 0.5), atol=1e-6)
