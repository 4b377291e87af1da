"""The business rules of an answer: what a shop never wants recommended.

Per request (:class:`Rules`): no item the visitor bought (by default), none they have seen (when
asked), only one category, or none of a given list. Always: no unavailable item. The catalogue's
side (:class:`CatalogueRules`) is built once per served bundle and shared by every request.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def blocked(self, rules: Rules, seen: np.ndarray, purchased: np.ndarray) -> np.ndarray:
        """(n_items,) bool: True for items never to return under ``rules`` (unavailable,
        excluded, purchased or seen as asked, outside the category)."""
        parts = [self.bundle.item_index(np.asarray(rules.exclude, dtype=np.int64))]
        if rules.exclude_purchased:
            parts.append(purchased)
        if rules.exclude_seen:
            parts.append(seen)
        extra = np.concatenate(parts)
        extra = extra[extra >= 0]
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
