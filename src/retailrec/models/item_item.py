"""Item-to-item models: a sparse item x item matrix ``W``; a history scores ``history @ W``.

* :class:`ItemKNNRecommender`: implicit's cosine or BM25 neighbours over co-interactions.
* :class:`SessionRecommender`: co-occurrence within browsing sessions, for anonymous sessions.
* :class:`BoughtTogetherRecommender`: co-occurrence in baskets (``transactionid``) and carts.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.errors import BundleError, UsageError
from retailrec.models.base import TIE_BREAK, BaseRecommender, first_unblocked
from retailrec.models.data import Dataset


class ItemItemRecommender(BaseRecommender):
    """Scores a history by summing the similarity rows of its items."""

    def __init__(self) -> None:
        super().__init__()
        self.similarity_ = sp.csr_matrix((0, 0), dtype=np.float32)

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray((user_items @ self.similarity_).todense(), dtype=np.float32)

    def _candidate_scores(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # Items with no similarity to the history score only their tie-break, so the top n lies
        # among the history's neighbours and the n most popular unblocked items.
        near, sums = row_product(row.indices, row.data, self.similarity_)
        fill = first_unblocked(self._serving("prior_order"), blocked, n)
        cand = np.union1d(near, fill)
        scores = TIE_BREAK * self.prior_[cand]
        scores[np.searchsorted(cand, near)] += sums
        return cand, scores.astype(np.float32)


def row_product(
    indices: np.ndarray, weights: np.ndarray, matrix: sp.csr_matrix
) -> tuple[np.ndarray, np.ndarray]:
    """A short history row (``indices``, ``weights``) times the CSR ``matrix``: the columns it
    reaches (sorted) and their sums, as ``row @ matrix`` gives them, in its dtype and order of
    addition (each of the row's entries in turn), without building scipy matrices: a serving
    answer's matrix product went from about 0.3 ms of scipy's set-up to a few gathers."""
    starts = matrix.indptr[indices]
    lengths = matrix.indptr[indices + 1] - starts
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=matrix.dtype)
    ends = np.cumsum(lengths)
    at = np.arange(total) + np.repeat(starts - (ends - lengths), lengths)
    products = matrix.data[at] * np.repeat(weights.astype(matrix.dtype), lengths)
    columns, where = np.unique(matrix.indices[at], return_inverse=True)
    sums = np.zeros(len(columns), dtype=matrix.dtype)
    np.add.at(sums, where, products)  # in order, in the matrix's dtype: as scipy's product
    return columns.astype(np.int64), sums


def _top_k_rows(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row (bounded memory, less noise)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.eliminate_zeros()
    counts = np.diff(matrix.indptr)
    if counts.max(initial=0) <= k:
        return matrix
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    order = np.lexsort((-matrix.data, rows))
    rank = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], counts)
    keep = order[rank < k]
    return sp.csr_matrix(
        (matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape
    )


class ItemKNNRecommender(ItemItemRecommender):
    """implicit's item-kNN (``cosine`` or ``bm25``) on the visitor x item confidences.

    Args:
        similarity: ``cosine`` or ``bm25``.
        k: Neighbours kept per item.
    """

    def __init__(
        self, similarity: str = "bm25", k: int = 100, k1: float = 1.2, b: float = 0.75
    ) -> None:
        super().__init__()
        if similarity not in ("cosine", "bm25"):
            raise UsageError(f"unknown similarity {similarity!r}: choose cosine or bm25")
        self.similarity = similarity
        self.k, self.k1, self.b = k, k1, b
        self.name = f"itemknn_{similarity}"

    def _fit(self, data: Dataset) -> None:
        self.similarity_ = knn_similarity(data.matrix, self.k, self.similarity, self.k1, self.b)


def knn_similarity(
    matrix: sp.spmatrix, k: int, similarity: str = "bm25", k1: float = 1.2, b: float = 0.75
) -> sp.csr_matrix:
    """implicit's item-kNN similarity (what its ``BM25Recommender`` or ``CosineRecommender``
    fitted on the visitor x item ``matrix`` holds), as float32 CSR without self-pairs.

    The same function computes it (implicit's ``all_pairs_knn`` on the same weighting), in about
    half the memory: ``all_pairs_knn`` returns ``n_items x k`` entries, most of them zero on a
    long tail (29M of 36M on the full shop), and implicit's own ``fit`` turns all of them into a
    float64 CSR beside it, which we then copied to float32: 1.5 GB for a 56 MB result there.
    Here the zeros are dropped first (docs/BENCHMARKS.md, "Whole pipeline")."""
    from implicit.nearest_neighbours import all_pairs_knn, bm25_weight, normalize

    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # implicit's weighting hands its own kNN a COO matrix and warns about it.
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        weighted = (bm25_weight(matrix.T, k1, b) if similarity == "bm25" else normalize(matrix.T)).T
        pairs = all_pairs_knn(weighted, k, show_progress=False, num_threads=0)
    del weighted
    keep = (pairs.data != 0) & (pairs.row != pairs.col)
    rows, cols = pairs.row[keep], pairs.col[keep]
    values = pairs.data[keep].astype(np.float32)
    del pairs, keep
    n = matrix.shape[1]
    return sp.csr_matrix((values, (rows, cols)), shape=(n, n))


class SessionRecommender(ItemItemRecommender):
    """The model for anonymous sessions (and for visitors whose history the retrieval model
    cannot use): a list of items just viewed is a history like any other.

    Three signals, blended (see :meth:`blend`):

    * sequential rules (Ludewig and Jannach 2018): item ``a`` followed ``s`` steps later in a
      browsing session (30-minute gaps) by ``b`` adds ``1/s`` to ``a -> b`` (``s <= max_steps``),
      each item's rules normalised to sum to 1: what people look at *next*;
    * co-occurrence in sessions, cosine-normalised and scaled to at most 1 per item, weighted by
      ``cooc_weight``: what belongs together, whatever the order;
    * popularity (``prior_``, at most 1), weighted by ``pop_weight``: where the session says
      little, the items most people look at.

    A session's row weighs its latest item 1 and each earlier one ``decay`` times the next
    (:meth:`session_row`). ``sequence_weight`` is the share of the sequence model (the bundle's
    ``sequence`` role, :mod:`retailrec.models.sequence`) in the served session answer, which the
    service mixes in (``RecommendationService.session_items``); this model only carries it, as
    part of the session blend. Training chooses ``decay``, ``cooc_weight``, ``pop_weight`` and
    ``sequence_weight`` on the validation window's sessions
    (``retailrec.training.train.tune_session``).
    """

    name = "session"

    def __init__(
        self,
        k: int = 100,
        max_steps: int = 10,
        decay: float = 0.4,
        cooc_weight: float = 0.01,
        pop_weight: float = 0.0,
        sequence_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.k, self.max_steps = k, max_steps
        self.decay, self.cooc_weight, self.pop_weight = decay, cooc_weight, pop_weight
        self.sequence_weight = sequence_weight
        self._parts: tuple[sp.csr_matrix, sp.csr_matrix] | None = None

    def _fit(self, data: Dataset) -> None:
        ev = data.events.sort_values(["user", "session", "timestamp"], kind="stable")
        groups = ev["user"].to_numpy(np.int64) * 100_000 + ev["session"].to_numpy(np.int64)
        items = ev["item"].to_numpy(np.int64)
        n = data.n_items
        rules = sequential_rules(groups, items, n, self.max_steps)
        rules = _scale_rows(rules, np.asarray(rules.sum(axis=1)).ravel())
        co = fp.cooccurrence(groups, items, n)
        counts = np.bincount(items, minlength=n).astype(np.float32)
        norm = 1.0 / np.sqrt(np.maximum(counts, 1.0))
        co = (sp.diags(norm) @ co @ sp.diags(norm)).tocsr()
        co = _scale_rows(co, np.asarray(co.max(axis=1).todense()).ravel())
        self._parts = (rules, co)
        self.blend(self.decay, self.cooc_weight, self.pop_weight, self.sequence_weight)

    def blend(
        self, decay: float, cooc_weight: float, pop_weight: float, sequence_weight: float = 0.0
    ) -> SessionRecommender:
        """Set the blend without refitting (the fitted signals are kept until :meth:`save`)."""
        if self._parts is None:
            raise BundleError("the session model's signals are gone after saving: refit it")
        self.decay, self.cooc_weight, self.pop_weight = decay, cooc_weight, pop_weight
        self.sequence_weight = sequence_weight
        rules, co = self._parts
        # Training tries many blends with few co-occurrence weights: each weight's matrix is
        # kept with the signals (training only), not rebuilt for every decay and popularity.
        kept = self.__dict__.setdefault("_blended", {})
        if cooc_weight not in kept:
            kept[cooc_weight] = _top_k_rows((rules + cooc_weight * co).tocsr(), self.k)
        self.similarity_ = kept[cooc_weight]
        self.__dict__.pop("_serving_cache", None)
        return self

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        return super().score(user_items) + self.pop_weight * self.prior_[None, :]

    def _candidate_scores(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # Popularity adds to every item alike, so the top n still lies among the history's
        # neighbours and the n most popular unblocked items.
        cand, scores = super()._candidate_scores(row, n, blocked)
        return cand, scores + (self.pop_weight * self.prior_[cand]).astype(np.float32)

    def session_row(self, items: np.ndarray) -> sp.csr_matrix:
        """A (1, n_items) history for items in viewing order: the latest weighs 1, each earlier
        one ``decay`` times the next. An item the model does not know (index -1) keeps its
        place: it weighs nothing, and the items before it weigh as much as they would after a
        known one."""
        items = np.asarray(items, dtype=np.int64)
        weights = self.decay ** np.arange(len(items))[::-1]
        known = (items >= 0) & (items < self.n_items_)
        items, weights = items[known], weights[known].astype(np.float32)
        columns, where = np.unique(items, return_inverse=True)
        summed = np.zeros(len(columns), dtype=np.float32)
        np.add.at(summed, where, weights)  # a repeated item's weights add up, in order
        indptr = np.array([0, len(columns)], dtype=np.int32)
        return sp.csr_matrix(
            (summed, columns.astype(np.int32), indptr), shape=(1, self.n_items_), copy=False
        )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_parts"] = None  # what blend() mixes: for training only, never in a bundle
        state.pop("_blended", None)
        return state


def sequential_rules(
    groups: np.ndarray, items: np.ndarray, n_items: int, max_steps: int = 10
) -> sp.csr_matrix:
    """(n_items, n_items) sequential rules (Ludewig and Jannach 2018): in each group (a session),
    item ``a`` followed ``s`` steps later by ``b`` adds ``1/s`` to ``a -> b``, for
    ``s <= max_steps``; an item's rules to itself are left out.

    Args:
        groups: (n_events,) session keys, the events of a session together and in time order.
        items: (n_events,) item indices.
    """
    src, dst, w = [], [], []
    for step in range(1, max_steps + 1):
        same = groups[step:] == groups[:-step]
        src.append(items[:-step][same])
        dst.append(items[step:][same])
        w.append(np.full(int(same.sum()), 1.0 / step, dtype=np.float32))
    rules = sp.csr_matrix(
        (np.concatenate(w), (np.concatenate(src), np.concatenate(dst))), shape=(n_items, n_items)
    )
    rules.setdiag(0)
    rules.eliminate_zeros()
    return rules


def _scale_rows(matrix: sp.csr_matrix, by: np.ndarray) -> sp.csr_matrix:
    """Each row divided by ``by`` (rows where it is 0 left as they are)."""
    by = np.where(by > 0, by, 1.0).astype(np.float32)
    return (sp.diags(1.0 / by) @ matrix).tocsr().astype(np.float32)


class BoughtTogetherRecommender(ItemItemRecommender):
    """Items bought in the same basket (``transactionid``), or carted in the same session.

    Args:
        cart_weight: How much a shared cart session counts against a shared basket.
    """

    name = "bought_together"

    def __init__(self, cart_weight: float = 0.5, k: int = 100) -> None:
        super().__init__()
        self.cart_weight = cart_weight
        self.k = k

    def _fit(self, data: Dataset) -> None:
        ev = data.events
        kind = ev["event"].astype("str").to_numpy()
        tx = ev[kind == "transaction"]
        baskets = fp.cooccurrence(
            tx["transactionid"].to_numpy(np.int64), tx["item"].to_numpy(), data.n_items
        )
        carts = ev[kind == "addtocart"]
        cart_groups = carts["user"].to_numpy(np.int64) * 100_000 + carts["session"].to_numpy(
            np.int64
        )
        carted = fp.cooccurrence(cart_groups, carts["item"].to_numpy(), data.n_items)
        self.similarity_ = _top_k_rows((baskets + self.cart_weight * carted).tocsr(), self.k)
