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
    popular_category.pkl popularity within the visitor's categories (a source of the ranker)
    sequence.pkl        the sequential session model, mixed into session answers, when
                        training fitted one
    ranker.pkl          the second stage (a learned ranker over the models' candidates), when
                        training chose one
"""

from __future__ import annotations

import hashlib
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
from retailrec.models.ranker import CandidateRanker
from retailrec.models.sequence import SequenceRecommender

ROLES = ("retrieval", "similar", "session", "bought_together", "popular", "popular_7d")
#: Roles a bundle holds when training fitted them (bundles made before them load without).
OPTIONAL_ROLES = ("popular_category", "sequence")


@dataclass
class ModelBundle:
    """The served models and the catalogue they index."""

    models: dict[str, BaseRecommender]
    item_ids: np.ndarray
    item_category: np.ndarray
    item_available: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The second stage over the models' candidates (None: the retrieval model's order).
    ranker: CandidateRanker | None = None
    #: (n_items, len(ranker.ITEM_FEATURES)) float32 as of the data's end: what the ranker reads.
    item_features: np.ndarray | None = None
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
    def sequence(self) -> SequenceRecommender | None:
        """The sequential session model, typed; None where the bundle has none."""
        model = self.models.get("sequence")
        if model is not None and not isinstance(model, SequenceRecommender):
            raise BundleError(f"the sequence role holds a {type(model).__name__}")
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
        if self.ranker is not None:
            self.ranker.save(tmp / "ranker.pkl")
        arrays = {
            "item_ids": self.item_ids,
            "item_category": self.item_category,
            "item_available": self.item_available,
        }
        if self.item_features is not None:
            arrays["item_features"] = self.item_features
        np.savez(tmp / "catalogue.npz", **arrays)  # type: ignore[arg-type]
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
                item_features = cat["item_features"] if "item_features" in cat.files else None
            models = {
                role: BaseRecommender.load(path / f"{role}.pkl")
                for role in (*ROLES, *OPTIONAL_ROLES)
                if role in ROLES or (path / f"{role}.pkl").is_file()
            }
            ranker = CandidateRanker.load(path / "ranker.pkl") if metadata.get("ranker") else None
        except (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:
            raise BundleError(f"{path} is not a loadable model bundle: {exc}") from exc
        bundle = cls(models, item_ids, category, available, metadata, ranker, item_features)
        if ranker is not None and (item_features is None or len(item_features) != bundle.n_items):
            raise BundleError(f"{path}: the ranker's item features do not match the catalogue")
        if ranker is not None and "popular_category" not in models:
            raise BundleError(f"{path}: the ranker's popularity-in-category source is missing")
        if bundle.session.sequence_weight > 0 and bundle.sequence is None:
            raise BundleError(f"{path}: the session blend mixes in a sequence model it lacks")
        for role, model in models.items():
            if model.n_items_ != bundle.n_items:
                raise BundleError(
                    f"{path}: model {role} has {model.n_items_} items, catalogue {bundle.n_items}"
                )
        return bundle


def folder_digest(bundle_dir: Path) -> str:
    """SHA-256 over a bundle folder's files: each relative path, then its bytes, in path order.
    Recorded at registration; a bundle whose files give another is never loaded."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(bundle_dir).rglob("*") if p.is_file()):
        h.update(path.relative_to(bundle_dir).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()
