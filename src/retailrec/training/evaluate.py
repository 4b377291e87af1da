"""Ranking metrics over the full catalogue.

Every metric takes ``recommended``, an (n_users, >= k) array of item ids in ranked order, and
``relevant``, one array of held-out item ids per user, and returns the mean over users that have
at least one relevant item. Definitions follow the usual top-k conventions:

* Recall@k = |top-k ∩ relevant| / min(k, |relevant|)  (so a perfect ranking scores 1)
* NDCG@k   = DCG@k / IDCG@k with binary gains and log2(rank + 1) discounts
* MAP@k    = mean over users of (1 / min(k, |relevant|)) * sum of precision@r at each hit r <= k
* HitRate@k = share of users with at least one hit in the top k
* MRR@k    = mean reciprocal rank of the first hit (0 when none in the top k)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _hits(
    recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n_users, k) hit matrix and (n_users,) relevant counts, for users with relevant items."""
    rec = np.asarray(recommended)[:, :k]
    if len(rec) != len(relevant):
        raise ValueError(f"{len(rec)} rows of recommendations for {len(relevant)} users")
    hits = np.zeros(rec.shape, dtype=bool)
    n_rel = np.zeros(len(rec), dtype=np.int64)
    for u, rel in enumerate(relevant):
        rel = np.unique(np.asarray(rel))
        n_rel[u] = len(rel)
        hits[u] = np.isin(rec[u], rel)
    keep = n_rel > 0
    return hits[keep], n_rel[keep]


def recall_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    if len(n_rel) == 0:
        return 0.0
    return float(np.mean(hits.sum(axis=1) / np.minimum(n_rel, k)))


def ndcg_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    if len(n_rel) == 0:
        return 0.0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discount[: hits.shape[1]]).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    return float(np.mean(dcg / ideal))


def map_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    if len(n_rel) == 0:
        return 0.0
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    return float(np.mean((precision * hits).sum(axis=1) / np.minimum(n_rel, k)))


def hit_rate_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    if len(n_rel) == 0:
        return 0.0
    return float(np.mean(hits.any(axis=1)))


def mrr_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    if len(n_rel) == 0:
        return 0.0
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    return float(np.mean(1.0 / first))
