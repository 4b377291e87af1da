"""Recommendation models behind one contract (:class:`~retailrec.models.base.Recommender`).

``make_model(name, **params)`` builds any of them by name. Importing this package imports neither
implicit nor torch: each model imports what it needs when it fits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retailrec.errors import UsageError
from retailrec.models.base import BaseRecommender, Recommender
from retailrec.models.data import Dataset
from retailrec.models.ease import EASERecommender
from retailrec.models.factors import ALSRecommender, BPRRecommender
from retailrec.models.item_item import (
    BoughtTogetherRecommender,
    ItemKNNRecommender,
    SessionRecommender,
)
from retailrec.models.popularity import PopularityRecommender
from retailrec.models.sequence import SequenceRecommender
from retailrec.models.two_tower import TwoTowerRecommender

MODELS: dict[str, Callable[..., BaseRecommender]] = {
    "popular": lambda **kw: PopularityRecommender(**kw),
    "popular_7d": lambda **kw: PopularityRecommender(**{"window_days": 7, **kw}),
    "popular_category": lambda **kw: PopularityRecommender(**{"by_category": True, **kw}),
    "itemknn_cosine": lambda **kw: ItemKNNRecommender(**{"similarity": "cosine", **kw}),
    "itemknn_bm25": lambda **kw: ItemKNNRecommender(**{"similarity": "bm25", **kw}),
    "ease": lambda **kw: EASERecommender(**kw),
    "als": lambda **kw: ALSRecommender(**kw),
    "bpr": lambda **kw: BPRRecommender(**kw),
    "two_tower": lambda **kw: TwoTowerRecommender(**kw),
    "session": lambda **kw: SessionRecommender(**kw),
    "bought_together": lambda **kw: BoughtTogetherRecommender(**kw),
    "sequence": lambda **kw: SequenceRecommender(**kw),
}


def make_model(name: str, **params: Any) -> BaseRecommender:
    """A fresh, unfitted model by name (see ``MODELS``)."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](**params)


__all__ = ["MODELS", "BaseRecommender", "Dataset", "Recommender", "make_model"]
