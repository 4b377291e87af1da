"""Data drift: does the shop's latest week look like the weeks before it?

Two windows of the event log are compared: the *current* window (default: the last 7 days) and the
*reference* window (default: the 8 weeks before it; or the 8 weeks up to the end of the data the
champion was trained on). Seven signals, each with the statistic usually used for its kind of data:

============== ====================================== ================ =========================
signal         what is compared                        statistic        threshold
============== ====================================== ================ =========================
event_mix      shares of view / addtocart / transaction PSI             0.2 (PSI's "significant")
cart_rate      addtocart events per view               relative change  0.2 (20%)
purchase_rate  transaction events per view             relative change  0.2 (20%)
item_popularity share of events per item (top items    Jensen-Shannon   0.2 (base 2, 0..1)
               of both windows, the rest pooled)       distance
visitor_activity events per visitor in a week         KS statistic D   0.1
category_mix   share of events per category            PSI              0.2
new_items      share of events on items first seen    PSI              0.2
               in that week
new_visitors   share of visitors first seen that week  PSI              0.2
============== ====================================== ================ =========================

A signal drifts only when all three hold:

1. its statistic reaches the threshold (the change is large enough to matter);
2. its test rejects "same distribution" at ``alpha`` = 0.01, Bonferroni-corrected for the eight
   signals (chi-square for counts, a two-proportion z-test for rates, two-sample KS for activity):
   the change is not sampling noise;
3. it exceeds ``margin`` (2) times the *noise floor*: the median, over the reference weeks, of the
   same statistic between that week and the other reference weeks. A shop whose weeks normally
   differ this much (a small shop, a seasonal one) does not raise an alarm for an ordinary week.
   The median, not the maximum, so that a shift already under way in the last reference weeks
   does not hide itself by raising the floor.

Weeks are the unit throughout (activity per visitor per week, items "new this week"), so the
current window and each reference week are measured alike. The verdict names the signals that
drifted. With fewer than two reference weeks that hold events there is no noise floor, and the
verdict says the history is too short instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from retailrec.errors import NoDataError
from retailrec.events import DAY_MS, EVENT_TYPES

_EPS = 1e-4  # share floor for empty bins in PSI: the usual smoothing


#: A measure's answer: the statistic, its test's p-value, and summaries of both windows.
Measured = tuple[float, float, dict[str, Any], dict[str, Any]]
Measure = Callable[["Period", "Period"], Measured]


@dataclass(frozen=True)
class DriftConfig:
    current_days: int = 7
    reference_days: int = 56
    #: End of the reference window (ms); default: the start of the current window.
    reference_end_ms: int | None = None
    #: End of the current window (ms, exclusive); default: just after the last event.
    end_ms: int | None = None
    alpha: float = 0.01
    margin: float = 2.0
    top_items: int = 500
    top_categories: int = 30
    thresholds: dict[str, float] = field(
        default_factory=lambda: {
            "event_mix": 0.2,
            "cart_rate": 0.2,
            "purchase_rate": 0.2,
            "item_popularity": 0.2,
            "visitor_activity": 0.1,
            "category_mix": 0.2,
            "new_items": 0.2,
            "new_visitors": 0.2,
        }
    )


@dataclass
class Period:
    """Additive counts for one stretch of the log; a reference window is the sum of its weeks."""

    start_ms: int
    end_ms: int
    events: pd.Series  # per event type
    items: pd.Series  # events per item
    categories: pd.Series  # events per category ("unknown" for items without one)
    activity: np.ndarray  # events per visitor, one entry per visitor
    new_item_events: int
    new_visitors: int

    @property
    def n_events(self) -> int:
        return int(self.events.sum())

    def __add__(self, other: Period) -> Period:
        return Period(
            min(self.start_ms, other.start_ms),
            max(self.end_ms, other.end_ms),
            self.events.add(other.events, fill_value=0),
            self.items.add(other.items, fill_value=0),
            self.categories.add(other.categories, fill_value=0),
            np.concatenate([self.activity, other.activity]),
            self.new_item_events + other.new_item_events,
            self.new_visitors + other.new_visitors,
        )


@dataclass
class Signal:
    name: str
    statistic: str
    value: float
    threshold: float
    p_value: float
    noise_floor: float | None
    weekly: list[float]
    drifted: bool
    reference: dict[str, Any]
    current: dict[str, Any]


@dataclass
class DriftReport:
    reference_start_ms: int
    reference_end_ms: int
    current_start_ms: int
    current_end_ms: int
    reference_events: int
    current_events: int
    reference_weeks: int
    signals: list[Signal]
    drifted: bool
    drifted_signals: list[str]
    verdict: str
    config: dict[str, Any]
    #: False when the windows could not be compared (no current events, too little history):
    #: then "no drift" means nothing, and ``retailrec monitor --fail-on-drift`` exits non-zero.
    judged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _period(
    events: pd.DataFrame,
    start_ms: int,
    end_ms: int,
    item_first: pd.Series,
    visitor_first: pd.Series,
    item_category: pd.Series,
) -> Period:
    ts = events["timestamp"].to_numpy()
    lo, hi = np.searchsorted(ts, [start_ms, end_ms])
    df = events.iloc[lo:hi]
    items = df["itemid"].value_counts()
    cats = item_category.reindex(items.index)
    categories = items.groupby(cats.fillna(-1).astype("int64").to_numpy()).sum()
    categories.index = ["unknown" if c == -1 else str(c) for c in categories.index]
    visitors = df["visitorid"].value_counts()
    return Period(
        start_ms,
        end_ms,
        df["event"].value_counts().reindex(EVENT_TYPES, fill_value=0),
        items,
        categories,
        visitors.to_numpy(),
        int((item_first.reindex(df["itemid"]).to_numpy() >= start_ms).sum()),
        int((visitor_first.reindex(visitors.index).to_numpy() >= start_ms).sum()),
    )


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index between two count vectors over the same bins."""
    r = np.maximum(reference / max(reference.sum(), 1), _EPS)
    c = np.maximum(current / max(current.sum(), 1), _EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _chi2_p(reference: np.ndarray, current: np.ndarray) -> float:
    table = np.vstack([reference, current]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _aligned(ref: pd.Series, cur: pd.Series, top: int | None = None) -> tuple[np.ndarray, ...]:
    """Two count vectors over the union of bins; beyond ``top`` bins of each, one pooled bin."""
    if top is not None:
        keep = ref.nlargest(top).index.union(cur.nlargest(top).index)
        ref = _pool(ref, keep)
        cur = _pool(cur, keep)
    index = ref.index.union(cur.index)
    return (
        ref.reindex(index, fill_value=0).to_numpy(float),
        cur.reindex(index, fill_value=0).to_numpy(float),
    )


def _pool(counts: pd.Series, keep: pd.Index) -> pd.Series:
    inside = counts[counts.index.isin(keep)]
    rest = counts[~counts.index.isin(keep)].sum()
    out = inside.copy()
    out.index = out.index.astype(str)
    out.loc["(other)"] = rest
    return out


def _mix(name: str, top: int | None) -> Measure:
    def measure(ref: Period, cur: Period) -> Measured:
        r, c = _aligned(getattr(ref, name), getattr(cur, name), top)
        return psi(r, c), _chi2_p(r, c), _shares(getattr(ref, name)), _shares(getattr(cur, name))

    return measure


def _shares(counts: pd.Series, n: int = 10) -> dict[str, float]:
    total = max(float(counts.sum()), 1.0)
    return {str(k): round(float(v) / total, 5) for k, v in counts.nlargest(n).items()}


def _rate(numerator: str) -> Measure:
    def measure(ref: Period, cur: Period) -> Measured:
        x1, n1 = float(ref.events[numerator]), float(ref.events["view"])
        x2, n2 = float(cur.events[numerator]), float(cur.events["view"])
        if min(n1, n2) == 0 or x1 == 0:
            return 0.0, 1.0, {"rate": None}, {"rate": None}
        p1, p2 = x1 / n1, x2 / n2
        pooled = (x1 + x2) / (n1 + n2)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        p = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(p2 - p1) / se))
        return abs(p2 / p1 - 1), p, {"rate": round(p1, 6)}, {"rate": round(p2, 6)}

    return measure


