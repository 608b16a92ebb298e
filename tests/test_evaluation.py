import pytest
import torch

from ssl_lessons.evaluation import knn_predict, knn_top1, linear_probe, pixel_features


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def test_knn_known_answer_on_toy_set():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0], [-1.0, 0.0]])
    preds = knn_predict(bank, labels, queries, k=2, temperature=0.07)
    assert preds[:2].tolist() == [0, 1]


def test_knn_votes_are_weighted_by_similarity():
    # k=3: two far neighbours of class 1 outvote... unless weights exp(sim/T) favour the one close neighbour.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.2, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.3]])
    assert knn_predict(bank, labels, query, k=3, temperature=0.07).item() == 0   # sharp weights: nearest wins
    assert knn_predict(bank, labels, query, k=3, temperature=100.0).item() == 1  # flat weights: majority wins


def test_knn_is_cosine_so_scale_does_not_matter():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 8, generator=g), torch.randn(20, 8, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    a = knn_predict(bank, labels, queries, k=5)
    b = knn_predict(bank * 7, labels, queries * 0.1, k=5)
    assert torch.equal(a, b)


def test_knn_top1_is_perfect_on_separated_clusters_and_rejects_large_k():
    centers = torch.eye(4) * 10
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    feats = centers[labels] + torch.randn(200, 4, generator=g)
    assert knn_top1(feats[:150], labels[:150], feats[150:], labels[150:], k=10) == 100.0
    try:
        knn_predict(feats[:5], labels[:5], feats[5:], k=20)
        raise AssertionError("k larger than the bank must be rejected")
    except ValueError as e:
        assert "larger than the bank" in str(e)


def test_linear_probe_separates_linear_classes_and_fails_on_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, 0] > 0).long()
    assert linear_probe(x[:400], y[:400], x[400:], y[400:]) > 95
    noise_labels = torch.randint(0, 2, (600,), generator=g)
    assert linear_probe(x[:400], noise_labels[:400], x[400:], noise_labels[400:]) < 65


def test_pixel_features_are_standardised_and_flat(tiny_data):
    from ssl_lessons.images import CIFAR10_MEAN, CIFAR10_STD
    f = pixel_features(tiny_data.train_images)
    assert f.shape == (256, 3 * 32 * 32) and f.dtype == torch.float32
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = ((tiny_data.train_images.float() / 255 - mean) / std).flatten(1)
    assert torch.allclose(f, expected, atol=1e-5)


def test_yardsticks_measure_pixels_and_a_random_backbone(tiny_data):
    from ssl_lessons.config import make_config
    from ssl_lessons.evaluation import yardsticks

    cfg = make_config("smoke", {"linear_probe": False})
    marks = yardsticks(cfg, tiny_data)
    assert set(marks) == {"raw pixels", "random vit"}
    # the tiny data's classes differ by mean brightness, which neighbours in pixel space mostly see
    assert marks["raw pixels"]["knn_top1"] > 50  # chance is 25 %
    from ssl_lessons.backbones import backbone_from_config
    from ssl_lessons.evaluation import extract_features, knn_top1
    torch.manual_seed(cfg.seed)  # the random backbone is the config's, at the config's seed
    net = backbone_from_config(cfg)
    bank, queries = extract_features(net, tiny_data.train_images), extract_features(net, tiny_data.test_images)
    assert marks["random vit"]["knn_top1"] == knn_top1(bank, tiny_data.train_labels, queries, tiny_data.test_labels)
