"""The oracle: ranks items for a synthetic visitor by their true preference.

It reads the generator's ``truth/`` folder, which no model may read, and scores every item of the
catalogue with the probability that the visitor's next view lands on it at a given time:

    P(i | visitor, t) = [(1 - eps) * taste(cat(i)) + eps * mix(cat(i))] * P(i | cat(i), week(t))

Evaluation reports a model's metrics beside the oracle's: the oracle is the best ranking that the
data allows, so the gap says how much a model has left to learn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Oracle:
    """True-preference scorer for data made by :mod:`retailrec.synthetic.synth`.

    Attributes:
        item_ids: (n_items,) public item ids, the columns of every score matrix.
        item_leaf: (n_items,) index of each item's category in ``category_ids``.
        category_ids: (L,) public ids of the categories that hold items.
        mix: (L,) the shop-wide category mix; ``drift_mix`` the one after ``drift_start_ms``.
        item_week_prob: (n_weeks, n_items) P(item | its category, week).
        taste: visitor id -> (leaf indices, weights).
    """

    item_ids: np.ndarray
    item_leaf: np.ndarray
    category_ids: np.ndarray
    mix: np.ndarray
    drift_mix: np.ndarray
    item_week_prob: np.ndarray
    visitor_ptr: pd.Series
    taste_leaf: np.ndarray
    taste_weight: np.ndarray
    start_ms: int
    week_ms: int
    epsilon: float
    drift_epsilon: float
    drift_start_ms: int | None
    #: :meth:`_rank_in_category` by week, computed when first asked for.
    _ranks: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, truth_dir: Path) -> Oracle:
        """Read ``truth/`` as written by :func:`retailrec.synthetic.synth.write`."""
        truth_dir = Path(truth_dir)
        params = json.loads((truth_dir / "params.json").read_text())
        items = pd.read_parquet(truth_dir / "items.parquet")
        cats = pd.read_parquet(truth_dir / "categories.parquet")
        visitors = pd.read_parquet(truth_dir / "visitors.parquet")
        category_ids = cats["categoryid"].to_numpy()
        leaf_of = pd.Series(np.arange(len(category_ids)), index=category_ids)
        visitors = visitors.sort_values("visitorid", kind="stable")
        vids = visitors["visitorid"].to_numpy()
        starts = np.flatnonzero(np.r_[True, vids[1:] != vids[:-1]])
        ptr = pd.Series(
            list(zip(starts, np.r_[starts[1:], len(vids)], strict=True)), index=vids[starts]
        )
        return cls(
            item_ids=items["itemid"].to_numpy(),
            item_leaf=leaf_of.loc[items["categoryid"].to_numpy()].to_numpy(),
            category_ids=category_ids,
            mix=cats["mix"].to_numpy(),
            drift_mix=cats["drift_mix"].to_numpy(),
            item_week_prob=np.load(truth_dir / "item_week_prob.npy"),
            visitor_ptr=ptr,
            taste_leaf=leaf_of.loc[visitors["categoryid"].to_numpy()].to_numpy(),
            taste_weight=visitors["weight"].to_numpy(),
            start_ms=int(params["start_ms"]),
            week_ms=int(params["week_ms"]),
            epsilon=float(params["epsilon"]),
            drift_epsilon=float(params["drift_epsilon"]),
            drift_start_ms=params["drift_start_ms"],
        )

    def _week(self, as_of_ms: int) -> int:
        week = (int(as_of_ms) - self.start_ms) // self.week_ms
        return int(np.clip(week, 0, len(self.item_week_prob) - 1))

    def category_preference(self, visitor_ids: np.ndarray, as_of_ms: int) -> np.ndarray:
        """(n_visitors, L) probability that a visitor's next session browses each category."""
        drifting = self.drift_start_ms is not None and as_of_ms >= self.drift_start_ms
        eps = self.drift_epsilon if drifting else self.epsilon
        mix = self.drift_mix if drifting else self.mix
        out = np.tile(eps * mix, (len(visitor_ids), 1))
        for row, vid in enumerate(np.asarray(visitor_ids)):
            lo, hi = self.visitor_ptr.get(int(vid), (0, 0))
            np.add.at(out[row], self.taste_leaf[lo:hi], (1 - eps) * self.taste_weight[lo:hi])
        return out

    def scores(self, visitor_ids: np.ndarray, as_of_ms: int) -> np.ndarray:
        """(n_visitors, n_items) true probability of each item being the next view, at ``as_of_ms``.

        Items not yet introduced at that time score 0. Columns follow ``item_ids``.
        """
        pref = self.category_preference(np.asarray(visitor_ids), as_of_ms).astype(np.float32)
        week = self.item_week_prob[self._week(as_of_ms)].astype(np.float32)
        out: np.ndarray = pref[:, self.item_leaf] * week[None, :]
        return out

    def recommend(
        self,
        visitor_ids: np.ndarray,
        k: int,
        as_of_ms: int,
        exclude: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """(n_visitors, k) item ids in order of true preference, skipping each row's ``exclude``.

        Within a category every visitor orders items alike (by ``P(i | cat, week)``), so a row's
        top ``k`` after ``e`` exclusions lies within each category's ``k + e`` first items: only
        those are scored (about 21,000 of the full shop's 364,345 items for ``k = 20``), with the
        values :meth:`scores` gives them.
        """
        visitor_ids = np.asarray(visitor_ids)
        col = pd.Index(self.item_ids)
        blocked = [col.get_indexer(np.asarray(items)) for items in exclude or []]
        blocked = [at[at >= 0] for at in blocked]
        depth = k + max((len(b) for b in blocked), default=0)
        cand = np.flatnonzero(self._rank_in_category(as_of_ms) < depth)
        pref = self.category_preference(visitor_ids, as_of_ms).astype(np.float32)
        week = self.item_week_prob[self._week(as_of_ms)].astype(np.float32)
        s = pref[:, self.item_leaf[cand]] * week[cand][None, :]
        for row, items in enumerate(blocked):
            at = np.minimum(np.searchsorted(cand, items), len(cand) - 1)
            s[row, at[cand[at] == items]] = -np.inf
        k = min(k, s.shape[1])
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # the top k, then only those sorted
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        ids: np.ndarray = self.item_ids[cand[np.take_along_axis(part, order, axis=1)]]
        return ids

    def _rank_in_category(self, as_of_ms: int) -> np.ndarray:
        """(n_items,) each item's place in its category by ``P(i | cat, week)``, 0 the likeliest."""
        week = self._week(as_of_ms)
        cache = self._ranks
        if week not in cache:
            order = np.lexsort((-self.item_week_prob[week], self.item_leaf))
            leaf = self.item_leaf[order]
            first = np.searchsorted(leaf, leaf)  # where each item's category starts
            ranks = np.empty(len(order), dtype=np.int64)
            ranks[order] = np.arange(len(order)) - first
            cache[week] = ranks
        return cache[week]
