"""Automatic data curation as DINOv2 built LVD-142M (Oquab et al. 2024, §3 and App. A) and DINOv3 balanced it
(Vo et al. 2024), on features: every function takes (n, d) image descriptors and returns which images to keep.

1. Self-deduplication (App. A.3): link each image to those of its k nearest neighbours with cosine > τ (DINOv2: k =
   64, τ = 0.6 on SSCD descriptors), take the connected components of that graph, keep one image per component.
2. Relative deduplication: the same graph over the pool and the evaluation images, with a looser τ (DINOv2: 0.45);
   every component that holds an evaluation image is dropped whole, so no test image has a copy left to train on.
3. Retrieval (§3): for each image of a curated "seed" set, its N nearest pool images (DINOv2: N = 4 — larger N
   retrieves more images that several seeds share, "collisions"); for a seed set too small for that, M images
   sampled from each k-means cluster of the pool that holds more than 3 seeds.
4. Balanced sampling (Vo et al. 2024; DINOv3 §3.1): hierarchical k-means — k-means on the images, then on those
   centroids, and so on up — then a sample of the target size drawn top-down so that every cluster at every level
   gets an equal share, or all it has when it has less (`water_fill`). A concept photographed a million times and one
   photographed a hundred times end up closer in count.

Faiss does the k-NN graph and k-means (as in DINOv2 and Vo et al.); scipy the connected components.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .checkpoint import atomic_write_text
from .errors import require
from .retrieval import nearest, unit_rows

# The copy thresholds of the default descriptor, lesson 1's SimCLR backbone (data/pretrained/), set as lesson 8 sets
# them (near_copy_threshold on CIFAR-10's 10,000 test images): 1 % of distinct images have a neighbour above the first,
# 5 % above the second. Another descriptor needs its own (DINOv2's 0.6 and 0.45 are SSCD's on web images).
DEFAULT_DESCRIPTOR = "simclr-vit-cifar10-laptop"
DEDUP_THRESHOLD = 0.987
RELATIVE_THRESHOLD = 0.98

# --- 1, 2: deduplication -------------------------------------------------------------------------------------------


def duplicate_components(features, threshold: float, k: int = 16) -> np.ndarray:
    """Component label (n,) of each image in the graph linking each image to those of its k nearest neighbours
    whose cosine similarity exceeds `threshold`. Images with the same label are copies of one another (directly or
    through a chain of copies)."""
    x = unit_rows(features)
    n = len(x)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    sims, ids = nearest(x, x, min(k + 1, n))              # the first neighbour is (usually) the image itself
    rows = np.repeat(np.arange(n), ids.shape[1])
    linked = (sims.reshape(-1) > threshold) & (ids.reshape(-1) != rows) & (ids.reshape(-1) >= 0)
    graph = coo_matrix((np.ones(linked.sum()), (rows[linked], ids.reshape(-1)[linked])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def deduplicate(features, threshold: float, k: int = 16) -> np.ndarray:
    """Indices (ascending) of the images kept: the first image of each duplicate component."""
    labels = duplicate_components(features, threshold, k)
    _, first = np.unique(labels, return_index=True)
    return np.sort(first)


def near_copy_threshold(features, rate: float) -> float:
    """A copy threshold for a descriptor, set from images known to be distinct (e.g. a test set): the cosine that
    only a fraction `rate` of them exceed with their nearest other image, i.e. the rate at which distinct images
    would be taken for copies."""
    x = unit_rows(features)
    sims, ids = nearest(x, x, 2)
    itself_first = ids[:, 0] == np.arange(len(x))        # an exact copy may tie with the image itself
    nearest_other = np.where(itself_first, sims[:, 1], sims[:, 0])
    return float(np.quantile(nearest_other, 1 - rate))


def remove_near(features, evaluation_features, threshold: float, k: int = 16) -> np.ndarray:
    """Indices (ascending) of the pool images kept after relative deduplication: the pool and the evaluation images
    in one graph (each image's k nearest neighbours over both, linked above `threshold`); pool images in a component
    with any evaluation image are removed."""
    pool, evaluation = unit_rows(features), unit_rows(evaluation_features)
    labels = duplicate_components(np.concatenate([pool, evaluation]), threshold, k)
    tainted = np.isin(labels[:len(pool)], labels[len(pool):])
    return np.flatnonzero(~tainted)


# --- 3: retrieval ---------------------------------------------------------------------------------------------------

@dataclass
class Retrieved:
    """Pool indices retrieved (ascending, unique), and how many were retrieved by more than one seed."""
    indices: np.ndarray
    collisions: int


def retrieve_nearest(features, seed_features, n_per_seed: int) -> Retrieved:
    """Sample-based retrieval: the union of each seed's n_per_seed nearest pool images."""
    require(n_per_seed >= 1, f"n_per_seed must be at least 1, got {n_per_seed}")
    _, ids = nearest(unit_rows(seed_features), unit_rows(features), n_per_seed)
    found, times = np.unique(ids, return_counts=True)
    return Retrieved(found, int((times > 1).sum()))


def spherical_kmeans(features, n_clusters: int, seed: int = 0, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Faiss k-means on unit rows with unit centroids (cosine). (centroids (c, d), assignment (n,)), deterministic
    for a seed. Every point is used (Faiss's default would subsample beyond 256 points per centroid)."""
    x = unit_rows(features)
    require(1 <= n_clusters <= len(x), f"{n_clusters} clusters asked of {len(x)} images")
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=iterations, seed=seed, spherical=True,
                      max_points_per_centroid=max(1, len(x)), min_points_per_centroid=1, verbose=False)
    km.train(x)
    _, assignment = km.index.search(x, 1)
    return km.centroids.copy(), assignment[:, 0].astype(np.int64)


def retrieve_by_cluster(features, seed_features, n_clusters: int, per_cluster: int, min_seeds: int = 4,
                        seed: int = 0) -> Retrieved:
    """Cluster-based retrieval (App. A.4): k-means on the pool; from each cluster that holds at least `min_seeds`
    seeds (DINOv2: more than 3), `per_cluster` images at random (all of a smaller cluster)."""
    centroids, assignment = spherical_kmeans(features, n_clusters, seed)
    _, seed_cluster = nearest(unit_rows(seed_features), centroids, 1)
    clusters, seeds_in = np.unique(seed_cluster[:, 0], return_counts=True)
    rng = np.random.default_rng(seed)
    picked = []
    for c in clusters[seeds_in >= min_seeds]:
        members = np.flatnonzero(assignment == c)
        picked.append(rng.choice(members, min(per_cluster, len(members)), replace=False))
    return Retrieved(np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64), 0)


# --- 4: hierarchical k-means and balanced sampling -------------------------------------------------------------------

@dataclass
class Level:
    """One level of a hierarchical clustering: `members[c]` lists cluster c's children — image indices at level 1,
    cluster indices of the level below above it."""
    centroids: np.ndarray
    members: list[np.ndarray] = field(repr=False)


def hierarchical_kmeans(features, n_clusters: tuple[int, ...], n_resamples: int = 0,
                        sample_sizes: tuple[int, ...] | None = None, seed: int = 0) -> list[Level]:
    """Vo et al.'s hierarchical k-means: level 1 clusters the images into n_clusters[0], level l clusters level l−1's
    centroids into n_clusters[l−1]. With n_resamples > 0 each level is refined as theirs is: k-means is run again
    on the sample_sizes[l] points closest to each centroid only, and every point re-assigned to the new centroids —
    so a dense region stops pulling every centroid towards it (their default: half the mean cluster size)."""
    require(all(a > b for a, b in zip(n_clusters, n_clusters[1:])),
            f"n_clusters {n_clusters} must shrink from one level to the next (images -> fewer and fewer clusters)")
    sample_sizes = sample_sizes or tuple(0 for _ in n_clusters)
    require(len(sample_sizes) == len(n_clusters), "one sample size per level")
    points, levels = unit_rows(features), []
    for level, (c, size) in enumerate(zip(n_clusters, sample_sizes)):
        centroids, assignment = spherical_kmeans(points, c, seed + level)
        for r in range(n_resamples if size > 0 else 0):
            sims = (points * centroids[assignment]).sum(1)
            closest = np.concatenate([idx[np.argsort(-sims[idx], kind="stable")[:size]]
                                      for idx in (np.flatnonzero(assignment == j) for j in range(c)) if len(idx)])
            centroids, _ = spherical_kmeans(points[closest], min(c, len(closest)), seed + 1000 * (r + 1) + level)
            _, nearest_centroid = nearest(points, centroids, 1)
            assignment = nearest_centroid[:, 0]
        members = [np.flatnonzero(assignment == j) for j in range(len(centroids))]
        keep = [j for j, m in enumerate(members) if len(m)]   # a centroid no point chose is dropped
        levels.append(Level(centroids[keep], [members[j] for j in keep]))
        points = levels[-1].centroids
    return levels


def water_fill(sizes, target: int, rng: np.random.Generator) -> np.ndarray:
    """Split `target` among groups of the given sizes as evenly as they allow: the largest cap x with
    Σ min(x, size_i) ≤ target, each group min(x, size_i), and the remainder one each to random groups larger than x.
    Returns the counts (sum = min(target, Σ sizes))."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if target >= sizes.sum():
        return sizes.copy()
    low, high = 0, int(sizes.max())          # Σ min(low, s) <= target < Σ min(high, s)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if np.minimum(mid, sizes).sum() <= target else (low, mid)
    counts = np.minimum(low, sizes)
    remainder = target - int(counts.sum())
    bigger = np.flatnonzero(sizes > low)
    counts[rng.choice(bigger, remainder, replace=False)] += 1
    return counts


def balanced_sample(levels: list[Level], target: int, seed: int = 0) -> np.ndarray:
    """Vo et al.'s hierarchical sampling: image indices (ascending), `target` of them, chosen top-down — the top
    level's clusters share the target by water_fill over the number of images under each, each cluster's share is
    split the same way among its children, down to level 1, where a cluster's share is drawn at random."""
    n_images = sum(len(m) for m in levels[0].members)
    require(target <= n_images, f"a sample of {target} asked of {n_images} images: ask for at most {n_images}")
    rng = np.random.default_rng(seed)
    sizes = [np.array([len(m) for m in levels[0].members])]          # images under each cluster, per level
    for level in levels[1:]:
        sizes.append(np.array([sizes[-1][m].sum() for m in level.members]))

    def draw(level: int, children: np.ndarray, share: int) -> list[np.ndarray]:
        if level < 0:                                                  # children are images
            return [rng.choice(children, share, replace=False)]
        counts = water_fill(sizes[level][children], share, rng)
        return [part for child, n in zip(children, counts) if n
                for part in draw(level - 1, levels[level].members[child], int(n))]

    top = len(levels) - 1
    return np.sort(np.concatenate(draw(top, np.arange(len(levels[top].members)), target)))


# --- the pipeline ----------------------------------------------------------------------------------------------------

@dataclass
class Stage:
    """One step of the funnel: the pool indices still kept after it (ascending), and what it did."""
    name: str
    kept: np.ndarray
    note: str = ""


def default_levels(n: int) -> tuple[int, ...]:
    """Clusters per level for n images: ~25 images per level-1 cluster and ~10 level-1 clusters per level-2 one (Vo et
    al.'s levels shrink 5-20× each; a CIFAR-sized pool needs two)."""
    levels = tuple(c for c in (n // 25, n // 250) if c >= 2)
    return levels or (max(1, min(n, 2)),)


def resample_sizes(n: int, levels: tuple[int, ...]) -> tuple[int, ...]:
    """Vo et al.'s points kept per cluster when k-means is re-run: half the mean cluster size of each level."""
    mean_sizes = [n / levels[0]] + [a / b for a, b in zip(levels, levels[1:])]
    return tuple(max(1, int(m // 2)) for m in mean_sizes)


def curate(features, dedup_threshold: float, evaluation_features=None, relative_threshold: float | None = None,
           seed_features=None, n_per_seed: int = 4, size: int | None = None, levels: tuple[int, ...] | None = None,
           n_resamples: int = 5, k: int = 16, seed: int = 0) -> list[Stage]:
    """DINOv2's pipeline and DINOv3's sampling on a pool's descriptors, in order: self-deduplication; relative
    deduplication against evaluation_features (threshold relative_threshold, default dedup_threshold); retrieval of
    n_per_seed neighbours per seed (when seed_features are given); balanced sampling of `size` images from a
    hierarchical k-means with `levels` (when size is given). Returns the stages, the first being the whole pool.
    Each stage gets the rows of `features` as they are (each normalises what it is given): normalising unit rows
    again can move their last bits, and the stages must pick what the same functions pick when called one by one."""
    x = np.asarray(features, dtype=np.float32)
    stages = [Stage("pool", np.arange(len(x)), f"{len(x)} images")]

    def then(name: str, chosen_within: np.ndarray, note: str):
        stages.append(Stage(name, stages[-1].kept[chosen_within], note))

    kept = deduplicate(x, dedup_threshold, k)
    then("self-deduplication", kept, f"one image per component of the {k}-NN graph with cosine > {dedup_threshold:.3f}")
    if evaluation_features is not None:
        tau = dedup_threshold if relative_threshold is None else relative_threshold
        then("relative deduplication", remove_near(x[stages[-1].kept], evaluation_features, tau, k),
             f"components with an evaluation image at cosine > {tau:.3f} removed")
    if seed_features is not None:
        found = retrieve_nearest(x[stages[-1].kept], seed_features, min(n_per_seed, len(stages[-1].kept)))
        then("retrieval", found.indices, f"{n_per_seed} nearest images of each of {len(seed_features)} seeds "
                                         f"({found.collisions} found by more than one)")
    if size is not None:
        pool = stages[-1].kept
        require(size <= len(pool), f"a curated set of {size} images was asked for, but {len(pool)} remain after "
                                   f"{stages[-1].name}: ask for at most {len(pool)}")
        levels = levels or default_levels(len(pool))
        tree = hierarchical_kmeans(x[pool], levels, n_resamples, resample_sizes(len(pool), levels), seed)
        then("balanced sampling", balanced_sample(tree, size, seed),
             f"{size} images drawn evenly over a hierarchical k-means with {' -> '.join(map(str, levels))} clusters")
    return stages


def write_curation(out_dir, files: list, root, stages: list[Stage], settings: dict) -> dict:
    """The curated list and its report in out_dir: curated.txt (the kept files, relative to root, one per line),
    removed.tsv (each removed file and the stage that removed it), report.json and report.md (the funnel).
    Returns the report."""
    out_dir, root = Path(out_dir), Path(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    rel = [str(Path(f).relative_to(root)) for f in files]
    atomic_write_text("".join(f"{rel[i]}\n" for i in stages[-1].kept), out_dir / "curated.txt")
    removed = []
    for before, after in zip(stages, stages[1:]):
        removed += [f"{rel[i]}\t{after.name}\n" for i in np.setdiff1d(before.kept, after.kept)]
    atomic_write_text("path\tremoved by\n" + "".join(removed), out_dir / "removed.tsv")
    funnel = [{"stage": s.name, "images": int(len(s.kept)), "note": s.note} for s in stages]
    report = {"root": str(root), **settings, "funnel": funnel}
    atomic_write_text(json.dumps(report, indent=1), out_dir / "report.json")
    lines = [f"# Curation of {root}", "", f"descriptor: {settings.get('descriptor')}", "",
             "| stage | images | what it did |", "|---|---:|---|"]
    lines += [f"| {f['stage']} | {f['images']} | {f['note']} |" for f in funnel]
    atomic_write_text("\n".join(lines) + "\n", out_dir / "report.md")
    return report
