"""Lesson 8's copy detection: µAP, recall at 90 % precision and acc@1 on hand examples, SSCD's score normalisation
and PCA whitening against their formulas, and the edited copies."""
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from ssl_lessons.copy_detection import (EDITS, CopyBenchmark, Proposals, Whitening, accuracy_at_1, background_offsets,
                                        copy_detection_scores, edit_images, micro_average_precision, propose,
                                        recall_at_precision)
from ssl_lessons.errors import ConfigError
from ssl_lessons.retrieval import unit_rows

# Three queries, two proposals each: copies 0 and 1 (sources 5 and 7) and a distractor (query 2).
# Pooled by score: 0.9 true, 0.8, 0.7, 0.6 true, 0.4, 0.2.
HAND = Proposals(query=np.array([0, 0, 1, 1, 2, 2]), reference=np.array([5, 3, 2, 7, 1, 4]),
                 score=np.array([0.9, 0.4, 0.8, 0.6, 0.7, 0.2], dtype=np.float32))
SOURCES = np.array([5, 7])


def test_micro_average_precision_on_a_hand_example():
    # recall steps of 1/2 at ranks 1 and 4, where the precisions are 1/1 and 2/4
    assert micro_average_precision(HAND, SOURCES) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert recall_at_precision(HAND, SOURCES, 0.9) == pytest.approx(0.5)   # only the first proposal is that precise
    assert recall_at_precision(HAND, SOURCES, 0.5) == pytest.approx(1.0)
    assert accuracy_at_1(HAND, SOURCES, k=2).tolist() == [True, False]   # copy 1's best guess is reference 2


def test_a_tie_ranks_the_false_proposal_first():
    tied = Proposals(np.array([0, 1]), np.array([5, 9]), np.array([0.5, 0.5], dtype=np.float32))
    assert micro_average_precision(tied, np.array([5])) == pytest.approx(0.5)   # the true pair comes second


def test_background_offsets_are_beta_times_the_mean_of_the_nearest_background_similarities():
    cosines = np.array([0.1, 0.9, 0.5, 0.8])
    background = np.stack([cosines, np.sqrt(1 - cosines ** 2)], axis=1)      # unit rows at those cosines to [1, 0]
    query = np.array([[1.0, 0.0]])
    assert background_offsets(query, background)[0] == pytest.approx((0.9 + 0.8 + 0.5) / 3, abs=1e-6)
    assert background_offsets(query, background, beta=2.0, first=1, last=2)[0] == pytest.approx(0.8 + 0.5, abs=1e-6)


def test_score_normalisation_keeps_each_querys_ranking_and_can_change_the_pooled_one():
    rng = np.random.default_rng(0)
    refs, queries, background = rng.normal(size=(40, 16)), rng.normal(size=(30, 16)), rng.normal(size=(60, 16))
    offsets = background_offsets(queries, background)
    plain, adjusted = propose(queries, refs, 5), propose(queries, refs, 5, offsets)
    assert (plain.reference == adjusted.reference).all()                    # the same candidates in the same order
    assert np.allclose(plain.score - adjusted.score, np.repeat(offsets, 5), atol=1e-6)
    sources = np.arange(20)
    assert (accuracy_at_1(plain, sources, 5) == accuracy_at_1(adjusted, sources, 5)).all()


def test_whitening_makes_the_background_covariance_the_identity():
    rng = np.random.default_rng(0)
    background = rng.normal(size=(4000, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 2.0
    w = Whitening(background)
    projected = w.pca.apply(unit_rows(background))           # before the final L2 normalisation
    assert np.allclose(projected.mean(0), 0, atol=1e-4)
    # every axis the same variance, none correlated (Faiss scales all of them by one constant, 1/√n: the final L2
    # normalisation removes it). float32 sums over 4,000 rows are exact to ~1e-5 relative; 1e-3 leaves room
    cov = np.cov(projected.T, bias=True)
    assert np.allclose(cov / cov.diagonal().mean(), np.eye(6), atol=1e-3)
    assert np.allclose(np.linalg.norm(w(background), axis=1), 1, atol=1e-5)


def test_whitening_and_score_normalisation_need_a_background():
    with pytest.raises(ConfigError, match="pass background_features"):
        copy_detection_scores(np.ones((2, 3)), np.ones((4, 3)), [0], whiten=True)


@pytest.fixture
def noise_images():
    return torch.randint(0, 256, (60, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_every_edit_changes_the_image_and_the_same_seed_makes_the_same_copies(noise_images):
    names = [list(EDITS)[i % len(EDITS)] for i in range(len(noise_images))]
    copies = edit_images(noise_images, names, seed=3)
    assert copies.shape == noise_images.shape and copies.dtype == torch.uint8
    assert all((copies[i] != noise_images[i]).any() for i in range(len(names)))
    assert torch.equal(copies, edit_images(noise_images, names, seed=3))
    assert not torch.equal(copies, edit_images(noise_images, names, seed=4))
    assert torch.equal(copies[1], TF.hflip(noise_images[1]))               # names[1] is "flip"


def test_an_unknown_edit_is_refused_by_name(noise_images):
    with pytest.raises(ConfigError, match=r"unknown edits \['sepia'\]"):
        edit_images(noise_images[:1], ["sepia"])


def test_the_benchmark_draws_disjoint_references_distractors_and_background(noise_images):
    bench = CopyBenchmark.build(noise_images, n_references=20, n_copies=8, n_distractors=10, n_background=25,
                                edits=("flip",))
    assert len(bench.queries) == 18 and bench.n_copies == 8 and len(bench.background) == 25
    assert torch.equal(bench.queries[:8], TF.hflip(bench.references[:8]))   # each copy of its source
    key = lambda images: {bytes(x.flatten().tolist()) for x in images}      # noqa: E731
    originals = {bytes(TF.hflip(q).flatten().tolist()) for q in bench.queries[8:]}
    assert not originals & key(bench.references) and not originals & key(bench.background)
    assert not key(bench.references) & key(bench.background)
    with pytest.raises(ConfigError, match="the pool has 60"):
        CopyBenchmark.build(noise_images, 30, 8, 20, 20)


def test_identical_copies_are_found_with_perfect_scores(noise_images):
    bench = CopyBenchmark.build(noise_images, 20, 8, 10, 25, edits=("flip",))
    unflip = lambda x: TF.hflip(x).flatten(1).float()                         # noqa: E731 — a flip-proof descriptor
    scores = copy_detection_scores(unflip(bench.queries), bench.references.flatten(1).float(), bench.sources)
    assert scores["acc@1"] == 1.0 and scores["µAP"] == pytest.approx(1.0) and scores["recall@P90"] == 1.0


def test_whitening_leaves_out_the_axes_without_variance():
    # 6-d features that span 3 dimensions: whitening the 3 empty axes would divide by √0
    rng = np.random.default_rng(1)
    background = np.concatenate([rng.normal(size=(500, 3)), np.zeros((500, 3))], axis=1)
    w = Whitening(background)
    assert w.dims == 3
    out = w(rng.normal(size=(10, 3)) @ np.eye(3, 6))
    assert np.isfinite(out).all() and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
