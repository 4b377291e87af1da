"""One contract for every model, after implicit's ``RecommenderBase``.

A model is fitted on a :class:`~retailrec.models.data.Dataset` and then ranks the catalogue for
*histories*: rows of visitor x item confidences. Scoring from a history, not from a visitor id
learned at fit time, is what lets the API answer from fresh events (a new cart changes the next
answer) and lets an anonymous session be scored like anyone else.

Every model also knows the training popularity of each item: it breaks ties, and an empty
history (a cold visitor) gets the popular items, whatever the model.
"""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import scipy.sparse as sp

from retailrec.models.data import Dataset

T = TypeVar("T")

#: Scores held at once (rows x items): about 200 MB of float32 whatever the catalogue size.
BATCH_CELLS = 50_000_000
#: Scores add TIE_BREAK x an item's popularity share (at most 1): equal scores rank the more
#: popular item first, and a score above SIGNAL_FLOOR says more than the tie-break alone.
TIE_BREAK = 1e-6
SIGNAL_FLOOR = TIE_BREAK


@runtime_checkable
class Recommender(Protocol):
    """What the trainer, the evaluator and the API rely on."""

    name: str

    def fit(self, data: Dataset) -> Recommender: ...

    def recommend(
        self,
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        filter_already_liked_items: bool = True,
        filter_items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: Path) -> None: ...


