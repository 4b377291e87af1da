"""The second stage: a learned ranker (LightGBM LambdaRank) over a few hundred candidates.

The first stage is the bundle's own models: the top items of the retrieval model, of item-kNN on
the visitor's history, of the session model on their latest items, of popularity within the
visitor's categories, and the recent best sellers (:data:`SOURCES`, :data:`DEPTH`). The ranker
orders their union by features of the visitor, the item and the pair (:data:`FEATURES`):

* each source's score and rank (missing where the source did not propose the item);
* the item's popularity over 1, 7 and 30 days and overall, and its cart and purchase rates per
  view, from :func:`retailrec.data_pipeline.feature_pipeline.item_features` as of the data's end
  (the feature store's item snapshot, point in time: nothing after the clock);
* the visitor's activity (events, distinct items), how long since their last event, and their
  affinity to the item's category (the share of their confidence in it).

Candidates and features are built by one function, ``RecommendationService.candidates``, for
training (labels from a window, features as of its start), evaluation and serving alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.models.base import load_pickle, save_pickle
from retailrec.models.data import Dataset

#: The first stage: bundle roles and how many items each proposes.
SOURCES = ("retrieval", "similar", "session", "popular_category", "popular_7d")
DEPTH = {"retrieval": 50, "similar": 30, "session": 30, "popular_category": 30, "popular_7d": 20}
ITEM_FEATURES = ("pop_1d", "pop_7d", "pop_30d", "pop_all", "cart_rate", "purchase_rate")
VISITOR_FEATURES = ("visitor_events", "visitor_items", "visitor_idle_days", "category_affinity")
FEATURES = (
    *(f"{s}_score" for s in SOURCES),
    *(f"{s}_rank" for s in SOURCES),
    *ITEM_FEATURES,
    *VISITOR_FEATURES,
)
#: LightGBM's settings: small trees, few of them, so that a few hundred candidates score in a
#: fraction of a millisecond on one thread.
PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "lambdarank_truncation_level": 20,
    "num_leaves": 15,
    "min_data_in_leaf": 50,
    "learning_rate": 0.05,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "verbose": -1,
    "num_threads": 1,
    "deterministic": True,
    "seed": 0,
}
ROUNDS = 50


def item_feature_matrix(data: Dataset) -> np.ndarray:
    """(n_items, len(ITEM_FEATURES)) float32: the item features as of ``data.as_of_ms``, in the
    data's item space (counts as log1p), from the feature pipeline's own function."""
    catalogue = pd.DataFrame(
        {
            "itemid": data.item_ids,
            "categoryid": pd.Series(data.item_category).where(data.item_category >= 0),
            "available": data.item_available,
        }
    )
    feats = fp.item_features(data.events, data.as_of_ms, catalogue).set_index("itemid")
    feats = feats.reindex(data.item_ids)
    out = np.zeros((data.n_items, len(ITEM_FEATURES)), dtype=np.float32)
    for j, name in enumerate(ITEM_FEATURES):
        col = feats[name].to_numpy(dtype=np.float64, na_value=0.0)
        out[:, j] = np.log1p(col) if name.startswith("pop_") else col
    return out


@dataclass
class CandidateRanker:
    """A fitted LambdaRank booster (the item features it reads go with each bundle: they are
    data as of the bundle's end, the booster is what was learned)."""

    model_text: str
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        info: dict[str, Any] | None = None,
    ) -> CandidateRanker:
        """Fit on ``features`` (rows of :data:`FEATURES`), binary ``labels`` and ``groups`` (the
        number of rows of each visitor, in order)."""
        import lightgbm as lgb

        train = lgb.Dataset(
            features, labels, group=groups, feature_name=list(FEATURES), free_raw_data=True
        )
        booster = lgb.train(PARAMS, train, num_boost_round=ROUNDS)
        return cls(
            booster.model_to_string(),
            {**(info or {}), "rows": len(labels), "visitors": len(groups)},
        )

    def prepare_serving(self) -> None:
        """Parse the booster now (once), not in the first request that needs it."""
        if "_booster" not in self.__dict__:
            import lightgbm as lgb

            self.__dict__["_booster"] = lgb.Booster(model_str=self.model_text)

    @property
    def booster(self) -> Any:
        self.prepare_serving()
        return self.__dict__["_booster"]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """A score per row; higher ranks first."""
        out: np.ndarray = self.booster.predict(features, num_threads=1)
        return out

    def importance(self) -> dict[str, float]:
        """Each feature's share of the total gain."""
        gain = self.booster.feature_importance(importance_type="gain")
        total = float(gain.sum()) or 1.0
        return {n: float(g) / total for n, g in zip(FEATURES, gain, strict=True)}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_booster", None)  # rebuilt from the text after loading
        return state

    def save(self, path: Path) -> None:
        save_pickle(self, path)

    @classmethod
    def load(cls, path: Path) -> CandidateRanker:
        return load_pickle(path, cls)
