"""Drift detection: the generator's drift is flagged and named, its steady shops are not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retailrec.data_pipeline.feature_pipeline import item_catalogue
from retailrec.errors import NoDataError
from retailrec.events import DAY_MS
from retailrec.monitoring.drift_detector import DriftConfig, detect, psi
from retailrec.synthetic import synth

#: What ``synth --drift`` changes: conversion, the category mix, new items taking over traffic.
SHIFTED_BY_THE_GENERATOR = {
    "event_mix",
    "cart_rate",
    "purchase_rate",
    "item_popularity",
    "category_mix",
    "new_items",
}


def _shop(scale: str, seed: int, drift: bool) -> tuple[pd.DataFrame, pd.Series]:
    data = synth.generate(synth.config_for(scale, drift=drift), random_state=seed)
    categories = item_catalogue(data.item_properties).set_index("itemid")["categoryid"]
    return data.events, categories


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_drift_is_flagged_and_named(seed: int) -> None:
    report = detect(*_shop("small", seed, drift=True))
    assert report.drifted
    assert "cart_rate" in report.drifted_signals  # the generator cuts carting by 45%
    assert set(report.drifted_signals) <= SHIFTED_BY_THE_GENERATOR
    assert all(name in report.verdict for name in report.drifted_signals)
    by_name = {s.name: s for s in report.signals}
    assert by_name["cart_rate"].current["rate"] < by_name["cart_rate"].reference["rate"]


@pytest.mark.parametrize(
    ("scale", "seed"),
    [("small", 0), ("small", 1), ("small", 3), ("tiny", 0), ("tiny", 1), ("tiny", 2)],
)
def test_no_false_alarm_without_drift(scale: str, seed: int) -> None:
    report = detect(*_shop(scale, seed, drift=False))
    assert not report.drifted, report.verdict
    assert report.reference_weeks == 8
    assert report.verdict.startswith("no drift")


@pytest.fixture(scope="module")
def steady() -> tuple[pd.DataFrame, pd.Series]:
    return _shop("small", 4, drift=False)


def _last_week(events: pd.DataFrame) -> np.ndarray:
    end = events["timestamp"].max() + 1
    return (events["timestamp"] >= end - 7 * DAY_MS).to_numpy()


def test_new_items_flooding_the_last_week_are_flagged(
    steady: tuple[pd.DataFrame, pd.Series],
) -> None:
    events, categories = steady
    shifted = events.copy()
    rng = np.random.default_rng(0)
    rows = np.flatnonzero(_last_week(shifted) & (rng.random(len(shifted)) < 0.4))
    # 200 brand-new items take 40% of the last week's events.
    shifted.loc[rows, "itemid"] = events["itemid"].max() + 1 + rng.integers(0, 200, len(rows))
    report = detect(shifted, categories)
    assert {"new_items", "item_popularity"} <= set(report.drifted_signals)
    assert "visitor_activity" not in report.drifted_signals
    assert not detect(events, categories).drifted


def test_a_carting_collapse_in_the_last_week_is_flagged(
    steady: tuple[pd.DataFrame, pd.Series],
) -> None:
    events, categories = steady
    rng = np.random.default_rng(1)
    carts = _last_week(events) & (events["event"] == "addtocart").to_numpy()
    dropped = carts & (rng.random(len(events)) < 0.6)
    report = detect(events[~dropped], categories)
    assert "cart_rate" in report.drifted_signals
    assert {"new_items", "new_visitors", "category_mix"}.isdisjoint(report.drifted_signals)


def test_a_short_history_says_so_instead_of_guessing(
    steady: tuple[pd.DataFrame, pd.Series],
) -> None:
    events, categories = steady
    end = events["timestamp"].max() + 1
    recent = events[events["timestamp"] >= end - 10 * DAY_MS]
    report = detect(recent, categories)
    assert not report.drifted
    assert report.reference_weeks == 1
    assert report.verdict.startswith("history too short")
    assert not report.judged
    assert all(s.noise_floor is None for s in report.signals)


def test_windows_follow_the_config(steady: tuple[pd.DataFrame, pd.Series]) -> None:
    events, categories = steady
    end = int(events["timestamp"].max()) + 1
    report = detect(events, categories, DriftConfig(current_days=14, reference_days=28))
    assert (report.current_start_ms, report.current_end_ms) == (end - 14 * DAY_MS, end)
    assert report.reference_end_ms == report.current_start_ms
    assert report.reference_start_ms == end - 42 * DAY_MS
    assert report.reference_weeks == 2  # two 14-day periods
    in_current = (events["timestamp"] >= end - 14 * DAY_MS).sum()
    assert report.current_events == in_current
    earlier = detect(events, categories, DriftConfig(reference_end_ms=end - 30 * DAY_MS))
    assert earlier.reference_end_ms == end - 30 * DAY_MS


def test_empty_log_is_a_clear_error() -> None:
    empty = pd.DataFrame({"timestamp": [], "visitorid": [], "event": [], "itemid": []})
    with pytest.raises(NoDataError, match="empty"):
        detect(empty)


def test_psi_matches_its_formula() -> None:
    assert psi(np.array([50.0, 50.0]), np.array([5.0, 5.0])) == 0.0
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(np.array([1.0, 1.0]), np.array([8.0, 2.0])) == pytest.approx(expected)
