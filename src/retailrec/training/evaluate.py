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
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp


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


def _recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    return float(np.mean(hits[:, :k].sum(axis=1) / np.minimum(n_rel, k)))


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discount[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    return float(np.mean(dcg / ideal))


def _map(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    h = hits[:, :k]
    precision = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)
    return float(np.mean((precision * h).sum(axis=1) / np.minimum(n_rel, k)))


def _hit_rate(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    return float(np.mean(hits[:, :k].any(axis=1)))


def _mrr(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    h = hits[:, :k]
    first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, np.inf)
    return float(np.mean(1.0 / first))


_FROM_HITS = {"recall": _recall, "ndcg": _ndcg, "map": _map, "hit_rate": _hit_rate, "mrr": _mrr}


def _metric(name: str, recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    return 0.0 if len(n_rel) == 0 else _FROM_HITS[name](hits, n_rel, k)


def recall_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    return _metric("recall", recommended, relevant, k)


def ndcg_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    return _metric("ndcg", recommended, relevant, k)


def map_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    return _metric("map", recommended, relevant, k)


def hit_rate_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    return _metric("hit_rate", recommended, relevant, k)


def mrr_at_k(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> float:
    return _metric("mrr", recommended, relevant, k)


# --------------------------------------------------------------------------------------------
# Evaluating a ranker on a held-out window

#: Which test events count as relevant: any interaction, or intent to buy.
TARGETS = {"any": ("view", "addtocart", "transaction"), "buy": ("addtocart", "transaction")}
KS = (10, 20)


class Ranker(Protocol):
    """Ranks item ids for visitors given their training histories (rows of the train matrix)."""

    def __call__(self, visitor_ids: np.ndarray, history: sp.csr_matrix, n: int) -> np.ndarray: ...


def model_ranker(model: Any, data: Any, exclude_seen: bool = True) -> Ranker:
    """A :class:`Ranker` for a fitted model on its training :class:`Dataset`.

    Unavailable items are never recommended; with ``exclude_seen`` neither are the visitor's own
    training items.
    """
    unavailable = np.flatnonzero(~data.item_available)

    def rank(visitor_ids: np.ndarray, history: sp.csr_matrix, n: int) -> np.ndarray:
        items, _scores = model.recommend(
            history, n, filter_already_liked_items=exclude_seen, filter_items=unavailable
        )
        return np.where(items >= 0, data.item_ids[np.maximum(items, 0)], -1)

    return rank


def oracle_ranker(oracle: Any, data: Any, as_of_ms: int, exclude_seen: bool = True) -> Ranker:
    """A :class:`Ranker` for the synthetic data's oracle, with the same exclusions as models."""

    def rank(visitor_ids: np.ndarray, history: sp.csr_matrix, n: int) -> np.ndarray:
        exclude = None
        if exclude_seen:
            exclude = [
                data.item_ids[history.indices[history.indptr[r] : history.indptr[r + 1]]]
                for r in range(history.shape[0])
            ]
        out = []
        for start in range(0, len(visitor_ids), 64):
            part = None if exclude is None else exclude[start : start + 64]
            out.append(oracle.recommend(visitor_ids[start : start + 64], n, as_of_ms, exclude=part))
        return np.concatenate(out) if out else np.zeros((0, n), dtype=np.int64)

    return rank


def evaluate(
    rank: Ranker,
    data: Any,
    test: pd.DataFrame,
    *,
    ks: Sequence[int] = KS,
    exclude_seen: bool = True,
    personal_cold: bool = False,
    max_warm: int = 2_000,
    max_cold: int = 2_000,
    random_state: int = 0,
) -> dict[str, float]:
    """Metrics of ``rank`` on the ``test`` window, for every target x segment x k.

    Args:
        data: The training :class:`~retailrec.models.data.Dataset` (histories and catalogue).
        test: Test-window events.
        exclude_seen: A visitor's training items are neither recommended nor counted as relevant.
        personal_cold: Rank cold visitors one by one (the oracle knows them); models give every
            cold visitor the same list, so one row is ranked and shared.
        max_warm: Score a seeded sample of at most this many warm visitors (the same sample for
            every ranker on the same data): on a full-size shop, ranking 360k items for every
            visitor of a week costs minutes per model for a digit of precision.
        max_cold: Likewise, a seeded sample of at most this many cold visitors.

    Returns:
        ``{metric}_at_{k}`` for any interaction on warm visitors (the headline numbers), the same
        with ``_buy`` (carts and purchases), ``_cold`` and ``_buy_cold`` suffixes, plus
        ``coverage_at_10`` (share of the catalogue in warm visitors' top 10),
        ``mean_popularity_at_10`` (training events of a recommended item, on average) and the
        visitor counts ``n_warm``, ``n_cold``.
    """
    n = max(ks)
    visitors = np.unique(test["visitorid"].to_numpy())
    rows = data.user_index(visitors)
    warm, cold = visitors[rows >= 0], visitors[rows < 0]
    rng = np.random.default_rng(random_state)
    if len(warm) > max_warm:
        warm = np.sort(rng.choice(warm, max_warm, replace=False))
    if len(cold) > max_cold:
        cold = np.sort(rng.choice(cold, max_cold, replace=False))
    history = data.matrix[data.user_index(warm)]
    recs = {"": rank(warm, history, n)}
    empty = sp.csr_matrix((len(cold) if personal_cold else 1, data.n_items), dtype=np.float32)
    cold_recs = (
        rank(cold if personal_cold else cold[:1], empty, n) if len(cold) else np.zeros((0, n))
    )
    recs["_cold"] = cold_recs if personal_cold else np.tile(cold_recs, (len(cold), 1))
    segments = {"": warm, "_cold": cold}

    out: dict[str, float] = {"n_warm": float(len(warm)), "n_cold": float(len(cold))}
    kind = test["event"].astype("str").to_numpy()
    for target, types in TARGETS.items():
        sub = test[np.isin(kind, types)]
        by_visitor = sub.groupby("visitorid")["itemid"].unique()
        for seg, ids in segments.items():
            relevant = [by_visitor.get(v, np.zeros(0, dtype=np.int64)) for v in ids]
            if exclude_seen and seg == "":
                for i, r in enumerate(data.user_index(ids)):
                    seen = data.item_ids[
                        data.matrix.indices[data.matrix.indptr[r] : data.matrix.indptr[r + 1]]
                    ]
                    relevant[i] = np.setdiff1d(relevant[i], seen)
            suffix = ("" if target == "any" else f"_{target}") + seg
            hits, n_rel = _hits(recs[seg], relevant, n)  # once; every metric and k reads it
            for k in ks:
                for name, metric in _FROM_HITS.items():
                    out[f"{name}_at_{k}{suffix}"] = metric(hits, n_rel, k) if len(n_rel) else 0.0
    top10 = recs[""][:, :10]
    shown = np.unique(top10[top10 >= 0])
    out["coverage_at_10"] = len(shown) / max(data.n_items, 1)
    pop = pd.Series(data.item_popularity(), index=data.item_ids)
    out["mean_popularity_at_10"] = (
        float(pop.reindex(top10[top10 >= 0].ravel()).mean()) if top10.size else 0.0
    )
    return out
