"""The time split and evaluating a ranker on a held-out window, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retailrec.errors import LogTooShortError
from retailrec.events import DAY_MS
from retailrec.training.evaluate import Histories, evaluate, paired_band
from retailrec.training.split import choose_windows, time_split

T = 1_433_221_332_117


def _events(rows: list[tuple[int, int, str, int]]) -> pd.DataFrame:
    ts, vis, ev, item = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "timestamp": np.array(ts, dtype=np.int64),
            "visitorid": np.array(vis, dtype=np.int64),
            "event": list(ev),
            "itemid": np.array(item, dtype=np.int64),
            "transactionid": pd.array([None] * len(rows), dtype="Int64"),
        }
    )


def test_split_is_global_in_time() -> None:
    days = [0, 5, 10, 16, 20, 23, 29]
    events = _events([(T + d * DAY_MS, i, "view", 1) for i, d in enumerate(days)])
    split = time_split(events)
    assert split.end_ms == T + 29 * DAY_MS
    assert split.test_start_ms == T + 22 * DAY_MS
    assert split.val_start_ms == T + 15 * DAY_MS
    assert split.train["visitorid"].tolist() == [0, 1, 2]
    assert split.val["visitorid"].tolist() == [3, 4]
    assert split.test["visitorid"].tolist() == [5, 6]
    assert len(split.train_val) == 5


def test_a_log_too_short_to_split_is_a_clear_error() -> None:
    events = _events([(T, 1, "view", 1), (T + 3 * DAY_MS, 2, "view", 2)])
    with pytest.raises(LogTooShortError, match=r"spans 3.0 days: too short for a 7\+7-day split"):
        time_split(events)


def test_evaluate_by_hand() -> None:
    # Training: visitor 1 saw items 10 and 11; visitor 2 saw 12. Test: 1 views 11 (seen, so not
    # relevant) and 13, and carts 14; 2 views 10; 3 (cold) views 15.
    before = _events(
        [
            (T, 1, "view", 10),
            (T + 1, 1, "view", 11),
            (T + 2, 2, "view", 12),
            (T + 3, 4, "view", 13),
            (T + 4, 4, "view", 14),
            (T + 5, 5, "view", 15),
        ]
    )
    test = _events(
        [
            (T + 10, 1, "view", 11),
            (T + 11, 1, "view", 13),
            (T + 12, 1, "addtocart", 14),
            (T + 13, 2, "view", 10),
            (T + 14, 3, "view", 15),
        ]
    )
    fixed = {1: [13, 12, 14], 2: [11, 10, 13], 3: [12, 15, 10]}

    def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
        return np.array([fixed[int(v)][:n] for v in visitor_ids])

    m = evaluate(rank, Histories(before), test, n_items=6, ks=(1, 3))
    assert (m["n_warm"], m["n_cold"]) == (2, 1)
    # Warm, any: visitor 1 relevant {13, 14}: hits at ranks 1, 3; visitor 2 relevant {10}: rank 2.
    assert m["recall_at_1"] == pytest.approx((1 / 1 + 0) / 2)
    assert m["recall_at_3"] == pytest.approx((2 / 2 + 1) / 2)
    assert m["mrr_at_3"] == pytest.approx((1 + 1 / 2) / 2)
    # Buy target: only visitor 1 carted (14, rank 3); visitor 2 has nothing relevant, left out.
    assert m["hit_rate_at_3_buy"] == pytest.approx(1.0)
    assert m["ndcg_at_3_buy"] == pytest.approx(0.5)  # 1/log2(4) over an ideal of 1
    # Cold: models give every cold visitor one shared list: the first cold visitor's.
    assert m["recall_at_3_cold"] == pytest.approx(1.0)
    assert m["coverage_at_10"] == pytest.approx(5 / 6)  # warm lists show 10..14 of 10..15


def test_windows_fit_the_log() -> None:
    """A long log gets 7-day windows; a short one shrinks them, keeping half the log to learn
    from; a dense short one takes the smallest windows that hold enough returning visitors."""
    rng = np.random.default_rng(0)

    def log(days: float, visitors: int, per_visitor: int) -> pd.DataFrame:
        n = visitors * per_visitor
        return _events(
            [
                (T + int(t), int(v), "view", int(i))
                for t, v, i in zip(
                    rng.uniform(0, days * DAY_MS, n),
                    np.repeat(np.arange(visitors), per_visitor),
                    rng.integers(0, 50, n),
                    strict=True,
                )
            ]
        )

    long = choose_windows(log(60, 300, 6))
    assert (long.test_days, long.val_days) == (7, 7)
    assert 0 < long.test_visitors < 1_000
    assert "fewer than 1,000" in long.reason
    short = choose_windows(log(5, 300, 6))
    assert short.test_days == short.val_days == pytest.approx(1.25, abs=0.01)  # a quarter of 5
    dense = choose_windows(log(20, 3_000, 8), target=500)
    assert 2.5 <= dense.test_days < 5  # between an eighth and a quarter of the log
    assert min(dense.val_visitors, dense.test_visitors) >= 500
    assert choose_windows(log(60, 300, 6), test_days=2, val_days=3).test_days == 2
    with pytest.raises(LogTooShortError, match="too short for any"):
        choose_windows(log(0.5, 50, 3))


def test_paired_band_is_narrower_than_the_bound_for_correlated_models() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 400)
    b = np.clip(a + rng.normal(0, 0.05, 400), 0, 1)
    assert paired_band(a, b) < 0.2 / np.sqrt(400)
    assert paired_band(a, np.full(400, np.nan)) == np.inf