class BaseRecommender:
    """Shared machinery: popularity tie-break, batching, filtering, top-n, save and load.

    Subclasses implement :meth:`_fit` and :meth:`score`.
    """

    name = "base"

    def __init__(self) -> None:
        self.n_items_ = 0
        self.prior_: np.ndarray = np.zeros(0, dtype=np.float32)

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, data: Dataset) -> BaseRecommender:
        """Fit on ``data``; returns self."""
        self.n_items_ = data.n_items
        pop = data.item_popularity()
        self.prior_ = (pop / max(pop.max(), 1.0)).astype(np.float32)
        self._fit(data)
        return self

    def _fit(self, data: Dataset) -> None:
        raise NotImplementedError

    #: Constructor arguments that do not change what the model learns: not logged.
    NOT_PARAMS: ClassVar[tuple[str, ...]] = ("random_state", "device")

    def params(self) -> dict[str, Any]:
        """The hyper-parameters, as logged to MLflow: the constructor's arguments (less
        :data:`NOT_PARAMS`), read back from the attributes of the same names, so that a new
        argument is logged without a second list to keep in step."""
        names = inspect.signature(type(self).__init__).parameters
        return {n: getattr(self, n) for n in names if n != "self" and n not in self.NOT_PARAMS}

    # -- scoring ------------------------------------------------------------------------------

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        """(n_rows, n_items) float32 scores for histories ``user_items``; higher is better."""
        raise NotImplementedError

    def recommend(
        self,
        user_items: sp.csr_matrix,
        n: int = 10,
        *,
        filter_already_liked_items: bool = True,
        filter_items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` item indices for each history row.

        Args:
            user_items: (n_rows, n_items) CSR confidences, one history per row.
            filter_already_liked_items: Leave out the items in each row's history.
            filter_items: Item indices never to recommend (e.g. unavailable items).

        Returns:
            ``(items, scores)``, both (n_rows, n); where fewer than ``n`` items qualify the rest is
            padded with item -1 and score -inf.
        """
        user_items = sp.csr_matrix(user_items, dtype=np.float32)
        n_rows = user_items.shape[0]
        n = int(min(n, self.n_items_)) if self.n_items_ else 0
        out_items = np.full((n_rows, n), -1, dtype=np.int64)
        out_scores = np.full((n_rows, n), -np.inf, dtype=np.float32)
        if n == 0:
            return out_items, out_scores
        batch = max(1, min(512, BATCH_CELLS // max(self.n_items_, 1)))
        for start in range(0, n_rows, batch):
            rows = user_items[start : start + batch]
            scores = np.asarray(self.score(rows), dtype=np.float32)
            scores += TIE_BREAK * self.prior_[None, :]
            cold = np.diff(rows.indptr) == 0
            if cold.any():  # no history: the popular items, whatever the model
                scores[cold] = self.prior_[None, :]
            if filter_already_liked_items:
                r, c = rows.nonzero()
                scores[r, c] = -np.inf
            if filter_items is not None and len(filter_items):
                scores[:, np.asarray(filter_items, dtype=np.int64)] = -np.inf
            top = _top_n(scores, n)
            top_scores = np.take_along_axis(scores, top, axis=1)
            top[~np.isfinite(top_scores)] = -1
            out_items[start : start + len(top)] = top
            out_scores[start : start + len(top)] = top_scores
        return out_items, out_scores

    # -- serving: one row at a time -----------------------------------------------------------

    def recommend_one(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The API's hot path: the top ``n`` items for one history row.

        Ranks exactly as ``recommend(row, n, filter_already_liked_items=False,
        filter_items=np.flatnonzero(blocked))``, without its padding: fewer than ``n`` items come
        back only when fewer are left. Models that can find their top items among a few candidates
        (popularity, item-to-item) override :meth:`_candidate_scores`; the others score the whole
        catalogue.

        Args:
            row: a (1, n_items) history.
            blocked: (n_items,) bool, True for items never to return.
        """
        if not (sp.isspmatrix_csr(row) and row.dtype == np.float32):
            row = sp.csr_matrix(row, dtype=np.float32)
        n = int(min(n, self.n_items_))
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if row.nnz == 0:  # cold: the popular items, as in recommend()
            items = first_unblocked(self._serving("prior_order"), blocked, n)
            return items, self.prior_[items]
        found = self._candidate_scores(row, n, blocked)
        if found is None:  # the whole catalogue, as recommend() scores it, less its padding
            items, scores = self.recommend(
                row, n, filter_already_liked_items=False, filter_items=np.flatnonzero(blocked)
            )
            keep = items[0] >= 0
            return items[0][keep], scores[0][keep]
        cand, scores = found
        ok = ~blocked[cand]
        cand, scores = cand[ok], scores[ok]
        order = np.argsort(-scores, kind="stable")[:n]
        return cand[order], scores[order]

    def _candidate_scores(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Candidate items that surely hold the top ``n`` unblocked ones, with their full scores
        (tie-break included); None to score the whole catalogue."""
        return None

    def prepare_serving(self) -> None:
        """Build what the serving path walks (orderings), so that no request pays for it."""
        self._serving("prior_order")

    def share_popularity(self, other: BaseRecommender) -> bool:
        """Hold ``other``'s popularity array, and its serving order, where they equal this
        model's own, as they do for every model fitted on one dataset: one copy then serves a
        whole bundle (the API's resident memory fell by 17 MiB on the full shop). Returns
        whether they are shared."""
        if self.prior_ is not other.prior_ and np.array_equal(self.prior_, other.prior_):
            self.prior_ = other.prior_
            self.__dict__.setdefault("_serving_cache", {})["prior_order"] = other._serving(
                "prior_order"
            )
        return self.prior_ is other.prior_

    def _serving(self, key: str) -> Any:
        cache: dict[str, Any] = self.__dict__.setdefault("_serving_cache", {})
        if key not in cache:
            cache[key] = self._build_serving(key)
        return cache[key]

    def _build_serving(self, key: str) -> Any:
        if key == "prior_order":
            return np.argsort(-self.prior_, kind="stable")
        if key == "tie_break":  # every item's, in index order, to add to a whole row of scores
            return (TIE_BREAK * self.prior_).astype(np.float32)
        raise KeyError(key)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_serving_cache", None)  # derived after loading; never stored in a bundle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a bundle's model; a hyper-parameter added since the bundle was written takes
        its constructor default, so that an upgrade still serves the champion it finds."""
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and name not in state and param.default is not param.empty:
                state[name] = param.default
        self.__dict__.update(state)

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Items most like each of ``items`` (indices): the ranking for a one-item history."""
        items = np.asarray(items, dtype=np.int64)
        one_hot = sp.csr_matrix(
            (np.ones(len(items), dtype=np.float32), (np.arange(len(items)), items)),
            shape=(len(items), self.n_items_),
        )
        return self.recommend(one_hot, n, filter_already_liked_items=True)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the fitted model to one file (pickle: load only files you wrote)."""
        save_pickle(self, path)

    @classmethod
    def load(cls, path: Path) -> BaseRecommender:
        return load_pickle(path, BaseRecommender)


def save_pickle(obj: object, path: Path) -> None:
    """Pickle ``obj`` to ``path`` (its folder made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def load_pickle(path: Path, kind: type[T]) -> T:
    """The ``kind`` that :func:`save_pickle` wrote (pickle: load only files you wrote).

    Raises:
        TypeError: the file holds something else.
    """
    with Path(path).open("rb") as fh:
        found = pickle.load(fh)
    if not isinstance(found, kind):
        raise TypeError(f"{path} does not hold a RetailRec model (a {kind.__name__})")
    return found


#: Arrays this large get memory that numpy allocates itself (see :func:`in_huge_pages`).
HUGE_PAGE_BYTES = 4 << 20


def in_huge_pages(array: np.ndarray) -> np.ndarray:
    """``array`` in memory that numpy allocated: a copy, where an unpickled array of at least
    :data:`HUGE_PAGE_BYTES` still lives in the pickle's buffer.

    numpy asks the kernel for transparent huge pages for its own large allocations
    (``madvise``), and an answer's random reads of item vectors then miss the TLB far less: on
    the full shop an ALS answer for an active visitor took 12% less CPU (docs/BENCHMARKS.md).
    The copy replaces the original, which is freed if nothing else holds it.
    """
    if array.flags.owndata or array.nbytes < HUGE_PAGE_BYTES:
        return array
    return np.array(array, copy=True)


def first_unblocked(order: np.ndarray, blocked: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` entries of ``order`` (item indices, best first) that are not blocked."""
    m = 4 * n + 64
    while True:
        head = order[:m]
        ok: np.ndarray = head[~blocked[head]]
        if len(ok) >= n or m >= len(order):
            return ok[:n]
        m *= 8


def _top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """(n_rows, n) column indices of the largest scores per row, best first."""
    if n >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")[:, :n]
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
