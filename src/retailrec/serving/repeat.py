"""Repeat interest: a returning visitor's own items, placed among the new ones by evidence.

Shoppers come back to items they viewed. When a request allows seen items
(``exclude_seen=false``, the API's default), the answer is two ranked lists merged:

* the **new** items: exactly the answer with ``exclude_seen=true`` (personalised, then session,
  then popular);
* the **seen** items ("continue shopping"): the visitor's own items the rules allow, ordered by
  the confidence that training weighs histories with (event weights and recency half-life, at
  the shop's clock).

Each list's positions carry a probability measured on the validation window through the serving
path (:func:`fit_curves`): ``new[r]``, that the ``r``-th new item is touched in the window, and
``seen[j]``, that the ``j``-th seen item is touched again. Both are over the same visitors (the
returning visitors of the window), so they compare; the merge takes whichever list's next item is
likelier, which for two lists ranked by falling probability is the order of the largest expected
hits at every cut-off. On a shop whose visitors rarely come back to an item, the seen items sink
below the new ones; on one where they do, "continue shopping" leads. The scores of a merged
answer are these probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Positions measured: both curves are read flat past their end.
DEPTH = 20
#: The prior's weight, in visitors: a position seen by few visitors leans on the curve's mean.
PRIOR_VISITORS = 10.0


@dataclass(frozen=True)
class RepeatCurves:
    """The two position curves (each non-increasing, :data:`DEPTH` long) and their evidence."""

    seen: np.ndarray
    new: np.ndarray
    visitors: int
    # Both curves as Python floats, made once: a merge runs on every answer.
    _seen: list[float] = field(init=False, repr=False, compare=False)
    _new: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_seen", np.asarray(self.seen, dtype=np.float64).tolist())
        object.__setattr__(self, "_new", np.asarray(self.new, dtype=np.float64).tolist())

    def to_metadata(self) -> dict[str, Any]:
        return {
            "seen": [round(float(v), 6) for v in self.seen],
            "new": [round(float(v), 6) for v in self.new],
            "visitors": int(self.visitors),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any] | None) -> RepeatCurves | None:
        """The curves a bundle or a tag carries; None where there are none (the seen items are
        then left to the retrieval model, as before curves existed)."""
        if not meta or not meta.get("seen") or not meta.get("new"):
            return None
        return cls(
            np.asarray(meta["seen"], dtype=np.float64),
            np.asarray(meta["new"], dtype=np.float64),
            int(meta.get("visitors", 0)),
        )

    def merge(
        self, new: Sequence[int], seen: Sequence[int], k: int
    ) -> tuple[list[int], list[float], int]:
        """The top ``k`` of the two lists (item ids, best first) by their positions' probability,
        ties to the new item: ``(items, probabilities, how many seen items were placed)``."""
        p_new, p_seen = self._new, self._seen
        last_new, last_seen = len(p_new) - 1, len(p_seen) - 1
        n_new, n_seen = len(new), len(seen)
        items: list[int] = []
        scores: list[float] = []
        i = j = 0
        for _ in range(min(k, n_new + n_seen)):
            if j < n_seen and (i == n_new or p_seen[min(j, last_seen)] > p_new[min(i, last_new)]):
                items.append(int(seen[j]))
                scores.append(p_seen[min(j, last_seen)])
                j += 1
            else:
                items.append(int(new[i]))
                scores.append(p_new[min(i, last_new)])
                i += 1
        return items, scores, j


def position_curve(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A non-increasing probability per position from ``hits`` out of ``counts`` at each:
    each position shrunk towards the pooled rate by :data:`PRIOR_VISITORS`, then the closest
    non-increasing sequence (pool adjacent violators, weighed by evidence)."""
    hits = np.asarray(hits, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    pooled = hits.sum() / counts.sum() if counts.sum() else 0.0
    rate = (hits + PRIOR_VISITORS * pooled) / (counts + PRIOR_VISITORS)
    return _non_increasing(rate, counts + PRIOR_VISITORS)


def _non_increasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares fit of a non-increasing sequence (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([v, w, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.repeat([b[0] for b in blocks], [int(b[2]) for b in blocks])
