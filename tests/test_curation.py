"""Lesson 8's curation: deduplication, retrieval, hierarchical k-means and balanced sampling on planted data, the
uncurated pool, and the `curate` command line on a small folder of images."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import write_png

from ssl_lessons.curation import (DEDUP_THRESHOLD, DEFAULT_DESCRIPTOR, Level, balanced_sample, curate, deduplicate, duplicate_components,
                                  hierarchical_kmeans, remove_near, resample_sizes, retrieve_by_cluster, retrieve_nearest,
                                  water_fill)
from ssl_lessons import curation
from ssl_lessons.data import load_cifar10
from ssl_lessons.descriptors import load_descriptor
from ssl_lessons.errors import ConfigError
from ssl_lessons.uncurated import KINDS, OFF_DOMAIN, long_tail_sizes, make_pool, off_domain_images, split_seed_set

REPO = Path(__file__).resolve().parent.parent


def random_unit(n, d=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def nudged(x, scale, seed):
    """x moved by noise of `scale` per coordinate (cosine to x ≈ 1 − d·scale²/2 for unit x)."""
    return x + scale * np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)


def test_planted_duplicates_are_found_and_nothing_else_is_removed():
    # 200 random 32-d unit vectors (pairwise cosines within ±0.7: |cos| of independent ones is ~N(0, 1/32)) and 3
    # planted copies of image 7 plus 2 of image 50, each at cosine > 0.99 to its original
    x = random_unit(200)
    copies = np.concatenate([nudged(x[[7, 7, 7]], 0.01, 1), nudged(x[[50, 50]], 0.01, 2)])
    features = np.concatenate([x, copies])
    labels = duplicate_components(features, threshold=0.9)
    assert len(set(labels[[7, 200, 201, 202]])) == 1 and len(set(labels[[50, 203, 204]])) == 1
    assert len(np.unique(labels)) == 200
    assert deduplicate(features, 0.9).tolist() == list(range(200))          # the originals, the first of each


def test_the_documented_threshold_finds_planted_copies_among_cifar_images_and_removes_nothing_else():
    # the command line's default descriptor and threshold on 300 CIFAR-10 test images, 10 exact copies and 10
    # re-encoded at JPEG quality 90 (cosine >= 0.995 to their originals, measured on 2,000 images)
    images = load_cifar10().test_images[:300]
    planted = torch.cat([images[:10], torch.stack([TF.jpeg(x, 90) for x in images[10:20]])])
    features = load_descriptor(DEFAULT_DESCRIPTOR)(torch.cat([images, planted]))
    assert deduplicate(features, DEDUP_THRESHOLD).tolist() == list(range(300))
    labels = duplicate_components(features, DEDUP_THRESHOLD)
    assert all(labels[300 + i] == labels[i] for i in range(20))
    # and no distinct pair close to it: the closest of the 300 is at 0.983 (float sums on another CPU move a cosine
    # by ~1e-6, so the margin is the data's, not the machine's)
    cos = features[:300] @ features[:300].T
    np.fill_diagonal(cos, -1)
    assert cos.max() < DEDUP_THRESHOLD - 0.002


def test_a_chain_of_copies_is_one_component():
    # a, b, c at 0°, 20° and 40° in one plane: a-b and b-c at cosine 0.94, a-c at 0.77; one component all the same
    angles = np.radians([0, 20, 40])
    chain = np.zeros((3, 32), np.float32)
    chain[:, 0], chain[:, 1] = np.cos(angles), np.sin(angles)
    features = np.concatenate([chain, random_unit(5, seed=6)])
    assert deduplicate(features, 0.9, k=2).tolist() == [0, 3, 4, 5, 6, 7]


def test_relative_deduplication_removes_the_whole_component_of_an_evaluation_image():
    x = random_unit(50)
    pool = np.concatenate([x, nudged(x[[3]], 0.01, 1), nudged(x[[3]], 0.012, 2)])   # 50, 51: copies of 3
    evaluation = nudged(x[[3]], 0.015, 3)                                          # a test image copying 3 too
    kept = remove_near(pool, evaluation, threshold=0.9)
    assert kept.tolist() == [i for i in range(52) if i not in (3, 50, 51)]


def test_retrieval_returns_the_planted_neighbours_and_counts_collisions():
    pool = random_unit(300)
    seeds = np.concatenate([nudged(pool[[10]], 0.02, 1), nudged(pool[[20]], 0.02, 2)])
    # make 11 and 12 the next nearest of seed 0, 21 of seed 1; and image 12 also seed 1's second
    pool[11], pool[12] = nudged(seeds[[0]], 0.05, 3)[0], nudged(seeds[[0]] + seeds[[1]], 0.05, 4)[0]
    pool[21] = nudged(seeds[[1]], 0.05, 5)[0]
    found = retrieve_nearest(pool, seeds, 3)
    assert set(found.indices.tolist()) == {10, 11, 12, 20, 21}
    assert found.collisions == 1


def test_cluster_retrieval_takes_images_from_the_clusters_the_seeds_fall_in():
    rng = np.random.default_rng(0)
    centres = random_unit(4, seed=9) * 10
    pool = np.concatenate([c + rng.normal(size=(100, 32)) for c in centres])        # 4 clusters of 100
    seeds = centres[[1, 1, 1, 1, 2]] + rng.normal(size=(5, 32))                      # 4 seeds in cluster 1, 1 in 2
    found = retrieve_by_cluster(pool, seeds, n_clusters=4, per_cluster=30, min_seeds=4)
    assert len(found.indices) == 30 and ((found.indices >= 100) & (found.indices < 200)).all()


@pytest.mark.parametrize("sizes, target, expected", [
    ([1, 5, 10, 100], 30, [1, 5, 10, 14]),    # cap 14: 1 + 5 + 10 + 14 = 30
    ([10, 10, 10], 15, None),                 # cap 5, no remainder
    ([3, 3], 10, [3, 3]),                     # more asked than there is: everything
])
def test_water_fill_caps_the_large_groups_and_keeps_the_small_ones_whole(sizes, target, expected):
    counts = water_fill(sizes, target, np.random.default_rng(0))
    assert counts.sum() == min(target, sum(sizes)) and (counts <= np.array(sizes)).all()
    if expected is not None:
        assert counts.tolist() == expected
    else:
        assert counts.tolist() == [5, 5, 5]


def test_water_fill_gives_the_remainder_one_each_to_groups_above_the_cap():
    counts = water_fill([2, 50, 50, 50], 33, np.random.default_rng(0))   # cap 10: 2 + 30, one more to one of three
    assert counts[0] == 2 and sorted(counts[1:].tolist()) == [10, 10, 11]


def long_tailed_clusters(sizes, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), d)) * 6
    x = np.concatenate([c + rng.normal(size=(n, d)) for c, n in zip(centres, sizes)])
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def test_hierarchical_kmeans_nests_every_image_in_one_cluster_per_level():
    x, _ = long_tailed_clusters([300, 100, 50])
    levels = hierarchical_kmeans(x, (30, 6), n_resamples=2, sample_sizes=(5, 2))
    images = np.sort(np.concatenate(levels[0].members))
    assert images.tolist() == list(range(len(x)))
    level1 = np.sort(np.concatenate(levels[1].members))
    assert level1.tolist() == list(range(len(levels[0].members)))
    with pytest.raises(ConfigError, match="must shrink"):
        hierarchical_kmeans(x, (6, 30))


def test_balanced_sampling_shares_the_target_evenly_over_a_given_hierarchy():
    # five concepts of 2000, 600, 200, 60 and 20 images, each one top-level cluster of two level-1 clusters
    sizes = [2000, 600, 200, 60, 20]
    starts = np.cumsum([0] + sizes)
    concepts = [np.arange(a, b) for a, b in zip(starts, starts[1:])]
    level1 = [half for images in concepts for half in np.array_split(images, 2)]
    levels = [Level(np.zeros((10, 2)), level1), Level(np.zeros((5, 2)), [np.array([2 * c, 2 * c + 1]) for c in range(5)])]
    sample = balanced_sample(levels, 200, seed=0)
    histogram = np.histogram(sample, bins=starts)[0]
    assert histogram.tolist() == [45, 45, 45, 45, 20]          # cap 45: the rarest taken whole, the rest level
    within = np.histogram(sample[sample < 2000], bins=[0, 1000, 2000])[0]
    assert within.tolist() == [23, 22] or within.tolist() == [22, 23]   # and each share split evenly again below
    with pytest.raises(ConfigError, match="at most 2880"):
        balanced_sample(levels, 5000)


def test_balanced_sampling_from_hierarchical_kmeans_flattens_a_planted_long_tail():
    # k-means does not know the concepts, so the flattening varies from one clustering to the next: measured over
    # 12 (pool, clustering) pairs. Random samples of 200 hold 139 of the largest concept and 5.6 of the two rarest on
    # average; balanced samples held 75 and 49 on average, with standard deviations of ~33 and ~17 (so ~10 and ~5
    # for a mean of 12): the bounds are > 3 of those from what was measured.
    sizes = [2000, 600, 200, 60, 20]
    largest, rarest = [], []
    for pool in range(6):
        x, concept = long_tailed_clusters(sizes, seed=pool)
        for clustering in range(2):
            levels = hierarchical_kmeans(x, (100, 20, 5), seed=clustering)
            histogram = np.bincount(concept[balanced_sample(levels, 200, seed=clustering)], minlength=5)
            largest.append(histogram[0])
            rarest.append(histogram[3] + histogram[4])
    assert np.mean(largest) < 110 and np.mean(rarest) > 20


def test_curate_runs_the_stages_in_order_and_each_keeps_a_subset():
    x = random_unit(540, d=64)
    x = np.concatenate([x, nudged(x[:30], 0.001, 1)])                              # 30 planted copies
    seeds = random_unit(3, d=64, seed=7)
    stages = curate(x, dedup_threshold=0.99, evaluation_features=nudged(x[[5]], 0.001, 2), seed_features=seeds,
                    n_per_seed=40, size=50, levels=(10, 3))
    assert [s.name for s in stages] == ["pool", "self-deduplication", "relative deduplication", "retrieval",
                                        "balanced sampling"]
    assert stages[1].kept.tolist() == list(range(540))
    assert stages[2].kept.tolist() == [i for i in range(540) if i != 5]
    for before, after in zip(stages, stages[1:]):
        assert set(after.kept) <= set(before.kept)
    assert 100 < len(stages[3].kept) <= 120 and len(stages[-1].kept) == 50
    with pytest.raises(ConfigError, match="remain after retrieval: ask for at most"):
        curate(x, 0.99, seed_features=seeds, n_per_seed=10, size=100)


def test_the_uncurated_pool_has_its_long_tail_duplicates_and_off_domain_images():
    labels = np.repeat(np.arange(10), 60)
    images = torch.randint(0, 256, (600, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    seeds, rest = split_seed_set(labels, 5)
    assert np.bincount(labels[seeds]).tolist() == [5] * 10 and not set(seeds) & set(rest)
    pool = make_pool(images[rest], labels[rest], largest=50, smallest=5, n_duplicated=20, n_off_domain=8)
    assert pool.class_histogram().tolist() == (long_tail_sizes(50, 5) + np.bincount(
        pool.label[pool.source >= 0], minlength=10)).tolist()
    counts = pool.counts()
    assert counts["cifar"] == long_tail_sizes(50, 5).sum() and all(counts[k] == 2 for k in OFF_DOMAIN)
    exact = np.flatnonzero(pool.kind == KINDS.index("duplicate"))
    assert len(exact) > 0 and all(torch.equal(pool.images[i], pool.images[pool.source[i]]) for i in exact)
    assert (pool.kind[pool.source[pool.source >= 0]] == 0).all()                  # copies of long-tail images
    assert (pool.label[pool.kind >= KINDS.index(OFF_DOMAIN[0])] == -1).all()
    for kind in OFF_DOMAIN:
        assert off_domain_images(kind, 3).shape == (3, 3, 32, 32)


# --- the command line -------------------------------------------------------------------------------------------------

def run_curate(*args):
    return subprocess.run([sys.executable, "-m", "ssl_lessons", "curate", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


@pytest.fixture
def image_tree(tmp_path):
    """40 distinct random images in two sub-folders, and 4 exact copies of two of them under other names."""
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "web"
    images = torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8)
    for i, image in enumerate(images):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        write_png(image, str(folder / f"{i:02d}.png"))
    for j, i in enumerate([3, 3, 8, 8]):
        write_png(images[i], str(root / "b" / f"copy{j}.png"))
    return root


def test_curate_command_deduplicates_and_samples_a_folder(image_tree, tmp_path):
    out = tmp_path / "out"
    proc = run_curate(image_tree, "--out", out, "--descriptor", "pixels", "--size", 20)
    assert proc.returncode == 0, proc.stderr[-2000:]
    curated = (out / "curated.txt").read_text().split()
    assert len(curated) == 20 and len(set(curated)) == 20
    assert all((image_tree / p).exists() for p in curated)
    removed = (out / "removed.tsv").read_text().splitlines()[1:]
    by_dedup = sorted(line.split("\t")[0] for line in removed if line.endswith("self-deduplication"))
    assert by_dedup == ["b/copy0.png", "b/copy1.png", "b/copy2.png", "b/copy3.png"]
    assert len(removed) == 44 - 20
    assert "| self-deduplication | 40 |" in (out / "report.md").read_text()


def test_curate_command_gives_one_line_errors_for_bad_input(image_tree, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in [((empty, "--out", tmp_path / "o1"), "holds no images"),
                          ((tmp_path / "missing", "--out", tmp_path / "o2"), "is not a folder of images"),
                          ((image_tree, "--out", tmp_path / "o3", "--descriptor", "pixels", "--size", 41),
                           "but 40 remain after self-deduplication: ask for at most 40"),
                          ((image_tree, "--out", tmp_path / "o4", "--descriptor", "no-such-backbone"),
                           "no descriptor 'no-such-backbone'")]:
        proc = run_curate(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_the_default_threshold_is_documented_in_the_command_help():
    proc = subprocess.run([sys.executable, "-m", "ssl_lessons", "curate", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert f"default {DEDUP_THRESHOLD}" in " ".join(proc.stdout.split())   # argparse wraps to the terminal's width


def test_curate_picks_what_its_stages_pick_one_by_one():
    """Lesson 8 checks that the command line's pipeline keeps the very sets of its step-by-step cells. That holds on
    every CPU only if curate hands each stage the rows it was given: normalising rows again (x / ||x|| with ||x|| one
    ulp off 1) moves last bits, and a last bit decides a threshold or a tie on some machines."""
    base = random_unit(540, d=64)
    x = 3.0 * np.concatenate([base, nudged(base[:30], 0.001, 1)])          # 30 planted copies; not unit rows
    evaluation, seeds = nudged(x[[5]] / 3.0, 0.001, 2), random_unit(3, d=64, seed=7)
    seen = []
    original = curation.deduplicate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(curation, "deduplicate", lambda features, *a, **k: seen.append(features) or original(features, *a, **k))
        stages = curate(x, 0.99, evaluation, 0.99, seed_features=seeds, n_per_seed=40, size=50, levels=(10, 3))
    assert np.array_equal(seen[0], x), "the deduplication gets the rows as given, not normalised again"
    kept = deduplicate(x, 0.99)
    clean = kept[remove_near(x[kept], evaluation, 0.99)]
    retrieved = clean[retrieve_nearest(x[clean], seeds, 40).indices]
    assert [s.kept.tolist() for s in stages[1:4]] == [kept.tolist(), clean.tolist(), retrieved.tolist()]
    tree = hierarchical_kmeans(x[retrieved], (10, 3), 5, resample_sizes(len(retrieved), (10, 3)), 0)
    assert stages[4].kept.tolist() == retrieved[balanced_sample(tree, 50, 0)].tolist()
