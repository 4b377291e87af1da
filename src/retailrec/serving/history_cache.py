"""Active visitors' histories, kept in the serving process between their requests.

An active visitor's history (up to :data:`~retailrec.serving.service.HISTORY_LIMIT` events) costs
more to read and to index than the rest of an answer. The cache keeps it, prepared for the served
bundle, beside the visitor's change counter in the store (``feature_store.store.visitor_version``):
each request looks the counter up (one key) and reuses the entry only while it is unchanged, so an
answer is the same as from a fresh read, whichever process or loader appended events.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

#: Histories shorter than this are read again each time: cheap, and they would crowd the cache.
MIN_EVENTS = 64
#: Entries kept (least recently used dropped first): at most 500 events of at most 20 bytes each
#: (see ``service.Prepared``), so under 20 MiB when full.
CAPACITY = 2048

T = TypeVar("T")


class HistoryCache(Generic[T]):
    """A bounded, thread-safe LRU map of visitor id to (version, entry)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, tuple[int, T]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, visitor_id: int, version: int) -> T | None:
        """The entry kept for the visitor at ``version``, or None (absent, or stale: dropped)."""
        with self._lock:
            found = self._entries.get(visitor_id)
            if found is None or found[0] != version:
                if found is not None:
                    del self._entries[visitor_id]
                self.misses += 1
                return None
            self._entries.move_to_end(visitor_id)
            self.hits += 1
            return found[1]

    def put(self, visitor_id: int, version: int, entry: T) -> None:
        with self._lock:
            self._entries[visitor_id] = (version, entry)
            self._entries.move_to_end(visitor_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
