"""The model bundle: everything the API serves, loadable without training data or retraining.

A bundle is a folder::

    bundle.json         metadata: champion model name and params, metrics, times, fingerprint
    catalogue.npz       item ids, categories, availability (the id mappings)
    retrieval.pkl       the personalised model (the champion of evaluation)
    similar.pkl         similar items (item-kNN)
    session.pkl         anonymous sessions
    bought_together.pkl baskets and carts
    popular.pkl         global popularity
    popular_7d.pkl      recent popularity
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retailrec.errors import BundleError
from retailrec.models.base import BaseRecommender
from retailrec.models.data import Dataset
from retailrec.models.item_item import SessionRecommender

ROLES = ("retrieval", "similar", "session", "bought_together", "popular", "popular_7d")


@dataclass
class ModelBundle:
    """The served models and the catalogue they index."""

    models: dict[str, BaseRecommender]
    item_ids: np.ndarray
    item_category: np.ndarray
    item_available: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    _sorted_ids: np.ndarray = field(init=False, repr=False)
    _sorted_pos: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        missing = [r for r in ROLES if r not in self.models]
        if missing:
            raise BundleError(f"bundle lacks model(s) {', '.join(missing)}")
        # A sorted copy for binary search: far cheaper per call than a hash-index lookup on the
        # few ids a request carries.
        self._sorted_pos = np.argsort(self.item_ids, kind="stable")
        self._sorted_ids = np.asarray(self.item_ids, dtype=np.int64)[self._sorted_pos]

    @classmethod
    def from_dataset(
        cls, models: dict[str, BaseRecommender], data: Dataset, metadata: dict[str, Any]
    ) -> ModelBundle:
        return cls(
            models,
            data.item_ids.copy(),
            data.item_category.copy(),
            data.item_available.copy(),
            metadata,
        )

    @property
    def session(self) -> SessionRecommender:
        """The session role's model, typed: it also turns items in viewing order into a row."""
        model = self.models["session"]
        if not isinstance(model, SessionRecommender):
            raise BundleError(
                f"the session role holds a {type(model).__name__}, not a session model"
            )
        return model

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        """Column indices of item ids, -1 for items the bundle does not know."""
        ids = np.asarray(item_ids, dtype=np.int64).ravel()
        if not len(self._sorted_ids) or not len(ids):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self._sorted_ids) - 1)
        return np.where(self._sorted_ids[at] == ids, self._sorted_pos[at], -1).astype(np.int64)

    def save(self, path: Path) -> Path:
        """Write the bundle folder (replacing one already there) and return it."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for role, model in self.models.items():
            model.save(tmp / f"{role}.pkl")
        np.savez(
            tmp / "catalogue.npz",
            item_ids=self.item_ids,
            item_category=self.item_category,
            item_available=self.item_available,
        )
        (tmp / "bundle.json").write_text(
            json.dumps(self.metadata, indent=2, sort_keys=True, default=str)
        )
        if path.exists():
            shutil.rmtree(path)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> ModelBundle:
        """Read a bundle folder.

        Raises:
            ValueError: the folder is not a complete bundle (a file missing or unreadable).
        """
        path = Path(path)
        try:
            metadata = json.loads((path / "bundle.json").read_text())
            with np.load(path / "catalogue.npz") as cat:
                item_ids, category, available = (
                    cat["item_ids"],
                    cat["item_category"],
                    cat["item_available"],
                )
            models = {role: BaseRecommender.load(path / f"{role}.pkl") for role in ROLES}
        except (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:
            raise BundleError(f"{path} is not a loadable model bundle: {exc}") from exc
        bundle = cls(models, item_ids, category, available, metadata)
        for role, model in models.items():
            if model.n_items_ != bundle.n_items:
                raise BundleError(
                    f"{path}: model {role} has {model.n_items_} items, catalogue {bundle.n_items}"
                )
        return bundle
