"""Search with frozen features: each image is a unit vector, similarity is the cosine, and a query's answer is the
database ranked by it (DINOv2 App. A.2: m(s, r) = f(s)·f(r) / (‖f(s)‖₂ ‖f(r)‖₂)).

Nearest neighbours come from Faiss (`IndexFlatIP`: exact inner products, batched over the queries), the library
DINOv2's curation and SSCD's evaluation search with; the rankings are scored class-level, as an image-retrieval
benchmark scores them (relevant = same class as the query):

    precision@k = |relevant ∩ top-k| / k
    AP          = (1/R) Σ_{i : rank i relevant} precision@i      (R = number of relevant database images)
    mAP         = the mean of AP over the queries

This AP is the non-interpolated one (= scikit-learn's `average_precision_score` on a query's full ranking); DINO's
`eval_image_retrieval.py` uses the revisited-Oxford trapezoid, which differs from it by O(1/R).
"""
from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from .errors import require


def unit_rows(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, d) features -> float32 rows of unit L2 norm, C-contiguous (what Faiss takes)."""
    x = torch.as_tensor(features, dtype=torch.float32)
    return np.ascontiguousarray(F.normalize(x, dim=1).numpy())


def nearest(queries, database, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar database rows of each query row, by inner product (cosine for unit rows).
    (similarities (nq, k) float32, indices (nq, k) int64), most similar first; Faiss's exact flat index."""
    queries, database = np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(database, np.float32)
    require(queries.ndim == 2 and database.ndim == 2 and queries.shape[1] == database.shape[1],
            f"queries {queries.shape} and database {database.shape} must be (n, d) with the same d")
    require(1 <= k <= len(database), f"k={k} neighbours asked of a database of {len(database)} images")
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    sims, ids = zip(*(index.search(queries[s:s + batch_size], k) for s in range(0, len(queries), batch_size)))
    return np.concatenate(sims), np.concatenate(ids)


def ranking_scores(query_features, query_labels, db_features, db_labels, ks=(1, 10, 100),
                   batch_size: int = 256) -> dict[str, float]:
    """Class-level retrieval of every query against the whole database: {"P@k": mean precision@k for each k,
    "mAP": mean average precision over the full ranking}. Features need not be normalised (cosine is used).
    Ties in similarity are ranked with the irrelevant image first (the pessimistic order), so a constant feature
    scores as badly as chance allows. Queries are processed `batch_size` at a time ((batch, N) similarities)."""
    q, db = torch.as_tensor(unit_rows(query_features)), torch.as_tensor(unit_rows(db_features))
    q_labels, db_labels = torch.as_tensor(query_labels), torch.as_tensor(db_labels)
    require(len(q) == len(q_labels) and len(db) == len(db_labels), "one label per feature row")
    require(max(ks) <= len(db), f"precision@{max(ks)} needs at least {max(ks)} database images, got {len(db)}")
    ranks = torch.arange(1, len(db) + 1, dtype=torch.float64)
    hits = {k: 0.0 for k in ks}
    ap_sum, counted = 0.0, 0
    for s in range(0, len(q), batch_size):
        sims = q[s:s + batch_size] @ db.T                                     # (b, N)
        relevant = (db_labels[None, :] == q_labels[s:s + batch_size, None])   # (b, N)
        # sort by similarity, then irrelevant before relevant among equals (stable sort on the relevance first)
        by_relevance = torch.argsort(relevant.to(torch.int8), dim=1, stable=True)
        order = torch.gather(by_relevance, 1, torch.argsort(torch.gather(sims, 1, by_relevance), dim=1,
                                                             descending=True, stable=True))
        rel = torch.gather(relevant, 1, order).to(torch.float64)              # (b, N) relevance in ranked order
        found = rel.cumsum(1)
        for k in ks:
            hits[k] += (found[:, k - 1] / k).sum().item()
        n_relevant = rel.sum(1)
        has = n_relevant > 0
        ap = (found / ranks * rel).sum(1)[has] / n_relevant[has]
        ap_sum += ap.sum().item()
        counted += int(has.sum())
    out = {f"P@{k}": hits[k] / len(q) for k in ks}
    out["mAP"] = ap_sum / max(counted, 1)
    return out
