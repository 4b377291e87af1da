"""Popularity baselines: global, recent window, and per category."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from retailrec.events import DAY_MS
from retailrec.models.base import TIE_BREAK, BaseRecommender, first_unblocked
from retailrec.models.data import Dataset


class PopularityRecommender(BaseRecommender):
    """Items ranked by how many events they had.

    Args:
        window_days: Count only events in the last ``window_days`` before the data's end
            (None: all of them). A recent window follows trends and new items.
        by_category: Rank within the visitor's categories first: an item scores its popularity
            plus the share of the visitor's history in its category, so a visitor who browses
            shoes sees popular shoes. With an empty history this is plain popularity.
    """

    def __init__(self, window_days: float | None = None, by_category: bool = False) -> None:
        super().__init__()
        self.window_days = window_days
        self.by_category = by_category
        self.name = (
            "popular"
            + (f"_{window_days:g}d" if window_days else "")
            + ("_category" if by_category else "")
        )
        self.popularity_ = np.zeros(0, dtype=np.float32)
        self.item_category_ = np.zeros(0, dtype=np.int64)
        self.known_ = np.zeros(0, dtype=bool)
        self.cat_index_ = np.zeros(0, dtype=np.int64)
        self.item_to_cat_ = sp.csr_matrix((0, 0), dtype=np.float32)

    def _fit(self, data: Dataset) -> None:
        ev = data.events
        if self.window_days:
            ev = ev[ev["timestamp"].to_numpy() > data.as_of_ms - self.window_days * DAY_MS]
        counts = np.bincount(ev["item"].to_numpy(), minlength=data.n_items).astype(np.float64)
        self.popularity_ = (np.log1p(counts) / max(np.log1p(counts).max(), 1e-9)).astype(np.float32)
        self.item_category_ = data.item_category.copy()
        # item -> category incidence, built once: scoring is then one sparse product per batch.
        known = self.item_category_ >= 0
        codes, self.cat_index_ = np.unique(self.item_category_[known], return_inverse=True)
        self.known_ = known
        self.item_to_cat_ = sp.csr_matrix(
            (np.ones(int(known.sum()), dtype=np.float32), (np.flatnonzero(known), self.cat_index_)),
            shape=(data.n_items, len(codes)),
        )

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        scores = np.tile(self.popularity_, (user_items.shape[0], 1))
        if not self.by_category:
            return scores
        binary = user_items.copy()
        binary.data[:] = 1.0
        share = np.asarray((binary @ self.item_to_cat_).todense(), dtype=np.float32)
        share /= np.maximum(share.sum(axis=1, keepdims=True), 1.0)
        scores[:, self.known_] += 2.0 * share[:, self.cat_index_]
        return scores

    # -- serving ------------------------------------------------------------------------------

    def prepare_serving(self) -> None:
        super().prepare_serving()
        self._serving("order")
        if self.by_category:
            self._serving("category_order")

    def _build_serving(self, key: str) -> Any:
        base = self.popularity_ + TIE_BREAK * self.prior_
        if key == "order":
            return np.argsort(-base, kind="stable")
        if key == "item_code":  # each item's category code (-1: none), over the whole catalogue
            code = np.full(len(self.known_), -1, dtype=np.int64)
            code[self.known_] = self.cat_index_
            return code
        if key == "category_order":
            # Items grouped by category, most popular first within each: inside a category the
            # scores differ only by popularity, so a category's best items head its list.
            code = self._serving("item_code")
            known = np.flatnonzero(code >= 0)
            order = known[np.lexsort((-base[known], code[known]))]
            cats = code[order]
            if not len(order):  # a shop without item properties: no category to order
                return {}
            bounds = np.flatnonzero(np.diff(cats)) + 1
            return dict(zip(np.unique(cats).tolist(), np.split(order, bounds), strict=True))
        return super()._build_serving(key)

    def _candidate_scores(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # The top n lies among the n most popular unblocked items overall and, for each category
        # in the history, the n most popular unblocked items of that category.
        parts = [first_unblocked(self._serving("order"), blocked, n)]
        codes = np.zeros(0, dtype=np.int64)
        boost = np.zeros(0, dtype=np.float32)
        if self.by_category:
            code = self._serving("item_code")
            cats = code[np.unique(row.indices)]
            cats = cats[cats >= 0]
            if len(cats):
                codes, counts = np.unique(cats, return_counts=True)
                boost = (2.0 * counts / len(cats)).astype(np.float32)
                by_cat = self._serving("category_order")
                parts += [first_unblocked(by_cat[int(c)], blocked, n) for c in codes]
        cand = np.unique(np.concatenate(parts))
        scores = self.popularity_[cand] + TIE_BREAK * self.prior_[cand]
        if len(codes):
            cand_cat = self._serving("item_code")[cand]
            pos = np.minimum(np.searchsorted(codes, cand_cat), len(codes) - 1)
            hit = codes[pos] == cand_cat
            scores[hit] += boost[pos[hit]]
        return cand, scores.astype(np.float32)
