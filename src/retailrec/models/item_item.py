"""Item-to-item models: a sparse item x item matrix ``W``; a history scores ``history @ W``.

* :class:`ItemKNNRecommender`: implicit's cosine or BM25 neighbours over co-interactions.
* :class:`SessionRecommender`: co-occurrence within browsing sessions, for anonymous sessions.
* :class:`BoughtTogetherRecommender`: co-occurrence in baskets (``transactionid``) and carts.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

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
        sims = (row @ self.similarity_).tocsr()
        sims.sum_duplicates()
        fill = first_unblocked(self._serving("prior_order"), blocked, n)
        cand = np.union1d(sims.indices, fill)
        scores = TIE_BREAK * self.prior_[cand]
        scores[np.searchsorted(cand, sims.indices)] += sims.data
        return cand, scores.astype(np.float32)


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


def _cooccurrence(
    groups: np.ndarray, items: np.ndarray, n_items: int, max_group: int = 50
) -> sp.csr_matrix:
    """(n_items, n_items) number of groups in which two distinct items occur together."""
    frame = pd.DataFrame({"g": groups, "i": items}).drop_duplicates()
    size = frame.groupby("g")["i"].transform("size").to_numpy()
    frame = frame[(size > 1) & (size <= max_group)]
    if frame.empty:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    g_codes, g_index = np.unique(frame["g"].to_numpy(), return_inverse=True)
    incidence = sp.csr_matrix(
        (np.ones(len(frame), dtype=np.float32), (g_index, frame["i"].to_numpy())),
        shape=(len(g_codes), n_items),
    )
    co = (incidence.T @ incidence).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    return co


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
            raise ValueError(f"unknown similarity {similarity!r}: choose cosine or bm25")
        self.similarity = similarity
        self.k, self.k1, self.b = k, k1, b
        self.name = f"itemknn_{similarity}"

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"similarity": self.similarity, "k": self.k}
        if self.similarity == "bm25":
            out |= {"k1": self.k1, "b": self.b}
        return out

    def _fit(self, data: Dataset) -> None:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        model = (
            BM25Recommender(K=self.k, K1=self.k1, B=self.b, num_threads=0)
            if self.similarity == "bm25"
            else CosineRecommender(K=self.k, num_threads=0)
        )
        with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
            # implicit's BM25/TF-IDF weighting hands its own kNN a COO matrix and warns about it.
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(data.matrix, show_progress=False)
        self.similarity_ = sp.csr_matrix(model.similarity, dtype=np.float32)
        self.similarity_.setdiag(0)
        self.similarity_.eliminate_zeros()


class SessionRecommender(ItemItemRecommender):
    """Items that co-occur in browsing sessions (30-minute gaps), cosine-normalised.

    The model for anonymous visitors: a list of items just viewed is a history like any other,
    with later items weighted more (see :meth:`session_row`).
    """

    name = "session"

    def __init__(self, k: int = 100) -> None:
        super().__init__()
        self.k = k

    def params(self) -> dict[str, Any]:
        return {"k": self.k}

    def _fit(self, data: Dataset) -> None:
        ev = data.events
        groups = ev["user"].to_numpy(np.int64) * 100_000 + ev["session"].to_numpy(np.int64)
        co = _cooccurrence(groups, ev["item"].to_numpy(), data.n_items)
        counts = np.bincount(ev["item"].to_numpy(), minlength=data.n_items).astype(np.float32)
        norm = 1.0 / np.sqrt(np.maximum(counts, 1.0))
        co = sp.diags(norm) @ co @ sp.diags(norm)
        self.similarity_ = _top_k_rows(co.tocsr(), self.k)

    def session_row(self, items: np.ndarray) -> sp.csr_matrix:
        """A (1, n_items) history for items in viewing order: the latest weighs most."""
        items = np.asarray(items, dtype=np.int64)
        items = items[(items >= 0) & (items < self.n_items_)]
        weights = 0.7 ** np.arange(len(items))[::-1]
        row = np.zeros(len(items), dtype=np.int64)
        return sp.csr_matrix(
            (weights.astype(np.float32), (row, items)), shape=(1, self.n_items_)
        )  # duplicates are summed by scipy


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

    def params(self) -> dict[str, Any]:
        return {"cart_weight": self.cart_weight, "k": self.k}

    def _fit(self, data: Dataset) -> None:
        ev = data.events
        kind = ev["event"].astype("str").to_numpy()
        tx = ev[kind == "transaction"]
        baskets = _cooccurrence(
            tx["transactionid"].to_numpy(np.int64), tx["item"].to_numpy(), data.n_items
        )
        carts = ev[kind == "addtocart"]
        cart_groups = carts["user"].to_numpy(np.int64) * 100_000 + carts["session"].to_numpy(
            np.int64
        )
        carted = _cooccurrence(cart_groups, carts["item"].to_numpy(), data.n_items)
        self.similarity_ = _top_k_rows((baskets + self.cart_weight * carted).tocsr(), self.k)
