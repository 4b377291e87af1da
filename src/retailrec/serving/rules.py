"""The business rules of an answer: what a shop never wants recommended.

Per request (:class:`Rules`): no item the visitor bought (by default), none they have seen (when
asked), only one category, or none of a given list. Always: no unavailable item. The catalogue's
side (:class:`CatalogueRules`) is built once per served bundle and shared by every request.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from retailrec.errors import UnknownEntityError
from retailrec.models.bundle import ModelBundle


@dataclass
class Rules:
    """Per-request business rules."""

    exclude_purchased: bool = True
    exclude_seen: bool = False
    category: int | None = None
    exclude: Sequence[int] = ()


class CatalogueRules:
    """The rules' view of one bundle's catalogue: which items are unavailable, and each
    category's items."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = b = bundle
        self.unavailable = ~b.item_available.astype(bool)
        self.unavailable.flags.writeable = False  # shared by requests: they copy to add items
        self.by_category: dict[int, np.ndarray] = {
            int(c): np.flatnonzero(b.item_category == c)
            for c in np.unique(b.item_category)
            if c >= 0
        }
        self._scratch = threading.local()  # one mask per thread, see marked()

    def blocked(self, rules: Rules, seen: np.ndarray, purchased: np.ndarray) -> np.ndarray:
        """(n_items,) bool: True for items never to return under ``rules`` (unavailable,
        excluded, purchased or seen as asked, outside the category)."""
        extra = self._extra(rules, seen, purchased)
        if rules.category is not None:
            inside = self.by_category.get(int(rules.category))
            if inside is None:
                raise UnknownEntityError(f"unknown category {rules.category}")
            blocked = np.ones(self.bundle.n_items, dtype=bool)
            blocked[inside] = False
            blocked |= self.unavailable
        elif len(extra):
            blocked = self.unavailable.copy()
        else:
            return self.unavailable  # shared and never written: callers copy before adding
        blocked[extra] = True
        return blocked

    def _extra(self, rules: Rules, seen: np.ndarray, purchased: np.ndarray) -> np.ndarray:
        """The items ``rules`` block beyond the catalogue's own (bundle indices)."""
        parts = []  # only the request's own ids can be unknown (-1)
        if len(rules.exclude):
            excluded = self.bundle.item_index(np.asarray(rules.exclude, dtype=np.int64))
            parts.append(excluded[excluded >= 0])
        if rules.exclude_purchased and len(purchased):
            parts.append(purchased)
        if rules.exclude_seen and len(seen):
            parts.append(seen)
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([np.zeros(0, np.int64), *parts])

    @contextlib.contextmanager
    def blocking(
        self, rules: Rules, seen: np.ndarray, purchased: np.ndarray
    ) -> Iterator[np.ndarray]:
        """:meth:`blocked` for the length of a ``with`` block (see :meth:`marked`): the mask is
        not to be kept or written beyond it."""
        if rules.category is not None:
            yield self.blocked(rules, seen, purchased)
            return
        with self.marked(self.unavailable, self._extra(rules, seen, purchased)) as blocked:
            yield blocked

    @contextlib.contextmanager
    def marked(self, base: np.ndarray, items: np.ndarray) -> Iterator[np.ndarray]:
        """``base`` with ``items`` (bundle indices) blocked too, for the length of a ``with``
        block, without copying the catalogue where it can be helped.

        A copy of the catalogue's mask costs more than the rest of an answer's rules: 364 KB at
        the full shop's scale, written and then read back from memory, about 6% of a request's
        CPU under load (docs/BENCHMARKS.md). Instead each thread keeps one mask equal to
        :attr:`unavailable`, blocks a request's few items in it and clears them on the way out;
        ``marked`` calls nest (blocking more items inside a block, last out first). Any other
        ``base`` is copied, as before.
        """
        scratch = self._scratch
        if not len(items):
            yield base
            return
        mask = getattr(scratch, "mask", None)
        depth = getattr(scratch, "depth", 0)
        if base is self.unavailable and depth == 0:
            if mask is None:
                mask = scratch.mask = self.unavailable.copy()
            before = None  # what to put back: the catalogue's own values
        elif base is mask and depth > 0:
            before = mask[items]  # a nested block: put back what the outer one had
        else:
            copy = base.copy()
            copy[items] = True
            yield copy
            return
        mask[items] = True
        scratch.depth = depth + 1
        try:
            yield mask
        finally:
            mask[items] = self.unavailable[items] if before is None else before
            scratch.depth = depth
