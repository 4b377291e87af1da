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

import itertools
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retailrec.events import EVENT_TYPES, TRANSACTION, event_codes
from retailrec.feature_store import store
from retailrec.serving import repeat
from retailrec.serving.repeat import RepeatCurves
from retailrec.serving.rules import Rules
from retailrec.serving.service import HISTORY_LIMIT, RecommendationService


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


def _ndcg_rows(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each row of the hit matrix."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discount[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    rows: np.ndarray = dcg / ideal
    return rows


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> float:
    return float(np.mean(_ndcg_rows(hits, n_rel, k)))


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
# Evaluating through the serving path on a held-out window

#: Which test events count as relevant: any interaction, or intent to buy.
TARGETS = {"any": ("view", "addtocart", "transaction"), "buy": ("addtocart", "transaction")}
KS = (10, 20)
#: The rules evaluation asks the API for: a returning visitor's *new* items are the truth, so
#: items the visitor already touched are neither recommended nor counted.
EVAL_RULES = Rules(exclude_purchased=True, exclude_seen=True)
#: Text order of the event names: how the store's key orders events with the same timestamp.
_EVENT_KEY_ORDER = np.argsort(np.argsort(np.array(EVENT_TYPES)))


class Histories:
    """Every visitor's events before a split time, as the store would return them then.

    Args:
        events: Retailrocket columns, all before the split (any order).
    """

    def __init__(self, events: pd.DataFrame) -> None:
        #: The events themselves (for baselines that fit on them).
        self.events = events
        vis = events["visitorid"].to_numpy(np.int64)
        ts = events["timestamp"].to_numpy(np.int64)
        item = events["itemid"].to_numpy(np.int64)
        code = event_codes(events["event"]).astype(np.int64)
        tx = events["transactionid"].astype("Int64").fillna(-1).to_numpy(np.int64)
        # The store's key order: visitor, time, item, event (as text), transaction.
        order = np.lexsort((tx, _EVENT_KEY_ORDER[code], item, ts, vis))
        self._vis, self._ts, self._item = vis[order], ts[order], item[order]
        self._code, self._tx = code[order], tx[order]
        self.visitors, starts = np.unique(self._vis, return_index=True)
        self._bounds = np.r_[starts, len(self._vis)]
        #: Each item's number of events before the split (its training popularity).
        self.item_counts = pd.Series(self._item).value_counts()

    def _range(self, visitor_id: int) -> tuple[int, int]:
        at = int(np.searchsorted(self.visitors, visitor_id))
        if at == len(self.visitors) or self.visitors[at] != visitor_id:
            return 0, 0
        return int(self._bounds[at]), int(self._bounds[at + 1])

    def get(self, visitor_id: int, limit: int = HISTORY_LIMIT) -> store.History:
        """What ``store.visitor_history(conn, visitor_id, limit=limit)`` returned at the split."""
        lo, hi = self._range(visitor_id)
        lo = max(lo, hi - limit)
        return store.History(self._ts[lo:hi], self._code[lo:hi], self._item[lo:hi], self._tx[lo:hi])

    def seen(self, visitor_id: int) -> np.ndarray:
        """Every item the visitor touched before the split."""
        lo, hi = self._range(visitor_id)
        return np.unique(self._item[lo:hi])


class Ranker(Protocol):
    """Ranks item ids (``-1`` padding) for visitors: (n_visitors, n)."""

    def __call__(self, visitor_ids: np.ndarray, n: int) -> np.ndarray: ...


def served_ranker(
    served: RecommendationService, histories: Histories, now_ms: int, rules: Rules = EVAL_RULES
) -> Ranker:
    """Rank as the API answers ``GET /v1/users/{id}/recommendations``: each visitor's history as
    the store held it at the split (``histories``), the shop's clock at ``now_ms``, the same
    candidates, fallbacks and business rules (:meth:`RecommendationService.for_history`)."""

    def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
        out = np.full((len(visitor_ids), n), -1, dtype=np.int64)
        for r, v in enumerate(visitor_ids):
            answer = served.for_history(histories.get(int(v)), n, rules, now_ms)
            out[r, : len(answer.items)] = answer.items[:n]
        return out

    return rank


def oracle_ranker(
    oracle: Any, histories: Histories, as_of_ms: int, exclude_seen: bool = True
) -> Ranker:
    """A :class:`Ranker` for the synthetic data's oracle, with the same exclusions as serving."""

    def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
        out = []
        for start in range(0, len(visitor_ids), 64):
            part = visitor_ids[start : start + 64]
            exclude = [histories.seen(int(v)) for v in part] if exclude_seen else None
            out.append(oracle.recommend(part, n, as_of_ms, exclude=exclude))
        return np.concatenate(out) if out else np.zeros((0, n), dtype=np.int64)

    return rank


def recently_viewed_ranker(histories: Histories) -> Ranker:
    """The "continue shopping" baseline: the visitor's own items, most events first (the more
    recent first on ties), then the most popular items; nothing they bought."""
    popular = histories.item_counts.index.to_numpy(np.int64)

    def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
        out = np.full((len(visitor_ids), n), -1, dtype=np.int64)
        for r, v in enumerate(visitor_ids):
            lo, hi = histories._range(int(v))
            items, codes = histories._item[lo:hi], histories._code[lo:hi]
            bought = np.unique(items[codes == TRANSACTION])
            frame = pd.DataFrame({"item": items, "at": np.arange(hi - lo)})
            own = frame.groupby("item")["at"].agg(["size", "max"])
            own = own.sort_values(["size", "max"], ascending=False, kind="stable")
            mine = own.index.to_numpy(np.int64)
            mine = mine[~np.isin(mine, bought)]
            rest = popular[: n + len(mine) + len(bought)]
            rest = rest[~np.isin(rest, np.concatenate([mine, bought]))]
            top = np.concatenate([mine, rest])[:n]
            out[r, : len(top)] = top
        return out

    return rank


def repeat_curves(
    served: RecommendationService,
    histories: Histories,
    window: pd.DataFrame,
    visitors: np.ndarray,
    new_hits: np.ndarray,
) -> RepeatCurves:
    """The repeat curves of :mod:`retailrec.serving.repeat` on a window, through the serving
    path: ``new`` from ``new_hits`` (:func:`evaluate`'s ``hits_at_rank`` for the answers with
    ``exclude_seen=true`` to ``visitors``, the returning visitors it ranked), ``seen`` from the
    same visitors' own items as :meth:`RecommendationService.seen_items` orders them under the
    API's default rules."""
    touched = window.groupby("visitorid")["itemid"].unique()
    depth = repeat.DEPTH
    seen_hits, seen_counts = np.zeros(depth), np.zeros(depth)
    rules = Rules()
    for v in visitors:
        p = served.prepare(histories.get(int(v)))
        blocked = served.rules.blocked(rules, p.cols, p.purchased)
        seen = served.bundle.item_ids[served.seen_items(p, blocked, depth)]
        seen_counts[: len(seen)] += 1
        seen_hits[: len(seen)] += np.isin(seen, touched.get(int(v), np.zeros(0, np.int64)))
    n = len(visitors)
    new = np.zeros(depth)
    new[: min(depth, len(new_hits))] = np.asarray(new_hits, dtype=np.float64)[:depth]
    return RepeatCurves(
        repeat.position_curve(seen_hits, seen_counts),
        repeat.position_curve(new, np.full(depth, float(n))),
        n,
    )


def popularity_ranker(histories: Histories, exclude_seen: bool = True) -> Ranker:
    """The baseline everyone should beat: items by their number of events before the window,
    the visitor's own items left out."""
    order = histories.item_counts.index.to_numpy(np.int64)  # most events first

    def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
        out = np.full((len(visitor_ids), n), -1, dtype=np.int64)
        for r, v in enumerate(visitor_ids):
            seen = histories.seen(int(v)) if exclude_seen else np.zeros(0, np.int64)
            top = order[: n + len(seen)]
            top = top[~np.isin(top, seen)][:n]
            out[r, : len(top)] = top
        return out

    return rank


def bm25_ranker(histories: Histories, k: int = 50, exclude_seen: bool = True) -> Ranker:
    """The plain item-kNN baseline: implicit's BM25 neighbours (K=50) over the visitor x item
    matrix of event weights view 1, cart 3, purchase 5, with no recency decay, fitted on every
    event before the window; the visitor's own items left out (unless ``exclude_seen`` is
    False)."""
    return bm25_rankers(histories, k)[exclude_seen]


def bm25_rankers(histories: Histories, k: int = 50) -> dict[bool, Ranker]:
    """:func:`bm25_ranker` fitted once, by ``exclude_seen``: the ranker that leaves the
    visitor's own items out (True) and the one that may return them (False)."""
    import scipy.sparse as sp
    from implicit.nearest_neighbours import BM25Recommender
    from threadpoolctl import threadpool_limits

    weights = np.array([1.0, 3.0, 5.0, 0.0])[histories._code]
    items, item_col = np.unique(histories._item, return_inverse=True)
    rows = np.searchsorted(histories.visitors, histories._vis)
    matrix = sp.csr_matrix(
        (weights.astype(np.float32), (rows, item_col)),
        shape=(len(histories.visitors), len(items)),
    )
    model = BM25Recommender(K=k, num_threads=1)
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(matrix, show_progress=False)

    def ranker(exclude_seen: bool) -> Ranker:
        def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
            out = np.full((len(visitor_ids), n), -1, dtype=np.int64)
            at = np.searchsorted(histories.visitors, visitor_ids)
            found = (at < len(histories.visitors)) & (
                histories.visitors[np.minimum(at, len(histories.visitors) - 1)] == visitor_ids
            )
            if found.any():
                ids, _ = model.recommend(
                    at[found],
                    matrix[at[found]],
                    N=n,
                    filter_already_liked_items=exclude_seen,
                )
                ids = np.atleast_2d(ids)
                out[found, : ids.shape[1]] = np.where(ids >= 0, items[np.maximum(ids, 0)], -1)
            return out

        return rank

    return {True: ranker(True), False: ranker(False)}


def evaluate(
    rank: Ranker,
    histories: Histories,
    test: pd.DataFrame,
    *,
    n_items: int,
    ks: Sequence[int] = KS,
    exclude_seen: bool = True,
    personal_cold: bool = False,
    max_warm: int = 2_000,
    max_cold: int = 2_000,
    random_state: int = 0,
    per_visitor: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Metrics of ``rank`` on the ``test`` window, for every target x segment x k.

    Args:
        histories: What was known before the window (warm visitors are those with a history).
        test: The window's events.
        n_items: The size of the catalogue ranked (for coverage).
        exclude_seen: Items a visitor touched before the window are not counted as relevant
            (the ranker is expected to leave them out too).
        personal_cold: Rank cold visitors one by one (the oracle knows them); serving gives
            every cold visitor the same list, so one row is ranked and shared.
        max_warm: Score a seeded sample of at most this many warm visitors (the same sample for
            every ranker on the same window): on a full-size shop, a week's visitors cost minutes
            per model for a digit of precision.
        max_cold: Likewise, a seeded sample of at most this many cold visitors.
        per_visitor: When given, filled with ``visitors`` (the warm visitors ranked),
            ``recommended`` (their ranked lists, (n_warm, max(ks))), ``ndcg_at_10`` (NaN
            where a visitor has nothing relevant) and ``hits_at_rank`` (at each rank, how many
            of them had a relevant item there): what noise bands, parity checks and the repeat
            curves need.

    Returns:
        ``{metric}_at_{k}`` for any interaction on warm visitors (the headline numbers), the same
        with ``_buy`` (carts and purchases), ``_cold`` and ``_buy_cold`` suffixes, plus
        ``coverage_at_10`` (share of the catalogue in warm visitors' top 10),
        ``mean_popularity_at_10`` (events before the window of a recommended item, on average),
        the visitor counts ``n_warm``, ``n_cold`` (ranked), and ``n_relevant{suffix}`` (ranked
        visitors with something relevant) and ``n_relevant_all{suffix}`` (its estimate over all
        the window's visitors, before sampling), per target and segment.
    """
    n = max(ks)
    visitors = np.unique(test["visitorid"].to_numpy())
    known = np.isin(visitors, histories.visitors)
    warm, cold = visitors[known], visitors[~known]
    population = {"": len(warm), "_cold": len(cold)}
    rng = np.random.default_rng(random_state)
    if len(warm) > max_warm:
        warm = np.sort(rng.choice(warm, max_warm, replace=False))
    if len(cold) > max_cold:
        cold = np.sort(rng.choice(cold, max_cold, replace=False))
    recs = {"": rank(warm, n)}
    cold_recs = rank(cold if personal_cold else cold[:1], n) if len(cold) else np.zeros((0, n))
    recs["_cold"] = cold_recs if personal_cold else np.tile(cold_recs, (len(cold), 1))
    segments = {"": warm, "_cold": cold}

    out: dict[str, float] = {"n_warm": float(len(warm)), "n_cold": float(len(cold))}
    kind = test["event"].astype("str").to_numpy()
    for target, types in TARGETS.items():
        sub = test[np.isin(kind, types)]
        for seg, ids in segments.items():
            relevant = _items_of(sub, ids)
            if exclude_seen and seg == "":
                relevant = [
                    np.setdiff1d(r, histories.seen(int(v)))
                    for r, v in zip(relevant, ids, strict=True)
                ]
            suffix = ("" if target == "any" else f"_{target}") + seg
            hits, n_rel = _hits(recs[seg], relevant, n)  # once; every metric and k reads it
            # Visitors with something relevant: in the sample, and estimated in the population
            # (what weighs the warm and cold segments into "all visitors").
            out[f"n_relevant{suffix}"] = float(len(n_rel))
            out[f"n_relevant_all{suffix}"] = len(n_rel) * population[seg] / max(len(ids), 1)
            for k in ks:
                for name, metric in _FROM_HITS.items():
                    out[f"{name}_at_{k}{suffix}"] = metric(hits, n_rel, k) if len(n_rel) else 0.0
            if per_visitor is not None and target == "any" and seg == "":
                per_visitor["visitors"] = warm
                per_visitor["recommended"] = recs[""]
                # NaN for visitors with nothing relevant: they are the rows _hits left out.
                ndcg = np.full(len(ids), np.nan)
                ndcg[[len(r) > 0 for r in relevant]] = _ndcg_rows(hits, n_rel, 10)
                per_visitor["ndcg_at_10"] = ndcg
                per_visitor["hits_at_rank"] = hits.sum(axis=0)
    top10 = recs[""][:, :10]
    shown = np.unique(top10[top10 >= 0])
    out["coverage_at_10"] = len(shown) / max(n_items, 1)
    out["mean_popularity_at_10"] = (
        float(histories.item_counts.reindex(top10[top10 >= 0].ravel()).fillna(0).mean())
        if (top10 >= 0).any()
        else 0.0
    )
    return out


def _items_of(events: pd.DataFrame, visitors: np.ndarray) -> list[np.ndarray]:
    """The distinct items of each of ``visitors`` (sorted ids) in ``events``: only the ranked
    sample's, where a groupby over a week's 72,000 visitors cost 1.6 s a target on the full shop
    (an evaluation reads two targets)."""
    vis = events["visitorid"].to_numpy(np.int64)
    at = np.minimum(np.searchsorted(visitors, vis), max(len(visitors) - 1, 0))
    mine = (visitors[at] == vis) if len(visitors) else np.zeros(len(vis), dtype=bool)
    pairs = np.unique(np.stack([at[mine], events["itemid"].to_numpy(np.int64)[mine]]), axis=1)
    bounds = np.searchsorted(pairs[0], np.arange(len(visitors) + 1))
    return [pairs[1, lo:hi] for lo, hi in itertools.pairwise(bounds)]


def noise_band(n: int) -> float:
    """How far apart two metrics in [0, 1] on ``n`` visitors can be by chance alone (about two
    standard errors: a per-visitor value has SD <= 0.5, so 2 * 0.5 / sqrt(n))."""
    return float(1.0 / np.sqrt(max(n, 1)))


def paired_band(a: np.ndarray, b: np.ndarray) -> float:
    """Two standard errors of the mean difference between two rankers' per-visitor values on the
    same visitors (NaN where a visitor has nothing relevant): the band within which the two are
    not told apart."""
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if len(d) < 2:
        return float("inf")
    return float(2.0 * d.std(ddof=1) / np.sqrt(len(d)))


def all_visitors(metrics: dict[str, float], name: str) -> float:
    """``name`` (e.g. ``ndcg_at_10`` or ``ndcg_at_10_buy``) over returning and new visitors
    together: the two segments' means weighed by how many visitors of each had something
    relevant in the window."""
    target = "_buy" if name.endswith("_buy") else ""
    w_warm = metrics.get(f"n_relevant_all{target}", 0.0)
    w_cold = metrics.get(f"n_relevant_all{target}_cold", 0.0)
    if w_warm + w_cold == 0:
        return 0.0
    return (metrics[name] * w_warm + metrics[f"{name}_cold"] * w_cold) / (w_warm + w_cold)


# --------------------------------------------------------------------------------------------
# Anonymous sessions: next-item prediction


def _in_sessions(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(session keys, item ids)`` of the events, each session's together and in time order (a
    pause over 30 minutes starts a new one)."""
    from retailrec.data_pipeline.feature_pipeline import session_numbers

    frame = events.assign(session=session_numbers(events)).sort_values(
        ["visitorid", "session", "timestamp"], kind="stable"
    )
    keys = frame["visitorid"].to_numpy(np.int64) * 100_000 + frame["session"].to_numpy()
    return keys, frame["itemid"].to_numpy(np.int64)


def _sessions(events: pd.DataFrame) -> list[np.ndarray]:
    """Each session's item ids in time order."""
    if events.empty:
        return []
    keys, items = _in_sessions(events)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return np.split(items, starts[1:])


def next_item_examples(
    window: pd.DataFrame, max_examples: int = 5_000, random_state: int = 0
) -> list[tuple[np.ndarray, int]]:
    """``(items viewed so far, the next item)`` for every step of every session in the window
    whose next item is new to the session (an item already in it cannot be recommended to it);
    a seeded sample of at most ``max_examples``."""
    out = []
    for items in _sessions(window):
        for i in range(1, len(items)):
            if items[i] not in items[:i]:
                out.append((items[:i], int(items[i])))
    if len(out) > max_examples:
        keep = np.sort(np.random.default_rng(random_state).choice(len(out), max_examples, False))
        out = [out[i] for i in keep]
    return out


#: Ranks items for an anonymous session (item ids, latest last): ``n`` item ids, -1 padded.
SessionRanker = Any


def session_hit_rate(rank: SessionRanker, examples: list[tuple[np.ndarray, int]], k: int) -> float:
    """Share of examples whose next item is in the top ``k``."""
    return session_scores(rank, examples, k)[0]


def session_scores(
    rank: SessionRanker, examples: list[tuple[np.ndarray, int]], k: int
) -> tuple[float, float]:
    """``(HitRate@k, MRR@k)``: the share of examples whose next item is in the top ``k``, and
    the mean of 1 / its rank there (0 where it is not)."""
    if not examples:
        return 0.0, 0.0
    reciprocal = np.zeros(len(examples))
    for e, (prefix, target) in enumerate(examples):
        at = np.flatnonzero(np.asarray(rank(prefix, k))[:k] == target)
        if len(at):
            reciprocal[e] = 1.0 / (at[0] + 1)
    return float(np.mean(reciprocal > 0)), float(np.mean(reciprocal))


def session_comparison(
    rankers: dict[str, SessionRanker], examples: list[tuple[np.ndarray, int]], k: int = 20
) -> dict[str, float]:
    """Each ranker's next-item HitRate@k (under its name) and MRR@k (``<name>_mrr``) on the
    same examples, and ``examples``, their number."""
    out = {"examples": float(len(examples))}
    for name, rank in rankers.items():
        out[name], out[f"{name}_mrr"] = session_scores(rank, examples, k)
    return out


def served_session_ranker(served: RecommendationService) -> SessionRanker:
    """As the API answers ``POST /v1/sessions/recommendations``."""
    rules = Rules(exclude_purchased=False)

    def rank(items: np.ndarray, n: int) -> np.ndarray:
        return np.asarray(served.for_session(items.tolist(), n, rules).items, dtype=np.int64)

    return rank


def sequence_ranker(served: RecommendationService) -> SessionRanker:
    """The served bundle's sequence model alone, the session's items and unavailable ones left
    out (popularity where it knows none of them)."""
    seq = served.bundle.sequence
    if seq is None:
        raise ValueError("the bundle has no sequence model")

    def rank(items: np.ndarray, n: int) -> np.ndarray:
        idx = served.bundle.item_index(np.asarray(items, dtype=np.int64))
        blocked = served.rules.unavailable.copy()
        blocked[idx[idx >= 0]] = True
        found = seq.recommend_one(seq.sequence_row(idx), n, blocked)[0]
        return np.asarray(served.bundle.item_ids[found], dtype=np.int64)

    return rank


def session_rankers(
    served_rank: SessionRanker, served: RecommendationService, before: pd.DataFrame
) -> dict[str, SessionRanker]:
    """What a session report compares: the served answers (``served_rank``: in process or
    through the API), the bundle's sequence model alone (where it has one), and sequential rules
    and session-kNN fitted on ``before``, the events before the window."""
    rankers = {"served": served_rank}
    if served.bundle.sequence is not None:
        rankers["sequence"] = sequence_ranker(served)
    rankers["sequential_rules"] = sequential_rules_ranker(before)
    rankers["session_knn"] = session_knn_ranker(before)
    return rankers


def session_knn_ranker(events: pd.DataFrame, k: int = 100) -> SessionRanker:
    """The session-kNN baseline of session-based recommendation (Jannach and Ludewig 2017):
    the ``k`` training sessions most like the current one (cosine of their item sets) vote for
    their items with their similarity; the session's own items are left out, popularity after.
    This variant looks at every past session that shares an item with the current one (the
    original samples the most recent)."""
    keys, items = _in_sessions(events)
    ids = np.unique(items)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    session = np.cumsum(np.r_[True, keys[1:] != keys[:-1]]) - 1
    matrix = sp.csr_matrix(
        (np.ones(len(items), np.float32), (session, np.searchsorted(ids, items))),
        shape=(len(starts), len(ids)),
    )
    matrix.data[:] = 1.0  # an item seen twice in a session counts once
    by_item = matrix.T.tocsr()
    sizes = np.asarray(matrix.sum(axis=1)).ravel()
    popular = pd.Series(events["itemid"].to_numpy()).value_counts().index.to_numpy(np.int64)

    def rank(current: np.ndarray, n: int) -> np.ndarray:
        distinct = np.unique(current)
        at = np.minimum(np.searchsorted(ids, distinct), max(len(ids) - 1, 0))
        known = at[ids[at] == distinct] if len(ids) else at[:0]
        picked: list[int] = []
        if len(known):
            # The sessions holding the current items, and how many of them each holds: counted
            # over those items' postings, not summed over every past session (1.3M on the full
            # shop: 8 ms an answer).
            near, overlap = np.unique(by_item[known].indices, return_counts=True)
            sim = overlap.astype(np.float32) / np.sqrt(sizes[near] * len(distinct))
            top = np.argsort(-sim, kind="stable")[:k]
            scores = np.asarray(matrix[near[top]].T @ sim[top]).ravel()
            scores[known] = 0.0
            found = np.flatnonzero(scores > 0)
            order = found[np.argsort(-scores[found], kind="stable")]
            picked = ids[order[:n]].tolist()
        if len(picked) < n:
            chosen = set(picked) | set(current.tolist())
            picked += [int(i) for i in popular[: n + len(chosen)] if i not in chosen]
        return np.array(picked[:n], dtype=np.int64)

    return rank


def sequential_rules_ranker(events: pd.DataFrame, max_steps: int = 10) -> SessionRanker:
    """The sequential-rules baseline of session-based recommendation (Ludewig and Jannach,
    2018): over the training sessions, item ``a`` followed ``s`` steps later by item ``b`` adds
    ``1/s`` to the rule ``a -> b`` (``s <= max_steps``); a session is ranked by the rules of its
    last item, its own items left out, popularity after them."""
    from retailrec.models.item_item import sequential_rules

    keys, items = _in_sessions(events)
    ids = np.unique(items)
    rules = sequential_rules(keys, np.searchsorted(ids, items), len(ids), max_steps)
    popular = pd.Series(events["itemid"].to_numpy()).value_counts().index.to_numpy(np.int64)

    def rank(items: np.ndarray, n: int) -> np.ndarray:
        at = np.searchsorted(ids, items[-1])
        picked: list[int] = []
        if at < len(ids) and ids[at] == items[-1]:
            row = rules.getrow(at)
            order = np.argsort(-row.data, kind="stable")
            picked = [int(i) for i in ids[row.indices[order]] if i not in items]
        picked = picked[:n]
        if len(picked) < n:
            chosen = set(picked) | set(items.tolist())
            picked += [int(i) for i in popular[: n + len(chosen)] if i not in chosen]
        return np.array(picked[:n], dtype=np.int64)

    return rank
