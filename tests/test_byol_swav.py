import math

import pytest
import torch
import torch.nn.functional as F

from ssl_lessons.augment import ViewAugment
from ssl_lessons.crops import MultiCrop
from ssl_lessons.diagnostics import effective_rank, normalized_std
from ssl_lessons.losses.byol import byol_loss, symmetric_byol_loss
from ssl_lessons.losses.swav import swapped_prediction_loss
from ssl_lessons.sinkhorn import sinkhorn_knopp


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def test_byol_loss_zero_for_same_direction_four_for_opposite():
    p = torch.randn(5, 8)
    assert torch.allclose(byol_loss(p, 3 * p), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(byol_loss(p, -p), torch.tensor(4.0), atol=1e-6)
    q = torch.tensor([[1.0, 0.0]])
    assert math.isclose(byol_loss(q, torch.tensor([[0.0, 2.0]])).item(), 2.0, rel_tol=1e-6)  # orthogonal


def test_symmetric_byol_loss_is_symmetric_in_the_views():
    p1, p2, z1, z2 = (torch.randn(6, 4) for _ in range(4))
    assert torch.allclose(symmetric_byol_loss(p1, p2, z1, z2), symmetric_byol_loss(p2, p1, z2, z1))


def test_byol_loss_sends_no_gradient_into_the_target():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_sinkhorn_marginals_match_uniform_and_are_shift_invariant():
    g = torch.Generator().manual_seed(0)
    # cosine scores of unit embeddings against unit prototypes, as in SwAV: (B=64, K=16)
    scores = F.normalize(torch.randn(64, 32, generator=g), dim=1) @ F.normalize(torch.randn(16, 32, generator=g), dim=1).T
    q = sinkhorn_knopp(scores, epsilon=0.05, iters=3)
    assert (q >= 0).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-5)            # each sample: one unit of assignment
    assert torch.allclose(q.sum(dim=0), torch.full((16,), 64 / 16), rtol=0.25)  # prototypes: about B/K after 3
    raw = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert (q.sum(dim=0) - 4).abs().max() < (raw - 4).abs().max() / 2         # far more balanced than softmax
    more = sinkhorn_knopp(scores, epsilon=0.05, iters=50)
    assert torch.allclose(more.sum(dim=0), torch.full((16,), 4.0), rtol=1e-4)
    assert torch.allclose(sinkhorn_knopp(scores + 7.0, 0.05, 3), q, atol=1e-6)


def test_sinkhorn_balances_a_batch_that_prefers_one_prototype():
    scores = torch.zeros(32, 4)
    scores[:, 0] = 1.0  # every sample scores prototype 0 highest
    q = sinkhorn_knopp(scores, epsilon=0.05, iters=20)
    assert torch.allclose(q.sum(dim=0), torch.full((4,), 8.0), rtol=1e-2)


def naive_swapped_loss(scores, codes, temperature):
    total = 0.0
    for t in range(len(codes)):
        sub = 0.0
        for s in range(len(scores)):
            if s == t:
                continue
            for b in range(scores[s].shape[0]):
                logp = torch.log_softmax(scores[s][b] / temperature, dim=0)
                sub += -(codes[t][b] * logp).sum().item() / scores[s].shape[0]
        total += sub / (len(scores) - 1)
    return total / len(codes)


def test_swapped_prediction_equals_a_direct_implementation():
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn(5, 6, generator=g) for _ in range(4)]  # 2 global + 2 local views
    codes = [sinkhorn_knopp(s) for s in scores[:2]]
    ours = swapped_prediction_loss(scores, codes, 0.1).item()
    assert math.isclose(ours, naive_swapped_loss(scores, codes, 0.1), rel_tol=1e-5)


def test_multicrop_counts_sizes_dtypes_and_differences(tiny_data):
    multicrop = MultiCrop([ViewAugment(32, (0.14, 1))] * 2, ViewAugment(16, (0.05, 0.14)), n_local=3)
    batch = multicrop(tiny_data.train_images[:8], torch.Generator().manual_seed(0))
    assert batch.global_crops.shape == (16, 3, 32, 32) and batch.local_crops.shape == (24, 3, 16, 16)
    assert batch.masks is None and batch.batch_size == 8 and batch.n_views == 5
    crops = batch.views()
    assert [c.shape for c in crops] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 for c in crops)
    assert not torch.allclose(crops[0], crops[1])
    shrunk = torch.nn.functional.interpolate(crops[0], size=16, mode="bilinear", antialias=True)
    assert not torch.allclose(crops[2], shrunk, atol=1e-2)  # a local crop is not the global one shrunk


def test_collapse_diagnostics_on_constant_and_random_embeddings():
    d = 64
    constant = torch.ones(512, d) * torch.randn(1, d)
    assert normalized_std(constant) < 1e-6
    assert effective_rank(constant) == 1.0
    random_unit = torch.randn(4096, d)
    assert math.isclose(normalized_std(random_unit), 1 / math.sqrt(d), rel_tol=0.05)
    assert effective_rank(random_unit) > 0.9 * d
    line = torch.randn(512, 1) * torch.randn(1, d)  # dimensional collapse: all on one line
    assert effective_rank(line) < 1.1
