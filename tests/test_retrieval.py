"""Lesson 8's search: Faiss's neighbours against brute force, and the ranking metrics against their definitions."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ssl_lessons.errors import ConfigError
from ssl_lessons.retrieval import nearest, ranking_scores, unit_rows


def test_nearest_matches_a_brute_force_sort_of_the_cosines():
    rng = np.random.default_rng(0)
    q, db = unit_rows(rng.normal(size=(50, 16))), unit_rows(rng.normal(size=(300, 16)))
    sims, ids = nearest(q, db, 7, batch_size=16)          # several query batches
    brute = q @ db.T
    expected = np.argsort(-brute, axis=1)[:, :7]
    assert (ids == expected).all()
    # float32 dot products of unit 16-d vectors: Faiss and numpy differ by a few ulps of 1.0
    assert np.allclose(sims, np.take_along_axis(brute, expected, 1), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()        # most similar first


def test_nearest_refuses_more_neighbours_than_the_database_holds():
    with pytest.raises(ConfigError, match="k=11 neighbours asked of a database of 10"):
        nearest(np.ones((2, 3)), np.ones((10, 3)), 11)


def test_ranking_scores_follow_the_definitions_on_a_hand_example():
    # one query of class 0; database cosines 0.9 (class 0), 0.8 (1), 0.7 (0), 0.1 (1): ranks 1 and 3 relevant
    angles = np.arccos([0.9, 0.8, 0.7, 0.1])
    db = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    scores = ranking_scores(np.array([[1.0, 0.0]]), [0], db, [0, 1, 0, 1], ks=(1, 2, 3))
    assert scores["P@1"] == pytest.approx(1.0)
    assert scores["P@2"] == pytest.approx(0.5)
    assert scores["P@3"] == pytest.approx(2 / 3)
    assert scores["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)   # (P@1 + P@3) / R, R = 2


def test_mean_average_precision_is_sklearns_per_query_average_precision():
    rng = np.random.default_rng(1)
    q, db = rng.normal(size=(30, 8)), rng.normal(size=(200, 8))
    q_labels, db_labels = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
    scores = ranking_scores(q, q_labels, db, db_labels, ks=(5,), batch_size=7)
    sims = unit_rows(q) @ unit_rows(db).T
    expected = np.mean([average_precision_score(db_labels == q_labels[i], sims[i]) for i in range(30)])
    assert scores["mAP"] == pytest.approx(expected, abs=1e-9)
    top5 = np.argsort(-sims, axis=1)[:, :5]
    assert scores["P@5"] == pytest.approx((db_labels[top5] == q_labels[:, None]).mean())


def test_ties_rank_the_irrelevant_image_first():
    # a constant feature ties every database image: the pessimistic order puts the 3 irrelevant ones first
    scores = ranking_scores(np.ones((1, 4)), [0], np.ones((4, 4)), [0, 1, 1, 1], ks=(1, 3, 4))
    assert scores["P@1"] == 0 and scores["P@3"] == 0 and scores["P@4"] == pytest.approx(0.25)
    assert scores["mAP"] == pytest.approx(0.25)
