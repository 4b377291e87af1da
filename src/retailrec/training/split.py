"""One global time split: train | validation (7 days) | test (7 days).

Everything fitted (models, vocabularies, popularity) sees the training part only; validation
tunes; test reports. A global split, unlike a per-user leave-last-out, never lets a model see the
shop's future while it is scored on the past.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

DAY_MS = 86_400_000


@dataclass
class TimeSplit:
    """Events split at ``val_start_ms`` and ``test_start_ms`` (Unix ms)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    val_start_ms: int
    test_start_ms: int
    end_ms: int

    @property
    def train_val(self) -> pd.DataFrame:
        return pd.concat([self.train, self.val], ignore_index=True)


def time_split(events: pd.DataFrame, test_days: float = 7, val_days: float = 7) -> TimeSplit:
    """Split at fixed times before the last event.

    Raises:
        ValueError: the log is too short to leave any training data.
    """
    if events.empty:
        raise ValueError("no events to split")
    end = int(events["timestamp"].max())
    test_start = end - int(test_days * DAY_MS)
    val_start = test_start - int(val_days * DAY_MS)
    ts = events["timestamp"].to_numpy()
    train = events[ts < val_start]
    if train.empty:
        span = (end - int(events["timestamp"].min())) / DAY_MS
        raise ValueError(
            f"the log spans {span:.1f} days: too short for a {val_days:g}+{test_days:g}-day split"
        )
    return TimeSplit(
        train=train.reset_index(drop=True),
        val=events[(ts >= val_start) & (ts < test_start)].reset_index(drop=True),
        test=events[ts >= test_start].reset_index(drop=True),
        val_start_ms=val_start,
        test_start_ms=test_start,
        end_ms=end,
    )