def _item_popularity(ref: Period, cur: Period, top: int) -> Measured:
    r, c = _aligned(ref.items, cur.items, top)
    if r.sum() == 0 or c.sum() == 0:
        return 0.0, 1.0, {}, {}
    return (
        float(jensenshannon(r / r.sum(), c / c.sum(), base=2)),
        _chi2_p(r, c),
        _shares(ref.items, 5),
        _shares(cur.items, 5),
    )


def _visitor_activity(ref: Period, cur: Period) -> Measured:
    if len(ref.activity) == 0 or len(cur.activity) == 0:
        return 0.0, 1.0, {}, {}
    test = stats.ks_2samp(ref.activity, cur.activity)

    def summary(a: np.ndarray) -> dict[str, float]:
        return {
            "visitors": len(a),
            "mean": round(float(a.mean()), 4),
            "one_event": round(float((a == 1).mean()), 4),
        }

    return float(test.statistic), float(test.pvalue), summary(ref.activity), summary(cur.activity)


def _new_share(kind: str) -> Measure:
    def measure(ref: Period, cur: Period) -> Measured:
        def split(p: Period) -> np.ndarray:
            if kind == "items":
                return np.array([p.new_item_events, p.n_events - p.new_item_events], float)
            return np.array([p.new_visitors, len(p.activity) - p.new_visitors], float)

        r, c = split(ref), split(cur)
        if r.sum() == 0 or c.sum() == 0:
            return 0.0, 1.0, {}, {}
        return (
            psi(r, c),
            _chi2_p(r, c),
            {"share": round(r[0] / r.sum(), 5)},
            {"share": round(c[0] / c.sum(), 5)},
        )

    return measure


