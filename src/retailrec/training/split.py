"""One global time split: train | validation | test, with windows that fit the log.

Everything fitted (models, vocabularies, popularity) sees only what came before the window it is
scored on; validation chooses and tunes; test reports and gates. A global split, unlike a
per-user leave-last-out, never lets a model see the shop's future while it is scored on the past.

Window size (:func:`choose_windows`): each window should hold enough returning visitors (ones with
a history before it) to tell models apart, about :data:`TARGET_VISITORS`; the noise band on a
metric in [0, 1] over ``n`` visitors is about ``1/sqrt(n)``. Windows are at most
:data:`MAX_WINDOW_DAYS` (a week averages the days of the week), and at most a quarter of the log
each, so at least half of it is left to learn from. Within those bounds the smallest window that
holds :data:`TARGET_VISITORS` in both is taken (models learn from more, fresher data); where none
does, the largest, and the training table says how wide the noise band is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retailrec.errors import LogTooShortError
from retailrec.events import DAY_MS

MAX_WINDOW_DAYS = 7.0
#: Returning visitors a window should hold to tell models apart (noise band about +-0.03).
TARGET_VISITORS = 1_000
#: A log shorter than this cannot be split into train, validation and test at all.
MIN_SPLIT_SPAN_DAYS = 1.0
#: Fewer returning visitors than this in a test window judge nothing (the noise band is wider
#: than +-0.3): a shop whose champion was evaluated does not retrain on such a window.
MIN_TEST_VISITORS = 10


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


@dataclass(frozen=True)
class Windows:
    """Chosen window sizes and the returning visitors each holds."""

    test_days: float
    val_days: float
    val_visitors: int
    test_visitors: int
    reason: str


def time_split(events: pd.DataFrame, test_days: float = 7, val_days: float = 7) -> TimeSplit:
    """Split at fixed times before the last event (the shop's clock).

    Raises:
        LogTooShortError: the log is too short to leave any training data.
    """
    if events.empty:
        raise LogTooShortError("no events to split")
    end = int(events["timestamp"].max())
    test_start = end - int(test_days * DAY_MS)
    val_start = test_start - int(val_days * DAY_MS)
    ts = events["timestamp"].to_numpy()
    train = events[ts < val_start]
    if train.empty:
        span = (end - int(events["timestamp"].min())) / DAY_MS
        raise LogTooShortError(
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


def returning_visitors(events: pd.DataFrame, start_ms: int, end_ms: int) -> int:
    """Visitors with events in ``[start_ms, end_ms)`` and a history before ``start_ms``."""
    ts = events["timestamp"].to_numpy()
    vis = events["visitorid"].to_numpy()
    before = np.unique(vis[ts < start_ms])
    inside = np.unique(vis[(ts >= start_ms) & (ts < end_ms)])
    return int(np.isin(inside, before, assume_unique=True).sum())


def choose_windows(
    events: pd.DataFrame,
    test_days: float | None = None,
    val_days: float | None = None,
    target: int = TARGET_VISITORS,
) -> Windows:
    """Window sizes for this log (see the module docstring); given sizes are kept as they are.

    Raises:
        LogTooShortError: the log spans less than :data:`MIN_SPLIT_SPAN_DAYS`, or no window
            would hold a returning visitor.
    """
    if events.empty:
        raise LogTooShortError("no events to split")
    ts = events["timestamp"].to_numpy()
    end, span = int(ts.max()), (int(ts.max()) - int(ts.min())) / DAY_MS

    def count(test: float, val: float) -> tuple[int, int]:
        test_start = end - int(test * DAY_MS)
        val_start = test_start - int(val * DAY_MS)
        return (
            returning_visitors(events, val_start, test_start),
            returning_visitors(events, test_start, end + 1),
        )

    if test_days is not None and val_days is not None:
        n_val, n_test = count(test_days, val_days)
        return Windows(test_days, val_days, n_val, n_test, "as asked")
    if span < MIN_SPLIT_SPAN_DAYS:
        raise LogTooShortError(
            f"the log spans {span:.1f} days: too short for any train, validation and test split"
            f" (at least {MIN_SPLIT_SPAN_DAYS:g} day)"
        )
    hi = min(MAX_WINDOW_DAYS, span / 4)
    lo = min(MAX_WINDOW_DAYS, span / 8)
    # Whole hours from lo to hi, a handful of candidates, smallest first.
    grid = np.unique(np.round(np.linspace(lo, hi, 7) * 24) / 24)
    grid = grid[grid > 0] if (grid > 0).any() else np.array([hi])
    for chosen in grid:  # the largest, the last, stands when none holds the target
        counts = count(test_days or chosen, val_days or chosen)
        if min(counts) >= target:
            break
    test, val = float(test_days or chosen), float(val_days or chosen)
    if min(counts) == 0:
        raise LogTooShortError(
            f"the log spans {span:.1f} days, and no {val:g}+{test:g}-day split leaves a returning"
            " visitor in both windows to evaluate on"
        )
    if min(counts) >= target:
        reason = (
            f"the smallest windows (of {lo:g}-{hi:g} days) holding {target:,} returning visitors"
        )
    else:
        reason = (
            f"the largest windows allowed ({hi:g} days: at most {MAX_WINDOW_DAYS:g}, and a quarter"
            f" of the {span:.1f}-day log); they hold fewer than {target:,} returning visitors"
        )
    return Windows(round(test, 4), round(val, 4), counts[0], counts[1], reason)
