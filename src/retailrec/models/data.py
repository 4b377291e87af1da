"""The data every model fits on: interactions indexed into a sparse visitor x item matrix.

Models work on internal indices (rows and columns); :class:`Dataset` maps the shop's visitor and
item ids to them and back. The catalogue fixed at fit time is what a model can recommend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retailrec.data_pipeline import feature_pipeline as fp


@dataclass
class Dataset:
    """Training data for the models.

    Attributes:
        user_ids: (n_users,) visitor ids; row ``u`` of ``matrix`` is ``user_ids[u]``.
        item_ids: (n_items,) item ids; column ``i`` of ``matrix`` is ``item_ids[i]``.
        matrix: (n_users, n_items) CSR float32 implicit-feedback confidences.
        item_category: (n_items,) category id, -1 where unknown.
        item_available: (n_items,) False for items known to be unavailable.
        events: the events the matrix was built from, with ``user`` and ``item`` index columns
            and a per-visitor ``session`` number; sorted by time.
        as_of_ms: the time the confidences decay towards (the shop's clock at the end of the
            training data).
        config: the event weights and recency half-life the confidences were built with; a
            model that weighs histories itself (the two-tower) uses the same.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    matrix: sp.csr_matrix
    item_category: np.ndarray
    item_available: np.ndarray
    events: pd.DataFrame
    as_of_ms: int
    config: fp.FeatureConfig = field(default_factory=fp.FeatureConfig)
    _user_pos: pd.Index = field(init=False, repr=False)
    _item_pos: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._user_pos = pd.Index(self.user_ids)
        self._item_pos = pd.Index(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, visitor_ids: np.ndarray) -> np.ndarray:
        """Row indices of visitors, -1 for visitors not in the data."""
        return np.asarray(self._user_pos.get_indexer(np.asarray(visitor_ids)), dtype=np.int64)

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        """Column indices of items, -1 for items not in the catalogue."""
        return np.asarray(self._item_pos.get_indexer(np.asarray(item_ids)), dtype=np.int64)

    def item_popularity(self) -> np.ndarray:
        """(n_items,) number of events per item in the training data."""
        return np.bincount(self.events["item"].to_numpy(), minlength=self.n_items).astype(
            np.float64
        )

    @classmethod
    def from_events(
        cls,
        events: pd.DataFrame,
        catalogue: pd.DataFrame | None = None,
        *,
        as_of_ms: int | None = None,
        config: fp.FeatureConfig | None = None,
    ) -> Dataset:
        """Index ``events`` (Retailrocket columns) up to ``as_of_ms`` into a dataset.

        Args:
            catalogue: ``itemid, categoryid, available``; items in it without events are part of
                the catalogue too (they can be recommended by content-aware models).
            as_of_ms: Default: the last event's time.
        """
        config = config or fp.FeatureConfig()
        if as_of_ms is None:
            as_of_ms = int(events["timestamp"].max())
        ev = events[events["timestamp"].to_numpy() <= as_of_ms]
        ev = ev.sort_values(["timestamp", "visitorid", "itemid"], kind="stable").reset_index(
            drop=True
        )
        item_ids = np.unique(ev["itemid"].to_numpy())
        if catalogue is not None and len(catalogue):
            item_ids = np.union1d(item_ids, catalogue["itemid"].to_numpy())
        user_ids = np.unique(ev["visitorid"].to_numpy())
        inter = fp.interactions(ev, as_of_ms, config)
        rows = np.searchsorted(user_ids, inter["visitorid"].to_numpy())
        cols = np.searchsorted(item_ids, inter["itemid"].to_numpy())
        matrix = sp.csr_matrix(
            (inter["confidence"].to_numpy(np.float32), (rows, cols)),
            shape=(len(user_ids), len(item_ids)),
        )
        category = np.full(len(item_ids), -1, dtype=np.int64)
        available = np.ones(len(item_ids), dtype=bool)
        if catalogue is not None and len(catalogue):
            pos = np.searchsorted(item_ids, catalogue["itemid"].to_numpy())
            cat = catalogue["categoryid"].astype("Int64")
            category[pos] = cat.fillna(-1).to_numpy(np.int64)
            avail = catalogue["available"].astype("boolean")
            available[pos] = avail.fillna(True).to_numpy(bool)
        indexed = ev.assign(
            user=np.searchsorted(user_ids, ev["visitorid"].to_numpy()),
            item=np.searchsorted(item_ids, ev["itemid"].to_numpy()),
            session=fp.session_numbers(ev, config.session_gap_ms),
        )
        return cls(user_ids, item_ids, matrix, category, available, indexed, int(as_of_ms), config)

    def with_history(
        self, events: pd.DataFrame, as_of_ms: int, config: fp.FeatureConfig | None = None
    ) -> Dataset:
        """The same catalogue (and so the same fitted models) with histories from ``events``.

        Evaluating the test week with histories up to its start, while the models stay fitted on
        the training data only: items first seen later are unknown to them, as they would be in
        production until the next training run.
        """
        config = config or fp.FeatureConfig()
        ev = events[events["timestamp"].to_numpy() <= as_of_ms]
        cols = self.item_index(ev["itemid"].to_numpy())
        ev = ev[cols >= 0].sort_values(["timestamp", "visitorid", "itemid"], kind="stable")
        ev = ev.reset_index(drop=True)
        user_ids = np.unique(ev["visitorid"].to_numpy())
        inter = fp.interactions(ev, as_of_ms, config)
        matrix = sp.csr_matrix(
            (
                inter["confidence"].to_numpy(np.float32),
                (
                    np.searchsorted(user_ids, inter["visitorid"].to_numpy()),
                    self.item_index(inter["itemid"].to_numpy()),
                ),
            ),
            shape=(len(user_ids), self.n_items),
        )
        indexed = ev.assign(
            user=np.searchsorted(user_ids, ev["visitorid"].to_numpy()),
            item=self.item_index(ev["itemid"].to_numpy()),
            session=fp.session_numbers(ev, config.session_gap_ms),
        )
        return Dataset(
            user_ids,
            self.item_ids,
            matrix,
            self.item_category,
            self.item_available,
            indexed,
            int(as_of_ms),
            config,
        )
