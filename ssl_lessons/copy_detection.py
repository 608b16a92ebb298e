"""Copy detection: given an edited copy of an image (cropped, recoloured, blurred, overlaid, ...), find the image it
was made from among many references, and say so with a score that means the same for every query.

The benchmark is DISC2021's (Douze et al. 2021) in miniature: queries are edited copies of reference images plus
edited images that have no reference (distractors); each query proposes its k best references with a score, all
proposals of all queries are pooled and ranked by score, and

    µAP = Σ_i (R_i − R_{i−1}) · P_i        over the pooled proposals, best score first,

where P_i and R_i are the precision and the recall (over all true pairs) of the first i proposals. One threshold
serves every query, so a score must be comparable across queries: that is what the two post-processings of SSCD
(Pizzi et al. 2022) and DINOv2's deduplication are for.

* PCA whitening, learned on a background set of images that are neither queries nor references (Faiss
  `PCAW{d},L2norm`): centre, rotate onto the principal axes, divide each by √(its variance), L2-normalise again.
  Directions every image shares stop dominating the cosine.
* Score normalisation (SSCD eq. 8, `disc_eval.py --score_norm 1.0[0,2]`): s'(q, r) = q·r − β · mean_{j=a..b}
  q·t_j(q), with t_j(q) the query's j-th nearest background image (a = 0, b = 2, β = 1: the mean of its top-3
  background similarities). A query that resembles everything has its scores lowered. It changes no query's own
  ranking (so not acc@1), only how queries' scores compare (µAP, recall at 90 % precision).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from .errors import require
from .retrieval import nearest, unit_rows

# --- the edits -------------------------------------------------------------------------------------------------------
# Each takes a (3, H, W) uint8 image, another image of the set (for overlays) and a generator for its random draws, and
# returns the edited (3, H, W) uint8 image; strengths follow SSCD's training edits (sscd/transforms/settings.py
# ADVANCED), scaled to 32-px images.


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _crop(image, other, g):
    """a random crop of 30-50 % of the area (aspect 3/4-4/3), resized back (SSCD: RandomResizedCrop)"""
    h, w = image.shape[-2:]
    area = _uniform(g, 0.3, 0.5) * h * w
    aspect = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
    ch, cw = min(h, round(math.sqrt(area / aspect))), min(w, round(math.sqrt(area * aspect)))
    top, left = int(torch.randint(0, h - ch + 1, (), generator=g)), int(torch.randint(0, w - cw + 1, (), generator=g))
    return TF.resized_crop(image, top, left, ch, cw, [h, w], antialias=True)


def _flip(image, other, g):
    """a mirror image (left-right)"""
    return TF.hflip(image)


def _colour(image, other, g):
    """strong colour jitter: brightness, contrast, saturation ×0.4-1.6 and a hue shift of up to ±0.2 turns"""
    for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
        image = adjust(image, _uniform(g, 0.4, 1.6))
    return TF.adjust_hue(image, _uniform(g, -0.2, 0.2))


def _grey(image, other, g):
    """greyscale"""
    return TF.rgb_to_grayscale(image, num_output_channels=3)


def _blur(image, other, g):
    """a Gaussian blur of σ 1-1.5 px (SSCD: radius 1-5 at ~300 px)"""
    sigma = _uniform(g, 1.0, 1.5)
    return TF.gaussian_blur(image, [7, 7], [sigma, sigma])


def _jpeg(image, other, g):
    """JPEG re-compression at quality 10-25"""
    return TF.jpeg(image, int(torch.randint(10, 26, (), generator=g)))


def _rotate(image, other, g):
    """a rotation by 10-25 degrees either way, corners filled black"""
    angle = _uniform(g, 10, 25) * (1 if torch.rand((), generator=g) < 0.5 else -1)
    return TF.rotate(image, angle)


def _overlay(image, other, g):
    """another image pasted over a corner (30-45 % of the side), as SSCD's emoji and text overlays"""
    h, w = image.shape[-2:]
    side = round(_uniform(g, 0.3, 0.45) * h)
    top, left = [int(torch.randint(0, 2, (), generator=g)) * (n - side) for n in (h, w)]
    out = image.clone()
    out[:, top:top + side, left:left + side] = TF.resize(other, [side, side], antialias=True)
    return out


