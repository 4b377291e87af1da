"""Optuna tuning searches the declared space and scores on the validation window only."""

from __future__ import annotations

import pytest

from retailrec.models import Dataset
from retailrec.training import tune
from retailrec.training.split import time_split
from tests.utils.checkerboard import DAY, T0, checkerboard_catalogue, checkerboard_events


def test_tune_returns_params_from_the_space(monkeypatch: pytest.MonkeyPatch) -> None:
    events = checkerboard_events(n_users=60)
    # Spread the log over five weeks so that the split leaves a validation window.
    events["timestamp"] = T0 + (events["visitorid"] - 1000) * (DAY // 2)
    split = time_split(events, test_days=3, val_days=7)
    data = Dataset.from_events(split.train, checkerboard_catalogue())
    seen: list[dict[str, object]] = []
    original = tune.make_model

    def spy(name: str, **params: object):
        seen.append(params)
        return original(name, **params)

    monkeypatch.setattr(tune, "make_model", spy)
    best = tune.tune("itemknn_cosine", data, split.val, trials=3, metric="recall_at_20")
    assert len(seen) == 3
    assert set(best) == {"k"}
    assert 10 <= best["k"] <= 400
    assert best in seen