def _measures(
    config: DriftConfig,
) -> dict[str, tuple[str, Measure]]:
    return {
        "event_mix": ("PSI", _mix("events", None)),
        "cart_rate": ("relative change", _rate("addtocart")),
        "purchase_rate": ("relative change", _rate("transaction")),
        "item_popularity": (
            "Jensen-Shannon distance",
            lambda r, c: _item_popularity(r, c, config.top_items),
        ),
        "visitor_activity": ("KS statistic", _visitor_activity),
        "category_mix": ("PSI", _mix("categories", config.top_categories)),
        "new_items": ("PSI", _new_share("items")),
        "new_visitors": ("PSI", _new_share("visitors")),
    }


def detect(
    events: pd.DataFrame,
    item_category: pd.Series | None = None,
    config: DriftConfig | None = None,
) -> DriftReport:
    """Compare the current window of ``events`` with its reference window.

    Args:
        events: the event log (``timestamp`` ms, ``visitorid``, ``event``, ``itemid``), any order;
            it should reach back before the reference window, so that "new" items and visitors are
            new to the shop and not only to the window.
        item_category: ``categoryid`` indexed by ``itemid`` (items missing count as "unknown").
        config: windows, thresholds and the test level.
    """
    config = config or DriftConfig()
    if events.empty:
        raise NoDataError("the event log is empty: nothing to monitor")
    if not events["timestamp"].is_monotonic_increasing:  # the store's reads come sorted
        events = events.sort_values("timestamp", kind="stable", ignore_index=True)
    end = int(config.end_ms if config.end_ms is not None else events["timestamp"].iloc[-1] + 1)
    period_ms = config.current_days * DAY_MS
    cur_start = end - period_ms
    ref_end = min(config.reference_end_ms or cur_start, cur_start)
    n_weeks = max(1, config.reference_days // config.current_days)
    ref_start = ref_end - n_weeks * period_ms
    events = events[events["timestamp"] < end]
    item_first = events.groupby("itemid")["timestamp"].min()
    visitor_first = events.groupby("visitorid")["timestamp"].min()
    cats = item_category if item_category is not None else pd.Series(dtype="Int64")

    def period(start: int, stop: int) -> Period:
        return _period(events, start, stop, item_first, visitor_first, cats)

    current = period(cur_start, end)
    weeks = [
        period(ref_start + i * period_ms, ref_start + (i + 1) * period_ms) for i in range(n_weeks)
    ]
    weeks = [w for w in weeks if w.n_events > 0]
    reference = _sum(weeks) if weeks else period(ref_start, ref_end)
    signals: list[Signal] = []
    measures = _measures(config)
    alpha = config.alpha / len(measures)  # Bonferroni: one alarm budget for all the signals
    for name, (statistic, measure) in measures.items():
        value, p, ref_summary, cur_summary = measure(reference, current)
        weekly = (
            [
                measure(_sum([w for j, w in enumerate(weeks) if j != i]), week)[0]
                for i, week in enumerate(weeks)
            ]
            if len(weeks) >= 2
            else []
        )
        floor = float(np.median(weekly)) if weekly else None
        threshold = config.thresholds[name]
        drifted = (
            floor is not None
            and current.n_events > 0
            and value >= threshold
            and p < alpha
            and value > config.margin * floor
        )
        signals.append(
            Signal(
                name,
                statistic,
                round(value, 6),
                threshold,
                p,
                None if floor is None else round(floor, 6),
                [round(w, 6) for w in weekly],
                bool(drifted),
                ref_summary,
                cur_summary,
            )
        )
    drifted_names = [s.name for s in signals if s.drifted]
    if current.n_events == 0:
        verdict = "no events in the current window: nothing to compare"
    elif len(weeks) < 2:
        verdict = (
            f"history too short: {len(weeks)} reference week(s) with events before the current "
            "window; drift needs at least 2 to know the shop's normal week-to-week variation"
        )
    elif drifted_names:
        verdict = f"DRIFT in {len(drifted_names)} signal(s): {', '.join(drifted_names)}"
    else:
        verdict = "no drift: every signal within its threshold or the shop's normal variation"
    return DriftReport(
        ref_start,
        ref_end,
        cur_start,
        end,
        reference.n_events,
        current.n_events,
        len(weeks),
        signals,
        bool(drifted_names),
        drifted_names,
        verdict,
        asdict(config),
        judged=current.n_events > 0 and len(weeks) >= 2,
    )


def _sum(periods: list[Period]) -> Period:
    total = periods[0]
    for p in periods[1:]:
        total = total + p
    return total