def _combined(image, other, g):
    """crop, then colour, then flip, then JPEG: several edits at once"""
    return _jpeg(_flip(_colour(_crop(image, other, g), other, g), other, g), other, g)


EDITS: dict[str, Callable] = {"crop": _crop, "flip": _flip, "colour": _colour, "grey": _grey, "blur": _blur,
                              "jpeg": _jpeg, "rotate": _rotate, "overlay": _overlay, "combined": _combined}


def edit_images(images: torch.Tensor, edits: list[str], seed: int = 0) -> torch.Tensor:
    """images (n, 3, H, W) uint8 and one edit name per image -> the edited copies (n, 3, H, W) uint8. Overlays paste
    the image `n // 2` places further on in the set (another image of it). The same seed gives the same copies."""
    unknown = sorted(set(edits) - set(EDITS))
    require(not unknown, f"unknown edits {unknown}; choose from {list(EDITS)}")
    require(len(edits) == len(images), f"{len(edits)} edit names for {len(images)} images: give one per image")
    g = torch.Generator().manual_seed(seed)
    shift = max(1, len(images) // 2)
    return torch.stack([EDITS[e](img, images[(i + shift) % len(images)], g) for i, (img, e) in
                        enumerate(zip(images, edits))])


@dataclass
class CopyBenchmark:
    """A copy-detection set: `queries` (nq, 3, H, W) uint8 are edited copies, the first `n_copies` of references
    `sources` (indices into `references`), the rest of images outside the references (distractors);
    `edits` names each query's edit; `background` is a third, disjoint set for whitening and score normalisation."""
    references: torch.Tensor
    queries: torch.Tensor
    sources: torch.Tensor
    edits: list[str]
    background: torch.Tensor

    @property
    def n_copies(self) -> int:
        return len(self.sources)

    @classmethod
    def build(cls, images: torch.Tensor, n_references: int, n_copies: int, n_distractors: int, n_background: int,
              edits: tuple[str, ...] = tuple(EDITS), seed: int = 0) -> "CopyBenchmark":
        """Drawn from one pool of images (e.g. CIFAR-10 test): disjoint references, distractor originals and
        background; the copies are made of the first n_copies references; edits cycle through `edits`."""
        need = n_references + n_distractors + n_background
        require(n_copies <= n_references, f"{n_copies} copies need at least as many references ({n_references})")
        require(need <= len(images), f"references + distractors + background = {need} images, the pool has "
                                     f"{len(images)}: ask for fewer")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(images), generator=g)
        refs = order[:n_references]
        distractors = order[n_references:n_references + n_distractors]
        background = order[n_references + n_distractors:need]
        originals = torch.cat([refs[:n_copies], distractors])
        names = [edits[i % len(edits)] for i in range(len(originals))]
        queries = edit_images(images[originals], names, seed=seed + 1)
        return cls(images[refs], queries, torch.arange(n_copies), names, images[background])


# --- post-processing -------------------------------------------------------------------------------------------------

class Whitening:
    """PCA whitening learned on background features (Faiss's PCAMatrix with eigen_power = −1/2, as SSCD's
    `PCAW{d},L2norm`): x -> normalise(W (x − mean)), W = Λ^(−1/2) Uᵀ over the `dims` leading axes. Axes whose variance
    is below 1e-6 of the largest hold rounding noise (a descriptor whose features span fewer dimensions than it has,
    or fewer background images than dimensions) and are left out: divided by √0 they would swamp the others."""

    def __init__(self, background: np.ndarray | torch.Tensor, dims: int | None = None):
        x = unit_rows(background)
        pca = faiss.PCAMatrix(x.shape[1], min(x.shape), 0.0)   # n < d images have at most n principal axes
        pca.train(x)
        variances = faiss.vector_to_array(pca.eigenvalues)
        dims = min(dims or x.shape[1], int((variances > 1e-6 * variances.max()).sum()))
        self.dims = dims
        self.pca = faiss.PCAMatrix(x.shape[1], dims, -0.5)
        self.pca.train(x)

    def __call__(self, features) -> np.ndarray:
        return unit_rows(self.pca.apply(unit_rows(features)))


