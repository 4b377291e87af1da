"""Optuna tuning searches the declared space and scores on the validation window only."""

from __future__ import annotations

from retailrec.data_pipeline.feature_pipeline import FeatureConfig
from retailrec.models import make_model
from retailrec.training import tune
from retailrec.training.split import time_split
from retailrec.training.train import Stage
from tests.utils.checkerboard import DAY, T0, checkerboard_catalogue, checkerboard_events


def test_tune_returns_params_from_the_space() -> None:
    events = checkerboard_events(n_users=60)
    # Spread the log over five weeks so that the split leaves a validation window.
    events["timestamp"] = T0 + (events["visitorid"] - 1000) * (DAY // 2)
    split = time_split(events, test_days=3, val_days=7)
    val = Stage.make(
        "val",
        events,
        checkerboard_catalogue(),
        split.val_start_ms,
        split.test_start_ms - 1,
        FeatureConfig(),
    )
    assert val.data.events["timestamp"].max() < split.val_start_ms  # fitted before the window
    seen: list[dict[str, object]] = []

    def objective(params: dict[str, object]) -> float:
        seen.append(params)
        model = make_model("itemknn_cosine", **params).fit(val.data)
        return val.score("itemknn_cosine", params, model)["recall_at_20"]

    best = tune.tune("itemknn_cosine", objective, trials=3)
    assert len(seen) == 3
    assert set(best) == {"k"}
    assert 10 <= best["k"] <= 400
    assert best in seen
