"""The recommender service: answers from a loaded bundle, with fallbacks and business rules.

Kept free of FastAPI so that any caller gets the same answers. Every function returns item ids,
scores and the strategy that served them; the chain falls back until ``k`` items are found, so an
answer is never empty while the (filtered) catalogue is not:

    personalized (retrieval model on fresh history) -> session (recent items) -> popular
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.errors import BundleError, UnknownEntityError
from retailrec.events import DAY_MS, TRANSACTION
from retailrec.feature_store import store
from retailrec.models import ranker
from retailrec.models.base import SIGNAL_FLOOR
from retailrec.models.bundle import ModelBundle
from retailrec.serving import history_cache
from retailrec.serving.history_cache import HistoryCache
from retailrec.serving.repeat import RepeatCurves
from retailrec.serving.rules import CatalogueRules, Rules

HISTORY_LIMIT = 500
#: The depth of each model's list in a session answer that mixes two (see ``session_items``).
SESSION_DEPTH = 50
#: Retrieval models that ignore the history: for them "personalized" would be a false label.
NON_PERSONAL = ("popular", "popular_7d")


@dataclass(frozen=True)
class Prepared:
    """A visitor's history in one bundle's item space: all an answer needs of it but the clock
    (see :meth:`RecommendationService.prepare`). Compact, as the service keeps many: at most
    20 bytes an event (16 a distinct item, 4 a purchase)."""

    cols: np.ndarray  # int32, read-only: the distinct known items, sorted (the row's columns)
    decayed: np.ndarray  # float64, per col: the item's confidence as of newest_ms
    #: int32: ``cols`` by confidence, highest first (ties: the lower index). One factor brings
    #: every confidence to the clock, so this order holds at any clock.
    by_confidence: np.ndarray
    purchased: np.ndarray  # int32: the known items bought
    recent: np.ndarray  # the last 20 events' items, in order (-1: unknown to the bundle)
    newest_ms: int  # the newest event's time, known item or not (0: no events)
    n_events: int


@dataclass
class Answer:
    items: list[int]
    scores: list[float]
    strategy: str


@dataclass
class RecommendationService:
    """Answers recommendation requests from one loaded bundle: the fallback chain, the business
    rules and the visitor's history from the store, the same for the API, the dashboard and
    evaluation."""

    bundle: ModelBundle
    version: str
    loaded_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    #: Active visitors' prepared histories; it goes with the bundle, whose item space it is in.
    histories: HistoryCache[Prepared] = field(default_factory=HistoryCache)

    def __post_init__(self) -> None:
        b = self.bundle
        self.rules = CatalogueRules(b)
        default = fp.FeatureConfig()
        #: The weights and half-life the bundle was trained with: histories are weighed alike.
        self.config = fp.FeatureConfig(
            event_weights=dict(b.metadata.get("event_weights") or default.event_weights),
            recency_half_life_days=float(
                b.metadata.get("recency_half_life_days", default.recency_half_life_days)
            ),
        )
        self.personal = b.metadata.get("model") not in NON_PERSONAL
        #: Where seen items go in an answer that allows them (see :mod:`.repeat`); None for a
        #: bundle that no window measured, whose retrieval model then ranks them with the rest.
        self.repeat = RepeatCurves.from_metadata(b.metadata.get("repeat"))
        #: The empty history row; never written (rows made from it get arrays of their own).
        self._empty = _one_row(np.zeros(0, np.int64), np.zeros(0), b.n_items)
        for part in (self._empty.data, self._empty.indices, self._empty.indptr):
            part.flags.writeable = False
        first = next(iter(b.models.values()))
        for model in b.models.values():
            model.share_popularity(first)
            model.prepare_serving()
        if b.ranker is not None:
            b.ranker.prepare_serving()

    # -- building blocks ------------------------------------------------------------------------

    def prepare(self, history: store.History) -> Prepared:
        """The history in the bundle's item space: everything an answer needs of it but the
        clock."""
        idx = self.bundle.item_index(history.itemid)
        known = idx >= 0
        cols, inverse = np.unique(idx[known], return_inverse=True)
        cols = cols.astype(np.int32)
        cols.flags.writeable = False  # the rows made from a kept history share it
        n = len(idx)
        newest_ms = int(history.timestamp[-1]) if n else 0
        conf = self.config.confidence(
            history.event_code[known], history.timestamp[known], newest_ms
        )
        decayed = np.bincount(inverse.ravel(), weights=conf, minlength=len(cols))
        return Prepared(
            cols=cols,
            decayed=decayed,
            by_confidence=cols[np.argsort(-decayed, kind="stable")],
            purchased=idx[known & (history.event_code == TRANSACTION)].astype(np.int32),
            recent=idx[-20:].copy(),  # not a view: it would keep all of idx alive
            newest_ms=newest_ms,
            n_events=n,
        )

    def history_row(self, history: store.History | Prepared, now_ms: int) -> sp.csr_matrix:
        """The visitor's confidences at the shop's time ``now_ms``, in the bundle's item space:
        the same confidence function, weights and half-life that built the training matrix.

        The history is never weighed behind itself: a clock before its newest event counts as
        that event's time. The confidences as of then (:meth:`prepare`) are brought to the
        clock with one factor, :func:`retailrec.events.decay` of the time since, rather than
        weighing every event again."""
        p = history if isinstance(history, Prepared) else self.prepare(history)
        factor = self.config.decay(max(int(now_ms), p.newest_ms) - p.newest_ms)
        return self._row(p.cols, (p.decayed * factor).astype(np.float32))

    def _row(self, cols: np.ndarray, data: np.ndarray) -> sp.csr_matrix:
        """A (1, n_items) CSR row from distinct, sorted int32 ``cols`` and float32 ``data``,
        without the constructor's checks (a fifth of its time, on the hot path): a shallow copy
        of an empty row of the right shape, given the three public arrays."""
        row = copy.copy(self._empty)
        row.data, row.indices = data, cols
        row.indptr = np.array([0, len(cols)], dtype=np.int32)
        return row

    def _take(
        self, role: str, row: sp.csr_matrix, k: int, blocked: np.ndarray, have: list[int]
    ) -> tuple[list[int], list[float]]:
        with self.rules.marked(blocked, np.asarray(have, dtype=np.int64)) as without:
            items, scores = self.bundle.models[role].recommend_one(row, k, without)
        # A model with nothing to say falls back to popularity; only real signal (above the
        # tie-break) counts for the item-to-item roles.
        if role in ("session", "similar", "bought_together"):
            keep = scores > SIGNAL_FLOOR
            items, scores = items[keep], scores[keep]
        return items.tolist(), scores.tolist()

    def _fill(
        self, answer: Answer, k: int, blocked: np.ndarray, role: str = "popular_7d"
    ) -> Answer:
        """Top up with popular items (recent first, then all-time) until ``k`` or none are left."""
        for r in (role, "popular"):
            if len(answer.items) >= k:
                break
            idx = self.bundle.item_index(np.asarray(answer.items, dtype=np.int64))
            items, scores = self._take(r, self._empty, k - len(answer.items), blocked, idx.tolist())
            answer.items += self.bundle.item_ids[items].tolist()
            answer.scores += scores
            if not answer.strategy:
                answer.strategy = "popular"
        answer.strategy = answer.strategy or "popular"
        return answer

    def _ids(self, items: list[int]) -> list[int]:
        ids: list[int] = self.bundle.item_ids[np.asarray(items, dtype=np.int64)].tolist()
        return ids

    # -- endpoints ------------------------------------------------------------------------------

    def for_visitor(
        self,
        conn: store.Connection,
        visitor_id: int,
        k: int,
        rules: Rules,
        now_ms: int | None = None,
    ) -> Answer:
        """Personalised from the visitor's fresh history in the store, weighed at the shop's
        clock (``now_ms`` overrides it), then session-seeded, then popular.

        An active visitor's history is kept between requests while their change counter in the
        store stands still (:mod:`retailrec.serving.history_cache`): the counter is read before
        the history, so a kept history is never older than the counter beside it."""
        version, clock = store.visitor_version(conn, visitor_id)
        prepared = self.histories.get(visitor_id, version)
        if prepared is None:
            prepared = self.prepare(store.visitor_history(conn, visitor_id, limit=HISTORY_LIMIT))
            if prepared.n_events >= history_cache.MIN_EVENTS:
                self.histories.put(visitor_id, version, prepared)
        return self.for_history(prepared, k, rules, clock if now_ms is None else now_ms)

    def for_history(
        self, history: store.History | Prepared, k: int, rules: Rules, now_ms: int | None
    ) -> Answer:
        """:meth:`for_visitor` on a history already read (its last :data:`HISTORY_LIMIT` events,
        oldest first), at the shop's time ``now_ms``: what the API and evaluation both call.

        Where the rules allow seen items and the bundle carries repeat curves, the answer is the
        new items' answer (as with ``exclude_seen``) merged with the visitor's own items by
        :meth:`RepeatCurves.merge`."""
        p = history if isinstance(history, Prepared) else self.prepare(history)
        now = max(int(now_ms or 0), p.newest_ms)  # never behind the history it weighs
        row = self.history_row(p, now)
        with self.rules.blocking(rules, p.cols, p.purchased) as blocked:
            if self.repeat is None or rules.exclude_seen or not row.nnz:
                return self._new_items(p, row, k, blocked, now)
            seen = self.seen_items(p, blocked, k)
            with self.rules.marked(blocked, p.cols) as new_only:
                answer = self._new_items(p, row, k, new_only, now)
        items, scores, placed = self.repeat.merge(answer.items, self._ids(seen.tolist()), k)
        return Answer(items, scores, "personalized" if placed else answer.strategy)

    def seen_items(self, p: Prepared, blocked: np.ndarray, n: int) -> np.ndarray:
        """The visitor's first ``n`` own items (bundle indices) that ``blocked`` leaves, by their
        confidence in the history, highest first at any clock (ties: the lower index)."""
        ordered = p.by_confidence
        out: np.ndarray = ordered[~blocked[ordered]][:n].astype(np.int64)
        return out

    def candidates(
        self, p: Prepared, row: sp.csr_matrix, blocked: np.ndarray, now_ms: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first stage of a two-stage answer: the union of each source's top items (bundle
        indices, none of ``blocked``) and their features (rows of ``ranker.FEATURES``), what
        training, evaluation and serving all rank. ``row`` is the history at ``now_ms``."""
        b = self.bundle
        if b.item_features is None:
            raise BundleError("this bundle has no item features: it cannot rank candidates")
        rows = {
            "retrieval": row,
            "similar": row,
            "session": b.session.session_row(p.recent),
            "popular_category": row,
            "popular_7d": self._empty,
        }
        found = []
        for s in ranker.SOURCES:
            if s == "session" and b.session.sequence_weight > 0:  # the sequence model mixed in
                mixed = self.session_items(p.recent, ranker.DEPTH[s], blocked, [])
                found.append((np.asarray(mixed[0], np.int64), np.asarray(mixed[1], np.float32)))
            else:
                found.append(b.models[s].recommend_one(rows[s], ranker.DEPTH[s], blocked))
        items = np.unique(np.concatenate([f[0] for f in found]))
        n_src = len(ranker.SOURCES)
        feats = np.full((len(items), len(ranker.FEATURES)), np.nan, dtype=np.float32)
        for j, (got, scores) in enumerate(found):
            at = np.searchsorted(items, got)
            feats[at, j] = scores
            feats[at, n_src + j] = np.arange(1, len(got) + 1)
        n_item = len(ranker.ITEM_FEATURES)
        feats[:, 2 * n_src : 2 * n_src + n_item] = b.item_features[items]
        # The visitor, and their affinity to each candidate's category.
        cats = b.item_category[row.indices]
        weights = row.data.astype(np.float64)
        cand_cats = b.item_category[items]
        affinity = np.zeros(len(items))
        if len(cats) and weights.sum() > 0:
            known, inverse = np.unique(cats, return_inverse=True)
            per_cat = np.bincount(inverse, weights=weights) / weights.sum()
            at = np.minimum(np.searchsorted(known, cand_cats), len(known) - 1)
            affinity = np.where((known[at] == cand_cats) & (cand_cats >= 0), per_cat[at], 0.0)
        feats[:, 2 * n_src + n_item :] = np.column_stack(
            [
                np.full(len(items), p.n_events),
                np.full(len(items), len(p.cols)),
                np.full(len(items), (now_ms - p.newest_ms) / DAY_MS),
                affinity,
            ]
        )
        return items, feats

    def _ranked(
        self, p: Prepared, row: sp.csr_matrix, k: int, blocked: np.ndarray, now_ms: int
    ) -> Answer:
        """The two-stage answer: the candidates ordered by the ranker (ties: the lower index)."""
        items, feats = self.candidates(p, row, blocked, now_ms)
        if not len(items) or self.bundle.ranker is None:
            return Answer([], [], "")
        scores = self.bundle.ranker.predict(feats)
        top = np.argsort(-scores, kind="stable")[:k]
        return Answer(self._ids(items[top].tolist()), scores[top].tolist(), "personalized")

    def _new_items(
        self, p: Prepared, row: sp.csr_matrix, k: int, blocked: np.ndarray, now_ms: int
    ) -> Answer:
        """Personalised from ``row`` (two-stage, with a ranker in the bundle), then
        session-seeded, then popular, none of ``blocked``."""
        answer = Answer([], [], "")
        if row.nnz and self.bundle.ranker is not None:
            answer = self._ranked(p, row, k, blocked, now_ms)
        elif row.nnz and self.personal:
            items, scores = self._take("retrieval", row, k, blocked, [])
            if items:
                answer = Answer(self._ids(items), scores, "personalized")
        if len(answer.items) < k and row.nnz:
            have = self.bundle.item_index(np.asarray(answer.items, dtype=np.int64)).tolist()
            items, scores = self.session_items(p.recent, k - len(answer.items), blocked, have)
            answer.items += self._ids(items)
            answer.scores += scores
            answer.strategy = answer.strategy or ("session" if items else "")
        return self._fill(answer, k, blocked)

    def for_session(self, item_ids: Sequence[int], k: int, rules: Rules) -> Answer:
        """An anonymous session: items just viewed, latest last."""
        idx = self.bundle.item_index(np.asarray(item_ids, dtype=np.int64))
        known = idx[idx >= 0]
        blocked = self.rules.blocked(rules, known, np.zeros(0, dtype=np.int64))
        answer = Answer([], [], "")
        if len(known):  # unknown items keep their place in the session (see session_row)
            items, scores = self.session_items(idx, k, blocked, known.tolist())
            if items:
                answer = Answer(self._ids(items), scores, "session")
        return self._fill(answer, k, blocked)

    def session_items(
        self, recent: np.ndarray, k: int, blocked: np.ndarray, have: list[int]
    ) -> tuple[list[int], list[float]]:
        """The session model's top ``k`` for items in viewing order (bundle indices, -1 for
        unknown ones), none of ``blocked`` or ``have``.

        Where the session blend gives the sequence model a share ``w``, the answer mixes the top
        :data:`SESSION_DEPTH` of both models: ``(1 - w)`` times the session model's score over
        its best, plus ``w`` times ``exp(sequence score - the best)`` (both at most 1; an item
        the session model did not propose has 0 from it)."""
        b = self.bundle
        row = b.session.session_row(recent)
        w = b.session.sequence_weight
        seq = b.sequence
        seq_row = seq.sequence_row(recent) if seq is not None and w > 0 else None
        if seq is None or seq_row is None or not seq_row.nnz:
            return self._take("session", row, k, blocked, have)
        depth = max(k, SESSION_DEPTH)
        s_items, s_scores = self._take("session", row, depth, blocked, have)
        with self.rules.marked(blocked, np.asarray(have, dtype=np.int64)) as without:
            items, logits = seq.top_and_scores(seq_row, depth, without, np.asarray(s_items))
        mixed = w * np.exp(logits - logits.max())
        if s_items:
            s = np.asarray(s_scores, dtype=np.float64)
            mixed[np.searchsorted(items, s_items)] += (1.0 - w) * s / s.max()
        top = np.argsort(-mixed, kind="stable")[:k]
        return items[top].tolist(), mixed[top].tolist()

    def for_item(self, item_id: int, k: int, role: str) -> Answer:
        """Similar items (``role="similar"``) or bought together (``role="bought_together"``)."""
        idx = self.bundle.item_index(np.asarray([item_id]))
        if idx[0] < 0:
            raise UnknownEntityError(f"unknown item {item_id}")
        with self.rules.marked(self.rules.unavailable, idx) as blocked:
            return self._for_item(idx, k, role, blocked)

    def _for_item(self, idx: np.ndarray, k: int, role: str, blocked: np.ndarray) -> Answer:
        one = _one_row(idx, np.ones(1), self.bundle.n_items)
        answer = Answer([], [], "")
        roles = (role, "similar") if role == "bought_together" else (role,)
        for r in roles:
            have = self.bundle.item_index(np.asarray(answer.items, dtype=np.int64)).tolist()
            items, scores = self._take(r, one, k - len(answer.items), blocked, have)
            answer.items += self._ids(items)
            answer.scores += scores
            answer.strategy = answer.strategy or ("similar" if items else "")
            if len(answer.items) >= k:
                break
        # Then popular items of the same category, then anything popular.
        cat = int(self.bundle.item_category[idx[0]])
        if len(answer.items) < k and cat in self.rules.by_category:
            in_cat = Rules(category=cat)
            answer = self._fill(
                answer,
                k,
                blocked | self.rules.blocked(in_cat, np.zeros(0, np.int64), np.zeros(0, np.int64)),
            )
        return self._fill(answer, k, blocked)

    def popular(
        self, conn: store.Connection, k: int, category: int | None, days: int | None
    ) -> Answer:
        """Most popular items overall or in the last ``days`` days of the log (not of the clock)."""
        blocked = self.rules.blocked(
            Rules(exclude_purchased=False, category=category),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
        if days is None:
            return self._fill(Answer([], [], "popular"), k, blocked, role="popular")
        end = store.shop_clock(conn) or 0
        counts = store.item_counts_since(conn, end - days * DAY_MS)
        idx = self.bundle.item_index(counts.index.to_numpy())
        ok = idx >= 0
        ok[ok] = ~blocked[idx[ok]]
        ranked = pd.Series(counts.to_numpy()[ok], index=idx[ok]).sort_values(
            ascending=False, kind="stable"
        )
        top = ranked.head(k)
        answer = Answer(
            self._ids(top.index.tolist()), [float(v) for v in top.to_numpy()], "popular"
        )
        return self._fill(answer, k, blocked, role="popular")


def _one_row(items: np.ndarray, values: np.ndarray, n_items: int) -> sp.csr_matrix:
    """A (1, n_items) CSR row, repeated items summed; built directly, as the hot path needs."""
    cols, inverse = np.unique(items, return_inverse=True)
    data = np.bincount(inverse, weights=values, minlength=len(cols)).astype(np.float32)
    return sp.csr_matrix(
        (data, cols.astype(np.int32), np.array([0, len(cols)], dtype=np.int32)),
        shape=(1, n_items),
    )