def background_offsets(queries, background, beta: float = 1.0, first: int = 0, last: int = 2) -> np.ndarray:
    """SSCD's score normalisation term per query: β · mean_{j=first..last} q·t_j(q) over the query's nearest
    background rows t_0, t_1, ... (unit rows). (nq,) float32, subtracted from every score of that query."""
    require(0 <= first <= last, f"background neighbours [{first}, {last}]: need 0 <= first <= last")
    sims, _ = nearest(unit_rows(queries), unit_rows(background), last + 1)
    return beta * sims[:, first:last + 1].mean(axis=1)


# --- proposals and their scores --------------------------------------------------------------------------------------

@dataclass
class Proposals:
    """Each query's k best references: query index, reference index and score, (nq * k,) each."""
    query: np.ndarray
    reference: np.ndarray
    score: np.ndarray


def propose(query_features, reference_features, k: int = 10, offsets: np.ndarray | None = None) -> Proposals:
    """The k most similar references of each query (cosine), minus the query's offset when given."""
    sims, ids = nearest(unit_rows(query_features), unit_rows(reference_features), k)
    if offsets is not None:
        sims = sims - np.asarray(offsets, np.float32)[:, None]
    nq = len(sims)
    return Proposals(np.repeat(np.arange(nq), k), ids.reshape(-1), sims.reshape(-1))


def _ranked_correct(proposals: Proposals, sources: np.ndarray) -> np.ndarray:
    """Whether each proposal is a true (copy, source) pair, in the pooled order: score descending, a false
    proposal before a true one of equal score (DISC's pessimistic tie-break)."""
    sources = np.asarray(sources)
    is_copy = proposals.query < len(sources)
    correct = np.zeros(len(proposals.score), dtype=bool)
    correct[is_copy] = proposals.reference[is_copy] == sources[proposals.query[is_copy]]
    order = np.lexsort((correct, -proposals.score))
    return correct[order]


def micro_average_precision(proposals: Proposals, sources) -> float:
    """µAP over all queries' pooled proposals (the module docstring's sum; DISC's `average_precision`); the recall's
    denominator is the number of true pairs, len(sources) (queries past len(sources) are distractors)."""
    correct = _ranked_correct(proposals, sources)
    tp = np.cumsum(correct)
    precision = tp / np.arange(1, len(tp) + 1)
    recall_step = correct / len(sources)   # R_i − R_{i−1}: 1/n_true where proposal i is true, else 0
    return float((recall_step * precision).sum())


def recall_at_precision(proposals: Proposals, sources, precision: float = 0.9) -> float:
    """The largest recall of a threshold whose proposals above it are at least `precision` true (0 if none is)."""
    correct = _ranked_correct(proposals, sources)
    tp = np.cumsum(correct)
    ok = tp / np.arange(1, len(tp) + 1) >= precision
    return float(tp[ok].max() / len(sources)) if ok.any() else 0.0


def accuracy_at_1(proposals: Proposals, sources, k: int) -> np.ndarray:
    """Per copy: whether its best-scored reference is its source. (n_copies,) bool."""
    sources = np.asarray(sources)
    best = proposals.reference.reshape(-1, k)[:len(sources), 0]
    return best == sources


def copy_detection_scores(query_features, reference_features, sources, background_features=None,
                          whiten: bool = False, normalise_scores: bool = False, k: int = 10) -> dict[str, float]:
    """{"µAP", "acc@1", "recall@P90"} of plain cosine, or with whitening and/or score normalisation learned on
    background features (both need them)."""
    q, r = query_features, reference_features
    require(not (whiten or normalise_scores) or background_features is not None,
            "whitening and score normalisation are learned on background features: pass background_features")
    b = background_features
    if whiten:
        w = Whitening(b)
        q, r, b = w(q), w(r), w(b)
    offsets = background_offsets(q, b) if normalise_scores else None
    p = propose(q, r, k, offsets)
    return {"µAP": micro_average_precision(p, sources), "acc@1": float(accuracy_at_1(p, sources, k).mean()),
            "recall@P90": recall_at_precision(p, sources, 0.9)}
